import { writeGuestFile } from '../chroot/guest-write.js';
import type { ChrootSession } from '../chroot/session.js';
import { basename } from 'node:path';
import type { Stats } from 'node:fs';
import { readGuestDir, readGuestFile, readHeldFile, statGuest, statHeldFile, writeHeldFile } from '../util/guest-fs.js';
import { sha256Text } from '../util/digest.js';
import { errorMessage } from '../util/errors.js';
import { APT_LISTS, putInStore, takeFromStore } from './package-cache.js';
import type { InstallOptions, PackageCacheUse } from './types.js';

const PKGCACHE = '/run/imagebuilder-apt-pkgcache.bin';
const SRCPKGCACHE = '/run/imagebuilder-apt-srcpkgcache.bin';

/**
 * apt's binary caches (pkgcache.bin and srcpkgcache.bin, ~40 MB each from Debian's lists) on the session's own
 * /run tmpfs instead of /var/cache/apt: apt rebuilds them from the lists in each step anyway, and after an
 * install or upgrade `apt-get clean` deleted them before any layer or output was made, so written into the
 * guest's filesystem they only cost ~80 MB of writes through the loop device and the export, and left as many
 * freed blocks in the step's layer (a step that only removed or held packages left them in the image). Every apt
 * command of a step gets these, so each reuses the cache the one before it built; `apt-get clean` does not, and
 * still removes whatever /var/cache/apt held. The tmpfs is memory, counted against the build's memory limit.
 */
export const APT_CACHE_OPTIONS = ['-o', `Dir::Cache::pkgcache=${PKGCACHE}`, '-o', `Dir::Cache::srcpkgcache=${SRCPKGCACHE}`];

/**
 * The same for the programs apt starts, which read apt's configuration files but not its command line (debconf's
 * dpkg-preconfigure hook runs apt-extracttemplates, which builds the caches; Ubuntu's update hooks use python-apt):
 * APT_CONFIG names a file apt reads before its own configuration, written on the session's /run once per session.
 */
export const APT_CACHE_CONFIG = { path: '/run/imagebuilder-apt.conf', content: `Dir::Cache::pkgcache "${PKGCACHE}";\nDir::Cache::srcpkgcache "${SRCPKGCACHE}";\n` };

/** Sessions (their private /run: one object per session, whatever wraps it) whose /run holds APT_CACHE_CONFIG. */
const configured = new WeakSet<object>();

/** The environment an apt command of a step runs with: APT_CONFIG, its file written into this session first. */
export async function aptCacheEnv(session: ChrootSession): Promise<Record<string, string>> {
  const identity = session.privateRun ?? session;
  if (!configured.has(identity)) {
    await writeGuestFile(session, { path: APT_CACHE_CONFIG.path, content: APT_CACHE_CONFIG.content, mode: '0644' }, "writing the apt configuration that puts apt's caches on /run");
    const carried = carriedSourceCaches.get(session.root);
    // Into this session's fresh tmpfs; should that fail, apt builds its own, as before.
    const run = heldRun(session);
    if (carried && run) await writeHeldFile(run, SRCPKGCACHE_NAME, carried, 0o644).catch(() => undefined);
    configured.add(identity);
  }
  return { APT_CONFIG: APT_CACHE_CONFIG.path };
}

/** The session's /run as the host reaches it (its descriptor's path); none once the session has closed it. */
const heldRun = (session: ChrootSession) => (session.privateRun && !session.privateRun.closed ? session.privateRun.dir : undefined);

/**
 * The srcpkgcache.bin a guest's last packages step left on its /run, by guest root (one per build), for the next
 * packages step of the same build: with the step cache each step has a session, and a /run, of its own, and apt
 * built its caches again from the lists in each (~0.45 s here for Debian's; from a valid srcpkgcache.bin, ~0.08 s).
 * apt reuses it only if the index files it was built from are the same, each with the same size and mtime, else
 * builds it again; it is the same guest's, so it trusts nothing the guest could not already change (its lists,
 * its apt). Never given to another build; the two most recent guests are remembered (a matrix runs many builds in
 * one process).
 */
const carriedSourceCaches = new Map<string, Buffer>();
const CARRIED_GUESTS = 2;
/** The largest carried: Debian's is ~40 MB, Ubuntu's with universe ~100 MB. */
export const MAX_CARRIED_BYTES = 128 << 20;
const SRCPKGCACHE_NAME = basename(SRCPKGCACHE);

/**
 * At the end of a packages step: keeps the srcpkgcache.bin its apt commands built, for the build's next step and,
 * with the package cache, for the same step of a later build (storeSourceCache). Read from the session's own
 * tmpfs by name, no link followed (not even a parent: the directory is the session's descriptor), only a regular
 * file of that tmpfs within the bound; anything else the guest left there carries nothing.
 */
export async function carryAptSourceCache(session: ChrootSession, options: InstallOptions = {}): Promise<void> {
  carriedSourceCaches.delete(session.root);
  // Taken whatever happens: a session that lasts several steps (no layer between them) must not store a later
  // step's cache under this step's key.
  const state = session.privateRun && sourceCacheStates.get(session.privateRun);
  if (session.privateRun) sourceCacheStates.delete(session.privateRun);
  const run = heldRun(session);
  if (!run) return;
  // The bytes and the file they were read from, by one descriptor: what "apt used it as it was" is said of.
  const held = await readHeldFile(run, SRCPKGCACHE_NAME, MAX_CARRIED_BYTES).catch(() => undefined);
  if (!held) return;
  const { content, stats: file } = held;
  carriedSourceCaches.set(session.root, content);
  for (const oldest of carriedSourceCaches.keys()) if (carriedSourceCaches.size > CARRIED_GUESTS) carriedSourceCaches.delete(oldest);
  const cache = options.packageCache;
  if (state && cache?.scope === state.scope) await storeSourceCache(state, cache, content, file);
}

