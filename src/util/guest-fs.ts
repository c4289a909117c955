import { closeSync, constants, fstatSync, lstatSync, opendirSync, openSync, readlinkSync, type BigIntStats, type Stats } from 'node:fs';
import { lstat, mkdir, open, opendir, readlink, realpath, rename, rm, rmdir, stat, symlink, type FileHandle } from 'node:fs/promises';
import { createHash, randomBytes } from 'node:crypto';
import { basename, join, posix } from 'node:path';
import { ImageBuilderError } from './errors.js';
import { resolveInRoot } from './fs.js';

/**
 * The one way the host touches a file of a mounted guest. The guest is hostile: a path it controls may be a
 * symlink to a host file, a FIFO that blocks whoever opens it, a device node of a host disk, or a file of
 * gigabytes. So every access here
 * - resolves the guest path inside the guest root (resolveInRoot: a guest symlink never leads onto the host),
 * - opens the result one name at a time (openBeneath), none followed, O_NONBLOCK; only a regular file or a
 *   directory, by lstat before the open (a FIFO or a device node is never opened) and again on the descriptor,
 *   whose kernel path must still be inside the root,
 * - never reads or walks anything on the host's filesystems a session mounts for the guest's programs (its
 *   /sys, /dev, /dev/pts: guardHostFilesystems), wherever a guest link leads (nothing there is opened but, at
 *   most, the mount point's own directory, refused),
 * - reads at most a stated number of bytes.
 * Writes go to a new file created O_EXCL|O_NOFOLLOW next to the target, then renamed over it (rename replaces
 * a symlink at the target rather than following it).
 * Nothing else in src/ opens a guest path with node:fs (test/unit/guest-fs.test.ts checks it: "guest-fs is the
 * only way the host opens a guest file").
 */

/** Caps on what the host reads from a guest, by kind of file. */
export const GUEST_READ_LIMITS = {
  /** os-release, fstab, selinux/config, resolv.conf, a work record: a few KiB in any real image. */
  config: 1 << 20,
  /** dpkg's status file: ~3 MiB for a full desktop; 64 MiB is far beyond any real one. */
  packageStatus: 64 << 20,
  /** One rpm database file: rpmdb.sqlite of a large Fedora install is ~100 MiB. */
  packageDatabase: 1 << 30,
  /** An SELinux binary policy or file_contexts: Fedora's targeted policy is ~10 MiB. */
  policy: 256 << 20,
} as const;

const realRoots = new Map<string, string>();

/** The guest root's real path (the kernel's mount table and /proc/self/fd name real paths), remembered. */
export async function realRoot(root: string): Promise<string> {
  let real = realRoots.get(root);
  if (!real) {
    real = await realpath(root);
    realRoots.set(root, real);
  }
  return real;
}

function describeType(stats: Stats): string {
  if (stats.isSymbolicLink()) return 'a symbolic link';
  if (stats.isFIFO()) return 'a FIFO';
  if (stats.isCharacterDevice()) return 'a character device';
  if (stats.isBlockDevice()) return 'a block device';
  if (stats.isSocket()) return 'a socket';
  if (stats.isDirectory()) return 'a directory';
  return 'not a regular file';
}

function refused(guestPath: string, what: string): ImageBuilderError {
  return new ImageBuilderError('BAD_INPUT', `the guest's ${guestPath} is ${what}; imagebuilder reads and writes guest files from the host only as regular files inside the guest`, {
    hint: 'the image is damaged or crafted: repair that path in the image, or build from a trusted base image',
  });
}

/** The host path of a guest path, every symlink on it resolved inside the guest. */
export async function guestHostPath(root: string, guestPath: string): Promise<string> {
  return join(root, await resolveInRoot(root, guestPath));
}

/** The host path of a guest path whose parent directories are resolved inside the guest; the last name is kept. */
async function hostPathOfName(root: string, guestPath: string): Promise<string> {
  return join(root, await parentInGuest(root, guestPath), basename(guestPath));
}

/** The guest path of a path's parent directory, resolved inside the guest. */
function parentInGuest(root: string, guestPath: string): Promise<string> {
  return resolveInRoot(root, posix.dirname(posix.normalize(`/${guestPath}`)));
}

