import { BaseCommand } from '../cli/base-command.js';
import { typeReference, typeReferenceFlags } from '../cli/type-reference.js';
import { checkReferenceMarkdown } from '../checks/docs.js';
import { CHECK_TYPES } from '../checks/registry.js';

export default class Checks extends BaseCommand {
  static override summary = 'List the check types a recipe or a check file can use, with an example of each';
  static override flags = typeReferenceFlags('check');

  async run(): Promise<void> {
    const { flags } = await this.parse(Checks);
    for (const line of typeReference(CHECK_TYPES, checkReferenceMarkdown, flags.markdown)) this.log(line);
  }
}
