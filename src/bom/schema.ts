import { Ajv } from 'ajv';
import type { JsonSchema } from '../util/json-schema.js';
import { OUTPUT_FORMATS } from '../image/formats.js';

const SHA256 = { type: 'string', pattern: '^[0-9a-f]{64}$' };
const str = { type: 'string' };
const strMap = { type: 'object', additionalProperties: { type: 'string' } };
const object = (properties: Record<string, unknown>, required: string[] = Object.keys(properties)): JsonSchema => ({
  type: 'object',
  additionalProperties: false,
  required,
  properties,
});
const list = (items: unknown) => ({ type: 'array', items });

const installedPackage = {
  name: str,
  version: str,
  architecture: str,
  source: str,
  epoch: { type: 'integer', minimum: 0 },
  vendor: str,
  sourceRpm: str,
};
const artifact = object({ path: str, format: { enum: [...OUTPUT_FORMATS] }, sha256: SHA256 });
const count = { type: 'integer', minimum: 0 };
const checkResults = list(object({ check: str, type: str, attribute: str, location: str, status: { enum: ['passed', 'failed', 'skipped'] }, observed: str, expected: str, reason: str }, ['check', 'type', 'attribute', 'location', 'status']));

/** schemas/bom.schema.json: the native BOM apply writes beside every image (a unit test keeps the file in step). */
export function bomSchema(): JsonSchema {
  return {
    $schema: 'http://json-schema.org/draft-07/schema#',
    $id: 'https://imagebuilder.dev/schemas/bom.schema.json',
    title: 'imagebuilder bill of materials',
    description: 'What an image built by imagebuilder holds and how it was made. Generated from src/bom/schema.ts; do not edit.',
    ...object(
      {
        bomVersion: { const: 1 },
        tool: object({ name: { const: 'imagebuilder' }, version: str }),
        createdAt: { type: 'string', format: 'date-time' },
        input: object(
          {
            url: str,
            path: str,
            format: str,
            sha256: SHA256,
            published: object({ name: str, compression: str, algorithm: { enum: ['sha256', 'sha512'] }, hash: { type: 'string', pattern: '^[0-9a-f]+$' } }, ['name', 'algorithm', 'hash']),
            checksumSource: str,
            verified: { type: 'boolean' },
            signature: object({ keyring: str, signature: str }),
          },
          ['path', 'format', 'sha256', 'verified'],
        ),
        output: object({ ...artifact.properties as object, sparsify: { enum: ['auto', 'virt-sparsify', 'fstrim', 'none'] }, compressed: { type: 'boolean' } }, ['path', 'format', 'sha256', 'sparsify']),
        artifacts: { ...list(artifact), minItems: 1 },
        recipe: object({ path: str, name: str, sha256: SHA256, variables: strMap, includes: list(object({ path: str, sha256: SHA256 })) }),
        os: object({ id: str, versionId: str, prettyName: str, osRelease: strMap }, ['osRelease']),
        architecture: str,
        kernels: list(object({ version: str, image: str }, ['version'])),
        packages: list(object({ ...installedPackage, origin: { enum: ['base', 'added', 'changed'] }, baseVersion: str }, ['name', 'version', 'architecture', 'origin'])),
        removedPackages: list(object(installedPackage, ['name', 'version', 'architecture'])),
        files: list(object({ path: { type: 'string', pattern: '^/' }, sha256: SHA256, kind: { enum: ['config', 'download', 'copy'] }, source: str }, ['path', 'sha256', 'kind'])),
        units: list(object({ unit: str, state: { enum: ['enabled', 'disabled', 'masked', 'unmasked'] } })),
        unitStates: list(object({ unit: str, state: { enum: ['enabled', 'masked'] } })),
        containerImages: list(object({ reference: str, digest: { type: 'string', pattern: '^sha256:[0-9a-f]{64}$' }, namespace: str }, ['reference', 'digest'])),
        steps: list(object({ index: { type: 'integer', minimum: 0 }, name: str, type: str, description: str, durationMs: { type: 'number', minimum: 0 }, skipped: str, cached: { type: 'boolean' } }, ['index', 'type', 'description', 'durationMs'])),
        components: list(object({ name: str, version: str, purl: { type: 'string', pattern: '^pkg:golang/' }, source: str })),
        checks: checkResults,
        test: object(
          {
            results: checkResults,
            summary: object({ passed: count, failed: count, skipped: count }, ['passed', 'failed', 'skipped']),
            boot: object({ bootMs: { type: 'number', minimum: 0 }, accel: { enum: ['kvm', 'tcg'] }, firmware: { enum: ['uefi', 'bios', 'direct-kernel'] }, via: { enum: ['systemd', 'cloud-init'] }, consoleLog: str, baseFailures: list(str) }, ['bootMs', 'accel', 'firmware', 'via', 'consoleLog']),
          },
          ['results', 'summary'],
        ),
        offline: object({ bundle: SHA256, network: { const: 'none' }, trust: str }, ['bundle', 'network', 'trust']),
        mountBackend: { enum: ['nbd', 'fuse', 'guestmount'] },
        durationsMs: { type: 'object', additionalProperties: { type: 'number', minimum: 0 } },
        warnings: list(str),
      },
      ['bomVersion', 'tool', 'createdAt', 'input', 'output', 'artifacts', 'recipe', 'os', 'kernels', 'packages', 'removedPackages', 'files', 'units', 'unitStates', 'containerImages', 'steps', 'mountBackend', 'durationsMs', 'warnings'],
    ),
  };
}

