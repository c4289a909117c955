#!/usr/bin/env node
// Bundles the compiled commands (dist/commands, from tsc) into dist/packed with esbuild, for the CLI's start-up:
// Node's ES module loader pays per file (resolve, stat, open, compile), and `apply` loaded ~900 files (typebox,
// execa, yaml, ajv and ours): ~310 ms before the command ran; bundled, ~150 ms. One entry per command,
// shared code split into chunks, so a command loads only what it uses. oclif itself is bundled too, with an
// entry of its own (dist/packed/cli/oclif.js, what bin/run.js starts) and the help class, so bin/run.js, the
// commands and the help share one copy: ~200 files of node_modules read on every start cost ~60 ms (`--version`
// 0.20 -> 0.12 s). dist/ itself stays the library (package.json "main"); oclif reads the commands from
// dist/packed/commands (package.json "oclif").
import { readdirSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = fileURLToPath(new URL('..', import.meta.url));
const commands = join(root, 'dist', 'commands');
const outdir = join(root, 'dist', 'packed');
const entryPoints = [
  ...readdirSync(commands, { recursive: true }).filter((name) => name.endsWith('.js')).map((name) => join(commands, name)),
  join(root, 'dist', 'cli', 'oclif.js'),
  join(root, 'dist', 'cli', 'help.js'),
];

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
  // undici and the CycloneDX library are imported lazily (a download, a CycloneDX SBOM) and the latter loads
  // optional modules by name. TypeScript (9 MB) and its loaders are what oclif requires only to run a plugin's
  // sources in development, which this CLI never does.
  external: ['undici', '@cyclonedx/cyclonedx-library', 'typescript', 'ts-node', 'tsx', 'source-map-support'],
  // CommonJS dependencies bundled into ES modules (ajv, cross-spawn) still call require() for Node's own modules.
  banner: { js: "import { createRequire as imagebuilderCreateRequire } from 'node:module'; const require = imagebuilderCreateRequire(import.meta.url);" },
  // V8 parses every chunk a command loads before it runs (~85 ms of `apply`'s start here): without whitespace and
  // with shorter syntax the chunks are 3.4 -> 2.5 MB, ~30 ms less. Identifiers are kept, so a stack trace still
  // names its functions (its positions are columns of one long line; dist/ keeps the readable modules).
  minifyWhitespace: true,
  minifySyntax: true,
  logLevel: 'warning',
});
console.error(`bundle-cli: ${entryPoints.length - 2} commands, oclif and the help class bundled into ${relative(root, outdir)}`);
