import { createHash } from 'node:crypto';
import { realpathSync } from 'node:fs';
import { lstat, readdir, readlink, stat } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { sha256File } from '../util/digest.js';
import { ImageBuilderError } from '../util/errors.js';

/** The real path of `path`, as far as it exists: symlinks on the existing part resolved, the rest appended. */
function realPathSoFar(path: string): string {
  try {
    return realpathSync(path);
  } catch {
    const parent = dirname(path);
    return parent === path ? path : join(realPathSoFar(parent), basename(path));
  }
}

/**
 * Where a recipe may read host files: the recipe's own directory (includes, `file.source`, `template`,
 * `copy.src`, `run.file`, container archives), and directories the user allows with --allow-host-path.
 * Undefined when `named` (relative to `baseDir`, the directory of the file that names it) stays inside;
 * otherwise why not. Symlinks are resolved first: one inside the recipe's directory that leads out escapes too.
 */
export function hostPathEscape(roots: readonly string[], baseDir: string, named: string): string | undefined {
  const real = realPathSoFar(resolve(baseDir, named));
  const inside = roots.map(realPathSoFar).some((root) => real === root || real.startsWith(root.endsWith('/') ? root : `${root}/`));
  if (inside) return undefined;
  const [recipeDir, ...allowed] = roots;
  return `${named} is outside the recipe's directory ${recipeDir}${allowed.length ? ` and the allowed ${allowed.join(', ')}` : ''} (it is ${real}): a recipe reads host files only from there; move the file next to the recipe, or allow its directory with --allow-host-path DIR`;
}

/** The host path a step names, resolved and confined as hostPathEscape says; a BAD_RECIPE when it escapes. */
export function confinedHostPath(environment: { recipeDir: string; hostRoots?: readonly string[] }, named: string): string {
  const escape = hostPathEscape(environment.hostRoots ?? [environment.recipeDir], environment.recipeDir, named);
  if (escape) throw new ImageBuilderError('BAD_RECIPE', escape, { hint: 'imagebuilder validate RECIPE shows where the recipe names it (file:line:column)' });
  // The real path is what is read: a symlink swapped in after this check is not followed to somewhere else.
  return realPathSoFar(resolve(environment.recipeDir, named));
}

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
