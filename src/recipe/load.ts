import { readFileSync } from 'node:fs';
import type { GuestNetwork } from '../chroot/sandbox.js';
import type { RecipeLimits } from './schema.js';
import { dirname, relative, resolve } from 'node:path';
import type { ValidateFunction } from 'ajv';
import { sha256Text } from '../util/digest.js';
import { findStepType, STEP_COMMON_PROPERTIES, STEP_TYPES } from '../steps/registry.js';
import type { StepType } from '../steps/types.js';
import { ImageBuilderError } from '../util/errors.js';
import { INCLUDE_KEY } from './schema.js';
import { schemaValidator } from './validators.js';
import { closest, hasTemplate, renderTemplate } from '../util/template.js';
import { hostPathEscape } from '../steps/host-inputs.js';
import { parseSource, problemsFrom, type LocatedProblem, type SourceFile } from './located-yaml.js';
import { parseChecks, type RawCheck } from './checks.js';
import type { Check } from '../checks/types.js';
import type { WhenCondition } from '../steps/when.js';

export interface RecipeStep {
  /** Position in the expanded recipe (includes inlined), from 0. */
  index: number;
  name?: string;
  type: StepType<any>;
  /** The step's value with every {{ variable }} substituted. */
  spec: unknown;
  when?: WhenCondition;
  /** The network of its guest commands: its own `network:`, else its file's, else the nearest including file's (else the session's default). */
  network?: GuestNetwork;
  /** file:line:column of the step, in whichever file (recipe or include) it is written. */
  location: string;
  /** Directory of that file: the step's relative host paths start there. */
  dir: string;
  /** Where its host paths must stay: the recipe's directory, then the directories --allow-host-path allows. */
  hostRoots: string[];
}

export interface Recipe {
  path: string;
  dir: string;
  name: string;
  description?: string;
  steps: RecipeStep[];
  /** The value of every variable after defaults, --vars and --set. */
  variables: Record<string, string>;
  /** sha256 of the recipe file as read: the BOM records what was built from. */
  sha256: string;
  /** Every included file, relative to the recipe's directory, with its sha256. */
  includes: { path: string; sha256: string }[];
  /** The network of guest commands unless a step says otherwise (default: sandboxed). */
  network?: GuestNetwork;
  /** The build sandbox's limits and the run steps' default timeout, as written (flags override them). */
  limits?: RecipeLimits;
  /** `disk.size`: the virtual disk grown before the steps (--grow overrides it). */
  disk?: { size?: string | number };
  /** What `apply` checks on the image at the end of phase 1, and `imagebuilder test` in the booted guest. */
  checks: (Check & { name?: string })[];
}

export type RecipeProblem = LocatedProblem;

export interface RecipeInputs {
  /** `--set name=value`, applied last. */
  set?: Record<string, string>;
  /** `--vars FILE`: a YAML map of name: value, applied before --set. */
  varsFile?: string;
  /** Check the schema only, not the host files steps name (documentation examples name illustrative paths). */
  schemaOnly?: boolean;
  /** `--allow-host-path DIR`: directories besides the recipe's own that its host paths may name. */
  allowHostPaths?: string[];
}

export { closest as didYouMean } from '../util/template.js';

const envelopeValidator = (requireName: boolean): ValidateFunction => schemaValidator(`envelope-${requireName}`);
const stepValidator = (type: StepType<any>) => schemaValidator(`step-${type.key}`);

interface RawStep {
  file: SourceFile;
  at: (string | number)[];
  value: Record<string, unknown>;
  /** The `network:` of the file it is written in, or of the nearest file including that one that says. */
  network?: GuestNetwork;
}

interface VariableDefinition {
  value: string;
  location: string;
  /** A column of a table (`tables:`): its value is the cell of the row the table's key picks. */
  table?: TableColumn;
}

interface TableColumn {
  table: string;
  column: string;
  key: string;
  keyLocation: string;
  rows: Record<string, Record<string, unknown>>;
  rowLocation: (row: string) => string;
}

