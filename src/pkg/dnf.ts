import type { ChrootSession } from '../chroot/session.js';
import { writeGuestFile } from '../chroot/guest-write.js';
import { ImageBuilderError } from '../util/errors.js';
import { queryRpmDatabase, rpmArchitecture } from './rpm.js';
import type { PackageManager, PackageRepository, PackageSpec } from './types.js';

/**
 * dnf (Fedora, RHEL/CentOS Stream/Rocky/Alma/Oracle 8+, Amazon Linux 2023) and yum (CentOS/RHEL 7, Amazon Linux 2):
 * one implementation, since yum's command line is what dnf kept. Both run inside the chroot with the guest's own
 * configuration (no --installroot: the chroot is the root); every command is non-interactive (-y).
 */
export type RpmManagerCommand = 'dnf' | 'yum';

export interface DnfOptions {
  command: RpmManagerCommand;
  /**
   * The release version from the guest's os-release (VERSION_ID), passed as --releasever only when the guest
   * cannot tell its own (see RELEASEVER_PROBE); undefined: never passed.
   */
  releasever?: string;
}

/**
 * What dnf asks the rpm database for to find $releasever, in its order (dnf's const.DISTROVERPKG; yum's
 * distroverpkg asks the first and redhat-release): a release package providing one of these names.
 */
export const DISTROVERPKG = ['system-release(releasever)', 'system-release', 'distribution-release(releasever)', 'distribution-release', 'redhat-release', 'suse-release'];

/**
 * Exits 0 when the guest can tell its own release version the way its dnf or yum finds it: a releasever variable
 * file (Amazon Linux 2023 pins its release in /etc/dnf/vars/releasever) or an installed release package providing
 * one of DISTROVERPKG (fedora-release-common, redhat-release, centos-release, system-release …). Every real guest
 * has one; an image without (a stripped or synthetic one) gets --releasever from its VERSION_ID instead.
 */
export const RELEASEVER_PROBE =
  'for file in /etc/dnf/vars/releasever /etc/yum/vars/releasever; do if [ -s "$file" ]; then exit 0; fi; done; ' +
  'for name in "$@"; do if rpm -q --quiet --whatprovides "$name" 2>/dev/null; then exit 0; fi; done; exit 1';

/**
 * yum loads a plugin only when its configuration file enables it (and plugins are not off in yum.conf):
 * exits 0 when yum-plugin-versionlock is installed and enabled.
 */
export const YUM_VERSIONLOCK_PROBE =
  "grep -Eqi '^[[:space:]]*enabled[[:space:]]*=[[:space:]]*(1|yes|true|on)[[:space:]]*$' /etc/yum/pluginconf.d/versionlock.conf 2>/dev/null && " +
  "! grep -Eqi '^[[:space:]]*plugins[[:space:]]*=[[:space:]]*(0|no|false|off)[[:space:]]*$' /etc/yum.conf 2>/dev/null";

/** Empties the cache directories named as arguments, keeping the directories (the dnf/yum package owns them). */
export const EMPTY_CACHE_DIRS = 'set -e; for dir in "$@"; do if [ -d "$dir" ]; then find "$dir" -xdev -mindepth 1 -delete; fi; done';

/** Reads a guest file, printing nothing when it does not exist. */
const READ_IF_PRESENT = 'if [ -e "$1" ]; then cat -- "$1"; fi';

/** Per manager: its main configuration, the key that excludes packages there, and its cache directories. */
export const RPM_MANAGERS = {
  dnf: { mainConfig: '/etc/dnf/dnf.conf', excludeKey: 'excludepkgs', cacheDirs: ['/var/cache/dnf', '/var/cache/libdnf5'], upgrade: 'upgrade', yes: 'True' },
  yum: { mainConfig: '/etc/yum.conf', excludeKey: 'exclude', cacheDirs: ['/var/cache/yum'], upgrade: 'update', yes: '1' },
} as const;

/**
 * Options of every transaction: no questions; weak dependencies (Recommends) left out like apt's
 * --no-install-recommends (dnf only: yum has none); downloaded packages not kept, whatever the guest's keepcache.
 */
export function transactionOptions(command: RpmManagerCommand): string[] {
  return command === 'dnf' ? ['-y', '--setopt=install_weak_deps=False', '--setopt=keepcache=False'] : ['-y', '--setopt=keepcache=0'];
}

/** `name=version` (the recipe's form) is dnf's `name-version`; a version may carry an epoch (`2:6.7-1.fc40`). */
export function rpmPackageArg(spec: PackageSpec): string {
  return spec.version ? `${spec.name}-${spec.version}` : spec.name;
}

export function dnfInstallArgs(command: RpmManagerCommand, packages: PackageSpec[], extra: string[] = []): string[] {
  return [command, 'install', ...transactionOptions(command), ...extra, ...packages.map(rpmPackageArg)];
}

