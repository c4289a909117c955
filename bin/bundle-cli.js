#!/usr/bin/env node
// Bundles the compiled commands (dist/commands, from tsc) into dist/packed with esbuild, for the CLI's start-up:
// Node's ES module loader pays per file (resolve, stat, open, compile), and `apply` loaded ~900 files (typebox,
// execa, yaml, ajv and ours): ~310 ms before the command ran; bundled, ~150 ms. One entry per command,
// shared code split into chunks, so a command loads only what it uses. dist/ itself stays the library
// (package.json "main"); oclif reads the commands from dist/packed/commands (package.json "oclif").
import { readdirSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = fileURLToPath(new URL('..', import.meta.url));
const commands = join(root, 'dist', 'commands');
const outdir = join(root, 'dist', 'packed');
const entryPoints = readdirSync(commands, { recursive: true })
  .filter((name) => name.endsWith('.js'))
  .map((name) => join(commands, name));

await rm(outdir, { recursive: true, force: true });
await build({
  entryPoints,
  outbase: join(root, 'dist'),
  outdir,
  chunkNames: 'chunks/[name]-[hash]',
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  // oclif: one copy shared with bin/run.js (its Command class, its config). undici and the CycloneDX library are
  // imported lazily (a download, a CycloneDX SBOM) and the latter loads optional modules by name.
  external: ['@oclif/core', 'undici', '@cyclonedx/cyclonedx-library'],
  // CommonJS dependencies bundled into ES modules (ajv, cross-spawn) still call require() for Node's own modules.
  banner: { js: "import { createRequire as imagebuilderCreateRequire } from 'node:module'; const require = imagebuilderCreateRequire(import.meta.url);" },
  logLevel: 'warning',
});
console.error(`bundle-cli: ${entryPoints.length} commands bundled into ${relative(root, outdir)}`);
