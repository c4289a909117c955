import { containerImagesStep } from './container-images.js';
import { copyStep } from './copy.js';
import { downloadStep } from './download.js';
import { fileStep } from './file.js';
import { packagesStep } from './packages.js';
import { repositoryStep } from './repository.js';
import { runStep } from './run.js';
import { kernelModulesStep } from './kernel-modules.js';
import { serviceStep } from './service.js';
import { swapStep } from './swap.js';
import { sysctlStep } from './sysctl.js';
import { sysprepStep } from './sysprep.js';
import { userStep } from './user.js';
import type { StepType } from './types.js';
import { typedItemSchema, type JsonSchema } from '../util/json-schema.js';
import { WHEN_SCHEMA } from './when.js';
import { NETWORK_SCHEMA } from '../chroot/sandbox.js';

/** THE registry: every step type, once. Order is the order of the docs. */
export const STEP_TYPES: readonly StepType<any>[] = [packagesStep, repositoryStep, fileStep, runStep, downloadStep, copyStep, containerImagesStep, serviceStep, sysctlStep, kernelModulesStep, swapStep, userStep, sysprepStep];

export function findStepType(key: string): StepType<any> | undefined {
  return STEP_TYPES.find((type) => type.key === key);
}

/** Keys a step may carry besides its type key. */
export const STEP_COMMON_PROPERTIES: Record<string, JsonSchema> = {
  name: { type: 'string', minLength: 1, description: 'A name for the step, shown in logs and the BOM.' },
  when: WHEN_SCHEMA,
  network: NETWORK_SCHEMA,
};

/** The schema of one step of the given type: `{name?, <key>: value}`. */
export function stepSchema(type: StepType<any>): JsonSchema {
  return typedItemSchema(type, STEP_COMMON_PROPERTIES);
}
