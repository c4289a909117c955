import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open } from 'node:fs/promises';
import { dirname } from 'node:path';
import { Writable, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { execa } from 'execa';
import { ImageBuilderError } from '../util/errors.js';
import { formatBytes } from '../util/size.js';
import { DEFAULT_RESERVE, FREE_SPACE_CHECK_BYTES, freeSpaceShortfall } from '../util/free-space.js';

export type Compression = 'xz' | 'gzip' | 'zstd';

const TOOLS: Record<Exclude<Compression, 'gzip'>, { command: string; args: string[]; package: string }> = {
  xz: { command: 'xz', args: ['--decompress', '--stdout', '--threads=0'], package: 'xz-utils' },
  zstd: { command: 'zstd', args: ['--decompress', '--stdout', '--quiet'], package: 'zstd' },
};

/** By the first bytes, whatever the file is called. */
export function detectCompression(head: Buffer): Compression | undefined {
  if (head.subarray(0, 6).equals(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]))) return 'xz';
  if (head[0] === 0x1f && head[1] === 0x8b) return 'gzip';
  if (head.subarray(0, 4).equals(Buffer.from([0x28, 0xb5, 0x2f, 0xfd]))) return 'zstd';
  return undefined;
}

export async function readHead(path: string, length = 512): Promise<Buffer> {
  const file = await open(path, 'r');
  try {
    const buffer = Buffer.alloc(length);
    const { bytesRead } = await file.read(buffer, 0, length, 0);
    return buffer.subarray(0, bytesRead);
  } finally {
    await file.close();
  }
}

/** `image.qcow2.xz` → `image.qcow2` (the name of what is inside). */
export function stripCompressionSuffix(name: string): string {
  return name.replace(/\.(xz|gz|zst|zstd)$/i, '');
}

/** A tar archive, compressed or not, is not a disk image (GCE's disk.raw comes packed in one). */
export function isTarArchive(head: Buffer): boolean {
  return head.subarray(257, 262).toString('latin1') === 'ustar';
}

const BLOCK = 64 * 1024;
const ZEROS = Buffer.alloc(BLOCK);

/**
 * What a download may decompress to. Its size: no cloud image comes near 1 TiB, and a bomb of zeros (kept sparse,
 * taking no space) would otherwise be hashed for hours. Its data: stopped while the filesystem it lands on still
 * has its reserve free (util/free-space.ts; asked every 256 MiB written), so a bomb of other bytes fills no host disk.
 */
export interface DecompressLimits {
  maxBytes: number;
  reserveBytes: (totalBytes: number) => number;
  checkEveryBytes: number;
}
export const DECOMPRESS_LIMITS: DecompressLimits = { maxBytes: 2 ** 40, reserveBytes: DEFAULT_RESERVE, checkEveryBytes: FREE_SPACE_CHECK_BYTES };

/**
 * Writes a stream to a file, seeking over all-zero 64 KiB blocks so a decompressed raw image stays sparse,
 * and hashes every byte (zeros included) on the way: one pass, no second read.
 */
export class SparseHashingWriter extends Writable {
  private readonly hash = createHash('sha256');
  private position = 0;
  private writtenSinceCheck = 0;
  private pending = Buffer.alloc(0);
  private file?: Awaited<ReturnType<typeof open>>;

  constructor(private readonly path: string, private readonly limits: DecompressLimits = DECOMPRESS_LIMITS) {
    super({ highWaterMark: 4 << 20 });
  }

  private async checkFreeSpace(): Promise<void> {
    this.writtenSinceCheck = 0;
    const shortfall = await freeSpaceShortfall(dirname(this.path), 'decompressing', this.position, this.limits.reserveBytes);
    if (shortfall) throw shortfall;
  }

  get size(): number {
    return this.position;
  }

  digest(): string {
    return this.hash.digest('hex');
  }

  override _construct(callback: (error?: Error | null) => void): void {
    open(this.path, 'w', 0o644).then(
      (file) => {
        this.file = file;
        callback();
      },
      (error: Error) => callback(error),
    );
  }

  private async writeBlocks(data: Buffer, flush: boolean): Promise<void> {
    let offset = 0;
    while (data.length - offset >= BLOCK || (flush && offset < data.length)) {
      const length = Math.min(BLOCK, data.length - offset);
      const block = data.subarray(offset, offset + length);
      if (this.position + length > this.limits.maxBytes) {
        throw new ImageBuilderError('BAD_INPUT', `the download decompresses to more than ${formatBytes(this.limits.maxBytes)}, larger than any disk image it could be`, { hint: 'a decompression bomb, or not a disk image: check the URL' });
      }
      if (!(length === BLOCK && block.equals(ZEROS))) {
        await this.file!.write(block, 0, length, this.position);
        this.writtenSinceCheck += length;
        if (this.writtenSinceCheck >= this.limits.checkEveryBytes) await this.checkFreeSpace();
      }
      this.position += length;
      offset += length;
    }
    this.pending = Buffer.from(data.subarray(offset));
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.hash.update(chunk);
    this.writeBlocks(this.pending.length ? Buffer.concat([this.pending, chunk]) : chunk, false).then(() => callback(), callback);
  }

  override _final(callback: (error?: Error | null) => void): void {
    this.writeBlocks(this.pending, true)
      .then(() => this.file!.truncate(this.position))
      .then(() => this.file!.close())
      .then(() => callback(), callback);
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    const file = this.file;
    this.file = undefined;
    if (!file) return callback(error);
    file.close().then(
      () => callback(error),
      () => callback(error),
    );
  }
}

/**
 * Decompresses `source` into `target` (sparse), returning the sha256 and size of what was written. gzip
 * through node's zlib; xz and zstd through their command-line tools (multithreaded xz), streamed.
 */
export async function decompressFile(source: string, target: string, compression: Compression, signal?: AbortSignal, limits = DECOMPRESS_LIMITS): Promise<{ sha256: string; size: number }> {
  const writer = new SparseHashingWriter(target, limits);
  if (compression === 'gzip') {
    try {
      await pipeline(createReadStream(source), createGunzip(), writer, { signal });
    } catch (error) {
      if (signal?.aborted) throw signal.reason;
      if (error instanceof ImageBuilderError) throw error;
      throw new ImageBuilderError('BAD_INPUT', `cannot decompress ${source} (gzip): ${(error as Error).message}`, { hint: 'the download is not valid gzip data', cause: error });
    }
    return { sha256: writer.digest(), size: writer.size };
  }
  const tool = TOOLS[compression];
  const child = execa(tool.command, [...tool.args, '--', source], { buffer: { stdout: false, stderr: true }, stdin: 'ignore', reject: false, cancelSignal: signal });
  const copy = pipeline(child.stdout as Readable, writer).catch((error: unknown) => error);
  const result = await child;
  const copyError = await copy;
  if (signal?.aborted) throw signal.reason;
  if ((result as { code?: string }).code === 'ENOENT') {
    throw new ImageBuilderError('MISSING_TOOL', `${tool.command} is not installed: it is needed to decompress ${source}`, { hint: `install ${tool.package} (apt-get install ${tool.package})` });
  }
  // A limit the writer stopped at: the tool then failed on its closed pipe, which says nothing.
  if (copyError instanceof ImageBuilderError) throw copyError;
  if (result.failed || copyError) {
    throw new ImageBuilderError('BAD_INPUT', `cannot decompress ${source} (${compression})`, {
      detail: String(result.stderr ?? '').trim() || (copyError as Error | undefined)?.message || result.shortMessage,
      hint: `the file is not valid ${compression} data`,
    });
  }
  return { sha256: writer.digest(), size: writer.size };
}
