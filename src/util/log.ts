import { StringDecoder } from 'node:string_decoder';

/** Human logs go to stderr so stdout stays clean for --json results. */
export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

const ORDER: Record<LogLevel, number> = { debug: 0, info: 1, warn: 2, error: 3 };

export interface Logger {
  debug(message: string): void;
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
  /** Raw output of a command run inside the guest, kept in the build log. */
  output(chunk: string): void;
  /** Every warning given so far, for the BOM and the --json result. */
  readonly warnings: string[];
}

export interface LoggerOptions {
  level?: LogLevel;
  write?: (text: string) => void;
  /** Show command output (apt, scripts) as it arrives. */
  showOutput?: boolean;
}

/**
 * Text for a terminal from what a guest controls (its commands' output, its file and package names): control
 * characters shown as \xNN, never sent. An escape sequence could otherwise rewrite the screen, set the terminal's
 * title or clipboard (OSC 52), or answer a query into the user's input; a lone carriage return could overwrite a
 * log line with a forged one. Newlines and tabs stay; a carriage return ends a line.
 */
export function terminalSafe(text: string): string {
  return text.replace(/\r\n?/g, '\n').replace(/[\x00-\x08\x0b-\x1f\x7f-\x9f]/g, escapeControl);
}

/**
 * A child's output relayed to a terminal as it comes, through terminalSafe: UTF-8 decoded across reads, and a
 * carriage return that ends one read held until the next shows whether a line feed follows (CR LF split between
 * two reads is one newline, not two).
 */
export function terminalRelay(write: (text: string) => void): { push: (chunk: Buffer) => void; end: () => void } {
  const decoder = new StringDecoder('utf8');
  let heldCr = false;
  const relay = (text: string, last: boolean) => {
    let pending = (heldCr ? '\r' : '') + text;
    heldCr = !last && pending.endsWith('\r');
    if (heldCr) pending = pending.slice(0, -1);
    if (pending) write(terminalSafe(pending));
  };
  return { push: (chunk) => relay(decoder.write(chunk), false), end: () => relay(decoder.end(), true) };
}

const escapeControl = (c: string) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`;

/** One line of a table for people holding a guest's words (a unit's or package's name): a newline in them shown as text. */
export const oneLine = (text: string) => text.replace(/\n/g, '\\u000a');

/**
 * A command's stdout line (a table for people, or JSON): control characters but newline and tab as \uNNNN.
 * JSON.stringify already writes C0 controls so; the C1 ones and DEL it writes raw, and \u-escaped they read back
 * the same inside a JSON string, where alone they can occur.
 */
export function stdoutSafe(text: string): string {
  return text.replace(/[\x00-\x08\x0b-\x1f\x7f-\x9f]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

export function createLogger(options: LoggerOptions = {}): Logger {
  const level = options.level ?? 'info';
  const write = options.write ?? ((text: string) => process.stderr.write(text));
  const showOutput = options.showOutput ?? true;
  const warnings: string[] = [];
  const started = Date.now();
  const emit = (at: LogLevel, message: string) => {
    if (ORDER[at] < ORDER[level]) return;
    const seconds = ((Date.now() - started) / 1000).toFixed(1).padStart(6);
    const tag = at === 'info' ? '' : `${at}: `;
    write(`[${seconds}s] ${tag}${terminalSafe(message)}\n`);
  };
  return {
    debug: (m) => emit('debug', m),
    info: (m) => emit('info', m),
    warn: (m) => {
      warnings.push(m);
      emit('warn', m);
    },
    error: (m) => emit('error', m),
    output: (chunk) => {
      if (showOutput) write(terminalSafe(chunk).replace(/^(?=.)/gm, '    '));
    },
    warnings,
  };
}

/** The longest line held back waiting for its end: past it, what came is written as a line (a program that never ends one). */
export const MAX_HELD_LINE = 64 * 1024;

/**
 * A child's streamed output for log.output, as whole lines: UTF-8 decoded across chunks (a character split
 * between two reads stays one), a line held until it ends (so log.output's indent starts lines, never splits
 * one), and of a line a carriage return rewrote (a progress meter: `50%\r100%`) only what a terminal would show
 * last. `end` writes what is left when the child is done.
 */
export function outputLines(write: (lines: string) => void): { push: (chunk: Buffer) => void; end: () => void } {
  const decoder = new StringDecoder('utf8');
  let held = '';
  const lastState = (text: string) => text.replace(/\r\n/g, '\n').split('\n').map((line) => line.split('\r').filter(Boolean).at(-1) ?? '').join('\n');
  return {
    push: (chunk) => {
      held += decoder.write(chunk);
      const ended = held.lastIndexOf('\n');
      if (ended >= 0) {
        write(lastState(held.slice(0, ended + 1)));
        held = held.slice(ended + 1);
      }
      if (held.length > MAX_HELD_LINE) {
        write(`${lastState(held)}\n`);
        held = '';
      }
    },
    end: () => {
      held += decoder.end();
      if (held) write(`${lastState(held)}\n`);
      held = '';
    },
  };
}

export function silentLogger(): Logger {
  return createLogger({ write: () => undefined });
}
