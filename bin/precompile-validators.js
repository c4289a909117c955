#!/usr/bin/env node
// Compiles the schemas a recipe is validated with (src/recipe/validators.ts: the envelope, every step and check
// type) to code, with ajv's standalone code generator, and writes it over
// dist/recipe/precompiled.js before the CLI is bundled: ajv compiled them on every build's start-up (~35 ms).
// Same options as at run time, so the errors are the same. Run by `npm run build` after tsc.
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Ajv } from 'ajv';
import standaloneCode from 'ajv/dist/standalone/index.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const { AJV_OPTIONS, validatorSchemas } = await import(join(root, 'dist/recipe/validators.js'));
const dir = join(root, 'dist/recipe/precompiled');
await rm(dir, { recursive: true, force: true });
await mkdir(dir);
const entries = Object.entries(validatorSchemas());
// One module per schema, each from an ajv of its own (one ajv's standalone code exports schemas by $id, and these
// have none); ajv's generated code require()s its runtime helpers, so each module gets a require.
for (const [index, [, schema]] of entries.entries()) {
  const ajv = new Ajv({ ...AJV_OPTIONS, code: { source: true, esm: true } });
  const code = standaloneCode(ajv, ajv.compile(schema()));
  await writeFile(join(dir, `${index}.js`), `import { createRequire } from 'node:module';\nconst require = createRequire(import.meta.url);\n${code}\n`);
}
await writeFile(
  join(root, 'dist/recipe/precompiled.js'),
  [
    '// Written by bin/precompile-validators.js: the validators of validators.ts, compiled.',
    ...entries.map((_, index) => `import v${index} from './precompiled/${index}.js';`),
    `export const PRECOMPILED = { ${entries.map(([key], index) => `${JSON.stringify(key)}: v${index}`).join(', ')} };`,
    '',
  ].join('\n'),
);
console.error(`precompile-validators: ${entries.length} schemas compiled into dist/recipe/precompiled`);