/** What of the BOM only phase 2 writes: a work record (phase 1's) holds none of it. */
const PHASE_2_KEYS = ['output', 'artifacts', 'test'];

/**
 * Why a work record (written into the work image by `apply --phases 0,1`, read back by `export`) is not one
 * imagebuilder wrote: the BOM's shape without phase 2's output, artifacts and test results, nothing else beside.
 * Empty when it is. Compiled when asked (export alone reads work records).
 */
export function workRecordErrors(record: unknown): string[] {
  const schema = bomSchema() as { properties: Record<string, unknown>; required: string[] };
  const properties = Object.fromEntries(Object.entries(schema.properties).filter(([key]) => !PHASE_2_KEYS.includes(key)));
  const validate = new Ajv({ allErrors: true, strict: false, validateFormats: false }).compile({ ...schema, $id: undefined, properties, required: schema.required.filter((key) => !PHASE_2_KEYS.includes(key)) });
  return validate(record) ? [] : validate.errors!.map((error) => `${error.instancePath || '/'} ${error.message}${error.params && 'additionalProperty' in error.params ? ` (${String(error.params.additionalProperty)})` : ''}`);
}

/**
 * Why a BOM given to `diff` (a file from anywhere) cannot be compared, if it cannot: what diff reads of it
 * (packages, unit states, files) must have the shape apply writes; the rest is not looked at. Empty when it can.
 */
export function comparableBomErrors(bom: unknown): string[] {
  // Only the fields diff reads, each of its type; anything else (a newer version's fields) is let be.
  const item = (fields: string[]) => ({ type: 'object', properties: Object.fromEntries(fields.map((field) => [field, str])), required: fields });
  const validate = new Ajv({ allErrors: true, strict: false, validateFormats: false }).compile({
    type: 'object',
    properties: {
      bomVersion: { const: 1 },
      packages: { type: 'array', items: item(['name', 'version', 'architecture']) },
      unitStates: { type: 'array', items: item(['unit', 'state']) },
      files: { type: 'array', items: { ...item(['path', 'sha256']), properties: { path: str, sha256: SHA256 } } },
    },
    required: ['bomVersion', 'packages'],
  });
  return validate(bom) ? [] : validate.errors!.map((error) => `${error.instancePath || '/'} ${error.message}`);
}
