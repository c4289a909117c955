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

const escapeControl = (c: string) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`;

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

export function silentLogger(): Logger {
  return createLogger({ write: () => undefined });
}
