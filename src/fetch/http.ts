import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { Transform, type Duplex, type Readable, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { dirname } from 'node:path';
import type { buildConnector, Dispatcher } from 'undici';
import { lookup as dnsLookup, type LookupAllOptions } from 'node:dns';
import type { LookupFunction } from 'node:net';
import { isBlockedDestination } from '../util/blocked-destinations.js';
import { FreeSpaceWatch } from '../util/free-space.js';
import { ImageBuilderError, isImageBuilderError } from '../util/errors.js';
import type { Logger } from '../util/log.js';
import {
  DEFAULT_RETRY_POLICY,
  errorCode,
  isTransient,
  isTransientStatus,
  parseRetryAfter,
  RetriesExhausted,
  TransientError,
  withRetry,
  type RetryHooks,
  type RetryPolicy,
} from './retry.js';

/** For a recipe step's fetches: cancellation, where retries are logged, limits, and (tests) the retry policy and clock. */
export type StepFetchOptions = Pick<ResilientOptions, 'signal' | 'log' | 'retry' | 'retryHooks' | 'timeouts'> & Pick<DownloadOptions, 'freeSpace'>;

// ---------------------------------------------------------------------------------------------------------
// Caps on what no sum and no size answers for. An image (or a download step's file) whose sha256 the sums
// file or recipe gives is bounded by the disk alone: it is checked whole. A sums file, a signature, a key or a
// directory index vouches for itself, so a hostile server could send it without end; the real ones are
// kilobytes (Debian's and Ubuntu's sums files under 10 KiB, cdimage's largest SHA512SUMS ~100 KiB, the
// debian-archive-keyring ~150 KiB), so these caps leave 25x room or more.

const MiB = 1024 * 1024;
export const MAX_SUMS_BYTES = 4 * MiB;
export const MAX_SIGNATURE_BYTES = 1 * MiB;
export const MAX_KEY_BYTES = 1 * MiB;
export const MAX_INDEX_BYTES = 4 * MiB;

/** A cap on one small resource, and what to call it in the error. */
export interface SizeCap {
  bytes: number;
  what: string;
}

const formatBytes = (n: number) => (n >= MiB ? `${(n / MiB).toFixed(n % MiB ? 1 : 0)} MiB` : n >= 1024 ? `${(n / 1024).toFixed(n % 1024 ? 1 : 0)} KiB` : `${n} bytes`);
const formatMs = (ms: number) => (ms >= 3600000 ? `${(ms / 3600000).toFixed(1)}h` : ms >= 60000 ? `${(ms / 60000).toFixed(1)}min` : `${(ms / 1000).toFixed(1)}s`);

/**
 * Failures after which the bytes on disk are not worth resuming from: the server sent more than it announced,
 * or too slowly. The caller removes its partial file.
 */
const discardable = new WeakSet<object>();
export const isDiscardableFetchFailure = (error: unknown): boolean => typeof error === 'object' && error !== null && discardable.has(error);

/**
 * The limits of one fetch over all its attempts: an overall deadline (a server that trickles a byte now and then
 * never stalls, so the body timeout never fires) and, while a body flows, a minimum rate over each window.
 * Either aborts `signal` with a COMMAND_FAILED that names the URL and what arrived in how long; neither is
 * retried.
 */
class FetchGuard {
  readonly signal: AbortSignal;
  received = 0;
  private readonly controller = new AbortController();
  private readonly started = performance.now();
  private readonly timers: NodeJS.Timeout[] = [];
  private streaming = false;
  private windowStart = 0;
  private windowBytes = 0;

  constructor(
    private readonly url: string,
    timeouts: HttpTimeouts | undefined,
    outer?: AbortSignal,
  ) {
    const limits = { ...DEFAULT_TIMEOUTS, ...timeouts };
    this.signal = outer ? AbortSignal.any([outer, this.controller.signal]) : this.controller.signal;
    if (limits.deadlineMs > 0) {
      this.timers.push(
        setTimeout(
          () => this.fail(`it did not finish within the deadline of ${formatMs(limits.deadlineMs)}`, 'the server is too slow or trickles on purpose; if it is only slow, raise --fetch-deadline (IMAGEBUILDER_FETCH_DEADLINE)'),
          limits.deadlineMs,
        ),
      );
    }
    if (limits.minBytesPerSecond > 0 && limits.rateWindowMs > 0) {
      const timer = setInterval(() => {
        if (!this.streaming || performance.now() - this.windowStart < limits.rateWindowMs) return;
        const got = this.received - this.windowBytes;
        if (got < (limits.minBytesPerSecond * limits.rateWindowMs) / 1000) {
          this.fail(
            `it arrives too slowly: ${formatBytes(got)} in the last ${formatMs(limits.rateWindowMs)}, under the minimum of ${formatBytes(limits.minBytesPerSecond)}/s`,
            'the server trickles; if the link is only slow, lower --fetch-min-rate (IMAGEBUILDER_FETCH_MIN_RATE)',
          );
        }
        this.windowStart = performance.now();
        this.windowBytes = this.received;
      }, Math.max(10, Math.min(1000, limits.rateWindowMs / 4)));
      this.timers.push(timer);
    }
    for (const timer of this.timers) timer.unref();
  }

  bodyStarted(): void {
    this.streaming = true;
    this.windowStart = performance.now();
    this.windowBytes = this.received;
  }

  bodyEnded(): void {
    this.streaming = false;
  }

  bytes(count: number): void {
    this.received += count;
  }

  /** Pipes a body to `sink` through `each` (which may refuse a chunk with an error), counted against the limits. */
  async pipe(body: Readable, sink: Writable, each: (chunk: Buffer) => Error | undefined): Promise<void> {
    const count = (n: number) => this.bytes(n);
    this.bodyStarted();
    try {
      await pipeline(
        body,
        new Transform({
          transform(chunk: Buffer, _encoding, done) {
            count(chunk.length);
            const refused = each(chunk);
            if (refused) done(refused);
            else done(null, chunk);
          },
        }),
        sink,
        { signal: this.signal },
      );
    } finally {
      this.bodyEnded();
    }
  }

  private fail(why: string, hint: string): void {
    if (this.controller.signal.aborted) return;
    const error = new ImageBuilderError('COMMAND_FAILED', `cannot fetch ${this.url}: ${why}; received ${this.received} bytes in ${formatMs(performance.now() - this.started)}`, { hint });
    discardable.add(error);
    this.controller.abort(error);
  }

  close(): void {
    for (const timer of this.timers) clearTimeout(timer);
  }
}

/**
 * The body of a resource nothing vouches for, read up to `cap` and refused beyond it while it streams (an
 * announced length over the cap is refused before reading anything).
 */
async function readCapped(url: string, response: Dispatcher.ResponseData, cap: SizeCap, guard: FetchGuard, code: 'VERIFY_FAILED' | 'COMMAND_FAILED'): Promise<Buffer> {
  const tooLarge = (detail: string) =>
    new ImageBuilderError(code, `${url} is too large for a ${cap.what}: ${detail}, over the cap of ${formatBytes(cap.bytes)}`, {
      hint: `a ${cap.what} is small; this server sends something else, or a body without end: check the URL`,
    });
  // Destroyed below without reading on: its abort must not surface as an unhandled 'error' event.
  response.body.on('error', () => undefined);
  const announced = Number(headerText(response.headers['content-length']) ?? NaN);
  if (announced > cap.bytes) {
    response.body.destroy();
    throw tooLarge(`it announces ${announced} bytes`);
  }
  const chunks: Buffer[] = [];
  let size = 0;
  guard.bodyStarted();
  try {
    for await (const chunk of response.body) {
      size += (chunk as Buffer).length;
      guard.bytes((chunk as Buffer).length);
      if (size > cap.bytes) {
        response.body.destroy();
        throw tooLarge(`refused after ${size} bytes`);
      }
      chunks.push(chunk as Buffer);
    }
  } finally {
    guard.bodyEnded();
  }
  return Buffer.concat(chunks);
}

const MAX_REDIRECTS = 10;

/** undici, loaded by the first request: a build from a local image does not pay its start-up (~50 ms). */
const undici = () => import('undici');

/**
 * A status a recipe step's fetch cannot use: transient ones are retried; anything else fails the step
 * (COMMAND_FAILED, which the step reports as its failure), a 404 saying the URL is wrong.
 */
function stepStatusFailure(url: string, status: number, retryAfter?: string | string[]): Error {
  if (isTransientStatus(status)) return new TransientError(`HTTP ${status} from ${url}`, parseRetryAfter(retryAfter));
  return new ImageBuilderError('COMMAND_FAILED', `cannot fetch ${url}: HTTP ${status}`, {
    hint: status === 404 ? 'the URL does not exist: check its version and path' : 'the server refused or failed; try again later',
  });
}

/**
 * One GET a step needs, retried like phase 0's requests: `consume` reads the body of a 2xx response (and calls
 * `progressed` as bytes arrive: an attempt that got some starts the count of failures again, as downloads do).
 * Every failure is COMMAND_FAILED, which the step reports as its own; a local file that cannot be written
 * (no space, read-only) says so rather than blaming the network.
 */
async function stepGet<T>(
  url: string,
  options: StepFetchOptions,
  consume: (response: Dispatcher.ResponseData, progressed: () => void, guard: FetchGuard) => Promise<T>,
): Promise<T> {
  let progressed = false;
  const guard = new FetchGuard(url, options.timeouts, options.signal);
  const guarded = { ...options, signal: guard.signal };
  try {
    return await withRetry(
      async () => {
        progressed = false;
        const response = await sendGet(url, guarded, { 'user-agent': USER_AGENT });
        if (response.statusCode >= 300) {
          await response.body.dump();
          throw stepStatusFailure(url, response.statusCode, response.headers['retry-after']);
        }
        try {
          return await consume(response, () => (progressed = true), guard);
        } catch (error) {
          if (LOCAL_WRITE_FAILURE.has(errorCode(error) ?? '')) {
            throw new ImageBuilderError('COMMAND_FAILED', `cannot write the download of ${url}: ${(error as Error).message}`, {
              hint: 'check the free space and permissions of the work directory (IMAGEBUILDER_WORK_DIR)',
              cause: error,
            });
          }
          throw classifyRequestError(url, error, guard.signal);
        }
      },
      options.retry ?? DEFAULT_RETRY_POLICY,
      { ...options.retryHooks, signal: guard.signal, madeProgress: () => progressed, onRetry: retryLogger(url, options.log) },
    );
  } catch (error) {
    const failure = exhausted(url, error);
    // Phase 0 calls an unknown host a bad --disk-image; in a recipe step it is that step's failure.
    if (isImageBuilderError(failure) && failure.code === 'BAD_INPUT') {
      throw new ImageBuilderError('COMMAND_FAILED', failure.message, { hint: failure.hint, cause: failure });
    }
    throw failure;
  } finally {
    guard.close();
  }
}

/** Errors of writing the local file, not of the transfer. */
const LOCAL_WRITE_FAILURE = new Set(['ENOSPC', 'EDQUOT', 'EROFS', 'EACCES', 'EPERM', 'EFBIG']);

/** A small resource (a repository key, a checksum file) as bytes, refused beyond `cap` (default: a sums file's). */
export async function fetchBytes(url: string, options: StepFetchOptions & { cap?: SizeCap } = {}): Promise<Buffer> {
  const cap = options.cap ?? { bytes: MAX_SUMS_BYTES, what: 'checksum file' };
  return stepGet(url, options, (response, _progressed, guard) => readCapped(url, response, cap, guard, 'COMMAND_FAILED'));
}

export async function fetchText(url: string, options: StepFetchOptions & { cap?: SizeCap } = {}): Promise<string> {
  return (await fetchBytes(url, options)).toString('utf8');
}

/**
 * Streams a URL to `path` (written under a temporary name, renamed when complete) and returns the sha256 of
 * what was written, computed on the way, so a verified download never has to be read twice. An attempt that
 * fails half way starts the file again.
 */
export async function fetchToFile(url: string, path: string, options: StepFetchOptions = {}): Promise<{ sha256: string; size: number }> {
  const partial = `${path}.partial`;
  try {
    const result = await stepGet(url, options, async (response, progressed, guard) => {
      const hash = createHash('sha256');
      let size = 0;
      // No size of its own (its sha256 is checked once whole): it stops while the work directory still has room.
      const space = new FreeSpaceWatch(dirname(partial), `downloading ${url}`, options.freeSpace?.checkEveryBytes, options.freeSpace?.reserveBytes);
      await guard.pipe(response.body, createWriteStream(partial), (chunk) => {
        hash.update(chunk);
        size += chunk.length;
        progressed();
        return space.add(chunk.length);
      });
      return { sha256: hash.digest('hex'), size };
    });
    await rename(partial, path);
    return result;
  } finally {
    await rm(partial, { force: true });
  }
}

// ---------------------------------------------------------------------------------------------------------
// Phase 0: resilient requests for base images and their sums files (retries, resume, progress).

/**
 * Timeouts of one attempt (a stalled connection fails the attempt and the retry policy decides what next), and
 * the limits of a whole fetch, which are never retried.
 */
export interface HttpTimeouts {
  connectMs: number;
  /** Until the response headers arrive. */
  headersMs: number;
  /** Between two chunks of the body (a stall, not the length of a download). */
  bodyMs: number;
  /** The whole fetch, every attempt, wait and resume included. 0: none. */
  deadlineMs?: number;
  /** While a body flows, at least this many bytes per second over each rate window. 0: no minimum. */
  minBytesPerSecond?: number;
  rateWindowMs?: number;
}

/**
 * Six hours fetch a 20 GiB image at 1 MiB/s; a server that trickles is cut sooner by the minimum rate (1 KiB/s,
 * at which no disk image arrives in a day, averaged over a minute so a congested moment does not count).
 */
export const DEFAULT_TIMEOUTS: Required<HttpTimeouts> = {
  connectMs: 30000,
  headersMs: 60000,
  bodyMs: 60000,
  deadlineMs: 6 * 3600 * 1000,
  minBytesPerSecond: 1024,
  rateWindowMs: 60000,
};

const USER_AGENT = 'imagebuilder';

/**
 * undici 6 crashes the whole process with an uncatchable `assert(!this.paused)` (nodejs/undici#5360, fixed
 * only in later majors) when a server that closes the connection after its response (HTTP/1.0,
 * `Connection: close`) delivers the last bytes of a Content-Length body while the consumer is behind — the
 * parser pauses on that last chunk, then the socket ends. This handler never lets the chunk that completes
 * the body pause the parser (it is buffered, as the chunks before it were), so the message completes before
 * the socket ends. A body without a length or chunked framing ends at EOF itself: it is never paused
 * (buffered while the disk is slower than the network). Chunked bodies are safe as they are.
 */
class NoPauseAtEndHandler implements Dispatcher.DispatchHandlers {
  private remaining?: number;
  private neverPause = false;

  constructor(private readonly handler: Dispatcher.DispatchHandlers) {}

  onConnect(abort: (err?: Error) => void): void {
    this.handler.onConnect?.(abort);
  }
  onError(err: Error): void {
    this.handler.onError?.(err);
  }
  onUpgrade(statusCode: number, headers: Buffer[] | string[] | null, socket: Duplex): void {
    this.handler.onUpgrade?.(statusCode, headers, socket);
  }
  onResponseStarted(): void {
    this.handler.onResponseStarted?.();
  }
  onHeaders(statusCode: number, rawHeaders: Buffer[], resume: () => void, statusText: string): boolean {
    let length: number | undefined;
    let chunked = false;
    for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
      const name = rawHeaders[i].toString().toLowerCase();
      if (name === 'content-length') length = Number(rawHeaders[i + 1].toString());
      else if (name === 'transfer-encoding') chunked = /chunked/i.test(rawHeaders[i + 1].toString());
    }
    this.remaining = length;
    this.neverPause = length === undefined && !chunked;
    return this.handler.onHeaders?.(statusCode, rawHeaders, resume, statusText) ?? true;
  }
  onData(chunk: Buffer): boolean {
    const more = this.handler.onData?.(chunk) ?? true;
    if (this.neverPause) return true;
    if (this.remaining !== undefined) {
      this.remaining -= chunk.length;
      if (this.remaining <= 0) return true;
    }
    return more;
  }
  onComplete(trailers: string[] | null): void {
    this.handler.onComplete?.(trailers);
  }
  onBodySent(chunkSize: number, totalBytesSent: number): void {
    this.handler.onBodySent?.(chunkSize, totalBytesSent);
  }
}

