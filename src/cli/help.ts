import { Help, type Command } from '@oclif/core';
import { EXIT_CODE_MEANINGS } from '../util/errors.js';

/** oclif's help, with the exit codes pipelines branch on under every command and the root. */
export default class ImageBuilderHelp extends Help {
  private exitCodes(): string {
    return this.section('EXIT CODES', EXIT_CODE_MEANINGS.map(([code, meaning]) => [String(code), meaning] as [string, string]));
  }

  override formatRoot(): string {
    return `${super.formatRoot().trimEnd()}\n\n${this.exitCodes()}`;
  }

  protected override formatCommand(command: Command.Loadable): string {
    return `${super.formatCommand(command)}\n\n${this.exitCodes()}`;
  }
}
