import { constants } from 'node:fs';
import { open, stat } from 'node:fs/promises';
import type { Bom } from '../bom/collect.js';
import { diffImages, type Comparable, type ImageDiff } from '../bom/diff.js';
import { comparableBomErrors } from '../bom/schema.js';
import { errorMessage, ImageBuilderError } from '../util/errors.js';
import { FileTooLarge, readRegularFile } from '../util/fs.js';
import type { Logger } from '../util/log.js';
import { inspect, type InspectOptions } from './inspect.js';

/** How a disk image side is inspected: the verify flags, mount backend (--untrusted) and directories the command was given. */
export type InspectSideOptions = Omit<InspectOptions, 'diskImage' | 'log' | 'signal'>;

/** A BOM is JSON read whole: far below this (a node image's has a few thousand packages, ~2 MiB). */
const MAX_BOM_BYTES = 256 << 20;

async function firstByte(path: string): Promise<string | undefined> {
  // O_NONBLOCK: a FIFO swapped in after the stat reads as empty (then refused as an image), not waited on.
  const file = await open(path, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY).catch(() => undefined);
  if (!file) return undefined;
  try {
    const { buffer, bytesRead } = await file.read(Buffer.alloc(1), 0, 1, 0).catch(() => ({ buffer: Buffer.alloc(0), bytesRead: 0 }));
    return bytesRead ? buffer.toString('latin1') : '';
  } finally {
    await file.close();
  }
}

/** One side of a diff: a BOM file this tool wrote, or any disk image (inspected read-only). */
export async function loadComparable(path: string, log: Logger, signal?: AbortSignal, options: InspectSideOptions = {}): Promise<Comparable> {
  const info = await stat(path).catch(() => undefined);
  if (info && !info.isFile() && !info.isBlockDevice()) {
    throw new ImageBuilderError('BAD_INPUT', `${path} is ${info.isDirectory() ? 'a directory' : 'a FIFO, socket or character device'}, neither a disk image nor a BOM`, { hint: 'give a disk image or a BOM (.bom.json) file' });
  }
  const head = await firstByte(path);
  if (head === undefined) throw new ImageBuilderError('BAD_INPUT', `cannot read ${path}`, { hint: 'give a disk image or a BOM (.bom.json) file' });
  if (head === '{') {
    const notBom = (why: string) => new ImageBuilderError('BAD_INPUT', `${path} is not an imagebuilder BOM: ${why}`, { hint: 'give a .bom.json written by imagebuilder apply, or the image itself' });
    const text = await readRegularFile(path, { follow: true, maxBytes: MAX_BOM_BYTES }).catch((error: unknown) => {
      throw notBom(error instanceof FileTooLarge ? `it is ${error.size} bytes, more than any BOM (${MAX_BOM_BYTES})` : errorMessage(error));
    });
    let bom: Partial<Bom>;
    try {
      bom = JSON.parse(text?.toString('utf8') ?? '') as Partial<Bom>;
    } catch (error) {
      throw notBom(`it is not JSON (${errorMessage(error)})`);
    }
    const errors = comparableBomErrors(bom);
    if (errors.length) throw notBom(errors.slice(0, 3).join('; '));
    return { label: path, packages: bom.packages!, units: bom.unitStates ?? [], files: bom.files ?? [] };
  }
  const { inventory } = await inspect({ ...options, diskImage: path, log, signal });
  return { label: path, packages: inventory.packages, units: inventory.units };
}

export async function compareImages(a: string, b: string, log: Logger, signal?: AbortSignal, options: InspectSideOptions = {}): Promise<ImageDiff> {
  return diffImages(await loadComparable(a, log, signal, options), await loadComparable(b, log, signal, options));
}
