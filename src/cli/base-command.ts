import { Command } from '@oclif/core';
import { toImageBuilderError } from '../util/errors.js';
import { stdoutSafe, terminalSafe } from '../util/log.js';

/** Shared by every command: errors become their rendered text and documented exit code, never a stack trace. */
export abstract class BaseCommand extends Command {
  /**
   * stdout, for people and for JSON alike, carries a guest's names (os-release, packages, units, files): their
   * control characters go out as \uNNNN, which JSON reads back as the same characters and a terminal shows as text.
   */
  log(message = '', ...args: unknown[]): void {
    super.log(stdoutSafe(message), ...args);
  }

  protected async catch(error: Error & { exitCode?: number; oclif?: { exit?: number } }): Promise<unknown> {
    // oclif's own parse errors (unknown flag, missing argument) and exit() keep oclif's handling.
    if (error.oclif) return super.catch(error);
    const failure = toImageBuilderError(error);
    // Its detail may quote a guest command's output.
    process.stderr.write(`${terminalSafe(failure.render())}\n`);
    process.exitCode = failure.exitCode;
    return this.exit(failure.exitCode);
  }
}
