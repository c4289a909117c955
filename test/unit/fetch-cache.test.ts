import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, stat, truncate, utimes, writeFile } from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import {
  acquireLock,
  cacheLayout,
  ensureCacheLayout,
  findByPublishedSum,
  imagePath,
  listCache,
  lockPath,
  parseDuration,
  parseSize,
  pruneCache,
  readImageRecord,
  readUrlRecord,
  removeImage,
  storeImage,
  writeUrlRecord,
  type CacheLayout,
  type ImageRecord,
} from '../../src/fetch/cache.js';
import { sha256File } from '../../src/util/digest.js';
import { decompressFile, detectCompression, SparseHashingWriter, stripCompressionSuffix } from '../../src/fetch/decompress.js';
import { createLogger } from '../../src/util/log.js';
import { kernelIdentity } from '../../src/util/lock.js';
import { pipeline } from 'node:stream/promises';
import { Readable } from 'node:stream';

const DAY = 86400000;
/** Jest's toEqual walks a Buffer byte by byte: compare digests instead. */
const sha = (data: Buffer) => createHash('sha256').update(data).digest('hex');

async function addImage(layout: CacheLayout, content: Buffer, options: { url?: string; lastUsedAt?: string; sha512?: string } = {}): Promise<ImageRecord> {
  const sha256 = createHash('sha256').update(content).digest('hex');
  const file = join(layout.tmp, `new-${sha256}`);
  await writeFile(file, content);
  const record: ImageRecord = {
    version: 1,
    sha256,
    size: content.length,
    format: 'raw',
    virtualSize: content.length,
    published: { name: 'image.raw', size: content.length, sums: { sha256, ...(options.sha512 ? { sha512: options.sha512 } : {}) } },
    origin: { url: options.url, checksumSource: 'SHA256SUMS', verified: true, fetchedAt: '2024-01-01T00:00:00.000Z' },
    lastUsedAt: options.lastUsedAt ?? new Date().toISOString(),
  };
  await storeImage(layout, file, record);
  if (options.url) await writeUrlRecord(layout, { url: options.url, sha256, fetchedAt: record.origin.fetchedAt });
  return record;
}