const noPauseAtEnd = (dispatch: Dispatcher['dispatch']): Dispatcher['dispatch'] =>
  function intercept(options: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandlers) {
    return dispatch(options, new NoPauseAtEndHandler(handler));
  };

const refusal = (host: string, address: string) =>
  new ImageBuilderError('BAD_INPUT', `refusing to connect to ${host}${host === address ? '' : ` (${address})`}: a cloud metadata service's address, which no download, key, sums file or redirect may reach from this host`, {
    hint: 'check the URL (and where it redirects): imagebuilder fetches only from mirrors and servers, never from the host\'s metadata services',
  });

/** dns.lookup for the host's fetches: a name with any address among BLOCKED_DESTINATIONS is refused. */
export function guardedLookup(lookup: typeof dnsLookup = dnsLookup): LookupFunction {
  return (hostname, options, callback) => {
    const resolve = lookup as (host: string, how: LookupAllOptions, done: (error: NodeJS.ErrnoException | null, address: string | { address: string }[], family?: number) => void) => void;
    resolve(hostname, options as LookupAllOptions, (error, address, family) => {
      if (error) return callback(error, '', 0);
      const addresses = Array.isArray(address) ? address.map((entry) => entry.address) : [address];
      const blocked = addresses.find((candidate) => isBlockedDestination(candidate));
      if (blocked) return callback(refusal(hostname, blocked) as unknown as NodeJS.ErrnoException, '', 0);
      (callback as (error: null, address: unknown, family?: number) => void)(null, address, family);
    });
  };
}

