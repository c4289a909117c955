import type { ChrootSession } from '../chroot/session.js';
import { writeGuestFile } from '../chroot/guest-write.js';
import { ImageBuilderError } from '../util/errors.js';
import { queryRpmDatabase, rpmArchitecture } from './rpm.js';
import { emptyCacheDirs, readGuestConfig, refuseAptFields, releaseverOption, repoSection, writeRpmRepository } from './rpm-guest.js';
import { withRpmPackageCache } from './rpm-package-cache.js';
import { collectRpmDownloads, definedDnfRepositories, dnfBundleOptions } from './rpm-bundle.js';
import { requireInBundle } from './bundle-use.js';
import type { InstallOptions, PackageManager, PackageRepository, PackageSpec } from './types.js';
import { anyEntryIn, metadataFreshness } from './metadata-freshness.js';

/**
 * dnf (Fedora, RHEL/CentOS Stream/Rocky/Alma/Oracle 8+, Amazon Linux 2023), yum (CentOS/RHEL 7, Amazon Linux 2)
 * and tdnf (Photon OS): one implementation, since yum's command line is what dnf kept and tdnf implements the
 * same subset (install, remove, upgrade, clean, --refresh, --releasever, excludepkgs, .repo files in
 * /etc/yum.repos.d). They differ in the table below. All run inside the chroot with the guest's own
 * configuration (no --installroot: the chroot is the root); every command is non-interactive (-y).
 */
export type RpmManagerCommand = 'dnf' | 'yum' | 'tdnf';

export interface DnfOptions {
  command: RpmManagerCommand;
  /**
   * The release version from the guest's os-release (VERSION_ID), passed as --releasever only when the guest
   * cannot tell its own (see RELEASEVER_PROBE); undefined: never passed.
   */
  releasever?: string;
}

/**
 * yum loads a plugin only when its configuration file enables it (and plugins are not off in yum.conf):
 * exits 0 when yum-plugin-versionlock is installed and enabled.
 */
export const YUM_VERSIONLOCK_PROBE =
  "grep -Eqi '^[[:space:]]*enabled[[:space:]]*=[[:space:]]*(1|yes|true|on)[[:space:]]*$' /etc/yum/pluginconf.d/versionlock.conf 2>/dev/null && " +
  "! grep -Eqi '^[[:space:]]*plugins[[:space:]]*=[[:space:]]*(0|no|false|off)[[:space:]]*$' /etc/yum.conf 2>/dev/null";

interface RpmManagerTraits {
  /** The main configuration, where a hold without versionlock goes. */
  mainConfig: string;
  /** The key that excludes packages there (dnf also reads `exclude`; yum knows only `exclude`). */
  excludeKey: 'excludepkgs' | 'exclude';
  cacheDirs: string[];
  /** Files that settle $releasever besides a release package (RELEASEVER_PROBE). */
  releaseverFiles: string[];
  upgrade: string;
  /** A true boolean, as this manager's configuration spells it. */
  yes: string;
  /**
   * Options of every transaction: no questions; weak dependencies (Recommends) left out like apt's
   * --no-install-recommends (dnf only: yum has none, tdnf installs none); downloaded packages not kept,
   * whatever the guest's keepcache (tdnf keeps none unless told).
   */
  transaction: string[];
  /** How repository metadata is refreshed once per build: an option (dnf, tdnf) or expiring the cache (yum 3). */
  refresh: 'option' | 'expire-cache';
  /** The command whose exit status says the versionlock plugin is there and enabled; none: tdnf has no plugin. */
  versionlockProbe?: string[];
  /** `--disableexcludes=REPO` for an install from a repository whose .repo file excludes packages (tdnf: none per repository). */
  disableExcludes: boolean;
}

/** Per manager: where its configuration and caches are and how its command line differs. */
export const RPM_MANAGERS: Record<RpmManagerCommand, RpmManagerTraits> = {
  dnf: {
    mainConfig: '/etc/dnf/dnf.conf', excludeKey: 'excludepkgs', cacheDirs: ['/var/cache/dnf', '/var/cache/libdnf5'],
    releaseverFiles: ['/etc/dnf/vars/releasever', '/etc/yum/vars/releasever'], upgrade: 'upgrade', yes: 'True',
    transaction: ['-y', '--setopt=install_weak_deps=False', '--setopt=keepcache=False'], refresh: 'option',
    versionlockProbe: ['dnf', '-q', 'versionlock', '--help'], disableExcludes: true,
  },
  yum: {
    mainConfig: '/etc/yum.conf', excludeKey: 'exclude', cacheDirs: ['/var/cache/yum'],
    releaseverFiles: ['/etc/yum/vars/releasever'], upgrade: 'update', yes: '1',
    transaction: ['-y', '--setopt=keepcache=0'], refresh: 'expire-cache',
    versionlockProbe: ['/bin/sh', '-c', YUM_VERSIONLOCK_PROBE], disableExcludes: true,
  },
  tdnf: {
    mainConfig: '/etc/tdnf/tdnf.conf', excludeKey: 'excludepkgs', cacheDirs: ['/var/cache/tdnf'],
    releaseverFiles: ['/etc/tdnf/vars/releasever'], upgrade: 'upgrade', yes: 'true',
    transaction: ['-y'], refresh: 'option', disableExcludes: false,
  },
};

