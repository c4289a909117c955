import type { ChrootSession } from '../chroot/session.js';
import { programArchitecture } from '../util/architecture.js';
import { GUEST_READ_LIMITS, readGuestText, removeGuestFile } from '../util/guest-fs.js';
import { writeGuestFile } from '../chroot/guest-write.js';
import { ImageBuilderError } from '../util/errors.js';
import type { InstallOptions, InstalledPackage, PackageManager, PackageRepository, PackageSpec, ServedRepository } from './types.js';
import { aptArchiveName, keepDownloadedDebs, offerCachedDebs, rememberedAptPackagesIndex } from './package-cache.js';
import { settle, settledValue, type Settled } from '../util/settle.js';
import { APT_BUNDLE_LISTS_SETUP, aptBundleOptions, collectDownloadedDebs } from './apt-bundle.js';
import { requireInBundle } from './bundle-use.js';
import { APT_RELEASE_FILES_ONLY, aptListsPresent, aptListsWithoutUpdate, keepAptLists, offerCachedAptLists } from './apt-lists-cache.js';
import { metadataFreshness } from './metadata-freshness.js';
import { APT_CACHE_OPTIONS, aptCacheEnv, carryAptSourceCache, forgetStoredSourceCache, offerStoredSourceCache } from './apt-options.js';

/** Keeps the guest's own configuration files when a package ships a newer one, never asks. */
const APT_OPTIONS = ['-y', '-q', '-o', 'Dpkg::Options::=--force-confdef', '-o', 'Dpkg::Options::=--force-confold', '-o', 'Dpkg::Use-Pty=0', ...APT_CACHE_OPTIONS];

/** Parses a dpkg status file (deb822 stanzas) into the installed packages. */
export function parseDpkgStatus(text: string): InstalledPackage[] {
  const packages: InstalledPackage[] = [];
  for (const stanza of text.split(/\n\s*\n/)) {
    const fields = new Map<string, string>();
    for (const line of stanza.split('\n')) {
      const match = /^([A-Za-z0-9-]+):\s*(.*)$/.exec(line);
      if (match) fields.set(match[1], match[2]);
    }
    const status = fields.get('Status')?.split(/\s+/);
    if (!fields.get('Package') || status?.[2] !== 'installed') continue;
    const source = fields.get('Source')?.split(' ')[0];
    packages.push({
      name: fields.get('Package')!,
      version: fields.get('Version')!,
      architecture: fields.get('Architecture') ?? 'all',
      source: source ?? fields.get('Package')!,
    });
  }
  return packages.sort((a, b) => a.name.localeCompare(b.name) || a.architecture.localeCompare(b.architecture));
}

/** Removes the downloaded package lists (what `apt-get update` fetched), keeping `lock` and `partial/`. */
export const APT_LISTS_CLEAN =
  'if [ -d /var/lib/apt/lists ]; then find /var/lib/apt/lists -mindepth 1 ! -path /var/lib/apt/lists/partial ! -path /var/lib/apt/lists/lock -delete; fi';

/** `extra`: options before the packages (an offline build's bundle source). */
export function aptInstallArgs(packages: PackageSpec[], extra: string[] = []): string[] {
  return ['apt-get', 'install', ...APT_OPTIONS, ...extra, '--no-install-recommends', ...packages.map((p) => (p.version ? `${p.name}=${p.version}` : p.name))];
}

/** `apt-get upgrade` for everything; for names, an install that only upgrades what is already installed. */
export function aptUpgradeArgs(names: string[] | 'all', extra: string[] = []): string[] {
  return names === 'all' ? ['apt-get', 'upgrade', ...APT_OPTIONS, ...extra] : ['apt-get', 'install', ...APT_OPTIONS, ...extra, '--no-install-recommends', '--only-upgrade', ...names];
}

export function aptHoldArgs(names: string[]): string[] {
  return ['apt-mark', ...APT_CACHE_OPTIONS, 'hold', ...names];
}

const ARMORED_PUBLIC_KEY = '-----BEGIN PGP PUBLIC KEY BLOCK-----';

/**
 * Where apt finds a repository's key: /etc/apt/keyrings/NAME.asc for an armored key, NAME.gpg for a binary one
 * (apt tells the two apart by the extension only; sources.list(5), Signed-By).
 */
