import { ImageBuilderError } from '../util/errors.js';
import type { Runner } from '../util/exec.js';
import type { Logger } from '../util/log.js';
import { readFile, rm, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { unprivilegedCommand } from '../util/unprivileged.js';
import { which } from '../util/fs.js';
import { packageHint } from '../util/tools.js';

export const IMAGE_FORMATS = ['qcow2', 'raw', 'vmdk', 'vhdx', 'vpc', 'vdi'] as const;
export type ImageFormat = (typeof IMAGE_FORMATS)[number];

export interface ImageInfo {
  format: ImageFormat;
  virtualSize: number;
  backingFile?: string;
}

/**
 * qemu-img's view of an image imagebuilder made itself (a step-cache layer, a work overlay), in the format it
 * was made in: never probed. Input from elsewhere goes through probeInputImage.
 */
export async function imageInfo(run: Runner, path: string, log?: Logger, format: ImageFormat = 'qcow2'): Promise<ImageInfo> {
  const result = await run('qemu-img', ['info', '--output=json', '-f', format, path], {
    log,
    errorCode: 'BAD_INPUT',
    purpose: `reading ${path}`,
    hint: 'check that the path is a disk image qemu can read (raw, qcow2, vmdk, vhdx, vpc, vdi)',
  });
  const info = JSON.parse(result.stdout) as { format: string; 'virtual-size': number; 'backing-filename'?: string };
  if (!(IMAGE_FORMATS as readonly string[]).includes(info.format)) {
    throw new ImageBuilderError('BAD_INPUT', `${path} is a ${info.format} image, which imagebuilder does not handle`, {
      hint: `convert it first, e.g. qemu-img convert -O qcow2 ${path} image.qcow2`,
    });
  }
  return { format: info.format as ImageFormat, virtualSize: info['virtual-size'], backingFile: info['backing-filename'] };
}

/** Where the probe sees the image: alone in its directory, so nothing an image names beside it exists. */
const PROBED_PATH = '/input/disk';

interface QemuImgInfo {
  format: string;
  'virtual-size': number;
  'backing-filename'?: string;
  'full-backing-filename'?: string;
  'format-specific'?: { type?: string; data?: { 'data-file'?: string; extents?: { filename?: string }[] } };
  children?: { name?: string; info?: { filename?: string } }[];
}

/** Every file an image (as qemu-img describes it) refers to besides itself, said as what it is. */
export function externalReferences(info: QemuImgInfo, self = PROBED_PATH): string[] {
  const references: string[] = [];
  const backing = info['backing-filename'] ?? info['full-backing-filename'];
  if (backing) references.push(`the backing file ${backing}`);
  const data = info['format-specific']?.data;
  if (data?.['data-file']) references.push(`the external data file ${data['data-file']}`);
  for (const extent of data?.extents ?? []) if (extent.filename && extent.filename !== self) references.push(`the extent ${extent.filename}`);
  for (const child of info.children ?? []) if (child.info?.filename && child.info.filename !== self) references.push(`the ${child.name ?? 'child'} file ${child.info.filename}`);
  return [...new Set(references)];
}

/**
 * The format and size of an image from elsewhere (a base image, a work image handed to `export`), and the proof
 * that it is self-contained: no backing file, no external data file (qcow2), no extent outside itself (vmdk),
 * whatever the format. A hostile image's references would make a host disk or file the "guest", and qemu opens
 * them while it merely describes the image (a FIFO extent hangs it), so the probe runs in a sandbox
 * (util/unprivileged.ts: no capability, no network, no host file but this image, read-only, alone in its
 * directory) with a deadline; what it finds is then pinned: every later open names the format (-f, -F,
 * driver=, --format), so qemu never probes this content again.
 */
export async function probeInputImage(run: Runner, path: string, log?: Logger): Promise<ImageInfo> {
  // Phase 0 and the open right after it ask about the same file: a version of a file already probed in this
  // process (same inode, size, mtime and ctime) is not probed again; any change to it is.
  const info = await stat(path, { bigint: true }).catch(() => undefined);
  const version = info && `${path}\0${info.dev}:${info.ino}:${info.size}:${info.mtimeNs}:${info.ctimeNs}`;
  const known = version && probed.get(version);
  if (known) return known;
  const result = await probeUncached(run, path, log);
  if (version) probed.set(version, result);
  return result;
}

/** Probes of this process, by file version. */
const probed = new Map<string, ImageInfo>();

async function probeUncached(run: Runner, path: string, log?: Logger): Promise<ImageInfo> {
  // Inside the sandbox a missing qemu-img would read as bwrap's failure: ask first.
  if (!(await which('qemu-img'))) {
    throw new ImageBuilderError('MISSING_TOOL', `reading ${path}: qemu-img is not installed`, { hint: `install ${packageHint('qemu-img')} (bin/setup installs everything; \`imagebuilder doctor\` checks the host)` });
  }
  const [sandbox, args] = unprivilegedCommand(['qemu-img', 'info', '--output=json', PROBED_PATH], {
    binds: [{ host: path, inside: PROBED_PATH }],
    keepRootUid: true,
  });
  const selfContained = 'imagebuilder takes only self-contained images';
  const result = await run(sandbox, args, { log, allowFailure: true, timeoutMs: PROBE_TIMEOUT_MS, display: `qemu-img info ${path} (sandboxed)`, purpose: `reading ${path}` });
  if (result.exitCode !== 0) {
    // Said with the user's names: the image's own path, and what it names beside itself as beside it on the host.
    const said = (result.output.trim().split('\n').filter(Boolean).at(-1) ?? '').replace(/^qemu-img: /, '').replaceAll(PROBED_PATH, basename(path)).replaceAll(`${dirname(PROBED_PATH)}/`, `${dirname(path)}/`);
    const missing = /Could not open '([^']+)'/.exec(said.replace(`Could not open '${basename(path)}': `, ''));
    throw new ImageBuilderError('BAD_INPUT', missing && missing[1] !== basename(path)
      ? `${path} refers to ${missing[1]}, outside itself; ${selfContained}`
      : `${path} cannot be read as a disk image on its own: ${said || (result.exitCode === -1 ? `qemu-img did not answer within ${PROBE_TIMEOUT_MS / 1000} s` : `qemu-img exited with ${result.exitCode}`)}`, {
      hint: missing ? `flatten it where its parts are: qemu-img convert -O qcow2 ${path} standalone.qcow2` : 'check that the path is a disk image qemu can read (raw, qcow2, vmdk, vhdx, vpc, vdi), whole and self-contained',
    });
  }
  const info = JSON.parse(result.stdout) as QemuImgInfo;
  const references = externalReferences(info);
  if (references.length) {
    throw new ImageBuilderError('BAD_INPUT', `${path} refers to ${references.join(', ')}; ${selfContained}`, {
      hint: `flatten it first, where what it refers to is yours: qemu-img convert -O ${IMAGE_FORMATS.includes(info.format as ImageFormat) ? info.format : 'qcow2'} ${path} standalone.img`,
    });
  }
  if (!(IMAGE_FORMATS as readonly string[]).includes(info.format)) {
    throw new ImageBuilderError('BAD_INPUT', `${path} is a ${info.format} image, which imagebuilder does not handle`, {
      hint: `convert it first, e.g. qemu-img convert -O qcow2 ${path} image.qcow2`,
    });
  }
  return { format: info.format as ImageFormat, virtualSize: info['virtual-size'] };
}

