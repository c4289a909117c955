import { posix } from 'node:path';
import { readGuestDir, removeGuestFile, statGuest } from '../util/guest-fs.js';
import type { Logger } from '../util/log.js';
import { isImageBuilderError } from '../util/errors.js';
import { keepDownloadedFiles, offerCachedFiles, type GuestPackageFile } from './package-cache.js';
import { readRepositoryPackages } from './rpm-metadata.js';

/**
 * The package cache (src/pkg/package-cache.ts) for dnf and zypper: where each keeps a repository's metadata and
 * its downloaded packages in the guest, and one transaction run with the cache around it.
 */

/** One repository as the guest's manager caches it. */
export interface CachedRepository {
  /** The repository's id (dnf) or alias (zypper), from its cache directory's name; undefined when that is not plain. */
  id: string | undefined;
  /** The guest directory holding repomd.xml and the primary file. */
  repodata: string;
  /** Where the manager keeps this repository's downloaded packages. */
  packages: string;
  /** The guest path the manager looks for a package at, from its location href; undefined: never a path we use. */
  pathOf: (href: string) => string | undefined;
}

export type RpmCacheLayout = 'dnf' | 'zypper';

/** A location's file name, when it is a plain rpm file name. */
const RPM_NAME = /^[A-Za-z0-9][A-Za-z0-9+._~^-]*\.rpm$/;

/** How deep the walk for package files goes below a repository's package directory (zypper nests by architecture). */
const WALK_DEPTH = 4;
/** The most entries the walk visits in one guest's package cache (a real one holds a few thousand at most). */
export const MAX_WALK_ENTRIES = 50_000;

/**
 * A relative location without `..`, `.` or empty parts, ending in an rpm file name, no deeper than the walk
 * reaches: every path the cache offers or keeps is one the walk finds again, to remove it afterwards.
 */
export function plainRelative(href: string): string | undefined {
  const parts = href.split('/');
  if (!parts.length || parts.length > WALK_DEPTH + 1 || parts.some((part) => !part || part === '.' || part === '..' || part.length > 255)) return undefined;
  return RPM_NAME.test(parts[parts.length - 1]) ? parts.join('/') : undefined;
}

/** dnf names a repository's cache directory `<id>-<16 hex digits of a hash of its URLs>`. */
const DNF_CACHE_SUFFIX = /-[0-9a-f]{16}$/;
/** A repository id that is safe as a file name and as a dnf or zypper option's value (`:` for Copr ids and SUSE services' repositories). */
const REPOSITORY_ID = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$/;
const repositoryId = (name: string) => (REPOSITORY_ID.test(name) ? name : undefined);

/**
 * dnf 4 keeps each repository in /var/cache/dnf/<id>-<hash>/ (dnf 5 in /var/cache/libdnf5/): repodata/ and
 * packages/<file name of the location>. zypper keeps the metadata in /var/cache/zypp/raw/<alias>/repodata/ and
 * packages in /var/cache/zypp/packages/<alias>/<location>.
 */
export async function cachedRepositories(root: string, layout: RpmCacheLayout): Promise<CachedRepository[]> {
  const found: CachedRepository[] = [];
  if (layout === 'dnf') {
    for (const base of ['/var/cache/dnf', '/var/cache/libdnf5']) {
      for (const name of (await readGuestDir(root, base)) ?? []) {
        const dir = `${base}/${name}`;
        if (!(await statGuest(root, `${dir}/repodata/repomd.xml`))?.isFile()) continue;
        found.push({ id: repositoryId(name.replace(DNF_CACHE_SUFFIX, '')), repodata: `${dir}/repodata`, packages: `${dir}/packages`, pathOf: (href) => (plainRelative(href) ? `${dir}/packages/${posix.basename(href)}` : undefined) });
      }
    }
    return found;
  }
  for (const alias of (await readGuestDir(root, '/var/cache/zypp/raw')) ?? []) {
    if (!(await statGuest(root, `/var/cache/zypp/raw/${alias}/repodata/repomd.xml`))?.isFile()) continue;
    const packages = `/var/cache/zypp/packages/${alias}`;
    found.push({ id: repositoryId(alias), repodata: `/var/cache/zypp/raw/${alias}/repodata`, packages, pathOf: (href) => {
      const relative = plainRelative(href);
      return relative ? `${packages}/${relative}` : undefined;
    } });
  }
  return found;
}