describe('cache records', () => {
  let layout: CacheLayout;
  beforeEach(async () => {
    layout = cacheLayout(await mkdtemp(join(tmpdir(), 'cache-')));
    await ensureCacheLayout(layout);
  });
  afterEach(() => rm(layout.root, { recursive: true, force: true }));

  test('an image is stored read-only under its sha256, with its record and its URL pointer', async () => {
    const record = await addImage(layout, Buffer.from('disk bytes'), { url: 'http://h/image.raw', sha512: 'f'.repeat(128) });
    const path = imagePath(layout, record.sha256);
    expect(path).toBe(join(layout.root, 'images', 'sha256', record.sha256));
    expect(await sha256File(path)).toBe(record.sha256);
    expect((await stat(path)).mode & 0o777).toBe(0o444);
    expect(await readImageRecord(layout, record.sha256)).toEqual(record);
    expect(await readUrlRecord(layout, 'http://h/image.raw')).toEqual({ url: 'http://h/image.raw', sha256: record.sha256, fetchedAt: record.origin.fetchedAt });
    expect(await readUrlRecord(layout, 'http://h/other.raw')).toBeUndefined();
    expect((await findByPublishedSum(layout, 'sha512', 'f'.repeat(128))).map((r) => r.sha256)).toEqual([record.sha256]);
    expect(await findByPublishedSum(layout, 'sha512', 'e'.repeat(128))).toEqual([]);
  });

  test('a record that does not belong to its file name, or is not JSON, is ignored', async () => {
    const record = await addImage(layout, Buffer.from('a'));
    await writeFile(join(layout.images, `${record.sha256}.json`), JSON.stringify({ ...record, sha256: '0'.repeat(64) }));
    expect(await readImageRecord(layout, record.sha256)).toBeUndefined();
    await writeFile(join(layout.images, `${record.sha256}.json`), '{ truncated');
    expect(await readImageRecord(layout, record.sha256)).toBeUndefined();
    expect((await listCache(layout)).map((e) => [e.sha256, e.record])).toEqual([[record.sha256, undefined]]);
  });

  test('removing an image removes its record and every URL that pointed at it', async () => {
    const one = await addImage(layout, Buffer.from('one'), { url: 'http://h/one.raw' });
    await writeUrlRecord(layout, { url: 'http://mirror/one.raw', sha256: one.sha256, fetchedAt: 'x' });
    const two = await addImage(layout, Buffer.from('two'), { url: 'http://h/two.raw' });
    await removeImage(layout, one.sha256);
    expect(await readdir(layout.images)).toEqual([two.sha256, `${two.sha256}.json`].sort());
    expect(await readUrlRecord(layout, 'http://h/one.raw')).toBeUndefined();
    expect(await readUrlRecord(layout, 'http://mirror/one.raw')).toBeUndefined();
    expect(await readUrlRecord(layout, 'http://h/two.raw')).toBeDefined();
  });

  test('prune --older-than removes images unused for that long, and old interrupted downloads', async () => {
    const now = Date.parse('2024-06-01T00:00:00Z');
    const old = await addImage(layout, Buffer.from('old'), { lastUsedAt: new Date(now - 40 * DAY).toISOString() });
    const recent = await addImage(layout, Buffer.from('recent'), { lastUsedAt: new Date(now - 2 * DAY).toISOString() });
    const stale = join(layout.tmp, `${'a'.repeat(64)}.partial`);
    await writeFile(stale, 'x');
    await utimes(stale, (now - 40 * DAY) / 1000, (now - 40 * DAY) / 1000);
    const fresh = join(layout.tmp, `${'b'.repeat(64)}.partial`);
    await writeFile(fresh, 'x');
    await utimes(fresh, (now - DAY) / 1000, (now - DAY) / 1000);

    const dry = await pruneCache(layout, { olderThanMs: 30 * DAY, now, dryRun: true });
    expect(dry.removed.map((e) => e.sha256)).toEqual([old.sha256]);
    expect((await listCache(layout)).length).toBe(2);

    const result = await pruneCache(layout, { olderThanMs: 30 * DAY, now });
    expect(result.removed.map((e) => e.sha256)).toEqual([old.sha256]);
    expect((await listCache(layout)).map((e) => e.sha256)).toEqual([recent.sha256]);
    expect(await readdir(layout.tmp)).toEqual([`${'b'.repeat(64)}.partial`]);
  });

  test('prune --max-size removes the least recently used until the rest fits', async () => {
    const block = 64 * 1024;
    const a = await addImage(layout, randomBytes(block), { lastUsedAt: '2024-01-03T00:00:00Z' });
    const b = await addImage(layout, randomBytes(block), { lastUsedAt: '2024-01-01T00:00:00Z' });
    const c = await addImage(layout, randomBytes(block), { lastUsedAt: '2024-01-02T00:00:00Z' });
    const each = (await listCache(layout))[0].diskBytes;
    const result = await pruneCache(layout, { maxSizeBytes: 2 * each });
    expect(result.removed.map((e) => e.sha256)).toEqual([b.sha256]);
    expect((await listCache(layout)).map((e) => e.sha256)).toEqual([a.sha256, c.sha256]);
    expect((await pruneCache(layout, { maxSizeBytes: each - 1 })).removed.map((e) => e.sha256)).toEqual([c.sha256, a.sha256]);
  });

  test('prune --all empties the store but never a download in progress; with no option it refuses', async () => {
    await addImage(layout, Buffer.from('x'), { url: 'http://h/x.raw' });
    const busyKey = 'c'.repeat(64);
    await writeFile(join(layout.tmp, `${busyKey}.partial`), 'downloading');
    const release = await acquireLock(lockPath(layout, busyKey), 'http://h/busy');
    await writeFile(join(layout.tmp, `${'d'.repeat(64)}.partial`), 'abandoned');
    try {
      await pruneCache(layout, { all: true });
    } finally {
      await release();
    }
    expect(await listCache(layout)).toEqual([]);
    expect(await readdir(layout.urls)).toEqual([]);
    expect(await readdir(layout.tmp)).toEqual([`${busyKey}.partial`]);
    await expect(pruneCache(layout, {})).rejects.toMatchObject({ code: 'BAD_INPUT' });
  });

  test('durations and sizes', () => {
    expect(parseDuration('30d')).toBe(30 * DAY);
    expect(parseDuration('12h')).toBe(12 * 3600000);
    expect(parseDuration('2w')).toBe(14 * DAY);
    expect(parseSize('20G')).toBe(20 * 1024 ** 3);
    expect(parseSize('500MiB')).toBe(500 * 1024 ** 2);
    expect(parseSize('1.5T')).toBe(1.5 * 1024 ** 4);
    expect(parseSize('4096')).toBe(4096);
    expect(() => parseDuration('30 days')).toThrow(expect.objectContaining({ code: 'BAD_INPUT' }));
    expect(() => parseSize('lots')).toThrow(expect.objectContaining({ code: 'BAD_INPUT' }));
  });
});

