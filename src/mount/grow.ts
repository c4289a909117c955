import { readFile, realpath, statfs } from 'node:fs/promises';
import { basename } from 'node:path';
import type { MountContext } from './backend.js';
import { blockDeviceBytes, refuseExternalJournal } from './block.js';
import type { GuestLayout } from './layout.js';
import { ImageBuilderError } from '../util/errors.js';
import { formatBytes } from '../util/size.js';

/** What growing the root did: its device, and the filesystem's size before and after (bytes). */
export interface GrowResult {
  device: string;
  filesystem: string;
  bytesBefore: number;
  bytesAfter: number;
}

async function filesystemBytes(path: string): Promise<number> {
  const stats = await statfs(path);
  return Number(stats.blocks) * Number(stats.bsize);
}

/** The disk and partition number of a partition device (loop0p2 → /dev/loop0, 2), from sysfs; undefined for a whole disk. */
async function partitionOf(device: string): Promise<{ disk: string; number: number } | undefined> {
  const sysfs = `/sys/class/block/${basename(device)}`;
  const number = await readFile(`${sysfs}/partition`, 'utf8').then((text) => Number(text.trim()), () => undefined);
  if (number === undefined) return undefined;
  return { disk: `/dev/${basename(await realpath(`${sysfs}/..`))}`, number };
}

interface SfdiskTable {
  partitiontable: { label: 'gpt' | 'dos' | string; partitions?: { node: string; start: number; size: number }[] };
}

/**
 * Grows the partition holding the root to the end of its disk, which has just been made bigger. Only the last
 * partition can grow in place: one that something follows is refused, naming what follows. sfdisk reads and
 * writes the partition table as data (util-linux; nothing of the guest runs): on GPT the backup header moves to
 * the disk's new end first. The kernel is told the partition's new size (partx --update), which it takes while
 * the filesystem is mounted.
 */
export async function growPartition(context: MountContext, device: string, disk: string, number: number): Promise<void> {
  const listed = await context.run('sfdisk', ['--json', disk], { log: context.log, purpose: 'reading the partition table' });
  const table = (JSON.parse(listed.stdout) as SfdiskTable).partitiontable;
  const partitions = table.partitions ?? [];
  const root = partitions.find((p) => Number(/(\d+)$/.exec(p.node)?.[1]) === number);
  if (!root) throw new ImageBuilderError('BAD_INPUT', `--grow: partition ${number} of ${disk} is not in its partition table`);
  const after = partitions.filter((p) => p.start > root.start);
  if (after.length) {
    throw new ImageBuilderError('BAD_INPUT', `--grow: the root filesystem's partition (${number}) is not the last on the disk: partition ${after.map((p) => /(\d+)$/.exec(p.node)?.[1]).join(', ')} follows it`, {
      hint: 'only the last partition can grow in place; this image needs its layout changed by other means',
    });
  }
  if (table.label === 'dos' && number > 4) throw new ImageBuilderError('BAD_INPUT', `--grow: the root filesystem is on a logical partition (${number}); only primary partitions are grown`);
  if (table.label === 'gpt') await context.run('sfdisk', ['--relocate', 'gpt-bak-std', disk], { log: context.log, purpose: 'moving the GPT backup header to the end of the grown disk' });
  // `, +`: this partition's start unchanged, its size as large as the space after it allows.
  await context.run('sfdisk', ['--no-reread', '--no-tell-kernel', '--force', '-N', String(number), disk], { input: ', +\n', log: context.log, purpose: `growing partition ${number} to the end of the disk` });
  await context.run('partx', ['--update', '--nr', String(number), disk], { log: context.log, purpose: 'telling the kernel the partition grew' });
  context.log.debug(`--grow: ${device} now fills ${disk}`);
}

/**
 * Grows the guest's root into a virtual disk made bigger before it was attached (`--grow`), in two halves around
 * the root's mount: before it, the root's partition to the end of the disk (when it is the last; a filesystem on
 * the whole disk needs no partition change) and an ext2/3/4 filesystem offline (`e2fsck -f -p`, then
 * `resize2fs`: growing a mounted ext4 needs CAP_SYS_RESOURCE, which containers often lack); after it, xfs
 * (`xfs_growfs`, online only) and btrfs (`btrfs filesystem resize max`). These tools read the guest's
 * superblocks as data, as mounting it does; nothing of the guest runs.
 */
