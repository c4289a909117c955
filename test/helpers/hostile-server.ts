import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

/** How a path misbehaves. */
type Behaviour =
  | { kind: 'file'; data: Buffer }
  /** A body without end, or of `limit` bytes (chunked, or under a Content-Length it announces), generated as it is sent. */
  | { kind: 'endless'; announce?: number; limit?: number }
  /** The bytes of `data`, one every `pauseMs`, under their true Content-Length: never a stall. */
  | { kind: 'trickle'; data: Buffer; pauseMs: number }
  /**
   * `data` announced whole (200, Content-Length, a strong ETag), the connection dropped half way; a resume
   * (Range) gets 206 with the right Content-Range, then a body that goes on past the announced total.
   */
  | { kind: 'overlong'; data: Buffer };

export interface HostileServer {
  url: string;
  serve(path: string, behaviour: Behaviour): void;
  /** Body bytes sent for `path` so far, over every request. */
  sent(path: string): number;
  close(): Promise<void>;
}

const CHUNK = 64 * 1024;
const wait = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Writes `chunk`, waiting while the client is behind; false once the client is gone. */
async function send(response: ServerResponse, chunk: Buffer): Promise<boolean> {
  if (response.destroyed) return false;
  if (!response.write(chunk)) {
    await new Promise<void>((resolve) => {
      const done = () => {
        response.off('drain', done);
        response.off('close', done);
        resolve();
      };
      response.on('drain', done);
      response.on('close', done);
    });
  }
  return !response.destroyed;
}

/**
 * An HTTP server on 127.0.0.1 that attacks its client: bodies without end (never held in memory), bodies that
 * trickle, a resume that sends more than it announced. It counts what it sent, so a test can show that the
 * client stopped reading long before the end.
 */
export async function startHostileServer(): Promise<HostileServer> {
  const behaviours = new Map<string, Behaviour>();
  const sent = new Map<string, number>();
  const count = (path: string, n: number) => sent.set(path, (sent.get(path) ?? 0) + n);

  async function handle(request: IncomingMessage, response: ServerResponse) {
    const path = decodeURIComponent(new URL(request.url ?? '/', 'http://x').pathname);
    const behaviour = behaviours.get(path);
    if (!behaviour) {
      response.writeHead(404, { 'content-length': 0 }).end();
      return;
    }
    switch (behaviour.kind) {
      case 'file':
        response.writeHead(200, { 'content-length': behaviour.data.length });
        count(path, behaviour.data.length);
        response.end(behaviour.data);
        return;
      case 'endless': {
        response.writeHead(200, behaviour.announce === undefined ? {} : { 'content-length': behaviour.announce });
        const chunk = Buffer.alloc(CHUNK, 'a');
        const limit = behaviour.limit ?? Infinity;
        for (let body = 0; body < limit && (await send(response, chunk)); body += chunk.length) count(path, chunk.length);
        response.end();
        return;
      }
      case 'trickle': {
        response.writeHead(200, { 'content-length': behaviour.data.length });
        for (const byte of behaviour.data) {
          if (!(await send(response, Buffer.from([byte])))) return;
          count(path, 1);
          await wait(behaviour.pauseMs);
        }
        response.end();
        return;
      }
      case 'overlong': {
        const { data } = behaviour;
        const range = /^bytes=(\d+)-$/.exec(request.headers.range ?? '');
        if (!range) {
          response.writeHead(200, { 'content-length': data.length, etag: '"v1"', 'accept-ranges': 'bytes' });
          const half = data.subarray(0, data.length >> 1);
          await send(response, half);
          count(path, half.length);
          await wait(100);
          response.socket?.destroy();
          return;
        }
        const start = Number(range[1]);
        // The right range and total, then no length and no end.
        response.writeHead(206, { 'content-range': `bytes ${start}-${data.length - 1}/${data.length}`, etag: '"v1"' });
        const chunk = Buffer.alloc(CHUNK, 'b');
        while (await send(response, chunk)) count(path, chunk.length);
        return;
      }
    }
  }

  const server = createServer((request, response) => {
    handle(request, response).catch(() => response.socket?.destroy());
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    serve: (path, behaviour) => void behaviours.set(path, behaviour),
    sent: (path) => sent.get(path) ?? 0,
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.close((error) => (error ? reject(error) : resolve()));
        server.closeAllConnections();
      }),
  };
}
