import { readdir, readFile } from 'node:fs/promises';

/** A loop device's backing file as sysfs names it ("" when it has none), without the " (deleted)" mark. */
export async function loopBackingFile(device: string, sysBlock = '/sys/block'): Promise<string> {
  return (await readFile(`${sysBlock}/${device.replace(/^\/dev\//, '')}/loop/backing_file`, 'utf8').catch(() => '')).trim().replace(/ \(deleted\)$/, '');
}

/**
 * The backing file of a loop device over a FUSE export (the file is the root of its own mount) once that mount
 * is gone from every namespace: the kernel can only name it from the mount's root. Nobody can open it again.
 */
export const DETACHED_EXPORT = '/';

/** Loop devices whose backing file is `path` or lies under it, from sysfs (what `losetup --list` reads). */
export async function loopsBackedBy(path: string, sysBlock = '/sys/block'): Promise<string[]> {
  const loops: string[] = [];
  for (const name of await readdir(sysBlock).catch(() => [] as string[])) {
    if (!/^loop\d+$/.test(name)) continue;
    const backing = await loopBackingFile(name, sysBlock);
    if (backing && (backing === path || backing.startsWith(`${path}/`))) loops.push(`/dev/${name}`);
  }
  return loops;
}
