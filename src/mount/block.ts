import { deviceNumbers } from '../util/devices.js';
import { open, readdir, readFile, stat } from 'node:fs/promises';
import { basename } from 'node:path';
import type { MountContext } from './backend.js';
import { noteHolding } from '../util/build-record.js';
import { ImageBuilderError } from '../util/errors.js';

export interface BlockFilesystem {
  device: string;
  type?: string;
  uuid?: string;
  label?: string;
  partUuid?: string;
  partLabel?: string;
}

/** A block device's size, from sysfs (512-byte sectors). */
export async function blockDeviceBytes(device: string): Promise<number> {
  return Number((await readFile(`/sys/class/block/${basename(device)}/size`, 'utf8')).trim()) * 512;
}

/** Partition devices of a disk as the kernel lists them in sysfs (loop0p1, nbd0p1 …), in order. */
export async function listPartitions(device: string, sysBlock = '/sys/block'): Promise<string[]> {
  const name = basename(device);
  const entries = await readdir(`${sysBlock}/${name}`).catch(() => [] as string[]);
  const partitions = entries.filter((entry) => entry.startsWith(name) && /p?\d+$/.test(entry.slice(name.length)));
  const numberOf = (entry: string) => Number(/(\d+)$/.exec(entry)![1]);
  return partitions.sort((a, b) => numberOf(a) - numberOf(b)).map((entry) => `/dev/${entry}`);
}

export { deviceNumbers };

/**
 * Makes the disk's partitions visible, as the disk's own table says. Most hosts scan a new loop or nbd device by
 * themselves; some (containers, these CI machines) need `partx -a`, which we undo with `partx -d` on release.
 * Partitions added with partx outlive their loop device, so a device number reused after someone else's build
 * can list stale ones: whatever is listed is dropped and the partitions are read from this disk's table.
 */
export async function ensurePartitions(context: MountContext, device: string): Promise<string[]> {
  // Partitions listed before we asked may be stale (see above): drop them and read this disk's table afresh.
  if ((await listPartitions(device)).length > 0) await context.run('partx', ['-d', device], { allowFailure: true, log: context.log });
  // partx reads the guest's partition table as data (offsets and sizes, which the kernel bounds by the disk's
  // size) and only asks the kernel to add partitions of this one device: nothing of the host is named.
  const table = await readPartitionTable(context, device);
  if (table.size) {
    // Registered before partx runs: an interrupt while it runs must not leave the partitions behind.
    context.cleanup.push(`partitions of ${device}`, async () => {
      await context.run('partx', ['-d', device], { allowFailure: true });
    });
    await context.run('partx', ['-a', device], { allowFailure: true, log: context.log });
  }
  const partitions = await listPartitions(device);
  await refuseForeignPartitions(device, partitions, table);
  // A partition's block device keeps its page cache across a loop device's reuse (the cache belongs to the device
  // number): blocks cached from the previous image would be read as this one's. Drop them before anything reads.
  await context.run('blockdev', ['--flushbufs', device, ...partitions], { allowFailure: true, log: context.log });
  for (const partition of partitions) {
    const [major, minor] = (await readFile(`/sys/class/block/${basename(partition)}/dev`, 'utf8')).trim().split(':').map(Number);
    const node = await stat(partition).catch(() => undefined);
    if (node?.isBlockDevice() && deviceNumbers(node.rdev).major === major && deviceNumbers(node.rdev).minor === minor) continue;
    // Without udev or devtmpfs the node may be missing. A node left by an earlier build may also name the
    // wrong device: partition minors are handed out dynamically, so a stale loop0p1 can be another build's disk.
    if (node) await context.run('rm', ['-f', partition], { log: context.log });
    // Noted and registered before it is made: a build killed (or interrupted) in between leaves no node unknown.
    await noteHolding(context.workDir, { kind: 'node', path: partition, disk: device });
    context.cleanup.push(`device node ${partition}`, async () => {
      await context.run('rm', ['-f', partition], { allowFailure: true });
    });
    await context.run('mknod', [partition, 'b', String(major), String(minor)], { log: context.log });
  }
  return partitions;
}

/** This disk's partition table as partx reads it: "NR START SECTORS" per partition; empty when it has none. */
async function readPartitionTable(context: MountContext, device: string): Promise<Set<string>> {
  const table = await context.run('partx', ['--show', '--noheadings', '-o', 'NR,START,SECTORS', device], { allowFailure: true });
  return new Set(table.exitCode === 0 ? table.stdout.trim().split('\n').filter(Boolean).map((line) => line.trim().split(/\s+/).join(' ')) : []);
}

