import { fileStep } from './file.js';
import { packagesStep } from './packages.js';
import { runStep } from './run.js';
import type { JsonSchema, StepType } from './types.js';
import { WHEN_SCHEMA } from '../recipe/when.js';

/** THE registry: every step type, once. Order is the order of the docs. */
export const STEP_TYPES: readonly StepType<any>[] = [packagesStep, fileStep, runStep];

export function findStepType(key: string): StepType<any> | undefined {
  return STEP_TYPES.find((type) => type.key === key);
}

/** Keys a step may carry besides its type key. */
export const STEP_COMMON_PROPERTIES: Record<string, JsonSchema> = {
  name: { type: 'string', minLength: 1, description: 'A name for the step, shown in logs and the BOM.' },
  when: WHEN_SCHEMA,
};

/** The schema of one step of the given type: `{name?, <key>: value}`. */
export function stepSchema(type: StepType<any>): JsonSchema {
  return {
    type: 'object',
    title: type.key,
    description: type.summary,
    additionalProperties: false,
    required: [type.key],
    properties: { ...STEP_COMMON_PROPERTIES, [type.key]: { ...type.schema, description: type.description } },
  };
}
