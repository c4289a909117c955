import { createHash } from 'node:crypto';
import { chmod, lstat, mkdir, mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { CLI, runCli } from '../helpers/host.js';
import { expectCanaryUntouched, snapshotHost } from '../helpers/hostile.js';
import { startHostileServer, type HostileServer } from '../helpers/hostile-server.js';
import { makeSmallQcow2 } from '../helpers/small-image.js';

const MiB = 1024 * 1024;
/** What may be in flight past a cap when the client stops reading: socket buffers on both sides, one body high-water mark. */
const IN_FLIGHT = 16 * MiB;
const sha256 = (data: Buffer | string) => createHash('sha256').update(data).digest('hex');
const asNobody = (...command: string[]) => execa('setpriv', ['--reuid', '65534', '--regid', '65534', '--clear-groups', ...command]);

/**
 * `imagebuilder fetch` (the real CLI) against a server on 127.0.0.1 that attacks it: a sums file or signature
 * without end, an image or sums file that trickles, a resume that goes past its announced size; and against
 * cache locks that a crashed fetch left or another user planted.
 */
describe('a hostile server or cache cannot make fetch hang, fill the disk, or write elsewhere', () => {
  let work: string;
  let cache: string;
  let server: HostileServer;
  let image: Buffer;
  const fetchCli = (args: string[], env: Record<string, string> = {}) => runCli(['fetch', ...args], { env: { IMAGEBUILDER_CACHE: cache, ...env } });
  const tmpLeft = async () => readdir(join(cache, 'tmp')).catch(() => [] as string[]);
  const cachedImages = async () => (await readdir(join(cache, 'images', 'sha256')).catch(() => [] as string[])).filter((n) => /^[0-9a-f]{64}$/.test(n));

  beforeAll(async () => {
    [work, server] = await Promise.all([mkdtemp('/var/tmp/ib-hostile-fetch-'), startHostileServer()]);
    image = await readFile(await makeSmallQcow2(work, 'small.qcow2', 4));
  });
  afterAll(() => Promise.all([server.close(), rm(work, { recursive: true, force: true })]));
  // A cache of its own per test: what one attack leaves cannot help or hinder the next.
  beforeEach(async () => void (cache = await mkdtemp(join(work, 'cache-'))));
  afterEach(() => rm(cache, { recursive: true, force: true }));

  test('a 100 MB sums file is refused at 4 MiB, long before it is all read (VERIFY_FAILED, naming the URL and cap)', async () => {
    server.serve('/big-sums/small.qcow2', { kind: 'file', data: image });
    server.serve('/big-sums/SHA256SUMS', { kind: 'endless', limit: 100 * MiB });
    const result = await fetchCli([`${server.url}/big-sums/small.qcow2`]);
    expect(result.stderr).toMatch(new RegExp(`error \\[VERIFY_FAILED\\]: ${server.url}/big-sums/SHA256SUMS is too large for a sums file: refused after \\d+ bytes, over the cap of 4 MiB`));
    expect(result.exitCode).toBe(3);
    expect(server.sent('/big-sums/SHA256SUMS')).toBeLessThan(4 * MiB + IN_FLIGHT);
    expect(server.sent('/big-sums/small.qcow2')).toBe(0);
    expect(await cachedImages()).toEqual([]);
  }, 120000);

  test('a signature without end is refused at 1 MiB before gpgv sees it', async () => {
    server.serve('/big-sig/small.qcow2', { kind: 'file', data: image });
    server.serve('/big-sig/SHA256SUMS', { kind: 'file', data: Buffer.from(`${sha256(image)}  small.qcow2\n`) });
    server.serve('/big-sig/SHA256SUMS.gpg', { kind: 'endless' });
    const result = await fetchCli([`${server.url}/big-sig/small.qcow2`, '--keyring', join(work, 'no-keyring-needed.gpg')]);
    expect(result.stderr).toMatch(new RegExp(`error \\[VERIFY_FAILED\\]: ${server.url}/big-sig/SHA256SUMS.gpg is too large for a signature: refused after \\d+ bytes, over the cap of 1 MiB`));
    expect(result.exitCode).toBe(3);
    expect(server.sent('/big-sig/SHA256SUMS.gpg')).toBeLessThan(1 * MiB + IN_FLIGHT);
  }, 120000);

  test('an image that trickles (a byte every 500 ms, never a stall) fails at IMAGEBUILDER_FETCH_DEADLINE and leaves nothing in tmp', async () => {
    server.serve('/trickle/small.qcow2', { kind: 'trickle', data: image, pauseMs: 500 });
    const url = `${server.url}/trickle/small.qcow2`;
    const result = await fetchCli([url, '--checksum', `sha256:${sha256(image)}`], { IMAGEBUILDER_FETCH_DEADLINE: '3s' });
    expect(result.stderr).toMatch(new RegExp(`error \\[COMMAND_FAILED\\]: cannot fetch ${url}: it did not finish within the deadline of 3\\.0s; received \\d+ bytes in 3\\.\\ds`));
    expect(result.stderr).toContain('raise --fetch-deadline (IMAGEBUILDER_FETCH_DEADLINE)');
    expect(result.exitCode).toBe(6);
    expect(await tmpLeft()).toEqual([]);
    expect(await cachedImages()).toEqual([]);
  }, 120000);

  test('a sums file that trickles fails at --fetch-deadline', async () => {
    server.serve('/trickle-sums/small.qcow2', { kind: 'file', data: image });
    server.serve('/trickle-sums/SHA256SUMS', { kind: 'trickle', data: Buffer.from(`${sha256(image)}  small.qcow2\n`), pauseMs: 500 });
    const result = await fetchCli([`${server.url}/trickle-sums/small.qcow2`, '--fetch-deadline', '2s']);
    expect(result.stderr).toMatch(new RegExp(`error \\[COMMAND_FAILED\\]: cannot fetch ${server.url}/trickle-sums/SHA256SUMS: it did not finish within the deadline of 2\\.0s`));
    expect(result.exitCode).toBe(6);
    expect(server.sent('/trickle-sums/small.qcow2')).toBe(0);
  }, 120000);

  test('a resume whose body goes past the size announced is refused; nothing of it is kept', async () => {
    server.serve('/overlong/small.qcow2', { kind: 'overlong', data: image });
    const url = `${server.url}/overlong/small.qcow2`;
    const result = await fetchCli([url, '--checksum', `sha256:${sha256(image)}`]);
    expect(result.stderr).toMatch(new RegExp(`error \\[COMMAND_FAILED\\]: cannot fetch ${url}: the server sent more than the ${image.length} bytes it announced`));
    expect(result.exitCode).toBe(6);
    expect(server.sent('/overlong/small.qcow2')).toBeLessThan(image.length + IN_FLIGHT);
    expect(await tmpLeft()).toEqual([]);
    expect(await cachedImages()).toEqual([]);
  }, 120000);

  test('a fetch killed with SIGKILL while it holds the cache lock does not hold it: the next fetch goes ahead at once', async () => {
    server.serve('/killed/small.qcow2', { kind: 'trickle', data: image, pauseMs: 100 });
    const url = `${server.url}/killed/small.qcow2`;
    const checksum = `sha256:${sha256(image)}`;
    const first = execa('node', [CLI, 'fetch', url, '--checksum', checksum], { env: { IMAGEBUILDER_CACHE: cache }, reject: false });
    const lock = join(cache, 'locks', `${sha256(url)}.lock`);
    while (!(await lstat(lock).catch(() => undefined))) await new Promise((resolve) => setTimeout(resolve, 50));
    first.kill('SIGKILL');
    await first;
    // The dead fetch's lock file is still there, naming it; only the kernel knows it is free.
    expect(JSON.parse(await readFile(lock, 'utf8'))).toMatchObject({ pid: first.pid, what: url });
    server.serve('/killed/small.qcow2', { kind: 'file', data: image });
    // Well inside this test's timeout, which is shorter than the 60 s lease a waiter would otherwise sit out.
    const second = await fetchCli([url, '--checksum', checksum]);
    expect(second.stderr).toContain('its process is gone');
    expect(second.exitCode).toBe(0);
    expect(await cachedImages()).toEqual([sha256(image)]);
  }, 45000);

  test('a cache shared the way /tmp is (1777), where another user planted locks/ as a symlink, is refused; nothing is written through it', async () => {
    const host = await snapshotHost();
    // Anyone may create entries there, only in their own name: the images, layers and tmp/ in it could be theirs.
    await chmod(cache, 0o1777);
    await chmod(work, 0o755);
    await asNobody('ln', '-s', host.canaryDir, join(cache, 'locks'));
    server.serve('/planted-dir/small.qcow2', { kind: 'file', data: image });
    const result = await fetchCli([`${server.url}/planted-dir/small.qcow2`, '--checksum', `sha256:${sha256(image)}`]);
    expect(result.stderr).toContain(`error [ENVIRONMENT]: refusing to use the cache directory ${cache}: ${cache} may be written by its group or others (mode 1777)`);
    expect(result.exitCode).toBe(5);
    // Made ours alone, the symlink another user left at locks/ is still refused.
    await chmod(cache, 0o755);
    const again = await fetchCli([`${server.url}/planted-dir/small.qcow2`, '--checksum', `sha256:${sha256(image)}`]);
    expect(again.stderr).toContain(`error [ENVIRONMENT]: refusing to use the cache directory ${cache}: ${join(cache, 'locks')} belongs to uid 65534, not to this user (uid 0)`);
    expect(again.exitCode).toBe(5);
    expect(server.sent('/planted-dir/small.qcow2')).toBe(0);
    await expectCanaryUntouched(host);
  }, 120000);

  test('a cache whose locks/ was left open to all is refused; once closed, the symlink another user planted as the lock file is removed unfollowed and the fetch works', async () => {
    const host = await snapshotHost();
    const url = `${server.url}/planted-lock/small.qcow2`;
    server.serve('/planted-lock/small.qcow2', { kind: 'file', data: image });
    await chmod(work, 0o755);
    await chmod(cache, 0o755);
    await mkdir(join(cache, 'locks'));
    await chmod(join(cache, 'locks'), 0o777);
    await asNobody('ln', '-s', host.canaryFile, join(cache, 'locks', `${sha256(url)}.lock`));
    // Refused while locks/ is open to all (never chmod-ed for the user: the cache may be shared on purpose)…
    const refused = await fetchCli([url, '--checksum', `sha256:${sha256(image)}`]);
    expect(refused.stderr).toContain(`refusing to use the cache directory ${cache}: ${join(cache, 'locks')} may be written by its group or others (mode 777)`);
    expect(refused.exitCode).toBe(5);
    expect(server.sent('/planted-lock/small.qcow2')).toBe(0);
    // …and once the user has closed it as the hint says, what the other user planted in it is removed unfollowed.
    await chmod(join(cache, 'locks'), 0o700);
    const result = await fetchCli([url, '--checksum', `sha256:${sha256(image)}`]);
    expect(result.stderr).toContain('is a symbolic link, not a lock file of imagebuilder: removing it (never following it)');
    expect(result.exitCode).toBe(0);
    expect(await cachedImages()).toEqual([sha256(image)]);
    await expectCanaryUntouched(host);
  }, 120000);
});
