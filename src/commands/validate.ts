import { readFile } from 'node:fs/promises';
import { Args } from '@oclif/core';
import { parseRecipe, type RecipeProblem } from '../recipe/load.js';
import { ImageBuilderError } from '../util/errors.js';
import { BaseCommand } from '../cli/base-command.js';

export default class Validate extends BaseCommand {
  static override summary = 'Check recipes without an image or root: every problem with file:line:column';
  static override strict = false;
  static override args = { recipe: Args.string({ description: 'recipe YAML file(s)', required: true }) };

  async run(): Promise<void> {
    const { argv } = await this.parse(Validate);
    const problems: RecipeProblem[] = [];
    for (const path of argv as string[]) {
      const text = await readFile(path, 'utf8').catch(() => undefined);
      if (text === undefined) problems.push({ location: path, message: 'cannot read the file' });
      else problems.push(...parseRecipe(text, path).problems);
    }
    for (const problem of problems) process.stderr.write(`${problem.location}: ${problem.message}\n`);
    if (problems.length) {
      throw new ImageBuilderError('BAD_RECIPE', `${problems.length} problem(s) in ${argv.length} recipe(s)`, { hint: 'see `imagebuilder steps` for each step type and its keys' });
    }
    this.log(`${argv.length} recipe(s) valid`);
  }
}
