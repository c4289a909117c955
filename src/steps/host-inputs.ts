import { createHash } from 'node:crypto';
import { lstatSync, realpathSync } from 'node:fs';
import { lstat, readdir, readlink, stat } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { sha256File } from '../util/digest.js';
import { ImageBuilderError } from '../util/errors.js';

/**
 * The real path of `path`, as far as it exists: symlinks on the existing part resolved as the kernel resolves them
 * (realpath(3): a link's `..` taken after the link is followed; Node's own realpath took `x/../f` as text, so a
 * link `evil -> x/../shadow` beside `x -> /etc/ssh` passed as inside and read /etc/shadow), the rest appended.
 * Undefined when a name that is there does not resolve (a dangling link, a loop): nothing to confine it by.
 */
function realPathSoFar(path: string): string | undefined {
  try {
    return realpathSync.native(path);
  } catch {
    try {
      lstatSync(path);
      return undefined;
    } catch {
      const parent = dirname(path);
      if (parent === path) return path;
      const real = realPathSoFar(parent);
      return real === undefined ? undefined : join(real, basename(path));
    }
  }
}

/**
 * Where a recipe may read host files: the recipe's own directory (includes, `file.source`, `template`,
 * `copy.src`, `run.file`, container archives), and directories the user allows with --allow-host-path.
 * `named` (relative to `baseDir`, the directory of the file that names it) resolved to the real path that is read,
 * or why it may not be. Symlinks are resolved first: one inside the recipe's directory that leads out escapes too.
 */
function confine(roots: readonly string[], baseDir: string, named: string): { real: string } | { escape: string } {
  const real = realPathSoFar(resolve(baseDir, named));
  if (real === undefined) return { escape: `${named} is a symlink that leads nowhere (dangling, or a loop): a recipe reads host files only from its directory or --allow-host-path ones; give the file itself` };
  const inside = roots.map(realPathSoFar).some((root) => root !== undefined && (real === root || real.startsWith(root.endsWith('/') ? root : `${root}/`)));
  if (inside) return { real };
  const [recipeDir, ...allowed] = roots;
  return { escape: `${named} is outside the recipe's directory ${recipeDir}${allowed.length ? ` and the allowed ${allowed.join(', ')}` : ''} (it is ${real}): a recipe reads host files only from there; move the file next to the recipe, or allow its directory with --allow-host-path DIR` };
}

/** Undefined when `named` stays where a recipe may read (confine); otherwise why not. */
export function hostPathEscape(roots: readonly string[], baseDir: string, named: string): string | undefined {
  const confined = confine(roots, baseDir, named);
  return 'escape' in confined ? confined.escape : undefined;
}

/** The host path a step names, resolved and confined as hostPathEscape says; a BAD_RECIPE when it escapes. */
export function confinedHostPath(environment: { recipeDir: string; hostRoots?: readonly string[] }, named: string): string {
  // The real path is what is read: a symlink swapped in after this check is not followed to somewhere else.
  const confined = confine(environment.hostRoots ?? [environment.recipeDir], environment.recipeDir, named);
  if ('escape' in confined) throw new ImageBuilderError('BAD_RECIPE', confined.escape, { hint: 'imagebuilder validate RECIPE shows where the recipe names it (file:line:column)' });
  return confined.real;
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