/**
 * The host's connections (a recipe's downloads, keys and sums files, base images, every redirect they take): never
 * to a metadata service, by address (checked here) or by a name resolving to one (the lookup, at connection time:
 * no second resolution a name could answer differently). The guest's own network is refused them apart (sandbox.ts).
 */
async function guardedAgent(timeouts: HttpTimeouts): Promise<Dispatcher> {
  const { Agent, buildConnector } = await undici();
  const connect = buildConnector({ timeout: timeouts.connectMs, lookup: guardedLookup() } as buildConnector.BuildOptions);
  const guarded: buildConnector.connector = (options, callback) => {
    if (isBlockedDestination(options.hostname)) return callback(refusal(options.hostname, options.hostname), null);
    return connect(options, callback);
  };
  return new Agent({ connect: guarded, headersTimeout: timeouts.headersMs, bodyTimeout: timeouts.bodyMs }).compose(noPauseAtEnd);
}

let sharedDispatcher: Promise<Dispatcher> | undefined;
/** The process-wide dispatcher (guarded, with the workaround), for callers that bring none. */
const defaultDispatcher = () => (sharedDispatcher ??= guardedAgent(DEFAULT_TIMEOUTS));

/** A dispatcher for one phase-0 run (guarded, connect timeout, the workaround above), closed by its owner. */
export async function createDispatcher(timeouts: HttpTimeouts = DEFAULT_TIMEOUTS): Promise<Dispatcher> {
  return guardedAgent(timeouts);
}

