import { ImageBuilderError } from '../util/errors.js';
import type { Runner } from '../util/exec.js';
import type { Logger } from '../util/log.js';

export const IMAGE_FORMATS = ['qcow2', 'raw', 'vmdk', 'vhdx', 'vpc', 'vdi'] as const;
export type ImageFormat = (typeof IMAGE_FORMATS)[number];

export interface ImageInfo {
  format: ImageFormat;
  virtualSize: number;
  backingFile?: string;
}

/** The format comes from qemu-img's probe of the content, never from the file name. */
export async function imageInfo(run: Runner, path: string, log?: Logger): Promise<ImageInfo> {
  const result = await run('qemu-img', ['info', '--output=json', path], {
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

/** A qcow2 overlay whose backing file is the untouched input: the input is only ever opened read-only. */
export async function createOverlay(run: Runner, base: string, baseFormat: ImageFormat, overlay: string, log?: Logger) {
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', baseFormat, overlay], {
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

/** Writes a standalone image (the backing chain flattened) in the given format; zeroes stay sparse. */
export async function convertImage(
  run: Runner,
  source: string,
  target: string,
  format: ImageFormat,
  options: { log?: Logger; signal?: AbortSignal; compress?: boolean } = {},
) {
  await run('qemu-img', ['convert', '-O', format, ...outputFormatOptions(format, options.compress), source, target], {
    log: options.log,
    signal: options.signal,
    purpose: `writing the ${format} output`,
  });
}
