import { ImageBuilderError } from './errors.js';
import type { Logger } from './log.js';

/**
 * The signals that stop a build, each releasing everything: Ctrl-C, kill, a dropped SSH session or closed
 * terminal (SIGHUP), Ctrl-\ (SIGQUIT, whose default action would leave everything mounted and dump core).
 */
export const STOP_SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGQUIT'];

/**
 * Turns SIGINT/SIGTERM/SIGHUP/SIGQUIT into an abort of the running build: the running command is cancelled, the build
 * fails with INTERRUPTED and its finally-blocks unwind every resource. Further signals while unwinding are
 * ignored so cleanup is not cut short.
 */
export async function withInterrupts<T>(
  log: Logger,
  body: (signal: AbortSignal) => Promise<T>,
  /** Signals that stop the build; an interactive shell leaves SIGINT and SIGQUIT to the shell it runs. */
  signals: NodeJS.Signals[] = STOP_SIGNALS,
): Promise<T> {
  const controller = new AbortController();
  const onSignal = (name: NodeJS.Signals) => {
    if (controller.signal.aborted) {
      log.warn(`${name} again: still cleaning up, please wait`);
      return;
    }
    log.warn(`${name} received: stopping and releasing everything`);
    controller.abort(new ImageBuilderError('INTERRUPTED', `interrupted by ${name}`));
  };
  const ignore = () => undefined;
  for (const name of signals) process.on(name, onSignal);
  // A signal we leave to someone else must not kill us with its default action either.
  const ignored = STOP_SIGNALS.filter((name) => !signals.includes(name));
  for (const name of ignored) process.on(name, ignore);
  try {
    return await body(controller.signal);
  } catch (error) {
    if (controller.signal.aborted) throw controller.signal.reason;
    throw error;
  } finally {
    for (const name of signals) process.off(name, onSignal);
    for (const name of ignored) process.off(name, ignore);
  }
}

export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw signal.reason;
}
