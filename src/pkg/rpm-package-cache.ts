import { posix } from 'node:path';
import { readGuestDir, removeGuestFile, statGuest } from '../util/guest-fs.js';
import type { Logger } from '../util/log.js';
import { keepDownloadedFiles, offerCachedFiles, type GuestPackageFile } from './package-cache.js';
import { readRepositoryPackages } from './rpm-metadata.js';

/**
 * The package cache (src/pkg/package-cache.ts) for dnf and zypper: where each keeps a repository's metadata and
 * its downloaded packages in the guest, and one transaction run with the cache around it.
 */

/** One repository as the guest's manager caches it. */
interface CachedRepository {
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

/** A relative location without `..`, `.` or empty parts, ending in an rpm file name. */
function plainRelative(href: string): string | undefined {
  const parts = href.split('/');
  if (!parts.length || parts.some((part) => !part || part === '.' || part === '..' || part.length > 255)) return undefined;
  return RPM_NAME.test(parts[parts.length - 1]) ? parts.join('/') : undefined;
}

/**
 * dnf 4 keeps each repository in /var/cache/dnf/<id>-<hash>/ (dnf 5 in /var/cache/libdnf5/): repodata/ and
 * packages/<file name of the location>. zypper keeps the metadata in /var/cache/zypp/raw/<alias>/repodata/ and
 * packages in /var/cache/zypp/packages/<alias>/<location>.
 */
async function cachedRepositories(root: string, layout: RpmCacheLayout): Promise<CachedRepository[]> {
  const found: CachedRepository[] = [];
  if (layout === 'dnf') {
    for (const base of ['/var/cache/dnf', '/var/cache/libdnf5']) {
      for (const name of (await readGuestDir(root, base)) ?? []) {
        const dir = `${base}/${name}`;
        if (!(await statGuest(root, `${dir}/repodata/repomd.xml`))?.isFile()) continue;
        found.push({ repodata: `${dir}/repodata`, packages: `${dir}/packages`, pathOf: (href) => (plainRelative(href) ? `${dir}/packages/${posix.basename(href)}` : undefined) });
      }
    }
    return found;
  }
  for (const alias of (await readGuestDir(root, '/var/cache/zypp/raw')) ?? []) {
    if (!(await statGuest(root, `/var/cache/zypp/raw/${alias}/repodata/repomd.xml`))?.isFile()) continue;
    const packages = `/var/cache/zypp/packages/${alias}`;
    found.push({ repodata: `/var/cache/zypp/raw/${alias}/repodata`, packages, pathOf: (href) => {
      const relative = plainRelative(href);
      return relative ? `${packages}/${relative}` : undefined;
    } });
  }
  return found;
}

/** Every .rpm under a guest directory, a few levels deep (zypper nests by architecture), links included. */
async function rpmFilesUnder(root: string, dir: string, depth = 4): Promise<string[]> {
  const files: string[] = [];
  for (const name of (await readGuestDir(root, dir)) ?? []) {
    const path = `${dir}/${name}`;
    const info = await statGuest(root, path);
    if (info?.isDirectory() && depth > 0) files.push(...(await rpmFilesUnder(root, path, depth - 1)));
    else if (name.endsWith('.rpm')) files.push(path);
  }
  return files;
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
  const present = async () => (await Promise.all(repositories.map((repository) => rpmFilesUnder(root, repository.packages)))).flat();
  const before = new Set(await present());
  try {
    const wanted = [...listed].map(([guestPath, sha256]): GuestPackageFile => ({ guestPath, sha256 }));
    await offerCachedFiles(root, cache.dir, 'rpm', wanted, cache.log, manager);
    await download();
    const downloaded = (await present()).filter((path) => listed.has(path)).map((guestPath) => ({ guestPath, sha256: listed.get(guestPath)! }));
    await keepDownloadedFiles(root, cache.dir, 'rpm', downloaded, cache.log);
    await install?.();
  } finally {
    for (const path of await present()) if (!before.has(path)) await removeGuestFile(root, path);
  }
}
