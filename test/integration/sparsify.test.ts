import { mkdir, mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { stringify } from 'yaml';
import { fixtureImage, type Layout } from '../helpers/fixtures.js';
import { leftoversUnder, NOTHING_LEFT, runCli, sha256 } from '../helpers/host.js';

const MiB = 2 ** 20;

interface Partition {
  node: string;
  start: number;
  size: number;
}

/** A raw disk's partitions as sfdisk reads them (none for a whole-disk filesystem). */
async function partitionsOf(raw: string): Promise<Partition[]> {
  const table = await execa('sfdisk', ['--json', raw], { reject: false });
  return table.exitCode === 0 ? (JSON.parse(table.stdout) as { partitiontable: { partitions: Partition[] } }).partitiontable.partitions : [];
}

/** Each partition of a raw disk (or the whole disk) on a read-only loop device of its own, for the checkers. */
async function withPartitions<T>(raw: string, body: (devices: { device: string; number: number | 'disk' }[]) => Promise<T>): Promise<T> {
  const partitions = await partitionsOf(raw);
  const loops: { device: string; number: number | 'disk' }[] = [];
  try {
    if (!partitions.length) loops.push({ device: (await execa('losetup', ['--find', '--show', '--read-only', raw])).stdout.trim(), number: 'disk' });
    for (const p of partitions) {
      const device = (await execa('losetup', ['--find', '--show', '--read-only', '--offset', String(p.start * 512), '--sizelimit', String(p.size * 512), raw])).stdout.trim();
      loops.push({ device, number: Number(/(\d+)$/.exec(p.node)![1]) });
    }
    return await body(loops);
  } finally {
    for (const loop of loops) await execa('losetup', ['-d', loop.device], { reject: false });
  }
}

/** What blkid reads on a device: TYPE, UUID, LABEL. */
async function blkid(device: string): Promise<{ TYPE?: string; UUID?: string; LABEL?: string }> {
  const out = (await execa('blkid', ['-o', 'export', '-p', device], { reject: false })).stdout;
  return Object.fromEntries(out.split('\n').filter((line) => line.includes('=')).map((line) => [line.slice(0, line.indexOf('=')), line.slice(line.indexOf('=') + 1)]));
}

/** The filesystem's own checker, read-only: e2fsck -n, xfs_repair -n, btrfs check --readonly, fsck.fat -n, fsck.f2fs --dry-run. */
async function checkFilesystem(device: string, type: string): Promise<void> {
  const checker: Record<string, [string, string[]]> = {
    ext4: ['e2fsck', ['-f', '-n', device]],
    xfs: ['xfs_repair', ['-n', device]],
    btrfs: ['btrfs', ['check', '--readonly', device]],
    vfat: ['fsck.fat', ['-n', device]],
    f2fs: ['fsck.f2fs', ['--dry-run', device]],
  };
  if (!checker[type]) return;
  const result = await execa(checker[type][0], checker[type][1], { reject: false, all: true });
  if (result.exitCode !== 0) throw new Error(`${checker[type][0]} on ${device} (${type}): exit ${result.exitCode}\n${result.all}`);
}

/** The junk left in a deleted file's clusters of the ESP: had they been copied, this block is in the output. */
const ESP_JUNK_SAMPLE = 4096;

/**
 * The gpt-esp fixture with its ESP (partition 1) changed on the host, without the code under test: `junk` copies
 * 40 MiB of random bytes into the FAT with mtools and deletes it (free clusters that hold data, as on any used
 * ESP); `f2fs` makes it an f2fs filesystem, a type this host's kernel cannot mount and the appliance can.
 */
async function espVariant(base: string, output: string, change: 'junk' | 'f2fs', work: string): Promise<{ path: string; junk?: Buffer }> {
  const raw = join(work, `${change}.raw`);
  await execa('qemu-img', ['convert', '-O', 'raw', base, raw]);
  const [esp] = await partitionsOf(raw);
  let junk: Buffer | undefined;
  if (change === 'junk') {
    const file = join(work, 'junk');
    await execa('head', ['-c', String(40 * MiB), '/dev/urandom'], { stdout: { file } });
    junk = (await readFile(file)).subarray(20 * MiB, 20 * MiB + ESP_JUNK_SAMPLE);
    const image = `${raw}@@${esp.start * 512}`;
    await execa('mcopy', ['-i', image, file, '::junk'], { env: { MTOOLS_SKIP_CHECK: '1' } });
    await execa('mdel', ['-i', image, '::junk'], { env: { MTOOLS_SKIP_CHECK: '1' } });
    await rm(file);
  } else {
    const loop = (await execa('losetup', ['--find', '--show', '--offset', String(esp.start * 512), '--sizelimit', String(esp.size * 512), raw])).stdout.trim();
    try {
      await execa('mkfs.f2fs', ['-f', '-l', 'data', loop]);
    } finally {
      await execa('losetup', ['-d', loop]);
    }
  }
  await execa('qemu-img', ['convert', '-O', 'qcow2', raw, output]);
  await rm(raw);
  return { path: output, junk };
}

/** The bytes of partition 1 of a raw disk. */
async function firstPartitionBytes(raw: string): Promise<Buffer> {
  const [{ start, size }] = await partitionsOf(raw);
  const handle = await open(raw, 'r');
  try {
    const bytes = Buffer.alloc(size * 512);
    await handle.read(bytes, 0, bytes.length, start * 512);
    return bytes;
  } finally {
    await handle.close();
  }
}

/**
 * The default sparsify, `auto`: fstrim on every mounted guest filesystem, swap discarded and made again with its
 * UUID, virt-sparsify --in-place only for what this host did not mount. Every fixture layout, read back with
 * qemu-img check, blkid and each filesystem's own checker; the garbage a step wrote and deleted is not in the output.
 */
describe('--sparsify auto (the default)', () => {
  let work: string;
  let env: Record<string, string>;
  let recipe: string;
  let vfatHere: boolean;
  let f2fsHere: boolean;
  beforeAll(async () => {
    work = await mkdtemp('/var/tmp/ib-sparsify-');
    env = { IMAGEBUILDER_WORK_DIR: join(work, 'tmp') };
    await mkdir(env.IMAGEBUILDER_WORK_DIR);
    recipe = join(work, 'garbage.yaml');
    // 200 MiB written and deleted: its blocks are free but hold data, which only sparsifying drops.
    await writeFile(recipe, stringify({ name: 'garbage', steps: [{ run: 'head -c 209715200 /dev/urandom > /var/junk && sync && rm /var/junk' }] }));
    const filesystems = (await readFile('/proc/filesystems', 'utf8')).split('\n').map((line) => line.trim().split(/\s+/).pop());
    vfatHere = filesystems.includes('vfat');
    f2fsHere = filesystems.includes('f2fs');
  });
  afterAll(() => rm(work, { recursive: true, force: true }));

  const layouts: { layout: Layout; types: string[]; esp?: 'junk' | 'f2fs' }[] = [
    { layout: 'mbr', types: ['ext4'] },
    { layout: 'whole-disk', types: ['ext4'] },
    { layout: 'separate-boot', types: ['ext4', 'swap', 'ext4'] },
    { layout: 'xfs', types: ['xfs'] },
    { layout: 'btrfs-subvol', types: ['ext4', 'btrfs'] },
    { layout: 'gpt-esp', types: ['vfat', 'ext4'], esp: 'junk' },
    { layout: 'gpt-esp', types: ['f2fs', 'ext4'], esp: 'f2fs' },
  ];
  test.each(layouts.map((l) => ({ ...l, title: l.esp ? `${l.layout}, ${l.esp === 'junk' ? 'a deleted file\'s data in its ESP' : 'an f2fs filesystem for its ESP'}` : l.layout })))('$title: a sound image without the deleted garbage, swap UUIDs kept', async ({ layout, types, esp }) => {
    const name = esp ? `${layout}-${esp}` : layout;
    const variant = esp ? await espVariant(await fixtureImage(layout), join(work, `${name}-in.qcow2`), esp, work) : undefined;
    const input = variant?.path ?? (await fixtureImage(layout));
    const inputSha = await sha256(input);
    const inputRaw = join(work, `${name}-in.raw`);
    await execa('qemu-img', ['convert', '-O', 'raw', input, inputRaw]);
    const before = await withPartitions(inputRaw, async (devices) => Promise.all(devices.map(async (d) => ({ ...d, ...(await blkid(d.device)) }))));
    await rm(inputRaw);
    expect(before.map((d) => d.TYPE)).toEqual(types);

    const output = join(work, `${name}.qcow2`);
    const result = await runCli(['apply', recipe, '--disk-image', input, '--output', output, '--no-cache'], { env });
    if (result.exitCode !== 0) throw new Error(result.all);
    expect(result.stderr).toContain('writing qcow2 output (sparsify: auto)');
    // An ESP this kernel could not mount: its free clusters discarded natively, as read from its FAT.
    if (types.includes('vfat') && !vfatHere) expect(result.stderr).toMatch(/sparsify: vfat \/dev\/\S+ "EFI": \d+ MiB of free clusters discarded in \d+ run\(s\), read from its FAT/);
    // The appliance only for what this host could not mount and has no native way for: here, f2fs.
    if (types.includes('f2fs') && !f2fsHere) expect(result.stderr).toMatch(/sparsify: virt-sparsify --in-place for what this host did not mount: \/dev\/\S+ \(f2fs "data": not mounted here\)/);
    else expect(result.stderr).not.toContain('virt-sparsify');
    if (types.includes('swap')) expect(result.stderr).toMatch(/sparsify: swap \S+ discarded and made again \(UUID [0-9a-f-]+ kept\)/);

    await execa('qemu-img', ['check', output]);
    const info = JSON.parse((await execa('qemu-img', ['info', '--output=json', input])).stdout) as { 'actual-size': number };
    const out = JSON.parse((await execa('qemu-img', ['info', '--output=json', output])).stdout) as { 'actual-size': number };
    console.log(`${layout}: input ${(info['actual-size'] / MiB).toFixed(0)} MiB, output ${(out['actual-size'] / MiB).toFixed(0)} MiB`);
    // 200 MiB of random data were written: had their blocks been copied, the output would be that much bigger.
    expect(out['actual-size']).toBeLessThan(info['actual-size'] + 100 * MiB);

    const raw = join(work, `${name}-out.raw`);
    await execa('qemu-img', ['convert', '-O', 'raw', output, raw]);
    // The junk of the ESP's deleted file was in the input's free clusters; it is not in the output's.
    if (variant?.junk) {
      expect(out['actual-size']).toBeLessThan(info['actual-size'] - 30 * MiB);
      expect((await firstPartitionBytes(raw)).includes(variant.junk)).toBe(false);
    }
    const after = await withPartitions(raw, async (devices) => {
      const read = await Promise.all(devices.map(async (d) => ({ ...d, ...(await blkid(d.device)) })));
      for (const d of read) await checkFilesystem(d.device, d.TYPE ?? '');
      return read;
    });
    await rm(raw);
    // Every filesystem and swap still there, by the same UUID and label.
    expect(after.map((d) => [d.number, d.TYPE, d.UUID, d.LABEL])).toEqual(before.map((d) => [d.number, d.TYPE, d.UUID, d.LABEL]));
    expect(await sha256(input)).toBe(inputSha);
    expect(await leftoversUnder(env.IMAGEBUILDER_WORK_DIR)).toEqual(NOTHING_LEFT);
  }, 900_000);
});
