#!/usr/bin/env node
// Runs the compiled commands (dist/packed: npm run build, not tsc alone) with oclif's development settings
// (stack traces, no manifest), through the same bundled oclif the commands were bundled with.
import { execute } from '../dist/packed/cli/oclif.js';
await execute({ development: true, dir: import.meta.url });