/**
 * Options of every transaction of this manager (see RpmManagerTraits.transaction); `keepDownloads`: dnf keeps what
 * it downloaded, for the package cache to take (which removes it from the guest afterwards).
 */
export function transactionOptions(command: RpmManagerCommand, keepDownloads = false): string[] {
  const options = RPM_MANAGERS[command].transaction;
  return keepDownloads ? options.map((option) => (option === '--setopt=keepcache=False' ? '--setopt=keepcache=True' : option)) : options;
}

/** `name=version` (the recipe's form) is dnf's `name-version`; a version may carry an epoch (`2:6.7-1.fc40`). */
export function rpmPackageArg(spec: PackageSpec): string {
  return spec.version ? `${spec.name}-${spec.version}` : spec.name;
}

export function dnfInstallArgs(command: RpmManagerCommand, packages: PackageSpec[], extra: string[] = [], keepDownloads = false): string[] {
  return [command, 'install', ...transactionOptions(command, keepDownloads), ...extra, ...packages.map(rpmPackageArg)];
}

export function dnfUpgradeArgs(command: RpmManagerCommand, names: string[] | 'all', extra: string[] = [], keepDownloads = false): string[] {
  return [command, RPM_MANAGERS[command].upgrade, ...transactionOptions(command, keepDownloads), ...extra, ...(names === 'all' ? [] : names)];
}

/** Removes the packages and the dependencies nothing else needs any more (apt's purge + autoremove). */
export function dnfRemoveArgs(command: RpmManagerCommand, names: string[], extra: string[] = []): string[] {
  return [command, 'remove', '-y', `--setopt=clean_requirements_on_remove=${RPM_MANAGERS[command].yes}`, ...extra, ...names];
}

/**
 * The .repo file (dnf.conf(5), yum.conf(5); tdnf reads the same): packages must be signed by the key at gpgkey
 * (gpgcheck=1), which dnf imports into the guest's rpm database before the first package from this repository
 * is installed. The repository metadata itself is not checked (repo_gpgcheck=0): it names the packages by their
 * checksums, and each package's signature is checked against the one key the recipe trusts. `exclude` hides
 * packages of this repository from every command that does not say --disableexcludes=NAME (as pkgs.k8s.io's
 * instructions keep kubelet and friends from moving with a plain upgrade).
 */
export function dnfRepoFile(repository: Pick<PackageRepository, 'name' | 'url' | 'exclude'>, keyPath: string): string {
  return repoSection(repository.name, [
    ['name', repository.name],
    ['baseurl', repository.url],
    ['enabled', '1'],
    ['gpgcheck', '1'],
    ['gpgkey', `file://${keyPath}`],
    ['repo_gpgcheck', '0'],
    ...(repository.exclude?.length ? [['exclude', repository.exclude.join(' ')] as [string, string]] : []),
  ]);
}

/** The comment above an excludes line imagebuilder adds, so whoever reads the file knows why and how to undo. */
export const EXCLUDES_COMMENT = '# Held by imagebuilder (no versionlock here): these stay at their installed versions; --disableexcludes=main overrides.';

/**
 * Holds packages without versionlock: adds their names to the exclude list in the [main] section of the main
 * configuration (dnf: excludepkgs, which dnf also reads as exclude; yum: exclude), creating the section or the
 * line when missing. From then on no repository can offer another version of them, so no install or upgrade
 * changes them; dnf also stops listing them as installed until --disableexcludes=main. Names already
 * excluded are not added twice. Returns the new text, or undefined when nothing changes.
 */
