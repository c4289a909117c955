import type { ExecResult } from '../util/exec.js';
import { formatCommand, tail } from '../util/exec.js';
import { ImageBuilderError } from '../util/errors.js';
import type { StepContext } from './types.js';

export interface GuestRunOptions {
  /** What the command is for, in words: "enabling ssh.service". */
  purpose: string;
  hint?: string;
  input?: string;
  /** Exit codes that are not failures (besides 0). */
  okExitCodes?: number[];
}

/**
 * Runs argv inside the guest for a step. A non-zero exit (outside `okExitCodes`) is a STEP_FAILED error that
 * names the step, the command and the tail of its output. The exit status is checked here rather than by
 * the runner, so the step can look at the result of commands whose failure it explains itself.
 */
export async function guestRun(context: StepContext, argv: string[], options: GuestRunOptions): Promise<ExecResult> {
  const result = await context.session.exec(argv, {
    input: options.input,
    // The guest's own tools these steps run (systemctl, useradd, mkswap …) work offline: no network is made for them.
    needsNoNetwork: true,
    allowFailure: true,
    signal: context.signal,
    errorCode: 'STEP_FAILED',
    purpose: `${context.label}: ${options.purpose}`,
  });
  if (result.exitCode !== 0 && !(options.okExitCodes ?? []).includes(result.exitCode)) {
    throw new ImageBuilderError('STEP_FAILED', `${context.label}: ${options.purpose}: \`${formatCommand(argv[0], argv.slice(1))}\` exited with ${result.exitCode}`, {
      detail: tail(result.output || `${result.stdout}${result.stderr}`) || undefined,
      hint: options.hint,
    });
  }
  return result;
}

/** Whether the guest has a command on its PATH (`command -v` inside the chroot). */
export async function guestHasCommand(context: StepContext, command: string): Promise<boolean> {
  const result = await context.session.exec(['/bin/sh', '-c', 'command -v "$1" >/dev/null 2>&1', 'command-v', command], {
    needsNoNetwork: true,
    allowFailure: true,
    signal: context.signal,
  });
  return result.exitCode === 0;
}