/** `http(s)://…` or nothing: anything else that looks like a URL is a mistake worth saying so. */
export function parseImageUrl(text: string): URL | undefined {
  if (!/^[a-z][a-z0-9+.-]*:\/\//i.test(text)) return undefined;
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new ImageBuilderError('BAD_INPUT', `not a valid URL: ${text}`, { hint: 'give an http(s):// URL or the path of a local image' });
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new ImageBuilderError('BAD_INPUT', `unsupported URL scheme ${url.protocol} in ${text}`, { hint: 'images are fetched over http:// or https://; for a local file give its path' });
  }
  if (!urlFileNameOf(url)) throw new ImageBuilderError('BAD_INPUT', `${text} names a directory, not an image file`, { hint: 'give the URL of the image file itself' });
  return url;
}

/** The file name a URL's last path segment gives (what sums files list). */
export function urlFileNameOf(url: URL): string {
  const segment = url.pathname.slice(url.pathname.lastIndexOf('/') + 1);
  try {
    return decodeURIComponent(segment);
  } catch {
    return segment;
  }
}

const TLS_CODE = /CERT|TLS|SSL|SELF_SIGNED|UNABLE_TO_VERIFY|UNABLE_TO_GET_ISSUER/;

/** A failure that another attempt will not cure, in words with a fix; transient ones pass through unchanged. */
function classifyRequestError(url: string, error: unknown, signal?: AbortSignal): unknown {
  if (signal?.aborted) return signal.reason;
  if (isTransient(error)) return error;
  // Ours already (a refusal, a free-space stop): said as it is, not matched as TLS by words in a URL (OpenSSL_…).
  if (isImageBuilderError(error)) return error;
  const code = errorCode(error) ?? '';
  const message = (error as Error)?.message ?? String(error);
  if (TLS_CODE.test(code) || TLS_CODE.test(message)) {
    return new ImageBuilderError('COMMAND_FAILED', `TLS failure fetching ${url}: ${message}${code ? ` (${code})` : ''}`, {
      hint: 'the server certificate is not trusted (self-signed, expired, or for another host): check the URL, or add its CA to the system trust store (NODE_EXTRA_CA_CERTS=ca.pem)',
      cause: error,
    });
  }
  if (code === 'ENOTFOUND') {
    return new ImageBuilderError('BAD_INPUT', `cannot fetch ${url}: host ${new URL(url).hostname} not found`, { hint: 'check the host name in the URL', cause: error });
  }
  return new ImageBuilderError('COMMAND_FAILED', `cannot fetch ${url}: ${message}${code ? ` (${code})` : ''}`, {
    hint: 'check the URL and that this host can reach it',
    cause: error,
  });
}

