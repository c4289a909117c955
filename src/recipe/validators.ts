import { Ajv, type Options, type ValidateFunction } from 'ajv';
import { CHECK_TYPES, checkSchema } from '../checks/registry.js';
import { STEP_TYPES, stepSchema } from '../steps/registry.js';
import type { JsonSchema } from '../util/json-schema.js';
import { PRECOMPILED } from './precompiled.js';
import { recipeSchema } from './schema.js';

/** verbose: errors carry the offending value and its schema, so messages can quote them. */
export const AJV_OPTIONS: Options = { allErrors: true, strict: false, verbose: true };

/** The recipe envelope with steps and checks left loose: each is checked on its own, so errors speak of the type meant. */
function envelopeSchema(requireName: boolean): JsonSchema {
  const schema = recipeSchema();
  const properties = schema.properties as Record<string, Record<string, unknown>>;
  return {
    ...schema,
    $id: undefined,
    required: requireName ? ['name', 'steps'] : ['steps'],
    properties: { ...properties, steps: { ...properties.steps, items: { type: 'object' } }, checks: { ...properties.checks, items: { type: 'object' } } },
  };
}

/**
 * Every schema a recipe is validated with, by key: the envelope (a recipe, an included file), each step type, each
 * check type. Compiling them took ~35 ms of every build's start-up; the build compiles them to code once
 * (bin/precompile-validators.js). A matrix, read once per run, is compiled when read (matrix/load.ts).
 */
export function validatorSchemas(): Record<string, () => JsonSchema> {
  return {
    'envelope-true': () => envelopeSchema(true),
    'envelope-false': () => envelopeSchema(false),
    ...Object.fromEntries(STEP_TYPES.map((type) => [`step-${type.key}`, () => stepSchema(type)])),
    ...Object.fromEntries(CHECK_TYPES.map((type) => [`check-${type.key}`, () => checkSchema(type)])),
  };
}

let ajv: Ajv | undefined;
const compiled = new Map<string, ValidateFunction>();

/** The validator of a key of validatorSchemas: precompiled, or compiled on first use. */
export function schemaValidator(key: string): ValidateFunction {
  const found = PRECOMPILED[key] ?? compiled.get(key);
  if (found) return found;
  const schema = validatorSchemas()[key];
  if (!schema) throw new Error(`no schema named ${key}`);
  const validate = (ajv ??= new Ajv(AJV_OPTIONS)).compile(schema());
  compiled.set(key, validate);
  return validate;
}
