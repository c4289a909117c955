#!/usr/bin/env node
// Regenerates what is generated from the registries: the recipe and BOM schemas, and the README's step and
// check tables (unit tests fail while any of them is stale). Run by `npm run docs` after `npm run build`.
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';

const cli = (...args) => execFileSync('node', ['bin/run.js', ...args]).toString();
writeFileSync('schemas/recipe.schema.json', cli('schema'));
writeFileSync('schemas/bom.schema.json', cli('schema', '--bom'));
let readme = readFileSync('README.md', 'utf8');
for (const [name, command] of [['steps', 'steps'], ['checks', 'checks']]) {
  const table = cli(command, '--markdown').trim();
  const block = new RegExp(`(<!-- ${name}:start[^\\n]*-->\\n)[\\s\\S]*?(<!-- ${name}:end -->)`);
  if (!block.test(readme)) throw new Error(`README.md has no <!-- ${name}:start … --> block`);
  readme = readme.replace(block, (_, start, end) => `${start}${table}\n${end}`);
}
writeFileSync('README.md', readme);
