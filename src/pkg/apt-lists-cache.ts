import type { Stats } from 'node:fs';
import { sha256Text } from '../util/digest.js';
import { readGuestDir, readGuestFile, removeGuestFile, setGuestFileTime, statGuest } from '../util/guest-fs.js';
import type { ChrootSession } from '../chroot/session.js';
import type { Logger } from '../util/log.js';
import { APT_CACHE_OPTIONS } from './apt-options.js';
import { APT_LISTS, keepDownloadedFiles, MAX_LIST_BYTES, offerCachedFiles, stanzaField, type GuestPackageFile } from './package-cache.js';

/**
 * apt's package lists in the package cache, so a build's `apt-get update` downloads only the release files
 * (Debian's main lists are 15 MB compressed, ~1.5 s here; the InRelease 150 kB).
 *
 * The first update of a build (and one after the lists were removed) runs twice; later steps find its lists
 * (apt-get clean keeps them) and apt's own update fetches only what changed. First with every index target off: apt fetches each source's InRelease and checks its
 * signature with the guest's own keys, as always. The host then reads the SHA256 list of each InRelease now in
 * the lists directory, removes every list there that no release file names as it is (a base image's stale list
 * must not pass for the current one), and puts there every cached list whose bytes hash to what a release file
 * names, under the name apt gives that index. Then the real update: an index whose InRelease entry is unchanged
 * since the first run and whose file is there is not fetched again (apt's pkgAcqMetaBase::QueueIndexes). So a list reaches
 * apt only when it is, byte for byte, what a release file apt itself just verified names; the store is the
 * package cache's, content-addressed, and what a hostile guest leaves in its lists can only be kept under the
 * sha256 of its own bytes. When the lists then hold every index that update would fetch and no hook of the
 * guest's waits for an update's end, the real update is left out (aptListsWithoutUpdate): it would only fetch
 * each InRelease again (~0.3 s here); apt builds its cache from the same lists at the install.
 */

/** apt's index targets (apt-config dump Acquire::IndexTargets: Debian's, apt-file's, Ubuntu's appstream and cnf). */
const INDEX_TARGETS: Record<string, string[]> = {
  deb: ['Packages', 'Translations', 'Contents-deb', 'Contents-udeb', 'DEP-11', 'DEP-11-icons-small', 'DEP-11-icons', 'DEP-11-icons-hidpi', 'DEP-11-icons-large', 'DEP-11-icons-large-hidpi', 'CNF'],
  'deb-src': ['Sources', 'Contents-dsc'],
};

/** `apt-get update` options that fetch only the release files: every index target off. */
export const APT_RELEASE_FILES_ONLY = Object.entries(INDEX_TARGETS).flatMap(([type, targets]) => targets.flatMap((target) => ['-o', `Acquire::IndexTargets::${type}::${target}::DefaultEnabled=false`]));

/** The largest release file read (Debian's main InRelease is ~150 kB), and how many are read. */
const MAX_RELEASE_BYTES = 16 << 20;
const MAX_RELEASE_FILES = 256;
/** Entries taken from all release files together (Debian's main InRelease names ~600). */
const MAX_INDEX_ENTRIES = 100_000;
/** What one build may add to the store from its lists (Debian's main lists are ~80 MiB). */
const MAX_KEPT_LIST_BYTES = 1 << 30;
/** A release file's entry path that becomes a list name with no quoting (apt's URItoFileName quotes `_`, `%` …). */
const PLAIN_KEY = /^[A-Za-z0-9][A-Za-z0-9.+-]*(?:\/[A-Za-z0-9][A-Za-z0-9.+-]*)*$/;
const SHA256_ENTRY = /^ ([0-9a-f]{64})\s+\d+\s+(\S+)\s*$/;
/** What the lists directory holds besides the index files: apt's lock and the release files themselves. */
const RELEASE_FILE = /_(InRelease|Release|Release\.gpg)$/;

/**
 * The index files a release file names, as `path → sha256` (its SHA256 section: " HASH SIZE PATH" lines). Only
 * paths that apt names without quoting; the release file is read as data (the guest's), never trusted for more
 * than which cached bytes to offer.
 */
export function releaseFileHashes(text: string): Map<string, string> {
  const hashes = new Map<string, string>();
  let inSection = false;
  for (const line of text.split('\n')) {
    if (!line.startsWith(' ')) {
      inSection = /^SHA256:\s*$/.test(line);
      continue;
    }
    if (!inSection) continue;
    const match = SHA256_ENTRY.exec(line);
    if (match && PLAIN_KEY.test(match[2])) hashes.set(match[2], match[1]);
  }
  return hashes;
}