/** lstat of a guest path (parents resolved inside the guest, the last name not followed); undefined when absent. */
export async function statGuest(root: string, guestPath: string): Promise<Stats | undefined> {
  return lstat(await hostPathOfName(root, guestPath)).catch(() => undefined);
}

/** Whether a real path lies inside the guest's real root. */
/** Whether `real` is the directory `inside` or below it. */
export const isInside = (inside: string, real: string) => inside === '/' || real === inside || real.startsWith(`${inside}/`);

/** The descriptor's real path must still lie inside the guest root. */
async function checkInside(root: string, handle: FileHandle, guestPath: string): Promise<void> {
  const real = await readlink(`/proc/self/fd/${handle.fd}`);
  const inside = await realRoot(root);
  if (!isInside(inside, real)) {
    throw refused(guestPath, `outside the guest once opened (${real}): a parent directory was replaced while it was being opened`);
  }
}

const READ_FLAGS = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK | constants.O_NOCTTY;

const DIRECTORY_STEP_FLAGS = constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW | constants.O_NONBLOCK | constants.O_NOCTTY;

/**
 * Filesystems of the host's own that a session mounts inside the guest for its programs: its sysfs, the /dev tmpfs
 * that holds real device nodes, the devpts. A guest link resolved inside the guest reaches them
 * (/etc/fstab -> /sys/class/dmi/id/product_serial); the host, reading as root with every capability, must neither
 * read them nor open a node there for the guest. By the guest root's real path (the host reading its own files,
 * root '/', is no guest), each session's guard: the st_dev of what it mounted, and while it mounts, a promise every
 * check waits on (a read that started before the mounts, reaching them meanwhile, is refused all the same).
 */
interface HostFilesystemGuard {
  devs: Set<number>;
  mounting?: Promise<void>;
}
const hostFilesystems = new Map<string, Set<HostFilesystemGuard>>();

/**
 * Called before a session mounts the host's filesystems into `root`: host reads there wait until `refuse` names
 * what was mounted, and are refused on those filesystems from then until `release` (called once they are
 * unmounted; also ends the wait, should the mounting fail).
 */
export async function guardHostFilesystems(root: string): Promise<{ refuse: (mountPoints: readonly string[]) => Promise<void>; release: () => void }> {
  const inside = await realRoot(root);
  let mounted!: () => void;
  const guard: HostFilesystemGuard = { devs: new Set(), mounting: new Promise<void>((resolve) => (mounted = resolve)) };
  const guards = hostFilesystems.get(inside) ?? new Set<HostFilesystemGuard>();
  hostFilesystems.set(inside, guards.add(guard));
  const settle = () => {
    guard.mounting = undefined;
    mounted();
  };
  return {
    refuse: async (mountPoints) => {
      try {
        for (const mountPoint of mountPoints) guard.devs.add((await lstat(mountPoint)).dev);
      } finally {
        settle();
      }
    },
    release: () => {
      settle();
      guards.delete(guard);
      if (!guards.size && hostFilesystems.get(inside) === guards) hostFilesystems.delete(inside);
    },
  };
}

/** Whether `dev` is one of the host's filesystems a session mounted in the guest at `inside` (waiting while it mounts them). */
async function onHostFilesystem(inside: string, dev: number): Promise<boolean> {
  for (const guard of hostFilesystems.get(inside) ?? []) {
    await guard.mounting;
    if (guard.devs.has(dev)) return true;
  }
  return false;
}

/** Throws when `dev` is one of the host's filesystems a session mounted in the guest at `inside`. */
async function refuseIfOnHost(inside: string, dev: number, guestPath: string): Promise<void> {
  if (await onHostFilesystem(inside, dev)) {
    throw refused(guestPath, "inside the host's own filesystems the build mounts for the guest's programs (its /sys, /dev or /dev/pts), which the host does not read for the guest");
  }
}

/** The host filesystems refused under the guest root at `inside` now, for a synchronous check. */
function hostDevs(inside: string): Set<number> {
  return new Set([...(hostFilesystems.get(inside) ?? [])].flatMap((guard) => [...guard.devs]));
}

function loopError(path: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`ELOOP: a symbolic link, not followed: ${path}`), { code: 'ELOOP' });
}