export function dnfUpgradeArgs(command: RpmManagerCommand, names: string[] | 'all', extra: string[] = []): string[] {
  return [command, RPM_MANAGERS[command].upgrade, ...transactionOptions(command), ...extra, ...(names === 'all' ? [] : names)];
}

/** Removes the packages and the dependencies nothing else needs any more (apt's purge + autoremove). */
export function dnfRemoveArgs(command: RpmManagerCommand, names: string[], extra: string[] = []): string[] {
  return [command, 'remove', '-y', `--setopt=clean_requirements_on_remove=${RPM_MANAGERS[command].yes}`, ...extra, ...names];
}

const ARMORED_PUBLIC_KEY = '-----BEGIN PGP PUBLIC KEY BLOCK-----';

/** CRC-24 of OpenPGP ASCII armor (RFC 4880, 6.1). */
function crc24(data: Buffer): number {
  let crc = 0xb704ce;
  for (const byte of data) {
    crc ^= byte << 16;
    for (let i = 0; i < 8; i++) {
      crc <<= 1;
      if (crc & 0x1000000) crc ^= 0x1864cfb;
    }
  }
  return crc & 0xffffff;
}

/**
 * The key as RPM-GPG-KEY files hold it: ASCII-armored. An armored key is kept byte for byte; a binary one is
 * armored here (RFC 4880: base64 in 64-column lines and a CRC-24 checksum), since rpm imports armored keys.
 */
export function armoredPublicKey(key: Buffer): Buffer {
  if (key.toString('latin1').includes(ARMORED_PUBLIC_KEY)) return key;
  const body = key.toString('base64').replace(/(.{64})/g, '$1\n').replace(/\n$/, '');
  const crc = Buffer.from([(crc24(key) >> 16) & 0xff, (crc24(key) >> 8) & 0xff, crc24(key) & 0xff]).toString('base64');
  return Buffer.from(`${ARMORED_PUBLIC_KEY}\n\n${body}\n=${crc}\n-----END PGP PUBLIC KEY BLOCK-----\n`);
}

/** Where a repository's key goes: /etc/pki/rpm-gpg, where Fedora and RHEL keep theirs. */
export function rpmKeyPath(name: string): string {
  return `/etc/pki/rpm-gpg/RPM-GPG-KEY-${name}`;
}

/**
 * The .repo file (dnf.conf(5), yum.conf(5)): packages must be signed by the key at gpgkey (gpgcheck=1), which dnf
 * imports into the guest's rpm database before the first package from this repository is installed. The
 * repository metadata itself is not checked (repo_gpgcheck=0): it names the packages by their checksums, and
 * each package's signature is checked against the one key the recipe trusts.
 */
