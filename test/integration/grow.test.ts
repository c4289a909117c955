import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { stringify } from 'yaml';
import { fixtureImage, LAYOUT_PARTITIONS, type Layout } from '../helpers/fixtures.js';
import { leftoversUnder, NOTHING_LEFT, runCli, sha256 } from '../helpers/host.js';
import { withImageMounted } from '../helpers/inspect.js';

const GiB = 2 ** 30;
const MiB = 2 ** 20;

/** The root partition of a disk image (or the whole disk) as sfdisk reads it: its byte extent, and the disk's size. */
async function rootExtent(raw: string, layout: Layout): Promise<{ offset: number; size: number; disk: number; label?: string }> {
  const disk = Number((await execa('stat', ['-c', '%s', raw])).stdout);
  const root = LAYOUT_PARTITIONS[layout].root;
  if (root === 'disk') return { offset: 0, size: disk, disk };
  const table = JSON.parse((await execa('sfdisk', ['--json', raw])).stdout) as { partitiontable: { label: string; sectorsize?: number; partitions: { node: string; start: number; size: number }[] } };
  const sector = table.partitiontable.sectorsize ?? 512;
  const partition = table.partitiontable.partitions.find((p) => Number(/(\d+)$/.exec(p.node)![1]) === root)!;
  return { offset: partition.start * sector, size: partition.size * sector, disk, label: table.partitiontable.label };
}

/** The filesystem's own size, as its own tool reads the superblock (on a read-only loop device over the partition). */
async function filesystemBytes(raw: string, extent: { offset: number; size: number }, type: 'ext4' | 'xfs' | 'btrfs'): Promise<number> {
  const loop = (await execa('losetup', ['--find', '--show', '--read-only', '--offset', String(extent.offset), '--sizelimit', String(extent.size), raw])).stdout.trim();
  try {
    if (type === 'ext4') {
      const header = (await execa('dumpe2fs', ['-h', loop])).stdout;
      return Number(/^Block count:\s+(\d+)/m.exec(header)![1]) * Number(/^Block size:\s+(\d+)/m.exec(header)![1]);
    }
    if (type === 'xfs') {
      const out = (await execa('xfs_db', ['-r', '-c', 'sb 0', '-c', 'p dblocks blocksize', loop])).stdout;
      return Number(/dblocks = (\d+)/.exec(out)![1]) * Number(/blocksize = (\d+)/.exec(out)![1]);
    }
    const supers = (await execa('btrfs', ['inspect-internal', 'dump-super', loop])).stdout;
    return Number(/^total_bytes\s+(\d+)/m.exec(supers)![1]);
  } finally {
    await execa('losetup', ['-d', loop], { reject: false });
  }
}

/**
 * `apply --grow`: the virtual disk made bigger, the root partition (when last) grown to its end, the filesystem
 * grown online, on GPT and MBR disks and ext4, xfs and btrfs roots. Read back with sfdisk and the filesystems'
 * own tools, never with ours.
 */
