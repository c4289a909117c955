import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';

/** A file the server offers: bytes in memory, or a file on disk (a fixture image of hundreds of MiB). */
export interface ServedFile {
  data?: Buffer;
  path?: string;
  /** Sent as ETag unless false; default a strong tag from the content's identity. */
  etag?: string | false;
  /** Sent as Last-Modified unless false. */
  lastModified?: string | false;
  contentType?: string;
}

export interface RequestRecord {
  method: string;
  path: string;
  range?: string;
  ifRange?: string;
  ifNoneMatch?: string;
  status: number;
  /** Body bytes sent. */
  bytes: number;
}

export interface ImageServer {
  /** http://127.0.0.1:PORT (no trailing slash). */
  url: string;
  serve(path: string, file: ServedFile): void;
  remove(path: string): void;
  /** The next `count` requests for `path` answer `status` (e.g. 500, 503; 0: never answer). */
  failNext(path: string, status: number, count?: number): void;
  /** The next `count` requests for `path` send `bytes` of the body, then drop the connection. */
  dropAfter(path: string, bytes: number, count?: number): void;
  /** Every body of `path` is sent in 64 KiB chunks with this pause between them. */
  throttle(path: string, pauseMs: number): void;
  /** Redirect `from` to `to` (302). */
  redirect(from: string, to: string): void;
  requests: RequestRecord[];
  /** Requests for `path` (GET only), with their Range headers. */
  gets(path: string): RequestRecord[];
  close(): Promise<void>;
}

const CHUNK = 64 * 1024;

/**
 * An HTTP server on 127.0.0.1 serving images and sums files the way real mirrors do — Content-Length, ETag,
 * Last-Modified, Range with If-Range (206, or 200 when the validator no longer matches, 416 past the end),
 * If-None-Match (304) — plus scripted faults: status codes, dropped connections, throttling, redirects.
 */
