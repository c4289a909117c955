import { randomBytes } from 'node:crypto';
import { lstat, mkdir, readdir, readFile, rename, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
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
 *     for it; a cached file whose bytes no longer match its name is removed, never offered. The manager checks
 *     a package again as it checks its own downloads (apt: against its signed lists; dnf, zypper: the checksum,
 *     then the package's signature). apt does not hash a list it finds again: for apt's lists (apt-lists-cache.ts)
 *     the host's hash against the InRelease apt has just verified is the check;
 *   - out of a guest (a hostile one may leave anything in its cache), only regular files, bounded in size, whose
 *     bytes hash to what its metadata names for that path are kept.
 * So a file reaches a build's manager only if it is, byte for byte, what that build's metadata asks for: a
 * planted or corrupted file is never offered, whichever build or guest left it. Writes are temporary file then
 * rename: concurrent builds share the store safely (the same name always holds the same bytes).
 */

/** The largest package file taken from a guest (the biggest Debian and Fedora packages are a few hundred MiB). */
export const MAX_PACKAGE_BYTES = 1 << 30;
/** What one build may add to the store (a transaction's packages; a hostile guest's metadata can name anything). */
export const MAX_KEPT_BYTES = 8 * 2 ** 30;
/** The largest package list read (Debian's main Packages is ~70 MiB uncompressed). */
export const MAX_LIST_BYTES = 512 << 20;
export const APT_LISTS = '/var/lib/apt/lists';
export const APT_ARCHIVES = '/var/cache/apt/archives';
const SHA256 = /^[0-9a-f]{64}$/;
/** A .deb's file name as apt writes it in its archives (name_version_arch.deb, `:` as %3a). */
export const DEB_NAME = /^[A-Za-z0-9][A-Za-z0-9+.~_%-]*\.deb$/;

/** Where the cache directory keeps packages. */
export const packageCacheDir = (cacheDir: string) => join(cacheDir, 'packages');
/** What is kept, each in a store of its own: package files (`deb/`, `rpm/`) and apt's package lists (`apt-list/`, apt-lists-cache.ts). */
export const PACKAGE_KINDS = ['deb', 'rpm', 'apt-list'] as const;
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
 * What the guest's package lists say each .deb is: its file name (as apt names it in its archives) → sha256.
 * Read on the host through guest-fs (regular files only, never following a guest link), parsed as data in one
 * pattern pass per list (Debian's main list is ~50 MB, 63 000 packages).
 */
export async function aptListedHashes(root: string): Promise<ReadonlyMap<string, string>> {
  const listed = new Map<string, string>();
  for (const name of await packagesListNames(root)) {
    const list = await readGuestFile(root, `${APT_LISTS}/${name}`, MAX_LIST_BYTES).catch(() => undefined);
    if (list) readPackagesList(list, listed);
  }
  return listed;
}

const packagesListNames = async (root: string) => ((await readGuestDir(root, APT_LISTS)) ?? []).filter((name) => name.endsWith('_Packages'));

/**
 * aptListedHashes, read again only when a list changed: each apt step of a build (with the step cache, a session
 * each) matches the package cache, and Debian's main list takes ~0.2 s to read and parse. A list is known by the
 * file read (its links resolved inside the guest): device, inode, size, mtime and ctime in nanoseconds (a write
 * changes the ctime, which no guest process can set back). For the package cache only, which hashes every file
 * it offers or keeps: a guest that rewrote a list in place within one ctime tick gets the old list's names.
 */
export async function rememberedAptListedHashes(root: string): Promise<ReadonlyMap<string, string>> {
  const names = await packagesListNames(root);
  const signature = (await Promise.all(names.map(async (name) => {
    const stats = await lstat(await guestHostPath(root, `${APT_LISTS}/${name}`), { bigint: true }).catch(() => undefined);
    return `${name}\0${stats?.dev}\0${stats?.ino}\0${stats?.size}\0${stats?.mtimeNs}\0${stats?.ctimeNs}`;
  }))).join('\n');
  const remembered = listedMemo.get(root);
  if (remembered?.signature === signature) return remembered.listed;
  const listed = await aptListedHashes(root);
  listedMemo.delete(root);
  listedMemo.set(root, { signature, listed });
  // A matrix runs many builds in one process: the few most recent guests are remembered, not all (~10 MB each).
  for (const oldest of listedMemo.keys()) if (listedMemo.size > MEMO_GUESTS) listedMemo.delete(oldest);
  return listed;
}
/** The last lists read per guest root (one per build), by their signature. */
const listedMemo = new Map<string, { signature: string; listed: ReadonlyMap<string, string> }>();
const MEMO_GUESTS = 4;

/** The four fields wanted, at the start of a line; every stanza begins with Package. */
const LIST_FIELDS = /^(Package|Version|Architecture|SHA256):[ \t]*(.*?)[ \t\r]*$/gm;

/**
 * Adds each stanza of a Packages list that has a name, version, architecture and sha256: one pass of one pattern
 * over the list (Debian's main list: ~50 MB, ~0.1 s), never split into stanzas or lines. Field values are ASCII by
 * Debian policy; the list is read as latin1, so no byte is ever invalid.
 */
export function readPackagesList(list: Buffer, listed: Map<string, string>): void {
  const text = list.toString('latin1');
  let fields: Record<string, string> = {};
  const stanzaEnds = () => {
    const { Package: name, Version: version, Architecture: architecture, SHA256: sha256 } = fields;
    if (name && version && architecture && sha256 && SHA256.test(sha256)) listed.set(aptArchiveName(name, version, architecture), sha256);
    fields = {};
  };
  for (const [, key, value] of text.matchAll(LIST_FIELDS)) {
    if (key === 'Package') stanzaEnds();
    fields[key] = value;
  }
  stanzaEnds();
}

/** A package file a guest's manager looks for (or left) at a guest path, and the sha256 its metadata names. */
export interface GuestPackageFile {
  guestPath: string;
  sha256: string;
}

/**
 * Puts into the guest every cached package file its metadata asks for, each at the path its manager looks for
 * and only after its bytes are hashed again. Returns how many and how big, and where they went.
 */
export async function offerCachedFiles(root: string, packageCacheDir: string, kind: PackageKind, wanted: Iterable<GuestPackageFile>, log: Logger, manager: string): Promise<{ files: number; bytes: number; paths: string[] }> {
  const store = storeDir(packageCacheDir, kind);
  const suffix = `.${kind}`;
  const cached = new Set((await readdir(store).catch(() => [] as string[])).filter((name) => name.endsWith(suffix)).map((name) => name.slice(0, -suffix.length)).filter((hash) => SHA256.test(hash)));
  const paths: string[] = [];
  let bytes = 0;
  if (!cached.size) return { files: 0, bytes, paths };
  for (const { guestPath, sha256 } of wanted) {
    if (!cached.has(sha256)) continue;
    if (await statGuest(root, guestPath)) continue;
    const path = join(store, `${sha256}${suffix}`);
    const content = await readFile(path).catch(() => undefined);
    if (!content) continue; // pruned meanwhile
    if (sha256Text(content) !== sha256) {
      log.warn(`package cache: ${path} does not hold what its name says; removed, not offered`);
      await rm(path, { force: true });
      cached.delete(sha256);
      continue;
    }
    await writeGuestFileFromHost(root, guestPath, content, { mode: 0o644, uid: 0, gid: 0, sync: false });
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
  const store = storeDir(packageCacheDir, kind);
  let kept = 0;
  let keptBytes = 0;
  for (const { guestPath, sha256 } of found) {
    if (!SHA256.test(sha256)) continue;
    const target = join(store, `${sha256}.${kind}`);
    if (await stat(target).then(() => true, () => false)) continue;
    const content = await readGuestFile(root, guestPath, bounds.maxFileBytes).catch(() => undefined);
    if (!content || sha256Text(content) !== sha256) continue;
    if (keptBytes + content.length > bounds.maxTotalBytes) {
      log.warn(`package cache: this build's ${kind} files pass ${Math.round(bounds.maxTotalBytes / 2 ** 20)} MiB; the rest are not kept`);
      break;
    }
    keptBytes += content.length;
    await mkdir(store, { recursive: true });
    const partial = join(store, `.${sha256}.${process.pid}-${randomBytes(4).toString('hex')}.partial`);
    await writeFile(partial, content, { mode: 0o644 });
    await rename(partial, target).catch(async (error: unknown) => {
      await rm(partial, { force: true });
      throw error;
    });
    kept++;
  }
  if (kept) log.info(`package cache: kept ${kept} downloaded .${kind} file(s) for the next build`);
  return kept;
}

/** The cached .deb files apt's lists ask for, at the names apt looks for in its archives; `installed`: archive names to leave out. */
export function offerCachedDebs(root: string, packageCacheDir: string, listed: ReadonlyMap<string, string>, log: Logger, installed: ReadonlySet<string> = new Set()) {
  // A package installed at that version is not fetched again (an earlier step of the build installed it).
  const wanted = function* () {
    for (const [name, sha256] of listed) if (DEB_NAME.test(name) && !installed.has(name)) yield { guestPath: `${APT_ARCHIVES}/${name}`, sha256 };
  };
  return offerCachedFiles(root, packageCacheDir, 'deb', wanted(), log, 'apt');
}

/** Keeps the .deb files apt left in its archives whose sha256 its lists name for that file name. */
export async function keepDownloadedDebs(root: string, packageCacheDir: string, listed: ReadonlyMap<string, string>, log: Logger): Promise<number> {
  const names = ((await readGuestDir(root, APT_ARCHIVES)) ?? []).filter((name) => DEB_NAME.test(name) && listed.has(name));
  return keepDownloadedFiles(root, packageCacheDir, 'deb', names.map((name) => ({ guestPath: `${APT_ARCHIVES}/${name}`, sha256: listed.get(name)! })), log);
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
  if (!options.dryRun) for (const entry of removed) await rm(cachedPath(dir, entry), { force: true });
  return { removed, kept: left, freedBytes: removed.reduce((sum, entry) => sum + entry.bytes, 0) };
}
