import type { ChrootSession } from '../chroot/session.js';
import { ImageBuilderError } from '../util/errors.js';
import { queryRpmDatabase, rpmArchitecture } from './rpm.js';
import { emptyCacheDirs, refuseAptFields, releaseverOption, repoSection, writeRpmRepository } from './rpm-guest.js';
import { withRpmPackageCache } from './rpm-package-cache.js';
import { collectRpmDownloads, zypperBundleOptions } from './rpm-bundle.js';
import { requireInBundle } from './bundle-use.js';
import type { InstallOptions, PackageManager, PackageRepository, PackageSpec } from './types.js';
import { anyEntryIn, metadataFreshness } from './metadata-freshness.js';

/**
 * zypper (openSUSE Leap and Tumbleweed, SLES): inside the chroot with the guest's own configuration. Every command
 * is non-interactive (--non-interactive, a global option, so it goes before the command); a question it would ask
 * gets its default answer, which for anything risky (an unknown key, a conflict) is "no": the command fails.
 */

/** The global options: never ask. */
export const ZYPPER = ['zypper', '--non-interactive'];

/** Options of install and update: no Recommends (as apt's --no-install-recommends), licenses accepted (SLES asks). */
const TRANSACTION = ['--no-recommends', '--auto-agree-with-licenses'];

/** The guest's cache directory: metadata (raw, solv) and downloaded packages. */
export const ZYPPER_CACHE_DIRS = ['/var/cache/zypp'];

/** `name=version`, the recipe's form, is also zypper's: a capability with an exact version (`[epoch:]version[-release]`). */
export function zypperPackageArg(spec: PackageSpec): string {
  return spec.version ? `${spec.name}=${spec.version}` : spec.name;
}

/** `--download-only` as an option of install, update or dup: fetch into the package cache, change nothing. */
export const DOWNLOAD_ONLY = ['--download-only'];

export function zypperInstallArgs(packages: PackageSpec[], global: string[] = [], options: string[] = []): string[] {
  return [...ZYPPER, ...global, 'install', ...TRANSACTION, ...options, ...packages.map(zypperPackageArg)];
}

/**
 * `zypper update` upgrades installed packages only (never installs new ones): everything, or the names given.
 * A rolling release upgrades everything with `zypper dup`, as openSUSE documents for Tumbleweed: a snapshot can
 * rename, split or drop packages, which update never does.
 */
export function zypperUpgradeArgs(names: string[] | 'all', global: string[] = [], rolling = false, options: string[] = []): string[] {
  if (names === 'all' && rolling) return [...ZYPPER, ...global, 'dup', ...TRANSACTION, ...options];
  return [...ZYPPER, ...global, 'update', ...TRANSACTION, ...options, ...(names === 'all' ? [] : names)];
}

/** Removes the packages and the dependencies nothing else needs any more (apt's purge + autoremove). */
export function zypperRemoveArgs(names: string[], global: string[] = []): string[] {
  return [...ZYPPER, ...global, 'remove', '--clean-deps', ...names];
}

/**
 * The .repo file in /etc/zypp/repos.d (zypper(8), libzypp's RepoInfo): type rpm-md, metadata refreshed when
 * used (autorefresh=1), downloaded packages not kept. As for dnf, every package must be signed by the key at
 * gpgkey (pkg_gpgcheck=1), a key imported into the guest's rpm database beforehand, so zypper trusts it
 * without asking; the repository metadata is not required to be signed (repo_gpgcheck=0): it names the
 * packages by their checksums.
 */
export function zypperRepoFile(repository: Pick<PackageRepository, 'name' | 'url'>, keyPath: string): string {
  return repoSection(repository.name, [
    ['name', repository.name],
    ['enabled', '1'],
    ['autorefresh', '1'],
    ['baseurl', repository.url],
    ['type', 'rpm-md'],
    ['gpgcheck', '1'],
    ['repo_gpgcheck', '0'],
    ['pkg_gpgcheck', '1'],
    ['gpgkey', `file://${keyPath}`],
    ['keeppackages', '0'],
  ]);
}

export interface ZypperOptions {
  /** os-release VERSION_ID, passed as --releasever only when the guest has no base product or release package. */
  releasever?: string;
  /** A rolling release (Tumbleweed, Slowroll): upgrading everything is a distribution upgrade. */
  rolling?: boolean;
}