export function rootGrower(context: MountContext) {
  let before: { device: string; type: string; bytes: number } | undefined;
  return {
    async beforeMount(root: { device: string; type: string }): Promise<void> {
      if (!GROWN_TYPES.includes(root.type)) throw new ImageBuilderError('BAD_INPUT', `--grow: the root filesystem is ${root.type}, which is not grown (${GROWN_TYPES.join(', ')} are)`);
      before = { ...root, bytes: await blockDeviceBytes(root.device) };
      const partition = await partitionOf(root.device);
      if (partition) await growPartition(context, root.device, partition.disk, partition.number);
      if (root.type.startsWith('ext')) {
        await refuseExternalJournal(root.device);
        // Preen: fixes what is safe to fix unasked, fails on anything else (exit 4 and up) rather than guess.
        const check = await context.run('e2fsck', ['-f', '-p', root.device], { allowFailure: true, log: context.log, purpose: 'checking the root filesystem before it grows' });
        if (check.exitCode >= 4) throw new ImageBuilderError('BAD_INPUT', `--grow: the root filesystem (${root.device}) has errors e2fsck will not fix unasked (exit ${check.exitCode})`, { detail: check.output.trim() });
        await context.run('resize2fs', [root.device], { log: context.log, purpose: `growing the root filesystem (${root.type})` });
      }
    },
    async afterMount(layout: GuestLayout): Promise<GrowResult> {
      const root = layout.mounts[0];
      if (!before || !root || root.type === 'guestmount') {
        throw new ImageBuilderError('BAD_INPUT', '--grow needs the guest\'s block device, which the guestmount backend does not give', { hint: 'use the nbd or fuse mount backend (--mount-backend)' });
      }
      if (root.type === 'xfs') await context.run('xfs_growfs', [root.hostPath], { log: context.log, purpose: 'growing the root filesystem (xfs)' });
      if (root.type === 'btrfs') await context.run('btrfs', ['filesystem', 'resize', 'max', root.hostPath], { log: context.log, purpose: 'growing the root filesystem (btrfs)' });
      const bytesAfter = await filesystemBytes(root.hostPath);
      context.log.info(`--grow: the root filesystem (${root.type}) grew into ${formatBytes(await blockDeviceBytes(root.device))} (its partition was ${formatBytes(before.bytes)}), ${formatBytes(bytesAfter)} usable`);
      return { device: root.device, filesystem: root.type, bytesBefore: before.bytes, bytesAfter };
    },
  };
}

const GROWN_TYPES = ['ext2', 'ext3', 'ext4', 'xfs', 'btrfs'];

/** Below this much room left (or 1 % of the filesystem, whichever is more), a failed step is taken to have run out. */
const FULL_BELOW_BYTES = 32 * 2 ** 20;

/** What apt says a transaction needs: "After this operation, 412 MB of additional disk space will be used." */
export function spaceAptWanted(text: string): number | undefined {
  const match = /After this operation, ([\d.,]+) ([kMG]B) of additional disk space will be used/.exec(text);
  if (!match) return undefined;
  const unit = { kB: 1e3, MB: 1e6, GB: 1e9 }[match[2] as 'kB' | 'MB' | 'GB'];
  return Number(match[1].replace(/,/g, '')) * unit;
}

/**
 * A step that failed on a full guest filesystem is said as such, with the room to give: instead of "No space
 * left on device" from the middle of dpkg, which filesystem is full, what is left of it, and `--grow +SIZE`
 * (apt's own figure for what the transaction needs, when it gave one, with a quarter more; else 1 GiB).
 * Any other failure comes back as it was.
 */
export async function explainFullDisk(error: unknown, layout: GuestLayout): Promise<unknown> {
  if (!(error instanceof ImageBuilderError) || error.code !== 'STEP_FAILED') return error;
  for (const mount of layout.mounts) {
    const stats = await statfs(mount.hostPath).catch(() => undefined);
    if (!stats) continue;
    const size = Number(stats.blocks) * Number(stats.bsize);
    const left = Number(stats.bavail) * Number(stats.bsize);
    if (left >= Math.max(FULL_BELOW_BYTES, size / 100)) continue;
    const wanted = spaceAptWanted(`${error.message}\n${error.detail ?? ''}`);
    const add = wanted ? Math.ceil((wanted * 1.25) / 2 ** 28) * 2 ** 28 : 2 ** 30;
    return new ImageBuilderError('STEP_FAILED', `${error.message}: the guest's ${mount.path} is full (${formatBytes(left)} left of ${formatBytes(size)})`, {
      detail: error.detail,
      hint: `give the image room before the steps: --grow +${formatBytes(add).replace(' GiB', 'G').replace(' MiB', 'M')} (or disk: { size: … } in the recipe)${wanted ? `; apt said it needs ${formatBytes(wanted)} more` : ''}${mount.path === '/' ? '' : `, if ${mount.path} is on the last partition`}`,
      cause: error,
    });
  }
  return error;
}
