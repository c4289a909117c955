import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
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

/** Each partition of a raw disk (or the whole disk) on a read-only loop device of its own, for the checkers. */
async function withPartitions<T>(raw: string, body: (devices: { device: string; number: number | 'disk' }[]) => Promise<T>): Promise<T> {
  const table = await execa('sfdisk', ['--json', raw], { reject: false });
  const partitions: Partition[] = table.exitCode === 0 ? (JSON.parse(table.stdout) as { partitiontable: { partitions: Partition[] } }).partitiontable.partitions : [];
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

/** The filesystem's own checker, read-only: e2fsck -n, xfs_repair -n, btrfs check --readonly. */
async function checkFilesystem(device: string, type: string): Promise<void> {
  const checker: Record<string, [string, string[]]> = {
    ext4: ['e2fsck', ['-f', '-n', device]],
    xfs: ['xfs_repair', ['-n', device]],
    btrfs: ['btrfs', ['check', '--readonly', device]],
  };
  if (!checker[type]) return;
  const result = await execa(checker[type][0], checker[type][1], { reject: false, all: true });
  if (result.exitCode !== 0) throw new Error(`${checker[type][0]} on ${device} (${type}): exit ${result.exitCode}\n${result.all}`);
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
  beforeAll(async () => {
    work = await mkdtemp('/var/tmp/ib-sparsify-');
    env = { IMAGEBUILDER_WORK_DIR: join(work, 'tmp') };
    await mkdir(env.IMAGEBUILDER_WORK_DIR);
    recipe = join(work, 'garbage.yaml');
    // 200 MiB written and deleted: its blocks are free but hold data, which only sparsifying drops.
    await writeFile(recipe, stringify({ name: 'garbage', steps: [{ run: 'head -c 209715200 /dev/urandom > /var/junk && sync && rm /var/junk' }] }));
    vfatHere = (await readFile('/proc/filesystems', 'utf8')).split('\n').some((line) => line.trim().endsWith('vfat'));
  });
  afterAll(() => rm(work, { recursive: true, force: true }));

  const layouts: { layout: Layout; types: string[] }[] = [
    { layout: 'mbr', types: ['ext4'] },
    { layout: 'whole-disk', types: ['ext4'] },
    { layout: 'separate-boot', types: ['ext4', 'swap', 'ext4'] },
    { layout: 'xfs', types: ['xfs'] },
    { layout: 'btrfs-subvol', types: ['ext4', 'btrfs'] },
    { layout: 'gpt-esp', types: ['vfat', 'ext4'] },
  ];
  test.each(layouts)('$layout: a sound image without the deleted garbage, swap UUIDs kept', async ({ layout, types }) => {
    const input = await fixtureImage(layout);
    const inputSha = await sha256(input);
    const inputRaw = join(work, `${layout}-in.raw`);
    await execa('qemu-img', ['convert', '-O', 'raw', input, inputRaw]);
    const before = await withPartitions(inputRaw, async (devices) => Promise.all(devices.map(async (d) => ({ ...d, ...(await blkid(d.device)) }))));
    await rm(inputRaw);
    expect(before.map((d) => d.TYPE)).toEqual(types);

    const output = join(work, `${layout}.qcow2`);
    const result = await runCli(['apply', recipe, '--disk-image', input, '--output', output, '--no-cache'], { env });
    if (result.exitCode !== 0) throw new Error(result.all);
    expect(result.stderr).toContain('writing qcow2 output (sparsify: auto)');
    // The appliance only for what this host could not mount: here, an ESP where the kernel has no vfat.
    const unmountable = types.includes('vfat') && !vfatHere;
    if (unmountable) expect(result.stderr).toMatch(/sparsify: virt-sparsify --in-place for what this host did not mount: \/dev\/\S+ \(vfat "?.*: not mounted here\)/);
    else expect(result.stderr).not.toContain('virt-sparsify');
    if (types.includes('swap')) expect(result.stderr).toMatch(/sparsify: swap \S+ discarded and made again \(UUID [0-9a-f-]+ kept\)/);

    await execa('qemu-img', ['check', output]);
    const info = JSON.parse((await execa('qemu-img', ['info', '--output=json', input])).stdout) as { 'actual-size': number };
    const out = JSON.parse((await execa('qemu-img', ['info', '--output=json', output])).stdout) as { 'actual-size': number };
    console.log(`${layout}: input ${(info['actual-size'] / MiB).toFixed(0)} MiB, output ${(out['actual-size'] / MiB).toFixed(0)} MiB`);
    // 200 MiB of random data were written: had their blocks been copied, the output would be that much bigger.
    expect(out['actual-size']).toBeLessThan(info['actual-size'] + 100 * MiB);

    const raw = join(work, `${layout}-out.raw`);
    await execa('qemu-img', ['convert', '-O', 'raw', output, raw]);
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
