import {
  backoffDelay,
  DEFAULT_RETRY_POLICY,
  isTransient,
  parseRetryAfter,
  RetriesExhausted,
  TransientError,
  withRetry,
  type RetryPolicy,
} from '../../src/fetch/retry.js';
import { ImageBuilderError } from '../../src/util/errors.js';

const policy: RetryPolicy = { attempts: 5, initialDelayMs: 1000, maxDelayMs: 5000, factor: 2, jitter: 0, maxElapsedMs: 60000 };

/** A fake clock: sleep() advances it and records the delays, nothing waits. */
function fakeTime() {
  let t = 0;
  const delays: number[] = [];
  return {
    delays,
    now: () => t,
    sleep: async (ms: number) => {
      delays.push(ms);
      t += ms;
    },
    advance: (ms: number) => (t += ms),
  };
}

describe('backoff', () => {
  test('exponential from the initial delay, capped at the longest', () => {
    expect([1, 2, 3, 4, 5].map((n) => backoffDelay(policy, n))).toEqual([1000, 2000, 4000, 5000, 5000]);
  });

  test('jitter takes up to its fraction off each delay', () => {
    const jittery = { ...policy, jitter: 0.5 };
    expect(backoffDelay(jittery, 2, () => 0)).toBe(1000);
    expect(backoffDelay(jittery, 2, () => 1)).toBe(2000);
    expect(backoffDelay(DEFAULT_RETRY_POLICY, 1, () => 0.5)).toBe(900);
  });

  test("the server's Retry-After is honoured, up to the longest delay", () => {
    expect(backoffDelay(policy, 1, () => 0, 3000)).toBe(3000);
    expect(backoffDelay(policy, 1, () => 0, 600000)).toBe(5000);
    expect(parseRetryAfter('7')).toBe(7000);
    expect(parseRetryAfter('Wed, 21 Oct 2015 07:28:10 GMT', Date.parse('Wed, 21 Oct 2015 07:28:00 GMT'))).toBe(10000);
    expect(parseRetryAfter(undefined)).toBeUndefined();
  });

  test('transient: 5xx-style errors and dropped connections; not: a 404, a TLS failure', () => {
    expect(isTransient(new TransientError('HTTP 503'))).toBe(true);
    expect(isTransient(Object.assign(new Error('other side closed'), { code: 'UND_ERR_SOCKET' }))).toBe(true);
    expect(isTransient(Object.assign(new Error('x'), { cause: { code: 'ECONNREFUSED' } }))).toBe(true);
    expect(isTransient(new ImageBuilderError('BAD_INPUT', 'HTTP 404'))).toBe(false);
    expect(isTransient(Object.assign(new Error('self-signed'), { code: 'DEPTH_ZERO_SELF_SIGNED_CERT' }))).toBe(false);
  });
});

describe('withRetry', () => {
  test('retries transient failures with growing delays until one succeeds', async () => {
    const time = fakeTime();
    let calls = 0;
    const result = await withRetry(
      async (attempt) => {
        calls++;
        if (attempt < 4) throw new TransientError(`HTTP 500 (${attempt})`);
        return 'ok';
      },
      policy,
      { sleep: time.sleep, now: time.now },
    );
    expect(result).toBe('ok');
    expect(calls).toBe(4);
    expect(time.delays).toEqual([1000, 2000, 4000]);
  });

  test('gives up after the policy’s number of attempts, with the last error', async () => {
    const time = fakeTime();
    let calls = 0;
    const failing = withRetry(
      async () => {
        calls++;
        throw new TransientError('HTTP 502');
      },
      policy,
      { sleep: time.sleep, now: time.now },
    );
    await expect(failing).rejects.toBeInstanceOf(RetriesExhausted);
    await expect(failing).rejects.toMatchObject({ attempts: 5, reason: 'attempts', message: expect.stringContaining('HTTP 502') });
    expect(calls).toBe(5);
    expect(time.delays).toEqual([1000, 2000, 4000, 5000]);
  });

  test('gives up when the time spent failing would pass the limit', async () => {
    const time = fakeTime();
    let calls = 0;
    const failing = withRetry(
      async () => {
        calls++;
        time.advance(3000); // each attempt takes 3 s to fail (a timeout)
        throw new TransientError('timeout');
      },
      { ...policy, attempts: 100, maxElapsedMs: 15000 },
      { sleep: time.sleep, now: time.now },
    );
    await expect(failing).rejects.toMatchObject({ reason: 'time' });
    // 3 s + 1 s, 3 s + 2 s, 3 s + 4 s (13 s) ... the next 3 s + 5 s would pass 15 s.
    expect(time.delays).toEqual([1000, 2000]);
    expect(calls).toBe(3);
  });

  test('an attempt that made progress starts the count and the delays afresh', async () => {
    const time = fakeTime();
    let calls = 0;
    let progress = false;
    await withRetry(
      async () => {
        calls++;
        progress = calls % 2 === 0; // every second attempt delivers bytes before dropping
        if (calls < 12) throw new TransientError('dropped');
        return 'done';
      },
      { ...policy, attempts: 3 },
      { sleep: time.sleep, now: time.now, madeProgress: () => progress },
    );
    expect(calls).toBe(12);
    expect(time.delays).toEqual([1000, 1000, 2000, 1000, 2000, 1000, 2000, 1000, 2000, 1000, 2000]);
  });

  test('a permanent failure is thrown at once', async () => {
    const time = fakeTime();
    const notFound = new ImageBuilderError('BAD_INPUT', 'HTTP 404');
    await expect(withRetry(async () => Promise.reject(notFound), policy, { sleep: time.sleep, now: time.now })).rejects.toBe(notFound);
    expect(time.delays).toEqual([]);
  });

  test('an abort is never retried and stops a wait', async () => {
    const controller = new AbortController();
    const reason = new ImageBuilderError('INTERRUPTED', 'interrupted by SIGINT');
    const running = withRetry(
      async () => {
        throw new TransientError('HTTP 503');
      },
      { ...policy, initialDelayMs: 60000, maxDelayMs: 60000, maxElapsedMs: 3600000 },
      { signal: controller.signal },
    );
    setTimeout(() => controller.abort(reason), 20);
    await expect(running).rejects.toBe(reason);
  });
});
