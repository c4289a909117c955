import { obtainImage, type DiskImageOptions, type ObtainedImage } from '../fetch/image-source.js';
import type { Runner } from '../util/exec.js';
import type { Logger } from '../util/log.js';
import type { BuildStart } from './context.js';

export type { DiskImageOptions } from '../fetch/image-source.js';

/** Phase 0's result: the file a build uses and everything that vouched for it. */
export type VerifiedImage = ObtainedImage;

/**
 * Phase 0: the disk image is a local path or an http(s) URL. A local image must exist, qemu-img must know its
 * format, and a sums file beside it that names it must agree (none is fine locally). A URL is fetched once
 * into the content-addressed cache, verified against the sums file beside it (or --checksum), and re-checked
 * on every later use; compressed images are verified as published, then decompressed. See src/fetch/.
 */
export async function verifyImage(
  run: Runner,
  image: string,
  log: Logger,
  signal?: AbortSignal,
  options: DiskImageOptions = {},
): Promise<VerifiedImage> {
  return obtainImage(run, image, log, signal, options);
}

/** Phase 0 for a build: its runner, log, signal and cache directory. */
export function verifyForBuild(start: BuildStart, image: string, options: DiskImageOptions = {}): Promise<VerifiedImage> {
  return verifyImage(start.run, image, start.log, start.signal, { ...options, cacheDir: start.cacheDir });
}