export function createZypper(options: ZypperOptions = {}): PackageManager {
  // Repositories refreshed once per build, again when their configuration changed; a bundle's (in the session's
  // /run) once per session.
  const metadata = metadataFreshness(['/etc/zypp/repos.d', '/etc/zypp/services.d', '/etc/zypp/zypp.conf', '/etc/zypp/vars.d', '/usr/etc/zypp'], anyEntryIn(ZYPPER_CACHE_DIRS));
  // libzypp takes $releasever from the base product (/etc/products.d/baseproduct), else from a release package.
  const releasever = releaseverOption({ releasever: options.releasever, files: ['/etc/products.d/baseproduct'], render: (version) => ['--releasever', version] });

  /** Offline (apply --bundle): the global options that make zypper read the bundle's repositories instead of the guest's. */
  const served = (use: InstallOptions = {}): string[] => (use.bundle?.serve?.rpm ? zypperBundleOptions(use.bundle.serve) : []);

  /** Global options of a command that reads repositories: the first one of a build refreshes them all. */
  const repositoryOptions = async (session: ChrootSession, use: InstallOptions): Promise<string[]> => {
    const global = [...(await releasever(session)), ...served(use)];
    const perSession = Boolean(use.bundle?.serve);
    if (!(await metadata.upToDate(session, perSession))) {
      await session.exec([...ZYPPER, ...global, 'refresh'], {
        streamOutput: true,
        purpose: 'refreshing the zypper repositories',
        errorCode: 'STEP_FAILED',
        hint: "check the guest's repositories (/etc/zypp/repos.d) and that they are reachable from this host; a repository whose key the guest does not trust fails here",
      });
      await metadata.fetched(session, perSession);
    }
    return global;
  };

  /**
   * A transaction with the package cache around it, or making a bundle, every package it fetched kept: zypper
   * keeps no download of a repository that says keeppackages=0, so it runs twice, first --download-only (what
   * that fetches is taken), then for real, from what is then in its cache. The metadata was refreshed before
   * (repositoryOptions).
   */
  const withCache = async (session: ChrootSession, use: InstallOptions, transaction: (extra: string[]) => Promise<unknown>) => {
    const collect = use.bundle?.collect;
    if (collect) {
      await collectRpmDownloads(session.root, 'zypper', collect, () => transaction(DOWNLOAD_ONLY), () => transaction([]));
      return;
    }
    if (!use.packageCache) {
      await transaction([]);
      return;
    }
    await withRpmPackageCache(session.root, 'zypper', use.packageCache, 'zypper', () => transaction(DOWNLOAD_ONLY), () => transaction([]));
  };

  const unsupported = (what: string, hint: string) => new ImageBuilderError('STEP_FAILED', `zypper has no ${what}`, { hint });

  return {
    name: 'zypper',
    async install(session, packages, install = {}) {
      if (install.disableExcludes) {
        throw unsupported(`repository excludes to disable (disable_excludes: ${install.disableExcludes})`, 'disable_excludes is for dnf and yum: give that packages step `when: { family: redhat }`');
      }
      const serve = install.bundle?.serve;
      if (serve) await requireInBundle(session.root, serve, packages, (root) => this.listInstalled(root));
      const global = await repositoryOptions(session, install);
      await withCache(session, install, (extra) =>
        session.exec(zypperInstallArgs(packages, global, extra), {
          streamOutput: true,
          purpose: extra.length ? 'downloading packages' : 'installing packages',
          errorCode: 'STEP_FAILED',
          hint:
            '"Signature verification failed" means a package is not signed by the key its repository\'s gpgkey names; otherwise check the package ' +
            'names and versions: `zypper search -s NAME` inside `imagebuilder shell` lists what is available',
        }),
      );
    },
    async upgrade(session, names, upgrade = {}) {
      const global = await repositoryOptions(session, upgrade);
      await withCache(session, upgrade, (extra) =>
        session.exec(zypperUpgradeArgs(names, global, options.rolling, extra), {
          streamOutput: true,
          purpose: names === 'all' ? 'upgrading all packages' : `upgrading ${names.join(' ')}`,
          errorCode: 'STEP_FAILED',
          hint: 'a locked package stays at its version: release it first (`zypper removelock NAME` in a run step)',
        }),
      );
    },
    async remove(session, names, options) {
      await session.exec(zypperRemoveArgs(names, [...(await releasever(session)), ...served(options)]), { streamOutput: true, purpose: 'removing packages', errorCode: 'STEP_FAILED' });
    },
    async hold(session, names) {
      // A lock in /etc/zypp/locks: no install, update or removal changes these packages until `zypper removelock`.
      await session.exec([...ZYPPER, 'addlock', ...names], { streamOutput: true, purpose: `holding ${names.join(' ')}`, errorCode: 'STEP_FAILED' });
    },
    async addRepository(session, repository) {
      refuseAptFields(repository, 'zypper');
      if (repository.exclude?.length) {
        throw unsupported(`per-repository exclude (repository ${repository.name})`, 'hold the packages instead: packages: { hold: … } locks them (zypper addlock)');
      }
      const files = await writeRpmRepository(session, repository, `/etc/zypp/repos.d/${repository.name}.repo`, (keyPath) => zypperRepoFile(repository, keyPath), async (keyPath) => {
        // zypper trusts the keys in the rpm database; it would otherwise ask (and, non-interactive, refuse).
        await session.exec(['rpm', '--import', keyPath], { purpose: `importing the key of repository ${repository.name} into the rpm database`, errorCode: 'STEP_FAILED' });
      });
      metadata.forget(session);
      return files;
    },
    async cleanCache(session) {
      await session.exec([...ZYPPER, 'clean', '--all'], { purpose: 'cleaning the zypper cache', errorCode: 'STEP_FAILED' });
      await emptyCacheDirs(session, ZYPPER_CACHE_DIRS);
      metadata.forget(session);
    },
    listInstalled(root, log) {
      return queryRpmDatabase(root, { log });
    },
    async architecture(root, log) {
      return rpmArchitecture(root, await queryRpmDatabase(root, { log }));
    },
  };
}
