import { OUTPUT_FORMATS } from '../image/formats.js';
import type { JsonSchema } from '../util/json-schema.js';

export const MATRIX_SCHEMA_ID = 'https://imagebuilder.dev/schemas/matrix.schema.json';

const NAME: JsonSchema = { type: 'string', pattern: '^[A-Za-z0-9][A-Za-z0-9._-]*$' };
const VARIABLE_NAME = '^[A-Za-z_][A-Za-z0-9_]*$';
const SCALAR: JsonSchema = { type: ['string', 'number', 'boolean'] };
/** An include or exclude entry: axis (`recipe`, `base`, variables) → value, as in GitHub Actions' matrix. */
const COMBINATION: JsonSchema = {
  type: 'object',
  minProperties: 1,
  propertyNames: { pattern: VARIABLE_NAME },
  additionalProperties: SCALAR,
};

/**
 * The matrix file: recipe(s) × base images × variable axes, with GitHub-Actions-style include/exclude, expanded
 * into one build each. Relative paths are relative to the matrix file.
 */
export function matrixSchema(): JsonSchema {
  return {
    $schema: 'http://json-schema.org/draft-07/schema#',
    $id: MATRIX_SCHEMA_ID,
    title: 'imagebuilder build matrix',
    description: 'Builds of recipe(s) × base images × variable values, run by `imagebuilder matrix` here or on Kubernetes.',
    type: 'object',
    additionalProperties: false,
    required: ['bases'],
    properties: {
      recipe: { type: 'string', minLength: 1, description: 'The recipe every build applies (or use `recipes`).' },
      recipes: {
        type: 'array',
        minItems: 1,
        description: 'Several recipes: an axis named `recipe`, its values the recipe names (the file name without .yaml, or `name`).',
        items: {
          oneOf: [
            { type: 'string', minLength: 1 },
            { type: 'object', additionalProperties: false, required: ['path'], properties: { name: NAME, path: { type: 'string', minLength: 1 } } },
          ],
        },
      },
      bases: {
        type: 'array',
        minItems: 1,
        description: 'Base images: an axis named `base`, its values the base names (default: the image file name without extensions).',
        items: {
          oneOf: [
            { type: 'string', minLength: 1 },
            {
              type: 'object',
              additionalProperties: false,
              oneOf: [
                { required: ['image'], not: { required: ['bundle'] } },
                { required: ['bundle'], not: { anyOf: [{ required: ['image'] }, { required: ['checksum'] }, { required: ['keyring'] }, { required: ['insecure_skip_verify'] }] } },
              ],
              properties: {
                name: NAME,
                image: { type: 'string', minLength: 1, description: 'A local path or an http(s) URL, as --disk-image takes.' },
                bundle: { type: 'string', minLength: 1, description: "Instead of image: an air-gapped bundle (a directory or .tar from `imagebuilder bundle`); this base's builds run offline from it, as `apply --bundle`." },
                checksum: { type: 'string', pattern: '^(sha256|sha512):[0-9a-fA-F]+$', description: 'As --checksum: the sum of the image as published.' },
                keyring: { type: 'string', description: "As --keyring: verify the sums file's signature against this keyring." },
                insecure_skip_verify: { type: 'boolean', description: 'As --insecure-skip-verify.' },
              },
            },
          ],
        },
      },
      variables: {
        type: 'object',
        description: 'Variable axes: each recipe variable named here takes every value listed, one build each.',
        propertyNames: { pattern: VARIABLE_NAME },
        additionalProperties: { type: 'array', minItems: 1, items: SCALAR },
      },
      set: {
        type: 'object',
        description: 'Recipe variables every build gets (as --set).',
        propertyNames: { pattern: VARIABLE_NAME },
        additionalProperties: SCALAR,
      },
      exclude: { type: 'array', items: COMBINATION, description: 'Combinations to leave out: each entry removes the builds whose values match all of its keys.' },
      include: {
        type: 'array',
        items: COMBINATION,
        description:
          "Added after exclude, as GitHub Actions does: an entry's extra keys are added to every build it does not contradict; an entry that fits no build is a build of its own.",
      },
      output: {
        type: 'object',
        additionalProperties: false,
        properties: {
          dir: { type: 'string', minLength: 1, description: 'Where each build writes <dir>/<build>/ (default: beside the matrix file).' },
          name: {
            type: 'string',
            minLength: 1,
            description: 'Each build\'s name, a template over recipe, base and the variables, e.g. "{{ base }}-k8s-{{ kubernetes_version }}" (default: all of them joined by "-").',
          },
          formats: { type: 'array', minItems: 1, items: { enum: [...OUTPUT_FORMATS] }, description: "As apply --format: disk images, tar, ova, gce (default: the base's format)." },
          compress: { type: 'boolean', description: 'As apply --compress.' },
        },
      },
    },
  };
}
