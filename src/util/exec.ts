import type { Readable } from 'node:stream';
import { execa } from 'execa';
import { ImageBuilderError, type ErrorCode } from './errors.js';
import { outputLines, type Logger } from './log.js';
import { packageHint } from './tools.js';

export interface ExecOptions {
  /** Standard input: text, bytes, or a stream (a tar archive on its way into the guest). */
  input?: string | Buffer | Readable;
  /** Full environment for the child; when set, the host's environment is not inherited. */
  env?: Record<string, string>;
  /** Variables added to the inherited environment. */
  extraEnv?: Record<string, string>;
  cwd?: string;
  timeoutMs?: number;
  /** What set timeoutMs, for the message when it is reached: "the recipe's limits.timeout". */
  timeoutSource?: string;
  /** The hint when timeoutMs is reached (`hint` is about the command's own failures, and is not given then). */
  timeoutHint?: string;
  signal?: AbortSignal;
  /** Logs the command line (debug level). */
  log?: Logger;
  /** Also copy the command's output into the build log as it arrives (steps: apt, scripts). */
  streamOutput?: boolean;
  /** Return the result instead of throwing on a non-zero exit. */
  allowFailure?: boolean;
  /** Error code to use when the command fails (default COMMAND_FAILED). */
  errorCode?: ErrorCode;
  /** How to show the command in logs and errors, when its real argv is a wrapper around it. */
  display?: string;
  /** What the command was for, in words: "mounting /boot". */
  purpose?: string;
  hint?: string;
}

export interface ExecResult {
  command: string;
  exitCode: number;
  stdout: string;
  stderr: string;
  /** stdout and stderr interleaved, as a user would have seen them. */
  output: string;
  /** Killed at its timeoutMs (with allowFailure: its exitCode is then -1). */
  timedOut?: boolean;
}

/** Everything that runs a host command goes through a Runner, so unit tests can record exact argv. */
export type Runner = (file: string, args: readonly string[], options?: ExecOptions) => Promise<ExecResult>;

/** One word as sh reads it back: as is when it holds nothing the shell would interpret, else single-quoted. */
export function shellQuote(word: string): string {
  return /^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}

export function formatCommand(file: string, args: readonly string[]): string {
  return [file, ...args].map(shellQuote).join(' ');
}

export function tail(text: string, lines = 20): string {
  // Found from the end: a guest program's output of millions of lines (up to execa's buffers) is never split
  // whole, and one endless line is cut to its end.
  const trimmed = text.trimEnd();
  let cut = trimmed.length;
  for (let kept = 0; kept < lines && cut >= 0; kept++) cut = trimmed.lastIndexOf('\n', cut - 1);
  const last = trimmed.slice(cut + 1);
  return last.length > TAIL_MAX_CHARS ? `…${last.slice(-TAIL_MAX_CHARS)}` : last;
}

/** The most of a command's output an error message quotes. */
const TAIL_MAX_CHARS = 16 * 1024;

/** After SIGTERM to a cancelled command's process group, how long before SIGKILL. */
const KILL_GRACE_MS = 5000;