describe('locks', () => {
  let dir: string;
  beforeEach(async () => (dir = await mkdtemp(join(tmpdir(), 'locks-'))));
  afterEach(() => rm(dir, { recursive: true, force: true }));

  test('a second taker waits until the first releases, and says for whom it waits', async () => {
    const path = join(dir, 'x.lock');
    const lines: string[] = [];
    const release = await acquireLock(path, 'http://h/image.qcow2');
    expect(JSON.parse(await readFile(path, 'utf8'))).toMatchObject({ pid: process.pid, host: hostname(), what: 'http://h/image.qcow2' });
    let second = false;
    const waiting = acquireLock(path, 'http://h/image.qcow2', { pollMs: 10, log: createLogger({ write: (t) => void lines.push(t) }) }).then((r) => {
      second = true;
      return r;
    });
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(second).toBe(false);
    expect(lines.join('')).toContain(`waiting for process ${process.pid}, which is fetching http://h/image.qcow2`);
    await release();
    const releaseSecond = await waiting;
    expect(second).toBe(true);
    await releaseSecond();
    await expect(stat(path)).rejects.toMatchObject({ code: 'ENOENT' });
  });

  test('a lock whose process is gone is broken', async () => {
    const path = join(dir, 'x.lock');
    const dead = await execa('sh', ['-c', 'echo $$']);
    // Its record names this kernel (boot id) and nobody holds its flock: the kernel says its holder is gone.
    await writeFile(path, JSON.stringify({ pid: Number(dead.stdout), host: hostname(), boot: kernelIdentity().boot, since: '', what: 'x' }));
    const lines: string[] = [];
    const release = await acquireLock(path, 'y', { pollMs: 10, log: createLogger({ write: (t) => void lines.push(t) }) });
    expect(lines.join('')).toContain('removing the stale lock');
    expect(JSON.parse(await readFile(path, 'utf8')).pid).toBe(process.pid);
    await release();
  });

  test("a live holder's lock, or another host's, is waited for until the signal aborts", async () => {
    const path = join(dir, 'x.lock');
    await writeFile(path, JSON.stringify({ pid: 1, host: hostname(), since: '', what: 'x' }));
    const controller = new AbortController();
    setTimeout(() => controller.abort(new Error('stop')), 100);
    await expect(acquireLock(path, 'y', { pollMs: 10, signal: controller.signal })).rejects.toThrow('stop');
    await writeFile(path, JSON.stringify({ pid: 999999999, host: 'elsewhere', since: '', what: 'x' }));
    const again = new AbortController();
    setTimeout(() => again.abort(new Error('stop')), 100);
    await expect(acquireLock(path, 'y', { pollMs: 10, signal: again.signal })).rejects.toThrow('stop');
  });

  test('an empty lock file (a crash between create and write) is stale after a while', async () => {
    const path = join(dir, 'x.lock');
    await writeFile(path, '');
    const release = await acquireLock(path, 'y', { pollMs: 10, staleEmptyMs: 50 });
    await release();
  });
});

