import { constants } from 'node:fs';
import { open } from 'node:fs/promises';
import { basename, extname, join } from 'node:path';
import { writeGceTar, writeOva, type ApplianceSource } from '../image/appliance.js';
import { fatFreeRanges } from '../image/fat.js';
import { isDiskImageFormat, type OutputFormat } from '../image/formats.js';
import type { GuestOs } from '../image/ovf.js';
import { convertImage, outputFormatOptions, type ImageFormat } from '../image/qemu-img.js';
import { blockDeviceBytes, type BlockFilesystem } from '../mount/block.js';
import type { GuestLayout, GuestMount } from '../mount/layout.js';
import type { Runner } from '../util/exec.js';
import { FileTooLarge, NotRegularFile, readRegularFile, writeFileAtomic } from '../util/fs.js';
import { runWithTcgFallback } from '../util/libguestfs.js';
import type { Logger } from '../util/log.js';
import { formatBytes } from '../util/size.js';

export const SPARSIFY_MODES = ['auto', 'virt-sparsify', 'fstrim', 'none'] as const;
export type SparsifyMode = (typeof SPARSIFY_MODES)[number];

export const FORMAT_EXTENSIONS: Record<OutputFormat, string> = { qcow2: 'qcow2', raw: 'img', vmdk: 'vmdk', vhdx: 'vhdx', vpc: 'vhd', vdi: 'vdi', tar: 'tar', ova: 'ova', gce: 'tar.gz' };

/** A path without its extension: `.tar.gz` (gce) as one, any other the last dot's. */
export function pathStem(path: string): string {
  const extension = path.endsWith('.tar.gz') ? '.tar.gz' : extname(path);
  return path.slice(0, path.length - extension.length);
}

/** Where each artifact goes: the first format at `primary`, the others beside it with their own extension. */
export function artifactPaths(primary: string, formats: OutputFormat[]): string[] {
  const stem = pathStem(primary);
  return formats.map((format, index) => (index === 0 ? primary : `${stem}.${FORMAT_EXTENSIONS[format]}`));
}

/** A line of a GNU sums file, as we write them: nothing else of a file at that name is kept. */
const SUMS_LINE = /^[0-9a-f]{64} [ *][^\n]+$/;
/** More than any output directory's sums file: one line per artifact. */
const MAX_SUMS_BYTES = 4 << 20;

/**
 * The sums file already in the output directory, when it is a regular file of a sums file's size: a link there is
 * not followed (it would publish what it leads to, /etc/shadow, in the new file), a FIFO not waited on, a device
 * never opened. Anything else is replaced, and said so.
 */
async function readOwnSums(path: string, log?: Logger): Promise<string> {
  const replaced = (why: string) => {
    log?.warn(`${path} ${why}: replaced by a new sums file holding this build's outputs only`);
    return '';
  };
  try {
    return (await readRegularFile(path, { follow: false, maxBytes: MAX_SUMS_BYTES }))?.toString('utf8') ?? '';
  } catch (error) {
    if (error instanceof NotRegularFile) return replaced('is not a regular file (a link, FIFO, socket, device or directory)');
    if (error instanceof FileTooLarge) return replaced(`is ${error.size} bytes, more than a sums file's ${MAX_SUMS_BYTES}`);
    throw error;
  }
}

/**
 * Adds (or replaces) the artifacts' lines in the SHA256SUMS beside them, in the GNU form phase 0 reads, so
 * several builds into one directory keep one sums file. Written under a temporary name, then renamed.
 */
export async function updateSumsFile(dir: string, entries: { name: string; sha256: string }[], log?: Logger): Promise<string> {
  const path = join(dir, 'SHA256SUMS');
  const names = new Set(entries.map((e) => e.name));
  const kept = (await readOwnSums(path, log))
    .split('\n')
    .filter((line) => SUMS_LINE.test(line) && !names.has(line.replace(/^[0-9a-f]{64} [ *]/, '')));
  const text = [...kept, ...entries.map((e) => `${e.sha256}  ${e.name}`)].join('\n') + '\n';
  await writeFileAtomic(path, text);
  return path;
}

/**
 * Discards the free blocks of each mounted guest filesystem, so conversion writes only used data. fstrim is given
 * our own mount points (in the work directory), never a path inside the guest, and reads nothing of its content.
 */