/**
 * Opens `resolved` (a guest path as resolveInRoot gave it: no link on the way, as of then) one name at a time
 * from the root, each looked up in the directory opened before it (through /proc/self/fd) and none followed. A
 * guest process that swaps a directory on the way for a link meanwhile (it may run while the host reads: apt's
 * update, an install's maintainer scripts) gets the open refused (ENOTDIR: a link is no directory to step into;
 * ELOOP for a link at the last name), never the host's open of where its link leads, which a plain open of the
 * joined path would follow in any parent. Only a regular file or a directory is opened, checked by lstat first (a
 * FIFO, a device node or a socket is refused unopened) and again on the descriptor (the same inode). Nothing on the
 * session's host filesystems (guardHostFilesystems) is read: no directory on the way there is stepped into, and a
 * mount point of them at the last name (/sys itself) is opened as the directory it is, then refused.
 */
export async function openBeneath(root: string, resolved: string, flags: number, guestPath = resolved): Promise<FileHandle> {
  const names = resolved.split('/').filter(Boolean);
  if (!names.length) return open(root, flags);
  const inside = await realRoot(root);
  const dir = await walkBeneath(root, inside, names.slice(0, -1), guestPath, false);
  try {
    const last = `/proc/self/fd/${dir.fd}/${names.at(-1)}`;
    const seen = await lstat(last);
    if (seen.isSymbolicLink()) throw loopError(guestPath);
    if (!seen.isFile() && !seen.isDirectory()) throw refused(guestPath, describeType(seen));
    const handle = await open(last, flags | constants.O_NOFOLLOW);
    try {
      const opened = await handle.stat();
      if (opened.dev !== seen.dev || opened.ino !== seen.ino) throw refused(guestPath, 'replaced by another file while it was being opened');
      await refuseIfOnHost(inside, opened.dev, guestPath); // a mount point at the last name: /sys itself
      return handle;
    } catch (error) {
      await handle.close();
      throw error;
    }
  } finally {
    await dir.close();
  }
}

/**
 * The directory at `names` under the root, opened one name at a time, each looked up in the directory opened before
 * it (through /proc/self/fd) and none followed; none on the session's host filesystems (refused). With `create`, a
 * missing one is made (0755). The open's own errors are thrown as they are (ENOENT; ENOTDIR or ELOOP for a link or
 * a file on the way, its name in the error's path). The caller closes the handle.
 */
async function walkBeneath(root: string, inside: string, names: readonly string[], guestPath: string, create: boolean): Promise<FileHandle> {
  let dir = await open(root, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    for (const name of names) {
      const path = `/proc/self/fd/${dir.fd}/${name}`;
      const next = await open(path, DIRECTORY_STEP_FLAGS).catch(async (error: NodeJS.ErrnoException) => {
        if (!create || error.code !== 'ENOENT') throw error;
        await mkdir(path, { mode: 0o755 }).catch((made: NodeJS.ErrnoException) => {
          if (made.code !== 'EEXIST') throw made;
        });
        return open(path, DIRECTORY_STEP_FLAGS);
      });
      await dir.close();
      dir = next;
      // Looked up at every step, not once: a session may start mounting while this walk is on its way.
      if (hostFilesystems.has(inside)) await refuseIfOnHost(inside, (await dir.stat()).dev, guestPath);
    }
    return dir;
  } catch (error) {
    await dir.close();
    throw error;
  }
}

/**
 * The directory a guest path's last name is in, opened as openBeneath opens (its parents resolved inside the guest,
 * then one name at a time from the root, none followed, none on the session's host filesystems), with the
 * directories missing on the way made (0755) when `create`; undefined when one is missing and not `create`.
 * Writes, renames and removals then go by the last name alone in `dir` (its /proc/self/fd path): what a guest link
 * resolved into (the session's /dev of real nodes, its /sys) is refused, not written to, and a link put on the way
 * after the path was resolved is not followed. The caller closes `handle`.
 */
