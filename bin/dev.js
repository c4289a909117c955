#!/usr/bin/env node
// Runs the compiled commands (dist/packed: npm run build, not tsc alone) with oclif's development settings
// (stack traces, no manifest).
import { execute } from '@oclif/core';
await execute({ development: true, dir: import.meta.url });
