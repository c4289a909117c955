import { readFileSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { execa } from 'execa';
import { detectDistro, FAMILY_NAMES, requireFamily } from '../../src/distro/families.js';
import { requireFamilyForSteps } from '../../src/pipeline/preflight.js';
import { parseRecipe } from '../../src/recipe/load.js';
import { whenMismatch } from '../../src/steps/when.js';
import { packagesStep } from '../../src/steps/packages.js';
import { repositoryStep } from '../../src/steps/repository.js';
import { sysprepStep } from '../../src/steps/sysprep.js';
import { fakeSession, fakeStepContext, type FakeCall } from '../helpers/fake-session.js';

/**
 * Every distro family the design names, from its os-release to the exact commands and files of every step type
 * that touches the package manager. The commands are spelled out here, not imported from the code under test.
 */

/** apt's binary caches go to the session's /run (src/pkg/apt-options.ts), never into the guest's filesystem. */
const APT_BIN_CACHES = ['-o', 'Dir::Cache::pkgcache=/run/imagebuilder-apt-pkgcache.bin', '-o', 'Dir::Cache::srcpkgcache=/run/imagebuilder-apt-srcpkgcache.bin'];
const APT = ['-y', '-q', '-o', 'Dpkg::Options::=--force-confdef', '-o', 'Dpkg::Options::=--force-confold', '-o', 'Dpkg::Use-Pty=0', ...APT_BIN_CACHES];
const APT_LISTS = 'if [ -d /var/lib/apt/lists ]; then find /var/lib/apt/lists -mindepth 1 ! -path /var/lib/apt/lists/partial ! -path /var/lib/apt/lists/lock -delete; fi';
const PROBE =
  'for arg in "$@"; do case $arg in /*) if [ -s "$arg" ]; then exit 0; fi ;; *) if rpm -q --quiet --whatprovides "$arg" 2>/dev/null; then exit 0; fi ;; esac; done; exit 1';
const RELEASE_PACKAGES = ['system-release(releasever)', 'system-release', 'distribution-release(releasever)', 'distribution-release', 'redhat-release', 'suse-release'];
const probe = (...files: string[]) => ['/bin/sh', '-c', PROBE, 'releasever-probe', ...files, ...RELEASE_PACKAGES];
const EMPTY = 'set -e; for dir in "$@"; do if [ -d "$dir" ]; then find "$dir" -xdev -mindepth 1 -delete; fi; done';
const empty = (...dirs: string[]) => ['/bin/sh', '-c', EMPTY, 'empty-cache', ...dirs];
const REMOVE = 'for pattern in "$@"; do for file in $pattern; do if [ -f "$file" ] && [ ! -L "$file" ]; then rm -f -- "$file"; fi; done; done';
const removeFiles = (...patterns: string[]) => ['/bin/sh', '-c', REMOVE, 'remove-files', ...patterns];
const RPM_DB_ENVIRONMENT = removeFiles('/var/lib/rpm/__db.*', '/usr/lib/sysimage/rpm/__db.*');
const TRUNCATE = ['truncate', '-s', '0', '/etc/machine-id'];
const DBUS = '/var/lib/dbus/machine-id';
const YUM_VERSIONLOCK =
  "grep -Eqi '^[[:space:]]*enabled[[:space:]]*=[[:space:]]*(1|yes|true|on)[[:space:]]*$' /etc/yum/pluginconf.d/versionlock.conf 2>/dev/null && " +
  "! grep -Eqi '^[[:space:]]*plugins[[:space:]]*=[[:space:]]*(0|no|false|off)[[:space:]]*$' /etc/yum.conf 2>/dev/null";

const DNF_TX = ['-y', '--setopt=install_weak_deps=False', '--setopt=keepcache=False'];
const YUM_TX = ['-y', '--setopt=keepcache=0'];
const ZYPPER = ['zypper', '--non-interactive'];
const ZYPPER_TX = ['--no-recommends', '--auto-agree-with-licenses'];
const TDNF_CONF = '[main]\ngpgcheck=1\ninstallonly_limit=3\nclean_requirements_on_remove=true\nrepodir=/etc/yum.repos.d\ncachedir=/var/cache/tdnf\n';

/** One recipe's worth of package-manager work, the same on every family (only the repository URL differs). */
const SCENARIO = {
  packages: { remove: ['nano'], install: ['socat=1.7.4-1', 'conntrack'], upgrade: true as const, hold: ['socat'] },
  again: { install: ['kubelet'] },
  sysprep: { operations: ['package-cache' as const, 'machine-id' as const] },
};
const RPM_URL = 'https://pkgs.k8s.io/core:/stable:/v1.36/rpm/';
const DEB_URL = 'https://pkgs.k8s.io/core:/stable:/v1.36/deb/';

/** A call as a readable entry: guest file writes and reads by path, everything else by argv. */
const shown = (call: FakeCall) => (call.argv[3] === 'write-file' ? `write ${call.argv[4]}` : call.argv[3] === 'read-config' ? `read ${call.argv[4]}` : call.argv);

/** What each manager runs for SCENARIO, by its release version option (undefined: the guest tells its own). */
const EXPECTED: Record<string, (release: string, rolling?: boolean) => unknown[]> = {
  apt: () => [
    'write /run/imagebuilder-apt.conf',
    ['apt-get', 'purge', ...APT, 'nano'],
    ['apt-get', 'autoremove', '--purge', ...APT],
    ['apt-get', 'update', '-q', ...APT_BIN_CACHES],
    ['apt-get', 'install', ...APT, '--no-install-recommends', 'socat=1.7.4-1', 'conntrack'],
    ['apt-get', 'clean'],
    ['apt-get', 'upgrade', ...APT],
    ['apt-get', 'clean'],
    ['apt-mark', ...APT_BIN_CACHES, 'hold', 'socat'],
    'write /etc/apt/keyrings/k8s.asc',
    'write /etc/apt/sources.list.d/k8s.sources',
    ['apt-get', 'update', '-q', ...APT_BIN_CACHES],
    ['apt-get', 'install', ...APT, '--no-install-recommends', 'kubelet'],
    ['apt-get', 'clean'],
    ['apt-get', 'clean'],
    ['/bin/sh', '-c', APT_LISTS],
    TRUNCATE,
    removeFiles(DBUS),
  ],
  dnf: (release) => [
    probe('/etc/dnf/vars/releasever', '/etc/yum/vars/releasever'),
    ['dnf', 'remove', '-y', '--setopt=clean_requirements_on_remove=True', `--releasever=${release}`, 'nano'],
    ['dnf', 'install', ...DNF_TX, `--releasever=${release}`, '--refresh', 'socat-1.7.4-1', 'conntrack'],
    ['dnf', 'upgrade', ...DNF_TX, `--releasever=${release}`],
    ['dnf', '-q', 'versionlock', '--help'],
    ['dnf', 'versionlock', 'add', `--releasever=${release}`, 'socat'],
    'write /etc/pki/rpm-gpg/RPM-GPG-KEY-k8s',
    'write /etc/yum.repos.d/k8s.repo',
    ['dnf', 'install', ...DNF_TX, `--releasever=${release}`, '--refresh', 'kubelet'],
    ['dnf', 'clean', 'all', `--releasever=${release}`],
    empty('/var/cache/dnf', '/var/cache/libdnf5'),
    RPM_DB_ENVIRONMENT,
    TRUNCATE,
    removeFiles(DBUS, '/var/lib/yum/uuid'),
  ],
  yum: (release) => [
    probe('/etc/yum/vars/releasever'),
    ['yum', 'remove', '-y', '--setopt=clean_requirements_on_remove=1', `--releasever=${release}`, 'nano'],
    ['yum', 'clean', 'expire-cache', `--releasever=${release}`],
    ['yum', 'install', ...YUM_TX, `--releasever=${release}`, 'socat-1.7.4-1', 'conntrack'],
    ['yum', 'update', ...YUM_TX, `--releasever=${release}`],
    ['/bin/sh', '-c', YUM_VERSIONLOCK],
    ['yum', 'versionlock', 'add', `--releasever=${release}`, 'socat'],
    'write /etc/pki/rpm-gpg/RPM-GPG-KEY-k8s',
    'write /etc/yum.repos.d/k8s.repo',
    ['yum', 'clean', 'expire-cache', `--releasever=${release}`],
    ['yum', 'install', ...YUM_TX, `--releasever=${release}`, 'kubelet'],
    ['yum', 'clean', 'all', `--releasever=${release}`],
    empty('/var/cache/yum'),
    RPM_DB_ENVIRONMENT,
    TRUNCATE,
    removeFiles(DBUS, '/var/lib/yum/uuid'),
  ],
  tdnf: (release) => [
    probe('/etc/tdnf/vars/releasever'),
    ['tdnf', 'remove', '-y', '--setopt=clean_requirements_on_remove=true', `--releasever=${release}`, 'nano'],
    ['tdnf', 'install', '-y', `--releasever=${release}`, '--refresh', 'socat-1.7.4-1', 'conntrack'],
    ['tdnf', 'upgrade', '-y', `--releasever=${release}`],
    // No versionlock in tdnf: the hold is excludepkgs= in tdnf.conf.
    'read /etc/tdnf/tdnf.conf',
    'write /etc/tdnf/tdnf.conf',
    'write /etc/pki/rpm-gpg/RPM-GPG-KEY-k8s',
    'write /etc/yum.repos.d/k8s.repo',
    ['tdnf', 'install', '-y', `--releasever=${release}`, '--refresh', 'kubelet'],
    ['tdnf', 'clean', 'all', `--releasever=${release}`],
    empty('/var/cache/tdnf'),
    RPM_DB_ENVIRONMENT,
    TRUNCATE,
    removeFiles(DBUS),
  ],
  zypper: (release, rolling) => [
    probe('/etc/products.d/baseproduct'),
    [...ZYPPER, '--releasever', release, 'remove', '--clean-deps', 'nano'],
    [...ZYPPER, '--releasever', release, 'refresh'],
    [...ZYPPER, '--releasever', release, 'install', ...ZYPPER_TX, 'socat=1.7.4-1', 'conntrack'],
    // A rolling release upgrades as a whole distribution (zypper dup); Leap and SLES update.
    [...ZYPPER, '--releasever', release, rolling ? 'dup' : 'update', ...ZYPPER_TX],
    [...ZYPPER, 'addlock', 'socat'],
    'write /etc/pki/rpm-gpg/RPM-GPG-KEY-k8s',
    ['rpm', '--import', '/etc/pki/rpm-gpg/RPM-GPG-KEY-k8s'],
    'write /etc/zypp/repos.d/k8s.repo',
    [...ZYPPER, '--releasever', release, 'refresh'],
    [...ZYPPER, '--releasever', release, 'install', ...ZYPPER_TX, 'kubelet'],
    [...ZYPPER, 'clean', '--all'],
    empty('/var/cache/zypp'),
    RPM_DB_ENVIRONMENT,
    TRUNCATE,
    removeFiles(DBUS, '/var/lib/zypp/AnonymousUniqueId'),
  ],
};

interface Case {
  title: string;
  osRelease: Record<string, string>;
  family: string;
  manager: keyof typeof EXPECTED;
  /** The --releasever a guest without a release package gets. */
  release: string;
  /** A rolling release (openSUSE Tumbleweed, Slowroll). */
  rolling?: boolean;
}

const CASES: Case[] = [
  { title: 'Debian 12', osRelease: { ID: 'debian', VERSION_ID: '12' }, family: 'debian', manager: 'apt', release: '' },
  { title: 'Ubuntu 24.04', osRelease: { ID: 'ubuntu', ID_LIKE: 'debian', VERSION_ID: '24.04' }, family: 'debian', manager: 'apt', release: '' },
  { title: 'Fedora 40', osRelease: { ID: 'fedora', VERSION_ID: '40' }, family: 'redhat', manager: 'dnf', release: '40' },
  { title: 'CentOS 7', osRelease: { ID: 'centos', ID_LIKE: 'rhel fedora', VERSION_ID: '7' }, family: 'redhat', manager: 'yum', release: '7' },
  { title: 'CentOS Stream 9', osRelease: { ID: 'centos', ID_LIKE: 'rhel fedora', VERSION_ID: '9' }, family: 'redhat', manager: 'dnf', release: '9' },
  { title: 'RHEL 9.4', osRelease: { ID: 'rhel', ID_LIKE: 'fedora', VERSION_ID: '9.4' }, family: 'redhat', manager: 'dnf', release: '9' },
  { title: 'Rocky Linux 9.4', osRelease: { ID: 'rocky', ID_LIKE: 'rhel centos fedora', VERSION_ID: '9.4' }, family: 'redhat', manager: 'dnf', release: '9' },
  { title: 'AlmaLinux 8.10', osRelease: { ID: 'almalinux', ID_LIKE: 'rhel centos fedora', VERSION_ID: '8.10' }, family: 'redhat', manager: 'dnf', release: '8' },
  { title: 'Oracle Linux 9.4', osRelease: { ID: 'ol', ID_LIKE: 'fedora', VERSION_ID: '9.4' }, family: 'redhat', manager: 'dnf', release: '9' },
  { title: 'Amazon Linux 2', osRelease: { ID: 'amzn', ID_LIKE: 'centos rhel fedora', VERSION_ID: '2' }, family: 'redhat', manager: 'yum', release: '2' },
  { title: 'Amazon Linux 2023', osRelease: { ID: 'amzn', ID_LIKE: 'fedora', VERSION_ID: '2023' }, family: 'redhat', manager: 'dnf', release: '2023' },
  { title: 'Photon OS 5.0', osRelease: { ID: 'photon', VERSION_ID: '5.0' }, family: 'photon', manager: 'tdnf', release: '5.0' },
  { title: 'openSUSE Leap 15.6', osRelease: { ID: 'opensuse-leap', ID_LIKE: 'suse opensuse', VERSION_ID: '15.6' }, family: 'suse', manager: 'zypper', release: '15.6' },
  { title: 'openSUSE Tumbleweed', osRelease: { ID: 'opensuse-tumbleweed', ID_LIKE: 'opensuse suse', VERSION_ID: '20240601' }, family: 'suse', manager: 'zypper', release: '20240601', rolling: true },
  { title: 'openSUSE Slowroll', osRelease: { ID: 'opensuse-slowroll', ID_LIKE: 'suse opensuse opensuse-tumbleweed', VERSION_ID: '20241101' }, family: 'suse', manager: 'zypper', release: '20241101', rolling: true },
  { title: 'SLES 15 SP6', osRelease: { ID: 'sles', ID_LIKE: 'suse', VERSION_ID: '15.6' }, family: 'suse', manager: 'zypper', release: '15.6' },
];

let gnupgHome: string;
let key = '';
let keyFingerprint = '';
beforeAll(async () => {
  gnupgHome = await mkdtemp(join(tmpdir(), 'ib-unit-families-'));
  await chmod(gnupgHome, 0o700);
  const gpg = (args: string[]) => execa('gpg', ['--homedir', gnupgHome, '--batch', '--no-tty', ...args]);
  await gpg(['--passphrase', '', '--quick-gen-key', 'Repo K <k@example.invalid>', 'ed25519', 'sign', 'never']);
  key = (await gpg(['--export', '--armor', 'k@example.invalid'])).stdout;
  keyFingerprint = /^fpr:+([0-9A-F]{40}):/m.exec((await gpg(['--with-colons', '--fingerprint', 'k@example.invalid'])).stdout)![1];
});
afterAll(async () => {
  await execa('gpgconf', ['--homedir', gnupgHome, '--kill', 'gpg-agent'], { reject: false });
  await rm(gnupgHome, { recursive: true, force: true });
});

/** A guest whose rpm database has no release package (so --releasever shows), with every versionlock plugin, and Photon's tdnf.conf. */
function guest() {
  return fakeSession((call) => {
    if (call.argv[2] === PROBE) return { exitCode: 1 };
    if (call.argv[3] === 'read-config' && call.argv[4] === '/etc/tdnf/tdnf.conf') return { stdout: TDNF_CONF };
    return undefined;
  });
}

async function runScenario(osRelease: Record<string, string>, url: string) {
  const { session, calls } = guest();
  const { context, records } = fakeStepContext(session, { distro: detectDistro(osRelease) });
  await packagesStep.run(context, SCENARIO.packages);
  await repositoryStep.run(context, { name: 'k8s', url, key });
  await packagesStep.run(context, SCENARIO.again);
  await sysprepStep.run(context, SCENARIO.sysprep);
  return { calls, records };
}

describe('every family: detection, package manager, database, session files', () => {
  test.each(CASES.map((c) => [c.title, c] as const))('%s', (_title, c) => {
    const distro = detectDistro(c.osRelease);
    expect(distro.family?.name).toBe(c.family);
    expect(distro.family?.packageManager.name).toBe(c.manager);
    expect(distro.family?.packageDatabase).toBe(c.manager === 'apt' ? 'dpkg' : 'rpm');
    expect(distro.family?.sessionFiles.map((f) => f.path)).toEqual(c.family === 'debian' ? ['/usr/sbin/policy-rc.d'] : []);
  });

  test('the family names are the ones `when: { family }` accepts', () => {
    expect(FAMILY_NAMES).toEqual(['debian', 'redhat', 'suse', 'photon']);
    expect(new Set(CASES.map((c) => c.family))).toEqual(new Set(FAMILY_NAMES));
  });
});

describe('every family: exact commands and files of packages (remove, install, upgrade, hold), repository and sysprep', () => {
  test.each(CASES.map((c) => [`${c.title}: ${c.manager}`, c] as const))('%s', async (_title, c) => {
    const { calls, records } = await runScenario(c.osRelease, c.manager === 'apt' ? DEB_URL : RPM_URL);
    expect(calls.map(shown)).toEqual(EXPECTED[c.manager](c.release, c.rolling));
    // The repository files the step wrote, as the guest gets them, and the BOM records them (key first).
    const written = Object.fromEntries(calls.filter((call) => call.argv[3] === 'write-file').map((call) => [call.argv[4], call.input]));
    // Session scratch (tdnf's configuration copy, apt's APT_CONFIG on /run) is no file of the image's.
    expect(records.files.map((f) => f.path)).toEqual(Object.keys(written).filter((path) => !path.includes('tdnf.conf') && path !== '/run/imagebuilder-apt.conf'));
    if (c.manager === 'apt') {
      expect(written['/etc/apt/keyrings/k8s.asc']).toBe(key);
      expect(written['/etc/apt/sources.list.d/k8s.sources']).toBe(`Types: deb\nURIs: ${DEB_URL}\nSuites: /\nSigned-By: /etc/apt/keyrings/k8s.asc\n`);
      return;
    }
    expect(written['/etc/pki/rpm-gpg/RPM-GPG-KEY-k8s']).toBe(key);
    if (c.manager === 'zypper') {
      expect(written['/etc/zypp/repos.d/k8s.repo']).toBe(
        `[k8s]\nname=k8s\nenabled=1\nautorefresh=1\nbaseurl=${RPM_URL}\ntype=rpm-md\ngpgcheck=1\nrepo_gpgcheck=0\npkg_gpgcheck=1\ngpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-k8s\nkeeppackages=0\n`,
      );
      return;
    }
    expect(written['/etc/yum.repos.d/k8s.repo']).toBe(
      `[k8s]\nname=k8s\nbaseurl=${RPM_URL}\nenabled=1\ngpgcheck=1\ngpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-k8s\nrepo_gpgcheck=0\n`,
    );
    if (c.manager === 'tdnf') {
      expect(written['/etc/tdnf/tdnf.conf']).toBe(
        `${TDNF_CONF}# Held by imagebuilder (no versionlock here): these stay at their installed versions; --disableexcludes=main overrides.\nexcludepkgs=socat\n`,
      );
    }
  });

  /** Where a run or file step would add a source, and the call that fetches metadata, per manager. */
  const SOURCES: Record<string, { dir: string; fetches: (argv: string[]) => boolean }> = {
    apt: { dir: '/etc/apt/sources.list.d', fetches: (argv) => argv[0] === 'apt-get' && argv[1] === 'update' },
    dnf: { dir: '/etc/yum.repos.d', fetches: (argv) => argv.includes('--refresh') },
    tdnf: { dir: '/etc/yum.repos.d', fetches: (argv) => argv.includes('--refresh') },
    yum: { dir: '/etc/yum.repos.d', fetches: (argv) => argv.includes('expire-cache') },
    zypper: { dir: '/etc/zypp/repos.d', fetches: (argv) => argv.at(-1) === 'refresh' },
  };

  test.each(CASES.map((c) => [`${c.title}: ${c.manager}`, c] as const))(
    '%s: metadata fetched once per build, not once per session (the step cache: a session per step), again when the repositories changed or it is gone',
    async (_title, c) => {
      const root = await mkdtemp(join(tmpdir(), 'ib-unit-refresh-'));
      try {
        // What each manager's refresh leaves (apt's lists, the others' metadata caches): fetched again when gone.
        const fetchedMetadata = ['var/lib/apt/lists/mirror_dists_stable_main_binary-amd64_Packages', 'var/cache/dnf/repo.solv', 'var/cache/yum/repo.sqlite', 'var/cache/tdnf/repo', 'var/cache/zypp/raw'];
        const leaveMetadata = async () => {
          for (const path of fetchedMetadata) {
            await mkdir(join(root, dirname(path)), { recursive: true });
            await writeFile(join(root, path), '');
          }
        };
        await leaveMetadata();
        const distro = detectDistro(c.osRelease);
        const source = SOURCES[c.manager];
        const step = async (name: string) => {
          const { session, calls } = fakeSession((call) => {
            if (call.argv[2] === PROBE) return { exitCode: 1 };
            if (call.argv[3] === 'read-config' && call.argv[4] === '/etc/tdnf/tdnf.conf') return { stdout: TDNF_CONF };
            return undefined;
          }, root);
          await packagesStep.run(fakeStepContext(session, { distro }).context, { install: [name] });
          return calls.filter((call) => source.fetches(call.argv)).length;
        };
        expect(await step('socat')).toBe(1);
        expect(await step('conntrack')).toBe(0);
        // A run or file step added a repository: fetched again, then not.
        await mkdir(join(root, source.dir), { recursive: true });
        await writeFile(join(root, source.dir, 'vendor.repo'), '[vendor]\n');
        expect(await step('ethtool')).toBe(1);
        expect(await step('iptables')).toBe(0);
        // A step removed what was fetched: fetched again.
        for (const path of fetchedMetadata) await rm(join(root, path));
        expect(await step('ebtables')).toBe(1);
        await leaveMetadata();
        expect(await step('socat')).toBe(0);
        // A crafted guest whose metadata directories are links to a host directory that has entries: not followed,
        // so nothing is there and it is fetched again.
        const host = await mkdtemp(join(tmpdir(), 'ib-unit-host-'));
        await writeFile(join(host, 'entry'), '');
        for (const path of fetchedMetadata) {
          await rm(join(root, dirname(path)), { recursive: true });
          await symlink(host, join(root, dirname(path)));
        }
        expect(await step('conntrack')).toBe(1);
        await rm(host, { recursive: true, force: true });
      } finally {
        await rm(root, { recursive: true, force: true });
      }
    },
  );

  test('a guest that tells its own release (a release package, a base product): no --releasever anywhere', async () => {
    for (const c of CASES.filter((x) => x.manager !== 'apt')) {
      const { session, calls } = fakeSession((call) => (call.argv[3] === 'read-config' ? { stdout: TDNF_CONF } : undefined));
      await packagesStep.run(fakeStepContext(session, { distro: detectDistro(c.osRelease) }).context, { install: ['socat'] });
      expect(calls.flatMap((call) => call.argv).filter((arg) => arg.startsWith('--releasever'))).toEqual([]);
    }
  });
});

describe('repository excludes and disable_excludes (pkgs.k8s.io on the RedHat family)', () => {
  test('dnf and yum: exclude= in the .repo file, --disableexcludes=NAME on the install that asks for it', async () => {
    for (const [osRelease, manager, tx] of [
      [{ ID: 'fedora', VERSION_ID: '40' }, 'dnf', DNF_TX],
      [{ ID: 'amzn', ID_LIKE: 'centos rhel fedora', VERSION_ID: '2' }, 'yum', YUM_TX],
    ] as const) {
      const { session, calls } = fakeSession();
      const { context } = fakeStepContext(session, { distro: detectDistro(osRelease) });
      await repositoryStep.run(context, { name: 'kubernetes', url: RPM_URL, key, exclude: ['kubelet', 'kubeadm', 'kubectl', 'cri-tools', 'kubernetes-cni'] });
      await packagesStep.run(context, { install: ['kubelet=1.36.2', 'cri-tools'], disable_excludes: 'kubernetes', hold: true });
      const repo = calls.find((call) => call.argv[4] === '/etc/yum.repos.d/kubernetes.repo')!.input;
      expect(repo).toBe(
        `[kubernetes]\nname=kubernetes\nbaseurl=${RPM_URL}\nenabled=1\ngpgcheck=1\ngpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-kubernetes\nrepo_gpgcheck=0\nexclude=kubelet kubeadm kubectl cri-tools kubernetes-cni\n`,
      );
      const install = calls.find((call) => call.argv[1] === 'install')!.argv;
      expect(install.slice(0, 2 + tx.length)).toEqual([manager, 'install', ...tx]);
      expect(install.slice(-3)).toEqual(['--disableexcludes=kubernetes', 'kubelet-1.36.2', 'cri-tools']);
    }
  });

  test('apt, tdnf and zypper have no per-repository exclude: the step fails before writing anything', async () => {
    for (const [osRelease, url] of [
      [{ ID: 'debian', VERSION_ID: '12' }, DEB_URL],
      [{ ID: 'photon', VERSION_ID: '5.0' }, RPM_URL],
      [{ ID: 'opensuse-leap', ID_LIKE: 'suse opensuse', VERSION_ID: '15.6' }, RPM_URL],
    ] as const) {
      const repo = fakeSession();
      await expect(repositoryStep.run(fakeStepContext(repo.session, { distro: detectDistro(osRelease) }).context, { name: 'k', url, key, exclude: ['kubelet'] })).rejects.toMatchObject({
        code: 'STEP_FAILED',
        message: expect.stringMatching(/exclude/),
      });
      expect(repo.calls).toEqual([]);
      const install = fakeSession();
      await expect(packagesStep.run(fakeStepContext(install.session, { distro: detectDistro(osRelease) }).context, { install: ['kubelet'], disable_excludes: 'k' })).rejects.toMatchObject({
        code: 'STEP_FAILED',
        message: expect.stringContaining('disable_excludes: k'),
      });
      expect(install.calls.filter((call) => call.argv.includes('install'))).toEqual([]);
    }
  });
});

/**
 * The shipped recipes/kubernetes-node.yaml on every family: which of its package steps run, and on Photon (tdnf,
 * which Debian does not package, so no integration test runs it) the exact commands and files. The repository
 * key is served on 127.0.0.1 as pkgs.k8s.io serves repomd.xml.key; only --set of its URL and fingerprint differ.
 */
describe('recipes/kubernetes-node.yaml: the package steps of each family', () => {
  let server: Server;
  let base: string;
  beforeAll(async () => {
    server = createServer((req, res) => (req.url?.endsWith('/repodata/repomd.xml.key') || req.url?.endsWith('/Release.key') ? res.end(key) : res.writeHead(404).end()));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}/core:/stable:/v1.36`;
  });
  afterAll(() => new Promise((resolve) => server.close(resolve)));

  async function packageSteps(osRelease: Record<string, string>) {
    const path = fileURLToPath(new URL('../../recipes/kubernetes-node.yaml', import.meta.url));
    const { recipe, problems } = parseRecipe(readFileSync(path, 'utf8'), path, { set: { kubernetes_version: '1.36.3', kubernetes_repo_base: base, kubernetes_repo_fingerprint: keyFingerprint } });
    expect(problems).toEqual([]);
    const distro = detectDistro(osRelease);
    const { session, calls } = guest();
    const { context } = fakeStepContext(session, { distro });
    const ran: string[] = [];
    for (const step of recipe!.steps) {
      if (step.type !== packagesStep && step.type !== repositoryStep) continue;
      if (whenMismatch(step.when, distro, 'x86_64')) continue;
      ran.push(step.name!);
      await step.type.run(context, step.spec);
    }
    return { ran, calls };
  }

  test('each family runs its own three', async () => {
    for (const [osRelease, suffix] of [
      [{ ID: 'debian', VERSION_ID: '12' }, 'apt'],
      [{ ID: 'rocky', ID_LIKE: 'rhel centos fedora', VERSION_ID: '9.4' }, 'dnf/yum'],
      [{ ID: 'opensuse-leap', ID_LIKE: 'suse opensuse', VERSION_ID: '15.6' }, 'zypper/tdnf'],
      [{ ID: 'photon', VERSION_ID: '5.0' }, 'zypper/tdnf'],
    ] as const) {
      const { ran } = await packageSteps(osRelease);
      expect(ran).toEqual([`node prerequisites (${suffix})`, `pkgs.k8s.io repository (${suffix})`, expect.stringMatching(new RegExp(`^kubelet, kubeadm, kubectl pinned and (held|locked) \\(${suffix.replace('/', '\\/')}\\)$`))]);
    }
  });

  test('Photon OS: tdnf installs the prerequisites, then the pinned five from pkgs.k8s.io, held by excludepkgs=', async () => {
    const { calls } = await packageSteps({ ID: 'photon', VERSION_ID: '5.0' });
    const tdnf = (...args: string[]) => ['tdnf', 'install', '-y', '--releasever=5.0', '--refresh', ...args];
    expect(calls.map(shown)).toEqual([
      probe('/etc/tdnf/vars/releasever'),
      tdnf('ca-certificates', 'conntrack-tools', 'ebtables', 'ethtool', 'iptables', 'socat'),
      'write /etc/pki/rpm-gpg/RPM-GPG-KEY-kubernetes',
      'write /etc/yum.repos.d/kubernetes.repo',
      tdnf('kubelet-1.36.3', 'kubeadm-1.36.3', 'kubectl-1.36.3', 'cri-tools', 'kubernetes-cni'),
      'read /etc/tdnf/tdnf.conf',
      'write /etc/tdnf/tdnf.conf',
    ]);
    const written = Object.fromEntries(calls.filter((call) => call.argv[3] === 'write-file').map((call) => [call.argv[4], call.input]));
    expect(written['/etc/pki/rpm-gpg/RPM-GPG-KEY-kubernetes']).toBe(key);
    expect(written['/etc/yum.repos.d/kubernetes.repo']).toBe(
      `[kubernetes]\nname=kubernetes\nbaseurl=${base}/rpm/\nenabled=1\ngpgcheck=1\ngpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-kubernetes\nrepo_gpgcheck=0\n`,
    );
    expect(written['/etc/tdnf/tdnf.conf']).toBe(
      `${TDNF_CONF}# Held by imagebuilder (no versionlock here): these stay at their installed versions; --disableexcludes=main overrides.\nexcludepkgs=kubelet kubeadm kubectl cri-tools kubernetes-cni\n`,
    );
  });
});