export async function trimFilesystems(run: Runner, mounts: GuestMount[], log: Logger): Promise<void> {
  for (const mount of [...mounts].reverse()) {
    // Committed first: btrfs frees a deleted file's extents only when its transaction commits, and fstrim
    // discards only free ones (without this, what a step wrote and deleted seconds ago stays in the output).
    await run('sync', ['--file-system', mount.hostPath], { allowFailure: true, log });
    const result = await run('fstrim', ['--verbose', mount.hostPath], { allowFailure: true, log });
    if (result.exitCode === 0) log.info(`fstrim ${mount.path}: ${result.stdout.trim().replace(/^.*: /, '')}`);
    else log.warn(`fstrim ${mount.path} failed: ${result.output.trim()}; the output will be larger`);
  }
}

/** Filesystem types the appliance can sparsify and this host did not mount (a kernel without vfat, LVM). */
const APPLIANCE_TYPES = new Set(['vfat', 'ext2', 'ext3', 'ext4', 'xfs', 'btrfs', 'LVM2_member', 'ntfs', 'f2fs', 'jfs', 'reiserfs']);

/**
 * `auto` sparsify, natively, while the guest is still mounted: what fstrim cannot reach. Each swap partition is
 * discarded and made again with its UUID and label (the guest's fstab and resume= name them), so nothing of
 * the old swap is copied. Returns what is left for virt-sparsify's appliance: filesystems this host did not
 * mount (the kernel lacks the type, LVM), as "path (why)"; empty when everything was done here. Partitions with
 * no filesystem blkid knows (a BIOS boot partition holding GRUB) and the space between partitions are left as
 * they are: they may hold a bootloader.
 */
export async function sparsifyNatively(run: Runner, layout: GuestLayout, log: Logger): Promise<string[]> {
  const forAppliance: string[] = [];
  for (const fs of layout.unmounted ?? []) {
    if (fs.type === 'swap') {
      // blkdiscard reaches the work overlay through the loop device; where it cannot, zeroes are written.
      const discarded = await run('blkdiscard', [fs.device], { allowFailure: true, log });
      if (discarded.exitCode !== 0) await run('blkdiscard', ['--zeroout', fs.device], { log, purpose: `zeroing the swap partition ${fs.device}` });
      await run('mkswap', [...(fs.uuid ? ['-U', fs.uuid] : []), ...(fs.label ? ['-L', fs.label] : []), fs.device], { log, purpose: `making the swap partition ${fs.device} again` });
      log.info(`sparsify: swap ${fs.device} discarded and made again${fs.uuid ? ` (UUID ${fs.uuid} kept)` : ''}`);
    } else if (fs.type === 'vfat') {
      const refused = await discardFreeFatClusters(run, fs, log);
      if (refused) forAppliance.push(`${fs.device} (vfat${fs.label ? ` "${fs.label}"` : ''}: not mounted here, and ${refused})`);
    } else if (fs.type && APPLIANCE_TYPES.has(fs.type)) {
      forAppliance.push(`${fs.device} (${fs.type}${fs.label ? ` "${fs.label}"` : ''}: not mounted here)`);
    }
  }
  return forAppliance;
}

/** Free runs shorter than a qcow2 cluster free nothing in the work image; past this many, the rest stay. */
const FAT_DISCARD_MIN_BYTES = 64 * 1024;
const FAT_DISCARD_MAX_RUNS = 256;

/**
 * A vfat filesystem (an ESP) this kernel could not mount: its free clusters, read from its own FAT on our
 * partition device, discarded as the kernel's FITRIM would. Returns why it could not be, for the appliance.
 */
async function discardFreeFatClusters(run: Runner, fs: BlockFilesystem, log: Logger): Promise<string | undefined> {
  const found = await readFatFreeRanges(fs.device).catch((error: unknown) => `reading it failed: ${(error as Error).message}`);
  if (typeof found === 'string') return `its FAT was not read: ${found}`;
  const ranges = [...found.ranges].sort((a, b) => b.length - a.length).slice(0, FAT_DISCARD_MAX_RUNS);
  let discarded = 0;
  for (const range of ranges) {
    const where = ['--offset', String(range.offset), '--length', String(range.length), fs.device];
    const result = await run('blkdiscard', where, { allowFailure: true, log });
    if (result.exitCode !== 0 && (await run('blkdiscard', ['--zeroout', ...where], { allowFailure: true, log })).exitCode !== 0) {
      return `blkdiscard of its free clusters failed: ${result.output.trim()}`;
    }
    discarded += range.length;
  }
  const left = found.ranges.length - ranges.length;
  log.info(`sparsify: vfat ${fs.device}${fs.label ? ` "${fs.label}"` : ''}: ${formatBytes(discarded)} of free clusters discarded in ${ranges.length} run(s), read from its FAT` +
    (left > 0 ? `; ${left} smaller run(s) left as they are` : ''));
  return undefined;
}

