import { createHash } from 'node:crypto';
import { lstat, readdir, readlink, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { sha256File } from '../fetch/checksums.js';

/**
 * A digest of a host file or directory tree as a step would read it: names, types, modes and contents (symlinks
 * by their target, never followed inside a tree). The step cache keys layers on it, so changing one byte of a
 * copied file, or a mode, runs the step again. A missing path has a digest of its own (the step fails then).
 */
export async function hostTreeDigest(path: string): Promise<string> {
  const hash = createHash('sha256');
  const visit = async (hostPath: string, name: string, follow: boolean): Promise<void> => {
    const stats = await (follow ? stat(hostPath) : lstat(hostPath)).catch(() => undefined);
    if (!stats) return void hash.update(`missing ${name}\n`);
    const mode = (stats.mode & 0o7777).toString(8);
    if (stats.isSymbolicLink()) hash.update(`link ${name} ${await readlink(hostPath)}\n`);
    else if (stats.isFile()) hash.update(`file ${name} ${mode} ${await sha256File(hostPath)}\n`);
    else if (stats.isDirectory()) {
      hash.update(`dir ${name} ${mode}\n`);
      for (const child of (await readdir(hostPath)).sort()) await visit(join(hostPath, child), name ? `${name}/${child}` : child, false);
    } else hash.update(`other ${name}\n`);
  };
  // The path the recipe names is followed, as the steps follow it.
  await visit(path, '', true);
  return hash.digest('hex');
}
