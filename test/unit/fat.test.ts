import { createHash } from 'node:crypto';
import { mkdtemp, open, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { fatFreeRanges, fatGeometry, MAX_FAT_BYTES, type ReadAt } from '../../src/image/fat.js';

const MiB = 2 ** 20;

/** Reads a file as the device it stands for. */
async function fileReader(path: string): Promise<{ read: ReadAt; close: () => Promise<void>; bytes: number }> {
  const handle = await open(path, 'r');
  const bytes = (await handle.stat()).size;
  return {
    bytes,
    read: async (offset, length) => {
      const buffer = Buffer.alloc(Math.max(0, Math.min(length, bytes - offset)));
      await handle.read(buffer, 0, buffer.length, offset);
      return buffer;
    },
    close: () => handle.close(),
  };
}

/** The free bytes mtools reports for a FAT image (`mdir`'s "N bytes free"), its own reading of the FAT. */
async function mtoolsFreeBytes(image: string): Promise<number> {
  const out = (await execa('mdir', ['-i', image, '::'], { env: { MTOOLS_SKIP_CHECK: '1' } })).stdout;
  return Number(/([\d ]+) bytes free/.exec(out)![1].replace(/ /g, ''));
}

/** A FAT16 of one-sector clusters holding x, y and z of one cluster each, y deleted: one free cluster between. */
async function fat16WithOneClusterHole(dir: string, image: string): Promise<void> {
  await execa('truncate', ['-s', String(32 * MiB), image]);
  await execa('mkfs.fat', ['-F', '16', '-s', '1', image]);
  for (const name of ['x', 'y', 'z']) {
    await writeFile(join(dir, name), Buffer.alloc(512, name));
    await execa('mcopy', ['-i', image, join(dir, name), `::${name}`]);
  }
  await execa('mdel', ['-i', image, '::y']);
}

describe('the free space of a FAT filesystem, read without mounting it', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ib-fat-'));
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  // Real filesystems from mkfs.fat, with files copied in and some deleted (their data stays in free clusters).
  test.each([
    { bits: 12, size: 4 * MiB },
    { bits: 16, size: 32 * MiB },
    { bits: 32, size: 64 * MiB },
  ] as const)('FAT$bits: every free cluster, as mtools counts them; zeroing them loses no file', async ({ bits, size }) => {
    const image = join(dir, `fat${bits}.img`);
    await execa('truncate', ['-s', String(size), image]);
    await execa('mkfs.fat', ['-F', String(bits), '-n', 'ESP', image]);
    const files: Record<string, Buffer> = {};
    for (const [name, bytes] of [['a', 70_000], ['b', 300_000], ['c', 5_000], ['d', 900_000], ['e', 123_457]] as const) {
      files[name] = Buffer.alloc(bytes, name);
      await writeFile(join(dir, name), files[name]);
      await execa('mcopy', ['-i', image, join(dir, name), `::${name}`]);
    }
    // Deleted between kept files: free space in several runs, holding the deleted files' bytes.
    for (const name of ['b', 'd']) {
      await execa('mdel', ['-i', image, `::${name}`]);
      delete files[name];
    }
    const device = await fileReader(image);
    const found = await fatFreeRanges(device.read, device.bytes).finally(device.close);
    if (typeof found === 'string') throw new Error(found);
    expect(found.geometry.bits).toBe(bits);
    expect(found.freeBytes).toBe(await mtoolsFreeBytes(image));
    expect(found.ranges.length).toBeGreaterThanOrEqual(2);
    let end = found.geometry.dataOffset;
    for (const range of found.ranges) {
      expect(range.offset).toBeGreaterThanOrEqual(end);
      expect(range.length % found.geometry.clusterBytes).toBe(0);
      end = range.offset + range.length;
    }
    expect(end).toBeLessThanOrEqual(device.bytes);

    // What FITRIM would do: every free range zeroed. The deleted files' bytes are gone, the kept files are whole.
    const handle = await open(image, 'r+');
    for (const range of found.ranges) await handle.write(Buffer.alloc(range.length), 0, range.length, range.offset);
    await handle.close();
    await execa('fsck.fat', ['-n', image]);
    for (const [name, content] of Object.entries(files)) {
      const copied = join(dir, `${name}.out`);
      await execa('mcopy', ['-n', '-i', image, `::${name}`, copied]);
      expect(createHash('sha256').update(await readFile(copied)).digest('hex')).toBe(createHash('sha256').update(content).digest('hex'));
    }
    const left = await readFile(image);
    expect(left.includes(Buffer.alloc(4096, 'b'))).toBe(false);
    expect(left.includes(Buffer.alloc(4096, 'd'))).toBe(false);
    expect((await stat(image)).size).toBe(size);
  });

  test('runs shorter than asked are not returned, but counted free', async () => {
    const image = join(dir, 'min.img');
    await fat16WithOneClusterHole(dir, image);
    const device = await fileReader(image);
    const all = await fatFreeRanges(device.read, device.bytes);
    const large = await fatFreeRanges(device.read, device.bytes, 64 * 1024).finally(device.close);
    if (typeof all === 'string' || typeof large === 'string') throw new Error('not read');
    expect(all.ranges).toHaveLength(2);
    expect(all.ranges[0].length).toBe(512);
    expect(large.ranges).toEqual([all.ranges[1]]);
    expect(large.freeBytes).toBe(all.freeBytes);
  });

  test('a cluster is free only when every copy of the FAT says so', async () => {
    const image = join(dir, 'copies.img');
    await fat16WithOneClusterHole(dir, image); // y's cluster: free in both copies
    const read = async () => {
      const device = await fileReader(image);
      const found = await fatFreeRanges(device.read, device.bytes).finally(device.close);
      if (typeof found === 'string') throw new Error(found);
      return found;
    };
    const both = await read();
    expect(both.geometry.fats).toBe(2);
    const hole = both.ranges[0];
    expect(hole.length).toBe(512);
    // The second copy says y's cluster is in use: it is not free.
    const cluster = (hole.offset - both.geometry.dataOffset) / both.geometry.clusterBytes + 2;
    const handle = await open(image, 'r+');
    const entry = Buffer.alloc(2);
    entry.writeUInt16LE(0xffff);
    await handle.write(entry, 0, 2, both.geometry.fatOffset + both.geometry.fatBytes + cluster * 2);
    await handle.close();
    const second = await read();
    expect(second.ranges.map((r) => r.offset)).not.toContain(hole.offset);
    expect(second.freeBytes).toBe(both.freeBytes - 512);
  });

  describe('a crafted boot sector is refused, not followed', () => {
    let boot: Buffer;
    beforeAll(async () => {
      const image = join(dir, 'crafted.img');
      await execa('truncate', ['-s', String(64 * MiB), image]);
      await execa('mkfs.fat', ['-F', '32', image]);
      boot = (await readFile(image)).subarray(0, 512);
      expect(typeof fatGeometry(boot, 64 * MiB)).toBe('object');
    });
    const crafted = (edit: (b: Buffer) => void) => {
      const copy = Buffer.from(boot);
      edit(copy);
      return copy;
    };
    test.each([
      ['no signature', (b: Buffer) => b.writeUInt16LE(0, 510), /no 55AA signature/],
      ['a sector size of 3', (b: Buffer) => b.writeUInt16LE(3, 11), /bytes per sector 3/],
      ['3 sectors per cluster', (b: Buffer) => (b[13] = 3), /not a power of two/],
      ['no FATs', (b: Buffer) => (b[16] = 0), /is zero/],
      ['a filesystem larger than its device', (b: Buffer) => b.writeUInt32LE(0xffffffff, 32), /larger than its device/],
      ['a FAT larger than the bound', (b: Buffer) => b.writeUInt32LE(MAX_FAT_BYTES / 512 + 1, 36), new RegExp(`its FAT \\(\\d+ bytes\\) is larger than ${MAX_FAT_BYTES}$`)],
      ['three copies of the FAT', (b: Buffer) => (b[16] = 3), /3 copies of the FAT/],
      ['a FAT32 with a 16-bit FAT size', (b: Buffer) => b.writeUInt16LE(1, 22), /FAT32 by its cluster count has the other type's FAT size field/],
      ['a FAT32 with a root directory', (b: Buffer) => b.writeUInt16LE(512, 17), /FAT32 by its cluster count has a FAT12\/16 root directory/],
      ['a data area past the end', (b: Buffer) => b.writeUInt32LE(70_000, 36), /past its end/],
    ])('%s', (_what, edit, message) => {
      expect(fatGeometry(crafted(edit), 64 * MiB)).toMatch(message);
    });

    test('a FAT cut short by the device is refused', async () => {
      const read: ReadAt = async (offset, length) => (offset === 0 ? boot : Buffer.alloc(Math.min(length, 100)));
      expect(await fatFreeRanges(read, 64 * MiB)).toMatch(/cut short/);
    });
  });
});
