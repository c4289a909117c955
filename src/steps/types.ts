import type { ChrootSession } from '../chroot/session.js';
import type { Distro } from '../distro/families.js';
import type { Logger } from '../util/log.js';

/** A JSON Schema fragment (draft 2020-12 subset ajv understands). */
export type JsonSchema = Record<string, unknown>;

export interface StepContext {
  session: ChrootSession;
  distro: Distro;
  log: Logger;
  signal?: AbortSignal;
  /** Directory of the recipe file: relative host paths in steps are relative to it. */
  recipeDir: string;
  /** The step's label in messages: "step 2 (install containerd)". */
  label: string;
}

/**
 * One step type, defined once: the schema of its value, its documentation, and what it does.
 * The registry of these drives recipe validation, schemas/recipe.schema.json, `imagebuilder steps` and the README.
 */
export interface StepType<Spec = unknown> {
  /** The key that selects this type in a recipe step: `- packages: {...}`. */
  readonly key: string;
  readonly summary: string;
  readonly description: string;
  /** An example value, as it would appear under the key. */
  readonly example: Spec;
  readonly schema: JsonSchema;
  /** A short description of one use, for logs when the step has no name. */
  describe(spec: Spec): string;
  run(context: StepContext, spec: Spec): Promise<void>;
}

export function defineStep<Spec>(type: StepType<Spec>): StepType<Spec> {
  return type;
}