describe('an unknown distribution', () => {
  const unknown = detectDistro({ ID: 'gentoo', VERSION_ID: '2.15', PRETTY_NAME: 'Gentoo Linux' });
  const withLike = detectDistro({ ID: 'nixos', ID_LIKE: 'something else', VERSION_ID: '24.05', PRETTY_NAME: 'NixOS 24.05' });

  test('a step that needs a package manager names what os-release says and suggests a run step', () => {
    expect(unknown.family).toBeUndefined();
    expect(() => requireFamily(withLike, 'the packages step')).toThrow(
      expect.objectContaining({
        code: 'STEP_FAILED',
        message: 'the packages step is not supported on NixOS 24.05: unknown distribution family (ID=nixos ID_LIKE="something else" VERSION_ID=24.05)',
        hint: expect.stringMatching(/^supported families: debian, redhat, suse, photon \(ID or ID_LIKE in \/etc\/os-release: .*opensuse-leap.*photon\); .*use a `run` step/),
      }),
    );
  });

  const recipe = (steps: string) => {
    const { recipe: parsed, problems } = parseRecipe(`name: r\nsteps:\n${steps}`, '/recipes/r.yaml');
    expect(problems).toEqual([]);
    return parsed!;
  };

  test('apply checks every step before the first runs: packages, repository and an explicit package-cache need a family', () => {
    const { steps } = recipe(
      [
        '  - run: "true"',
        '  - name: tools',
        '    packages: { install: [socat] }',
        '  - file: { path: /etc/x, content: "x" }',
        '  - sysprep: { operations: [package-cache] }',
      ].join('\n') + '\n',
    );
    expect(() => requireFamilyForSteps(steps, unknown)).toThrow(
      expect.objectContaining({
        code: 'BAD_INPUT',
        message: "the image's distribution is unknown to imagebuilder: Gentoo Linux (ID=gentoo ID_LIKE=(none) VERSION_ID=2.15); 2 steps need its package manager, so nothing was run",
        detail: 'step 2 (tools) at /recipes/r.yaml:4:5\nstep 4 (sysprep package-cache) at /recipes/r.yaml:7:5',
        hint: expect.stringContaining('use a `run` step'),
      }),
    );
  });

  test('run and file steps, sysprep without operations and steps whose `when` skips them need none', () => {
    const { steps } = recipe(
      [
        '  - run: "true"',
        '  - file: { path: /etc/x, content: "x" }',
        '  - sysprep: {}',
        '  - when: { family: [debian, redhat] }',
        '    packages: { install: [socat] }',
      ].join('\n') + '\n',
    );
    expect(() => requireFamilyForSteps(steps, unknown)).not.toThrow();
    // A known family never fails the check.
    const { steps: all } = recipe('  - packages: { install: [socat] }\n');
    expect(() => requireFamilyForSteps(all, detectDistro({ ID: 'opensuse-leap', ID_LIKE: 'suse opensuse' }))).not.toThrow();
    expect(() => requireFamilyForSteps(all, unknown)).toThrow(expect.objectContaining({ code: 'BAD_INPUT' }));
  });
});

describe('sysprep removes files by pattern in the guest, keeping links (the script, run by a real /bin/sh)', () => {
  test('a regular file goes, a link stays, a glob matches, a missing path is fine', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ib-unit-remove-'));
    try {
      await execa('sh', ['-c', `cd ${dir} && touch id db.001 db.002 keep && ln -s keep link`]);
      await execa('/bin/sh', ['-c', REMOVE, 'remove-files', `${dir}/id`, `${dir}/db.*`, `${dir}/link`, `${dir}/absent`, `${dir}/none.*`]);
      expect((await execa('ls', ['-A', dir])).stdout.split('\n')).toEqual(['keep', 'link']);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
