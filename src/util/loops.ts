import { readdir, readFile } from 'node:fs/promises';

/** Loop devices whose backing file is `path` or lies under it, from sysfs (what `losetup --list` reads). */
export async function loopsBackedBy(path: string, sysBlock = '/sys/block'): Promise<string[]> {
  const loops: string[] = [];
  for (const name of await readdir(sysBlock).catch(() => [] as string[])) {
    if (!/^loop\d+$/.test(name)) continue;
    const backing = (await readFile(`${sysBlock}/${name}/loop/backing_file`, 'utf8').catch(() => '')).trim().replace(/ \(deleted\)$/, '');
    if (backing && (backing === path || backing.startsWith(`${path}/`))) loops.push(`/dev/${name}`);
  }
  return loops;
}
