import { open, readFile } from 'node:fs/promises';
import type { Bom } from '../bom/collect.js';
import { diffImages, type Comparable, type ImageDiff } from '../bom/diff.js';
import { ImageBuilderError } from '../util/errors.js';
import type { Logger } from '../util/log.js';
import { inspect, type InspectOptions } from './inspect.js';

/** How a disk image side is inspected: the verify flags, mount backend (--untrusted) and directories the command was given. */
export type InspectSideOptions = Omit<InspectOptions, 'diskImage' | 'log' | 'signal'>;

async function firstByte(path: string): Promise<string | undefined> {
  const file = await open(path, 'r').catch(() => undefined);
  if (!file) return undefined;
  try {
    const { buffer, bytesRead } = await file.read(Buffer.alloc(1), 0, 1, 0);
    return bytesRead ? buffer.toString('latin1') : '';
  } finally {
    await file.close();
  }
}

/** One side of a diff: a BOM file this tool wrote, or any disk image (inspected read-only). */
export async function loadComparable(path: string, log: Logger, signal?: AbortSignal, options: InspectSideOptions = {}): Promise<Comparable> {
  const head = await firstByte(path);
  if (head === undefined) throw new ImageBuilderError('BAD_INPUT', `cannot read ${path}`, { hint: 'give a disk image or a BOM (.bom.json) file' });
  if (head === '{') {
    const bom = JSON.parse(await readFile(path, 'utf8')) as Partial<Bom>;
    if (bom.bomVersion !== 1 || !Array.isArray(bom.packages)) {
      throw new ImageBuilderError('BAD_INPUT', `${path} is JSON but not an imagebuilder BOM`, { hint: 'give a .bom.json written by imagebuilder apply, or the image itself' });
    }
    return { label: path, packages: bom.packages, units: bom.unitStates ?? [], files: bom.files ?? [] };
  }
  const { inventory } = await inspect({ ...options, diskImage: path, log, signal });
  return { label: path, packages: inventory.packages, units: inventory.units };
}

export async function compareImages(a: string, b: string, log: Logger, signal?: AbortSignal, options: InspectSideOptions = {}): Promise<ImageDiff> {
  return diffImages(await loadComparable(a, log, signal, options), await loadComparable(b, log, signal, options));
}