function statusFailure(url: string, status: number, retryAfter?: string | string[]): Error {
  if (isTransientStatus(status)) return new TransientError(`HTTP ${status} from ${url}`, parseRetryAfter(retryAfter));
  if (status === 404 || status === 410) {
    return new ImageBuilderError('BAD_INPUT', `${url} does not exist (HTTP ${status})`, { hint: 'check the URL: its release, version and file name' });
  }
  return new ImageBuilderError('COMMAND_FAILED', `cannot fetch ${url}: HTTP ${status}`, {
    hint: status === 401 || status === 403 ? 'the server refuses access to it: check the URL' : 'the server refused the request',
  });
}

/** After the retry policy gave up: COMMAND_FAILED with the last failure; any other error unchanged. */
function exhausted(url: string, error: unknown): unknown {
  if (!(error instanceof RetriesExhausted)) return error;
  return new ImageBuilderError('COMMAND_FAILED', `cannot fetch ${url}: ${error.message}`, {
    hint: 'the server or the network kept failing: try again later (a download resumes where it stopped)',
    cause: error,
  });
}

export interface ResilientOptions {
  signal?: AbortSignal;
  dispatcher?: Dispatcher;
  retry?: RetryPolicy;
  /** Injected clock, sleep and randomness (tests). */
  retryHooks?: Pick<RetryHooks, 'sleep' | 'now' | 'random'>;
  timeouts?: HttpTimeouts;
  log?: Logger;
}

