import { createHash } from 'node:crypto';
import { copyFile, mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { cacheLayout, imagePath, readImageRecord } from '../../src/fetch/cache.js';
import { obtainImage, type DiskImageOptions } from '../../src/fetch/image-source.js';
import { dearmor } from '../../src/fetch/signature.js';
import { verifyImage } from '../../src/pipeline/verify.js';
import { BOX_UIDS } from '../../src/util/box-uid.js';
import { execRunner, type Runner } from '../../src/util/exec.js';
import { createLogger } from '../../src/util/log.js';
import { startImageServer, type ImageServer } from '../helpers/image-server.js';
import { makeSmallQcow2 } from '../helpers/small-image.js';

const sha = (algorithm: 'sha256' | 'sha512', data: Buffer) => createHash(algorithm).update(data).digest('hex');
const quick = { attempts: 3, initialDelayMs: 10, maxDelayMs: 20, factor: 2, jitter: 0, maxElapsedMs: 10000 };

/**
 * Phase 0 as a library call (qemu-img and gpgv for real, no root): every way a sum can be found, signed
 * sums files, local compressed images, unverified images revalidated with the server. The CLI-level
 * scenarios (resume, retries, concurrency, --offline, apply) are in test/integration/fetch.test.ts.
 */
describe('obtainImage', () => {
  let dir: string;
  let server: ImageServer;
  let image: Buffer;
  let lines: string[];
  const log = () => createLogger({ write: (t) => void lines.push(t) });
  let cache: string;
  const options = (extra: DiskImageOptions = {}): DiskImageOptions => ({ cacheDir: cache, retry: quick, progress: false, ...extra });

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'obtain-'));
    image = await readFile(await makeSmallQcow2(dir, 'small.qcow2', 1));
    server = await startImageServer();
  });
  afterAll(async () => {
    await server.close();
    await rm(dir, { recursive: true, force: true });
  });
  beforeEach(async () => {
    lines = [];
    cache = await mkdtemp(join(dir, 'cache-'));
    server.requests.length = 0;
  });

  test.each([
    ['SHA256SUMS, GNU text', 'SHA256SUMS', (d: Buffer) => `${sha('sha256', d)}  image.qcow2\n`],
    ['sha256sum.txt, binary mode', 'sha256sum.txt', (d: Buffer) => `${sha('sha256', d)} *image.qcow2\n`],
    ['SHA512SUMS (Debian)', 'SHA512SUMS', (d: Buffer) => `${sha('sha512', d)}  other.qcow2\n${sha('sha512', d)}  image.qcow2\n`],
    ['CHECKSUM, BSD (Fedora)', 'CHECKSUM', (d: Buffer) => `# image.qcow2: ${d.length} bytes\nSHA256 (image.qcow2) = ${sha('sha256', d)}\n`],
    ['<image>.sha256, a bare hash', 'image.qcow2.sha256', (d: Buffer) => `${sha('sha256', d)}\n`],
    ['<image>.sha512', 'image.qcow2.sha512', (d: Buffer) => `${sha('sha512', d)}  image.qcow2\n`],
  ])('a remote image verified by %s', async (_what, sumsName, sums) => {
    const base = `/${sumsName.replace(/\W/g, '')}`;
    server.serve(`${base}/image.qcow2`, { data: image });
    server.serve(`${base}/${sumsName}`, { data: Buffer.from(sums(image)) });
    const result = await obtainImage(execRunner, `${server.url}${base}/image.qcow2`, log(), undefined, options());
    expect(result).toMatchObject({ source: 'download', verified: true, checksumSource: `${server.url}${base}/${sumsName}`, format: 'qcow2', sha256: sha('sha256', image), name: 'image.qcow2' });
    expect(result.path).toBe(imagePath(cacheLayout(cache), sha('sha256', image)));
    expect(result.published).toEqual(sumsName.includes('512') ? { name: 'image.qcow2', algorithm: 'sha512', hash: sha('sha512', image) } : undefined);
  });

  test("a Fedora-style <release>-CHECKSUM found through the mirror's directory listing", async () => {
    server.serve('/fedora/Fedora-Cloud-Base-41.qcow2', { data: image });
    server.serve('/fedora/Fedora-Cloud-41-x86_64-CHECKSUM', { data: Buffer.from(`SHA256 (Fedora-Cloud-Base-41.qcow2) = ${sha('sha256', image)}\n`) });
    server.serve('/fedora/', {
      data: Buffer.from('<html><a href="Fedora-Cloud-Base-41.qcow2">x</a> <a href="Fedora-Cloud-41-x86_64-CHECKSUM">y</a></html>'),
      contentType: 'text/html',
    });
    const result = await obtainImage(execRunner, `${server.url}/fedora/Fedora-Cloud-Base-41.qcow2`, log(), undefined, options());
    expect(result.checksumSource).toBe(`${server.url}/fedora/Fedora-Cloud-41-x86_64-CHECKSUM`);
  });

  test('sums files that do not name the image are listed in the refusal', async () => {
    server.serve('/unnamed/image.qcow2', { data: image });
    server.serve('/unnamed/SHA256SUMS', { data: Buffer.from(`${sha('sha256', image)}  image.qcow2.xz\n${'0'.repeat(64)}  other.qcow2\n`) });
    const failing = obtainImage(execRunner, `${server.url}/unnamed/image.qcow2`, log(), undefined, options());
    await expect(failing).rejects.toMatchObject({
      code: 'VERIFY_FAILED',
      message: `no checksum found for ${server.url}/unnamed/image.qcow2`,
      detail: expect.stringContaining(`${server.url}/unnamed/SHA256SUMS (lists image.qcow2.xz, other.qcow2)`),
    });
    expect(server.gets('/unnamed/image.qcow2')).toHaveLength(0);
  });

  test('--insecure-skip-verify: used unverified; later uses revalidate with If-None-Match and download nothing', async () => {
    server.serve('/nosums/image.qcow2', { data: image, etag: '"n1"' });
    const url = `${server.url}/nosums/image.qcow2`;
    const first = await obtainImage(execRunner, url, log(), undefined, options({ insecureSkipVerify: true }));
    expect(first).toMatchObject({ verified: false, source: 'download', checksumSource: undefined });
    expect(lines.join('')).toContain('UNVERIFIED');
    const second = await obtainImage(execRunner, url, log(), undefined, options({ insecureSkipVerify: true }));
    expect(second).toMatchObject({ verified: false, source: 'cache', path: first.path });
    expect(server.gets('/nosums/image.qcow2').map((r) => [r.status, r.bytes])).toEqual([
      [200, image.length],
      [304, 0],
    ]);
  });

  describe('signed sums files (--keyring, gpgv)', () => {
    let gnupg: string;
    let keyring: string;
    let armoredKeyring: string;
    let otherKeyring: string;
    const gpg = (args: string[], home = gnupg) => execa('gpg', ['--batch', '--quiet', '--pinentry-mode', 'loopback', '--passphrase', '', ...args], { env: { GNUPGHOME: home } });

    beforeAll(async () => {
      gnupg = await mkdtemp(join(tmpdir(), 'gnupg-'));
      await gpg(['--quick-gen-key', 'Image Signer <signer@example.org>', 'ed25519', 'sign', 'never']);
      keyring = join(dir, 'signer.gpg');
      await writeFile(keyring, (await execa('gpg', ['--batch', '--export'], { env: { GNUPGHOME: gnupg }, encoding: 'buffer', stripFinalNewline: false })).stdout);
      armoredKeyring = join(dir, 'signer.asc');
      await writeFile(armoredKeyring, (await execa('gpg', ['--batch', '--export', '--armor'], { env: { GNUPGHOME: gnupg } })).stdout);
      const other = await mkdtemp(join(tmpdir(), 'gnupg-other-'));
      await gpg(['--quick-gen-key', 'Someone Else <else@example.org>', 'ed25519', 'sign', 'never'], other);
      otherKeyring = join(dir, 'other.gpg');
      await writeFile(otherKeyring, (await execa('gpg', ['--batch', '--export'], { env: { GNUPGHOME: other }, encoding: 'buffer', stripFinalNewline: false })).stdout);
      await execa('gpgconf', ['--kill', 'gpg-agent'], { env: { GNUPGHOME: other }, reject: false });
      await rm(other, { recursive: true, force: true });
    });
    afterAll(async () => {
      await execa('gpgconf', ['--kill', 'gpg-agent'], { env: { GNUPGHOME: gnupg }, reject: false });
      await rm(gnupg, { recursive: true, force: true });
    });

    const sign = async (text: string, mode: '--clearsign' | '--detach-sign') => {
      const input = join(dir, 'to-sign');
      await writeFile(input, text);
      const out = `${input}.out`;
      await rm(out, { force: true });
      await gpg([mode, ...(mode === '--detach-sign' ? [] : []), '-o', out, input]);
      return readFile(out);
    };

    test('a detached SHA256SUMS.gpg verifies with a binary or an armored keyring; another key is refused', async () => {
      const sums = `${sha('sha256', image)}  image.qcow2\n`;
      server.serve('/signed/image.qcow2', { data: image });
      server.serve('/signed/SHA256SUMS', { data: Buffer.from(sums) });
      server.serve('/signed/SHA256SUMS.gpg', { data: await sign(sums, '--detach-sign') });
      const url = `${server.url}/signed/image.qcow2`;
      // gpgv parses what the server sent as a uid of its own (not nobody's) in the unprivileged box, with no network.
      const commands: string[][] = [];
      const recording: Runner = (file, args, runOptions) => (commands.push([file, ...args]), execRunner(file, args, runOptions));
      // Under a strict umask too: the files gpgv reads as its uid are made readable to it whatever the umask.
      const umask = process.umask(0o077);
      const result = await obtainImage(recording, url, log(), undefined, options({ keyring })).finally(() => process.umask(umask));
      const gpgv = commands.find((command) => command.includes('gpgv'))!;
      expect(gpgv[0]).toBe('bwrap');
      expect(gpgv).toEqual(expect.arrayContaining(['--unshare-net', '--bounding-set', '-all']));
      const uid = Number(gpgv[gpgv.indexOf('--reuid') + 1]);
      expect(uid).toBeGreaterThanOrEqual(BOX_UIDS.first);
      expect(uid).toBeLessThan(BOX_UIDS.first + BOX_UIDS.count);
      expect(gpgv.slice(gpgv.indexOf('gpgv'))).toEqual(['gpgv', '--homedir', '/gpgv-out', '--keyring', '/gpgv/keyring.gpg', '--output', '/gpgv-out/verified', '/gpgv/sums.sig', '/gpgv/sums']);
      expect(result).toMatchObject({ verified: true, signature: { keyring, signature: `${server.url}/signed/SHA256SUMS.gpg` } });
      expect(lines.join('')).toContain(`signature of ${server.url}/signed/SHA256SUMS verified`);
      await expect(obtainImage(execRunner, url, log(), undefined, options({ keyring: armoredKeyring }))).resolves.toMatchObject({ source: 'cache' });
      await expect(obtainImage(execRunner, url, log(), undefined, options({ keyring: otherKeyring }))).rejects.toMatchObject({
        code: 'VERIFY_FAILED',
        message: `the signature of ${server.url}/signed/SHA256SUMS does not verify with the keyring ${otherKeyring}`,
      });
    });

    test('a SHA256SUMS altered after signing is refused', async () => {
      const sums = `${sha('sha256', image)}  image.qcow2\n`;
      server.serve('/tampered/image.qcow2', { data: image });
      server.serve('/tampered/SHA256SUMS.sign', { data: await sign(`${'0'.repeat(64)}  image.qcow2\n`, '--detach-sign') });
      server.serve('/tampered/SHA256SUMS', { data: Buffer.from(sums) });
      await expect(obtainImage(execRunner, `${server.url}/tampered/image.qcow2`, log(), undefined, options({ keyring }))).rejects.toMatchObject({
        code: 'VERIFY_FAILED',
        detail: expect.stringContaining('BAD signature'),
      });
    });

    test('a clearsigned CHECKSUM verifies; only its signed part counts; tampered, it is refused', async () => {
      const body = `SHA256 (image.qcow2) = ${sha('sha256', image)}\n`;
      const signed = (await sign(body, '--clearsign')).toString();
      server.serve('/clear/image.qcow2', { data: image });
      server.serve('/clear/CHECKSUM', { data: Buffer.from(signed) });
      const result = await obtainImage(execRunner, `${server.url}/clear/image.qcow2`, log(), undefined, options({ keyring }));
      expect(result).toMatchObject({ verified: true, checksumSource: `${server.url}/clear/CHECKSUM`, signature: { signature: `${server.url}/clear/CHECKSUM` } });

      // An entry added outside the signed part is not even read.
      server.serve('/outside/image.qcow2', { data: image });
      const outside = `SHA256 (image.qcow2) = ${sha('sha256', image)}\n`;
      server.serve('/outside/CHECKSUM', { data: Buffer.from(`${outside}${(await sign('# nothing\n', '--clearsign')).toString()}${outside}`) });
      await expect(obtainImage(execRunner, `${server.url}/outside/image.qcow2`, log(), undefined, options({ keyring }))).rejects.toMatchObject({
        code: 'VERIFY_FAILED',
        message: `no checksum found for ${server.url}/outside/image.qcow2`,
        detail: expect.stringContaining(`${server.url}/outside/CHECKSUM (no entries)`),
      });

      server.serve('/clear-bad/image.qcow2', { data: image });
      server.serve('/clear-bad/CHECKSUM', { data: Buffer.from(signed.replace(sha('sha256', image), '1'.repeat(64))) });
      await expect(obtainImage(execRunner, `${server.url}/clear-bad/image.qcow2`, log(), undefined, options({ keyring }))).rejects.toMatchObject({ code: 'VERIFY_FAILED', detail: expect.stringContaining('BAD signature') });
    });

    test('with --keyring, an unsigned sums file is refused', async () => {
      server.serve('/unsigned/image.qcow2', { data: image });
      server.serve('/unsigned/SHA256SUMS', { data: Buffer.from(`${sha('sha256', image)}  image.qcow2\n`) });
      await expect(obtainImage(execRunner, `${server.url}/unsigned/image.qcow2`, log(), undefined, options({ keyring }))).rejects.toMatchObject({
        code: 'VERIFY_FAILED',
        message: `--keyring: ${server.url}/unsigned/SHA256SUMS is not signed`,
      });
    });

    test('dearmor gives the binary keyring gpg exports', async () => {
      expect(dearmor(await readFile(armoredKeyring, 'utf8'))).toEqual(await readFile(keyring));
    });
  });

  describe('local images', () => {
    test('a local image with SHA512SUMS beside it is checked with sha512 and used in place', async () => {
      const local = await mkdtemp(join(dir, 'local-'));
      const path = join(local, 'disk.qcow2');
      await writeFile(path, image);
      await writeFile(join(local, 'SHA512SUMS'), `${sha('sha512', image)}  disk.qcow2\n`);
      const result = await verifyImage(execRunner, path, log(), undefined, options());
      expect(result).toMatchObject({ path, source: 'local', verified: true, checksumSource: join(local, 'SHA512SUMS'), published: { algorithm: 'sha512' } });
      await writeFile(join(local, 'SHA512SUMS'), `${'e'.repeat(128)}  disk.qcow2\n`);
      await expect(verifyImage(execRunner, path, log(), undefined, options())).rejects.toMatchObject({
        code: 'VERIFY_FAILED',
        detail: `expected sha512 ${'e'.repeat(128)} (from ${join(local, 'SHA512SUMS')})\nactual   sha512 ${sha('sha512', image)}`,
      });
      // --checksum wins over the sums file.
      await expect(verifyImage(execRunner, path, log(), undefined, options({ checksum: `sha256:${sha('sha256', image)}` }))).resolves.toMatchObject({ checksumSource: '--checksum' });
      expect(await readdir(cache)).toEqual([]);
    });

    test('a FIFO or an oversized file named as a sums file beside a local image is refused, neither waited on nor read whole', async () => {
      const local = await mkdtemp(join(dir, 'local-'));
      const path = join(local, 'disk.qcow2');
      await writeFile(path, image);
      await execa('mkfifo', [join(local, 'SHA256SUMS')]);
      await expect(verifyImage(execRunner, path, log(), undefined, options())).rejects.toMatchObject({ code: 'BAD_INPUT', message: `${join(local, 'SHA256SUMS')} is not a regular file (a FIFO, socket or device), so it is not read as a sums file` });
      await rm(join(local, 'SHA256SUMS'));
      await writeFile(join(local, 'SHA256SUMS'), Buffer.alloc(4 * 1024 * 1024 + 1, 0x20));
      await expect(verifyImage(execRunner, path, log(), undefined, options())).rejects.toMatchObject({ code: 'BAD_INPUT', message: expect.stringContaining(`is ${4 * 1024 * 1024 + 1} bytes, more than a sums or signature file's`) });
      // A sum the caller vouches for (a bundle's manifest): nothing beside the image is read, the FIFO neither.
      await rm(join(local, 'SHA256SUMS'));
      await execa('mkfifo', [join(local, 'SHA256SUMS')]);
      const expected = { algorithm: 'sha256' as const, hash: sha('sha256', image), source: 'bundle.json (base/disk.qcow2)' };
      await expect(verifyImage(execRunner, path, log(), undefined, options({ expected }))).resolves.toMatchObject({ verified: true, checksumSource: 'bundle.json (base/disk.qcow2)' });
      await expect(verifyImage(execRunner, path, log(), undefined, options({ expected: { ...expected, hash: 'e'.repeat(64) } }))).rejects.toMatchObject({ code: 'VERIFY_FAILED' });
    });

    test('a local .xz image is verified as it is, unpacked into the cache once, and found there next time', async () => {
      const local = await mkdtemp(join(dir, 'local-xz-'));
      const plain = join(local, 'disk.qcow2');
      await writeFile(plain, image);
      await execa('xz', ['-T1', plain]);
      const packed = await readFile(`${plain}.xz`);
      await writeFile(join(local, 'SHA256SUMS'), `${sha('sha256', packed)}  disk.qcow2.xz\n`);
      const first = await verifyImage(execRunner, `${plain}.xz`, log(), undefined, options());
      expect(first).toMatchObject({
        source: 'cache',
        name: 'disk.qcow2',
        format: 'qcow2',
        sha256: sha('sha256', image),
        verified: true,
        published: { name: 'disk.qcow2.xz', compression: 'xz', algorithm: 'sha256', hash: sha('sha256', packed) },
      });
      expect(lines.join('')).toContain('decompressing disk.qcow2.xz (xz)');
      lines = [];
      const second = await verifyImage(execRunner, `${plain}.xz`, log(), undefined, options());
      expect(second.path).toBe(first.path);
      expect(lines.join('')).not.toContain('decompressing');
      const record = await readImageRecord(cacheLayout(cache), first.sha256);
      expect(record?.published).toMatchObject({ compression: 'xz', size: packed.length, sums: { sha256: sha('sha256', packed) } });
      expect(record?.origin.path).toBe(`${plain}.xz`);
    });

    test('a tar archive is not a disk image', async () => {
      const local = await mkdtemp(join(dir, 'tar-'));
      await mkdir(join(local, 'in'));
      await copyFile(join(dir, 'small.qcow2'), join(local, 'in', 'disk.raw'));
      await execa('tar', ['-czf', join(local, 'image.tar.gz'), '-C', join(local, 'in'), 'disk.raw']);
      await expect(verifyImage(execRunner, join(local, 'image.tar.gz'), log(), undefined, options())).rejects.toMatchObject({
        code: 'BAD_INPUT',
        message: 'image.tar.gz is a tar archive, not a disk image',
      });
    });
  });
});