export function aptKeyringPath(repository: Pick<PackageRepository, 'name' | 'key'>): string {
  const armored = repository.key.toString('latin1').includes(ARMORED_PUBLIC_KEY);
  return `/etc/apt/keyrings/${repository.name}.${armored ? 'asc' : 'gpg'}`;
}

/** A flat repository's suite is an exact path, which ends in "/" (sources.list(5)); it has no components. */
export function isFlatSuite(suite: string): boolean {
  return suite.endsWith('/');
}

/** The deb822 source entry (sources.list(5)) for a repository whose key is at keyringPath. */
export function aptSourcesEntry(repository: Omit<PackageRepository, 'key'>, keyringPath: string): string {
  const suite = repository.suite ?? '/';
  const lines = ['Types: deb', `URIs: ${repository.url}`, `Suites: ${suite}`];
  if (!isFlatSuite(suite)) lines.push(`Components: ${(repository.components ?? []).join(' ')}`);
  lines.push(`Signed-By: ${keyringPath}`);
  return `${lines.join('\n')}\n`;
}

/**
 * Runs an apt transaction with the package cache (what it holds and the guest's signed lists ask for is put into
 * the archives first, what apt downloaded is kept afterwards), or, making a bundle, keeps everything apt fetched
 * for it. apt-get clean then empties the archives as always.
 */
async function transact(session: ChrootSession, options: InstallOptions, transaction: () => Promise<unknown>): Promise<void> {
  const cache = options.packageCache;
  const collect = options.bundle?.collect;
  if (cache) {
    // The lists were fetched before (apt-get update) and the transaction does not change them: read once (~0.3 s
    // after an update), before it only if the store holds a .deb to offer (a runner's first build has none), else
    // while it runs.
    const indexing = settle(rememberedAptPackagesIndex(session.root));
    const indexed = () => settledValue(indexing);
    let offered: string[] = [];
    try {
      offered = (await offerCachedDebs(session.root, cache.dir, async () => ({ index: await indexed(), installed: await installedArchiveNames(session.root) }), cache.log)).paths;
      await transaction();
      await keepDownloadedDebs(session.root, cache.dir, await indexed(), cache.log, new Set(offered));
    } finally {
      // Whatever happened: a list still open would keep the guest mounted. What the cache offered goes too, by the
      // host: `apt-get clean` empties the archives apt is configured with, which an image may have moved elsewhere.
      await indexing;
      for (const path of offered) await removeGuestFile(session.root, path).catch(() => undefined);
    }
  } else {
    await transaction();
  }
  if (collect) await collectDownloadedDebs(session.root, collect, collect.log);
}

/** The archive names (name_version_arch.deb) of the packages dpkg has installed: apt fetches none of them again. */
async function installedArchiveNames(root: string): Promise<Set<string>> {
  const status = await readGuestText(root, '/var/lib/dpkg/status', GUEST_READ_LIMITS.packageStatus);
  return new Set(parseDpkgStatus(status ?? '').filter((p) => p.version).map((p) => aptArchiveName(p.name, p.version, p.architecture)));
}