/**
 * apt's srcpkgcache.bin between builds, in the package cache (`apt-srcpkgcache/`): a warm build otherwise has apt
 * build it again from the lists (~0.4 s for Debian's). Kept only from a step whose lists came from the cache,
 * under the sha256 of the step's own cache key (the base image's sha256 and the recipe's steps up to this one: the
 * step cache's key, so it is shared exactly as the step's layer is) and of the lists (each file of the lists
 * directory: name, size, mtime, what apt checks; lists offered from the cache bear their release file's date, so
 * they are the same in every build of that release); offered to the same step of a later build once its lists
 * are offered, before any apt command builds apt's caches from them. apt still checks it against the lists and
 * release files, and builds its own if it does not match. Never given to another step, recipe or base: its bytes
 * are a guest's (apt's binary cache, which apt does not verify further).
 */
async function sourceCacheKey(root: string, scope: string): Promise<string | undefined> {
  const entries: string[] = [];
  let releases = 0;
  let releaseBytes = 0;
  for (const name of (await readGuestDir(root, APT_LISTS)) ?? []) {
    const info = await statGuest(root, `${APT_LISTS}/${name}`);
    if (!info?.isFile() || name === 'lock') continue;
    // A release file by its bytes too: one published again within the second of its Date, at the same size, is
    // another release apt would not tell apart by size and time. Bounded: past it, nothing is kept or offered.
    let release: Buffer | undefined;
    if (name.endsWith('_InRelease')) {
      if (++releases > MAX_KEY_RELEASE_FILES) return undefined;
      release = await readGuestFile(root, `${APT_LISTS}/${name}`, MAX_KEY_RELEASE_BYTES - releaseBytes).catch(() => undefined);
      if (!release) return undefined;
      releaseBytes += release.length;
    }
    entries.push(`${name}\0${info.size}\0${Math.floor(info.mtimeMs / 1000)}${release ? `\0${sha256Text(release)}` : ''}`);
  }
  return entries.length ? sha256Text(`apt-srcpkgcache\0${scope}\0${entries.join('\n')}`) : undefined;
}

/**
 * Per session (its /run): the key its lists had once offered from the cache, and what was offered under it (the
 * file as written: inode, ctime). Stored at the step's end under that key, the state every build of that step
 * reaches the same way (the lists an update would not fetch are removed after it, in each build alike).
 */
interface SourceCacheState {
  scope: string;
  key: string;
  offered?: { ino: number; ctimeMs: number };
}
const sourceCacheStates = new WeakMap<object, SourceCacheState>();
/** The release files read for the key, how many and together how big (Debian's main InRelease is ~150 kB): as the lists' offer reads them. */
const MAX_KEY_RELEASE_FILES = 256;
const MAX_KEY_RELEASE_BYTES = 64 << 20;

/**
 * With the package cache, once the lists are offered from it (before any apt command builds apt's caches from
 * them): the stored srcpkgcache.bin of this step of this base with these lists, put on the session's /run in place
 * of what the release files' update left there. Not when the build's step before carried one (aptCacheEnv): that
 * one was built from this guest's lists already.
 */
export async function offerStoredSourceCache(session: ChrootSession, cache: PackageCacheUse): Promise<void> {
  const run = heldRun(session);
  if (!cache.scope || !run || carriedSourceCaches.has(session.root)) return;
  const key = await sourceCacheKey(session.root, cache.scope);
  if (!key) return;
  const state: SourceCacheState = { scope: cache.scope, key };
  sourceCacheStates.set(session.privateRun!, state);
  const content = await takeFromStore(cache.dir, 'apt-srcpkgcache', key, MAX_CARRIED_BYTES);
  // Into the session's tmpfs; should that fail (full), apt builds its own, as without it.
  if (!content || !(await writeHeldFile(run, SRCPKGCACHE_NAME, content, 0o644).then(() => true, () => false))) return;
  const written = await statHeldFile(run, SRCPKGCACHE_NAME);
  if (written) state.offered = { ino: written.ino, ctimeMs: written.ctimeMs };
  cache.log.info(`package cache: apt's srcpkgcache.bin from an earlier build of this step, base and lists offered (${(content.length / 2 ** 20).toFixed(1)} MiB; apt checks it against its lists)`);
}

/** The lists changed after they were offered (apt's own update ran): what apt builds from them is not stored. */
export function forgetStoredSourceCache(session: ChrootSession): void {
  if (session.privateRun) sourceCacheStates.delete(session.privateRun);
}

/** At a packages step's end: says whether apt used the one offered (the file as written: apt writes a new one by rename), and stores a new one. */
async function storeSourceCache(state: SourceCacheState, cache: PackageCacheUse, content: Buffer, file: Stats): Promise<void> {
  const { key, offered } = state;
  if (offered && file.ino === offered.ino && file.ctimeMs === offered.ctimeMs) {
    cache.log.info('package cache: apt used the srcpkgcache.bin offered, as it was');
    return;
  }
  if (offered) cache.log.info('package cache: apt built its own srcpkgcache.bin: the one offered did not match its lists or configuration');
  // Only ever a shortcut for a later build: not keeping it (a full disk) is said, and the step goes on.
  await putInStore(cache.dir, 'apt-srcpkgcache', key, content).catch((error: unknown) => cache.log.warn(`${errorMessage(error)}; the next build of this step builds apt's caches itself`));
}