function retryLogger(url: string, log?: Logger, before?: () => void) {
  return ({ error, attempt, delayMs }: { error: unknown; attempt: number; delayMs: number }) => {
    before?.();
    log?.warn(`fetching ${url} failed (attempt ${attempt}: ${(error as Error).message ?? String(error)}); retrying in ${(delayMs / 1000).toFixed(1)}s`);
  };
}

/** A GET through the shared agent with these timeouts; failing to get any response is a classified error. */
async function sendGet(url: string, options: ResilientOptions, headers: Record<string, string>, extra: { highWaterMark?: number } = {}): Promise<Dispatcher.ResponseData> {
  const timeouts = options.timeouts ?? DEFAULT_TIMEOUTS;
  try {
    return await (await undici()).request(url, {
      method: 'GET',
      dispatcher: options.dispatcher ?? (await defaultDispatcher()),
      maxRedirections: MAX_REDIRECTS,
      signal: options.signal,
      headers,
      headersTimeout: timeouts.headersMs,
      bodyTimeout: timeouts.bodyMs,
      ...extra,
    });
  } catch (error) {
    throw classifyRequestError(url, error, options.signal);
  }
}

/**
 * A small resource (a sums file, a signature) with retries, refused beyond `cap` (VERIFY_FAILED: what should
 * vouch for the image cannot); undefined when the server says it does not exist.
 */
export async function fetchOptional(url: string, options: ResilientOptions & { cap?: SizeCap } = {}): Promise<Buffer | undefined> {
  const cap = options.cap ?? { bytes: MAX_SUMS_BYTES, what: 'sums file' };
  const guard = new FetchGuard(url, options.timeouts, options.signal);
  const guarded = { ...options, signal: guard.signal };
  try {
    return await withRetry(
      async () => {
        const response = await sendGet(url, guarded, { 'user-agent': USER_AGENT });
        if (response.statusCode === 404 || response.statusCode === 410) {
          await response.body.dump();
          return undefined;
        }
        if (response.statusCode >= 300) {
          await response.body.dump();
          throw statusFailure(url, response.statusCode, response.headers['retry-after']);
        }
        try {
          return await readCapped(url, response, cap, guard, 'VERIFY_FAILED');
        } catch (error) {
          throw classifyRequestError(url, error, guard.signal);
        }
      },
      options.retry ?? DEFAULT_RETRY_POLICY,
      { ...options.retryHooks, signal: guard.signal, onRetry: retryLogger(url, options.log) },
    );
  } catch (error) {
    throw exhausted(url, error);
  } finally {
    guard.close();
  }
}