export async function startImageServer(options: { tls?: { key: string; cert: string } } = {}): Promise<ImageServer> {
  const files = new Map<string, ServedFile>();
  const failures = new Map<string, { status: number; count: number }>();
  const drops = new Map<string, { bytes: number; count: number }>();
  const throttles = new Map<string, number>();
  const redirects = new Map<string, string>();
  const requests: RequestRecord[] = [];

  const sizeOf = async (file: ServedFile) => file.data?.length ?? (await stat(file.path!)).size;
  const etagOf = (file: ServedFile, size: number) =>
    file.etag === false ? undefined : (file.etag ?? `"${createHash('sha256').update(file.data ?? `${file.path}:${size}`).digest('hex').slice(0, 16)}"`);
  const lastModifiedOf = (file: ServedFile) => (file.lastModified === false ? undefined : (file.lastModified ?? 'Mon, 01 Jan 2024 00:00:00 GMT'));
  const body = (file: ServedFile, start: number, end: number): Readable =>
    file.data ? Readable.from(chunks(file.data.subarray(start, end + 1))) : createReadStream(file.path!, { start, end, highWaterMark: CHUNK });

  async function handle(request: IncomingMessage, response: ServerResponse) {
    const path = decodeURIComponent(new URL(request.url ?? '/', 'http://x').pathname);
    const record: RequestRecord = {
      method: request.method ?? 'GET',
      path,
      range: request.headers.range,
      ifRange: request.headers['if-range'] as string | undefined,
      ifNoneMatch: request.headers['if-none-match'],
      status: 0,
      bytes: 0,
    };
    requests.push(record);
    const answer = (status: number, headers: Record<string, string | number> = {}) => {
      record.status = status;
      response.writeHead(status, headers);
    };
    const to = redirects.get(path);
    if (to) {
      answer(302, { location: to, 'content-length': 0 });
      return response.end();
    }
    const failure = failures.get(path);
    if (failure && failure.count > 0) {
      failure.count--;
      if (failure.status === 0) return; // accepted, never answered
      answer(failure.status, { 'content-length': 0 });
      return response.end();
    }
    const file = files.get(path);
    if (!file || (request.method !== 'GET' && request.method !== 'HEAD')) {
      answer(404, { 'content-type': 'text/plain' });
      return response.end('not found\n');
    }
    const size = await sizeOf(file);
    const etag = etagOf(file, size);
    const lastModified = lastModifiedOf(file);
    const validators: Record<string, string> = {};
    if (etag) validators.etag = etag;
    if (lastModified) validators['last-modified'] = lastModified;
    if (request.headers['if-none-match'] && etag && request.headers['if-none-match'] === etag) {
      answer(304, validators);
      return response.end();
    }
    let start = 0;
    let end = size - 1;
    let status = 200;
    const range = /^bytes=(\d+)-(\d*)$/.exec(request.headers.range ?? '');
    const ifRange = request.headers['if-range'] as string | undefined;
    const rangeApplies = range && (!ifRange || ifRange === etag || ifRange === lastModified);
    if (rangeApplies) {
      start = Number(range[1]);
      end = range[2] ? Math.min(Number(range[2]), size - 1) : size - 1;
      if (start >= size) {
        answer(416, { 'content-range': `bytes */${size}`, 'content-length': 0, ...validators });
        return response.end();
      }
      status = 206;
    }
    const headers: Record<string, string | number> = {
      'content-type': file.contentType ?? 'application/octet-stream',
      'content-length': end - start + 1,
      'accept-ranges': 'bytes',
      ...validators,
    };
    if (status === 206) headers['content-range'] = `bytes ${start}-${end}/${size}`;
    answer(status, headers);
    if (request.method === 'HEAD') return response.end();
    const drop = drops.get(path);
    const dropAt = drop && drop.count > 0 ? (drop.count--, drop.bytes) : undefined;
    const pause = throttles.get(path) ?? 0;
    const stream = body(file, start, end);
    for await (const chunk of stream) {
      let piece = chunk as Buffer;
      if (dropAt !== undefined && record.bytes + piece.length >= dropAt) piece = piece.subarray(0, dropAt - record.bytes);
      if (piece.length) {
        record.bytes += piece.length;
        if (!response.write(piece)) await new Promise((resolve) => response.once('drain', resolve));
      }
      if (dropAt !== undefined && record.bytes >= dropAt) {
        stream.destroy();
        // Let the bytes written so far leave (all of them handed to the kernel, however loaded the machine is),
        // then cut the connection in the middle of the body.
        const socket = response.socket;
        while (socket && socket.writableLength > 0) await new Promise((resolve) => setTimeout(resolve, 10));
        await new Promise((resolve) => setTimeout(resolve, 50));
        socket?.destroy();
        return;
      }
      if (pause) await new Promise((resolve) => setTimeout(resolve, pause));
    }
    response.end();
  }

  const listener = (request: IncomingMessage, response: ServerResponse) => {
    handle(request, response).catch(() => response.socket?.destroy());
  };
  const server: Server = options.tls ? createHttpsServer(options.tls, listener) : createServer(listener);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const url = `${options.tls ? 'https' : 'http'}://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    url,
    serve: (path, file) => void files.set(path, file),
    remove: (path) => void files.delete(path),
    failNext: (path, status, count = 1) => void failures.set(path, { status, count }),
    dropAfter: (path, bytes, count = 1) => void drops.set(path, { bytes, count }),
    throttle: (path, pauseMs) => void throttles.set(path, pauseMs),
    redirect: (from, to) => void redirects.set(from, to),
    requests,
    gets: (path) => requests.filter((r) => r.path === path && r.method === 'GET'),
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.close((error) => (error ? reject(error) : resolve()));
        server.closeAllConnections();
      }),
  };
}

function* chunks(data: Buffer): Generator<Buffer> {
  for (let offset = 0; offset < data.length; offset += CHUNK) yield data.subarray(offset, offset + CHUNK);
}