export const execRunner: Runner = async (file, args, options = {}) => {
  const command = options.display ?? formatCommand(file, args);
  options.log?.debug(`$ ${command}`);
  const child = execa(file, args, {
    input: options.input,
    env: options.env ?? options.extraEnv,
    extendEnv: options.env === undefined,
    cwd: options.cwd,
    reject: false,
    all: true,
    stripFinalNewline: false,
    // A child waiting on a terminal we never answer would hang the build.
    stdin: options.input === undefined ? 'ignore' : 'pipe',
    // Its own process group, so cancelling kills what it started too: an orphan (a script's `sleep`)
    // would otherwise keep the output pipes open and the build waiting. Ctrl-C reaches only us; we decide.
    detached: true,
  });
  if (options.streamOutput && options.log && child.all) {
    const log = options.log;
    const lines = outputLines((text) => log.output(text));
    child.all.on('data', lines.push);
    child.all.on('end', lines.end);
  }
  let timedOut = false;
  let forceKill: NodeJS.Timeout | undefined;
  const killGroup = (signal: NodeJS.Signals) => {
    try {
      if (child.pid) process.kill(-child.pid, signal);
    } catch {
      // the group is gone already
    }
  };
  const stop = () => {
    killGroup('SIGTERM');
    forceKill ??= setTimeout(() => killGroup('SIGKILL'), KILL_GRACE_MS);
  };
  const timer = options.timeoutMs
    ? setTimeout(() => {
        timedOut = true;
        stop();
      }, options.timeoutMs)
    : undefined;
  options.signal?.addEventListener('abort', stop, { once: true });
  if (options.signal?.aborted) stop();
  let result: Awaited<typeof child>;
  try {
    result = await child;
  } finally {
    clearTimeout(timer);
    clearTimeout(forceKill);
    options.signal?.removeEventListener('abort', stop);
  }
  const outcome: ExecResult = {
    command,
    exitCode: result.exitCode ?? -1,
    stdout: String(result.stdout ?? ''),
    stderr: String(result.stderr ?? ''),
    output: String(result.all ?? ''),
  };
  if (options.signal?.aborted) {
    throw new ImageBuilderError('INTERRUPTED', `interrupted while running: ${command}`);
  }
  const notFound = result.code === 'ENOENT';
  // A missing tool is never an expected failure, whatever the caller allows: say which one.
  if (result.failed && (!options.allowFailure || notFound)) {
    if (timedOut && !notFound) throw CommandTimeout.of(command, options, outcome.output);
    const why = result.exitCode === undefined
        ? `could not run (${result.code ?? result.signal ?? result.shortMessage})`
        : `exited with ${result.exitCode}`;
    throw new ImageBuilderError(
      notFound ? 'MISSING_TOOL' : (options.errorCode ?? 'COMMAND_FAILED'),
      `${options.purpose ? `${options.purpose}: ` : ''}\`${command}\` ${notFound ? `failed: ${file} is not installed` : why}`,
      {
        detail: tail(outcome.output) || undefined,
        hint: notFound ? `install ${packageHint(file)} (bin/setup installs everything; \`imagebuilder doctor\` checks the host)` : options.hint,
      },
    );
  }
  if (result.failed) outcome.exitCode = result.exitCode ?? -1;
  if (timedOut) outcome.timedOut = true;
  return outcome;
};

/** A command killed at its time limit: not a failure of its own (a missing network, a bad package name). */
export class CommandTimeout extends ImageBuilderError {
  /** `command` (as messages show it) killed at `options.timeoutMs`: the limit and what set it, the timeout's hint. */
  static of(command: string, options: Pick<ExecOptions, 'errorCode' | 'purpose' | 'timeoutMs' | 'timeoutSource' | 'timeoutHint'>, output: string): CommandTimeout {
    const limit = `${options.timeoutMs! / 1000} s${options.timeoutSource ? ` (${options.timeoutSource})` : ''}`;
    return new CommandTimeout(options.errorCode ?? 'COMMAND_FAILED', `${options.purpose ? `${options.purpose}: ` : ''}\`${command}\` did not finish within ${limit}`, {
      detail: tail(output) || undefined,
      hint: options.timeoutHint,
    });
  }
}

/** A runner that records every call and answers from a script: for unit tests of exact argv. */
export interface RecordedCall {
  file: string;
  args: string[];
  options: ExecOptions;
}

export function recordingRunner(
  answer: (call: RecordedCall) => Partial<ExecResult> | undefined = () => undefined,
): Runner & { calls: RecordedCall[] } {
  const calls: RecordedCall[] = [];
  const runner = (async (file: string, args: readonly string[], options: ExecOptions = {}) => {
    const call = { file, args: [...args], options };
    calls.push(call);
    const reply = answer(call) ?? {};
    const result: ExecResult = {
      command: formatCommand(file, args),
      exitCode: 0,
      stdout: '',
      stderr: '',
      output: '',
      ...reply,
    };
    if (result.exitCode !== 0 && !options.allowFailure) {
      throw new ImageBuilderError(options.errorCode ?? 'COMMAND_FAILED', `\`${result.command}\` exited with ${result.exitCode}`);
    }
    return result;
  }) as Runner & { calls: RecordedCall[] };
  runner.calls = calls;
  return runner;
}