export interface DownloadProgress {
  /** Bytes of the file present so far (a resumed download starts above zero). */
  received: number;
  total?: number;
}

export interface DownloadOptions extends ResilientOptions {
  /** Validators of a complete copy we hold: when the server answers 304, nothing is downloaded. */
  ifNotModified?: { etag?: string; lastModified?: string };
  onStart?: (progress: DownloadProgress & { resumed: boolean }) => void;
  onProgress?: (progress: DownloadProgress) => void;
  /** Called before a retry is logged (a progress bar clears its line). */
  beforeLog?: () => void;
  /** How often the free space is asked and what is left free (FREE_SPACE_CHECK_BYTES, DEFAULT_RESERVE; tests differ). */
  freeSpace?: { checkEveryBytes: number; reserveBytes: (totalBytes: number) => number };
}

export interface DownloadResult {
  notModified: boolean;
  size: number;
  etag?: string;
  lastModified?: string;
  /** How many times the download continued with a Range request. */
  resumes: number;
  attempts: number;
}

/** What a `.partial` file holds: enough to resume it safely (If-Range) in this or a later process. */
interface PartialMeta {
  url: string;
  etag?: string;
  lastModified?: string;
  total?: number;
}

const headerText = (value: string | string[] | undefined) => (Array.isArray(value) ? value[0] : value);

/** Room for the body ahead of the disk before the parser waits (undici's default is 64 KiB). */
const BODY_HIGH_WATER_MARK = 4 * 1024 * 1024;

/** If-Range needs a strong validator: a strong ETag, else Last-Modified. */
function resumeValidator(meta: PartialMeta | undefined): string | undefined {
  if (meta?.etag && !meta.etag.startsWith('W/')) return meta.etag;
  return meta?.lastModified;
}

export function parseContentRange(value: string | undefined): { start: number; end: number; total?: number } | undefined {
  const match = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(value?.trim() ?? '');
  if (!match) return undefined;
  return { start: Number(match[1]), end: Number(match[2]), total: match[3] === '*' ? undefined : Number(match[3]) };
}

