import { typedItemSchema, type JsonSchema } from '../util/json-schema.js';
import { commandCheck, failedUnitsCheck, fileCheck, kernelModuleCheck, kernelParamCheck, mountCheck, packageCheck, portCheck, serviceCheck } from './kinds.js';
import type { CheckType } from './types.js';

/** THE registry of check types. Order is the order of the docs. */
export const CHECK_TYPES: readonly CheckType<any>[] = [serviceCheck, commandCheck, fileCheck, packageCheck, kernelParamCheck, kernelModuleCheck, portCheck, mountCheck, failedUnitsCheck];

export function findCheckType(key: string): CheckType<any> | undefined {
  return CHECK_TYPES.find((type) => type.key === key);
}

/** One item of a `checks:` list: `{name?, <type>: value}`. */
export function checkSchema(type: CheckType<any>): JsonSchema {
  return typedItemSchema(type, { name: { type: 'string', minLength: 1, description: 'A name for the check, shown in reports.' } });
}

/** A recipe's `checks:` and a check file's: a list of checks, each one type. */
export function checksListSchema(): JsonSchema {
  return {
    type: 'array',
    description: 'Checks of the result: the ones that read only files run at the end of `apply` (on the image), all of them in `imagebuilder test` (booted).',
    items: { oneOf: CHECK_TYPES.map(checkSchema) },
  };
}
