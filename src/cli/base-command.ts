import { Command } from '@oclif/core';
import { toImageBuilderError } from '../util/errors.js';
import { terminalSafe } from '../util/log.js';

/** Shared by every command: errors become their rendered text and documented exit code, never a stack trace. */
export abstract class BaseCommand extends Command {
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
