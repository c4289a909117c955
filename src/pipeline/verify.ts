import { stat } from 'node:fs/promises';
import { resolve } from 'node:path';
import { findExpectedSum, sha256File, verifySum } from '../fetch/checksums.js';
import { imageInfo, type ImageFormat } from '../image/qemu-img.js';
import { ImageBuilderError } from '../util/errors.js';
import type { Runner } from '../util/exec.js';
import type { Logger } from '../util/log.js';

export interface VerifiedImage {
  path: string;
  format: ImageFormat;
  virtualSize: number;
  sha256: string;
  /** The sums file that vouched for it, if one beside the image named it. */
  checksumSource?: string;
}

/** Phase 0 for a local image: it exists, qemu-img knows its format, and a sums file beside it agrees. */
export async function verifyImage(run: Runner, imagePath: string, log: Logger, signal?: AbortSignal): Promise<VerifiedImage> {
  const path = resolve(imagePath);
  const info = await stat(path).catch(() => undefined);
  if (!info?.isFile()) {
    throw new ImageBuilderError('BAD_INPUT', `disk image not found: ${imagePath}`, { hint: 'pass the path of an existing image file with --disk-image' });
  }
  const { format, virtualSize } = await imageInfo(run, path, log);
  const expected = await findExpectedSum(path);
  const sha256 = await sha256File(path, signal);
  if (expected) {
    verifySum(path, sha256, expected);
    log.info(`verified ${path} (${format}) against ${expected.source}`);
  } else {
    log.info(`no SHA256SUMS or sha256sum.txt beside ${path} names it: using it unverified (sha256 ${sha256})`);
  }
  return { path, format, virtualSize, sha256, checksumSource: expected?.source };
}
