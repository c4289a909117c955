import type { HashAlgorithm } from '../fetch/checksums.js';
import type { Compression } from '../fetch/decompress.js';
import { obtainImage, type DiskImageOptions } from '../fetch/image-source.js';
import type { ImageFormat } from '../image/qemu-img.js';
import type { Runner } from '../util/exec.js';
import type { Logger } from '../util/log.js';

export type { DiskImageOptions } from '../fetch/image-source.js';

export interface VerifiedImage {
  /** The file the build uses: the local image itself, or the verified (decompressed) copy in the cache. */
  path: string;
  /** The image's name as published, without a compression suffix (what outputs are named after). */
  name: string;
  format: ImageFormat;
  virtualSize: number;
  /** sha256 of `path`. */
  sha256: string;
  /** The URL it was fetched from. */
  url?: string;
  /** The sum that vouched for the file as published, when it is not `sha256` (a compressed download, or sha512). */
  published?: { name: string; compression?: Compression; algorithm: HashAlgorithm; hash: string };
  /** The sums file that vouched for it (path or URL), or "--checksum". */
  checksumSource?: string;
  /** Whether a published sum was checked: false for --insecure-skip-verify, or a local image without sums. */
  verified: boolean;
  /** The keyring and signature that vouched for the sums file (--keyring). */
  signature?: { keyring: string; signature: string };
  /** local: used in place; cache: from the cache; download: fetched now. */
  source: 'local' | 'cache' | 'download';
}

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
  const obtained = await obtainImage(run, image, log, signal, options);
  return {
    path: obtained.path,
    name: obtained.name,
    format: obtained.format,
    virtualSize: obtained.virtualSize,
    sha256: obtained.sha256,
    ...(obtained.url ? { url: obtained.url } : {}),
    ...(obtained.published ? { published: obtained.published } : {}),
    ...(obtained.checksumSource ? { checksumSource: obtained.checksumSource } : {}),
    verified: obtained.verified,
    ...(obtained.signature ? { signature: obtained.signature } : {}),
    source: obtained.source,
  };
}
