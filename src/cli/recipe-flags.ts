import { Flags } from '@oclif/core';
import { parseSetFlags, type RecipeInputs } from '../recipe/load.js';

/** The flags every command that reads a recipe takes for its variables. */
export const recipeVariableFlags = {
  set: Flags.string({ description: 'set a recipe variable: NAME=VALUE (repeatable; wins over --vars and defaults)', multiple: true }),
  vars: Flags.string({ description: 'a YAML file of recipe variables (NAME: VALUE)' }),
  'allow-host-path': Flags.string({
    description: "a directory besides the recipe's own that its host files (includes, file.source, template, copy.src, run.file, container archives) may come from (repeatable; the variable takes DIR:DIR…)",
    helpValue: 'DIR',
    multiple: true,
    env: 'IMAGEBUILDER_ALLOW_HOST_PATH',
  }),
};

export function recipeInputs(flags: { set?: string[]; vars?: string; 'allow-host-path'?: string[] | string }): RecipeInputs {
  // From the variable oclif hands one string, from flags a list.
  const allowHostPaths = [flags['allow-host-path'] ?? []].flat().flatMap((value) => value.split(':')).filter(Boolean);
  return { set: parseSetFlags(flags.set), varsFile: flags.vars, ...(allowHostPaths.length ? { allowHostPaths } : {}) };
}
