import { readFileSync } from 'node:fs';
import { formatsAjv } from './ajv.js';

const ajv = formatsAjv();
/** The committed schemas/bom.schema.json, as users get it. */
const validate = ajv.compile(JSON.parse(readFileSync(new URL('../../schemas/bom.schema.json', import.meta.url), 'utf8')));

/** Asserts that a BOM apply wrote is valid against the committed schema, naming every violation. */
export function expectValidBom(bom: unknown): void {
  const valid = validate(bom);
  expect(valid ? [] : validate.errors!.map((e) => `${e.instancePath} ${e.message}`)).toEqual([]);
}