/**
 * Every index the InRelease files in the guest's lists directory name, at the guest path apt keeps it under
 * (the InRelease's own name, less `InRelease`, then the entry's path with `/` as `_`), with its sha256.
 */
export async function aptIndexesNamed(root: string): Promise<{ named: GuestPackageFile[]; names: string[]; released: { guestPath: string; time: Date }[] }> {
  const named: GuestPackageFile[] = [];
  const released: { guestPath: string; time: Date }[] = [];
  const names = (await readGuestDir(root, APT_LISTS)) ?? [];
  for (const name of names.filter((n) => n.endsWith('_InRelease')).slice(0, MAX_RELEASE_FILES)) {
    const release = await readGuestFile(root, `${APT_LISTS}/${name}`, MAX_RELEASE_BYTES).catch(() => undefined);
    if (!release) continue;
    const prefix = name.slice(0, -'InRelease'.length);
    const text = release.toString('latin1');
    const dated = releaseDate(text);
    // Never later than the download: an If-Modified-Since from the future could have a server keep a stale one.
    const downloaded = (await statGuest(root, `${APT_LISTS}/${name}`))?.mtime;
    const time = dated && downloaded && dated <= downloaded ? dated : undefined;
    if (time) released.push({ guestPath: `${APT_LISTS}/${name}`, time });
    for (const [path, sha256] of releaseFileHashes(text)) {
      if (named.length >= MAX_INDEX_ENTRIES) break;
      named.push({ guestPath: `${APT_LISTS}/${prefix}${path.replaceAll('/', '_')}`, sha256, ...(time ? { time } : {}) });
    }
  }
  return { named, names, released };
}

/**
 * A release file's own `Date:` (the time the archive made it, in its signed text), or undefined. Lists offered
 * from the cache, and their release file, get it as their time: the same files then look the same to apt (size
 * and mtime) in every build of that release, as apt's srcpkgcache.bin checks, whatever time a server or proxy
 * gave the download (a mirror without Last-Modified gives the download's own).
 */
export function releaseDate(text: string): Date | undefined {
  const match = /^Date:[ \t]*(.+?)[ \t]*$/m.exec(text.slice(0, 64 << 10));
  const time = match ? Date.parse(match[1]) : NaN;
  // Between the first Debian release file and far ahead: anything else is not a date apt wrote.
  return Number.isFinite(time) && time > Date.UTC(1995, 0) && time < Date.UTC(2200, 0) ? new Date(time) : undefined;
}

/**
 * Whether the guest's lists directory holds any index: when an earlier step of the build made them from the
 * package cache, apt's own update, which fetches only what changed, is left to do it alone (the two runs and
 * the host's hashing of every list would cost each step more than they save).
 */
export async function aptListsPresent(root: string): Promise<boolean> {
  const names = (await readGuestDir(root, APT_LISTS)) ?? [];
  return names.some((name) => name !== 'lock' && name !== 'partial' && name !== 'auxfiles' && !RELEASE_FILE.test(name));
}

/**
 * Removes each file in the guest's lists directory (`names`, as listed) that `keep` does not keep; never apt's
 * lock, a release file or a directory (partial/, auxfiles/: apt's own). Nothing is followed or opened: a link or
 * a FIFO under a list's name is removed as it is. Returns how many went.
 */
async function removeListsExcept(root: string, names: Iterable<string>, keep: (guestPath: string, info: Stats) => boolean | Promise<boolean>): Promise<number> {
  let removed = 0;
  for (const name of names) {
    const guestPath = `${APT_LISTS}/${name}`;
    if (name === 'lock' || RELEASE_FILE.test(name)) continue;
    const info = await statGuest(root, guestPath);
    if (!info || info.isDirectory() || (await keep(guestPath, info))) continue;
    await removeGuestFile(root, guestPath);
    removed++;
  }
  return removed;
}

/**
 * After the release-files-only update, whatever its outcome: the lists directory keeps apt's lock, the release
 * files and each index a release file there names whose bytes hash to that entry; every other file goes (a base
 * image's stale lists, lists kept compressed, lists of a source whose release file failed to come, names apt
 * quotes). apt trusts an index it finds when its release file has not changed, so nothing unverified may stay.
 * Then the cached lists the release files name are offered. Returns how many were.
 */
