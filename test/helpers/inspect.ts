import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { LAYOUT_PARTITIONS, type Layout } from './fixtures.js';

/**
 * Mounts an output image read-only the plain way, without any code under test: qemu-img converts it to raw,
 * sfdisk reads the partition table, and the kernel mounts the partitions through loop devices at their offsets.
 */
export async function withImageMounted<T>(
  image: string,
  layout: Layout,
  body: (root: string) => Promise<T>,
  options: { boot?: boolean; rootOptions?: string } = {},
): Promise<T> {
  const dir = await mkdtemp(join(process.env.IMAGEBUILDER_WORK_DIR ?? tmpdir(), 'inspect-'));
  const raw = join(dir, 'disk.raw');
  const root = join(dir, 'root');
  const mounted: string[] = [];
  try {
    await execa('qemu-img', ['convert', '-O', 'raw', image, raw]);
    const { root: rootPart, boot, rootOptions } = LAYOUT_PARTITIONS[layout];
    const extents = new Map<number, { offset: number; size: number }>();
    if (rootPart !== 'disk') {
      const table = JSON.parse((await execa('sfdisk', ['--json', raw])).stdout) as { partitiontable: { sectorsize?: number; partitions: { node: string; start: number; size: number }[] } };
      const sector = table.partitiontable.sectorsize ?? 512;
      table.partitiontable.partitions.forEach((p) => extents.set(Number(/(\d+)$/.exec(p.node)![1]), { offset: p.start * sector, size: p.size * sector }));
    }
    const mountAt = async (partition: number | 'disk', target: string, extra?: string) => {
      await execa('mkdir', ['-p', target]);
      // Two loop devices over one file must not overlap: each gets its partition's exact extent.
      const extent = partition === 'disk' ? '' : `,offset=${extents.get(partition)!.offset},sizelimit=${extents.get(partition)!.size}`;
      await execa('mount', ['-o', `ro,loop${extent}${extra ? `,${extra}` : ''}`, raw, target]);
      mounted.push(target);
    };
    await mountAt(rootPart, root, options.rootOptions ?? rootOptions);
    if (boot && options.boot !== false) await mountAt(boot, join(root, 'boot'));
    return await body(root);
  } finally {
    for (const target of mounted.reverse()) await execa('umount', [target], { reject: false });
    await rm(dir, { recursive: true, force: true });
  }
}

/** The installed version of a package per the image's own dpkg database, read by the host's dpkg-query. */
export async function dpkgVersion(root: string, name: string): Promise<string | undefined> {
  const result = await execa('dpkg-query', [`--admindir=${root}/var/lib/dpkg`, '-W', '-f', '${db:Status-Status} ${Version}', name], { reject: false });
  const [status, version] = result.stdout.split(' ');
  return status === 'installed' ? version : undefined;
}

/** Each filesystem type's own checker, read-only: exit 0 means clean. */
const FS_CHECKERS: Record<string, (device: string) => [string, string[]]> = {
  ext4: (device) => ['fsck.ext4', ['-n', '-f', device]],
  xfs: (device) => ['xfs_repair', ['-n', device]],
  // --force: a copy of the fixture (same fsid) may be mounted by another test at the same time.
  btrfs: (device) => ['btrfs', ['check', '--readonly', '--force', device]],
};

/**
 * Runs fsck.ext4 -n, xfs_repair -n or btrfs check --readonly over every partition of an image (a read-only loop
 * device over each partition's exact extent of a raw copy), without any code under test. Returns one
 * `p<N> <type>` line per filesystem checked; throws with the checker's output when one is not clean.
 */
export async function checkFilesystems(image: string): Promise<string[]> {
  const dir = await mkdtemp(join(process.env.IMAGEBUILDER_WORK_DIR ?? tmpdir(), 'fsck-'));
  const raw = join(dir, 'disk.raw');
  const checked: string[] = [];
  try {
    await execa('qemu-img', ['convert', '-O', 'raw', image, raw]);
    const table = JSON.parse((await execa('sfdisk', ['--json', raw])).stdout) as { partitiontable: { sectorsize?: number; partitions: { node: string; start: number; size: number }[] } };
    const sector = table.partitiontable.sectorsize ?? 512;
    for (const partition of table.partitiontable.partitions) {
      const number = /(\d+)$/.exec(partition.node)![1];
      const device = (await execa('losetup', ['--find', '--show', '--read-only', '--offset', String(partition.start * sector), '--sizelimit', String(partition.size * sector), raw])).stdout.trim();
      try {
        const type = (await execa('blkid', ['-p', '-o', 'value', '-s', 'TYPE', device], { reject: false })).stdout.trim();
        const checker = FS_CHECKERS[type];
        if (!checker) continue;
        const [file, args] = checker(device);
        const result = await execa(file, args, { reject: false, all: true });
        if (result.exitCode !== 0) throw new Error(`p${number} (${type}) is not clean: ${file} ${args.join(' ')} exited with ${result.exitCode}\n${result.all}`);
        checked.push(`p${number} ${type}`);
      } finally {
        await execa('btrfs', ['device', 'scan', '--forget', device], { reject: false });
        await execa('losetup', ['--detach', device], { reject: false });
      }
    }
    return checked;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
