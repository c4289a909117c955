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
    write(`[${seconds}s] ${tag}${message}\n`);
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
      if (showOutput) write(chunk.replace(/^(?=.)/gm, '    '));
    },
    warnings,
  };
}

export function silentLogger(): Logger {
  return createLogger({ write: () => undefined });
}
