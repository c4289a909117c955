import { mkdir, mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';

/**
 * Derives a standalone qcow2 image from a fixture with some files replaced, without the code under test:
 * qemu-img to raw, the root filesystem loop-mounted and the files written, qemu-img back to qcow2. The mount
 * lives in a private mount namespace (unshare), so no other process's namespace made meanwhile can hold a copy
 * of it and keep the filesystem from being cleanly unmounted before the image is converted back.
 */
export async function deriveImage(
  base: string,
  output: string,
  files: Record<string, string>,
  options: { partitioned?: boolean; /** Which partition (1-based) holds the files; the first by default. */ partition?: number; mountOptions?: string; /** Run on the host after the copies, "$1" the mounted root. */ thenRun?: string } = {},
): Promise<string> {
  const work = await mkdtemp('/var/tmp/ib-derive-');
  try {
    const raw = join(work, 'disk.raw');
    await execa('qemu-img', ['convert', '-O', 'raw', base, raw]);
    let extent = '';
    if (options.partitioned) {
      const table = JSON.parse((await execa('sfdisk', ['--json', raw])).stdout) as { partitiontable: { partitions: { start: number; size: number }[] } };
      const root = table.partitiontable.partitions[(options.partition ?? 1) - 1];
      extent = `,offset=${root.start * 512},sizelimit=${root.size * 512}`;
    }
    const staged = join(work, 'files');
    const copies: string[] = [];
    for (const [i, [path, content]] of Object.entries(files).entries()) {
      await writeFile(`${staged}-${i}`, content);
      // A link in the way (Debian's /etc/os-release) is replaced by the file, not written through.
      copies.push(`rm -f "$1${path}" && cp "${staged}-${i}" "$1${path}" && chmod 0644 "$1${path}"`);
    }
    const script = `set -e; mount -o loop${extent}${options.mountOptions ? `,${options.mountOptions}` : ''} "$2" "$1"; trap 'umount "$1"' EXIT; ${[...copies, ...(options.thenRun ? [options.thenRun] : [])].join('; ')}`;
    await mkdir(join(work, 'mnt'));
    await execa('unshare', ['--mount', '--propagation', 'private', 'sh', '-c', script, 'derive', join(work, 'mnt'), raw]);
    const partial = `${output}.partial-${process.pid}`;
    await execa('qemu-img', ['convert', '-O', 'qcow2', raw, partial]);
    await rename(partial, output);
    return output;
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}
