#!/usr/bin/env node
// Writes oclif.manifest.json from the compiled commands (npm run build does, after tsc). With it, oclif reads
// every command's flags and help from one file instead of importing all the commands on each start: `--version`
// and `--help` take about a third of the time, and `apply` loads only its own modules.
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Plugin } from '@oclif/core';

const root = fileURLToPath(new URL('..', import.meta.url));
const plugin = new Plugin({ root, type: 'core', isRoot: true, ignoreManifest: true, errorOnManifestCreate: true, respectNoCacheDefault: true });
await plugin.load();
await writeFile(join(root, 'oclif.manifest.json'), `${JSON.stringify(plugin.manifest, null, 2)}\n`);
