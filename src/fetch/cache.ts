import { createHash } from 'node:crypto';
import { chmod, mkdir, readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { ImageBuilderError } from '../util/errors.js';
import { writeJsonAtomic } from '../util/fs.js';
import { ensurePrivateDir, lockHeld as isLockHeld } from '../util/lock.js';
import type { Logger } from '../util/log.js';
import type { HashAlgorithm } from '../util/digest.js';
import type { Compression } from './decompress.js';
import { pruneDigests } from './digest-memo.js';
import { defaultCacheDir } from '../util/paths.js';

/**
 * The content-addressed image cache under $IMAGEBUILDER_CACHE (default ~/.cache/imagebuilder):
 *
 *   images/sha256/<hex>        a verified image, read-only, named by the sha256 of its content (decompressed)
 *   images/sha256/<hex>.json   its ImageRecord: where it came from, the sums file that vouched for it, both sums
 *   urls/<sha256 of URL>.json  URL → the image it last gave (what --offline and unverified refetches use)
 *   tmp/<key>.partial(.json)   a download in progress or interrupted, resumable (key: sha256 of the URL)
 *   tmp/<key>.unpack-<pid>     a decompression in progress
 *   locks/<key>.lock           held while one process fetches a URL: others wait, then find it cached
 *   digests/<key>.json         a file's sums, remembered while it is unchanged (digest-memo.ts)
 *
 * Files are moved into images/ only once verified (rename within one filesystem: they appear whole or not at
 * all). Anything else in the cache directory (libguestfs' KVM verdict) is not this module's.
 */
export interface CacheLayout {
  root: string;
  images: string;
  urls: string;
  tmp: string;
  locks: string;
  digests: string;
}

export function cacheLayout(root = defaultCacheDir()): CacheLayout {
  return { root, images: join(root, 'images', 'sha256'), urls: join(root, 'urls'), tmp: join(root, 'tmp'), locks: join(root, 'locks'), digests: join(root, 'digests') };
}

export async function ensureCacheLayout(layout: CacheLayout, log?: Logger): Promise<void> {
  // Explicit modes: under a umask of 002 they would be group-writable, which ensureCacheDir refuses.
  for (const dir of [layout.images, layout.urls, layout.tmp]) await mkdir(dir, { recursive: true, mode: 0o755 });
  // Whoever can write locks/ could hold every fetch forever or make root follow a symlink: private to us.
  await ensurePrivateDir(layout.locks, log);
}

/** A stable file-name key for a URL or other source. */
export const sourceKey = (source: string) => createHash('sha256').update(source).digest('hex');

export interface ImageOrigin {
  url?: string;
  /** A local compressed image unpacked into the cache. */
  path?: string;
  /** The sums file (URL or path) or "--checksum"; absent when nothing vouched for it. */
  checksumSource?: string;
  /** The sums file's text as fetched. */
  sumsText?: string;
  signature?: { keyring: string; signature: string };
  /** Whether a published sum was checked (false: --insecure-skip-verify, or a local image without sums). */
  verified: boolean;
  /** HTTP validators of the published file, for conditional requests when there is no sum to compare. */
  etag?: string;
  lastModified?: string;
  fetchedAt: string;
}

export interface ImageRecord {
  version: 1;
  /** sha256 of the cached file: its name. */
  sha256: string;
  size: number;
  format?: string;
  virtualSize?: number;
  /** The file as published: its name, compression, size and every sum computed of it. */
  published: { name: string; compression?: Compression; size: number; sums: Partial<Record<HashAlgorithm, string>> };
  /** The most recent origin. */
  origin: ImageOrigin;
  lastUsedAt: string;
}

export interface UrlRecord {
  url: string;
  sha256: string;
  fetchedAt: string;
}

export const imagePath = (layout: CacheLayout, sha256: string) => join(layout.images, sha256);
const recordPath = (layout: CacheLayout, sha256: string) => join(layout.images, `${sha256}.json`);
const urlRecordPath = (layout: CacheLayout, url: string) => join(layout.urls, `${sourceKey(url)}.json`);

async function readJson<T>(path: string): Promise<T | undefined> {
  try {
    return JSON.parse(await readFile(path, 'utf8')) as T;
  } catch {
    return undefined;
  }
}

export async function readImageRecord(layout: CacheLayout, sha256: string): Promise<ImageRecord | undefined> {
  const record = await readJson<ImageRecord>(recordPath(layout, sha256));
  return record?.version === 1 && record.sha256 === sha256 ? record : undefined;
}

export async function writeImageRecord(layout: CacheLayout, record: ImageRecord): Promise<void> {
  await writeJsonAtomic(recordPath(layout, record.sha256), record);
}

export async function readUrlRecord(layout: CacheLayout, url: string): Promise<UrlRecord | undefined> {
  const record = await readJson<UrlRecord>(urlRecordPath(layout, url));
  return record?.url === url ? record : undefined;
}

export async function writeUrlRecord(layout: CacheLayout, record: UrlRecord): Promise<void> {
  await writeJsonAtomic(urlRecordPath(layout, record.url), record);
}

/** Every image record: the cache is small (tens of entries), so lookups by published sum just scan. */
export async function readImageRecords(layout: CacheLayout): Promise<ImageRecord[]> {
  const names = await readdir(layout.images).catch(() => [] as string[]);
  const records = await Promise.all(names.filter((n) => /^[0-9a-f]{64}\.json$/.test(n)).map((n) => readImageRecord(layout, n.slice(0, 64))));
  return records.filter((r): r is ImageRecord => r !== undefined);
}

/** The cached images whose published file had this sum (most recently used first). */
export async function findByPublishedSum(layout: CacheLayout, algorithm: HashAlgorithm, hash: string): Promise<ImageRecord[]> {
  return (await readImageRecords(layout))
    .filter((record) => record.published.sums[algorithm] === hash)
    .sort((a, b) => b.lastUsedAt.localeCompare(a.lastUsedAt));
}

/**
 * Moves a verified file into the store under its sha256 (read-only) and writes its record. Another process
 * may have stored the same content meanwhile: the rename replaces it with identical bytes.
 */
export async function storeImage(layout: CacheLayout, file: string, record: ImageRecord): Promise<string> {
  const target = imagePath(layout, record.sha256);
  await chmod(file, 0o444);
  await rename(file, target);
  await writeImageRecord(layout, record);
  return target;
}

/** Removes an image, its record and every URL record that points at it. */
export async function removeImage(layout: CacheLayout, sha256: string): Promise<void> {
  await rm(imagePath(layout, sha256), { force: true });
  await rm(recordPath(layout, sha256), { force: true });
  for (const name of await readdir(layout.urls).catch(() => [] as string[])) {
    const path = join(layout.urls, name);
    if ((await readJson<UrlRecord>(path))?.sha256 === sha256) await rm(path, { force: true });
  }
}

// ---------------------------------------------------------------------------------------------------------
// Locks: one process fetches a given URL at a time (src/util/lock.ts: kernel-held, leased, in a private directory).

export { acquireLock } from '../util/lock.js';

export const lockPath = (layout: CacheLayout, key: string) => join(layout.locks, `${key}.lock`);

/** Whether a live process holds this lock now. */
export async function lockHeld(layout: CacheLayout, key: string): Promise<boolean> {
  return isLockHeld(lockPath(layout, key));
}

// ---------------------------------------------------------------------------------------------------------
// list and prune

export interface CacheEntry {
  sha256: string;
  path: string;
  /** Apparent size, and blocks on disk (a sparse raw image uses less). */
  size: number;
  diskBytes: number;
  record?: ImageRecord;
  lastUsedAt: string;
}

export async function listCache(layout: CacheLayout): Promise<CacheEntry[]> {
  const names = await readdir(layout.images).catch(() => [] as string[]);
  const entries: CacheEntry[] = [];
  for (const name of names.filter((n) => /^[0-9a-f]{64}$/.test(n))) {
    const path = join(layout.images, name);
    const info = await stat(path).catch(() => undefined);
    if (!info?.isFile()) continue;
    const record = await readImageRecord(layout, name);
    entries.push({ sha256: name, path, size: info.size, diskBytes: info.blocks * 512, record, lastUsedAt: record?.lastUsedAt ?? info.mtime.toISOString() });
  }
  return entries.sort((a, b) => b.lastUsedAt.localeCompare(a.lastUsedAt));
}

export interface PruneOptions {
  all?: boolean;
  /** Remove images not used for this long. */
  olderThanMs?: number;
  /** Then remove the least recently used until what remains takes at most this many bytes on disk. */
  maxSizeBytes?: number;
  dryRun?: boolean;
  now?: number;
}

export interface PruneResult {
  removed: CacheEntry[];
  kept: CacheEntry[];
  freedBytes: number;
  /** Interrupted downloads removed from tmp/ (their bytes on disk). */
  partialsBytes: number;
  /** Remembered sums dropped: of files gone or changed (of every file with --all). */
  digestsRemoved: number;
}

/**
 * Removes images by age and/or total size (least recently used first), or all of them; with --all or
 * --older-than also the interrupted downloads in tmp/ (never one a live process is writing).
 */
export async function pruneCache(layout: CacheLayout, options: PruneOptions): Promise<PruneResult> {
  if (!options.all && options.olderThanMs === undefined && options.maxSizeBytes === undefined) {
    throw new ImageBuilderError('BAD_INPUT', 'say what to prune: --all, --older-than DURATION or --max-size SIZE', { hint: 'e.g. imagebuilder cache prune --older-than 30d' });
  }
  const now = options.now ?? Date.now();
  const entries = await listCache(layout);
  const removed = new Set<CacheEntry>();
  for (const entry of entries) {
    if (options.all) removed.add(entry);
    else if (options.olderThanMs !== undefined && now - Date.parse(entry.lastUsedAt) > options.olderThanMs) removed.add(entry);
  }
  if (options.maxSizeBytes !== undefined) {
    let total = entries.filter((e) => !removed.has(e)).reduce((sum, e) => sum + e.diskBytes, 0);
    for (const entry of [...entries].reverse()) {
      if (total <= options.maxSizeBytes) break;
      if (removed.has(entry)) continue;
      removed.add(entry);
      total -= entry.diskBytes;
    }
  }
  let partialsBytes = 0;
  if (options.all || options.olderThanMs !== undefined) {
    for (const name of await readdir(layout.tmp).catch(() => [] as string[])) {
      const key = name.slice(0, 64);
      const path = join(layout.tmp, name);
      const info = await stat(path).catch(() => undefined);
      if (!info || (await lockHeld(layout, key))) continue;
      if (!options.all && now - info.mtimeMs <= options.olderThanMs!) continue;
      partialsBytes += info.blocks * 512;
      if (!options.dryRun) await rm(path, { recursive: true, force: true });
    }
  }
  if (!options.dryRun) for (const entry of removed) await removeImage(layout, entry.sha256);
  const digestsRemoved = await pruneDigests(layout.digests, { all: options.all, dryRun: options.dryRun, now });
  return {
    digestsRemoved,
    removed: [...removed],
    kept: entries.filter((e) => !removed.has(e)),
    freedBytes: [...removed].reduce((sum, e) => sum + e.diskBytes, 0),
    partialsBytes,
  };
}

/** `30d`, `12h`, `90m`, `2w`, `45s` → milliseconds. */
export function parseDuration(text: string): number {
  const match = /^(\d+(?:\.\d+)?)\s*(s|m|h|d|w)$/i.exec(text.trim());
  if (!match) throw new ImageBuilderError('BAD_INPUT', `not a duration: ${text}`, { hint: 'use a number and a unit: 45s, 90m, 12h, 30d, 2w' });
  const unit = { s: 1000, m: 60000, h: 3600000, d: 86400000, w: 604800000 }[match[2].toLowerCase() as 's' | 'm' | 'h' | 'd' | 'w'];
  return Number(match[1]) * unit;
}

/** `20G`, `500M`, `1.5T`, `1024` (bytes); binary units (G = GiB), an optional `B`/`iB`. */
export function parseSize(text: string): number {
  const match = /^(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?$/i.exec(text.trim());
  if (!match) throw new ImageBuilderError('BAD_INPUT', `not a size: ${text}`, { hint: 'use a number and a unit: 500M, 20G, 1.5T' });
  const power = ['', 'k', 'm', 'g', 't'].indexOf(match[2].toLowerCase());
  return Math.round(Number(match[1]) * 1024 ** power);
}
