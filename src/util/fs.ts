import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { access, lstat, readlink, rename, rm, writeFile } from 'node:fs/promises';
import { constants } from 'node:fs';
import { delimiter, join, posix } from 'node:path';

export async function exists(path: string): Promise<boolean> {
  try {
    await lstat(path);
    return true;
  } catch {
    return false;
  }
}

/** Finds an executable on PATH, as `command -v` would. */
export async function which(command: string): Promise<string | undefined> {
  for (const dir of (process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin').split(delimiter)) {
    const candidate = join(dir, command);
    try {
      await access(candidate, constants.X_OK);
      return candidate;
    } catch {
      // keep looking
    }
  }
  return undefined;
}

export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
  // A zombie has exited and released everything; only its reaping is left. A daemonized helper's parent is
  // init, which may reap late (or never: a container whose PID 1 does not reap), so it must not count as alive.
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Resolves a guest path the way the guest's kernel would see it with `root` as `/`: symlinks are followed
 * relative to the guest root, and `..` never climbs above it, so a guest symlink can never point at the host.
 * Missing trailing components are allowed (they are returned as they are).
 */
export async function resolveInRoot(root: string, guestPath: string, depth = 0): Promise<string> {
  if (depth > 40) throw new Error(`too many levels of symbolic links resolving ${guestPath}`);
  const parts = posix.normalize(`/${guestPath}`).split('/').filter(Boolean);
  let resolved = '/';
  for (let i = 0; i < parts.length; i++) {
    const next = posix.join(resolved, parts[i]);
    let target: string | undefined;
    try {
      if ((await lstat(join(root, next))).isSymbolicLink()) target = await readlink(join(root, next));
    } catch {
      return posix.join(next, ...parts.slice(i + 1));
    }
    if (target === undefined) {
      resolved = next;
      continue;
    }
    const rest = parts.slice(i + 1);
    const absolute = target.startsWith('/') ? target : posix.join(resolved, target);
    return resolveInRoot(root, posix.join(posix.normalize(`/${absolute}`), ...rest), depth + 1);
  }
  return resolved;
}

/**
 * Writes a host file whole or not at all, so a reader (another build, a reaper) sees the old content or the new,
 * never part of either: the data goes to a new sibling, created exclusively and named after this process and a
 * random part (concurrent writers never share one), which is then renamed over `path`. The sibling is removed
 * when the write or the rename fails. Guest files are written by guest-fs's writeGuestFileFromHost instead.
 */
export async function writeFileAtomic(path: string, data: string | Uint8Array, options: { mode?: number } = {}): Promise<void> {
  const partial = `${path}.${process.pid}-${randomBytes(4).toString('hex')}.partial`;
  try {
    await writeFile(partial, data, { flag: 'wx', ...(options.mode === undefined ? {} : { mode: options.mode }) });
  } catch (error) {
    // EEXIST: the name is another writer's file, not ours to remove.
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') await rm(partial, { force: true });
    throw error;
  }
  try {
    await rename(partial, path);
  } catch (error) {
    await rm(partial, { force: true });
    throw error;
  }
}

/**
 * Renames a finished file to `path`, replacing what is there, without the flush ext4 adds: renaming over an
 * existing file makes ext4 (auto_da_alloc) write the new file's delayed blocks out first, ~0.3 s for a 500 MB
 * image here, which nothing asked for (a new name gets no such flush, and no output is fsynced). So an old
 * regular file or link there is removed first (no name is left behind, whenever the process dies); should the
 * rename then fail, the old one is gone with the build that was replacing it. Anything else there (a
 * directory) is left to the rename to refuse, as before.
 */
export async function renameOver(from: string, path: string): Promise<void> {
  const old = await lstat(path).catch(() => undefined);
  if (old?.isFile() || old?.isSymbolicLink()) await rm(path, { force: true });
  await rename(from, path);
}

/** writeFileAtomic of a value as indented JSON, the form our records and caches are written in. */
export async function writeJsonAtomic(path: string, value: unknown, options: { mode?: number } = {}): Promise<void> {
  await writeFileAtomic(path, `${JSON.stringify(value, null, 2)}\n`, options);
}