async function openParentBeneath(root: string, guestPath: string, create: boolean, parentResolved = false): Promise<{ handle: FileHandle; dir: string; name: string } | undefined> {
  const normalized = posix.normalize(`/${guestPath}`);
  const name = posix.basename(normalized);
  if (!name) throw refused(guestPath, 'the root directory, which has no name to write');
  // parentResolved: the parent as resolveInRoot gave it earlier, walked as it is (a link there now is refused).
  const parent = parentResolved ? posix.dirname(normalized) : await parentInGuest(root, guestPath);
  try {
    const handle = await walkBeneath(root, await realRoot(root), parent.split('/').filter(Boolean), guestPath, create);
    return { handle, dir: `/proc/self/fd/${handle.fd}`, name };
  } catch (error) {
    const { code, path } = error as NodeJS.ErrnoException;
    // A directory missing on the way (a step's open, by its /proc/self/fd path): nothing there. A root that is gone is an error.
    if (code === 'ENOENT' && !create && path?.startsWith('/proc/self/fd/')) return undefined;
    if (code === 'ELOOP' || code === 'ENOTDIR') throw refused(guestPath, `not a directory on the way (${posix.basename(path ?? '')}: a symbolic link or another file)`);
    throw error;
  }
}

/** `body` on the directory of a guest path's last name (openParentBeneath), closed after; undefined when it is missing and not `create`. */
async function inParentBeneath<T>(root: string, guestPath: string, create: boolean, body: (dir: string, name: string) => Promise<T>, parentResolved = false): Promise<T | undefined> {
  const parent = await openParentBeneath(root, guestPath, create, parentResolved);
  if (!parent) return undefined;
  try {
    return await body(parent.dir, parent.name);
  } finally {
    await parent.handle.close();
  }
}

/**
 * A directory the host keeps files in for a session (its private /run, a tmpfs it mounted), held open: reached by
 * its /proc/self/fd path while the session lasts, it is that filesystem whatever a guest renames on the way to it.
 */
export function holdDirectory(path: string): Promise<FileHandle> {
  return open(path, DIRECTORY_STEP_FLAGS);
}

/**
 * A file the guest may have touched in a held directory (holdDirectory), by its name alone: only a regular file of
 * that directory's own filesystem, at most `maxBytes`; undefined for anything else (a link, even to a file of the
 * guest or its /sys; a FIFO, never waited on; a directory; a file past the bound, not read).
 */
export async function readHeldFile(dir: string, name: string, maxBytes: number): Promise<{ content: Buffer; stats: Stats } | undefined> {
  const handle = await open(join(dir, name), READ_FLAGS).catch(() => undefined);
  if (!handle) return undefined;
  try {
    // stat, not lstat: `dir` is the held descriptor's /proc/self/fd path, whose target is the directory.
    const [stats, dirStats] = await Promise.all([handle.stat(), stat(dir)]);
    if (!stats.isFile() || stats.dev !== dirStats.dev || stats.size > maxBytes) return undefined;
    // Never past the size it had: a file that grew meanwhile (something still writing it) is refused.
    const content = await readAtMost(handle, stats.size);
    return content && { content, stats };
  } finally {
    await handle.close();
  }
}

/** lstat of a name in a held directory (holdDirectory): the name itself, never followed; undefined when absent. */
export function statHeldFile(dir: string, name: string): Promise<Stats | undefined> {
  return lstat(join(dir, name)).catch(() => undefined);
}

/** Writes a file into a held directory by its name: a new file, then renamed over whatever the name held (never written through). */
export function writeHeldFile(dir: string, name: string, content: Buffer, mode: number): Promise<void> {
  return replaceByRename(dir, name, mode, (handle) => handle.writeFile(content));
}

/** Opens a guest path for reading, as a regular file (or a directory); undefined when it does not exist. */
async function openGuest(root: string, guestPath: string, kind: 'file' | 'directory'): Promise<FileHandle | undefined> {
  const resolved = await resolveInRoot(root, guestPath);
  const hostPath = join(root, resolved);
  let handle: FileHandle;
  try {
    handle = await openBeneath(root, resolved, READ_FLAGS | (kind === 'directory' ? constants.O_DIRECTORY : 0), guestPath);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    // Absent, or a parent on the way is not a directory: nothing there either way.
    if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
    if (code === 'ELOOP') throw refused(guestPath, 'a symbolic link where none was a moment before');
    // A device node on a nodev mount: refused by the kernel, and by us.
    if (code === 'EACCES' || code === 'ENXIO' || code === 'EPERM') {
      const stats = await lstat(hostPath).catch(() => undefined);
      if (stats && !stats.isFile() && !stats.isDirectory()) throw refused(guestPath, describeType(stats));
    }
    throw error;
  }
  try {
    const stats = await handle.stat();
    if (kind === 'file' ? !stats.isFile() : !stats.isDirectory()) throw refused(guestPath, describeType(stats));
    await checkInside(root, handle, guestPath);
    return handle;
  } catch (error) {
    await handle.close();
    throw error;
  }
}