/**
 * Every .rpm under a guest directory, WALK_DEPTH levels deep, links included; undefined when the walk would visit
 * more than `budget.left` entries (a crafted guest's tree of any width must not make a build walk without end).
 */
async function rpmFilesUnder(root: string, dir: string, budget: { left: number }, depth = WALK_DEPTH): Promise<string[] | undefined> {
  const files: string[] = [];
  let names: string[];
  try {
    names = (await readGuestDir(root, dir)) ?? [];
  } catch (error) {
    // A directory past the listing's own bound is past this walk's budget too: nothing kept, the build goes on.
    if (isImageBuilderError(error) && error.code === 'BAD_INPUT') return undefined;
    throw error;
  }
  budget.left -= names.length;
  if (budget.left < 0) return undefined;
  for (const name of names) {
    const path = `${dir}/${name}`;
    const info = await statGuest(root, path);
    if (info?.isDirectory() && depth > 0) {
      const below = await rpmFilesUnder(root, path, budget, depth - 1);
      if (!below) return undefined;
      files.push(...below);
    } else if (name.endsWith('.rpm')) files.push(path);
  }
  return files;
}

/**
 * The .rpm files in each repository's package directory (by its repodata directory), all of them walked within one
 * budget of MAX_WALK_ENTRIES; undefined when the guest's cache holds more.
 */
export async function cachedPackageFiles(root: string, repositories: CachedRepository[]): Promise<Map<string, string[]> | undefined> {
  const budget = { left: MAX_WALK_ENTRIES };
  const found = new Map<string, string[]>();
  for (const repository of repositories) {
    const files = await rpmFilesUnder(root, repository.packages, budget);
    if (!files) return undefined;
    found.set(repository.repodata, files);
  }
  return found;
}

/**
 * Runs a dnf or zypper transaction with the package cache. The repositories' metadata must be in the guest's
 * cache already (a refresh before): what the store holds and that metadata names is put where the manager looks
 * for it; `download` must leave what it fetched in place (dnf with keepcache; zypper --download-only), and what is
 * there then and matches the metadata is kept; `install`, when given, is the transaction itself after that. Every
 * package file that was not in the guest's cache before is removed afterwards, used or not, so the image holds
 * what it would without the cache.
 */
export async function withRpmPackageCache(root: string, layout: RpmCacheLayout, cache: { dir: string; log: Logger }, manager: string, download: () => Promise<unknown>, install?: () => Promise<unknown>): Promise<void> {
  const repositories = await cachedRepositories(root, layout);
  const listed = new Map<string, string>(); // guest path → sha256
  for (const repository of repositories) {
    const read = await readRepositoryPackages(root, repository.repodata);
    if ('skipped' in read) {
      cache.log.info(`package cache: not used for the repository cached in ${repository.repodata}: ${read.skipped}`);
      continue;
    }
    for (const [href, sha256] of read.packages) {
      const path = repository.pathOf(href);
      if (path) listed.set(path, sha256);
    }
  }
  const present = async () => {
    const found = await cachedPackageFiles(root, repositories);
    return found && [...found.values()].flat();
  };
  const walked = await present();
  if (!walked) {
    cache.log.info(`package cache: not used: the guest's package cache holds more than ${MAX_WALK_ENTRIES} entries`);
    await download();
    await install?.();
    return;
  }
  const before = new Set(walked);
  let offered: string[] = [];
  try {
    const wanted = [...listed].map(([guestPath, sha256]): GuestPackageFile => ({ guestPath, sha256 }));
    offered = (await offerCachedFiles(root, cache.dir, 'rpm', wanted, cache.log, manager)).paths;
    await download();
    const downloaded = ((await present()) ?? []).filter((path) => listed.has(path)).map((guestPath) => ({ guestPath, sha256: listed.get(guestPath)! }));
    await keepDownloadedFiles(root, cache.dir, 'rpm', downloaded, cache.log);
    await install?.();
  } finally {
    // What the cache offered goes whatever the walk finds now; then every other new package file it finds.
    for (const path of offered) await removeGuestFile(root, path).catch(() => undefined);
    for (const path of (await present()) ?? []) if (!before.has(path)) await removeGuestFile(root, path);
  }
}
