import { readdir, readFile } from 'node:fs/promises';
import { basename } from 'node:path';
import type { MountContext } from './backend.js';
import { exists } from '../util/fs.js';

export interface BlockFilesystem {
  device: string;
  type?: string;
  uuid?: string;
  label?: string;
  partUuid?: string;
  partLabel?: string;
}

/** Partition devices of a disk as the kernel lists them in sysfs (loop0p1, nbd0p1 …), in order. */
export async function listPartitions(device: string, sysBlock = '/sys/block'): Promise<string[]> {
  const name = basename(device);
  const entries = await readdir(`${sysBlock}/${name}`).catch(() => [] as string[]);
  const partitions = entries.filter((entry) => entry.startsWith(name) && /p?\d+$/.test(entry.slice(name.length)));
  const numberOf = (entry: string) => Number(/(\d+)$/.exec(entry)![1]);
  return partitions.sort((a, b) => numberOf(a) - numberOf(b)).map((entry) => `/dev/${entry}`);
}

/**
 * Makes the disk's partitions visible. Most hosts scan a new loop or nbd device by themselves; some
 * (containers, these CI machines) need `partx -a`, which we undo with `partx -d` on release.
 */
export async function ensurePartitions(context: MountContext, device: string): Promise<string[]> {
  let partitions = await listPartitions(device);
  if (partitions.length === 0) {
    const added = await context.run('partx', ['-a', device], { allowFailure: true, log: context.log });
    // A filesystem on the whole disk has no partition table: partx says so and that is fine.
    if (added.exitCode === 0) {
      context.cleanup.push(`partitions of ${device}`, async () => {
        await context.run('partx', ['-d', device], { allowFailure: true });
      });
    }
    partitions = await listPartitions(device);
  }
  for (const partition of partitions) {
    if (!(await exists(partition))) {
      // Without udev or devtmpfs the node may be missing; create it from sysfs and remove it afterwards.
      const [major, minor] = (await readFile(`/sys/class/block/${basename(partition)}/dev`, 'utf8')).trim().split(':');
      await context.run('mknod', [partition, 'b', major, minor], { log: context.log });
      context.cleanup.push(`device node ${partition}`, async () => {
        await context.run('rm', ['-f', partition], { allowFailure: true });
      });
    }
  }
  return partitions;
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

/** Probes each device directly (`blkid -p`, no cache), so what we see is what is on the disk now. */
export async function probeFilesystems(context: MountContext, devices: string[]): Promise<BlockFilesystem[]> {
  const found: BlockFilesystem[] = [];
  for (const device of devices) {
    const result = await context.run('blkid', ['-p', '-o', 'export', device], { allowFailure: true });
    found.push(parseBlkidExport(device, result.stdout));
  }
  return found;
}
