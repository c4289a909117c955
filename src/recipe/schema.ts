import { STEP_TYPES, stepSchema } from '../steps/registry.js';
import type { JsonSchema } from '../util/json-schema.js';
import { NETWORK_SCHEMA } from '../chroot/sandbox.js';
import { checksListSchema } from '../checks/registry.js';

/** A step that inlines another recipe file's steps (and variable defaults) in its place. */
export const INCLUDE_KEY = 'include';

export const RECIPE_SCHEMA_ID = 'https://imagebuilder.dev/schemas/recipe.schema.json';

/** A string holding a {{ variable }}: its value is only known, and checked, once variables are resolved. */
const TEMPLATE_STRING: JsonSchema = { type: 'string', pattern: '\\{\\{.*\\}\\}' };

/**
 * The editor's view of a step schema: wherever a scalar is constrained (a pattern, an enum, a number), a
 * template string is accepted too. imagebuilder itself checks the strict schema after substitution.
 */
export function allowTemplates(schema: JsonSchema): JsonSchema {
  const walk = (node: unknown): unknown => {
    if (Array.isArray(node)) return node.map(walk);
    if (!node || typeof node !== 'object') return node;
    const entries = Object.entries(node as Record<string, unknown>).map(([key, value]) => {
      if (key === 'properties' || key === 'patternProperties') {
        return [key, Object.fromEntries(Object.entries(value as Record<string, unknown>).map(([name, sub]) => [name, walk(sub)]))];
      }
      // oneOf becomes anyOf: a template string may fit several branches, and only the strict check can tell.
      if (key === 'oneOf') return ['anyOf', walk(value)];
      return ['items', 'additionalProperties', 'anyOf', 'allOf', 'not', 'if', 'then', 'else'].includes(key) ? [key, walk(value)] : [key, value];
    });
    const copy = Object.fromEntries(entries) as Record<string, unknown>;
    const type = copy.type;
    const scalar = typeof type === 'string' && ['string', 'integer', 'number', 'boolean'].includes(type);
    const constrained = type !== 'string' || 'pattern' in copy || 'enum' in copy || 'const' in copy || 'format' in copy;
    if ((scalar && constrained) || (!type && ('enum' in copy || 'const' in copy))) {
      const { description, default: fallback, ...rest } = copy;
      return { ...(description ? { description } : {}), ...(fallback !== undefined ? { default: fallback } : {}), anyOf: [rest, TEMPLATE_STRING] };
    }
    return copy;
  };
  return walk(schema) as JsonSchema;
}

/** Recipe-level `limits:` (flags --memory-limit, --pids-limit override the first two). */
export interface RecipeLimits {
  memory?: string | number;
  pids?: number;
  timeout?: number;
}

const LIMITS_SCHEMA: JsonSchema = {
  type: 'object',
  additionalProperties: false,
  description: "The build's guest commands share these limits; a step that hits one fails naming it.",
  properties: {
    memory: { anyOf: [{ type: 'integer', minimum: 16777216 }, { type: 'string', pattern: '^\\d+(\\.\\d+)?\\s*[KMGTkmgt]?(i?B)?$' }], description: 'Memory (and swap) of all guest commands together: bytes, or 512M, 4G (default 4G).' },
    pids: { type: 'integer', minimum: 16, description: 'Processes and threads at once (default 4096).' },
    timeout: { type: 'integer', minimum: 1, description: 'Seconds any one guest command may take (a package install, a step\'s systemctl or sh), and a run step when it sets no timeout of its own (default 1800).' },
  },
};

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
      tables: {
        type: 'object',
        description:
          'Variables that come in consistent sets, one row per value of a key: `key` (a template over other variables, {{ kubernetes_version | major_minor }}) picks the row, and the row\'s columns are variables like any other (--set overrides one). A key with no row is an error naming the rows there are.',
        propertyNames: { pattern: '^[A-Za-z_][A-Za-z0-9_]*$' },
        additionalProperties: {
          type: 'object',
          additionalProperties: false,
          required: ['key', 'rows'],
          properties: {
            key: { type: 'string', minLength: 1, description: 'Which row: a template over other variables.' },
            rows: {
              type: 'object',
              minProperties: 1,
              description: 'Row name (a value of the key) → column → value.',
              additionalProperties: {
                type: 'object',
                propertyNames: { pattern: '^[A-Za-z_][A-Za-z0-9_]*$' },
                additionalProperties: { type: ['string', 'number', 'boolean'] },
              },
            },
          },
        },
      },
      network: NETWORK_SCHEMA,
      limits: LIMITS_SCHEMA,
      disk: {
        type: 'object',
        additionalProperties: false,
        description: 'The disk the image needs (--grow overrides it).',
        properties: {
          size: {
            anyOf: [{ type: 'integer', minimum: 1 }, { type: 'string', pattern: '^\\+?\\d+(\\.\\d+)?\\s*[KMGTkmgt]?(i?B)?$' }],
            description: 'The virtual disk grown to this size (8G), or by it (+2G), before the steps run: the root partition (when it is the last) and its filesystem grow into it. Never shrinks.',
          },
        },
      },
      checks: checksListSchema(),
      steps: {
        type: 'array',
        description: 'Run in order, inside the guest. None at all converts the image and writes its BOM.',
        items: {
          oneOf: [
            ...STEP_TYPES.map((type) => allowTemplates(stepSchema(type))),
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
