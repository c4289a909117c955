import { Flags } from '@oclif/core';
import { stringify } from 'yaml';
import { BaseCommand } from '../cli/base-command.js';
import { stepReferenceMarkdown } from '../steps/docs.js';
import { STEP_TYPES } from '../steps/registry.js';

export default class Steps extends BaseCommand {
  static override summary = 'List the step types a recipe can use, with an example of each';
  static override flags = {
    markdown: Flags.boolean({ description: "print the README's step reference table", default: false }),
  };

  async run(): Promise<void> {
    const { flags } = await this.parse(Steps);
    if (flags.markdown) {
      this.log(stepReferenceMarkdown());
      return;
    }
    for (const type of STEP_TYPES) {
      this.log(`${type.key}: ${type.summary}`);
      this.log(`  ${type.description}`);
      this.log(stringify([{ [type.key]: type.example }]).replace(/^/gm, '    ').trimEnd());
      this.log('');
    }
  }
}
