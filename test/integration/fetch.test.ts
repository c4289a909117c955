import { createHash } from 'node:crypto';
import { chmod, mkdir, mkdtemp, open, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { fixtureImage } from '../helpers/fixtures.js';
import { CLI, expectNothingLeft, hostState, runCli, sha256 } from '../helpers/host.js';
import { startImageServer, type ImageServer } from '../helpers/image-server.js';
import { writeRecipe } from '../helpers/recipes.js';
import { makeSmallQcow2 } from '../helpers/small-image.js';

const digest = (algorithm: 'sha256' | 'sha512', data: Buffer) => createHash(algorithm).update(data).digest('hex');

/**
 * Phase 0 through the real CLI against an HTTP server on 127.0.0.1: `imagebuilder fetch`, `cache list|prune`,
 * and `apply --disk-image http://…`. Each test serves its image under its own path, so the server's request
 * log says exactly what each run downloaded.
 */
describe('base images from URLs (imagebuilder fetch, cache, apply)', () => {
  let work: string;
  let cache: string;
  let server: ImageServer;
  let image: Buffer;
  let imageSha256: string;
  const env = () => ({ IMAGEBUILDER_CACHE: cache });
  const fetchCli = (args: string[]) => runCli(['fetch', ...args], { env: env() });
  const cachedImages = async () => (await readdir(join(cache, 'images', 'sha256')).catch(() => [] as string[])).filter((n) => /^[0-9a-f]{64}$/.test(n));
  /** Serves the small image and a SHA256SUMS naming it under `dir`; returns its URL. */
  const serveImage = (dir: string, sums = `${imageSha256}  small.qcow2\n`) => {
    server.serve(`/${dir}/small.qcow2`, { data: image });
    server.serve(`/${dir}/SHA256SUMS`, { data: Buffer.from(sums) });
    return `${server.url}/${dir}/small.qcow2`;
  };

  beforeAll(async () => {
    work = await mkdtemp('/var/tmp/ib-fetch-');
    image = await readFile(await makeSmallQcow2(work, 'small.qcow2', 4));
    imageSha256 = digest('sha256', image);
    server = await startImageServer();
  });
  afterAll(async () => {
    await server.close();
    await rm(work, { recursive: true, force: true });
  });
  beforeEach(async () => {
    cache = await mkdtemp(join(work, 'cache-'));
  });
  afterEach(() => rm(cache, { recursive: true, force: true }));

  test('fetch downloads, verifies against SHA256SUMS, caches by sha256 and prints path and sum; again, it downloads nothing', async () => {
    const url = serveImage('plain');
    const result = await fetchCli([url]);
    expect(result.stderr).toContain(`verified small.qcow2 (sha256) against ${server.url}/plain/SHA256SUMS`);
    expect(result.stderr).toMatch(/downloading small\.qcow2 \(4\.\d MiB\)/);
    expect(result.stderr).toMatch(/downloaded small\.qcow2: 4\.\d MiB in/);
    expect(result.exitCode).toBe(0);
    const path = join(cache, 'images', 'sha256', imageSha256);
    expect(result.stdout).toBe(`${path}\nsha256 ${imageSha256}`);
    expect(await sha256(path)).toBe(imageSha256);
    const record = JSON.parse(await readFile(`${path}.json`, 'utf8'));
    expect(record).toMatchObject({
      sha256: imageSha256,
      size: image.length,
      format: 'qcow2',
      published: { name: 'small.qcow2', size: image.length, sums: { sha256: imageSha256 } },
      origin: { url, checksumSource: `${server.url}/plain/SHA256SUMS`, sumsText: `${imageSha256}  small.qcow2\n`, verified: true },
    });
    expect(Date.parse(record.origin.fetchedAt)).toBeGreaterThan(Date.now() - 60000);

    const again = await fetchCli([url, '--json']);
    expect(again.exitCode).toBe(0);
    expect(JSON.parse(again.stdout)).toMatchObject({ path, sha256: imageSha256, source: 'cache', url, verified: true });
    // The sums file is fetched (and checked) every time; the image once.
    expect(server.gets('/plain/small.qcow2')).toHaveLength(1);
    expect(server.gets('/plain/SHA256SUMS')).toHaveLength(2);
  });

  test('a wrong sum is refused, naming both sums and the sums file; nothing is cached', async () => {
    const wrong = 'f'.repeat(64);
    const url = serveImage('wrong', `${wrong}  small.qcow2\n`);
    const result = await fetchCli([url]);
    expect(result.exitCode).toBe(3);
    expect(result.stderr).toContain(`error [VERIFY_FAILED]: checksum mismatch for ${url}`);
    expect(result.stderr).toContain(`expected sha256 ${wrong} (from ${server.url}/wrong/SHA256SUMS)`);
    expect(result.stderr).toContain(`actual   sha256 ${imageSha256}`);
    expect(await cachedImages()).toEqual([]);
    expect(await readdir(join(cache, 'tmp'))).toEqual([]);
    expect(await readdir(join(cache, 'locks'))).toEqual([]);
  });

  test('a connection dropped half way is resumed with Range, and the whole file verified', async () => {
    const url = serveImage('drop');
    server.dropAfter('/drop/small.qcow2', Math.floor(image.length / 2));
    const result = await fetchCli([url]);
    expect(result.exitCode).toBe(0);
    expect(result.stderr).toContain('retrying in');
    expect(result.stderr).toContain('small.qcow2: resumed 1 time with a Range request');
    const gets = server.gets('/drop/small.qcow2');
    expect(gets.map((r) => r.status)).toEqual([200, 206]);
    expect(gets[0].bytes).toBe(Math.floor(image.length / 2));
    // It continues where the partial ended: at most where the server stopped (bytes in flight are fetched again).
    const resumedAt = Number(/^bytes=(\d+)-$/.exec(gets[1].range ?? '')?.[1]);
    expect(resumedAt).toBeGreaterThan(0);
    expect(resumedAt).toBeLessThanOrEqual(gets[0].bytes);
    expect(resumedAt + gets[1].bytes).toBe(image.length);
    expect(gets[1].ifRange).toMatch(/^"[0-9a-f]+"$/);
    expect(await sha256(join(cache, 'images', 'sha256', imageSha256))).toBe(imageSha256);
  });

  test('500 then 200: retried with backoff', async () => {
    const url = serveImage('flaky');
    server.failNext('/flaky/small.qcow2', 500, 1);
    const result = await fetchCli([url]);
    expect(result.exitCode).toBe(0);
    expect(result.stderr).toMatch(/fetching .*\/flaky\/small\.qcow2 failed \(attempt 1: HTTP 500 from .*\); retrying in \d\.\ds/);
    expect(server.gets('/flaky/small.qcow2').map((r) => r.status)).toEqual([500, 200]);
  });

  test('404: a clear error, exit 2', async () => {
    serveImage('gone');
    server.remove('/gone/small.qcow2');
    const url = `${server.url}/gone/small.qcow2`;
    const result = await fetchCli([url]);
    expect(result.exitCode).toBe(2);
    expect(result.stderr).toContain(`error [BAD_INPUT]: ${url} does not exist (HTTP 404)`);
    expect(result.stderr).toContain('hint: check the URL');
    expect(server.gets('/gone/small.qcow2')).toHaveLength(1);
  });

  test('no sums file: refused (exit 3) unless --insecure-skip-verify, which the record keeps', async () => {
    server.serve('/nosums/small.qcow2', { data: image });
    const url = `${server.url}/nosums/small.qcow2`;
    const refused = await fetchCli([url]);
    expect(refused.exitCode).toBe(3);
    expect(refused.stderr).toContain(`error [VERIFY_FAILED]: no checksum found for ${url}`);
    expect(refused.stderr).toContain('--insecure-skip-verify');
    expect(server.gets('/nosums/small.qcow2')).toHaveLength(0);
    const taken = await fetchCli([url, '--insecure-skip-verify', '--json']);
    expect(taken.exitCode).toBe(0);
    expect(JSON.parse(taken.stdout)).toMatchObject({ verified: false, sha256: imageSha256 });
    // --checksum instead of a sums file.
    const explicit = await fetchCli([url, '--checksum', `sha256:${imageSha256}`, '--json']);
    expect(JSON.parse(explicit.stdout)).toMatchObject({ verified: true, checksumSource: '--checksum', source: 'cache' });
  });

  test('two fetches of one URL at once download it once', async () => {
    const url = serveImage('concurrent');
    server.throttle('/concurrent/small.qcow2', 25); // about 2 s for the whole image
    const [one, two] = await Promise.all([fetchCli([url]), fetchCli([url])]);
    expect([one.exitCode, two.exitCode]).toEqual([0, 0]);
    expect(one.stdout).toBe(two.stdout);
    expect(`${one.stderr}${two.stderr}`).toMatch(/waiting for process \d+, which is fetching .*\/concurrent\/small\.qcow2/);
    expect(server.gets('/concurrent/small.qcow2').filter((r) => r.status === 200)).toHaveLength(1);
    expect(server.gets('/concurrent/small.qcow2')).toHaveLength(1);
    expect(await readdir(join(cache, 'locks'))).toEqual([]);
  });

  test('a cached image whose file was altered is detected, removed and fetched again', async () => {
    const url = serveImage('corrupt');
    expect((await fetchCli([url])).exitCode).toBe(0);
    const path = join(cache, 'images', 'sha256', imageSha256);
    await chmod(path, 0o644);
    const file = await open(path, 'r+');
    await file.write(Buffer.from('bitrot'), 0, 6, 1 << 20);
    await file.close();
    const result = await fetchCli([url]);
    expect(result.exitCode).toBe(0);
    expect(result.stderr).toMatch(new RegExp(`the cached image ${path} is corrupted \\(its sha256 is now [0-9a-f]{64}\\): removing it and fetching it again`));
    expect(server.gets('/corrupt/small.qcow2')).toHaveLength(2);
    expect(await sha256(path)).toBe(imageSha256);
  });

  test('a local image is hashed once per version of its file: unchanged, its sums are remembered; changed in place, it is hashed again', async () => {
    const dir = join(work, 'local-memo');
    await mkdir(dir);
    const path = join(dir, 'small.qcow2');
    await writeFile(path, image);
    await writeFile(join(dir, 'SHA256SUMS'), `${imageSha256}  small.qcow2\n`);
    await sleep(2100); // a file changed in the last 2 s is not remembered
    const remembered = '(its sums as hashed before: the file is unchanged since)';
    const verified = `verified ${path} (qcow2) against ${join(dir, 'SHA256SUMS')}`;

    const first = await fetchCli([path]);
    expect(first.exitCode).toBe(0);
    expect(first.stderr).toContain(verified);
    expect(first.stderr).not.toContain(remembered);
    const second = await fetchCli([path, '--json']);
    expect(second.exitCode).toBe(0);
    expect(second.stderr).toContain(`${verified} ${remembered}`);
    expect(JSON.parse(second.stdout)).toMatchObject({ path, sha256: imageSha256, verified: true, source: 'local' });
    // --rehash, and apply's --no-cache, read the file again.
    const rehashed = await fetchCli([path, '--rehash']);
    expect(rehashed.exitCode).toBe(0);
    expect(rehashed.stderr).toContain(verified);
    expect(rehashed.stderr).not.toContain(remembered);
    const recipe = await writeRecipe(work, 'phase-0-only', []);
    const noCache = await runCli(['apply', recipe, '--disk-image', path, '--phases', '0', '--no-cache'], { env: env() });
    expect(noCache.exitCode).toBe(0);
    expect(noCache.stderr).not.toContain(remembered);
    const cached = await runCli(['apply', recipe, '--disk-image', path, '--phases', '0'], { env: { ...env(), IMAGEBUILDER_NO_CACHE: '' } });
    expect(cached.exitCode).toBe(0);
    expect(cached.stderr).toContain(`${verified} ${remembered}`);

    // Bytes changed in place, same size, mtime set back to the nanosecond: ctime moved, so the file is hashed
    // and the mismatch found.
    const before = await stat(path, { bigint: true });
    await execa('touch', ['-r', path, `${path}.times`]);
    const file = await open(path, 'r+');
    await file.write(Buffer.from('tampered'), 0, 8, 1 << 20);
    await file.close();
    await execa('touch', ['-r', `${path}.times`, path]);
    expect((await stat(path, { bigint: true })).mtimeNs).toBe(before.mtimeNs);
    const tampered = await fetchCli([path]);
    expect(tampered.exitCode).toBe(3);
    expect(tampered.stderr).toContain(`checksum mismatch for ${path}`);
    expect(tampered.stderr).not.toContain(remembered);
  });

  test('--offline uses the cache alone; without an entry it says how to fill it (exit 2)', async () => {
    const url = serveImage('offline');
    const missing = await fetchCli([url, '--offline']);
    expect(missing.exitCode).toBe(2);
    expect(missing.stderr).toContain(`error [BAD_INPUT]: --offline: ${url} is not in the cache (${cache})`);
    expect(missing.stderr).toContain(`hint: fetch it once while online: imagebuilder fetch ${url}`);
    expect(server.requests.filter((r) => r.path.startsWith('/offline/'))).toHaveLength(0);

    expect((await fetchCli([url])).exitCode).toBe(0);
    const before = server.requests.length;
    const offline = await fetchCli([url, '--offline', '--json']);
    expect(offline.exitCode).toBe(0);
    expect(JSON.parse(offline.stdout)).toMatchObject({ path: join(cache, 'images', 'sha256', imageSha256), source: 'cache', verified: true, checksumSource: `${server.url}/offline/SHA256SUMS` });
    expect(server.requests.length).toBe(before);
    const wrongSum = await fetchCli([url, '--offline', '--checksum', `sha256:${'0'.repeat(64)}`]);
    expect(wrongSum.exitCode).toBe(3);
  });

  test('an .xz image is verified as published, decompressed into the cache, and both sums recorded', async () => {
    const dir = await mkdtemp(join(work, 'xz-'));
    const plain = join(dir, 'al2023-kvm.qcow2');
    await writeFile(plain, image);
    await execa('xz', ['-T1', '-3', plain]);
    const packed = await readFile(`${plain}.xz`);
    server.serve('/al2023/al2023-kvm.qcow2.xz', { data: packed });
    server.serve('/al2023/SHA256SUMS', { data: Buffer.from(`${imageSha256}  al2023-kvm.qcow2\n${digest('sha256', packed)}  al2023-kvm.qcow2.xz\n`) });
    const url = `${server.url}/al2023/al2023-kvm.qcow2.xz`;
    const result = await fetchCli([url, '--json']);
    expect(result.stderr).toContain('decompressing al2023-kvm.qcow2.xz (xz)');
    expect(result.exitCode).toBe(0);
    expect(JSON.parse(result.stdout)).toMatchObject({
      sha256: imageSha256,
      name: 'al2023-kvm.qcow2',
      format: 'qcow2',
      published: { name: 'al2023-kvm.qcow2.xz', compression: 'xz', algorithm: 'sha256', hash: digest('sha256', packed) },
    });
    const record = JSON.parse(await readFile(join(cache, 'images', 'sha256', `${imageSha256}.json`), 'utf8'));
    expect(record).toMatchObject({ sha256: imageSha256, size: image.length, published: { compression: 'xz', size: packed.length, sums: { sha256: digest('sha256', packed) } } });
    expect(await readdir(join(cache, 'tmp'))).toEqual([]);

    const list = await runCli(['cache', 'list'], { env: env() });
    expect(list.stdout).toMatch(new RegExp(`^SHA256 +SIZE +ON DISK +FORMAT +LAST USED \\(UTC\\) +VERIFIED +SOURCE\n${imageSha256.slice(0, 12)} +4\\.\\d MiB +\\S+ \\S+ +qcow2 +[\\d-]+ [\\d:]+ +yes +${url.replace(/[.]/g, '\\.')}\n1 image\\(s\\)`));
    const json = JSON.parse((await runCli(['cache', 'list', '--json'], { env: env() })).stdout);
    expect(json.layers).toEqual([]);
    expect(json.images).toEqual([expect.objectContaining({ sha256: imageSha256, size: image.length, record: expect.objectContaining({ format: 'qcow2' }) })]);
    const prune = await runCli(['cache', 'prune', '--all'], { env: env() });
    expect(prune.stdout).toContain('removed 1 image(s)');
    expect(await cachedImages()).toEqual([]);
  });

  test('SIGINT during a download leaves nothing in the store, only a resumable partial; the next fetch resumes it', async () => {
    const url = serveImage('interrupt');
    server.throttle('/interrupt/small.qcow2', 100);
    const child = execa('node', [CLI, 'fetch', url], { env: env(), reject: false, all: true });
    let seen = '';
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`download never started:\n${seen}`)), 60000);
      child.all!.on('data', (chunk: Buffer) => {
        seen += chunk.toString();
        if (seen.includes('downloading small.qcow2')) {
          clearTimeout(timer);
          setTimeout(resolve, 1000);
        }
      });
    });
    child.kill('SIGINT');
    const result = await child;
    expect(result.exitCode).toBe(130);
    expect(String(result.all)).toContain('error [INTERRUPTED]');
    expect(await cachedImages()).toEqual([]);
    expect(await readdir(join(cache, 'locks'))).toEqual([]);
    const tmp = await readdir(join(cache, 'tmp'));
    expect(tmp.sort()).toEqual([expect.stringMatching(/^[0-9a-f]{64}\.partial$/), expect.stringMatching(/^[0-9a-f]{64}\.partial\.json$/)]);
    const kept = (await stat(join(cache, 'tmp', tmp.find((n) => n.endsWith('.partial'))!))).size;
    expect(kept).toBeGreaterThan(0);
    expect(kept).toBeLessThan(image.length);

    server.throttle('/interrupt/small.qcow2', 0);
    const resumed = await fetchCli([url]);
    expect(resumed.exitCode).toBe(0);
    expect(resumed.stderr).toMatch(/resuming small\.qcow2 \(4\.\d MiB\) at/);
    expect(server.gets('/interrupt/small.qcow2').at(-1)).toMatchObject({ status: 206, range: `bytes=${kept}-` });
    expect(await sha256(join(cache, 'images', 'sha256', imageSha256))).toBe(imageSha256);
    expect(await readdir(join(cache, 'tmp'))).toEqual([]);
  });

  describe('apply --disk-image http://…', () => {
    let base: string;
    let baseSha512: string;
    let recipe: string;
    const imagePath = '/debian/debian-12-genericcloud-amd64.qcow2';
    beforeAll(async () => {
      base = await fixtureImage('whole-disk');
      const data = await readFile(base);
      baseSha512 = digest('sha512', data);
      server.serve(imagePath, { path: base });
      server.serve('/debian/SHA512SUMS', { data: Buffer.from(`${'0'.repeat(128)}  debian-12-genericcloud-arm64.qcow2\n${baseSha512}  debian-12-genericcloud-amd64.qcow2\n`) });
      recipe = await writeRecipe(work, 'from-url', [{ file: { path: '/etc/from-url', content: 'fetched\n' } }]);
    });

    test('downloads once, verifies against SHA512SUMS, reuses the cache on the second run, and records it in the BOM', async () => {
      const url = `${server.url}${imagePath}`;
      const before = await hostState();
      const first = await runCli(['apply', recipe, '--disk-image', url, '--output', join(work, 'first.qcow2'), '--sparsify', 'none', '--json'], { env: env() });
      expect(first.exitCode).toBe(0);
      expect(first.stderr).toContain(`verified debian-12-genericcloud-amd64.qcow2 (sha512) against ${server.url}/debian/SHA512SUMS`);
      const baseSha256 = await sha256(base);
      const cached = join(cache, 'images', 'sha256', baseSha256);
      const bom = JSON.parse(await readFile(join(work, 'first.qcow2.bom.json'), 'utf8'));
      expect(bom.input).toEqual({
        url,
        path: cached,
        format: 'qcow2',
        sha256: baseSha256,
        published: { name: 'debian-12-genericcloud-amd64.qcow2', algorithm: 'sha512', hash: baseSha512 },
        checksumSource: `${server.url}/debian/SHA512SUMS`,
        verified: true,
      });
      expect(server.gets(imagePath)).toHaveLength(1);

      const second = await runCli(['apply', recipe, '--disk-image', url, '--output', join(work, 'second.qcow2'), '--sparsify', 'none'], { env: env() });
      expect(second.exitCode).toBe(0);
      expect(second.stderr).toContain(`using the cached debian-12-genericcloud-amd64.qcow2 (${cached}, sha256 ${baseSha256}), verified against ${server.url}/debian/SHA512SUMS`);
      expect(server.gets(imagePath)).toHaveLength(1);
      expect(server.gets('/debian/SHA512SUMS')).toHaveLength(2);
      expect(JSON.parse(await readFile(join(work, 'second.qcow2.bom.json'), 'utf8')).input).toMatchObject({ url, path: cached, verified: true });
      // The cached base is never written by a build.
      expect(await sha256(cached)).toBe(baseSha256);
      await expectNothingLeft(before);
    });

    test('an image whose sum does not match is refused before anything is mounted, naming both sums', async () => {
      server.serve('/debian-bad/debian-12-genericcloud-amd64.qcow2', { path: base });
      server.serve('/debian-bad/SHA512SUMS', { data: Buffer.from(`${'e'.repeat(128)}  debian-12-genericcloud-amd64.qcow2\n`) });
      const url = `${server.url}/debian-bad/debian-12-genericcloud-amd64.qcow2`;
      const result = await runCli(['apply', recipe, '--disk-image', url, '--output', join(work, 'bad.qcow2'), '--sparsify', 'none'], { env: env() });
      expect(result.exitCode).toBe(3);
      expect(result.stderr).toContain(`error [VERIFY_FAILED]: checksum mismatch for ${url}`);
      expect(result.stderr).toContain(`expected sha512 ${'e'.repeat(128)} (from ${server.url}/debian-bad/SHA512SUMS)`);
      expect(result.stderr).toContain(`actual   sha512 ${baseSha512}`);
      expect(result.stderr).not.toContain('mount backend');
      expect(await stat(join(work, 'bad.qcow2')).catch(() => undefined)).toBeUndefined();
      expect(await cachedImages()).toEqual([]);
    });
  });
});
