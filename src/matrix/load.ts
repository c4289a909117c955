import { readFileSync } from 'node:fs';
import { basename, dirname, isAbsolute, join, relative, resolve } from 'node:path';
import { Ajv, type ValidateFunction } from 'ajv';
import { AJV_OPTIONS } from '../recipe/validators.js';
import { matrixSchema } from './schema.js';
import { parseImageUrl, urlFileNameOf } from '../fetch/http.js';
import type { OutputFormat } from '../image/formats.js';
import { parseSource, problemsFrom, type LocatedProblem, type Locator } from '../recipe/located-yaml.js';
import { parseRecipe, readRecipeText, type Recipe } from '../recipe/load.js';
import { closest, renderTemplate } from '../util/template.js';
import { ImageBuilderError } from '../util/errors.js';

export interface MatrixRecipe {
  /** The value of the `recipe` axis: `name`, or the file name without its extension. */
  name: string;
  /** Absolute path. */
  path: string;
  /** As written in the matrix file (relative to it). */
  written: string;
  /** Every file the recipe reads (itself, its includes), relative to the matrix file's directory. */
  files: string[];
}

export interface MatrixBase {
  /** The value of the `base` axis. */
  name: string;
  /** An http(s) URL, or an absolute path. */
  image: string;
  /** As written in the matrix file. */
  written: string;
  isUrl: boolean;
  checksum?: string;
  /** Absolute path of the keyring, and as written. */
  keyring?: string;
  keyringWritten?: string;
  insecureSkipVerify?: boolean;
  /** An air-gapped bundle (absolute path): the base and everything its builds fetch come from it, offline. */
  bundle?: string;
}

export interface MatrixBuild {
  /** Unique; the build's directory and file names. */
  name: string;
  recipe: MatrixRecipe;
  base: MatrixBase;
  /** The values that make this build: axes and include keys, in the order written. */
  matrixVariables: Record<string, string>;
  /** What the recipe gets (as --set): `set`, then the matrix variables. */
  variables: Record<string, string>;
}

export interface Matrix {
  /** As given, and its directory (absolute): relative paths in the file start there. */
  path: string;
  dir: string;
  text: string;
  builds: MatrixBuild[];
  recipes: MatrixRecipe[];
  bases: MatrixBase[];
  output: { dir: string; formats?: OutputFormat[]; compress?: boolean };
}

interface RawMatrix {
  recipe?: string;
  recipes?: (string | { name?: string; path: string })[];
  bases: (string | { name?: string; image?: string; bundle?: string; checksum?: string; keyring?: string; insecure_skip_verify?: boolean })[];
  variables?: Record<string, unknown[]>;
  set?: Record<string, unknown>;
  exclude?: Record<string, unknown>[];
  include?: Record<string, unknown>[];
  output?: { dir?: string; name?: string; formats?: OutputFormat[]; compress?: boolean };
}

/** One axis value of one combination, and where it was written. */
interface Cell {
  value: string;
  /** Where the key (axis or include key) was written: unknown variables are reported there. */
  keyLocation: string;
}
type Combination = Map<string, Cell>;

// Compiled when a matrix is read (once a run): every command's start-up would pay for it otherwise.
let matrixValidator: ValidateFunction | undefined;
const validateMatrix = () => (matrixValidator ??= new Ajv(AJV_OPTIONS).compile(matrixSchema()));

const DOCUMENT = 'the matrix';
const BUILD_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

/** The file name of an image without its directory, compression and format extensions: debian-12-genericcloud-amd64. */
function baseNameOf(image: string, isUrl: boolean): string {
  const file = isUrl ? urlFileNameOf(new URL(image)) : basename(image);
  return file.replace(/(\.(xz|gz|zst))?$/, '').replace(/\.(qcow2|img|raw|vmdk|vhdx|vhd|vdi)$/, '');
}

const recipeNameOf = (path: string) => basename(path).replace(/\.ya?ml$/, '');