/** Reads included files relative to the including one, depth first, refusing cycles. */
class Expander {
  readonly problems: RecipeProblem[] = [];
  readonly steps: RawStep[] = [];
  /** Every file's `checks:` items, the including file's first. */
  readonly checks: RawCheck[] = [];
  readonly definitions = new Map<string, VariableDefinition>();
  readonly includes: { path: string; sha256: string }[] = [];
  /** One set for the whole build: a key the including recipe sets wins over an include's. */
  readonly limits: RecipeLimits = {};

  constructor(
    private readonly root: string,
    /** Where an include may lead: the recipe's directory and the allowed ones. */
    private readonly hostRoots: string[] = [root],
  ) {}

  add(file: SourceFile, chain: string[], includerNetwork?: GuestNetwork): void {
    const network = (file.data.network as GuestNetwork | undefined) ?? includerNetwork;
    for (const [key, value] of Object.entries((file.data.limits as RecipeLimits | undefined) ?? {})) {
      if (!(key in this.limits)) Object.assign(this.limits, { [key]: value });
    }
    for (const [name, value] of Object.entries((file.data.variables as Record<string, unknown> | undefined) ?? {})) {
      // The including recipe's own definition wins over an include's default.
      if (!this.definitions.has(name)) this.definitions.set(name, { value: String(value), location: file.locate.of(['variables', name]) });
    }
    for (const [table, { key, rows }] of Object.entries((file.data.tables as Record<string, { key: string; rows: Record<string, Record<string, unknown>> }> | undefined) ?? {})) {
      const keyLocation = file.locate.of(['tables', table, 'key']);
      const rowLocation = (row: string) => file.locate.of(['tables', table, 'rows', row]);
      for (const column of new Set(Object.values(rows).flatMap((row) => Object.keys(row)))) {
        if ((file.data.variables as Record<string, unknown> | undefined)?.[column] !== undefined) {
          this.problems.push({ location: keyLocation, message: `"${column}" is both a variable and a column of table ${table}: give it one home` });
          continue;
        }
        if (!this.definitions.has(column)) this.definitions.set(column, { value: '', location: keyLocation, table: { table, column, key, keyLocation, rows, rowLocation } });
      }
    }
    ((file.data.checks as Record<string, unknown>[] | undefined) ?? []).forEach((value, index) => this.checks.push({ file, at: ['checks', index], value }));
    (file.data.steps as Record<string, unknown>[]).forEach((value, index) => {
      const at = ['steps', index];
      if (!(INCLUDE_KEY in value)) {
        this.steps.push({ file, at, value, network });
        return;
      }
      const target = resolve(dirname(file.path), String(value[INCLUDE_KEY]));
      const location = file.locate.of([...at, INCLUDE_KEY]);
      const escape = hostPathEscape(this.hostRoots, dirname(file.path), String(value[INCLUDE_KEY]));
      if (escape) {
        this.problems.push({ location, message: `cannot include ${escape}` });
        return;
      }
      if (chain.includes(target)) {
        this.problems.push({ location, message: `include cycle: ${[...chain, target].map((p) => relative(this.root, p) || p).join(' → ')}` });
        return;
      }
      let text: string;
      try {
        text = readFileSync(target, 'utf8');
      } catch (error) {
        const code = (error as NodeJS.ErrnoException).code;
        this.problems.push({
          location,
          message: `cannot include "${value[INCLUDE_KEY]}": ${code === 'ENOENT' ? 'no such file' : code} (${target}); include paths are relative to the file that includes them`,
        });
        return;
      }
      const fromHere = relative(process.cwd(), target);
      const display = fromHere && !fromHere.startsWith('..') ? fromHere : target;
      const parsed = parseSource(text, display);
      if (!parsed.file) {
        this.problems.push(...parsed.problems);
        return;
      }
      const validate = envelopeValidator(false);
      if (!validate(parsed.file.data)) {
        this.problems.push(...problemsFrom(validate.errors ?? [], [], parsed.file.locate));
        return;
      }
      this.includes.push({ path: relative(this.root, target), sha256: sha256Text(text) });
      this.add({ ...parsed.file, path: target }, [...chain, target], network);
    });
  }
}

