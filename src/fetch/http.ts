import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { rename, rm } from 'node:fs/promises';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { request } from 'undici';
import { ImageBuilderError } from '../util/errors.js';

export interface FetchOptions {
  signal?: AbortSignal;
  /** Headers sent with the request (e.g. Range when resuming). */
  headers?: Record<string, string>;
  /** Whole-request timeout for small bodies; body timeout between chunks for downloads. */
  timeoutMs?: number;
}

const MAX_REDIRECTS = 10;

async function get(url: string, options: FetchOptions) {
  let response;
  try {
    response = await request(url, {
      method: 'GET',
      maxRedirections: MAX_REDIRECTS,
      signal: options.signal,
      headers: { 'user-agent': 'imagebuilder', ...options.headers },
      headersTimeout: options.timeoutMs ?? 60000,
      bodyTimeout: options.timeoutMs ?? 60000,
    });
  } catch (error) {
    if (options.signal?.aborted) throw options.signal.reason;
    const cause = error as NodeJS.ErrnoException & { cause?: NodeJS.ErrnoException };
    const code = cause.code ?? cause.cause?.code ?? '';
    throw new ImageBuilderError('COMMAND_FAILED', `cannot fetch ${url}: ${cause.message}${code ? ` (${code})` : ''}`, {
      hint: /CERT|TLS|SSL/.test(code)
        ? 'the server certificate is not trusted: check the URL, or install its CA into the system trust store'
        : 'check the URL and that this host can reach it (proxies: HTTPS_PROXY is not read; use a local mirror URL)',
      cause: error,
    });
  }
  if (response.statusCode >= 400) {
    await response.body.dump();
    throw new ImageBuilderError('COMMAND_FAILED', `cannot fetch ${url}: HTTP ${response.statusCode}`, {
      hint: response.statusCode === 404 ? 'the URL does not exist: check its version and path' : 'the server refused or failed; try again later',
    });
  }
  return response;
}

/** A small resource (a sums file, a key) as bytes. */
export async function fetchBytes(url: string, options: FetchOptions = {}): Promise<Buffer> {
  const response = await get(url, options);
  return Buffer.from(await response.body.arrayBuffer());
}

export async function fetchText(url: string, options: FetchOptions = {}): Promise<string> {
  return (await fetchBytes(url, options)).toString('utf8');
}

/**
 * Streams a URL to `path` (written under a temporary name, renamed when complete) and returns the sha256 of
 * what was written, computed on the way, so a verified download never has to be read twice.
 */
export async function fetchToFile(url: string, path: string, options: FetchOptions = {}): Promise<{ sha256: string; size: number }> {
  const response = await get(url, options);
  const hash = createHash('sha256');
  let size = 0;
  const partial = `${path}.partial`;
  try {
    await pipeline(
      response.body,
      new Transform({
        transform(chunk: Buffer, _encoding, done) {
          hash.update(chunk);
          size += chunk.length;
          done(null, chunk);
        },
      }),
      createWriteStream(partial),
      { signal: options.signal },
    );
    await rename(partial, path);
  } catch (error) {
    await rm(partial, { force: true });
    if (options.signal?.aborted) throw options.signal.reason;
    throw new ImageBuilderError('COMMAND_FAILED', `download of ${url} failed: ${(error as Error).message}`, { cause: error });
  }
  return { sha256: hash.digest('hex'), size };
}
