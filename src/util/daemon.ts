import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { ImageBuilderError } from './errors.js';
import { formatCommand, tail } from './exec.js';
import { sleep, which } from './fs.js';
import type { Logger } from './log.js';

/** A helper daemon (qemu-storage-daemon) run as our child rather than daemonized: it dies with us. */
export interface Helper {
  readonly pid: number;
  /** SIGTERM, then SIGKILL after the grace period; resolves once it has exited. */
  stop(graceMs?: number): Promise<void>;
  /** Waits for it to exit by itself (guestmount after guestunmount); SIGKILL after the grace period. */
  exited(graceMs?: number): Promise<void>;
  /** Settles once it has exited, however, with how: for who waits for it to end by itself (a VM powering off). */
  readonly gone: Promise<HelperExit>;
}

/** How a helper ended: its exit status, or the signal that killed it (null when it could not be started). */
export interface HelperExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface HelperOptions {
  log: Logger;
  /** Where its stdout and stderr go (shown in the error when it fails to start). */
  logFile: string;
  /**
   * Takes its stdout and stderr through a pipe instead, and writes logFile itself (bounded: a helper that a guest
   * makes print, qemu, fills no disk). Closed once the helper has exited and its output is read.
   */
  logSink?: { write(chunk: Buffer): void; close(): void };
  /** True once it serves what it was started for (its export is mounted, its socket listens). */
  ready: () => Promise<boolean>;
  purpose: string;
  /** Variables added to the inherited environment. */
  extraEnv?: Record<string, string>;
  /** Descriptors it inherits, as 3, 4, … in this order (qemu's -add-fd). */
  passFds?: number[];
  timeoutMs?: number;
  signal?: AbortSignal;
}

const exited = (child: ChildProcess) => child.exitCode !== null || child.signalCode !== null;
/** How long a helper's readiness is asked every 5 ms before every 50 ms. */
const READY_FAST_POLL_MS = 300;

/**
 * The end of a helper's log (its last 64 KiB): what an error quotes. The log may be large (qemu reports a guest's
 * device errors there as often as the guest makes them), and only its last lines are shown.
 */
export async function readLogTail(path: string, maxBytes = 64 * 1024): Promise<string> {
  const handle = await open(path, 'r').catch(() => undefined);
  if (!handle) return '';
  try {
    const { size } = await handle.stat();
    const length = Math.min(size, maxBytes);
    const { buffer, bytesRead } = await handle.read(Buffer.alloc(length), 0, length, size - length);
    return buffer.subarray(0, bytesRead).toString('utf8');
  } finally {
    await handle.close();
  }
}

/**
 * Starts `file args` as a child that the kernel kills when this process dies, even by SIGKILL: under
 * `setpriv --pdeathsig KILL` (the death signal survives exec; Node spawns from its main thread, whose exit is
 * what the kernel watches). In a session of its own, so a Ctrl-C on the terminal reaches only us, and we stop it
 * after unmounting. `onSpawn` runs synchronously with the spawn, before anything can interrupt: the caller
 * registers its release there. Resolves once `ready()` says so; fails with its output if it exits first.
 */
export async function startHelper(file: string, args: string[], options: HelperOptions, onSpawn: (helper: Helper) => void): Promise<Helper> {
  const { log } = options;
  const setpriv = await which('setpriv');
  if (!setpriv) log.warn(`setpriv (util-linux) is missing: ${file} would outlive a killed build until \`imagebuilder cleanup\``);
  const [command, argv] = setpriv ? [setpriv, ['--pdeathsig', 'KILL', '--', file, ...args]] : [file, args];
  log.debug(`$ ${formatCommand(file, args)}`);
  const sink = options.logSink;
  const output = sink ? 'pipe' : openSync(options.logFile, 'a');
  let child: ChildProcess;
  try {
    child = spawn(command, argv, { stdio: ['ignore', output, output, ...(options.passFds ?? [])], detached: true, env: { ...process.env, ...options.extraEnv } });
  } finally {
    if (typeof output === 'number') closeSync(output);
  }
  if (sink) for (const stream of [child.stdout, child.stderr]) stream?.on('data', (chunk: Buffer) => sink.write(chunk));
  // 'close': exited, and its output read to the end (what an error then quotes from the log is all there).
  const gone = new Promise<HelperExit>((resolve) => {
    child.once('close', (code, signal) => {
      sink?.close();
      resolve({ code, signal });
    });
    child.once('error', () => {
      sink?.close();
      resolve({ code: null, signal: null });
    });
  });
  const wait = async (graceMs: number) => {
    if (exited(child) || !child.pid) return;
    const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
    await gone;
    clearTimeout(timer);
  };
  const helper: Helper = {
    pid: child.pid ?? 0,
    async stop(graceMs = 15000) {
      if (!exited(child) && child.pid) child.kill('SIGTERM');
      await wait(graceMs);
    },
    exited: (graceMs = 15000) => wait(graceMs),
    gone,
  };
  onSpawn(helper);
  const failed = async (why: string) => {
    const text = await readLogTail(options.logFile);
    return new ImageBuilderError('COMMAND_FAILED', `${options.purpose}: \`${formatCommand(file, args)}\` ${why}`, { detail: tail(text) || undefined });
  };
  const started = Date.now();
  const deadline = started + (options.timeoutMs ?? 60000);
  for (;;) {
    if (options.signal?.aborted) throw options.signal.reason;
    if (exited(child) || !child.pid) throw await failed(child.pid ? `exited with ${child.exitCode ?? child.signalCode}` : 'could not be started');
    if (await options.ready()) return helper;
    if (Date.now() > deadline) throw await failed('did not become ready in time');
    // Helpers are usually ready within tens of milliseconds (qemu-storage-daemon's FUSE export: ~30 ms), which a
    // build waits for each time it mounts: asked often at first, then at a pace that costs nothing.
    await sleep(Date.now() - started < READY_FAST_POLL_MS ? 5 : 50);
  }
}
