import { mkdir, mkdtemp, readdir, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { createWriteStream } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import { writeBundleManifest } from '../../src/bundle/manifest.js';
import { openBundle, packBundle, unpackBundle } from '../../src/bundle/open.js';
import { execa } from 'execa';
import { silentLogger } from '../../src/util/log.js';
import { verifyBundle } from '../../src/bundle/manifest.js';

/** Writes a tar of the given entries with tar-stream (as a crafted archive would be). */
async function craft(path: string, entries: { name: string; type?: 'file' | 'symlink' | 'directory' | 'link'; content?: string; linkname?: string }[]) {
  const pack = tar.pack();
  const written = pipeline(pack, createWriteStream(path));
  for (const entry of entries) {
    await new Promise<void>((resolve, reject) => {
      pack.entry({ name: entry.name, type: entry.type ?? 'file', linkname: entry.linkname, size: entry.content?.length ?? 0 }, entry.content ?? '', (error) => (error ? reject(error) : resolve()));
    });
  }
  pack.finalize();
  await written;
}

describe('bundle archives', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'bundle-archive-'));
  });
  afterEach(() => rm(dir, { recursive: true, force: true }));

  test('a packed bundle unpacks to the same files, and verifies', async () => {
    const source = join(dir, 'source');
    await mkdir(join(source, 'base'), { recursive: true });
    await writeFile(join(source, 'base/disk.qcow2'), 'image bytes');
    await writeFile(join(source, 'base/SHA256SUMS'), 'sums');
    const manifest = await writeBundleManifest(source, { path: 'r.yaml', sha256: 'a'.repeat(64) }, {}, [
      { path: 'base/disk.qcow2', kind: 'base-image', origin: '/images/disk.qcow2' },
      { path: 'base/SHA256SUMS', kind: 'base-sums' },
    ], { base: { path: 'base/disk.qcow2', sha256: 'b'.repeat(64), format: 'qcow2', origin: '/images/disk.qcow2' } });
    const archive = join(dir, 'bundle.tar');
    const sha256 = await packBundle(source, manifest, archive);
    expect(sha256).toMatch(/^[0-9a-f]{64}$/);
    const into = join(dir, 'into');
    await mkdir(into);
    await unpackBundle(archive, into);
    expect(await readFile(join(into, 'base/disk.qcow2'), 'utf8')).toBe('image bytes');
    await expect(verifyBundle(into)).resolves.toMatchObject({ manifest: { base: { path: 'base/disk.qcow2' } } });
  });

  test.each([
    ['a name that climbs out', [{ name: '../escaped', content: 'x' }], /leaves the bundle/],
    ['an absolute name', [{ name: '/tmp/escaped', content: 'x' }], /leaves the bundle/],
    ['a symlink', [{ name: 'base', type: 'symlink' as const, linkname: '/etc' }], /is a symlink/],
    ['a hard link', [{ name: 'x', content: 'x' }, { name: 'y', type: 'link' as const, linkname: 'x' }], /is a link/],
    ['the same name twice', [{ name: 'a', content: 'x' }, { name: 'a', content: 'y' }], /twice/],
  ])('an archive with %s is refused (exit 3) and nothing is made outside', async (_what, entries, message) => {
    const archive = join(dir, 'crafted.tar');
    await craft(archive, entries);
    const into = join(dir, 'into');
    await mkdir(into);
    await expect(unpackBundle(archive, into)).rejects.toMatchObject({ code: 'VERIFY_FAILED', message: expect.stringMatching(message) });
    expect((await readdir(dir)).sort()).toEqual(['crafted.tar', 'into']);
    await expect(stat('/tmp/escaped')).rejects.toThrow();
  });

  test('a pax header that claims gigabytes (tar-stream would buffer it whole) is refused at its header, not read', async () => {
    // One ustar header of type x (pax) whose size field says 8 GiB, followed by 64 MiB of it.
    const header = Buffer.alloc(512);
    header.write('PaxHeaders/bundle.json', 0);
    for (const [at, field] of [[100, '0000644\0'], [108, '0000000\0'], [116, '0000000\0'], [124, '77777777777\0'], [136, '00000000000\0'], [257, 'ustar\0'], [263, '00']] as const) header.write(field, at);
    header.write('x', 156);
    header.write(' '.repeat(8), 148);
    header.write(`${header.reduce((sum, byte) => sum + byte, 0).toString(8).padStart(6, '0')}\0 `, 148);
    const archive = join(dir, 'pax-bomb.tar');
    await writeFile(archive, Buffer.concat([header, Buffer.alloc(64 << 20, 0x41)]));
    const into = join(dir, 'into');
    await mkdir(into);
    await expect(unpackBundle(archive, into)).rejects.toMatchObject({ code: 'VERIFY_FAILED', message: `${archive} is not a bundle archive: Header exceeds max size` });
    expect(await readdir(into)).toEqual([]);
  });

  test('a directory bundle reached through a symlinked directory is refused', async () => {
    const source = join(dir, 'b');
    await mkdir(join(dir, 'elsewhere'), { recursive: true });
    await writeFile(join(dir, 'elsewhere/SHA256SUMS'), 'sums');
    await mkdir(source);
    await symlink(join(dir, 'elsewhere'), join(source, 'base'));
    await writeFile(join(dir, 'elsewhere/disk.qcow2'), 'image');
    await writeBundleManifest(source, { path: 'r.yaml', sha256: 'a'.repeat(64) }, {}, [
      { path: 'base/disk.qcow2', kind: 'base-image' },
      { path: 'base/SHA256SUMS', kind: 'base-sums' },
    ], { base: { path: 'base/disk.qcow2', sha256: 'b'.repeat(64), format: 'qcow2', origin: 'x' } });
    await expect(verifyBundle(source)).rejects.toMatchObject({ code: 'VERIFY_FAILED', detail: expect.stringContaining('base is not a directory') });
  });

  test("a directory bundle's file swapped after verification for a FIFO or a link is refused where it is used, not waited on or followed", async () => {
    const source = join(dir, 'b');
    await mkdir(join(source, 'base'), { recursive: true });
    await mkdir(join(source, 'downloads'));
    await writeFile(join(source, 'base/disk.qcow2'), 'image bytes');
    await writeFile(join(source, 'downloads/a'), 'downloaded');
    await writeFile(join(source, 'downloads/b'), 'downloaded');
    await writeBundleManifest(source, { path: 'r.yaml', sha256: 'a'.repeat(64) }, {}, [
      { path: 'base/disk.qcow2', kind: 'base-image' },
      { path: 'downloads/a', kind: 'download', origin: 'https://example.org/a' },
      { path: 'downloads/b', kind: 'download', origin: 'https://example.org/b' },
    ], { base: { path: 'base/disk.qcow2', sha256: 'b'.repeat(64), format: 'qcow2', origin: 'x' } });
    const work = join(dir, 'work');
    await mkdir(work);
    const bundle = await openBundle(source, work, silentLogger());
    await expect(bundle.downloads.bytes('https://example.org/a', {})).resolves.toEqual(Buffer.from('downloaded'));
    await rm(join(source, 'downloads/a'));
    await execa('mkfifo', [join(source, 'downloads/a')]);
    await expect(bundle.downloads.bytes('https://example.org/a', {})).rejects.toMatchObject({ code: 'VERIFY_FAILED', message: 'bundle file downloads/a changed after the bundle was verified' });
    // A link to a host file of the same size is not followed.
    await writeFile(join(dir, 'host-file'), 'host bytes');
    await rm(join(source, 'downloads/b'));
    await symlink(join(dir, 'host-file'), join(source, 'downloads/b'));
    await expect(bundle.downloads.toFile('https://example.org/b', join(work, 'b'), {})).rejects.toMatchObject({ code: 'VERIFY_FAILED' });
    await expect(stat(join(work, 'b'))).rejects.toThrow();
    // A directory on the way swapped for a link (to /dev, say; here to a directory holding the very same bytes)
    // is not stepped into: the file is opened one name at a time from the bundle, none followed.
    await mkdir(join(dir, 'elsewhere'));
    await writeFile(join(dir, 'elsewhere/a'), 'downloaded');
    await rm(join(source, 'downloads'), { recursive: true });
    await symlink(join(dir, 'elsewhere'), join(source, 'downloads'));
    await expect(bundle.downloads.bytes('https://example.org/a', {})).rejects.toMatchObject({ code: 'VERIFY_FAILED', message: 'bundle file downloads/a changed after the bundle was verified' });
  });

  test('verifying a directory bundle: a FIFO or a link at bundle.json is refused, not waited on or followed', async () => {
    const source = join(dir, 'b');
    await mkdir(join(source, 'base'), { recursive: true });
    await writeFile(join(source, 'base/disk.qcow2'), 'image bytes');
    await writeBundleManifest(source, { path: 'r.yaml', sha256: 'a'.repeat(64) }, {}, [{ path: 'base/disk.qcow2', kind: 'base-image' }], {
      base: { path: 'base/disk.qcow2', sha256: 'b'.repeat(64), format: 'qcow2', origin: 'x' },
    });
    await expect(verifyBundle(source)).resolves.toMatchObject({ manifest: { base: { path: 'base/disk.qcow2' } } });
    const manifest = await readFile(join(source, 'bundle.json'));
    await rm(join(source, 'bundle.json'));
    await execa('mkfifo', [join(source, 'bundle.json')]);
    await expect(verifyBundle(source)).rejects.toMatchObject({ code: 'VERIFY_FAILED', message: expect.stringContaining('bundle.json cannot be read') });
    await rm(join(source, 'bundle.json'));
    await symlink(join(dir, 'elsewhere-manifest.json'), join(source, 'bundle.json'));
    await writeFile(join(dir, 'elsewhere-manifest.json'), manifest);
    await expect(verifyBundle(source)).rejects.toMatchObject({ code: 'VERIFY_FAILED', message: expect.stringContaining('bundle.json cannot be read') });
  });
});
