import { stringify } from 'yaml';
import { STEP_TYPES } from '../steps/registry.js';
import { BaseCommand } from '../cli/base-command.js';

export default class Steps extends BaseCommand {
  static override summary = 'List the step types a recipe can use, with an example of each';

  async run(): Promise<void> {
    for (const type of STEP_TYPES) {
      this.log(`${type.key}: ${type.summary}`);
      this.log(`  ${type.description}`);
      this.log(stringify([{ [type.key]: type.example }]).replace(/^/gm, '    ').trimEnd());
      this.log('');
    }
  }
}
