import { readFileSync } from 'node:fs';
import { Ajv } from 'ajv';
import addFormatsModule from 'ajv-formats';

// ajv-formats is CommonJS: its default export arrives wrapped under ESM.
const addFormats = ((addFormatsModule as unknown as { default?: unknown }).default ?? addFormatsModule) as (ajv: Ajv) => Ajv;

const ajv = new Ajv({ allErrors: true, strict: false });
addFormats(ajv);
/** The committed schemas/bom.schema.json, as users get it. */
const validate = ajv.compile(JSON.parse(readFileSync(new URL('../../schemas/bom.schema.json', import.meta.url), 'utf8')));

/** Asserts that a BOM apply wrote is valid against the committed schema, naming every violation. */
export function expectValidBom(bom: unknown): void {
  const valid = validate(bom);
  expect(valid ? [] : validate.errors!.map((e) => `${e.instancePath} ${e.message}`)).toEqual([]);
}
