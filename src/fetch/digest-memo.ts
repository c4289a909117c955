import { mkdir, readdir, readFile, rm, stat } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { hashFile, type HashAlgorithm } from '../util/digest.js';
import { writeJsonAtomic } from '../util/fs.js';

/**
 * Digests of files remembered by the file's identity, the way git's index and ccache tell a file unchanged:
 * same device, inode, size, mtime and ctime (nanoseconds). Any write moves mtime and ctime, a file replaced
 * (rename, copy) has another inode or ctime, and ctime cannot be set back without setting the clock back. So a
 * multi-gigabyte base image is hashed once per version of the file, not on every build; its sum is still
 * compared with the sums file every time.
 *
 * A file changed less than SETTLE_NS before it was hashed is not remembered: a second write within the same
 * timestamp tick would leave the identity as it was (git's "racily clean" entries).
 */
const SETTLE_NS = 2_000_000_000n;

interface FileIdentity {
  dev: string;
  ino: string;
  size: string;
  mtimeNs: string;
  ctimeNs: string;
}

interface DigestRecord {
  path: string;
  identity: FileIdentity;
  sums: Partial<Record<HashAlgorithm, string>>;
  hashedAt: string;
}

export interface HashedFile {
  sums: Partial<Record<HashAlgorithm, string>>;
  /** True when the sums come from an earlier hash of the unchanged file. */
  remembered: boolean;
}

async function identityOf(path: string): Promise<FileIdentity> {
  const info = await stat(path, { bigint: true });
  return { dev: String(info.dev), ino: String(info.ino), size: String(info.size), mtimeNs: String(info.mtimeNs), ctimeNs: String(info.ctimeNs) };
}

const sameIdentity = (a: FileIdentity, b: FileIdentity) =>
  a.dev === b.dev && a.ino === b.ino && a.size === b.size && a.mtimeNs === b.mtimeNs && a.ctimeNs === b.ctimeNs;

const recordPath = (dir: string, identity: FileIdentity) => join(dir, `${createHash('sha256').update(`${identity.dev}:${identity.ino}`).digest('hex')}.json`);

async function readRecord(path: string): Promise<DigestRecord | undefined> {
  try {
    const record = JSON.parse(await readFile(path, 'utf8')) as DigestRecord;
    return record?.identity && record.sums ? record : undefined;
  } catch {
    return undefined; // missing or damaged: the file is hashed again
  }
}

/**
 * The digests of `path`. With `dir` (the cache's digests/), a digest remembered for the file as it is now is
 * used instead of reading it (unless `rehash`); otherwise the file is hashed and, once settled, remembered
 * (with `rehash` too, so what the last full read found replaces what was remembered). Without `dir`, it is
 * always hashed and nothing is kept.
 */
export async function hashFileRemembered(
  path: string,
  algorithms: readonly HashAlgorithm[],
  options: { dir?: string; rehash?: boolean; signal?: AbortSignal },
): Promise<HashedFile> {
  const { dir, signal } = options;
  if (!dir) return { sums: await hashFile(path, algorithms, signal), remembered: false };
  const before = await identityOf(path);
  const memo = recordPath(dir, before);
  const record = options.rehash ? undefined : await readRecord(memo);
  const known = record && sameIdentity(record.identity, before) ? record.sums : {};
  if (algorithms.every((algorithm) => known[algorithm])) {
    return { sums: Object.fromEntries(algorithms.map((algorithm) => [algorithm, known[algorithm]])), remembered: true };
  }
  const startedNs = BigInt(Date.now()) * 1_000_000n;
  const sums = await hashFile(path, algorithms, signal);
  const after = await identityOf(path);
  const lastChangeNs = [BigInt(after.mtimeNs), BigInt(after.ctimeNs)].reduce((a, b) => (a > b ? a : b));
  // Remembered only when nothing changed while it was read, and the last change is settled.
  if (sameIdentity(before, after) && startedNs - lastChangeNs > SETTLE_NS) {
    const updated: DigestRecord = { path, identity: after, sums: { ...known, ...sums }, hashedAt: new Date().toISOString() };
    try {
      // Private: whoever can write here decides what an unchanged file's sums are.
      await mkdir(dir, { recursive: true, mode: 0o700 });
      // Its partial is unique per call: one process (a matrix) may hash the same base for several builds at once.
      await writeJsonAtomic(memo, updated);
    } catch {
      // a memo is an optimization: not writing one costs a hash next time, nothing else
    }
  }
  return { sums, remembered: false };
}

/** A record being written is this old at most; an older `.partial` was left by a process that died. */
const ABANDONED_MS = 60 * 60 * 1000;

/** Removes the records of files that are gone or changed (all of them with `all`); returns how many went. */
export async function pruneDigests(dir: string, options: { all?: boolean; dryRun?: boolean; now?: number } = {}): Promise<number> {
  let removed = 0;
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    const path = join(dir, name);
    if (!name.endsWith('.json')) {
      const info = await stat(path).catch(() => undefined);
      // (--all takes one being written too: its writer then just does not remember this time.)
      if (info && (options.all || (options.now ?? Date.now()) - info.mtimeMs > ABANDONED_MS) && !options.dryRun) await rm(path, { force: true });
      continue;
    }
    const record = await readRecord(path);
    const current = record ? await identityOf(record.path).catch(() => undefined) : undefined;
    if (!options.all && record && current && sameIdentity(record.identity, current)) continue;
    removed++;
    if (!options.dryRun) await rm(path, { force: true });
  }
  return removed;
}