async function readPartialMeta(path: string, url: string): Promise<PartialMeta | undefined> {
  try {
    const meta = JSON.parse(await readFile(path, 'utf8')) as PartialMeta;
    return meta.url === url ? meta : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Downloads `url` into `partial` (its resume state in `partial.json`), following redirects, retrying
 * transient failures with backoff, and continuing after a dropped connection with `Range` + `If-Range` (a
 * changed file is sent whole, and the download starts over). A partial left by an interrupted earlier
 * process is resumed the same way. The complete file stays at `partial`: the caller verifies and moves it.
 * On failure or abort the partial stays, resumable; the caller decides whether to keep it.
 */
export async function downloadFile(url: string, partial: string, options: DownloadOptions = {}): Promise<DownloadResult> {
  const guard = new FetchGuard(url, options.timeouts, options.signal);
  const guarded = { ...options, signal: guard.signal };
  const metaPath = `${partial}.json`;
  let meta = await readPartialMeta(metaPath, url);
  // A body with no length, or a huge one, stops while its filesystem still has room; one watch for every attempt
  // (a server that drops each connection and resumes would otherwise never reach a check).
  const space = new FreeSpaceWatch(dirname(partial), `downloading ${url}`, options.freeSpace?.checkEveryBytes, options.freeSpace?.reserveBytes);
  let progressed = false;
  let resumes = 0;
  const startOver = async () => {
    meta = undefined;
    await rm(partial, { force: true });
    await rm(metaPath, { force: true });
  };
  try {
    return await withRetry(
      async (attempt): Promise<DownloadResult> => {
        progressed = false;
        const have = (await stat(partial).catch(() => undefined))?.size ?? 0;
        const validator = resumeValidator(meta);
        const offset = validator && have > 0 && (meta!.total === undefined || have <= meta!.total) ? have : 0;
        if (offset === 0 && have > 0) await startOver();
        const headers: Record<string, string> = { 'user-agent': USER_AGENT, 'accept-encoding': 'identity' };
        if (offset > 0) {
          headers.range = `bytes=${offset}-`;
          headers['if-range'] = validator!;
        } else if (options.ifNotModified?.etag) headers['if-none-match'] = options.ifNotModified.etag;
        else if (options.ifNotModified?.lastModified) headers['if-modified-since'] = options.ifNotModified.lastModified;

        const response = await sendGet(url, guarded, headers, { highWaterMark: BODY_HIGH_WATER_MARK });
        // A connection dropped before the body is piped (while the resume state is written) errors the body with
        // no listener yet, which would end the process: the pipe reports the stream's error once it starts.
        response.body.on('error', () => undefined);
        const status = response.statusCode;
        const etag = headerText(response.headers.etag);
        const lastModified = headerText(response.headers['last-modified']);
        if (status === 304 && offset === 0 && options.ifNotModified) {
          await response.body.dump();
          return { notModified: true, size: 0, etag, lastModified, resumes, attempts: attempt };
        }
        if (status === 416 && offset > 0) {
          await response.body.dump();
          // The partial is already whole (an earlier run stopped after the last byte): the validator matched,
          // or the server would have sent the file again with 200.
          const range = /^bytes \*\/(\d+)$/.exec(headerText(response.headers['content-range'])?.trim() ?? '');
          if (range && Number(range[1]) === offset) {
            options.onStart?.({ received: offset, total: offset, resumed: true });
            return { notModified: false, size: offset, etag: meta!.etag, lastModified: meta!.lastModified, resumes, attempts: attempt };
          }
          // The file shrank or changed under us: start again from the first byte, at once.
          await startOver();
          progressed = true;
          throw new TransientError(`${url} no longer has the ${offset} bytes already downloaded`);
        }
        if (status !== 200 && status !== 206) {
          await response.body.dump();
          throw statusFailure(url, status, response.headers['retry-after']);
        }
        let append = false;
        if (status === 206) {
          const range = parseContentRange(headerText(response.headers['content-range']));
          if (offset === 0 || !range || range.start !== offset) {
            await response.body.dump();
            await startOver();
            progressed = true;
            throw new TransientError(`${url} answered a range other than the one asked for`);
          }
          append = true;
          resumes++;
          meta = { ...meta!, total: range.total ?? meta!.total };
        } else {
          const length = headerText(response.headers['content-length']);
          meta = { url, etag, lastModified, total: length === undefined ? undefined : Number(length) };
          await writeFile(metaPath, `${JSON.stringify(meta)}\n`);
        }
        const total = meta.total;
        let received = append ? offset : 0;
        options.onStart?.({ received, total, resumed: append });
        try {
          await guard.pipe(response.body, createWriteStream(partial, { flags: append ? 'a' : 'w' }), (chunk) => {
            received += chunk.length;
            progressed = true;
            const shortfall = space.add(chunk.length);
            if (shortfall) {
              discardable.add(shortfall);
              return shortfall;
            }
            // The size announced (Content-Length, or the total of a Content-Range) is all we take: a body
            // that goes on (a 206 without a length that never ends) would fill the disk.
            if (total !== undefined && received > total) {
              const error = new ImageBuilderError('COMMAND_FAILED', `cannot fetch ${url}: the server sent more than the ${total} bytes it announced (refused at ${received})`, {
                hint: 'the server or something between it and this host is broken or hostile: nothing of it was kept',
              });
              discardable.add(error);
              return error;
            }
            options.onProgress?.({ received, total });
            return undefined;
          });
        } catch (error) {
          throw classifyRequestError(url, error, guard.signal);
        }
        if (total !== undefined && received !== total) {
          throw new TransientError(`the connection closed after ${received} of ${total} bytes of ${url}`);
        }
        return { notModified: false, size: received, etag: meta.etag, lastModified: meta.lastModified, resumes, attempts: attempt };
      },
      options.retry ?? DEFAULT_RETRY_POLICY,
      {
        ...options.retryHooks,
        signal: guard.signal,
        madeProgress: () => progressed,
        onRetry: retryLogger(url, options.log, options.beforeLog),
      },
    );
  } catch (error) {
    throw exhausted(url, error);
  } finally {
    guard.close();
  }
}