export function addMainExcludes(text: string, names: string[], key: 'excludepkgs' | 'exclude'): string | undefined {
  const lines = text.replace(/\n$/, '').split('\n');
  if (text === '') lines.length = 0;
  const isSection = (line: string) => /^\s*\[[^\]]*\]\s*$/.test(line);
  const main = lines.findIndex((line) => /^\s*\[main\]\s*$/.test(line));
  const added = (missing: string[]) => [EXCLUDES_COMMENT, `${key}=${missing.join(' ')}`];
  if (main < 0) {
    return `${['[main]', ...added(names), ...(lines.length ? ['', ...lines] : [])].join('\n')}\n`;
  }
  let end = lines.findIndex((line, i) => i > main && isSection(line));
  if (end < 0) end = lines.length;
  const existing = lines.findIndex((line, i) => i > main && i < end && /^\s*(excludepkgs|exclude)\s*=/i.test(line));
  if (existing >= 0) {
    // The value, with its continuation lines (indented lines that follow it).
    let last = existing;
    while (last + 1 < end && /^\s+\S/.test(lines[last + 1]) && !/^\s*[#;]/.test(lines[last + 1])) last++;
    const value = [lines[existing].replace(/^[^=]*=/, ''), ...lines.slice(existing + 1, last + 1)].join(' ');
    const present = new Set(value.split(/[\s,]+/).filter(Boolean));
    const missing = names.filter((name) => !present.has(name));
    if (!missing.length) return undefined;
    lines[last] = `${lines[last].trimEnd()}${value.trim() ? ' ' : ''}${missing.join(' ')}`;
    return `${lines.join('\n')}\n`;
  }
  // After the section's last non-blank line.
  let at = end;
  while (at - 1 > main && !lines[at - 1].trim()) at--;
  lines.splice(at, 0, ...added(names));
  return `${lines.join('\n')}\n`;
}

/** Where dnf, yum and tdnf read repositories and their options: a change under any asks for fresh metadata. */
const RPM_REPOSITORY_CONFIG = ['/etc/yum.repos.d', '/etc/distro.repos.d', '/usr/share/dnf5/repos.d', '/etc/dnf', '/etc/yum.conf', '/etc/yum', '/etc/tdnf'];

export function createDnf(options: DnfOptions): PackageManager {
  const { command } = options;
  const manager = RPM_MANAGERS[command];
  // Repository metadata refreshed (dnf --refresh, yum clean expire-cache) once per build, again when the
  // repositories' configuration changed; a bundle's (in the session's /run) once per session.
  const metadata = metadataFreshness(RPM_REPOSITORY_CONFIG, anyEntryIn(manager.cacheDirs));
  const releasever = releaseverOption({ releasever: options.releasever, files: manager.releaseverFiles, render: (version) => [`--releasever=${version}`] });

  /** Options of a transaction that reads repositories: metadata refreshed on the first one of a build. */
  const repositoryOptions = async (session: ChrootSession, use: InstallOptions): Promise<string[]> => {
    const extra = await releasever(session);
    const perSession = Boolean(use.bundle?.serve);
    if (await metadata.upToDate(session, perSession)) return extra;
    await metadata.fetched(session, perSession);
    if (manager.refresh === 'option') return [...extra, '--refresh'];
    // yum 3 has no --refresh: mark the cached metadata expired, so this transaction fetches it again.
    await session.exec(['yum', 'clean', 'expire-cache', ...extra], { purpose: 'expiring the yum metadata cache', errorCode: 'STEP_FAILED' });
    return extra;
  };

  const hasVersionlock = async (session: ChrootSession): Promise<boolean> => {
    // dnf: ask dnf itself (the dnf 4 plugin or dnf 5's built-in command); a missing or disabled plugin is
    // "No such command". yum: its plugin is loaded only when its configuration enables it.
    if (!manager.versionlockProbe) return false;
    const result = await session.exec(manager.versionlockProbe, { allowFailure: true, purpose: `looking for the ${command} versionlock plugin in the guest` });
    return result.exitCode === 0;
  };

  const disableExcludes = (install: InstallOptions): string[] => {
    if (!install.disableExcludes) return [];
    if (!manager.disableExcludes) {
      throw new ImageBuilderError('STEP_FAILED', `${command} has no per-repository excludes to disable (disable_excludes: ${install.disableExcludes})`, {
        hint: `drop disable_excludes for this family (give the step \`when: { family: … }\`); ${command} holds packages with excludepkgs= in ${manager.mainConfig}`,
      });
    }
    return [`--disableexcludes=${install.disableExcludes}`];
  };

  /**
   * A transaction with the package cache around it, or making a bundle, every package it fetched kept (dnf only:
   * yum and tdnf cache their metadata otherwise). The cache reads the repositories' metadata from the guest's
   * cache, so a refresh the transaction would do (--refresh) is done first, on its own.
   */
  const withCache = async (session: ChrootSession, use: InstallOptions, extra: string[], transaction: (options: string[], keepDownloads: boolean) => Promise<unknown>) => {
    const collect = use.bundle?.collect;
    if (collect && command === 'dnf') {
      await collectRpmDownloads(session.root, 'dnf', collect, () => transaction(extra, true));
      return;
    }
    const cache = use.packageCache;
    if (!cache || command !== 'dnf') {
      await transaction(extra, false);
      return;
    }
    if (extra.includes('--refresh')) {
      await session.exec([command, 'makecache', '--refresh', ...(await releasever(session))], {
        streamOutput: true,
        purpose: 'refreshing the dnf metadata',
        errorCode: 'STEP_FAILED',
        hint: "check the guest's repositories (/etc/yum.repos.d) and that they are reachable from this host",
      });
    }
    const options = extra.filter((option) => option !== '--refresh');
    await withRpmPackageCache(session.root, 'dnf', cache, command, () => transaction(options, true));
  };

  /** Offline (apply --bundle): the options that make dnf read the bundle's repositories instead of the guest's. */
  const served = async (session: ChrootSession, use: InstallOptions = {}): Promise<string[]> =>
    use.bundle?.serve?.rpm ? dnfBundleOptions(use.bundle.serve, await definedDnfRepositories(session.root)) : [];

  const installHint =
    '"GPG check FAILED" means a package is not signed by the key its repository\'s gpgkey names; otherwise check the package ' +
    `names and versions: \`${command} list --showduplicates NAME\` inside \`imagebuilder shell\` lists what is available`;

  return {
    name: command,
    async install(session, packages, install = {}) {
      const serve = install.bundle?.serve;
      if (serve) await requireInBundle(session.root, serve, packages, (root) => this.listInstalled(root));
      const extra = [...(await repositoryOptions(session, install)), ...disableExcludes(install), ...(await served(session, install))];
      await withCache(session, install, extra, (options, keep) =>
        session.exec(dnfInstallArgs(command, packages, options, keep), { streamOutput: true, purpose: 'installing packages', errorCode: 'STEP_FAILED', hint: serve ? `${installHint}; offline, ${command} sees only the bundle: if it lacks a dependency, run \`imagebuilder bundle\` again with this recipe` : installHint }),
      );
    },
    async upgrade(session, names, upgrade = {}) {
      const extra = [...(await repositoryOptions(session, upgrade)), ...(await served(session, upgrade))];
      await withCache(session, upgrade, extra, (options, keep) =>
        session.exec(dnfUpgradeArgs(command, names, options, keep), {
          streamOutput: true,
          purpose: names === 'all' ? 'upgrading all packages' : `upgrading ${names.join(' ')}`,
          errorCode: 'STEP_FAILED',
          hint: `a held package stays at its version: release it first (${manager.versionlockProbe ? `\`${command} versionlock delete NAME\`, or ` : ''}take it out of ${manager.excludeKey}= in ${manager.mainConfig})`,
        }),
      );
    },
    async remove(session, names, options) {
      await session.exec(dnfRemoveArgs(command, names, [...(await releasever(session)), ...(await served(session, options))]), { streamOutput: true, purpose: 'removing packages', errorCode: 'STEP_FAILED' });
    },
    async hold(session, names, options) {
      if (await hasVersionlock(session)) {
        await session.exec([command, 'versionlock', 'add', ...(await releasever(session)), ...(await served(session, options)), ...names], {
          streamOutput: true,
          purpose: `holding ${names.join(' ')}`,
          errorCode: 'STEP_FAILED',
        });
        return;
      }
      const updated = addMainExcludes(await readGuestConfig(session, manager.mainConfig), names, manager.excludeKey);
      if (updated !== undefined) await writeGuestFile(session, { path: manager.mainConfig, content: updated, mode: '0644' }, `holding ${names.join(' ')} in ${manager.mainConfig}`);
    },
    async addRepository(session, repository) {
      refuseAptFields(repository, command);
      if (repository.exclude?.length && !manager.disableExcludes) {
        throw new ImageBuilderError('STEP_FAILED', `repository ${repository.name}: ${command} has no per-repository exclude`, {
          hint: `drop exclude for this family and hold the packages instead (packages: { hold: … } puts them into excludepkgs= in ${manager.mainConfig})`,
        });
      }
      const files = await writeRpmRepository(session, repository, `/etc/yum.repos.d/${repository.name}.repo`, (keyPath) => dnfRepoFile(repository, keyPath));
      // As apt fetches its lists again after a source is added: the next transaction refreshes all metadata.
      metadata.forget(session);
      return files;
    },
    async cleanCache(session) {
      await session.exec([command, 'clean', 'all', ...(await releasever(session))], { purpose: `cleaning the ${command} cache`, errorCode: 'STEP_FAILED' });
      // `clean all` leaves its own bookkeeping (packages.db, *.json) and empty directories behind.
      await emptyCacheDirs(session, manager.cacheDirs);
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