describe('apply --grow', () => {
  let work: string;
  let env: Record<string, string>;
  beforeAll(async () => {
    work = await mkdtemp('/var/tmp/ib-grow-');
    env = { IMAGEBUILDER_WORK_DIR: join(work, 'tmp'), XDG_CACHE_HOME: join(work, 'cache') };
    await mkdir(env.IMAGEBUILDER_WORK_DIR);
    await writeFile(join(work, 'touch.yaml'), stringify({ name: 'touch', steps: [{ file: { path: '/etc/grown', content: 'yes\n' } }] }));
  });
  afterAll(() => rm(work, { recursive: true, force: true }));

  const cases: { layout: Layout; fs: 'ext4' | 'xfs' | 'btrfs'; grow: string; expectBytes: (before: number) => number; label?: string }[] = [
    { layout: 'gpt-esp', fs: 'ext4', grow: '3G', expectBytes: () => 3 * GiB, label: 'gpt' },
    { layout: 'mbr', fs: 'ext4', grow: '+1G', expectBytes: (before) => before + GiB, label: 'dos' },
    { layout: 'whole-disk', fs: 'ext4', grow: '2560M', expectBytes: () => 2560 * MiB },
    { layout: 'xfs', fs: 'xfs', grow: '+1G', expectBytes: (before) => before + GiB, label: 'gpt' },
    { layout: 'btrfs-subvol', fs: 'btrfs', grow: '+1G', expectBytes: (before) => before + GiB, label: 'gpt' },
  ];
  test.each(cases)('$layout ($fs root) grown with --grow $grow: disk, partition and filesystem all take the room', async ({ layout, fs, grow, expectBytes, label }) => {
    const input = await fixtureImage(layout);
    const inputBefore = await sha256(input);
    const inputRaw = join(work, `${layout}-in.raw`);
    await execa('qemu-img', ['convert', '-O', 'raw', input, inputRaw]);
    const before = await rootExtent(inputRaw, layout);
    const fsBefore = await filesystemBytes(inputRaw, before, fs);
    await rm(inputRaw);

    const output = join(work, `${layout}.qcow2`);
    const result = await runCli(['apply', join(work, 'touch.yaml'), '--disk-image', input, '--output', output, '--sparsify', 'none', '--grow', grow, '--mount-backend', 'fuse'], { env });
    if (result.exitCode !== 0) throw new Error(result.all);
    expect(result.stderr).toMatch(new RegExp(`--grow: the root filesystem \\(${fs}\\) grew into`));

    const info = JSON.parse((await execa('qemu-img', ['info', '--output=json', output])).stdout) as { 'virtual-size': number };
    expect(info['virtual-size']).toBe(expectBytes(before.disk));
    const raw = join(work, `${layout}-out.raw`);
    await execa('qemu-img', ['convert', '-O', 'raw', output, raw]);
    const after = await rootExtent(raw, layout);
    expect(after.label).toBe(label);
    expect(after.offset).toBe(before.offset);
    // The partition reaches the disk's end (GPT keeps its 33-sector backup table and header there).
    expect(after.disk - (after.offset + after.size)).toBeLessThanOrEqual(label === 'gpt' ? 34 * 512 + MiB : MiB);
    expect(after.size - before.size).toBeGreaterThanOrEqual(expectBytes(before.disk) - before.disk - MiB);
    if (label === 'gpt') expect((await execa('sgdisk', ['--verify', raw])).stdout).toContain('No problems found');
    const fsAfter = await filesystemBytes(raw, after, fs);
    expect(fsAfter).toBeGreaterThan(fsBefore);
    // The filesystem fills its partition (within an allocation group's or a block's rounding).
    expect(after.size - fsAfter).toBeLessThan(64 * MiB);
    await rm(raw);
    expect(await sha256(input)).toBe(inputBefore);
    expect(await leftoversUnder(env.IMAGEBUILDER_WORK_DIR)).toEqual(NOTHING_LEFT);
  }, 900_000);

  test('a recipe\'s disk.size; the step cache keeps grown and ungrown builds apart', async () => {
    const input = await fixtureImage('mbr');
    const recipe = join(work, 'sized.yaml');
    await writeFile(recipe, stringify({ name: 'sized', disk: { size: '+512M' }, steps: [{ run: 'df -B1 --output=size / | tail -n 1 > /etc/root-size' }] }));
    // The step cache on (tests default to IMAGEBUILDER_NO_CACHE=1), in this test's own directory.
    const cached = { ...env, IMAGEBUILDER_NO_CACHE: '', IMAGEBUILDER_CACHE: join(work, 'step-cache') };
    const grown = await runCli(['apply', recipe, '--disk-image', input, '--output', join(work, 'sized.qcow2'), '--sparsify', 'none', '--json'], { env: cached });
    if (grown.exitCode !== 0) throw new Error(grown.all);
    expect(grown.stderr).toContain('--grow: the root filesystem (ext4) grew into');
    // Grown before the steps: the step saw the room (the 2 GiB fixture's root, 512 MiB more).
    const seen = await withImageMounted(join(work, 'sized.qcow2'), 'mbr', async (root) => Number((await readFile(join(root, 'etc/root-size'), 'utf8')).trim()));
    expect(seen).toBeGreaterThan(2.25 * GiB);
    // The same build again: every step from the cache, the disk still grown.
    const again = await runCli(['apply', recipe, '--disk-image', input, '--output', join(work, 'sized-again.qcow2'), '--sparsify', 'none', '--json'], { env: cached });
    if (again.exitCode !== 0) throw new Error(again.all);
    expect(again.stderr).not.toContain('grew into');
    expect(again.stdout).toContain('"event":"step-cached"');
    const size = async (image: string) => (JSON.parse((await execa('qemu-img', ['info', '--output=json', image])).stdout) as { 'virtual-size': number })['virtual-size'];
    expect(await size(join(work, 'sized-again.qcow2'))).toBe(await size(join(work, 'sized.qcow2')));
    // --grow over the recipe: another base, so none of those layers.
    const flagged = await runCli(['apply', recipe, '--disk-image', input, '--output', join(work, 'sized-flag.qcow2'), '--sparsify', 'none', '--grow', '+1G', '--json'], { env: cached });
    if (flagged.exitCode !== 0) throw new Error(flagged.all);
    expect(flagged.stdout).not.toContain('"event":"step-cached"');
    expect(await size(join(work, 'sized-flag.qcow2'))).toBe((await size(input)) + GiB);
  }, 900_000);

  test('too small for a step: the error says which filesystem is full and how to give it room; a shrink is refused', async () => {
    const input = await fixtureImage('mbr');
    const recipe = join(work, 'fill.yaml');
    // Writes until the root is full, as a big package install would.
    await writeFile(recipe, stringify({ name: 'fill', steps: [{ run: 'dd if=/dev/zero of=/var/fill bs=1M status=none' }] }));
    const result = await runCli(['apply', recipe, '--disk-image', input, '--output', join(work, 'fill.qcow2'), '--sparsify', 'none', '--no-cache'], { env });
    expect(result.exitCode).toBe(4);
    expect(result.stderr).toMatch(/the guest's \/ is full \(\d+ MiB left of [\d.]+ GiB\)/);
    expect(result.stderr).toContain('hint: give the image room before the steps: --grow +1G');
    const shrink = await runCli(['apply', join(work, 'touch.yaml'), '--disk-image', input, '--output', join(work, 'shrink.qcow2'), '--grow', '1G'], { env });
    expect(shrink.exitCode).toBe(2);
    expect(shrink.stderr).toContain('--grow 1G: the disk is 2 GiB already, and disks are only grown');
    expect(await leftoversUnder(env.IMAGEBUILDER_WORK_DIR)).toEqual(NOTHING_LEFT);
  }, 900_000);
});
