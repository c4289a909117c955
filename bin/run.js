#!/usr/bin/env node
import { execute } from '../dist/packed/cli/oclif.js';
await execute({ dir: import.meta.url });
