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
