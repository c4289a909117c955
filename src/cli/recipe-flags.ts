import { Flags } from '@oclif/core';
import { parseSetFlags, type RecipeInputs } from '../recipe/load.js';

/** The flags every command that reads a recipe takes for its variables. */
export const recipeVariableFlags = {
  set: Flags.string({ description: 'set a recipe variable: NAME=VALUE (repeatable; wins over --vars and defaults)', multiple: true }),
  vars: Flags.string({ description: 'a YAML file of recipe variables (NAME: VALUE)' }),
};

export function recipeInputs(flags: { set?: string[]; vars?: string }): RecipeInputs {
  return { set: parseSetFlags(flags.set), varsFile: flags.vars };
}
