import { Flags } from '@oclif/core';
import { stringify } from 'yaml';
import { BaseCommand } from '../cli/base-command.js';
import { checkReferenceMarkdown } from '../checks/docs.js';
import { CHECK_TYPES } from '../checks/registry.js';

export default class Checks extends BaseCommand {
  static override summary = 'List the check types a recipe or a check file can use, with an example of each';
  static override flags = {
    markdown: Flags.boolean({ description: "print the README's check reference table", default: false }),
  };

  async run(): Promise<void> {
    const { flags } = await this.parse(Checks);
    if (flags.markdown) {
      this.log(checkReferenceMarkdown());
      return;
    }
    for (const type of CHECK_TYPES) {
      this.log(`${type.key}: ${type.summary}`);
      this.log(`  ${type.description}`);
      this.log(stringify([{ [type.key]: type.example }]).replace(/^/gm, '    ').trimEnd());
      this.log('');
    }
  }
}
