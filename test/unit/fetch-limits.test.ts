import { createHash } from 'node:crypto';
import { mkdtemp, readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  DEFAULT_TIMEOUTS,
  downloadFile,
  fetchBytes,
  fetchOptional,
  isDiscardableFetchFailure,
  MAX_KEY_BYTES,
  MAX_SUMS_BYTES,
} from '../../src/fetch/http.js';
import type { RetryPolicy } from '../../src/fetch/retry.js';
import { downloadStep } from '../../src/steps/download.js';
import { repositoryStep } from '../../src/steps/repository.js';
import { fakeSession, fakeStepContext } from '../helpers/fake-session.js';
import { startHostileServer, type HostileServer } from '../helpers/hostile-server.js';

const quick: RetryPolicy = { attempts: 3, initialDelayMs: 10, maxDelayMs: 50, factor: 2, jitter: 0, maxElapsedMs: 30000 };
const MiB = 1024 * 1024;
/** What may be in flight past a cap when the client stops reading: socket buffers on both sides, one body high-water mark. */
const IN_FLIGHT = 16 * MiB;

/** Hostile servers on 127.0.0.1 against the fetch functions themselves: caps, deadline, minimum rate, announced size. */
describe('limits of what a server can make a fetch take', () => {
  let server: HostileServer;
  let dir: string;
  beforeAll(async () => {
    server = await startHostileServer();
    dir = await mkdtemp(join(tmpdir(), 'fetch-limits-'));
  });
  afterAll(async () => {
    await server.close();
    await rm(dir, { recursive: true, force: true });
  });

  test('a sums file without end is refused at the cap while it streams, naming the URL, the cap and what came', async () => {
    server.serve('/endless/SHA256SUMS', { kind: 'endless' });
    const url = `${server.url}/endless/SHA256SUMS`;
    const failure = await fetchOptional(url, { retry: quick }).catch((error) => error);
    expect(failure).toMatchObject({ code: 'VERIFY_FAILED', message: expect.stringMatching(new RegExp(`^${url} is too large for a sums file: refused after \\d+ bytes, over the cap of 4 MiB$`)) });
    expect(Number(/after (\d+) bytes/.exec(failure.message)![1])).toBeGreaterThan(MAX_SUMS_BYTES);
    // Refused once, not retried: one cap's worth and what was in flight, nothing like a whole endless body.
    expect(server.sent('/endless/SHA256SUMS')).toBeLessThan(MAX_SUMS_BYTES + IN_FLIGHT);
 }, 60000);

  test('a sums file that announces 100 MB is refused before a byte of it is read', async () => {
    server.serve('/announced/SHA256SUMS', { kind: 'endless', announce: 100 * MiB });
    const url = `${server.url}/announced/SHA256SUMS`;
    await expect(fetchOptional(url, { retry: quick })).rejects.toMatchObject({
      code: 'VERIFY_FAILED',
      message: `${url} is too large for a sums file: it announces ${100 * MiB} bytes, over the cap of 4 MiB`,
    });
    expect(server.sent('/announced/SHA256SUMS')).toBeLessThan(IN_FLIGHT);
  });

  test('an endless repository key is capped at 1 MiB (COMMAND_FAILED, which the step reports as its failure)', async () => {
    server.serve('/endless/Release.key', { kind: 'endless' });
    const url = `${server.url}/endless/Release.key`;
    await expect(fetchBytes(url, { retry: quick, cap: { bytes: MAX_KEY_BYTES, what: 'repository key' } })).rejects.toMatchObject({
      code: 'COMMAND_FAILED',
      message: expect.stringMatching(/is too large for a repository key: refused after \d+ bytes, over the cap of 1 MiB$/),
      hint: expect.stringContaining('check the URL'),
    });
    expect(server.sent('/endless/Release.key')).toBeLessThan(MAX_KEY_BYTES + IN_FLIGHT);
 }, 60000);

  test('a small file within its cap still arrives whole', async () => {
    server.serve('/ok/SHA256SUMS', { kind: 'file', data: Buffer.from('a'.repeat(64) + '  x.qcow2\n') });
    expect((await fetchOptional(`${server.url}/ok/SHA256SUMS`, { retry: quick }))?.toString()).toBe('a'.repeat(64) + '  x.qcow2\n');
  });

  test('a body that trickles (never a stall) fails at the deadline, naming the URL and what came in how long', async () => {
    server.serve('/trickle/key', { kind: 'trickle', data: Buffer.alloc(1000, 'k'), pauseMs: 200 });
    const url = `${server.url}/trickle/key`;
    const failure = await fetchBytes(url, { retry: quick, timeouts: { ...DEFAULT_TIMEOUTS, deadlineMs: 1500 } }).catch((error) => error);
    expect(failure).toMatchObject({
      code: 'COMMAND_FAILED',
      message: expect.stringMatching(new RegExp(`^cannot fetch ${url}: it did not finish within the deadline of 1\\.5s; received \\d+ bytes in \\d+\\.\\ds$`)),
      hint: expect.stringContaining('--fetch-deadline'),
    });
    const received = Number(/received (\d+) bytes/.exec(failure.message)![1]);
    expect(received).toBeGreaterThan(0);
    expect(received).toBeLessThan(1000);
  });

  test('a body under the minimum rate over a window fails, even with no deadline', async () => {
    server.serve('/slow/SHA256SUMS', { kind: 'trickle', data: Buffer.alloc(1000, 's'), pauseMs: 100 });
    const url = `${server.url}/slow/SHA256SUMS`;
    await expect(
      fetchOptional(url, { retry: quick, timeouts: { ...DEFAULT_TIMEOUTS, deadlineMs: 0, minBytesPerSecond: 100, rateWindowMs: 400 } }),
    ).rejects.toMatchObject({
      code: 'COMMAND_FAILED',
      message: expect.stringMatching(new RegExp(`^cannot fetch ${url}: it arrives too slowly: \\d+ bytes in the last 0\\.4s, under the minimum of 100 bytes/s; received \\d+ bytes in`)),
      hint: expect.stringContaining('--fetch-min-rate'),
    });
  });

  test('a resumed download whose body goes past the announced total is refused at the first byte beyond it', async () => {
    const data = Buffer.alloc(256 * 1024, 'd');
    server.serve('/overlong/image.qcow2', { kind: 'overlong', data });
    const partial = join(dir, 'overlong.partial');
    const failure = await downloadFile(`${server.url}/overlong/image.qcow2`, partial, { retry: quick }).catch((error) => error);
    expect(failure).toMatchObject({
      code: 'COMMAND_FAILED',
      message: expect.stringMatching(new RegExp(`the server sent more than the ${data.length} bytes it announced \\(refused at \\d+\\)$`)),
    });
    expect(isDiscardableFetchFailure(failure)).toBe(true);
    // Not one byte past the announced size was written.
    expect((await stat(partial)).size).toBeLessThanOrEqual(data.length);
    expect(server.sent('/overlong/image.qcow2')).toBeLessThan(data.length + IN_FLIGHT);
 }, 60000);
});

