import type { ValidateFunction } from 'ajv';

/**
 * The validators of validators.ts compiled to code when the CLI is built: `npm run build` writes
 * dist/recipe/precompiled.js over this module's output (bin/precompile-validators.js). From the sources (unit
 * tests) there are none, and each schema is compiled when first used, as the built code would have it compiled.
 */
export const PRECOMPILED: Readonly<Record<string, ValidateFunction>> = {};
