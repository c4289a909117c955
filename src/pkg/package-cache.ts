import { randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, rename, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { sha256Text } from '../util/digest.js';
import { readGuestDir, readGuestFile, readGuestText, statGuest, writeGuestFileFromHost } from '../util/guest-fs.js';
import type { Logger } from '../util/log.js';

/**
 * The .deb files builds downloaded, kept in the cache directory and offered to the next build's apt, as mkosi and
 * diskimage-builder keep theirs: the second build of a base downloads nothing it already has.
 *
 * The store is content-addressed (`<sha256>.deb`) and every file crosses only after its bytes are hashed:
 *   - into a guest, a cached file goes only where the guest's own package lists (which its apt verified against
 *     their signatures) name a file with exactly that sha256, under that file's name; a cached file whose bytes no
 *     longer match its name is removed, never offered;
 *   - out of a guest (a hostile one may leave anything in its archives), only regular files, bounded in size,
 *     whose sha256 its package lists name for that file name are kept.
 * So a file reaches a build's apt only if it is, byte for byte, what that build's signed lists ask for: a planted
 * or corrupted file is never offered, whichever build or guest left it. Writes are temporary file then rename:
 * concurrent builds share the store safely (the same name always holds the same bytes).
 */

/** The largest .deb taken from a guest (the biggest Debian packages are a few hundred MiB). */
const MAX_DEB_BYTES = 1 << 30;
/** The largest package list read (Debian's main Packages is ~70 MiB uncompressed). */
const MAX_LIST_BYTES = 512 << 20;
const APT_LISTS = '/var/lib/apt/lists';
export const APT_ARCHIVES = '/var/cache/apt/archives';
const SHA256 = /^[0-9a-f]{64}$/;
/** A .deb's file name as apt writes it in its archives (name_version_arch.deb, `:` as %3a). */
const DEB_NAME = /^[A-Za-z0-9][A-Za-z0-9+.~_%-]*\.deb$/;

/** Where the cache directory keeps packages. */
export const packageCacheDir = (cacheDir: string) => join(cacheDir, 'packages');
export const debStoreDir = (dir: string) => join(dir, 'deb');

/**
 * What the guest's package lists say each .deb is: its file name (as apt names it in its archives) → sha256.
 * Read on the host through guest-fs (regular files only, never following a guest link), parsed as data.
 */
export async function aptListedHashes(root: string): Promise<Map<string, string>> {
  const listed = new Map<string, string>();
  for (const name of (await readGuestDir(root, APT_LISTS)) ?? []) {
    if (!name.endsWith('_Packages')) continue;
    const text = await readGuestText(root, `${APT_LISTS}/${name}`, MAX_LIST_BYTES).catch(() => undefined);
    if (!text) continue;
    for (const stanza of text.split(/\n\s*\n/)) {
      const filename = /^Filename:\s*(\S+)\s*$/m.exec(stanza)?.[1];
      const sha256 = /^SHA256:\s*([0-9a-f]{64})\s*$/m.exec(stanza)?.[1];
      // apt names the archive after the last path component, its `:` escaped as %3a.
      if (filename && sha256) listed.set(basename(filename).replace(/:/g, '%3a'), sha256);
    }
  }
  return listed;
}

/**
 * Puts into the guest's apt archives every cached .deb its package lists ask for, each under the name apt looks
 * for and only after its bytes are hashed again. Returns how many and how big.
 */
export async function offerCachedDebs(root: string, packageCacheDir: string, listed: Map<string, string>, log: Logger): Promise<{ files: number; bytes: number }> {
  const store = debStoreDir(packageCacheDir);
  const cached = new Set((await readdir(store).catch(() => [] as string[])).filter((name) => name.endsWith('.deb')).map((name) => name.slice(0, -'.deb'.length)).filter((hash) => SHA256.test(hash)));
  let files = 0;
  let bytes = 0;
  if (!cached.size) return { files, bytes };
  for (const [name, sha256] of listed) {
    if (!cached.has(sha256) || !DEB_NAME.test(name)) continue;
    if (await statGuest(root, `${APT_ARCHIVES}/${name}`)) continue;
    const path = join(store, `${sha256}.deb`);
    const content = await readFile(path).catch(() => undefined);
    if (!content) continue; // pruned meanwhile
    if (sha256Text(content) !== sha256) {
      log.warn(`package cache: ${path} does not hold what its name says; removed, not offered`);
      await rm(path, { force: true });
      continue;
    }
    await writeGuestFileFromHost(root, `${APT_ARCHIVES}/${name}`, content, { mode: 0o644, uid: 0, gid: 0 });
    // Its time says when a build last used it: `cache prune --older-than` goes by it.
    const now = new Date();
    await utimes(path, now, now).catch(() => undefined);
    files++;
    bytes += content.length;
  }
  if (files) log.info(`package cache: ${files} .deb file(s), ${(bytes / 2 ** 20).toFixed(1)} MiB, offered to apt (each what the guest's signed lists name)`);
  return { files, bytes };
}

/**
 * Keeps what apt downloaded: every regular .deb file in the guest's archives, bounded in size, whose sha256 the
 * guest's package lists name for that file name. Returns how many were new to the cache.
 */
export async function keepDownloadedDebs(root: string, packageCacheDir: string, listed: Map<string, string>, log: Logger): Promise<number> {
  const store = debStoreDir(packageCacheDir);
  const names = ((await readGuestDir(root, APT_ARCHIVES)) ?? []).filter((name) => DEB_NAME.test(name));
  if (!names.length) return 0;
  await mkdir(store, { recursive: true });
  let kept = 0;
  for (const name of names) {
    const sha256 = listed.get(name);
    if (!sha256) continue;
    const target = join(store, `${sha256}.deb`);
    if (await stat(target).then(() => true, () => false)) continue;
    const content = await readGuestFile(root, `${APT_ARCHIVES}/${name}`, MAX_DEB_BYTES).catch(() => undefined);
    if (!content || sha256Text(content) !== sha256) continue;
    const partial = join(store, `.${sha256}.${process.pid}-${randomBytes(4).toString('hex')}.partial`);
    await writeFile(partial, content, { mode: 0o644 });
    await rename(partial, target).catch(async (error: unknown) => {
      await rm(partial, { force: true });
      throw error;
    });
    kept++;
  }
  if (kept) log.info(`package cache: kept ${kept} downloaded .deb file(s) for the next build`);
  return kept;
}

export interface CachedPackage {
  sha256: string;
  bytes: number;
  /** When a build last offered or kept it (its mtime). */
  lastUsedAt: string;
}

/** The cached .deb files, most recently used first. */
export async function listCachedPackages(dir: string): Promise<CachedPackage[]> {
  const store = debStoreDir(dir);
  const found: CachedPackage[] = [];
  for (const name of await readdir(store).catch(() => [] as string[])) {
    const sha256 = name.endsWith('.deb') ? name.slice(0, -'.deb'.length) : '';
    if (!SHA256.test(sha256)) continue;
    const info = await stat(join(store, name)).catch(() => undefined);
    if (info?.isFile()) found.push({ sha256, bytes: info.size, lastUsedAt: info.mtime.toISOString() });
  }
  return found.sort((a, b) => (a.lastUsedAt < b.lastUsedAt ? 1 : a.lastUsedAt > b.lastUsedAt ? -1 : 0));
}

/**
 * Removes cached packages: all, those not used for `olderThanMs`, then the least recently used until they take at
 * most `maxBytes`. A build offering one meanwhile finds it gone and lets apt download it.
 */
export async function pruneCachedPackages(dir: string, options: { all?: boolean; olderThanMs?: number; maxBytes?: number; dryRun?: boolean }): Promise<{ removed: CachedPackage[]; kept: CachedPackage[]; freedBytes: number }> {
  const kept = await listCachedPackages(dir);
  const removed: CachedPackage[] = [];
  const now = Date.now();
  for (const entry of [...kept]) {
    if (options.all || (options.olderThanMs !== undefined && now - Date.parse(entry.lastUsedAt) > options.olderThanMs)) removed.push(entry);
  }
  let left = kept.filter((entry) => !removed.includes(entry));
  if (options.maxBytes !== undefined) {
    let total = left.reduce((sum, entry) => sum + entry.bytes, 0);
    while (total > options.maxBytes && left.length) {
      const oldest = left.pop()!;
      removed.push(oldest);
      total -= oldest.bytes;
    }
  }
  left = kept.filter((entry) => !removed.includes(entry));
  if (!options.dryRun) for (const entry of removed) await rm(join(debStoreDir(dir), `${entry.sha256}.deb`), { force: true });
  return { removed, kept: left, freedBytes: removed.reduce((sum, entry) => sum + entry.bytes, 0) };
}