/** Applies --vars then --set over the defaults; names nobody defined are errors (a typo would otherwise be silent). */
function applyOverrides(expander: Expander, inputs: RecipeInputs): RecipeProblem[] {
  const problems: RecipeProblem[] = [];
  const known = () => [...expander.definitions.keys()];
  const override = (name: string, value: string, location: string) => {
    if (!expander.definitions.has(name)) {
      problems.push({ location, message: `unknown variable "${name}"${closest(name, known())}; the recipe defines: ${known().join(', ') || 'none'}` });
      return;
    }
    expander.definitions.set(name, { value, location });
  };
  if (inputs.varsFile) {
    let text: string | undefined;
    try {
      text = readFileSync(inputs.varsFile, 'utf8');
    } catch (error) {
      problems.push({ location: inputs.varsFile, message: `cannot read --vars file: ${(error as NodeJS.ErrnoException).code}` });
    }
    if (text !== undefined) {
      const parsed = parseSource(text, inputs.varsFile);
      problems.push(...parsed.problems);
      const data = parsed.file?.data;
      if (parsed.file && (data === null || typeof data !== 'object' || Array.isArray(data))) {
        problems.push({ location: `${inputs.varsFile}:1:1`, message: '--vars file must be a YAML map of name: value' });
      } else if (parsed.file) {
        for (const [name, value] of Object.entries(data as Record<string, unknown>)) override(name, String(value), parsed.file.locate.of([], name));
      }
    }
  }
  for (const [name, value] of Object.entries(inputs.set ?? {})) override(name, value, `--set ${name}`);
  return problems;
}

/** Variables may use other variables; each is rendered once, in dependency order, cycles refused. */
function resolveVariables(definitions: Map<string, VariableDefinition>): { values: Record<string, string>; problems: RecipeProblem[]; unmatchedTables: number } {
  const values: Record<string, string> = {};
  const problems: RecipeProblem[] = [];
  const resolving = new Set<string>();
  const resolveOne = (name: string): string | undefined => {
    if (Object.hasOwn(values, name)) return values[name];
    const definition = definitions.get(name);
    if (!definition) return undefined;
    if (resolving.has(name)) {
      problems.push({ location: definition.location, message: `variable "${name}" refers to itself through ${[...resolving].join(' → ')}` });
      return '';
    }
    resolving.add(name);
    const cell = definition.table ? tableCell(definition.table) : { value: definition.value, location: definition.location };
    const rendered = renderTemplate(cell.value, resolveOne, () => [...definitions.keys()]);
    resolving.delete(name);
    problems.push(...rendered.errors.map((message) => ({ location: cell.location, message })));
    return (values[name] = rendered.value);
  };
  // A table's key picks its row; a key with no row is said once per table, where the choice was made.
  const unmatched = new Set<string>();
  const tableCell = (column: TableColumn): { value: string; location: string } => {
    const key = renderTemplate(column.key, resolveOne, () => [...definitions.keys()]);
    const row = column.rows[key.value];
    if (!row) {
      // Said once per table: every column of it asks.
      if (!unmatched.has(column.table)) {
        unmatched.add(column.table);
        if (key.errors.length) problems.push(...key.errors.map((message) => ({ location: column.keyLocation, message })));
        else {
          const chosenBy = key.used.map((used) => ({ used, definition: definitions.get(used) })).find(({ definition }) => definition && !definition.table);
          const what = chosenBy ? `${chosenBy.used} = "${values[chosenBy.used]}" selects` : 'selects';
          problems.push({
            location: chosenBy?.definition?.location ?? column.keyLocation,
            message: `${what} "${key.value}" in table ${column.table} (${column.keyLocation}), which has no such row; it has: ${Object.keys(column.rows).join(', ')}`,
          });
        }
      }
      return { value: '', location: column.keyLocation };
    }
    if (!(column.column in row)) {
      problems.push({ location: column.rowLocation(key.value), message: `row "${key.value}" of table ${column.table} has no "${column.column}", which other rows have` });
      return { value: '', location: column.rowLocation(key.value) };
    }
    return { value: String(row[column.column]), location: column.rowLocation(key.value) };
  };
  for (const name of definitions.keys()) resolveOne(name);
  return { values, problems, unmatchedTables: unmatched.size };
}

