import type { Logger } from '../util/log.js';

export interface ProgressSink {
  isTTY?: boolean;
  columns?: number;
  write(text: string): unknown;
}

export interface Progress {
  start(state: { received: number; total?: number; resumed: boolean }): void;
  update(state: { received: number; total?: number }): void;
  /** Clears a bar's line so a log line can be printed. */
  clear(): void;
  done(state: { received: number }): void;
}

export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`;
}

/**
 * How a download shows itself: a redrawn bar on a terminal (at most 10 times a second), or, in a log (CI,
 * a pipe), a line when it starts, one every `intervalMs`, and one when it ends.
 */
export function createProgress(
  label: string,
  log: Logger,
  options: { sink?: ProgressSink; intervalMs?: number; now?: () => number; enabled?: boolean } = {},
): Progress {
  const sink = options.sink ?? process.stderr;
  const now = options.now ?? Date.now;
  const tty = (options.enabled ?? true) && Boolean(sink.isTTY);
  const intervalMs = options.intervalMs ?? 10000;
  let started = now();
  let startBytes = 0;
  let last = 0;
  let drawn = false;
  const rate = (received: number) => {
    const seconds = (now() - started) / 1000;
    return seconds > 0 ? (received - startBytes) / seconds : 0;
  };
  const describe = (received: number, total?: number) => {
    const percent = total ? `${Math.floor((received / total) * 100)}% ` : '';
    return `${percent}${formatBytes(received)}${total ? ` of ${formatBytes(total)}` : ''}, ${formatBytes(rate(received))}/s`;
  };
  const draw = (received: number, total?: number) => {
    const width = Math.max(10, Math.min(40, (sink.columns ?? 80) - label.length - 45));
    const filled = total ? Math.min(width, Math.round((received / total) * width)) : 0;
    const bar = total ? `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ` : '';
    sink.write(`\r\x1b[K${label} ${bar}${describe(received, total)}`);
    drawn = true;
  };
  return {
    start({ received, total, resumed }) {
      started = now();
      startBytes = received;
      last = started;
      if (tty) draw(received, total);
      else log.info(`${resumed ? 'resuming' : 'downloading'} ${label}${total ? ` (${formatBytes(total)})` : ''}${resumed ? ` at ${formatBytes(received)}` : ''}`);
    },
    update({ received, total }) {
      const t = now();
      if (tty ? t - last >= 100 : t - last >= intervalMs) {
        last = t;
        if (tty) draw(received, total);
        else log.info(`downloading ${label}: ${describe(received, total)}`);
      }
    },
    clear() {
      if (drawn) sink.write('\r\x1b[K');
      drawn = false;
    },
    done({ received }) {
      if (tty) {
        draw(received, received);
        sink.write('\n');
        drawn = false;
      }
      log.info(`downloaded ${label}: ${formatBytes(received)} in ${((now() - started) / 1000).toFixed(1)}s`);
    },
  };
}