export function dnfRepoFile(repository: Pick<PackageRepository, 'name' | 'url'>, keyPath: string): string {
  return [`[${repository.name}]`, `name=${repository.name}`, `baseurl=${repository.url}`, 'enabled=1', 'gpgcheck=1', `gpgkey=file://${keyPath}`, 'repo_gpgcheck=0', ''].join('\n');
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

interface SessionState {
  /** Repository metadata was refreshed in this session (dnf --refresh, yum clean expire-cache). */
  refreshed: boolean;
  /** The --releasever option for this guest, once probed. */
  releasever?: string[];
}

export function createDnf(options: DnfOptions): PackageManager {
  const { command } = options;
  const manager = RPM_MANAGERS[command];
  const sessions = new WeakMap<ChrootSession, SessionState>();
  const state = (session: ChrootSession) => {
    let found = sessions.get(session);
    if (!found) sessions.set(session, (found = { refreshed: false }));
    return found;
  };

  /** --releasever=VERSION_ID, only when the guest cannot tell its own release version (RELEASEVER_PROBE). */
  const releasever = async (session: ChrootSession): Promise<string[]> => {
    const current = state(session);
    if (current.releasever) return current.releasever;
    if (options.releasever === undefined) return (current.releasever = []);
    const probe = await session.exec(['/bin/sh', '-c', RELEASEVER_PROBE, 'releasever-probe', ...DISTROVERPKG], {
      allowFailure: true,
      purpose: 'asking the guest for its release version',
    });
    return (current.releasever = probe.exitCode === 0 ? [] : [`--releasever=${options.releasever}`]);
  };

  /** Options of a transaction that reads repositories: metadata refreshed on the first one in a session. */
  const repositoryOptions = async (session: ChrootSession): Promise<string[]> => {
    const extra = await releasever(session);
    const current = state(session);
    if (current.refreshed) return extra;
    current.refreshed = true;
    if (command === 'dnf') return [...extra, '--refresh'];
    // yum 3 has no --refresh: mark the cached metadata expired, so this transaction fetches it again.
    await session.exec(['yum', 'clean', 'expire-cache', ...extra], { purpose: 'expiring the yum metadata cache', errorCode: 'STEP_FAILED' });
    return extra;
  };

  const hasVersionlock = async (session: ChrootSession): Promise<boolean> => {
    // dnf: ask dnf itself (the dnf 4 plugin or dnf 5's built-in command); a missing or disabled plugin is
    // "No such command". yum: its plugin is loaded only when its configuration enables it.
    const argv = command === 'dnf' ? ['dnf', '-q', 'versionlock', '--help'] : ['/bin/sh', '-c', YUM_VERSIONLOCK_PROBE];
    const result = await session.exec(argv, { allowFailure: true, purpose: `looking for the ${command} versionlock plugin in the guest` });
    return result.exitCode === 0;
  };

  const installHint =
    '"GPG check FAILED" means a package is not signed by the key its repository\'s gpgkey names; otherwise check the package ' +
    `names and versions: \`${command} list --showduplicates NAME\` inside \`imagebuilder shell\` lists what is available`;

  return {
    name: command,
    async install(session, packages) {
      const extra = await repositoryOptions(session);
      await session.exec(dnfInstallArgs(command, packages, extra), { streamOutput: true, purpose: 'installing packages', errorCode: 'STEP_FAILED', hint: installHint });
    },
    async upgrade(session, names) {
      const extra = await repositoryOptions(session);
      await session.exec(dnfUpgradeArgs(command, names, extra), {
        streamOutput: true,
        purpose: names === 'all' ? 'upgrading all packages' : `upgrading ${names.join(' ')}`,
        errorCode: 'STEP_FAILED',
        hint: `a held package stays at its version: release it first (\`${command} versionlock delete NAME\`, or take it out of ${manager.excludeKey}= in ${manager.mainConfig})`,
      });
    },
    async remove(session, names) {
      await session.exec(dnfRemoveArgs(command, names, await releasever(session)), { streamOutput: true, purpose: 'removing packages', errorCode: 'STEP_FAILED' });
    },
    async hold(session, names) {
      if (await hasVersionlock(session)) {
        await session.exec([command, 'versionlock', 'add', ...(await releasever(session)), ...names], {
          streamOutput: true,
          purpose: `holding ${names.join(' ')}`,
          errorCode: 'STEP_FAILED',
        });
        return;
      }
      const current = await session.exec(['/bin/sh', '-c', READ_IF_PRESENT, 'read-config', manager.mainConfig], { purpose: `reading ${manager.mainConfig}`, errorCode: 'STEP_FAILED' });
      const updated = addMainExcludes(current.stdout, names, manager.excludeKey);
      if (updated !== undefined) await writeGuestFile(session, { path: manager.mainConfig, content: updated, mode: '0644' }, `holding ${names.join(' ')} in ${manager.mainConfig}`);
    },
    async addRepository(session, repository) {
      if ((repository.suite !== undefined && repository.suite !== '/') || repository.components?.length) {
        throw new ImageBuilderError('STEP_FAILED', `repository ${repository.name}: suite and components describe apt repositories; a ${command} repository is its URL alone`, {
          hint: `drop suite and components (or give this step \`when: { family: debian }\` and write another for the ${command} repository)`,
        });
      }
      const keyPath = rpmKeyPath(repository.name);
      const repoPath = `/etc/yum.repos.d/${repository.name}.repo`;
      // The key first: a .repo file never names a key that is not there yet.
      const keySha = await writeGuestFile(session, { path: keyPath, content: armoredPublicKey(repository.key), mode: '0644' }, `writing the key of repository ${repository.name}`);
      const repoSha = await writeGuestFile(session, { path: repoPath, content: dnfRepoFile(repository, keyPath), mode: '0644' }, `writing ${repoPath}`);
      // As apt fetches its lists again after a source is added: the next transaction refreshes all metadata.
      state(session).refreshed = false;
      return [
        { path: keyPath, sha256: keySha, ...(repository.keySource ? { source: repository.keySource } : {}) },
        { path: repoPath, sha256: repoSha },
      ];
    },
    async cleanCache(session) {
      await session.exec([command, 'clean', 'all', ...(await releasever(session))], { purpose: `cleaning the ${command} cache`, errorCode: 'STEP_FAILED' });
      // `clean all` leaves its own bookkeeping (packages.db, *.json) and empty directories behind.
      await session.exec(['/bin/sh', '-c', EMPTY_CACHE_DIRS, 'empty-cache', ...manager.cacheDirs], { purpose: `emptying ${manager.cacheDirs.join(' ')}`, errorCode: 'STEP_FAILED' });
      state(session).refreshed = false;
    },
    listInstalled(root) {
      return queryRpmDatabase(root);
    },
    async architecture(root) {
      return rpmArchitecture(root, await queryRpmDatabase(root));
    },
  };
}