/** Within the matrix file's directory, relative to it; otherwise absolute. */
function underDir(dir: string, path: string): string {
  const rel = relative(dir, path);
  return rel && !rel.startsWith('..') && !isAbsolute(rel) ? rel : path;
}

class MatrixReader {
  readonly problems: LocatedProblem[] = [];

  constructor(
    private readonly raw: RawMatrix,
    private readonly locate: Locator,
    private readonly dir: string,
  ) {}

  private problem(path: (string | number)[], message: string, key?: string): void {
    this.problems.push({ location: this.locate.of(path, key), message });
  }

  /** Axis values as written: `1.30` stays "1.30". */
  private text(path: (string | number)[], value: unknown): string {
    return this.locate.text(path) ?? String(value);
  }

  recipes(): { recipes: MatrixRecipe[]; at: (string | number)[][] } {
    const { raw } = this;
    if (raw.recipe !== undefined && raw.recipes !== undefined) this.problem([], 'give either `recipe` (one) or `recipes` (several), not both', 'recipes');
    if (raw.recipe === undefined && raw.recipes === undefined) this.problem([], 'missing `recipe: PATH` (or `recipes:`, a list)');
    const entries = raw.recipes ?? (raw.recipe !== undefined ? [raw.recipe] : []);
    const at = raw.recipes ? entries.map((_, i) => ['recipes', i]) : [['recipe']];
    const recipes = entries.map((entry) => {
      const written = typeof entry === 'string' ? entry : entry.path;
      const path = resolve(this.dir, written);
      return { name: typeof entry === 'string' ? recipeNameOf(written) : (entry.name ?? recipeNameOf(written)), path, written, files: [] as string[] };
    });
    this.refuseDuplicates(recipes.map((r) => r.name), at, 'recipe', 'give each a `name:`');
    return { recipes, at };
  }

  bases(): MatrixBase[] {
    const bases = this.raw.bases.map((entry, i): MatrixBase => {
      if (typeof entry !== 'string' && entry.bundle !== undefined) {
        const bundle = resolve(this.dir, entry.bundle);
        return { name: entry.name ?? basename(entry.bundle).replace(/\.tar$/, ''), image: bundle, written: entry.bundle, isUrl: false, bundle };
      }
      const spec = typeof entry === 'string' ? { image: entry } : { ...entry, image: entry.image ?? '' };
      let isUrl = false;
      try {
        isUrl = parseImageUrl(spec.image) !== undefined;
      } catch (error) {
        this.problem(typeof entry === 'string' ? ['bases', i] : ['bases', i, 'image'], (error as Error).message);
      }
      const keyring = spec.keyring === undefined ? undefined : resolve(this.dir, spec.keyring);
      return {
        name: (typeof entry === 'string' ? undefined : entry.name) ?? baseNameOf(spec.image, isUrl),
        image: isUrl ? spec.image : resolve(this.dir, spec.image),
        written: spec.image,
        isUrl,
        checksum: spec.checksum,
        keyring,
        keyringWritten: spec.keyring,
        insecureSkipVerify: spec.insecure_skip_verify,
      } satisfies MatrixBase;
    });
    this.refuseDuplicates(bases.map((b) => b.name), bases.map((_, i) => ['bases', i]), 'base', 'give each a `name:`');
    return bases;
  }

  private refuseDuplicates(names: string[], at: (string | number)[][], what: string, fix: string): void {
    names.forEach((name, i) => {
      const first = names.indexOf(name);
      if (first !== i) this.problem(at[i], `two ${what}s are named "${name}" (the first at ${this.locate.of(at[first])}): ${fix}`);
    });
  }