/**
 * The most text a recipe's steps and checks may render to in all: each string is bounded (MAX_RENDERED_CHARS), and
 * ten thousand steps each naming a 1 MiB variable would otherwise make 10 GB of them.
 */
const MAX_RECIPE_RENDERED_CHARS = 64 << 20;

/** Substitutes variables in every string of a step value, reporting each problem at its string. */
function renderDeep(value: unknown, at: (string | number)[], file: SourceFile, values: Record<string, string>, problems: RecipeProblem[], budget: { left: number }): unknown {
  if (typeof value === 'string') {
    if (!hasTemplate(value)) return value;
    if (budget.left < 0) return '';
    const rendered = renderTemplate(value, (name) => values[name], () => Object.keys(values));
    problems.push(...rendered.errors.map((message) => ({ location: file.locate.of(at), message })));
    budget.left -= rendered.value.length;
    if (budget.left >= 0) return rendered.value;
    if (budget.left + rendered.value.length >= 0) problems.push({ location: file.locate.of(at), message: `the recipe renders to more than ${MAX_RECIPE_RENDERED_CHARS} characters of steps and checks (variables repeated many times?)` });
    return '';
  }
  if (Array.isArray(value)) return value.map((item, i) => renderDeep(item, [...at, i], file, values, problems, budget));
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([key, item]) => [key, renderDeep(item, [...at, key], file, values, problems, budget)]));
  }
  return value;
}

function typeProblem(step: RawStep, typeKeys: string[]): RecipeProblem {
  const known = [...STEP_TYPES.map((type) => type.key), INCLUDE_KEY];
  const index = step.at[1];
  const unknown = typeKeys.find((key) => !findStepType(key));
  const message =
    typeKeys.length === 0
      ? `steps[${index}] has no step type; expected one of: ${known.join(', ')}`
      : unknown
        ? `steps[${index}]: unknown step type "${unknown}"${closest(unknown, known)}; expected one of: ${known.join(', ')}`
        : `steps[${index}] has more than one step type (${typeKeys.join(', ')}); split it into one step each`;
  return { location: step.file.locate.of(step.at, unknown ?? typeKeys[1]), message };
}

/**
 * Parses and validates a recipe — includes inlined, variables resolved and substituted — and returns it, or
 * every problem found, each with file:line:column. Needs no root and no image.
 */
