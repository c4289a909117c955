import { BaseCommand } from '../cli/base-command.js';
import { typeReference, typeReferenceFlags } from '../cli/type-reference.js';
import { stepReferenceMarkdown } from '../steps/docs.js';
import { STEP_TYPES } from '../steps/registry.js';

export default class Steps extends BaseCommand {
  static override summary = 'List the step types a recipe can use, with an example of each';
  static override flags = typeReferenceFlags('step');

  async run(): Promise<void> {
    const { flags } = await this.parse(Steps);
    for (const line of typeReference(STEP_TYPES, stepReferenceMarkdown, flags.markdown)) this.log(line);
  }
}