/** The free clusters of the FAT on our partition device (opened read-only, never through a link). */
async function readFatFreeRanges(device: string): Promise<Awaited<ReturnType<typeof fatFreeRanges>>> {
  const deviceBytes = await blockDeviceBytes(device);
  const handle = await open(device, constants.O_RDONLY | constants.O_NOFOLLOW);
  try {
    if (!(await handle.stat()).isBlockDevice()) return `${device} is not a block device`;
    return await fatFreeRanges(async (offset, length) => {
      const buffer = Buffer.alloc(Math.max(0, Math.min(length, deviceBytes - offset)));
      const { bytesRead } = await handle.read(buffer, 0, buffer.length, offset);
      return buffer.subarray(0, bytesRead);
    }, deviceBytes, FAT_DISCARD_MIN_BYTES);
  } finally {
    await handle.close();
  }
}

/** Writes the work image, flattened, to `target` in `format`, sparsified as asked. */
export async function writeOutputImage(
  run: Runner,
  workImage: string,
  target: string,
  format: ImageFormat,
  sparsify: SparsifyMode,
  options: { log: Logger; signal?: AbortSignal; workDir: string; cacheDir: string; compress?: boolean },
): Promise<void> {
  if (sparsify === 'virt-sparsify') {
    await runWithTcgFallback(
      run,
      'virt-sparsify',
      ['--format', 'qcow2', '--convert', format, ...(format === 'qcow2' && options.compress ? ['--compress'] : outputFormatOptions(format)), '--check-tmpdir', 'continue', workImage, target],
      // Its temporary overlay goes in our work dir: removed with it, and on the disk the user chose.
      { log: options.log, signal: options.signal, extraEnv: { TMPDIR: options.workDir }, purpose: 'virt-sparsify of the output', cacheDir: options.cacheDir },
    );
    return;
  }
  await convertImage(run, workImage, target, format, options);
}

/** virt-sparsify --in-place on the work image: for what `auto` could not sparsify natively (the appliance mounts it). */
export async function sparsifyInPlace(run: Runner, workImage: string, options: { log: Logger; signal?: AbortSignal; workDir: string; cacheDir: string }): Promise<void> {
  await runWithTcgFallback(run, 'virt-sparsify', ['--in-place', '--format', 'qcow2', workImage], {
    log: options.log,
    signal: options.signal,
    extraEnv: { TMPDIR: options.workDir },
    purpose: 'virt-sparsify --in-place of the work image',
    cacheDir: options.cacheDir,
  });
}

/**
 * Writes every artifact but `tar` (written from the mounted tree) to its partial path. Disk images: the first
 * from the work image, sparsified as asked, the others converted from it (already flattened and sparse). OVA
 * and GCE packages: from the work image, already as sparse as asked, except with virt-sparsify, whose output
 * they are made from (the first disk image's, or one written for them in the work directory).
 */
export async function writeImageArtifacts(
  run: Runner,
  workImage: string,
  artifacts: { format: OutputFormat; partial: string; path: string }[],
  sparsify: SparsifyMode,
  options: { log: Logger; signal?: AbortSignal; workDir: string; cacheDir: string; compress?: boolean; guest: { os: GuestOs; architecture?: string; createdAt: Date } },
): Promise<void> {
  const images = artifacts.filter((a): a is { format: ImageFormat; partial: string; path: string } => isDiskImageFormat(a.format));
  const packages = artifacts.filter((a) => a.format === 'ova' || a.format === 'gce');
  if (images.length) await writeOutputImage(run, workImage, images[0].partial, images[0].format, sparsify, options);
  for (const image of images.slice(1)) await convertImage(run, images[0].partial, image.partial, image.format, { ...options, sourceFormat: images[0].format });
  if (!packages.length) return;
  let source: ApplianceSource = { path: workImage, format: 'qcow2' };
  if (sparsify === 'virt-sparsify') {
    source = images.length ? { path: images[0].partial, format: images[0].format } : { path: join(options.workDir, 'sparsified.qcow2'), format: 'qcow2' };
    if (!images.length) await writeOutputImage(run, workImage, source.path, 'qcow2', sparsify, { ...options, compress: false });
  }
  const appliance = { log: options.log, signal: options.signal, workDir: options.workDir, mtime: options.guest.createdAt };
  for (const artifact of packages) {
    if (artifact.format === 'ova') await writeOva(run, source, artifact.partial, { ...options.guest, name: basename(pathStem(artifact.path)) }, appliance);
    else await writeGceTar(run, source, artifact.partial, appliance);
  }
}
