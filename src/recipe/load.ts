import { readFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';
import { isMap, isPair, isScalar, LineCounter, parseDocument, type Document, type Node } from 'yaml';
import { sha256Text } from '../fetch/checksums.js';
import { findStepType, STEP_COMMON_PROPERTIES, STEP_TYPES, stepSchema } from '../steps/registry.js';
import type { StepType } from '../steps/types.js';
import { ImageBuilderError } from '../util/errors.js';
import { recipeSchema } from './schema.js';

export interface RecipeStep {
  index: number;
  name?: string;
  type: StepType<any>;
  spec: unknown;
  /** file:line:column of the step in the recipe, for messages. */
  location: string;
}

export interface Recipe {
  path: string;
  dir: string;
  name: string;
  description?: string;
  steps: RecipeStep[];
  /** sha256 of the recipe file as read: the BOM records what was built from. */
  sha256: string;
}

export interface RecipeProblem {
  location: string;
  message: string;
}

// verbose: errors carry the offending value, so messages can quote it.
const ajv = new Ajv({ allErrors: true, strict: false, verbose: true });
let envelopeValidator: ValidateFunction | undefined;
const stepValidators = new Map<string, ValidateFunction>();

function envelope(): ValidateFunction {
  // Steps are checked one by one below, so each error speaks of the step type the user meant.
  const schema = recipeSchema();
  const properties = schema.properties as Record<string, Record<string, unknown>>;
  return (envelopeValidator ??= ajv.compile({ ...schema, properties: { ...properties, steps: { ...properties.steps, items: { type: 'object' } } } }));
}

function stepValidator(type: StepType<any>): ValidateFunction {
  let validator = stepValidators.get(type.key);
  if (!validator) stepValidators.set(type.key, (validator = ajv.compile(stepSchema(type))));
  return validator;
}

export function editDistance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let previous = row[0];
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const current = row[j];
      row[j] = Math.min(row[j] + 1, row[j - 1] + 1, previous + (a[i - 1] === b[j - 1] ? 0 : 1));
      previous = current;
    }
  }
  return row[b.length];
}

export function didYouMean(word: string, candidates: readonly string[]): string {
  const best = candidates
    .map((candidate) => ({ candidate, distance: editDistance(word.toLowerCase(), candidate.toLowerCase()) }))
    .sort((a, b) => a.distance - b.distance)[0];
  return best && best.distance <= Math.max(2, Math.floor(word.length / 3)) ? ` (did you mean "${best.candidate}"?)` : '';
}

class Locator {
  constructor(
    private readonly file: string,
    private readonly doc: Document,
    private readonly lines: LineCounter,
  ) {}

  at(offset: number | undefined): string {
    if (offset === undefined) return `${this.file}:1:1`;
    const { line, col } = this.lines.linePos(offset);
    return `${this.file}:${line}:${col}`;
  }

  /** Position of the value at a JSON path; with `key`, of that key inside the map at the path. */
  of(path: (string | number)[], key?: string): string {
    const node = (path.length ? this.doc.getIn(path, true) : this.doc.contents) as Node | undefined;
    if (key !== undefined && isMap(node)) {
      const pair = node.items.find((item) => isPair(item) && isScalar(item.key) && item.key.value === key);
      if (pair && isScalar(pair.key)) return this.at(pair.key.range?.[0]);
    }
    return this.at(node?.range?.[0]);
  }
}

function pathOf(instancePath: string): (string | number)[] {
  return instancePath
    .split('/')
    .slice(1)
    .map((part) => part.replace(/~1/g, '/').replace(/~0/g, '~'))
    .map((part) => (/^\d+$/.test(part) ? Number(part) : part));
}

function describeAjvError(error: ErrorObject, where: string, allowedKeys: () => string[]): string {
  const subject = where || 'the recipe';
  switch (error.keyword) {
    case 'additionalProperties': {
      const extra = (error.params as { additionalProperty: string }).additionalProperty;
      return `${subject}: unknown key "${extra}"${didYouMean(extra, allowedKeys())}; allowed: ${allowedKeys().join(', ')}`;
    }
    case 'required':
      return `${subject}: missing required key "${(error.params as { missingProperty: string }).missingProperty}"`;
    case 'enum':
      return `${subject} must be one of ${(error.params as { allowedValues: unknown[] }).allowedValues.map((v) => JSON.stringify(v)).join(', ')}`;
    case 'pattern':
      return `${subject} ${error.message} (got ${JSON.stringify(error.data)})`;
    default:
      return `${subject} ${error.message}`;
  }
}

