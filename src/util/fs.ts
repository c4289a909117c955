import { randomBytes } from 'node:crypto';
import { closeSync, fstatSync, openSync, readFileSync, readSync, statSync } from 'node:fs';
import { access, lstat, open, readlink, rename, rm, stat, writeFile, type FileHandle } from 'node:fs/promises';
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

/**
 * The whole regular file at `path` (openRegularFile's rules), at most `maxBytes` of it: undefined when nothing is
 * there; NotRegularFile for anything else; FileTooLarge past `maxBytes`, read no further.
 */
export async function readRegularFile(path: string, options: { follow: boolean; maxBytes: number }): Promise<Buffer | undefined> {
  const opened = await openRegularFile(path, { follow: options.follow });
  if (!opened) return undefined;
  try {
    if (opened.size > options.maxBytes) throw new FileTooLarge(path, opened.size, options.maxBytes);
    const data = Buffer.alloc(opened.size);
    const { bytesRead } = await opened.handle.read(data, 0, opened.size, 0);
    return data.subarray(0, bytesRead);
  } finally {
    await opened.handle.close();
  }
}

/**
 * openRegularFile's rules, synchronously, for checks that cannot wait (a recipe's validation): the whole regular
 * file `path` leads to, at most `maxBytes` of it. Undefined when nothing is there; NotRegularFile for a FIFO,
 * socket, device or directory (never opened: a FIFO would block the whole process, signals included);
 * FileTooLarge past `maxBytes` (read only that far: a growing file is not followed).
 */
export function readRegularFileSync(path: string, maxBytes: number): Buffer | undefined {
  const seen = statSync(path, { throwIfNoEntry: false });
  if (!seen) return undefined;
  if (!seen.isFile()) throw new NotRegularFile(path, seen.isDirectory());
  const fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY);
  try {
    const info = fstatSync(fd);
    if (!info.isFile() || info.dev !== seen.dev || info.ino !== seen.ino) throw new NotRegularFile(path, info.isDirectory());
    if (info.size > maxBytes) throw new FileTooLarge(path, info.size, maxBytes);
    const buffer = Buffer.alloc(info.size);
    let filled = 0;
    while (filled < buffer.length) {
      const read = readSync(fd, buffer, filled, buffer.length - filled, filled);
      if (read === 0) break;
      filled += read;
    }
    return buffer.subarray(0, filled);
  } finally {
    closeSync(fd);
  }
}

/**
 * Whether users other than a directory's owner may rename or remove what is in it, given its mode: when `who` may
 * write it (every user, 0o002, unless another mask is given) and it has no sticky bit. Such a directory's entries,
 * ours included, can be swapped for links between our check and our use.
 */
export const othersMayRename = (mode: number, who = 0o002): boolean => (mode & who) !== 0 && (mode & 0o1000) === 0;

/** What readRegularFile and readRegularFileSync refuse: a regular file larger than the caller's bound. */
export class FileTooLarge extends Error {
  constructor(readonly path: string, readonly size: number, readonly maxBytes: number) {
    super(`${path} is ${size} bytes, more than ${maxBytes}`);
  }
}

/** What openRegularFile found at a name instead of a regular file: a directory, or something else (FIFO, socket, device, or a link where none is followed). */
export class NotRegularFile extends Error {
  constructor(readonly path: string, readonly isDirectory: boolean) {
    super(`${path} is not a regular file`);
  }
}

/**
 * Opens a host file from elsewhere (a sums file, a bundle's file, a box's output) to read, only if it is a regular
 * file: a FIFO is not waited on (O_NONBLOCK), a terminal never becomes ours (O_NOCTTY), and a device is never
 * opened (opening one may act: a watchdog arms, a tape rewinds): with `follow`, what the name leads to is looked
 * at first and the descriptor checked to be that file; without, a link at the name is refused (O_NOFOLLOW) and
 * anything but a regular file opened is closed at once. Undefined when nothing is there; NotRegularFile otherwise.
 */
export async function openRegularFile(path: string, options: { follow: boolean }): Promise<{ handle: FileHandle; size: number } | undefined> {
  const absent = (error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT' || error.code === 'ENOTDIR') return undefined;
    if (error.code === 'ELOOP') throw new NotRegularFile(path, false);
    throw error;
  };
  const seen = options.follow ? await stat(path).catch(absent) : undefined;
  if (options.follow && !seen) return undefined;
  if (seen && !seen.isFile()) throw new NotRegularFile(path, seen.isDirectory());
  const handle = await open(path, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY | (options.follow ? 0 : constants.O_NOFOLLOW)).catch(absent);
  if (!handle) return undefined;
  const info = await handle.stat().catch(async (error: unknown) => {
    await handle.close();
    throw error;
  });
  if (!info.isFile() || (seen && (info.dev !== seen.dev || info.ino !== seen.ino))) {
    await handle.close();
    throw new NotRegularFile(path, info.isDirectory());
  }
  return { handle, size: info.size };
}
