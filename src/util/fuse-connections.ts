import { readFile, stat, writeFile } from 'node:fs/promises';
import { exists } from './fs.js';

/** The kernel's FUSE control filesystem: one directory per connection, named by its device's minor number. */
export const FUSE_CONNECTIONS = '/sys/fs/fuse/connections';

/** glibc's dev_t split into major and minor (sys/sysmacros.h). */
function splitDevice(dev: bigint): { major: bigint; minor: bigint } {
  return { major: ((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn), minor: (dev & 0xffn) | ((dev >> 12n) & ~0xffn) };
}

/**
 * The FUSE connection serving `path` (our own export's mount point), or undefined when it is not on FUSE. A FUSE
 * superblock has an anonymous device (major 0) whose minor names its directory under FUSE_CONNECTIONS.
 */
export async function fuseConnectionOf(path: string): Promise<number | undefined> {
  const { major, minor } = splitDevice((await stat(path, { bigint: true })).dev);
  if (major !== 0n || !(await exists(`${FUSE_CONNECTIONS}/${minor}`))) return undefined;
  return Number(minor);
}

/** FUSE connections mounted somewhere in our mount namespace (mountinfo's third field is the device). */
export async function visibleFuseConnections(): Promise<Set<number>> {
  const connections = new Set<number>();
  for (const line of (await readFile('/proc/self/mountinfo', 'utf8')).split('\n')) {
    const [device] = line.split(' ').slice(2, 3);
    const type = line.split(' - ')[1]?.split(' ')[0] ?? '';
    if (/^fuse(\.|$|blk)/.test(type) && device?.startsWith('0:')) connections.add(Number(device.slice(2)));
  }
  return connections;
}

/** Ends a connection as its server's death would: every request waiting on it, and every later one, fails. */
export async function abortFuseConnection(connection: number): Promise<void> {
  await writeFile(`${FUSE_CONNECTIONS}/${connection}/abort`, '1');
}