function dotted(path: (string | number)[]): string {
  return path.map((part, i) => (typeof part === 'number' ? `[${part}]` : i === 0 ? part : `.${part}`)).join('');
}

/** Converts ajv errors to problems with positions, dropping the noise of oneOf branches that were not meant. */
function problemsFrom(errors: ErrorObject[], prefix: (string | number)[], locate: Locator): RecipeProblem[] {
  const relevant = errors.filter((e) => e.keyword !== 'oneOf' && e.keyword !== 'if');
  // For a oneOf between a string and an object form, keep the errors of the branch whose type matched.
  const typeMatched = relevant.filter((e) => e.keyword !== 'type' || !relevant.some((o) => o !== e && o.instancePath === e.instancePath && o.keyword !== 'type'));
  const chosen = typeMatched.length ? typeMatched : relevant;
  const seen = new Set<string>();
  const problems: RecipeProblem[] = [];
  for (const error of chosen) {
    const path = [...prefix, ...pathOf(error.instancePath)];
    const key = error.keyword === 'additionalProperties' ? (error.params as { additionalProperty: string }).additionalProperty : undefined;
    const allowed = () => Object.keys((error.parentSchema?.properties as object | undefined) ?? {});
    const problem = { location: locate.of(path, key), message: describeAjvError(error, dotted(path), allowed) };
    const id = `${problem.location} ${problem.message}`;
    if (!seen.has(id)) problems.push(problem);
    seen.add(id);
  }
  return problems;
}

/** Parses and validates recipe text; returns the recipe or every problem found, each with file:line:column. */
export function parseRecipe(text: string, path: string): { recipe?: Recipe; problems: RecipeProblem[] } {
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: true });
  const locate = new Locator(path, doc, lines);
  if (doc.errors.length) {
    return { problems: doc.errors.map((error) => ({ location: locate.at(error.pos[0]), message: `YAML syntax: ${error.message.split('\n')[0]}` })) };
  }
  const data = doc.toJS() as Record<string, unknown> | null;
  const validateEnvelope = envelope();
  if (!validateEnvelope(data)) return { problems: problemsFrom(validateEnvelope.errors ?? [], [], locate) };

  const problems: RecipeProblem[] = [];
  const steps: RecipeStep[] = [];
  const known = STEP_TYPES.map((type) => type.key);
  (data!.steps as Record<string, unknown>[]).forEach((step, index) => {
    const at = ['steps', index];
    const typeKeys = Object.keys(step).filter((key) => !(key in STEP_COMMON_PROPERTIES));
    if (typeKeys.length !== 1 || !findStepType(typeKeys[0])) {
      const unknown = typeKeys.find((key) => !findStepType(key));
      const message =
        typeKeys.length === 0
          ? `steps[${index}] has no step type; expected one of: ${known.join(', ')}`
          : unknown
            ? `steps[${index}]: unknown step type "${unknown}"${didYouMean(unknown, known)}; expected one of: ${known.join(', ')}`
            : `steps[${index}] has more than one step type (${typeKeys.join(', ')}); split it into one step each`;
      problems.push({ location: locate.of(at, unknown ?? typeKeys[1]), message });
      return;
    }
    const type = findStepType(typeKeys[0])!;
    const validate = stepValidator(type);
    if (!validate(step)) {
      problems.push(...problemsFrom(validate.errors ?? [], at, locate));
      return;
    }
    steps.push({ index, name: step.name as string | undefined, type, spec: step[type.key], location: locate.of(at) });
  });
  if (problems.length) return { problems };
  return {
    recipe: {
      path,
      dir: dirname(resolve(path)),
      name: data!.name as string,
      description: data!.description as string | undefined,
      steps,
      sha256: sha256Text(text),
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

export async function loadRecipe(path: string): Promise<Recipe> {
  const text = await readFile(path, 'utf8').catch((error: NodeJS.ErrnoException) => {
    throw new ImageBuilderError('BAD_RECIPE', `cannot read recipe ${path}: ${error.code === 'ENOENT' ? 'no such file' : error.message}`, {
      hint: 'give the path of a recipe YAML file; shipped examples are in recipes/examples/',
    });
  });
  const { recipe, problems } = parseRecipe(text, path);
  if (!recipe) throw recipeError(problems);
  return recipe;
}