/**
 * Reads a guest file through once, at most `maxBytes` of it, keeping nothing: its pages are then in the page
 * cache for the guest program that runs it next, which would page it in by small faults, each a round trip through
 * the layer chain. Opened as readGuestFile opens (links resolved inside the guest); false when it is absent or
 * not a regular file. Stops early once `signal` is aborted.
 */
export async function readGuestThrough(root: string, guestPath: string, maxBytes: number, signal?: AbortSignal): Promise<boolean> {
  const handle = await openGuest(root, guestPath, 'file').catch(() => undefined);
  if (!handle) return false;
  try {
    const buffer = Buffer.allocUnsafe(Math.min(1 << 20, maxBytes));
    for (let total = 0; total < maxBytes && !signal?.aborted; ) {
      const { bytesRead } = await handle.read(buffer, 0, Math.min(buffer.length, maxBytes - total), null);
      if (bytesRead === 0) break;
      total += bytesRead;
    }
    return true;
  } finally {
    await handle.close();
  }
}

/**
 * A guest file's content, at most `maxBytes` of it (a larger file is refused, naming the cap); undefined when
 * the file does not exist.
 */
export async function readGuestFile(root: string, guestPath: string, maxBytes: number): Promise<Buffer | undefined> {
  const handle = await openGuest(root, guestPath, 'file');
  if (!handle) return undefined;
  try {
    const content = await readAtMost(handle, maxBytes);
    if (!content) throw tooLarge(guestPath, maxBytes);
    return content;
  } finally {
    await handle.close();
  }
}

/**
 * An open file read to its end, or undefined once it passes `maxBytes`: read to the end, not to the size stat
 * gave, so a file that grows meanwhile still stops at the cap; in chunks, so a large cap allocates nothing ahead.
 */
async function readAtMost(handle: FileHandle, maxBytes: number): Promise<Buffer | undefined> {
  const chunks: Buffer[] = [];
  let length = 0;
  for (;;) {
    const chunk = Buffer.alloc(Math.min(1 << 20, maxBytes + 1 - length));
    const { bytesRead } = await handle.read(chunk, 0, chunk.length, length);
    if (bytesRead === 0) break;
    chunks.push(chunk.subarray(0, bytesRead));
    length += bytesRead;
    if (length > maxBytes) return undefined;
  }
  return Buffer.concat(chunks, length);
}

function tooLarge(guestPath: string, maxBytes: number): ImageBuilderError {
  return new ImageBuilderError('BAD_INPUT', `the guest's ${guestPath} is larger than ${maxBytes} bytes, more than any real one; not read`, {
    hint: 'the image is damaged or crafted: repair that file in the image, or build from a trusted base image',
  });
}

/** Sets a guest file's access and modification time, on the regular file itself (opened as readGuestFile opens it: nothing followed onto the host). */
export async function setGuestFileTime(root: string, guestPath: string, time: Date): Promise<void> {
  const handle = await openGuest(root, guestPath, 'file');
  if (!handle) return;
  try {
    await handle.utimes(time, time);
  } finally {
    await handle.close();
  }
}

/** The first `length` bytes of a guest file (fewer when it is shorter); undefined when it does not exist. */
export async function readGuestHead(root: string, guestPath: string, length: number): Promise<Buffer | undefined> {
  const handle = await openGuest(root, guestPath, 'file');
  if (!handle) return undefined;
  try {
    const buffer = Buffer.alloc(length);
    const { bytesRead } = await handle.read(buffer, 0, length, 0);
    return buffer.subarray(0, bytesRead);
  } finally {
    await handle.close();
  }
}