/** Describing an image reads a few headers: a probe still running after this is stuck on something planted. */
const PROBE_TIMEOUT_MS = 60000;

/** A qcow2 overlay whose backing file is the untouched input: the input is only ever opened read-only. */
/** A qcow2 over `base` (read only through it); `sizeBytes` makes its virtual disk bigger than the base's (--grow). */
export async function createOverlay(run: Runner, base: string, baseFormat: ImageFormat, overlay: string, log?: Logger, sizeBytes?: number) {
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', baseFormat, overlay, ...(sizeBytes !== undefined ? [String(sizeBytes)] : [])], {
    log,
    purpose: 'creating the work overlay',
  });
}

/** Creation options per output format: fixed VHD as Azure takes it, streamOptimized VMDK as vSphere imports it. */
export function outputFormatOptions(format: ImageFormat, compress = false): string[] {
  if (format === 'vpc') return ['-o', 'subformat=fixed,force_size=on'];
  if (format === 'vmdk') return ['-o', 'subformat=streamOptimized'];
  // qcow2 compression is per cluster and read transparently by every qcow2 reader.
  if (format === 'qcow2' && compress) return ['-c'];
  return [];
}

/**
 * Writes a standalone image (the backing chain flattened) in the given format; zeroes stay sparse. The source is
 * ours (a work overlay, qcow2, or an output just written in `sourceFormat`): its format is named, never probed.
 */
export async function convertImage(
  run: Runner,
  source: string,
  target: string,
  format: ImageFormat,
  options: { log?: Logger; signal?: AbortSignal; compress?: boolean; sourceFormat?: ImageFormat } = {},
) {
  await run('qemu-img', ['convert', '-f', options.sourceFormat ?? 'qcow2', '-O', format, ...outputFormatOptions(format, options.compress), source, target], {
    log: options.log,
    signal: options.signal,
    purpose: `writing the ${format} output`,
  });
}

/**
 * The first `bytes` of an image of ours as raw data (a partition table, for hasEsp), read by qemu-img into a
 * scratch file in `dir`, which is removed again.
 */
export async function readImageStart(run: Runner, image: string, format: ImageFormat, bytes: number, dir: string, log?: Logger): Promise<Buffer> {
  const head = join(dir, `image-start-${process.pid}.raw`);
  await run('qemu-img', ['dd', '-f', format, '-O', 'raw', 'bs=512', `count=${Math.ceil(bytes / 512)}`, `if=${image}`, `of=${head}`], { log, purpose: 'reading the partition table' });
  try {
    return await readFile(head);
  } finally {
    await rm(head, { force: true });
  }
}