  /** The cartesian product of the axes, then exclude, then include — GitHub Actions' matrix rules. */
  combinations(recipes: MatrixRecipe[], recipesAt: (string | number)[][], bases: MatrixBase[]): Combination[] {
    const axes: { key: string; cells: Cell[] }[] = [
      { key: 'recipe', cells: recipes.map((r, i) => ({ value: r.name, keyLocation: this.locate.of(recipesAt[i]) })) },
      { key: 'base', cells: bases.map((b, i) => ({ value: b.name, keyLocation: this.locate.of(['bases', i]) })) },
    ];
    for (const [key, values] of Object.entries(this.raw.variables ?? {})) {
      if (key === 'recipe' || key === 'base') {
        this.problem(['variables'], `"${key}" is an axis of its own (from \`${key}s\`), not a variable`, key);
        continue;
      }
      const keyLocation = this.locate.of(['variables'], key);
      axes.push({ key, cells: values.map((value, i) => ({ value: this.text(['variables', key, i], value), keyLocation })) });
      const texts = values.map((value, i) => this.text(['variables', key, i], value));
      texts.forEach((text, i) => texts.indexOf(text) !== i && this.problem(['variables', key, i], `variables.${key}: ${text} is listed twice`));
    }
    for (const key of Object.keys(this.raw.set ?? {})) {
      if (axes.some((axis) => axis.key === key)) this.problem(['set'], `"${key}" is both an axis and in \`set\`: keep one`, key);
    }

    let combinations: Combination[] = [new Map()];
    for (const axis of axes) combinations = combinations.flatMap((combination) => axis.cells.map((cell) => new Map([...combination, [axis.key, cell]])));

    const axisKeys = axes.map((axis) => axis.key);
    (this.raw.exclude ?? []).forEach((entry, i) => {
      const wanted = this.entryCells(['exclude', i], entry);
      let usable = true;
      for (const [key, cell] of wanted) {
        const axis = axes.find((a) => a.key === key);
        if (!axis) {
          this.problem(['exclude', i], `exclude[${i}]: "${key}" is not an axis${closest(key, axisKeys)}; axes: ${axisKeys.join(', ')}`, key);
          usable = false;
        } else if (!axis.cells.some((c) => c.value === cell.value)) {
          this.problem(['exclude', i, key], `exclude[${i}].${key}: ${cell.value} is not one of its values (${axis.cells.map((c) => c.value).join(', ')})`);
          usable = false;
        }
      }
      if (!usable) return;
      const before = combinations.length;
      combinations = combinations.filter((combination) => ![...wanted].every(([key, cell]) => combination.get(key)?.value === cell.value));
      if (combinations.length === before) this.problem(['exclude', i], `exclude[${i}] matches no build (an earlier exclude removed them already)`);
    });

    (this.raw.include ?? []).forEach((entry, i) => {
      const given = this.entryCells(['include', i], entry);
      for (const [key, names] of [['recipe', recipes.map((r) => r.name)], ['base', bases.map((b) => b.name)]] as const) {
        const cell = given.get(key);
        if (cell && !names.includes(cell.value)) {
          this.problem(['include', i, key], `include[${i}].${key}: no ${key} is named "${cell.value}"${closest(cell.value, [...names])}; ${key}s: ${names.join(', ')}`);
          return;
        }
      }
      // An entry may not change an original axis value of a build; where it does not, its other keys are added.
      const fits = (combination: Combination) => [...given].every(([key, cell]) => !axisKeys.includes(key) || combination.get(key)?.value === cell.value);
      let fitted = false;
      for (const combination of combinations) {
        if (!fits(combination)) continue;
        fitted = true;
        for (const [key, cell] of given) if (!axisKeys.includes(key)) combination.set(key, cell);
      }
      if (fitted) return;
      const added: Combination = new Map();
      for (const [key, values, plural] of [['recipe', recipes, 'recipes'], ['base', bases, 'bases']] as const) {
        if (given.has(key)) added.set(key, given.get(key)!);
        else if (values.length === 1) added.set(key, { value: values[0].name, keyLocation: this.locate.of(['include', i]) });
        else {
          this.problem(['include', i], `include[${i}] fits no build, so it is a build of its own, but it names no ${key}: add \`${key}:\` (one of ${values.map((v) => v.name).join(', ')}); there are several ${plural}`);
          return;
        }
      }
      for (const [key, cell] of given) if (!added.has(key)) added.set(key, cell);
      combinations.push(added);
    });
    return combinations;
  }

