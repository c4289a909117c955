import { recipeSchema } from '../recipe/schema.js';
import { BaseCommand } from '../cli/base-command.js';

export default class Schema extends BaseCommand {
  static override summary = "Print the recipe JSON schema (for editors' YAML language servers)";

  async run(): Promise<void> {
    this.log(JSON.stringify(recipeSchema(), null, 2));
  }
}
