import { createConnection, type Socket } from 'node:net';
import { ImageBuilderError } from '../util/errors.js';

/**
 * A minimal client for QEMU's machine protocol (QMP) on a unix socket: one command at a time, each answered by
 * a `return` or an `error` line; asynchronous `event` lines in between are skipped.
 * https://www.qemu.org/docs/master/interop/qmp-spec.html
 */
export interface QmpClient {
  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T>;
  close(): void;
}

export async function connectQmp(socketPath: string, timeoutMs = 10000): Promise<QmpClient> {
  const socket: Socket = await new Promise((resolve, reject) => {
    const connection = createConnection(socketPath, () => {
      connection.off('error', reject);
      resolve(connection);
    });
    connection.once('error', reject);
  });
  let buffered = '';
  let failure: Error | undefined;
  const waiting: { resolve: (line: Record<string, unknown>) => void; reject: (error: Error) => void }[] = [];
  const pending: Record<string, unknown>[] = [];
  // The daemon going away (or talking nonsense) fails whoever waits for an answer, at once.
  const fail = (error: Error) => {
    failure ??= error;
    for (const waiter of waiting.splice(0)) waiter.reject(failure);
  };
  socket.on('error', (error) => fail(new ImageBuilderError('COMMAND_FAILED', `QMP connection to ${socketPath} failed: ${error.message}`)));
  socket.on('close', () => fail(new ImageBuilderError('COMMAND_FAILED', `QMP connection to ${socketPath} closed`)));
  socket.setEncoding('utf8');
  socket.on('data', (chunk: string) => {
    buffered += chunk;
    let newline: number;
    while ((newline = buffered.indexOf('\n')) >= 0) {
      const text = buffered.slice(0, newline).trim();
      buffered = buffered.slice(newline + 1);
      if (!text) continue;
      let message: Record<string, unknown>;
      try {
        message = JSON.parse(text) as Record<string, unknown>;
      } catch {
        fail(new ImageBuilderError('COMMAND_FAILED', `QMP at ${socketPath} sent something that is not JSON: ${text.slice(0, 200)}`));
        socket.destroy();
        return;
      }
      if ('event' in message) continue;
      const next = waiting.shift();
      if (next) next.resolve(message);
      else pending.push(message);
    }
  });
  const nextMessage = () =>
    new Promise<Record<string, unknown>>((resolve, reject) => {
      const queued = pending.shift();
      if (queued) return resolve(queued);
      if (failure) return reject(failure);
      const waiter = {
        resolve: (message: Record<string, unknown>) => {
          clearTimeout(timer);
          resolve(message);
        },
        reject: (error: Error) => {
          clearTimeout(timer);
          reject(error);
        },
      };
      const timer = setTimeout(() => {
        waiting.splice(waiting.indexOf(waiter), 1);
        reject(new ImageBuilderError('COMMAND_FAILED', `no answer from QMP at ${socketPath}`));
      }, timeoutMs);
      waiting.push(waiter);
    });

  const client: QmpClient = {
    async execute<T>(command: string, args?: Record<string, unknown>) {
      socket.write(`${JSON.stringify({ execute: command, ...(args ? { arguments: args } : {}) })}\n`);
      const answer = await nextMessage();
      if ('error' in answer) {
        const error = answer.error as { class?: string; desc?: string };
        throw new ImageBuilderError('COMMAND_FAILED', `QMP ${command} failed: ${error.desc ?? JSON.stringify(error)}`);
      }
      return answer.return as T;
    },
    close: () => void socket.destroy(),
  };
  try {
    await nextMessage(); // the greeting
    await client.execute('qmp_capabilities');
  } catch (error) {
    client.close();
    throw error;
  }
  return client;
}