  private entryCells(at: (string | number)[], entry: Record<string, unknown>): Combination {
    return new Map(Object.entries(entry).map(([key, value]) => [key, { value: this.text([...at, key], value), keyLocation: this.locate.of(at, key) }]));
  }

  /** Each build's name: the `output.name` template, or every value joined by "-". */
  name(combination: Combination, recipe: MatrixRecipe, base: MatrixBase, variables: Record<string, string>): string | undefined {
    const template = this.raw.output?.name;
    if (template === undefined) {
      const values = [...combination].filter(([key]) => key !== 'recipe' && key !== 'base').map(([, cell]) => cell.value);
      return [recipe.name, base.name, ...values].join('-').replace(/[^A-Za-z0-9._-]+/g, '-');
    }
    const lookup: Record<string, string> = { ...variables, recipe: recipe.name, base: base.name };
    const rendered = renderTemplate(template, (key) => lookup[key], () => Object.keys(lookup));
    if (rendered.errors.length) {
      for (const error of rendered.errors) this.problem(['output', 'name'], `output.name: ${error.replace(/: define it under .*$/, '')}; names available: ${Object.keys(lookup).join(', ')}`);
      return undefined;
    }
    if (!BUILD_NAME.test(rendered.value)) {
      this.problem(['output', 'name'], `output.name gives "${rendered.value}", which is not a usable file name: letters, digits, ".", "_" and "-" only, not starting with "." or "-"`);
      return undefined;
    }
    return rendered.value;
  }
}

function unique(problems: LocatedProblem[]): LocatedProblem[] {
  const seen = new Set<string>();
  return problems.filter((p) => !seen.has(`${p.location} ${p.message}`) && Boolean(seen.add(`${p.location} ${p.message}`)));
}

/** The recipe's own problems, and the names of its variables. */
function checkRecipe(recipe: MatrixRecipe, dir: string): { parsed?: Recipe; problems: LocatedProblem[] } {
  let text: string;
  try {
    text = readRecipeText(recipe.path);
  } catch (error) {
    return { problems: [{ location: recipe.written, message: (error as Error).message }] };
  }
  const { recipe: parsed, problems } = parseRecipe(text, underDir(process.cwd(), recipe.path));
  if (parsed) recipe.files = [underDir(dir, recipe.path), ...parsed.includes.map((include) => underDir(dir, join(parsed.dir, include.path)))];
  return { parsed, problems };
}

/**
 * Reads and expands a matrix file into builds — without root or images. Every problem (the file's own, each
 * recipe's, a variable a recipe does not define, clashing build names) comes with file:line:column.
 */