export function createApt(): PackageManager {
  // Package lists: once per build, and again when anything under /etc/apt changed (sources, keys, apt.conf.d);
  // apt-get clean keeps them, and they are fetched again if a step removed them.
  const lists = metadataFreshness(['/etc/apt'], aptListsPresent);
  // Guests (by their root, one per build) whose lists were made from the release files and the package cache.
  const listsFromCache = new Set<string>();
  // The lists an update fetched are kept (read, hashed, copied to the cache: ~80 MB, ~0.3 s for Debian's) while
  // the install or upgrade after it runs: it does not change them, and mostly waits for downloads and dpkg.
  const keepingLists = new Map<string, Promise<Settled<number>>>();
  /** Runs an install or upgrade; the lists its update fetched are kept meanwhile, and awaited whatever happens. */
  const withListsKept = async (session: ChrootSession, body: () => Promise<void>) => {
    let failed = true;
    try {
      await body();
      failed = false;
    } finally {
      const keeping = keepingLists.get(session.root);
      keepingLists.delete(session.root);
      const kept = await keeping;
      // Not keeping them fails the step, as it did before, unless the step failed already (its error says more).
      if (kept && !kept.ok && !failed) throw kept.failure;
    }
  };
  const update = async (session: ChrootSession, options: InstallOptions) => {
    const served = options.bundle?.serve;
    if (await lists.upToDate(session, Boolean(served))) return;
    const cache = options.packageCache;
    if (served) {
      await session.exec(APT_BUNDLE_LISTS_SETUP, { purpose: "making the bundle's lists directory", errorCode: 'STEP_FAILED' });
      await session.exec(['apt-get', 'update', '-q', ...APT_CACHE_OPTIONS, ...aptBundleOptions(served)], { env: await aptCacheEnv(session), streamOutput: true, purpose: "apt-get update from the bundle's repository", errorCode: 'STEP_FAILED' });
    } else {
      // With the package cache: the release files first (verified by apt), then the cached lists they name, and
      // nothing else left in the lists. Should that first run fail, the real one below says why. Once per build,
      // or again if the lists are gone; after a repository step, apt's own update alone fetches what changed.
      // When the cache holds every list that update would fetch, it is left out: it would fetch each release file
      // again only to find it unchanged, and the install builds apt's cache from the same lists.
      const realUpdate = async () => {
        // The lists change now: what apt builds from them is not what a later build's offered lists give.
        forgetStoredSourceCache(session);
        await session.exec(['apt-get', 'update', '-q', ...APT_CACHE_OPTIONS], { env: await aptCacheEnv(session), streamOutput: true, purpose: 'apt-get update in the guest', errorCode: 'STEP_FAILED', hint: "check the guest's /etc/apt/sources.list and that its mirror is reachable from this host" });
        if (cache) keepingLists.set(session.root, settle(keepAptLists(session.root, cache.dir, cache.log)));
      };
      if (cache && (!listsFromCache.has(session.root) || !(await aptListsPresent(session.root)))) {
        const releaseFiles = await session.exec(['apt-get', 'update', '-q', ...APT_CACHE_OPTIONS, ...APT_RELEASE_FILES_ONLY], { env: await aptCacheEnv(session), allowFailure: true, purpose: 'apt-get update of the release files' });
        await offerCachedAptLists(session.root, cache.dir, cache.log);
        listsFromCache.add(session.root);
        // Before the next apt command, which would build it from the lists (~0.4 s for Debian's).
        await offerStoredSourceCache(session, cache);
        // The host indexes the lists (for the .deb offer) on the other core while the guest's apt answers, and
        // while its update runs if it must (the index is remembered by the lists' identity: a list the update
        // changes is read again). Awaited whatever happens: an open list would keep the guest mounted.
        const indexing = rememberedAptPackagesIndex(session.root).catch(() => undefined);
        try {
          if (await aptListsWithoutUpdate(session, releaseFiles, cache.log)) {
            cache.log.info('package cache: the lists hold every index apt-get update would fetch, each what its release file names: apt-get update is not run again');
          } else {
            await realUpdate();
          }
        } finally {
          await indexing;
        }
      } else {
        await realUpdate();
      }
    }
    await lists.fetched(session, Boolean(served));
  };
  const bundleHint = (served: ServedRepository | undefined, hint: string) =>
    served ? `${hint}; offline, apt sees only the bundle: if it lacks a dependency, run \`imagebuilder bundle\` again with this recipe` : hint;
  return {
    name: 'apt',
    async install(session, packages, options = {}) {
      if (options.disableExcludes) {
        throw new ImageBuilderError('STEP_FAILED', `apt has no repository excludes to disable (disable_excludes: ${options.disableExcludes})`, {
          hint: 'disable_excludes is for dnf and yum: give that packages step `when: { family: redhat }`',
        });
      }
      const served = options.bundle?.serve;
      if (served) await requireInBundle(session.root, served, packages, (root) => this.listInstalled(root));
      await withListsKept(session, async () => {
        await update(session, options);
        const env = await aptCacheEnv(session);
        await transact(session, options, () =>
          session.exec(aptInstallArgs(packages, served ? aptBundleOptions(served) : []), {
            env,
            streamOutput: true,
            purpose: 'installing packages',
            errorCode: 'STEP_FAILED',
            hint: bundleHint(served, 'check the package names and versions: `apt-cache policy NAME` inside `imagebuilder shell` lists what is available'),
          }),
        );
      });
      await session.exec(['apt-get', 'clean'], { purpose: 'cleaning the apt cache' });
    },
    async upgrade(session, names, options = {}) {
      const served = options.bundle?.serve;
      await withListsKept(session, async () => {
        await update(session, options);
        const env = await aptCacheEnv(session);
        await transact(session, options, () => session.exec(aptUpgradeArgs(names, served ? aptBundleOptions(served) : []), {
          env,
          streamOutput: true,
          purpose: names === 'all' ? 'upgrading all packages' : `upgrading ${names.join(' ')}`,
          errorCode: 'STEP_FAILED',
          hint: bundleHint(served, 'a held package is not upgraded: release it first (`apt-mark unhold NAME` in a run step)'),
        }));
      });
      await session.exec(['apt-get', 'clean'], { purpose: 'cleaning the apt cache' });
    },
    async hold(session, names) {
      await session.exec(aptHoldArgs(names), { env: await aptCacheEnv(session), streamOutput: true, purpose: `holding ${names.join(' ')}`, errorCode: 'STEP_FAILED' });
    },
    finishStep: carryAptSourceCache,
    async addRepository(session, repository) {
      if (repository.exclude?.length) {
        throw new ImageBuilderError('STEP_FAILED', `repository ${repository.name}: exclude is for dnf and yum repositories; apt has no per-source exclude`, {
          hint: 'hold the packages instead (packages: { hold: … } runs apt-mark hold), or give this step `when: { family: redhat }`',
        });
      }
      const keyPath = aptKeyringPath(repository);
      const sourcesPath = `/etc/apt/sources.list.d/${repository.name}.sources`;
      // The key first: a source never names a keyring that is not there yet.
      const keySha = await writeGuestFile(session, { path: keyPath, content: repository.key, mode: '0644' }, `writing the key of repository ${repository.name}`);
      const sources = aptSourcesEntry(repository, keyPath);
      const sourcesSha = await writeGuestFile(session, { path: sourcesPath, content: sources, mode: '0644' }, `writing ${sourcesPath}`);
      // The package lists no longer describe every source: the next install or upgrade fetches them again.
      lists.forget(session);
      return [
        { path: keyPath, sha256: keySha, ...(repository.keySource ? { source: repository.keySource } : {}) },
        { path: sourcesPath, sha256: sourcesSha },
      ];
    },
    async remove(session, names) {
      const env = await aptCacheEnv(session);
      await session.exec(['apt-get', 'purge', ...APT_OPTIONS, ...names], { env, streamOutput: true, purpose: 'removing packages', errorCode: 'STEP_FAILED' });
      await session.exec(['apt-get', 'autoremove', '--purge', ...APT_OPTIONS], { env, streamOutput: true, purpose: 'removing unused dependencies', errorCode: 'STEP_FAILED' });
    },
    async cleanCache(session) {
      await session.exec(['apt-get', 'clean'], { purpose: 'cleaning the apt cache', errorCode: 'STEP_FAILED' });
      // The lock file and the partial/ directory (owned by _apt) stay, as apt made them.
      await session.exec(['/bin/sh', '-c', APT_LISTS_CLEAN], { purpose: 'removing the apt package lists', errorCode: 'STEP_FAILED' });
      lists.forget(session);
    },
    async listInstalled(root) {
      const status = await readGuestText(root, '/var/lib/dpkg/status', GUEST_READ_LIMITS.packageStatus);
      if (status === undefined) throw new ImageBuilderError('BAD_INPUT', "the guest has no dpkg database (/var/lib/dpkg/status)", { hint: 'is /etc/os-release right about this image being of the Debian family?' });
      return parseDpkgStatus(status);
    },
    async architecture(root) {
      // dpkg's own package is of the native architecture (dpkg --print-architecture), which tells armhf from
      // armel exactly; a guest without it (or without a readable dpkg database) is named by its programs' ELF headers.
      const dpkg = (await this.listInstalled(root).catch(() => [])).find((p) => p.name === 'dpkg');
      return dpkg?.architecture ?? (await programArchitecture(root))?.architecture?.debian;
    },
  };
}