/** A guest text file (UTF-8), capped as readGuestFile; undefined when it does not exist. */
export async function readGuestText(root: string, guestPath: string, maxBytes: number = GUEST_READ_LIMITS.config): Promise<string | undefined> {
  return (await readGuestFile(root, guestPath, maxBytes))?.toString('utf8');
}

/** The names in a guest directory, sorted; undefined when it does not exist or is not a directory. */
export async function readGuestDir(root: string, guestPath: string): Promise<string[] | undefined> {
  const handle = await openGuest(root, guestPath, 'directory').catch((error) => {
    if (error instanceof ImageBuilderError) return undefined; // not a directory: nothing to list
    throw error;
  });
  if (!handle) return undefined;
  try {
    // Listed through the open descriptor: what was checked is what is read.
    const names: string[] = [];
    for await (const entry of await opendir(`/proc/self/fd/${handle.fd}`)) {
      if (names.push(entry.name) > MAX_DIR_ENTRIES) throw tooManyEntries(guestPath);
    }
    return names.sort();
  } finally {
    await handle.close();
  }
}

/**
 * The most names a guest directory listing holds (the largest real ones, a package cache or /usr/lib, hold
 * thousands): a crafted filesystem's directory of millions of long names would otherwise be read into memory whole.
 */
export const MAX_DIR_ENTRIES = 100_000;

function tooManyEntries(guestPath: string): ImageBuilderError {
  return new ImageBuilderError('BAD_INPUT', `the guest's ${guestPath} holds more than ${MAX_DIR_ENTRIES} entries, more than the host lists`, {
    hint: 'the image is damaged or crafted; if a recipe step made them, have it remove them before it ends',
  });
}

/** The most entries walkGuestTree visits by default: a kernel's modules are ~1 500 to 10 000; a crafted tree is refused. */
export const MAX_TREE_ENTRIES = 500_000;
/** Entries walked between two turns of the event loop (signals, timeouts, a matrix's other builds). */
const WALK_BATCH = 2_000;

/**
 * Calls `onEntry` with every entry under a guest directory (itself first), depth first, names sorted, no symlink
 * followed; `skip` leaves an entry and everything below it out. Synchronous calls in batches: a kernel's modules
 * are thousands of entries walked before and after every step, and one event-loop round trip per lstat cost
 * ~100 ms a walk. Nothing is opened but directories, each O_NOFOLLOW|O_DIRECTORY and checked inside the root as
 * readGuestDir does; of everything else only lstat is read. An entry that cannot be read (gone, a directory
 * swapped meanwhile, a name too long) is left out, as readGuestDir leaves it. `topGuestPath` is resolved inside
 * the guest first.
 */
export async function walkGuestTree(
  root: string,
  topGuestPath: string,
  onEntry: (guestPath: string, stat: BigIntStats) => void,
  skip: (guestPath: string) => boolean = () => false,
  maxEntries = MAX_TREE_ENTRIES,
): Promise<void> {
  const top = await resolveInRoot(root, topGuestPath);
  const inside = await realRoot(root).catch(() => undefined);
  if (inside === undefined) return; // no root: nothing to walk
  const pending = [top];
  let walked = 0;
  while (pending.length) {
    const guestPath = pending.pop()!;
    if (skip(guestPath)) continue;
    let stat: BigIntStats | undefined;
    try {
      stat = lstatSync(join(root, guestPath), { bigint: true, throwIfNoEntry: false });
    } catch {
      continue;
    }
    if (!stat) continue;
    // The session's /sys or /dev, reached through a guest path: not the guest's, left out as unreadable.
    if (hostFilesystems.has(inside) && (await onHostFilesystem(inside, Number(stat.dev)))) continue;
    if (++walked > maxEntries) throw refused(topGuestPath, `a tree of more than ${maxEntries} entries`);
    onEntry(guestPath, stat);
    if (stat.isDirectory()) {
      const names = listDirectorySync(root, inside, guestPath);
      for (let i = names.length - 1; i >= 0; i--) pending.push(`${guestPath === '/' ? '' : guestPath}/${names[i]}`);
    }
    if (walked % WALK_BATCH === 0) await new Promise((resolve) => setImmediate(resolve));
  }
}

/** What a set of guest trees looked like: a digest of every entry's path, type, size and ctime, and the newest ctime. */
export interface GuestTreeState {
  digest: string;
  newestCtimeNs: bigint;
}

