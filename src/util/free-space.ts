import { statfs } from 'node:fs/promises';
import { ImageBuilderError } from './errors.js';
import { formatBytes } from './size.js';

/**
 * What writing what a server or an archive sends leaves free on its filesystem: 5% of it, at least 1 GiB and at
 * most 8 GiB (5% of a large, well-used volume would refuse every download).
 */
export const DEFAULT_RESERVE = (totalBytes: number) => Math.min(Math.max(2 ** 30, totalBytes / 20), 8 * 2 ** 30);
/** How often (in bytes written) the free space is asked. */
export const FREE_SPACE_CHECK_BYTES = 256 << 20;

/** What the filesystem holding `dir` has free (for this user), and the reserve imagebuilder leaves on it. */
export async function freeSpace(dir: string, reserveBytes = DEFAULT_RESERVE): Promise<{ free: number; reserve: number }> {
  const fs = await statfs(dir);
  return { free: fs.bavail * fs.bsize, reserve: reserveBytes(fs.blocks * fs.bsize) };
}

/**
 * Why `what` must stop writing into `dir` (a download that never ends, a decompression bomb), or undefined: the
 * filesystem has less than the reserve free. Said with where, how much was written, and how to make room.
 */
export async function freeSpaceShortfall(dir: string, what: string, written: number, reserveBytes = DEFAULT_RESERVE): Promise<ImageBuilderError | undefined> {
  const { free, reserve } = await freeSpace(dir, reserveBytes);
  if (free >= reserve) return undefined;
  return new ImageBuilderError('ENVIRONMENT', `${what} stopped after ${formatBytes(written)}: ${dir} has ${formatBytes(free)} free, and imagebuilder leaves at least ${formatBytes(reserve)}`, {
    hint: 'free space there (imagebuilder cache prune), or point IMAGEBUILDER_CACHE / IMAGEBUILDER_WORK_DIR at a larger filesystem; what never stops growing may be hostile',
  });
}

/**
 * freeSpaceShortfall for a stream's synchronous chunk callback: every FREE_SPACE_CHECK_BYTES the free space is
 * asked in the background, and a shortfall is returned from a later chunk (at most one more interval written).
 */
export class FreeSpaceWatch {
  private written = 0;
  private sinceCheck = 0;
  private asking = false;
  private shortfall: ImageBuilderError | undefined;

  constructor(private readonly dir: string, private readonly what: string, private readonly checkEveryBytes = FREE_SPACE_CHECK_BYTES, private readonly reserveBytes = DEFAULT_RESERVE) {}

  add(bytes: number): ImageBuilderError | undefined {
    this.written += bytes;
    this.sinceCheck += bytes;
    if (this.sinceCheck >= this.checkEveryBytes && !this.asking) {
      this.sinceCheck = 0;
      this.asking = true;
      freeSpaceShortfall(this.dir, this.what, this.written, this.reserveBytes).then(
        (shortfall) => {
          this.shortfall ??= shortfall;
          this.asking = false;
        },
        () => (this.asking = false),
      );
    }
    return this.shortfall;
  }
}
