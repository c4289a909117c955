import { Flags } from '@oclif/core';
import { bomSchema } from '../bom/schema.js';
import { recipeSchema } from '../recipe/schema.js';
import { BaseCommand } from '../cli/base-command.js';

export default class Schema extends BaseCommand {
  static override summary = "Print the recipe JSON schema (for editors' YAML language servers), or the BOM's";
  static override flags = { bom: Flags.boolean({ description: 'the schema of the BOM apply writes (<output>.bom.json)', default: false }) };

  async run(): Promise<void> {
    const { flags } = await this.parse(Schema);
    this.log(JSON.stringify(flags.bom ? bomSchema() : recipeSchema(), null, 2));
  }
}
