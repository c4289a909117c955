import { randomBytes } from 'node:crypto';
import { lstat, mkdir, readdir, readFile, rename, rm, stat, statfs, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { errorMessage, ImageBuilderError } from '../util/errors.js';
import { sha256Text } from '../util/digest.js';
import { guestHostPath, readGuestDir, readGuestFile, statGuest, writeGuestFileFromHost } from '../util/guest-fs.js';
import type { Logger } from '../util/log.js';

/**
 * The package files builds downloaded (.deb for apt, .rpm for dnf and zypper), kept in the cache directory and
 * offered to the next build's package manager, as mkosi and diskimage-builder keep theirs: the second build of a
 * base downloads nothing it already has.
 *
 * The store is content-addressed (`deb/<sha256>.deb`, `rpm/<sha256>.rpm`) and every file crosses only after its
 * bytes are hashed:
 *   - into a guest, a cached file goes only where the guest's own metadata (apt's package lists; the rpm-md
 *     primary file dnf and zypper cache) names a file with exactly that sha256, at the path its manager looks
 *     for it; a cached file whose bytes no longer match its name is removed, never offered. dnf and zypper check
 *     a package again as they check their own downloads (the checksum, then the package's signature); apt takes
 *     a file it finds in its archives by its size, so for apt the host's hash against the lists apt verified is
 *     the check, as it is for apt's lists (apt-lists-cache.ts) against the InRelease apt has just verified;
 *     at most half the guest's free space is offered, and what was offered is removed by the host afterwards;
 *   - out of a guest (a hostile one may leave anything in its cache), only regular files, bounded in size, whose
 *     bytes hash to what its metadata names for that path are kept.
 * So a file reaches a build's manager only if it is, byte for byte, what that build's metadata asks for: a
 * planted or corrupted file is never offered, whichever build or guest left it. Writes are temporary file then
 * rename: concurrent builds share the store safely (the same name always holds the same bytes).
 * One store is not content-addressed: apt's srcpkgcache.bin (`apt-srcpkgcache/`, apt-options.ts), kept under the
 * step's cache key and the lists, replaced when apt builds another, offered only to that same step of a later
 * build, and checked by apt itself (its lists' and release files' sizes and times), not by its bytes' hash.
 */

/** The largest package file taken from a guest (the biggest Debian and Fedora packages are a few hundred MiB). */
export const MAX_PACKAGE_BYTES = 1 << 30;
/** What one build may add to the store (a transaction's packages; a hostile guest's metadata can name anything). */
export const MAX_KEPT_BYTES = 8 * 2 ** 30;
/** The largest package list read (Debian's main Packages is ~50 MiB uncompressed; below V8's longest string, ~512 MiB). */
export const MAX_LIST_BYTES = 256 << 20;
export const APT_LISTS = '/var/lib/apt/lists';
export const APT_ARCHIVES = '/var/cache/apt/archives';
const SHA256 = /^[0-9a-f]{64}$/;
/** A .deb's file name as apt writes it in its archives (name_version_arch.deb, `:` as %3a). */
export const DEB_NAME = /^[A-Za-z0-9][A-Za-z0-9+.~_%-]*\.deb$/;

/** Where the cache directory keeps packages. */
export const packageCacheDir = (cacheDir: string) => join(cacheDir, 'packages');
/**
 * What is kept, each in a store of its own: package files (`deb/`, `rpm/`) and apt's package lists (`apt-list/`,
 * apt-lists-cache.ts), each under the sha256 of its bytes; and apt's srcpkgcache.bin (`apt-srcpkgcache/`,
 * apt-options.ts), under a sha256 of the step's cache key and the lists it was built from (`cache list` shows that
 * key where the others show their bytes' sha256).
 */
export const PACKAGE_KINDS = ['deb', 'rpm', 'apt-list', 'apt-srcpkgcache'] as const;
export type PackageKind = (typeof PACKAGE_KINDS)[number];
export const storeDir = (dir: string, kind: PackageKind) => join(dir, kind);

/**
 * The name apt gives a package's file in its archives (pkgAcqArchive: name_version_arch.deb, each part quoted
 * as QuoteString quotes: `_`, `:` (and `.` in the architecture), `%`, and anything not printable, as %xx). Not
 * the pool file's name: that carries no epoch.
 */
export function aptArchiveName(name: string, version: string, architecture: string): string {
  return `${quoteApt(name, QUOTED)}_${quoteApt(version, QUOTED)}_${quoteApt(architecture, QUOTED_ARCH)}.deb`;
}
const QUOTED = /[^\x21-\x7e]|[%_:]/g;
const QUOTED_ARCH = /[^\x21-\x7e]|[%_:.]/g;
const quoteApt = (text: string, bad: RegExp) => text.replace(bad, (c) => `%${c.charCodeAt(0).toString(16).padStart(2, '0')}`);

/**
 * A field of a deb822 stanza: its first line, trimmed (Debian policy keeps these four ASCII, on one line). By
 * indexOf, not a regular expression: a lazy match before optional trailing blanks backtracks in quadratic time
 * over a long line of blanks, which a hostile list or bundle index may hold.
 */
export function stanzaField(stanza: string, name: string): string | undefined {
  const prefix = `${name}:`;
  const found = stanza.startsWith(prefix) ? 0 : stanza.indexOf(`\n${prefix}`) + 1;
  if (found === 0 && !stanza.startsWith(prefix)) return undefined;
  const lineEnd = stanza.indexOf('\n', found);
  let start = found + prefix.length;
  let end = lineEnd < 0 ? stanza.length : lineEnd;
  while (start < end && (stanza[start] === ' ' || stanza[start] === '\t')) start++;
  while (end > start && (stanza[end - 1] === ' ' || stanza[end - 1] === '\t' || stanza[end - 1] === '\r')) end--;
  return stanza.slice(start, end);
}

/** The guest's Packages lists read together at most this big (Debian's main, contrib, updates, security: ~100 MiB). */
export const MAX_LISTS_TOTAL_BYTES = 1 << 30;
/** The largest stanza indexed (Debian's largest are a few kB): lookups stay bounded whatever a list holds. */
const MAX_STANZA_BYTES = 1 << 20;

interface IndexedStanza {
  text: string;
  start: number;
  end: number;
  list: string;
  /** Its archive name, read once. */
  archiveName?: string | null;
}

/**
 * The guest's Packages lists, indexed by the sha256 each stanza names: what apt's lists say a .deb is, found by
 * its bytes' hash. One forward pass per list over its blank lines and its `SHA256:` lines (Debian's main list:
 * ~50 MB, 63 000 stanzas, ~60 ms; parsing every stanza took ~0.3 s); a stanza's fields are read only when asked
 * for, once. The lists are data (the guest's), read as latin1 so no byte is invalid. A stanza is indexed when it
 * names exactly one sha256 and is at most MAX_STANZA_BYTES, so no lookup costs more than one bounded stanza
 * (a crafted list without blank lines indexes nothing); the first stanza naming a sha256 wins.
 */
export class AptPackagesIndex {
  private readonly byHash = new Map<string, IndexedStanza>();

  add(list: string, bytes: Buffer): void {
    const text = bytes.toString('latin1');
    const FIELD = '\nSHA256:';
    let field = text.indexOf(FIELD);
    for (let start = 0; start < text.length; ) {
      let end = text.indexOf('\n\n', start);
      if (end < 0) end = text.length;
      const named: string[] = [];
      // Both searches only move forward: the whole list is read once, however its stanzas are cut.
      for (; field >= 0 && field < end; field = text.indexOf(FIELD, field + 1)) {
        let at = field + FIELD.length;
        while (text[at] === ' ' || text[at] === '\t') at++;
        const sha256 = text.slice(at, at + 64);
        const after = text[at + 64];
        named.push(SHA256.test(sha256) && (after === undefined || after === '\n' || after === '\r' || after === ' ' || after === '\t') ? sha256 : '');
      }
      if (named.length === 1 && named[0] && end - start <= MAX_STANZA_BYTES && !this.byHash.has(named[0])) {
        this.byHash.set(named[0], { text, start, end, list });
      }
      start = end + 2;
    }
  }

  /** The whole stanza naming this sha256, and the list (its guest path) it is in. */
  stanza(sha256: string): { stanza: string; list: string } | undefined {
    const found = this.byHash.get(sha256);
    if (!found) return undefined;
    let end = found.end;
    while (end > found.start && found.text[end - 1] === '\n') end--;
    return { stanza: found.text.slice(found.start, end), list: found.list };
  }

  /** The name apt gives the .deb with this sha256 in its archives, when its stanza has a name, version and architecture. */
  archiveName(sha256: string): string | undefined {
    const found = this.byHash.get(sha256);
    if (!found) return undefined;
    if (found.archiveName === undefined) {
      const stanza = found.text.slice(found.start, found.end);
      const [name, version, architecture] = ['Package', 'Version', 'Architecture'].map((key) => stanzaField(stanza, key));
      found.archiveName = name && version && architecture ? aptArchiveName(name, version, architecture) : null;
    }
    return found.archiveName ?? undefined;
  }
}

/**
 * The guest's Packages lists, read on the host through guest-fs (regular files only, never following a guest
 * link), together at most MAX_LISTS_TOTAL_BYTES: past it, the rest are not matched (the cache offers less).
 */
export async function aptPackagesIndex(root: string): Promise<AptPackagesIndex> {
  const index = new AptPackagesIndex();
  let total = 0;
  for (const name of await packagesListNames(root)) {
    // Each read bounded by what is left of the total: never more than that is held.
    const list = await readGuestFile(root, `${APT_LISTS}/${name}`, Math.min(MAX_LIST_BYTES, MAX_LISTS_TOTAL_BYTES - total)).catch(() => undefined);
    if (!list) continue;
    total += list.length;
    index.add(`${APT_LISTS}/${name}`, list);
  }
  return index;
}

const packagesListNames = async (root: string) => ((await readGuestDir(root, APT_LISTS)) ?? []).filter((name) => name.endsWith('_Packages'));

/**
 * aptPackagesIndex, read again only when a list changed: each apt step of a build (with the step cache, a
 * session each) matches the package cache. A list is known by the file read (its links resolved inside the
 * guest): device, inode, size, mtime and ctime in nanoseconds (a write changes the ctime, which no guest process
 * can set back). For the package cache only, which hashes every file it offers or keeps: a guest that rewrote a
 * list in place within one ctime tick gets the old list's stanzas.
 */
export async function rememberedAptPackagesIndex(root: string): Promise<AptPackagesIndex> {
  const names = await packagesListNames(root);
  const signature = (await Promise.all(names.map(async (name) => {
    const stats = await lstat(await guestHostPath(root, `${APT_LISTS}/${name}`), { bigint: true }).catch(() => undefined);
    return `${name}\0${stats?.dev}\0${stats?.ino}\0${stats?.size}\0${stats?.mtimeNs}\0${stats?.ctimeNs}`;
  }))).join('\n');
  const remembered = indexMemo.get(root);
  if (remembered?.signature === signature) return remembered.index;
  const index = await aptPackagesIndex(root);
  indexMemo.delete(root);
  indexMemo.set(root, { signature, index });
  // A matrix runs many builds in one process: the two most recent guests are remembered (their lists' text, ~80 MB each).
  for (const oldest of indexMemo.keys()) if (indexMemo.size > MEMO_GUESTS) indexMemo.delete(oldest);
  return index;
}
/** The last lists read per guest root (one per build), by their signature. */
const indexMemo = new Map<string, { signature: string; index: AptPackagesIndex }>();
const MEMO_GUESTS = 2;

/** A package file a guest's manager looks for (or left) at a guest path, and the sha256 its metadata names. */
export interface GuestPackageFile {
  guestPath: string;
  sha256: string;
  /** The time a file offered gets (apt's lists: their release file's, the same in every build of that release); the offer's own when absent. */
  time?: Date;
}

/**
 * Puts into the guest every cached package file its metadata asks for, each at the path its manager looks for
 * and only after its bytes are hashed again. Returns how many and how big, and where they went.
 */
export async function offerCachedFiles(root: string, packageCacheDir: string, kind: PackageKind, wanted: Iterable<GuestPackageFile>, log: Logger, manager: string): Promise<{ files: number; bytes: number; paths: string[] }> {
  const store = storeDir(packageCacheDir, kind);
  const suffix = `.${kind}`;
  const cached = await storedHashes(packageCacheDir, kind);
  const paths: string[] = [];
  let bytes = 0;
  if (!cached.size) return { files: 0, bytes, paths };
  // A store many builds filled may hold more of a release than this transaction needs: at most half the guest's
  // free space is offered (statfs of its root, a path of ours), so the install keeps room to unpack.
  const budget = (await statfs(root).then(({ bavail, bsize }) => bavail * bsize, () => 0)) / 2;
  for (const { guestPath, sha256, time } of wanted) {
    if (!cached.has(sha256)) continue;
    if (await statGuest(root, guestPath)) continue;
    const path = join(store, `${sha256}${suffix}`);
    const size = (await stat(path).catch(() => undefined))?.size;
    if (size === undefined) continue; // pruned meanwhile
    if (bytes + size > budget) {
      log.info(`package cache: offering stopped at ${(bytes / 2 ** 20).toFixed(1)} MiB, half the guest's free space; ${manager} downloads the rest`);
      break;
    }
    const content = await readFile(path).catch(() => undefined);
    if (!content) continue; // pruned meanwhile
    if (sha256Text(content) !== sha256) {
      log.warn(`package cache: ${path} does not hold what its name says; removed, not offered`);
      await rm(path, { force: true });
      cached.delete(sha256);
      continue;
    }
    try {
      await writeGuestFileFromHost(root, guestPath, content, { mode: 0o644, uid: 0, gid: 0, ...(time ? { time } : {}) });
    } catch (error) {
      // The guest's disk full after all: what was offered stays, the manager downloads the rest.
      if ((error as NodeJS.ErrnoException).code !== 'ENOSPC' && (error as { cause?: NodeJS.ErrnoException }).cause?.code !== 'ENOSPC') throw error;
      log.warn(`package cache: the guest's disk is full; offering stopped at ${(bytes / 2 ** 20).toFixed(1)} MiB`);
      break;
    }
    // Its time says when a build last used it: `cache prune --older-than` goes by it.
    const now = new Date();
    await utimes(path, now, now).catch(() => undefined);
    paths.push(guestPath);
    bytes += content.length;
  }
  if (paths.length) log.info(`package cache: ${paths.length} ${suffix} file(s), ${(bytes / 2 ** 20).toFixed(1)} MiB, offered to ${manager} (each what the guest's metadata names)`);
  return { files: paths.length, bytes, paths };
}

/**
 * Puts `content` into a kind's store under `key` (the sha256 that names it): a temporary file renamed, so a
 * concurrent build reads all of it or none.
 */
export async function putInStore(packageCacheDir: string, kind: PackageKind, key: string, content: Buffer): Promise<void> {
  const store = storeDir(packageCacheDir, kind);
  const partial = join(store, `.${key}.${process.pid}-${randomBytes(4).toString('hex')}.partial`);
  try {
    await mkdir(store, { recursive: true, mode: 0o755 }); // not group-writable under any umask: ensureCacheDir refuses that
    await writeFile(partial, content, { mode: 0o644 });
    await rename(partial, join(store, `${key}.${kind}`));
  } catch (error) {
    // A full disk leaves no partial file behind.
    await rm(partial, { force: true }).catch(() => undefined);
    throw new ImageBuilderError('ENVIRONMENT', `package cache: keeping a .${kind} file in ${store} failed: ${errorMessage(error)}`, {
      hint: 'the cache directory (--cache, IMAGEBUILDER_CACHE) must be a writable directory with free space: `imagebuilder cache prune --max-size 10G` trims it; --no-cache builds without it',
      cause: error,
    });
  }
}

/** A kind's stored file under `key`, at most `maxBytes` (else none), marked used now (for `cache prune`); undefined when absent. */
export async function takeFromStore(packageCacheDir: string, kind: PackageKind, key: string, maxBytes: number): Promise<Buffer | undefined> {
  const path = join(storeDir(packageCacheDir, kind), `${key}.${kind}`);
  const info = await stat(path).catch(() => undefined);
  if (!info?.isFile() || info.size > maxBytes) return undefined;
  const content = await readFile(path).catch(() => undefined);
  const now = new Date();
  if (content) await utimes(path, now, now).catch(() => undefined);
  return content;
}

/** Puts files already hashed into a kind's store, together at most `maxTotalBytes` per call (per keeping). */
function storeKeeper(packageCacheDir: string, kind: PackageKind, log: Logger, maxTotalBytes: number) {
  const store = storeDir(packageCacheDir, kind);
  let kept = 0;
  let keptBytes = 0;
  return {
    has: (sha256: string) => stat(join(store, `${sha256}.${kind}`)).then(() => true, () => false),
    /** False once this call's total would be passed: nothing more is kept. */
    async keep(sha256: string, content: Buffer): Promise<boolean> {
      if (keptBytes + content.length > maxTotalBytes) {
        log.warn(`package cache: this build's ${kind} files pass ${Math.round(maxTotalBytes / 2 ** 20)} MiB; the rest are not kept`);
        return false;
      }
      keptBytes += content.length;
      await putInStore(packageCacheDir, kind, sha256, content);
      kept++;
      return true;
    },
    /** How many were new to the cache, said in the log. */
    done(): number {
      if (kept) log.info(`package cache: kept ${kept} downloaded .${kind} file(s) for the next build`);
      return kept;
    },
  };
}

/**
 * Keeps what the guest's manager downloaded: every regular file among `found`, bounded in size, whose bytes hash
 * to the sha256 the guest's metadata names for it. Returns how many were new to the cache.
 */
export async function keepDownloadedFiles(
  root: string,
  packageCacheDir: string,
  kind: PackageKind,
  found: Iterable<GuestPackageFile>,
  log: Logger,
  /** Each file, and all kept by this call together, at most this big: a guest's own metadata names them. */
  bounds: { maxFileBytes: number; maxTotalBytes: number } = { maxFileBytes: MAX_PACKAGE_BYTES, maxTotalBytes: MAX_KEPT_BYTES },
): Promise<number> {
  const keeper = storeKeeper(packageCacheDir, kind, log, bounds.maxTotalBytes);
  for (const { guestPath, sha256 } of found) {
    if (!SHA256.test(sha256) || (await keeper.has(sha256))) continue;
    const content = await readGuestFile(root, guestPath, bounds.maxFileBytes).catch(() => undefined);
    if (!content || sha256Text(content) !== sha256) continue;
    if (!(await keeper.keep(sha256, content))) break;
  }
  return keeper.done();
}

/** The sha256s a kind's store holds, by its file names (a file is hashed again before it is offered). */
async function storedHashes(packageCacheDir: string, kind: PackageKind): Promise<Set<string>> {
  const suffix = `.${kind}`;
  const names = await readdir(storeDir(packageCacheDir, kind)).catch(() => [] as string[]);
  return new Set(names.filter((name) => name.endsWith(suffix)).map((name) => name.slice(0, -suffix.length)).filter((hash) => SHA256.test(hash)));
}

/**
 * The cached .deb files the guest's lists name, each at the name apt looks for in its archives; `installed`:
 * archive names to leave out (a package installed at that version is not fetched again). The store's hashes are
 * looked up in the lists, so the cost follows the store, not the lists' 63 000 stanzas; `guest` (the lists'
 * index, what is installed) is asked for only when the store holds a .deb: a runner's first build reads its
 * lists while its install runs.
 */
export async function offerCachedDebs(root: string, packageCacheDir: string, guest: () => Promise<{ index: AptPackagesIndex; installed: ReadonlySet<string> }>, log: Logger) {
  const stored = await storedHashes(packageCacheDir, 'deb');
  if (!stored.size) return { files: 0, bytes: 0, paths: [] };
  const { index, installed } = await guest();
  const wanted: GuestPackageFile[] = [];
  for (const sha256 of stored) {
    const name = index.archiveName(sha256);
    if (name && DEB_NAME.test(name) && !installed.has(name)) wanted.push({ guestPath: `${APT_ARCHIVES}/${name}`, sha256 });
  }
  return offerCachedFiles(root, packageCacheDir, 'deb', wanted, log, 'apt');
}

/**
 * Each .deb apt left in its archives (read through guest-fs: regular, bounded, no guest link followed), hashed,
 * with the archive name the lists give those bytes (undefined: no list names them). `skip`: guest paths left out.
 */
export async function* archivedDebs(root: string, index: AptPackagesIndex, skip: ReadonlySet<string> = new Set()): AsyncGenerator<{ name: string; content: Buffer; sha256: string; listedAs?: string }> {
  // What is read and hashed in all: a hostile guest's archives may hold 100,000 sparse files of 1 GiB each.
  let budget = MAX_KEPT_BYTES;
  for (const name of (await readGuestDir(root, APT_ARCHIVES)) ?? []) {
    const guestPath = `${APT_ARCHIVES}/${name}`;
    if (!DEB_NAME.test(name) || skip.has(guestPath)) continue;
    const size = (await statGuest(root, guestPath))?.size ?? 0;
    if (size > MAX_PACKAGE_BYTES) continue;
    if (size > budget) return;
    budget -= size;
    const content = await readGuestFile(root, guestPath, MAX_PACKAGE_BYTES).catch(() => undefined);
    if (!content) continue;
    const sha256 = sha256Text(content);
    yield { name, content, sha256, listedAs: index.archiveName(sha256) };
  }
}

/**
 * Keeps the .deb files apt left in its archives whose sha256 the lists name under that file name (the lists are
 * indexed by hash, so each is hashed first). `offered`: the guest paths the cache put there.
 */
export async function keepDownloadedDebs(root: string, packageCacheDir: string, index: AptPackagesIndex, log: Logger, offered: ReadonlySet<string> = new Set()): Promise<number> {
  const keeper = storeKeeper(packageCacheDir, 'deb', log, MAX_KEPT_BYTES);
  for await (const deb of archivedDebs(root, index, offered)) {
    if (deb.listedAs !== deb.name || (await keeper.has(deb.sha256))) continue;
    if (!(await keeper.keep(deb.sha256, deb.content))) break;
  }
  return keeper.done();
}

export interface CachedPackage {
  kind: PackageKind;
  sha256: string;
  bytes: number;
  /** When a build last offered or kept it (its mtime). */
  lastUsedAt: string;
}

/** The cached package files, most recently used first. */
export async function listCachedPackages(dir: string): Promise<CachedPackage[]> {
  const found: CachedPackage[] = [];
  for (const kind of PACKAGE_KINDS) {
    const store = storeDir(dir, kind);
    for (const name of await readdir(store).catch(() => [] as string[])) {
      const sha256 = name.endsWith(`.${kind}`) ? name.slice(0, -kind.length - 1) : '';
      if (!SHA256.test(sha256)) continue;
      const info = await stat(join(store, name)).catch(() => undefined);
      if (info?.isFile()) found.push({ kind, sha256, bytes: info.size, lastUsedAt: info.mtime.toISOString() });
    }
  }
  return found.sort((a, b) => (a.lastUsedAt < b.lastUsedAt ? 1 : a.lastUsedAt > b.lastUsedAt ? -1 : 0));
}

/** Where a cached package file is. */
export const cachedPath = (dir: string, entry: Pick<CachedPackage, 'kind' | 'sha256'>) => join(storeDir(dir, entry.kind), `${entry.sha256}.${entry.kind}`);

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
  if (!options.dryRun) {
    for (const entry of removed) await rm(cachedPath(dir, entry), { force: true });
    await removeAbandonedPartials(dir);
  }
  return { removed, kept: left, freedBytes: removed.reduce((sum, entry) => sum + entry.bytes, 0) };
}

/** How old a store's temporary file is before prune takes it for a killed build's (a live one renames it in seconds). */
const ABANDONED_PARTIAL_MS = 24 * 3600 * 1000;

/** The temporary files of builds killed while they stored a package (putInStore's `.<sha256>.<pid>-<rand>.partial`). */
async function removeAbandonedPartials(dir: string): Promise<void> {
  for (const kind of PACKAGE_KINDS) {
    const store = storeDir(dir, kind);
    for (const name of await readdir(store).catch(() => [] as string[])) {
      if (!/^\.[0-9a-f]{64}\.\d+-[0-9a-f]{8}\.partial$/.test(name)) continue;
      const info = await lstat(join(store, name)).catch(() => undefined);
      if (info?.isFile() && Date.now() - info.mtimeMs > ABANDONED_PARTIAL_MS) await rm(join(store, name), { force: true });
    }
  }
}
