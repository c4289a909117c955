import { constants } from 'node:fs';
import { lstat, mkdir, open, opendir, readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { MountContext } from './backend.js';
import { listPartitions, probeFilesystems, refuseExternalJournal, type BlockFilesystem } from './block.js';
import { ImageBuilderError } from '../util/errors.js';
import { exists, resolveInRoot } from '../util/fs.js';
import { MAX_DIR_ENTRIES, readGuestText } from '../util/guest-fs.js';
import { isMounted } from '../util/mounts.js';

export interface FstabEntry {
  line: number;
  spec: string;
  path: string;
  type: string;
  options: string[];
}

export interface GuestMount {
  device: string;
  path: string;
  type: string;
  hostPath: string;
  /** The mount options that select what of the filesystem is mounted (a btrfs subvolume), when any. */
  selecting?: string[];
}

export interface GuestLayout {
  /** Host directory where the guest's / is mounted. */
  root: string;
  /** Every guest filesystem mounted, root first, in mount order. */
  mounts: GuestMount[];
  /** The attached disk (block backends). */
  disk?: string;
  /** What else the disk holds, as blkid reads it: swap, filesystems not mounted (not in the fstab, or not mountable here). */
  unmounted?: BlockFilesystem[];
}

/**
 * The only filesystems imagebuilder mounts, whatever the guest says: its type is what blkid reads in the
 * filesystem's own superblock, never the type an fstab line names (a guest fstab saying `debugfs`, `tracefs`,
 * `securityfs`, `binfmt_misc`, `configfs` or `bpf` would otherwise put the host kernel's own filesystems inside
 * the guest). The fstab only says where.
 */
export const MOUNTABLE_TYPES = new Set(['ext2', 'ext3', 'ext4', 'xfs', 'btrfs', 'vfat']);
const ROOT_CANDIDATE_TYPES = new Set(['ext2', 'ext3', 'ext4', 'xfs', 'btrfs']);
/** fstab types that are not on the disk: API filesystems the chroot session provides, network filesystems. */
const VIRTUAL_TYPES = new Set(['proc', 'sysfs', 'tmpfs', 'devpts', 'devtmpfs', 'none', 'bind', 'cgroup', 'cgroup2', 'efivarfs', 'nfs', 'nfs4', 'cifs']);
/** Types the ext4 driver mounts. */
const EXT_TYPES = new Set(['ext2', 'ext3', 'ext4']);

export function parseFstab(text: string): FstabEntry[] {
  const entries: FstabEntry[] = [];
  text.split('\n').forEach((raw, index) => {
    const line = raw.replace(/#.*/, '').trim();
    if (!line) return;
    const [spec, path, type = 'auto', options = 'defaults'] = line.split(/\s+/);
    if (!path) return;
    // fstab escapes spaces in paths as \040
    const unescape = (value: string) => value.replace(/\\([0-7]{3})/g, (_, octal) => String.fromCharCode(parseInt(octal, 8)));
    entries.push({ line: index + 1, spec: unescape(spec), path: unescape(path), type, options: options.split(',') });
  });
  return entries;
}

/** Finds the filesystem an fstab spec names among the ones on this disk. */
export function resolveSpec(spec: string, filesystems: BlockFilesystem[]): BlockFilesystem | undefined {
  const byPath = /^\/dev\/disk\/by-(uuid|label|partuuid|partlabel)\/(.+)$/.exec(spec);
  const tagged = /^(UUID|LABEL|PARTUUID|PARTLABEL)=(.+)$/.exec(spec);
  const [key, rawValue] = byPath ? [byPath[1].toUpperCase(), byPath[2]] : tagged ? [tagged[1], tagged[2]] : [];
  if (!key) return undefined;
  // udev escapes by-label names (\x20 for a space); fstab values may be quoted.
  const value = rawValue!.replace(/^"(.*)"$/, '$1').replace(/\\x([0-9a-f]{2})/gi, (_, hex) => String.fromCharCode(parseInt(hex, 16)));
  const same = (a: string | undefined) => a !== undefined && (key === 'LABEL' || key === 'PARTLABEL' ? a === value : a.toLowerCase() === value.toLowerCase());
  return filesystems.find((fs) =>
    key === 'UUID' ? same(fs.uuid) : key === 'LABEL' ? same(fs.label) : key === 'PARTUUID' ? same(fs.partUuid) : same(fs.partLabel),
  );
}

/**
 * Options every guest filesystem is mounted with. nodev: a device node shipped in the image (a host disk's
 * major:minor, /dev/mem's) is inert. nosuid: a setuid program in the image gains nothing. ext2/3/4: errors are
 * remount-ro whatever the superblock asks (a crafted `errors=panic` must not panic the build host).
 */
export function guestMountOptions(type: string): string[] {
  return ['nodev', 'nosuid', ...(EXT_TYPES.has(type) ? ['errors=remount-ro'] : [])];
}

/** Options for a read-only probe: nothing is written, so no journal or log is replayed either. */
export function probeMountOptions(type: string): string[] {
  const noReplay = type === 'btrfs' ? ['subvolid=5', 'rescue=nologreplay'] : type === 'xfs' ? ['nouuid', 'norecovery'] : EXT_TYPES.has(type) ? ['noload'] : [];
  return ['ro', 'noexec', ...guestMountOptions(type), ...noReplay];
}

function mountOptions(type: string, fstabOptions: string[] = []): string[] {
  // Of the fstab's options, only what changes what we see: btrfs subvolumes. xfs refuses a second mount of the
  // same UUID (the base image may be attached elsewhere) unless told nouuid.
  const kept = type === 'btrfs' ? fstabOptions.filter((option) => /^subvol(id)?=[^,]+$/.test(option)) : [];
  if (type === 'xfs') kept.push('nouuid');
  return [...guestMountOptions(type), ...kept];
}

async function mountFs(context: MountContext, device: string, target: string, type: string, options: string[], readOnly: boolean) {
  if (!MOUNTABLE_TYPES.has(type)) throw new ImageBuilderError('INTERNAL', `refusing to mount ${device} as ${type}: not one of ${[...MOUNTABLE_TYPES].join(', ')}`);
  if (EXT_TYPES.has(type)) await refuseExternalJournal(device);
  const all = [...(readOnly && !options.includes('ro') ? ['ro'] : []), ...options];
  // -i: no /sbin/mount.<type> helper runs; the kernel alone mounts what blkid found.
  await context.run('mount', ['-i', '-t', type, ...(all.length ? ['-o', all.join(',')] : []), device, target], {
    log: context.log,
    purpose: `mounting ${device} on ${target}`,
  });
}

async function umount(context: MountContext, target: string) {
  const result = await context.run('umount', [target], { allowFailure: true });
  if (result.exitCode !== 0) {
    // A process we could not kill still holds it: detach it lazily rather than leave the host stuck, and fail:
    // data still unwritten to the disk would be missing from the output.
    await context.run('umount', ['--lazy', target], { allowFailure: true });
    throw new ImageBuilderError('COMMAND_FAILED', `umount ${target} failed (${result.output.trim()}); it was detached lazily`, {
      hint: 'a process outside imagebuilder held the guest filesystem (`fuser -vm` lists them); run the build again',
    });
  }
}

/**
 * Waits until no mount anywhere holds these devices. A process that made its own mount namespace while the guest
 * was mounted (another build's chroot command, `unshare --mount`) keeps a copy of the guest's mounts: our umount
 * succeeds, yet the filesystem lives on in that copy and writes back later, after the disk is gone. The kernel
 * refuses an exclusive open of a block device that is mounted anywhere, so that is the test.
 */
async function waitUntilReleased(context: MountContext, devices: string[], timeoutMs = 60000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (const device of new Set(devices)) {
    for (let said = false; ; ) {
      const handle = await open(device, constants.O_RDONLY | constants.O_EXCL).catch((error: NodeJS.ErrnoException) => (error.code === 'EBUSY' ? undefined : null));
      if (handle !== undefined) {
        await handle?.close();
        break;
      }
      if (Date.now() > deadline) {
        throw new ImageBuilderError('COMMAND_FAILED', `${device} is still mounted in another mount namespace after it was unmounted here`, {
          hint: 'a process started while the guest was mounted (`unshare --mount`, another build\'s command) holds a copy of its mounts; nothing was written. Run the build again once it has exited',
        });
      }
      if (!said) context.log.info(`waiting for ${device} to be released by another mount namespace`);
      said = true;
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  }
}

async function hasOsRelease(dir: string): Promise<boolean> {
  // lstat, not stat: /etc/os-release is usually a relative symlink into /usr/lib, dangling from the host's view.
  for (const [parent, name] of [['/etc', 'os-release'], ['/usr/lib', 'os-release']]) {
    if (await exists(join(dir, await resolveInRoot(dir, parent), name))) return true;
  }
  return false;
}

interface RootCandidate {
  fs: BlockFilesystem;
  options: string[];
}

/** The most fstab entries mounted (a real fstab has a handful; each is a mount(8) and a release). */
const MAX_FSTAB_MOUNTS = 64;

/** The root filesystem is the one holding /etc/os-release (for btrfs: at the top or in a top-level subvolume). */
async function findRoot(context: MountContext, filesystems: BlockFilesystem[]): Promise<RootCandidate> {
  const probe = join(context.workDir, 'probe');
  await mkdir(probe, { recursive: true });
  const seen: string[] = [];
  for (const fs of filesystems) {
    if (!fs.type || !ROOT_CANDIDATE_TYPES.has(fs.type)) {
      seen.push(`${fs.device}: ${fs.type ?? 'no filesystem'}`);
      continue;
    }
    await mountFs(context, fs.device, probe, fs.type, probeMountOptions(fs.type), true);
    try {
      if (await hasOsRelease(probe)) return { fs, options: mountOptions(fs.type) };
      if (fs.type === 'btrfs') {
        // Streamed and bounded: a top level of millions of names is not read into memory (a real one holds a few).
        let seenEntries = 0;
        for await (const dirent of await opendir(probe)) {
          if (++seenEntries > MAX_DIR_ENTRIES) break;
          const entry = dirent.name;
          const stat = await lstat(join(probe, entry));
          if (stat.isDirectory() && stat.ino === 256 && (await hasOsRelease(join(probe, entry)))) {
            return { fs, options: mountOptions(fs.type, [`subvol=${entry}`]) }; // inode 256 marks a subvolume root
          }
        }
      }
      seen.push(`${fs.device}: ${fs.type} without /etc/os-release`);
    } finally {
      await umount(context, probe);
    }
  }
  throw new ImageBuilderError('BAD_INPUT', 'no root filesystem found in the image (none holds /etc/os-release)', {
    detail: seen.join('\n') || 'no partitions or filesystems found',
    hint: 'is this a bootable OS disk image? LVM guests need --mount-backend guestmount',
  });
}

async function kernelFilesystems(): Promise<Set<string>> {
  const text = await readFile('/proc/filesystems', 'utf8');
  return new Set(text.split('\n').map((line) => line.split('\t').pop()!.trim()).filter(Boolean));
}

/**
 * Mounts the guest the way it would mount itself: root first, then what its /etc/fstab lists, in path order.
 * An entry this host cannot mount is a warning naming the entry; swap and virtual entries are skipped.
 */
export async function mountGuestLayout(
  context: MountContext,
  device: string,
  readOnly: boolean,
  /** Runs once the root filesystem is known, before anything is mounted (--grow resizes it there). */
  beforeRootMount?: (root: { device: string; type: string }) => Promise<void>,
): Promise<GuestLayout> {
  const partitions = await listPartitions(device);
  const filesystems = await probeFilesystems(context, partitions.length ? partitions : [device]);
  const root = await findRoot(context, filesystems);
  await beforeRootMount?.({ device: root.fs.device, type: root.fs.type! });
  const rootDir = join(context.workDir, 'root');
  await mkdir(rootDir, { recursive: true });
  // Released after every guest filesystem is unmounted: the disk goes only once nothing holds them anywhere.
  const mounts: GuestMount[] = [];
  context.cleanup.push('guest filesystems released', () => waitUntilReleased(context, mounts.map((m) => m.device)));
  // Registered before the mount (an interrupt while mount runs must not leave it), so it checks there is one.
  context.cleanup.push(`mount ${rootDir}`, async () => void ((await isMounted(rootDir)) && (await umount(context, rootDir))));
  await mountFs(context, root.fs.device, rootDir, root.fs.type!, root.options, readOnly);
  // What tells this guest's root apart (a subvolume, nouuid); every guest mount has guestMountOptions.
  const telling = root.options.filter((option) => !guestMountOptions(root.fs.type!).includes(option));
  const selecting = telling.filter((option) => /^subvol(id)?=/.test(option));
  mounts.push({ device: root.fs.device, path: '/', type: root.fs.type!, hostPath: rootDir, ...(selecting.length ? { selecting } : {}) });
  context.log.info(`guest root: ${root.fs.device} (${root.fs.type}${telling.length ? `, ${telling.join(',')}` : ''})`);

  const fstabText = (await readGuestText(rootDir, '/etc/fstab')) ?? '';
  const entries = parseFstab(fstabText)
    .filter((entry) => entry.path !== '/')
    .sort((a, b) => a.path.split('/').length - b.path.split('/').length || a.path.localeCompare(b.path));
  const supported = await kernelFilesystems();
  const targets = new Set([rootDir]);
  for (const entry of entries) {
    const where = `/etc/fstab:${entry.line} (${entry.spec} ${entry.path} ${entry.type})`;
    if (entry.type === 'swap' || entry.path === 'none') continue;
    if (VIRTUAL_TYPES.has(entry.type)) continue;
    if (entry.options.includes('noauto')) {
      context.log.info(`not mounting ${where}: noauto`);
      continue;
    }
    const fs = resolveSpec(entry.spec, filesystems);
    if (!fs) {
      context.log.warn(`cannot mount ${where}: no filesystem on this disk matches ${entry.spec}; steps writing under ${entry.path} write into the root filesystem`);
      continue;
    }
    // The superblock says what it is; the fstab line may only agree (ext2/3/4 are one driver's).
    const type = fs.type;
    const agrees = entry.type === 'auto' || entry.type === type || (EXT_TYPES.has(entry.type) && type !== undefined && EXT_TYPES.has(type));
    if (!type || !MOUNTABLE_TYPES.has(type) || !agrees) {
      context.log.warn(`not mounting ${where}: ${fs.device} holds ${type ?? 'no filesystem'}${agrees ? '' : ` (the line says ${entry.type})`}; imagebuilder mounts only ${[...MOUNTABLE_TYPES].join(', ')}, as their superblocks say; steps writing under ${entry.path} write into the root filesystem`);
      continue;
    }
    if (!supported.has(type)) {
      context.log.warn(`cannot mount ${where}: this host's kernel has no ${type ?? 'known'} filesystem support; steps writing under ${entry.path} write into the root filesystem`);
      continue;
    }
    if (targets.size > MAX_FSTAB_MOUNTS) {
      context.log.warn(`not mounting ${where}: the fstab asks for more than ${MAX_FSTAB_MOUNTS} mounts, more than any real one; steps writing under ${entry.path} write into the root filesystem`);
      continue;
    }
    // Where the line leads inside the guest, normalized: `/.`, `//` or a link to / is the root itself, which a
    // mount there would cover (and its release by that name would miss); a place already mounted is not mounted twice.
    const target = resolve(rootDir, `.${await resolveInRoot(rootDir, entry.path)}`);
    if (targets.has(target)) {
      context.log.warn(`not mounting ${where}: it leads to ${target === rootDir ? 'the root itself' : 'a place already mounted'}; steps writing under ${entry.path} write into what is mounted there`);
      continue;
    }
    targets.add(target);
    await mkdir(target, { recursive: true });
    context.cleanup.push(`mount ${target}`, async () => void ((await isMounted(target)) && (await umount(context, target))));
    await mountFs(context, fs.device, target, type, mountOptions(type, entry.options), readOnly);
    mounts.push({ device: fs.device, path: entry.path, type, hostPath: target });
    context.log.info(`mounted ${entry.path}: ${fs.device} (${type})`);
  }
  const mountedDevices = new Set(mounts.map((m) => m.device));
  return { root: rootDir, mounts, disk: device, unmounted: filesystems.filter((fs) => !mountedDevices.has(fs.device)) };
}