/**
 * A partition the kernel still lists that is not in this disk's table (its number, start or size differ) is a
 * leftover partx could not remove because something still holds it (a mount in another namespace, say):
 * mounting it would mount someone else's filesystem. Say so instead of failing later with EBUSY.
 */
async function refuseForeignPartitions(device: string, partitions: string[], table: ReadonlySet<string>): Promise<void> {
  if (!partitions.length) return;
  const foreign: string[] = [];
  for (const partition of partitions) {
    const sysfs = `/sys/class/block/${basename(partition)}`;
    const [start, size] = await Promise.all(['start', 'size'].map((name) => readFile(`${sysfs}/${name}`, 'utf8').then((t) => t.trim(), () => '?')));
    if (!table.has(`${/(\d+)$/.exec(partition)![1]} ${start} ${size}`)) foreign.push(partition);
  }
  if (foreign.length) {
    throw new ImageBuilderError('ENVIRONMENT', `${device} still carries partition(s) from an earlier user that cannot be removed: ${foreign.join(', ')}`, {
      hint: `something still holds them (a mount, perhaps in another mount namespace: grep ${basename(foreign[0])} /proc/*/mountinfo); release it, then partx -d ${device}`,
    });
  }
}

export function parseBlkidExport(device: string, text: string): BlockFilesystem {
  const values = new Map<string, string>();
  for (const line of text.split('\n')) {
    const at = line.indexOf('=');
    if (at > 0) values.set(line.slice(0, at), line.slice(at + 1).replace(/\\(.)/g, '$1')); // blkid escapes spaces
  }
  return {
    device,
    type: values.get('TYPE'),
    uuid: values.get('UUID'),
    label: values.get('LABEL'),
    partUuid: values.get('PART_ENTRY_UUID') ?? values.get('PARTUUID'),
    partLabel: values.get('PART_ENTRY_NAME') ?? values.get('PARTLABEL'),
  };
}

/**
 * Probes each device directly (`blkid -p`, no cache), so what we see is what is on the disk now.
 * Host tool over guest data, and why that is safe: libblkid only reads superblock fields (type, UUID, label)
 * as data, in a process that writes nothing and runs no helper; its answer chooses among MOUNTABLE_TYPES only.
 * What it cannot protect is the kernel's own parsing of the filesystem once mounted: `--untrusted` moves that
 * into the libguestfs appliance.
 */
export async function probeFilesystems(context: MountContext, devices: string[]): Promise<BlockFilesystem[]> {
  return Promise.all(devices.map(async (device) => parseBlkidExport(device, (await context.run('blkid', ['-p', '-o', 'export', device], { allowFailure: true })).stdout)));
}

/**
 * Refuses an ext2/3/4 filesystem whose superblock names an external journal: a read-write mount has the kernel
 * open the host block device its `s_journal_dev` names, and e2fsck (--grow) searches every host block device for
 * its `s_journal_uuid` and opens it read-write, replaying that device's blocks into the guest and resetting it.
 * A cloud image's filesystems keep their journal inside (an inode); this reads the superblock (1 KiB at 1024)
 * from our own device, before either.
 */
export async function refuseExternalJournal(device: string): Promise<void> {
  const handle = await open(device, 'r');
  const superblock = Buffer.alloc(1024);
  try {
    await handle.read(superblock, 0, 1024, 1024);
  } finally {
    await handle.close();
  }
  if (superblock.readUInt16LE(0x38) !== 0xef53) return; // not ext: blkid said otherwise, mount will say
  const hasJournal = (superblock.readUInt32LE(0x5c) & 0x4) !== 0;
  const journalUuid = superblock.subarray(0xd0, 0xe0);
  const journalInode = superblock.readUInt32LE(0xe0);
  const journalDevice = superblock.readUInt32LE(0xe4);
  if (hasJournal && (journalInode === 0 || journalUuid.some((byte) => byte !== 0) || journalDevice !== 0)) {
    throw new ImageBuilderError('BAD_INPUT', `${device} is an ext filesystem whose journal is on another device (journal uuid ${journalUuid.toString('hex')}, device ${journalDevice}): the host would open a disk of its own as that journal`, {
      hint: 'give the filesystem an internal journal first (tune2fs -O ^has_journal, then tune2fs -j, on a copy of the image), or build from a trusted base image',
    });
  }
}