export function parseMatrix(text: string, path: string): { matrix?: Matrix; problems: LocatedProblem[] } {
  const parsed = parseSource(text, path);
  if (!parsed.file) return { problems: parsed.problems };
  const { locate, data } = parsed.file;
  const validate = validateMatrix();
  if (!validate(data)) return { problems: problemsFrom(validate.errors ?? [], [], locate, DOCUMENT) };
  const raw = data as unknown as RawMatrix;
  const dir = dirname(resolve(path));
  const reader = new MatrixReader(raw, locate, dir);
  const { recipes, at: recipesAt } = reader.recipes();
  const bases = reader.bases();
  const combinations = reader.combinations(recipes, recipesAt, bases);
  if (reader.problems.length) return { problems: reader.problems };

  const problems: LocatedProblem[] = [];
  const known = new Map<string, string[]>();
  for (const recipe of recipes) {
    const checked = checkRecipe(recipe, dir);
    problems.push(...checked.problems);
    if (checked.parsed) known.set(recipe.name, Object.keys(checked.parsed.variables));
  }
  const fixed = Object.fromEntries(Object.keys(raw.set ?? {}).map((key) => [key, locate.text(['set', key]) ?? String(raw.set![key])]));
  const planned: { combination: Combination; recipe: MatrixRecipe; base: MatrixBase; matrixVariables: Record<string, string>; variables: Record<string, string> }[] = [];
  for (const combination of combinations) {
    const recipe = recipes.find((r) => r.name === combination.get('recipe')!.value)!;
    const base = bases.find((b) => b.name === combination.get('base')!.value)!;
    const matrixVariables = Object.fromEntries([...combination].filter(([key]) => key !== 'recipe' && key !== 'base').map(([key, cell]) => [key, cell.value]));
    const variables = { ...fixed, ...matrixVariables };
    planned.push({ combination, recipe, base, matrixVariables, variables });
    const defined = known.get(recipe.name);
    if (!defined) continue;
    const locations = new Map([...Object.keys(fixed).map((key) => [key, locate.of(['set'], key)] as const), ...[...combination].map(([key, cell]) => [key, cell.keyLocation] as const)]);
    for (const key of Object.keys(variables).filter((key) => !defined.includes(key))) {
      problems.push({ location: locations.get(key)!, message: `"${key}" is not a variable of recipe ${recipe.name} (${recipe.written})${closest(key, defined)}; it defines: ${defined.join(', ') || 'none'}` });
    }
  }
  if (problems.length) return { problems: unique(problems) };

  const builds: MatrixBuild[] = [];
  for (const { combination, recipe, base, matrixVariables, variables } of planned) {
    // The values each build gives the recipe must make a valid recipe too (a pattern on a rendered version, say).
    const checked = parseRecipe(readFileSync(recipe.path, 'utf8'), underDir(process.cwd(), recipe.path), { set: variables });
    if (!checked.recipe) {
      problems.push(...checked.problems.map((p) => ({ location: p.location, message: `${[...combination.values()].map((c) => c.value).join(' × ')}: ${p.message}` })));
      continue;
    }
    // Names may use the recipe's own defaults for what the matrix leaves alone.
    const name = reader.name(combination, recipe, base, checked.recipe.variables);
    if (name) builds.push({ name, recipe, base, matrixVariables, variables });
  }
  problems.push(...reader.problems);
  const names = builds.map((b) => b.name);
  const clashes = [...new Set(names.filter((name, i) => names.indexOf(name) !== i))];
  for (const name of clashes) {
    problems.push({
      location: raw.output?.name === undefined ? locate.of([]) : locate.of(['output', 'name']),
      message: `${names.filter((n) => n === name).length} builds are named "${name}": put the variables that tell them apart into output.name`,
    });
  }
  if (problems.length) return { problems: unique(problems) };
  return {
    matrix: {
      path,
      dir,
      text,
      builds,
      recipes,
      bases,
      output: { dir: resolve(dir, raw.output?.dir ?? '.'), formats: raw.output?.formats, compress: raw.output?.compress },
    },
    problems: [],
  };
}

export function loadMatrix(path: string): Matrix {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    throw new ImageBuilderError('BAD_RECIPE', `cannot read matrix file ${path}: ${code === 'ENOENT' ? 'no such file' : code}`, { hint: 'give the path of a matrix YAML file (see docs/scale.md)' });
  }
  const { matrix, problems } = parseMatrix(text, path);
  if (!matrix) {
    const [first, ...rest] = problems;
    throw new ImageBuilderError('BAD_RECIPE', `${first.location}: ${first.message}`, {
      detail: rest.length ? rest.map((p) => `${p.location}: ${p.message}`).join('\n') : undefined,
      hint: 'see docs/scale.md for the matrix file; paths in it are relative to it',
    });
  }
  return matrix;
}
