import { ImageBuilderError } from './errors.js';

const UNITS = { '': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 } as const;

/** Bytes, or a number with K, M, G or T (binary units; `4G`, `512MiB`, `1.5G`); `what` names it in the error. */
export function parseByteSize(text: string | number, what: string): number {
  if (typeof text === 'number') return text;
  const match = /^(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?$/i.exec(text.trim());
  if (!match) throw new ImageBuilderError('BAD_INPUT', `${what} ${JSON.stringify(text)}: not a size`, { hint: 'write bytes, or a number with K, M, G or T (4G, 512M)' });
  return Math.floor(Number(match[1]) * UNITS[match[2].toUpperCase() as keyof typeof UNITS]);
}

/** `1.5 GiB`: a size for people. */
export const formatBytes = (bytes: number) => (bytes >= 2 ** 30 ? `${(bytes / 2 ** 30).toFixed(bytes % 2 ** 30 ? 2 : 0)} GiB` : `${Math.round(bytes / 2 ** 20)} MiB`);

/**
 * The disk size `--grow SIZE` (or a recipe's `disk.size`) asks for, given the disk's size now: SIZE is the new
 * size, `+SIZE` what to add. Undefined when the disk is that size already; smaller is an error (nothing shrinks).
 * Rounded up to a whole MiB, as partitioning tools align.
 */
export function resolveGrow(text: string | number, currentBytes: number, what = '--grow'): number | undefined {
  const relative = typeof text === 'string' && text.trim().startsWith('+');
  const bytes = parseByteSize(relative ? (text as string).trim().slice(1) : text, what);
  const target = Math.ceil((relative ? currentBytes + bytes : bytes) / 2 ** 20) * 2 ** 20;
  if (target < currentBytes) {
    throw new ImageBuilderError('BAD_INPUT', `${what} ${text}: the disk is ${formatBytes(currentBytes)} already, and disks are only grown`, { hint: `give a size above ${formatBytes(currentBytes)}, or +SIZE to add` });
  }
  return target === currentBytes ? undefined : target;
}
