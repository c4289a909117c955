import { closeSync, constants, openSync, rmSync, writeSync } from 'node:fs';
import { ImageBuilderError } from '../util/errors.js';
import { RESULTS_DIR_HINT } from '../util/lock.js';
import { listenForQemu, type QemuConnection } from './channel.js';

/** The most of a guest's console kept on disk: its beginning, and its end (the part that shows why it stopped). */
export const DEFAULT_CONSOLE_MAX_BYTES = 16 << 20;
const DEFAULT_CONSOLE_END_BYTES = 1 << 20;

export interface ConsoleLimits {
  /** Bytes kept in all; beyond them the middle of the console is dropped, and said to be. */
  maxBytes?: number;
  /** Of those, how many are the console's last bytes. */
  endBytes?: number;
}

/**
 * Keeps the beginning of a console stream in a file and, once it outgrows `maxBytes`, only its last `endBytes` in
 * memory, written after a line that says how much was dropped: a guest that floods its serial port (a loop, or
 * on purpose) fills neither the host's disk nor its memory, and what it printed last is still there.
 */
export class ConsoleLog {
  private readonly fd: number;
  private readonly headBytes: number;
  private readonly endBytes: number;
  private written = 0;
  private end: Buffer[] = [];
  private endLength = 0;
  private dropped = 0;
  private closed = false;

  constructor(path: string, limits: ConsoleLimits = {}) {
    const maxBytes = limits.maxBytes ?? DEFAULT_CONSOLE_MAX_BYTES;
    this.endBytes = Math.min(limits.endBytes ?? DEFAULT_CONSOLE_END_BYTES, Math.floor(maxBytes / 2));
    this.headBytes = maxBytes - this.endBytes;
    // A new file of ours, never what was at that name (a link, a FIFO, a hard link to another file, which
    // O_NOFOLLOW would not see): the guest decides what is written.
    try {
      rmSync(path, { force: true });
      this.fd = openSync(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o644);
    } catch (error) {
      // Another user made something there again (in a sticky results directory such as /tmp) or a directory is there.
      throw new ImageBuilderError('ENVIRONMENT', `cannot write the console log ${path}: ${(error as Error).message}`, { hint: RESULTS_DIR_HINT });
    }
  }

  write(chunk: Buffer): void {
    if (this.closed) return;
    const toHead = Math.max(0, Math.min(chunk.length, this.headBytes - this.written));
    if (toHead) {
      writeSync(this.fd, chunk, 0, toHead);
      this.written += toHead;
    }
    if (toHead === chunk.length) return;
    this.end.push(chunk.subarray(toHead));
    this.endLength += chunk.length - toHead;
    // Drop whole chunks from the front while what is left still covers endBytes; the rest is trimmed at close.
    while (this.end.length > 1 && this.endLength - this.end[0].length >= this.endBytes) {
      this.endLength -= this.end[0].length;
      this.dropped += this.end[0].length;
      this.end.shift();
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    try {
      let end = Buffer.concat(this.end);
      if (end.length > this.endBytes) {
        this.dropped += end.length - this.endBytes;
        end = end.subarray(end.length - this.endBytes);
      }
      if (this.dropped) writeSync(this.fd, `\n[imagebuilder: ${this.dropped} bytes of console output dropped here; the first ${this.headBytes} and the last ${end.length} are kept]\n`);
      if (end.length) writeSync(this.fd, end);
    } finally {
      closeSync(this.fd);
    }
  }
}

export interface ConsoleRecorder {
  /** Settles once qemu has connected: it is then past its start, the guest about to run. */
  readonly connected: Promise<void>;
  /** Settles once qemu has closed the console (it ended) or close() was called; the file is then complete. */
  readonly done: Promise<void>;
  close(): void;
}

/**
 * Listens for qemu's serial console (qemu connects while it starts, before the guest runs, so nothing the
 * firmware prints is missed) and keeps it in `path`, bounded as ConsoleLog says.
 */
export async function recordConsole(socketPath: string, path: string, limits: ConsoleLimits = {}): Promise<ConsoleRecorder> {
  const log = new ConsoleLog(path, limits);
  let connection: QemuConnection | undefined;
  let finish: () => void = () => undefined;
  const done = new Promise<void>((resolve) => {
    finish = () => {
      log.close();
      connection?.stop();
      resolve();
    };
  });
  try {
    connection = await listenForQemu(socketPath, (socket) => {
      socket.on('error', () => undefined);
      socket.on('data', (chunk: Buffer) => log.write(chunk));
      socket.on('close', () => finish());
    });
  } catch (error) {
    finish();
    throw error;
  }
  return { connected: connection.connected, done, close: () => finish() };
}
