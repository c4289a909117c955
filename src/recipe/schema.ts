import { STEP_TYPES, stepSchema } from '../steps/registry.js';
import type { JsonSchema } from '../steps/types.js';

/** A step that inlines another recipe file's steps (and variable defaults) in its place. */
export const INCLUDE_KEY = 'include';

export const RECIPE_SCHEMA_ID = 'https://imagebuilder.dev/schemas/recipe.schema.json';

/** The recipe envelope; `steps.items` is filled from the step registry. */
export function recipeSchema(): JsonSchema {
  return {
    $schema: 'http://json-schema.org/draft-07/schema#',
    $id: RECIPE_SCHEMA_ID,
    title: 'imagebuilder recipe',
    description: 'Steps that make a bootable cloud disk image ready to be a Kubernetes node. Generated from src/steps/; do not edit.',
    type: 'object',
    additionalProperties: false,
    required: ['name', 'steps'],
    properties: {
      name: { type: 'string', pattern: '^[a-z0-9][a-z0-9._-]*$', description: 'The recipe name: lowercase letters, digits, ".", "_" and "-".' },
      description: { type: 'string', description: 'What the image is for.' },
      variables: {
        type: 'object',
        description: 'Variables and their defaults, used as {{ name }} in any string of a step; --vars FILE and --set name=value override them.',
        propertyNames: { pattern: '^[A-Za-z_][A-Za-z0-9_]*$' },
        additionalProperties: { type: ['string', 'number', 'boolean'] },
      },
      steps: {
        type: 'array',
        minItems: 1,
        description: 'Run in order, inside the guest.',
        items: {
          oneOf: [
            ...STEP_TYPES.map(stepSchema),
            {
              type: 'object',
              title: INCLUDE_KEY,
              description: "Inline another recipe file's steps here (path relative to this file).",
              additionalProperties: false,
              required: [INCLUDE_KEY],
              properties: { [INCLUDE_KEY]: { type: 'string', minLength: 1 } },
            },
          ],
        },
      },
    },
  };
}
