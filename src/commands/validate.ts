import { Args } from '@oclif/core';
import { BaseCommand } from '../cli/base-command.js';
import { recipeInputs, recipeVariableFlags } from '../cli/recipe-flags.js';
import { parseRecipe, readRecipeText, type RecipeProblem } from '../recipe/load.js';
import { ImageBuilderError } from '../util/errors.js';

export default class Validate extends BaseCommand {
  static override summary = 'Check recipes without an image or root: every problem with file:line:column';
  static override description = 'Checks the schema, step types and keys, variables (with --set/--vars as apply would get them), includes and `when` conditions.';
  static override examples = ['<%= config.bin %> validate recipes/*.yaml', '<%= config.bin %> validate recipes/kubernetes-node.yaml --set kubernetes_version=1.30.2'];
  static override strict = false;
  static override args = { recipe: Args.string({ description: 'recipe YAML file(s)', required: true }) };
  static override flags = { ...recipeVariableFlags };

  async run(): Promise<void> {
    const { argv, flags } = await this.parse(Validate);
    const inputs = recipeInputs(flags);
    const problems: RecipeProblem[] = [];
    for (const path of argv as string[]) {
      let text: string;
      try {
        text = readRecipeText(path);
      } catch (error) {
        problems.push({ location: path, message: (error as Error).message });
        continue;
      }
      problems.push(...parseRecipe(text, path, inputs).problems);
    }
    for (const problem of problems) process.stderr.write(`${problem.location}: ${problem.message}\n`);
    if (problems.length) {
      throw new ImageBuilderError('BAD_RECIPE', `${problems.length} problem(s) in ${argv.length} recipe(s)`, { hint: 'see `imagebuilder steps` for each step type and its keys' });
    }
    this.log(`${argv.length} recipe(s) valid`);
  }
}
