import { constants } from 'node:fs';
import { open, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { deviceNumbers } from './devices.js';
import type { Runner } from './exec.js';
import { mountTable } from './mounts.js';

/**
 * The kernel's FUSE control filesystem (fusectl): one directory per connection, named by the minor of its
 * superblock's anonymous device, with an `abort` file. Hosts mount it here; a container's /sys usually has none.
 */
export const FUSE_CONTROL = '/sys/fs/fuse/connections';

export interface FuseConnection {
  connection: number;
  /**
   * The inode of its `abort` file (fusectl has one superblock, so the same in every mount of it): a number the
   * kernel gives a later connection with the same minor is a new file with another inode.
   */
  abortInode?: number;
}

/** Where fusectl is mounted in our namespace, if anywhere. */
async function fuseControlMount(): Promise<string | undefined> {
  return (await mountTable()).find((mount) => mount.type === 'fusectl')?.target;
}

/** The FUSE connection of our own export mounted at `path` (undefined when it is not an anonymous device's). */
export async function fuseConnectionOf(path: string): Promise<FuseConnection | undefined> {
  const { major, minor } = deviceNumbers((await stat(path, { bigint: true })).dev);
  if (major !== 0) return undefined;
  const control = await fuseControlMount();
  const abort = control ? await stat(join(control, String(minor), 'abort')).catch(() => undefined) : undefined;
  return { connection: minor, ...(abort ? { abortInode: abort.ino } : {}) };
}

/** FUSE connections mounted somewhere in our mount namespace. */
export async function visibleFuseConnections(): Promise<Set<number>> {
  const fuse = (await mountTable()).filter((mount) => /^fuse(\.|blk$|$)/.test(mount.type) && mount.device.startsWith('0:'));
  return new Set(fuse.map((mount) => Number(mount.device.slice(2))));
}

/**
 * fusectl's directory: `control` when given (tests), where it is mounted, or else mounted where hosts mount it at
 * boot (a container's own /sys lacks it; the mount stays, as on a host, and goes with the container).
 */
export async function fuseControlDir(run: Runner, control?: string): Promise<string> {
  const existing = control ?? (await fuseControlMount());
  if (existing) return existing;
  await run('mount', ['-t', 'fusectl', 'fusectl', FUSE_CONTROL], { purpose: 'mounting the FUSE control filesystem', hint: 'is the fuse module loaded (/sys/fs/fuse/connections exists)?' });
  return FUSE_CONTROL;
}

const errorCode = (error: unknown) => (error as NodeJS.ErrnoException).code;

/**
 * Aborts a connection as its server's death would: every request waiting on it, and every later one, fails.
 * Only while `stillOurs()` says so, and only the connection whose abort file has the inode noted: 'gone' when
 * there is no such connection any more (its server finished exiting meanwhile), 'not ours' when the number
 * now names another.
 */
export async function abortFuseConnection(control: string, noted: FuseConnection, stillOurs: () => boolean): Promise<'aborted' | 'gone' | 'not ours'> {
  const file = await open(join(control, String(noted.connection), 'abort'), constants.O_WRONLY).catch((error: unknown) => {
    if (errorCode(error) === 'ENOENT') return undefined;
    throw error;
  });
  if (!file) return 'gone';
  try {
    if (noted.abortInode !== undefined && (await file.stat()).ino !== noted.abortInode) return 'not ours';
    if (!stillOurs()) return 'gone';
    await file.write('1');
    return 'aborted';
  } catch (error) {
    // The connection went between the open and the write.
    if (['ENOENT', 'ENODEV', 'ENOTCONN'].includes(errorCode(error) ?? '') && !stillOurs()) return 'gone';
    throw error;
  } finally {
    await file.close();
  }
}
