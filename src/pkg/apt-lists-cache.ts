import { sha256Text } from '../util/digest.js';
import { readGuestDir, readGuestFile, removeGuestFile, statGuest } from '../util/guest-fs.js';
import type { Logger } from '../util/log.js';
import { APT_LISTS, keepDownloadedFiles, MAX_LIST_BYTES, offerCachedFiles, type GuestPackageFile } from './package-cache.js';

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
 * sha256 of its own bytes.
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
export async function aptIndexesNamed(root: string): Promise<{ named: GuestPackageFile[]; names: string[] }> {
  const named: GuestPackageFile[] = [];
  const names = (await readGuestDir(root, APT_LISTS)) ?? [];
  for (const name of names.filter((n) => n.endsWith('_InRelease')).slice(0, MAX_RELEASE_FILES)) {
    const release = await readGuestFile(root, `${APT_LISTS}/${name}`, MAX_RELEASE_BYTES).catch(() => undefined);
    if (!release) continue;
    const prefix = name.slice(0, -'InRelease'.length);
    for (const [path, sha256] of releaseFileHashes(release.toString('latin1'))) {
      if (named.length >= MAX_INDEX_ENTRIES) break;
      named.push({ guestPath: `${APT_LISTS}/${prefix}${path.replaceAll('/', '_')}`, sha256 });
    }
  }
  return { named, names };
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
 * After the release-files-only update, whatever its outcome: the lists directory keeps apt's lock, the release
 * files and each index a release file there names whose bytes hash to that entry; every other file goes (a base
 * image's stale lists, lists kept compressed, lists of a source whose release file failed to come, names apt
 * quotes). apt trusts an index it finds when its release file has not changed, so nothing unverified may stay.
 * Then the cached lists the release files name are offered. Returns how many were.
 */
export async function offerCachedAptLists(root: string, packageCacheDir: string, log: Logger): Promise<number> {
  const { named, names } = await aptIndexesNamed(root);
  const wanted = new Map(named.map((index) => [index.guestPath, index.sha256]));
  let removed = 0;
  for (const name of names) {
    const guestPath = `${APT_LISTS}/${name}`;
    if (name === 'lock' || RELEASE_FILE.test(name)) continue;
    const info = await statGuest(root, guestPath);
    if (!info || info.isDirectory()) continue; // partial/, auxfiles/: apt's own
    const expected = wanted.get(guestPath);
    const content = expected && info.isFile() ? await readGuestFile(root, guestPath, MAX_LIST_BYTES).catch(() => undefined) : undefined;
    if (content && sha256Text(content) === expected) continue;
    await removeGuestFile(root, guestPath);
    removed++;
  }
  if (removed) log.info(`package cache: ${removed} file(s) in the guest's lists that no release file there names as they are: removed, apt fetches what it needs`);
  return (await offerCachedFiles(root, packageCacheDir, 'apt-list', named, log, 'apt-get update')).files;
}

/** Keeps the lists apt fetched: each regular file whose bytes hash to what a release file beside it names. */
export async function keepAptLists(root: string, packageCacheDir: string, log: Logger): Promise<number> {
  const { named, names } = await aptIndexesNamed(root);
  // A release file names every architecture's and compression's files; apt keeps a few. One listing says which.
  const present = new Set(names.map((name) => `${APT_LISTS}/${name}`));
  return keepDownloadedFiles(root, packageCacheDir, 'apt-list', named.filter((index) => present.has(index.guestPath)), log, { maxFileBytes: MAX_LIST_BYTES, maxTotalBytes: MAX_KEPT_LIST_BYTES });
}