describe('decompression', () => {
  let dir: string;
  beforeAll(async () => (dir = await mkdtemp(join(tmpdir(), 'unpack-'))));
  afterAll(() => rm(dir, { recursive: true, force: true }));

  test('compression is known by its magic bytes; the suffix is stripped for the name', () => {
    expect(detectCompression(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00, 1]))).toBe('xz');
    expect(detectCompression(Buffer.from([0x1f, 0x8b, 8]))).toBe('gzip');
    expect(detectCompression(Buffer.from([0x28, 0xb5, 0x2f, 0xfd]))).toBe('zstd');
    expect(detectCompression(Buffer.from('QFI\xfb', 'latin1'))).toBeUndefined();
    expect(stripCompressionSuffix('al2023.qcow2.xz')).toBe('al2023.qcow2');
    expect(stripCompressionSuffix('image.raw.zst')).toBe('image.raw');
    expect(stripCompressionSuffix('image.qcow2')).toBe('image.qcow2');
  });

  test('the sparse writer skips zero blocks on disk, hashes every byte, and keeps the length', async () => {
    const content = Buffer.concat([randomBytes(1000), Buffer.alloc(8 << 20), randomBytes(70000), Buffer.alloc(100000)]);
    const path = join(dir, 'sparse');
    const writer = new SparseHashingWriter(path);
    await pipeline(Readable.from([content.subarray(0, 12345), content.subarray(12345)]), writer);
    expect(writer.size).toBe(content.length);
    expect(writer.digest()).toBe(sha(content));
    expect(sha(await readFile(path))).toBe(sha(content));
    expect((await stat(path)).blocks * 512).toBeLessThan(1 << 20);
  });

  test.each([
    ['xz', ['xz', '-c', '-T1']],
    ['gzip', ['gzip', '-c']],
    ['zstd', ['zstd', '-q', '-c']],
  ] as const)('%s round trip', async (compression, [command, ...args]) => {
    const content = Buffer.concat([randomBytes(300000), Buffer.alloc(1 << 20)]);
    const plain = join(dir, `plain-${compression}`);
    await writeFile(plain, content);
    const packed = join(dir, `packed-${compression}`);
    await execa(command, [...args, plain], { stdout: { file: packed } });
    const out = join(dir, `out-${compression}`);
    const result = await decompressFile(packed, out, compression);
    expect(result).toEqual({ sha256: sha(content), size: content.length });
    expect(sha(await readFile(out))).toBe(sha(content));
  });

  test.each([
    ['xz', ['xz', '-c', '-T1']],
    ['gzip', ['gzip', '-c']],
  ] as const)('a %s bomb: stopped at the size bound, and at the free space a decompression leaves, each said (not the tool\'s broken pipe)', async (compression, [command, ...args]) => {
    // 8 MiB of one non-zero byte: 1 KiB or so packed, data on disk when unpacked.
    const plain = join(dir, `bomb-${compression}`);
    await writeFile(plain, Buffer.alloc(8 << 20, 0x5a));
    const packed = join(dir, `bomb-${compression}.packed`);
    await execa(command, [...args, plain], { stdout: { file: packed } });
    expect((await stat(packed)).size).toBeLessThan(64 << 10);
    const bounded = { maxBytes: 2 << 20, reserveBytes: () => 0, checkEveryBytes: 1 << 20 };
    await expect(decompressFile(packed, join(dir, 'bomb.out'), compression, undefined, bounded)).rejects.toMatchObject({ code: 'BAD_INPUT', message: 'the download decompresses to more than 2 MiB, larger than any disk image it could be' });
    // A reserve larger than the filesystem itself: the first check (after 1 MiB written) stops it.
    const noRoom = { maxBytes: 2 ** 40, reserveBytes: (total: number) => total + 1, checkEveryBytes: 1 << 20 };
    const error = await decompressFile(packed, join(dir, 'bomb.out'), compression, undefined, noRoom).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'ENVIRONMENT', message: expect.stringMatching(/^decompressing stopped after 1 MiB: .* has [\d.]+ GiB free, and imagebuilder leaves at least [\d.]+ GiB$/) });
    expect((await stat(join(dir, 'bomb.out'))).size).toBeLessThanOrEqual(2 << 20);
  });

  test('damaged compressed data is BAD_INPUT', async () => {
    const packed = join(dir, 'bad.xz');
    await writeFile(packed, Buffer.concat([Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]), randomBytes(1000)]));
    await expect(decompressFile(packed, join(dir, 'bad.out'), 'xz')).rejects.toMatchObject({ code: 'BAD_INPUT', message: expect.stringContaining('cannot decompress') });
    const gz = join(dir, 'bad.gz');
    await writeFile(gz, Buffer.concat([Buffer.from([0x1f, 0x8b, 8, 0]), randomBytes(1000)]));
    await expect(decompressFile(gz, join(dir, 'bad.out'), 'gzip')).rejects.toMatchObject({ code: 'BAD_INPUT' });
    await truncate(gz, 0);
  });
});