export function parseRecipe(text: string, path: string, inputs: RecipeInputs = {}): { recipe?: Recipe; problems: RecipeProblem[] } {
  const parsed = parseSource(text, path);
  if (!parsed.file) return { problems: parsed.problems };
  const top = parsed.file;
  const validateEnvelope = envelopeValidator(true);
  if (!validateEnvelope(top.data)) return { problems: problemsFrom(validateEnvelope.errors ?? [], [], top.locate) };

  const hostRoots = [dirname(resolve(path)), ...(inputs.allowHostPaths ?? []).map((dir) => resolve(dir))];
  const expander = new Expander(dirname(resolve(path)), hostRoots);
  expander.add({ ...top, path: resolve(path) }, [resolve(path)]);
  // Locations inside the top file keep the path as the user gave it.
  const problems = [...expander.problems, ...applyOverrides(expander, inputs)];
  const { values, problems: variableProblems, unmatchedTables } = resolveVariables(expander.definitions);
  problems.push(...variableProblems);
  // A table with no row for its key leaves its columns empty: the steps would only echo that error.
  if (unmatchedTables) return { problems };

  const steps: RecipeStep[] = [];
  const budget = { left: MAX_RECIPE_RENDERED_CHARS };
  expander.steps.forEach((raw, index) => {
    const typeKeys = Object.keys(raw.value).filter((key) => !(key in STEP_COMMON_PROPERTIES));
    const type = typeKeys.length === 1 ? findStepType(typeKeys[0]) : undefined;
    if (!type) {
      problems.push(typeProblem(raw, typeKeys));
      return;
    }
    const stepProblems: RecipeProblem[] = [];
    const value = renderDeep(raw.value, raw.at, raw.file, values, stepProblems, budget) as Record<string, unknown>;
    if (!stepProblems.length) {
      const validate = stepValidator(type);
      if (!validate(value)) stepProblems.push(...problemsFrom(validate.errors ?? [], raw.at, raw.file.locate));
    }
    const dir = dirname(resolve(raw.file.path));
    if (!stepProblems.length && type.hostPaths && !inputs.schemaOnly) {
      for (const { at, path: named } of type.hostPaths(value[type.key])) {
        const escape = hostPathEscape(hostRoots, dir, named);
        if (escape) stepProblems.push({ location: raw.file.locate.of([...raw.at, type.key, ...at]), message: escape });
      }
    }
    if (!stepProblems.length && type.check && !inputs.schemaOnly) {
      const environment = { recipeDir: dir, hostRoots, variables: values };
      stepProblems.push(...type.check(value[type.key], environment).map((message) => ({ location: raw.file.locate.of(raw.at), message })));
    }
    problems.push(...stepProblems);
    if (stepProblems.length) return;
    steps.push({
      index,
      name: value.name as string | undefined,
      type,
      spec: value[type.key],
      when: value.when as WhenCondition | undefined,
      network: (value.network as GuestNetwork | undefined) ?? raw.network,
      location: raw.file.locate.of(raw.at),
      dir,
      hostRoots,
    });
  });
  const checks = parseChecks(
    expander.checks.map((raw) => ({ ...raw, value: renderDeep(raw.value, raw.at, raw.file, values, problems, budget) as Record<string, unknown> })),
    problems,
  );
  if (problems.length) return { problems };
  return {
    recipe: {
      path,
      dir: dirname(resolve(path)),
      name: top.data.name as string,
      description: top.data.description as string | undefined,
      steps,
      variables: values,
      sha256: sha256Text(text),
      includes: expander.includes,
      network: top.data.network as GuestNetwork | undefined,
      limits: Object.keys(expander.limits).length ? expander.limits : undefined,
      ...(top.data.disk ? { disk: top.data.disk as { size?: string | number } } : {}),
      checks,
    },
    problems: [],
  };
}

export function recipeError(problems: RecipeProblem[]): ImageBuilderError {
  const [first, ...rest] = problems;
  return new ImageBuilderError('BAD_RECIPE', `${first.location}: ${first.message}`, {
    detail: rest.length ? rest.map((p) => `${p.location}: ${p.message}`).join('\n') : undefined,
    hint: 'see `imagebuilder steps` for every step type and its keys, or validate with `imagebuilder validate RECIPE`',
  });
}

export function readRecipeText(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    throw new ImageBuilderError('BAD_RECIPE', `cannot read recipe ${path}: ${code === 'ENOENT' ? 'no such file' : code}`, {
      hint: 'give the path of a recipe YAML file; shipped recipes are in recipes/',
    });
  }
}

export async function loadRecipe(path: string, inputs: RecipeInputs = {}): Promise<Recipe> {
  const { recipe, problems } = parseRecipe(readRecipeText(path), path, inputs);
  if (!recipe) throw recipeError(problems);
  return recipe;
}

/** `--set a=b` flags into a map; a flag without `=` is an error that says the form. */
export function parseSetFlags(flags: string[] = []): Record<string, string> {
  const values: Record<string, string> = {};
  for (const flag of flags) {
    const at = flag.indexOf('=');
    if (at <= 0) throw new ImageBuilderError('BAD_INPUT', `--set ${flag}: expected NAME=VALUE`, { hint: 'e.g. --set kubernetes_version=1.30.2' });
    values[flag.slice(0, at)] = flag.slice(at + 1);
  }
  return values;
}