export async function offerCachedAptLists(root: string, packageCacheDir: string, log: Logger): Promise<number> {
  const { named, names, released } = await aptIndexesNamed(root);
  // Its time is how apt's update asks the server whether it changed (If-Modified-Since): an older one only gets it
  // sent again whole, ~150 kB.
  for (const { guestPath, time } of released) await setGuestFileTime(root, guestPath, time).catch(() => undefined);
  const wanted = new Map(named.map((index) => [index.guestPath, index.sha256]));
  const removed = await removeListsExcept(root, names, async (guestPath, info) => {
    const expected = wanted.get(guestPath);
    const content = expected && info.isFile() ? await readGuestFile(root, guestPath, MAX_LIST_BYTES).catch(() => undefined) : undefined;
    return Boolean(content && sha256Text(content) === expected);
  });
  if (removed) log.info(`package cache: ${removed} file(s) in the guest's lists that no release file there names as they are: removed, apt fetches what it needs`);
  return (await offerCachedFiles(root, packageCacheDir, 'apt-list', named, log, 'apt-get update')).files;
}

/**
 * Asks the guest's apt which index targets its update fetches (each with where apt keeps it, its release file
 * entry, its architecture and what made it) and its configuration (the hooks an update runs). One guest command.
 */
export const APT_UPDATE_PLAN_QUERY = [
  '/bin/sh', '-c',
  `apt-get ${APT_CACHE_OPTIONS.join(' ')} indextargets --no-release-info --format '$(FILENAME) $(METAKEY) $(ARCHITECTURE) $(CREATED_BY)' && echo @@imagebuilder-config && apt-config dump`,
];
const CONFIG_MARK = '@@imagebuilder-config';
/** Bounds on what the guest's answer may make the host do (Debian's: a few targets, ~20 kB; past them, apt runs). */
const MAX_PLAN_BYTES = 4 << 20;
const MAX_PLAN_TARGETS = 10_000;
/** The release files read for the decision, together (Debian's InRelease: ~150 kB per source). */
const MAX_PLAN_RELEASE_BYTES = 64 << 20;
/** The compressions apt may fetch an index in: a release file naming any of them offers that index. */
const INDEX_COMPRESSIONS = ['', '.xz', '.gz', '.bz2', '.lzma', '.lz4', '.zst'];
/** Targets apt's update fails on when their release file lacks them (the rest are optional: left out quietly). */
const REQUIRED_TARGETS = new Set(['Packages', 'Sources']);
/** An update that reported a failed fetch: an old release file may still be in the lists. */
const FETCH_FAILED = /^(Err:|E:|W: Failed to fetch|W: Some index files failed)/m;
/** A hook an update runs at its end, for apt-get or every apt program. */
const POST_UPDATE_HOOK = /^(Binary::[^\s:]+::)?APT::Update::Post-Invoke/m;

/** One index target of the guest's apt: its list's name in the lists directory and the release file naming it. */
export interface PlannedTarget { name: string; metaKey: string; architecture: string; createdBy: string; release: string }
export interface UpdatePlan { targets: PlannedTarget[]; postUpdateHook: boolean }

/** The plan query's answer, or undefined when it is not understood or too big. */
export function parseUpdatePlan(stdout: string): UpdatePlan | undefined {
  if (stdout.length > MAX_PLAN_BYTES) return undefined;
  const [targetText, config] = stdout.split(`${CONFIG_MARK}\n`);
  if (config === undefined) return undefined;
  const lines = targetText.split('\n').filter(Boolean);
  if (!lines.length || lines.length > MAX_PLAN_TARGETS) return undefined;
  const targets: PlannedTarget[] = [];
  for (const line of lines) {
    const [filename, metaKey, architecture, createdBy, ...rest] = line.split(' ');
    if (!createdBy || rest.length || !filename.startsWith(`${APT_LISTS}/`)) return undefined;
    const name = filename.slice(APT_LISTS.length + 1);
    // apt names a list after its release file's name less `InRelease`, then the entry's path with `/` as `_`.
    const entry = metaKey.replaceAll('/', '_');
    if (name.includes('/') || name.length <= entry.length || !name.endsWith(entry)) return undefined;
    targets.push({ name, metaKey, architecture, createdBy, release: `${name.slice(0, -entry.length)}InRelease` });
  }
  return { targets, postUpdateHook: POST_UPDATE_HOOK.test(config) };
}