/**
 * Walks guest paths (walkGuestTree: no symlink followed, bounded) into a GuestTreeState; `skip` leaves entries out
 * by their guest path. Entries are hashed in the order of the walk (names sorted), so the digest does not depend
 * on timing.
 */
export async function guestTreeState(root: string, guestPaths: readonly string[], skip: (guestPath: string) => boolean = () => false): Promise<GuestTreeState> {
  const hash = createHash('sha256');
  let newestCtimeNs = 0n;
  for (const path of guestPaths) {
    await walkGuestTree(root, path, (guestPath, stat) => {
      hash.update(`${guestPath}\0${stat.mode}\0${stat.size}\0${stat.ctimeNs}\n`);
      if (stat.ctimeNs > newestCtimeNs) newestCtimeNs = stat.ctimeNs;
    }, skip);
  }
  return { digest: hash.digest('hex'), newestCtimeNs };
}

/** The sorted names in a guest directory, listed through a descriptor checked as openGuest checks one; [] when it cannot be. */
function listDirectorySync(root: string, inside: string, guestPath: string): string[] {
  let fd: number;
  try {
    fd = openSync(join(root, guestPath), READ_FLAGS | constants.O_DIRECTORY);
  } catch {
    // Gone, swapped for a link or a file meanwhile, a name too long: nothing to list, as readGuestDir says.
    return [];
  }
  try {
    const stat = fstatSync(fd);
    if (!stat.isDirectory() || hostDevs(inside).has(stat.dev)) return [];
    if (!isInside(inside, readlinkSync(`/proc/self/fd/${fd}`))) return [];
    const names: string[] = [];
    const dir = opendirSync(`/proc/self/fd/${fd}`);
    try {
      for (let entry = dir.readSync(); entry; entry = dir.readSync()) {
        if (names.push(entry.name) > MAX_DIR_ENTRIES) throw tooManyEntries(guestPath);
      }
    } finally {
      dir.closeSync();
    }
    return names.sort();
  } catch (error) {
    if (error instanceof ImageBuilderError) throw error;
    return [];
  } finally {
    closeSync(fd);
  }
}

export interface GuestWriteOptions {
  mode: number;
  uid?: number;
  gid?: number;
  /** Access and modification time; the write's own time when absent. */
  time?: Date;
  /**
   * true: flushed to disk before the rename. Not by default: a build that crashes leaves no image, and the
   * guest's filesystems are flushed before anything is made of them (frozen for a layer, unmounted for the
   * output). An fsync here cost ~50 ms, through the loop device and the FUSE export to the host's disk.
   */
  sync?: boolean;
}

/**
 * Writes a guest file from the host, atomically: missing parent directories are made (0755), the content goes
 * to a new file created O_EXCL|O_NOFOLLOW beside the target, and that is renamed over the target. Whatever was
 * at the target (a regular file, a symlink, planted or not) is replaced, never written through.
 */
export async function writeGuestFileFromHost(root: string, guestPath: string, content: string | Buffer, options: GuestWriteOptions): Promise<void> {
  await inParentBeneath(root, guestPath, true, (dir, name) =>
    replaceByRename(dir, name, options.mode, async (handle) => {
      await checkInside(root, handle, guestPath);
      await handle.writeFile(content);
      await handle.chmod(options.mode);
      if (options.uid !== undefined || options.gid !== undefined) await handle.chown(options.uid ?? 0, options.gid ?? 0);
      if (options.time) await handle.utimes(options.time, options.time);
      if (options.sync) await handle.sync();
    }),
  );
}

/**
 * `dir/name` made anew: a new file beside it (O_EXCL|O_NOFOLLOW), filled by `fill`, renamed over whatever the name
 * held (a link there is replaced, never written through); removed again if anything fails.
 */
async function replaceByRename(dir: string, name: string, mode: number, fill: (handle: FileHandle) => Promise<void>): Promise<void> {
  const partial = join(dir, `.${name}.imagebuilder-${randomBytes(6).toString('hex')}`);
  const handle = await open(partial, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW | constants.O_NOCTTY, mode);
  try {
    try {
      await fill(handle);
    } finally {
      await handle.close();
    }
    await rename(partial, join(dir, name));
  } catch (error) {
    await rm(partial, { force: true });
    throw error;
  }
}