/** The recipe steps that fetch on the build host pass the caps and limits on, and fail before the guest is touched. */
describe('steps against a hostile server', () => {
  let server: HostileServer;
  let work: string;
  beforeAll(async () => {
    [server, work] = await Promise.all([startHostileServer(), mkdtemp(join(tmpdir(), 'fetch-limits-steps-'))]);
  });
  afterAll(async () => {
    await server.close();
    await rm(work, { recursive: true, force: true });
  });

  test('repository: an endless key_url fails the step at 1 MiB; nothing is written to the guest', async () => {
    server.serve('/repo/Release.key', { kind: 'endless' });
    const { session, calls } = fakeSession();
    const { context } = fakeStepContext(session);
    await expect(repositoryStep.run(context, { name: 'k', url: 'http://127.0.0.1:1/deb/', key_url: `${server.url}/repo/Release.key`, fingerprint: 'A'.repeat(40) })).rejects.toMatchObject({
      code: 'STEP_FAILED',
      message: expect.stringMatching(/^step 1\/1 \(test\): cannot fetch the key of repository k: .*\/repo\/Release\.key is too large for a repository key: refused after \d+ bytes, over the cap of 1 MiB$/),
    });
    expect(calls).toEqual([]);
    expect(server.sent('/repo/Release.key')).toBeLessThan(MAX_KEY_BYTES + IN_FLIGHT);
  }, 60000);

  test('download: an endless checksum_url fails the step at 4 MiB, before the file is fetched', async () => {
    server.serve('/dl/SHA256SUMS', { kind: 'endless' });
    server.serve('/dl/thing.bin', { kind: 'file', data: Buffer.from('thing') });
    const { session, calls } = fakeSession();
    const { context } = fakeStepContext(session);
    await expect(downloadStep.run(context, { url: `${server.url}/dl/thing.bin`, checksum_url: `${server.url}/dl/SHA256SUMS`, dest: '/x' })).rejects.toMatchObject({
      code: 'STEP_FAILED',
      message: expect.stringMatching(/\/dl\/SHA256SUMS is too large for a checksum file: refused after \d+ bytes, over the cap of 4 MiB$/),
    });
    expect(calls).toEqual([]);
    expect(server.sent('/dl/thing.bin')).toBe(0);
  }, 60000);

  test("download: a file that trickles fails at the build's deadline (--fetch-deadline reaches the step); nothing written, no temp left", async () => {
    const data = Buffer.alloc(100, 't');
    server.serve('/dl/slow.bin', { kind: 'trickle', data, pauseMs: 100 });
    const { session, calls } = fakeSession();
    // The download step's private temp dirs go in the build's work directory: checked empty after.
    const { context } = fakeStepContext(session, { fetchTimeouts: { ...DEFAULT_TIMEOUTS, deadlineMs: 1000 }, workDir: work });
    const sha256 = createHash('sha256').update(data).digest('hex');
    await expect(downloadStep.run(context, { url: `${server.url}/dl/slow.bin`, sha256, dest: '/x' })).rejects.toMatchObject({
      code: 'STEP_FAILED',
      message: expect.stringMatching(/^step 1\/1 \(test\): cannot fetch .*\/dl\/slow\.bin: it did not finish within the deadline of 1\.0s; received \d+ bytes in 1\.\ds$/),
    });
    expect(calls).toEqual([]);
    expect(await readdir(work)).toEqual([]);
  }, 60000);
});