/** What the decision needs of a release file, read once: every path its checksum sections name, quoted or not, and what it says of binary-all. */
export interface ReleaseFacts { paths: Set<string>; architectures?: string[]; noSupportForAll: string[] }
export function releaseFacts(text: string): ReleaseFacts {
  const paths = new Set<string>();
  // One entry a line (` HASH SIZE PATH`): blanks, never a newline, between its fields.
  for (const match of text.matchAll(/^ \S+[ \t]+\d+[ \t]+(\S+)[ \t\r]*$/gm)) paths.add(match[1]);
  return {
    paths,
    architectures: stanzaField(text, 'Architectures')?.split(/\s+/),
    noSupportForAll: stanzaField(text, 'No-Support-for-Architecture-all')?.split(/[\s,]+/) ?? [],
  };
}

/**
 * Whether apt's own update, run now, would fetch no index: every planned target is in the lists (which hold
 * only what a release file there names, byte for byte: offerCachedAptLists) or is one apt leaves out (an
 * architecture-all index the release says its architecture lists carry, as Debian's
 * `No-Support-for-Architecture-all: Packages`; an optional index the release does not offer), and no
 * `APT::Update::Post-Invoke` hook waits for an update's end (it ran after the first update, before the lists
 * were there). A target whose release file is not there, or anything else: no, apt runs.
 */
export function updateWouldFetchNothing(plan: UpdatePlan, listNames: ReadonlySet<string>, releases: ReadonlyMap<string, ReleaseFacts>): boolean {
  if (plan.postUpdateHook) return false;
  return plan.targets.every((target) => {
    if (listNames.has(target.name)) return true;
    const release = releases.get(target.release);
    if (!release) return false;
    if (target.architecture === 'all') {
      // apt's pkgAcqMetaBase::QueueIndexes: binary-all is fetched only where the release supports it for this target.
      if ((release.architectures && !release.architectures.includes('all')) || release.noSupportForAll.includes(target.createdBy)) return true;
    }
    if (INDEX_COMPRESSIONS.some((extension) => release.paths.has(`${target.metaKey}${extension}`))) return false;
    return !REQUIRED_TARGETS.has(target.createdBy);
  });
}

/**
 * After offerCachedAptLists: whether apt's update may be left out (updateWouldFetchNothing, on the guest's own
 * answer and the release files its targets name, read through guest-fs, each once). When it may, the lists no
 * target owns go, as apt's update would have removed them: the cache offers every list a release file names
 * (another architecture's, sources), and the image keeps only what apt uses.
 */
export async function aptListsWithoutUpdate(session: ChrootSession, firstUpdate: { exitCode: number; output: string }, log: Logger): Promise<boolean> {
  if (firstUpdate.exitCode !== 0 || FETCH_FAILED.test(firstUpdate.output)) return false;
  const answer = await session.exec(APT_UPDATE_PLAN_QUERY, { allowFailure: true, purpose: 'asking apt which lists its update fetches' });
  const plan = answer.exitCode === 0 ? parseUpdatePlan(answer.stdout) : undefined;
  if (!plan || plan.postUpdateHook) return false;
  const root = session.root;
  const names = new Set((await readGuestDir(root, APT_LISTS)) ?? []);
  const releases = new Map<string, ReleaseFacts>();
  let bytes = 0;
  for (const release of new Set(plan.targets.filter((target) => !names.has(target.name)).map((target) => target.release))) {
    if (!names.has(release)) continue;
    const text = await readGuestFile(root, `${APT_LISTS}/${release}`, Math.min(MAX_RELEASE_BYTES, MAX_PLAN_RELEASE_BYTES - bytes)).catch(() => undefined);
    if (!text) return false;
    bytes += text.length;
    releases.set(release, releaseFacts(text.toString('latin1')));
  }
  if (!updateWouldFetchNothing(plan, names, releases)) return false;
  const owned = new Set(plan.targets.map((target) => `${APT_LISTS}/${target.name}`));
  const removed = await removeListsExcept(root, names, (guestPath) => owned.has(guestPath));
  if (removed) log.info(`package cache: ${removed} list(s) no index target of the guest's apt uses: removed, as its update would have`);
  return true;
}

/** Keeps the lists apt fetched: each regular file whose bytes hash to what a release file beside it names. */
export async function keepAptLists(root: string, packageCacheDir: string, log: Logger): Promise<number> {
  const { named, names } = await aptIndexesNamed(root);
  // A release file names every architecture's and compression's files; apt keeps a few. One listing says which.
  const present = new Set(names.map((name) => `${APT_LISTS}/${name}`));
  return keepDownloadedFiles(root, packageCacheDir, 'apt-list', named.filter((index) => present.has(index.guestPath)), log, { maxFileBytes: MAX_LIST_BYTES, maxTotalBytes: MAX_KEPT_LIST_BYTES });
}
