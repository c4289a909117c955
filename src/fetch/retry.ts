/**
 * The retry policy of every phase-0 request: exponential backoff with jitter, a bounded number of consecutive
 * failed attempts and a bounded time spent failing. An attempt that made progress (a download that received
 * bytes before its connection dropped) starts the count afresh: a flaky link that keeps delivering finishes.
 * Clock, sleep and randomness are injectable so unit tests check the schedule without waiting.
 */
export interface RetryPolicy {
  /** Attempts in a row without progress before giving up (the first try included). */
  attempts: number;
  initialDelayMs: number;
  maxDelayMs: number;
  factor: number;
  /** Fraction of each delay that is random (0: exact), so many clients do not retry in lockstep. */
  jitter: number;
  /** Time spent failing without progress (delays included) before giving up. */
  maxElapsedMs: number;
}

export const DEFAULT_RETRY_POLICY: RetryPolicy = {
  attempts: 6,
  initialDelayMs: 1000,
  maxDelayMs: 30000,
  factor: 2,
  jitter: 0.2,
  maxElapsedMs: 10 * 60 * 1000,
};

/**
 * A failure worth another try: 5xx, 408, 429, a dropped or refused connection, a timeout. `retryAfterMs` is
 * the server's Retry-After, honoured up to the policy's longest delay.
 */
export class TransientError extends Error {
  constructor(
    message: string,
    readonly retryAfterMs?: number,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'TransientError';
  }
}

/** Error codes of connection failures that may well succeed on another try (Node's and undici's). */
const TRANSIENT_CODES = new Set([
  'ECONNRESET',
  'ECONNREFUSED',
  'ECONNABORTED',
  'EPIPE',
  'ETIMEDOUT',
  'EAI_AGAIN',
  'ENETDOWN',
  'ENETUNREACH',
  'EHOSTDOWN',
  'EHOSTUNREACH',
  'UND_ERR_SOCKET',
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_HEADERS_TIMEOUT',
  'UND_ERR_BODY_TIMEOUT',
  'UND_ERR_CLOSED',
  'UND_ERR_RES_CONTENT_LENGTH_MISMATCH',
  'ERR_STREAM_PREMATURE_CLOSE',
]);

export function errorCode(error: unknown): string | undefined {
  const e = error as { code?: unknown; cause?: { code?: unknown } } | undefined;
  const code = e?.code ?? e?.cause?.code;
  return typeof code === 'string' ? code : undefined;
}

export function isTransient(error: unknown): boolean {
  if (error instanceof TransientError) return true;
  const code = errorCode(error);
  return code !== undefined && TRANSIENT_CODES.has(code);
}

export function isTransientStatus(status: number): boolean {
  return status >= 500 || status === 408 || status === 429;
}

/** Retry-After as milliseconds: delta-seconds or an HTTP date. */
export function parseRetryAfter(value: string | string[] | undefined, now = Date.now()): number | undefined {
  const text = Array.isArray(value) ? value[0] : value;
  if (!text) return undefined;
  if (/^\d+$/.test(text.trim())) return Number(text.trim()) * 1000;
  const at = Date.parse(text);
  return Number.isNaN(at) ? undefined : Math.max(0, at - now);
}

/** The delay before retry number `retry` (1 = the first retry): initial × factor^(retry−1), capped, jittered. */
export function backoffDelay(policy: RetryPolicy, retry: number, random: () => number = Math.random, retryAfterMs?: number): number {
  const exponential = Math.min(policy.maxDelayMs, policy.initialDelayMs * policy.factor ** (retry - 1));
  const jittered = exponential * (1 - policy.jitter + policy.jitter * random());
  const delay = retryAfterMs === undefined ? jittered : Math.max(jittered, Math.min(retryAfterMs, policy.maxDelayMs));
  return Math.round(delay);
}

export interface RetryHooks {
  signal?: AbortSignal;
  sleep?: (ms: number, signal?: AbortSignal) => Promise<void>;
  now?: () => number;
  random?: () => number;
  /** Whether the attempt that just failed made progress (resets the count and the clock). */
  madeProgress?: () => boolean;
  /** Told before each wait: for a log line. */
  onRetry?: (info: { error: unknown; attempt: number; delayMs: number }) => void;
}

export class RetriesExhausted extends Error {
  constructor(
    readonly lastError: unknown,
    readonly attempts: number,
    readonly reason: 'attempts' | 'time',
  ) {
    super(`${lastError instanceof Error ? lastError.message : String(lastError)} (gave up after ${attempts} attempts${reason === 'time' ? ', out of time' : ''})`, {
      cause: lastError,
    });
    this.name = 'RetriesExhausted';
  }
}

export function abortableSleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * Runs `body` until it succeeds, a failure is not transient (thrown as it is), or the policy gives up
 * (RetriesExhausted with the last error). An abort is never retried.
 */
export async function withRetry<T>(body: (attempt: number) => Promise<T>, policy: RetryPolicy, hooks: RetryHooks = {}): Promise<T> {
  const sleep = hooks.sleep ?? abortableSleep;
  const now = hooks.now ?? Date.now;
  let failuresInRow = 0;
  // Since when no attempt has made progress: the first try, or the last attempt that delivered something.
  let since = now();
  for (let attempt = 1; ; attempt++) {
    try {
      return await body(attempt);
    } catch (error) {
      if (hooks.signal?.aborted) throw hooks.signal.reason;
      if (!isTransient(error)) throw error;
      if (hooks.madeProgress?.()) {
        failuresInRow = 0;
        since = now();
      }
      failuresInRow++;
      if (failuresInRow >= policy.attempts) throw new RetriesExhausted(error, attempt, 'attempts');
      const delayMs = backoffDelay(policy, failuresInRow, hooks.random, error instanceof TransientError ? error.retryAfterMs : undefined);
      if (now() - since + delayMs > policy.maxElapsedMs) throw new RetriesExhausted(error, attempt, 'time');
      hooks.onRetry?.({ error, attempt, delayMs });
      await sleep(delayMs, hooks.signal);
    }
  }
}