/**
 * Makes a guest symlink (`target` as the guest reads it; never followed here), atomically as
 * writeGuestFileFromHost writes a file: missing parents are made (0755), the link is made under a new name
 * beside the target and renamed over it, so whatever was at that name is replaced, never written through.
 */
export async function writeGuestSymlink(root: string, guestPath: string, target: string): Promise<void> {
  await inParentBeneath(root, guestPath, true, async (dir, name) => {
    const partial = join(dir, `.${name}.imagebuilder-${randomBytes(6).toString('hex')}`);
    await symlink(target, partial);
    try {
      await rename(partial, join(dir, name));
    } catch (error) {
      await rm(partial, { force: true });
      throw error;
    }
  });
}

/** Removes a guest file (a symlink itself, never what it points to); nothing when it is absent. */
export async function removeGuestFile(root: string, guestPath: string): Promise<void> {
  await inParentBeneath(root, guestPath, false, (dir, name) => rm(join(dir, name), { force: true }));
}

/** Renames a guest path within its own directory, without following anything; undefined when it is absent. */
export async function moveAsideInGuest(root: string, guestPath: string): Promise<{ restore: () => Promise<void> } | undefined> {
  const parentGuest = await parentInGuest(root, guestPath);
  const moved = await inParentBeneath(root, guestPath, false, async (dir, name) => {
    if (!(await lstat(join(dir, name)).catch(() => undefined))) return undefined;
    const aside = `.${name}.imagebuilder-saved-${randomBytes(6).toString('hex')}`;
    await rename(join(dir, name), join(dir, aside));
    return { name, aside };
  });
  if (!moved) return undefined;
  const { name, aside } = moved;
  return {
    // The same directory, walked as it was resolved: a step that put a link in place of a parent is refused, not
    // followed. A parent a step removed took what was set aside with it: nothing is left to restore.
    restore: async () => {
      await inParentBeneath(root, posix.join(parentGuest, name), false, async (dir) => {
        // A directory a step left at that name goes too (its own filesystem only): what was there before comes back.
        await removeBeneath(dir, name, guestPath);
        await rename(join(dir, aside), join(dir, name));
      }, true);
    },
  };
}

/**
 * How deep a tree removeBeneath goes: it holds a descriptor per level, and a tree a step made 100,000 deep would
 * otherwise take every descriptor the build has, its releases' too.
 */
export const MAX_REMOVE_DEPTH = 256;

/**
 * Removes `name` from the held directory `dir` (a /proc/self/fd path): a file or link itself, a directory with
 * everything in it, each directory opened O_NOFOLLOW and refused when it is another filesystem (a mount a step
 * moved there: the session's /dev, say), never walked by path. Nothing when it is absent.
 */
async function removeBeneath(dir: string, name: string, guestPath: string, depth = 0, held = { names: 0 }): Promise<void> {
  const seen = await lstat(join(dir, name)).catch(() => undefined);
  if (!seen) return;
  if (!seen.isDirectory()) return rm(join(dir, name), { force: true });
  if (depth >= MAX_REMOVE_DEPTH) throw refused(guestPath, `a directory tree more than ${MAX_REMOVE_DEPTH} levels deep, which is not removed`);
  const handle = await open(join(dir, name), DIRECTORY_STEP_FLAGS);
  try {
    const opened = await handle.stat();
    if (opened.dev !== (await stat(dir)).dev || opened.ino !== seen.ino) throw refused(guestPath, 'a directory on another filesystem (a mount point), which is not removed');
    const inside = `/proc/self/fd/${handle.fd}`;
    // Streamed and bounded: a step's directory of millions of names is refused, not read into memory whole; so is
    // a tree of nested directories whose names, held together on the way down, would be as many.
    const names: string[] = [];
    for await (const entry of await opendir(inside)) {
      names.push(entry.name);
      if (++held.names > MAX_DIR_ENTRIES) throw tooManyEntries(guestPath);
    }
    for (const entry of names) await removeBeneath(inside, entry, guestPath, depth + 1, held);
    held.names -= names.length;
  } finally {
    await handle.close();
  }
  await rmdir(join(dir, name));
}

