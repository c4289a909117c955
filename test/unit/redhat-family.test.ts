import { createHash } from 'node:crypto';
import { readdirSync, statSync } from 'node:fs';
import { BOX_UIDS } from '../../src/util/box-uid.js';
import { chmod, mkdir, mkdtemp, rm, symlink, truncate, writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { detectDistro, releaseverFor, requireFamily, rpmManagerFor } from '../../src/distro/families.js';
import { addMainExcludes, YUM_VERSIONLOCK_PROBE } from '../../src/pkg/dnf.js';
import { armoredPublicKey, DISTROVERPKG, EMPTY_CACHE_DIRS, RELEASEVER_PROBE } from '../../src/pkg/rpm-guest.js';
import { parseRpmQuery, queryRpmDatabase, RPM_DATABASE_BOUNDS, RPM_QUERY_FORMAT, rpmArchitecture, sourceRpmName } from '../../src/pkg/rpm.js';
import { packagesStep } from '../../src/steps/packages.js';
import { inspectOpenPgpKey, repositoryStep } from '../../src/steps/repository.js';
import { sysprepStep } from '../../src/steps/sysprep.js';
import { ImageBuilderError } from '../../src/util/errors.js';
import { recordingRunner } from '../../src/util/exec.js';
import { craftElf } from '../helpers/elf.js';
import { fakeSession, fakeStepContext, type FakeCall } from '../helpers/fake-session.js';

const fedora40 = detectDistro({ ID: 'fedora', VERSION_ID: '40', PRETTY_NAME: 'Fedora Linux 40 (Cloud Edition)' });
const centos7 = detectDistro({ ID: 'centos', ID_LIKE: 'rhel fedora', VERSION_ID: '7', PRETTY_NAME: 'CentOS Linux 7 (Core)' });

/** What every dnf transaction gets (src/pkg/dnf.ts), spelled out, not imported. */
const DNF_TX = ['-y', '--setopt=install_weak_deps=False', '--setopt=keepcache=False'];
const YUM_TX = ['-y', '--setopt=keepcache=0'];
/** The release-version probe: each manager's releasever variable files, then the release package capabilities. */
const RELEASEVER_CALL = ['/bin/sh', '-c', RELEASEVER_PROBE, 'releasever-probe', '/etc/dnf/vars/releasever', '/etc/yum/vars/releasever', ...DISTROVERPKG];
const YUM_RELEASEVER_CALL = ['/bin/sh', '-c', RELEASEVER_PROBE, 'releasever-probe', '/etc/yum/vars/releasever', ...DISTROVERPKG];
/** sysprep package-cache on every rpm family: rpm's Berkeley DB environment files go (src/steps/sysprep.ts). */
const REMOVE_FILES = 'for pattern in "$@"; do for file in $pattern; do if [ -f "$file" ] && [ ! -L "$file" ]; then rm -f -- "$file"; fi; done; done';
const RPM_DB_LEFTOVERS = ['/bin/sh', '-c', REMOVE_FILES, 'remove-files', '/var/lib/rpm/__db.*', '/usr/lib/sysimage/rpm/__db.*'];
const DNF_VERSIONLOCK_PROBE = ['dnf', '-q', 'versionlock', '--help'];

/** Fedora's (and Debian's dnf package's) /etc/dnf/dnf.conf. */
const FEDORA_DNF_CONF = `# see \`man dnf.conf\` for defaults and possible options

[main]
gpgcheck=True
installonly_limit=3
clean_requirements_on_remove=True
best=False
skip_if_unavailable=True
`;
const EXCLUDES_COMMENT = '# Held by imagebuilder (no versionlock here): these stay at their installed versions; --disableexcludes=main overrides.';

/**
 * A fake RPM guest: `releasever` says whether its rpm database has a release package, `versionlock` whether the
 * plugin answers, `files` what `cat` finds.
 */
let guests = 0;
function rpmGuest(options: { releasever?: boolean; versionlock?: boolean; files?: Record<string, string> } = {}) {
  // A guest of its own each (a build's root): metadata is fetched once per guest.
  return fakeSession((call: FakeCall) => {
    const [program, , script] = call.argv;
    if (program === '/bin/sh' && script === RELEASEVER_PROBE) return { exitCode: options.releasever ? 0 : 1 };
    if (program === '/bin/sh' && script === YUM_VERSIONLOCK_PROBE) return { exitCode: options.versionlock ? 0 : 1 };
    if (call.argv.join(' ') === DNF_VERSIONLOCK_PROBE.join(' ')) return options.versionlock ? {} : { exitCode: 1, stderr: 'No such command: versionlock.' };
    if (call.argv[3] === 'read-config') return { stdout: options.files?.[call.argv[4]] ?? '' };
    return undefined;
  }, `/fake/root-${++guests}`);
}

/** A guest file write (src/chroot/guest-write.ts) as the fake session sees it. */
function writeOf(call: FakeCall) {
  expect(call.argv.slice(0, 2)).toEqual(['/bin/sh', '-c']);
  expect(call.argv[3]).toBe('write-file');
  return { path: call.argv[4], owner: call.argv[5], group: call.argv[6], mode: call.argv[7], content: call.input };
}

const argvs = (calls: FakeCall[]) => calls.map((c) => (c.argv[3] === 'write-file' ? `write ${c.argv[4]}` : c.argv[3] === 'read-config' ? `read ${c.argv[4]}` : c.argv));

describe('RedHat family detection from os-release', () => {
  const cases: [string, Record<string, string>, 'dnf' | 'yum', string | undefined][] = [
    ['Fedora 40', { ID: 'fedora', VERSION_ID: '40' }, 'dnf', '40'],
    ['Fedora 21 (before dnf)', { ID: 'fedora', VERSION_ID: '21' }, 'yum', '21'],
    ['CentOS 7', { ID: 'centos', ID_LIKE: 'rhel fedora', VERSION_ID: '7' }, 'yum', '7'],
    ['CentOS Stream 9', { ID: 'centos', ID_LIKE: 'rhel fedora', VERSION_ID: '9' }, 'dnf', '9'],
    ['RHEL 7.9', { ID: 'rhel', ID_LIKE: 'fedora', VERSION_ID: '7.9' }, 'yum', '7'],
    ['RHEL 8.10', { ID: 'rhel', ID_LIKE: 'fedora', VERSION_ID: '8.10' }, 'dnf', '8'],
    ['RHEL 9.4', { ID: 'rhel', ID_LIKE: 'fedora', VERSION_ID: '9.4' }, 'dnf', '9'],
    ['Rocky 9.4', { ID: 'rocky', ID_LIKE: 'rhel centos fedora', VERSION_ID: '9.4' }, 'dnf', '9'],
    ['AlmaLinux 8.10', { ID: 'almalinux', ID_LIKE: 'rhel centos fedora', VERSION_ID: '8.10' }, 'dnf', '8'],
    ['Oracle Linux 7.9', { ID: 'ol', ID_LIKE: 'fedora', VERSION_ID: '7.9' }, 'yum', '7'],
    ['Oracle Linux 9.4', { ID: 'ol', ID_LIKE: 'fedora', VERSION_ID: '9.4' }, 'dnf', '9'],
    ['Amazon Linux 2', { ID: 'amzn', ID_LIKE: 'centos rhel fedora', VERSION_ID: '2' }, 'yum', '2'],
    ['Amazon Linux 2023', { ID: 'amzn', ID_LIKE: 'fedora', VERSION_ID: '2023' }, 'dnf', '2023'],
    ['an EL 7 derivative known by ID_LIKE only', { ID: 'eurolinux', ID_LIKE: 'rhel fedora centos', VERSION_ID: '7.9' }, 'yum', '7'],
    ['an EL 9 derivative known by ID_LIKE only', { ID: 'eurolinux', ID_LIKE: 'rhel fedora centos', VERSION_ID: '9.3' }, 'dnf', '9'],
    ['a Fedora derivative without VERSION_ID', { ID: 'somefedora', ID_LIKE: 'fedora' }, 'dnf', undefined],
  ];

  test.each(cases.map(([name, osRelease, manager, releasever]) => [`${name}: ${manager}, releasever ${releasever}`, osRelease, manager, releasever] as const))('%s', (_title, osRelease, manager, releasever) => {
    const distro = detectDistro(osRelease);
    expect(distro.family?.name).toBe('redhat');
    expect(distro.family?.packageManager.name).toBe(manager);
    expect(distro.family?.sessionFiles).toEqual([]);
    expect(rpmManagerFor(osRelease)).toBe(manager);
    expect(releaseverFor(osRelease)).toBe(releasever);
  });

  test('Debian and Ubuntu stay debian; an unknown distribution names both families in its error', () => {
    expect(detectDistro({ ID: 'debian', VERSION_ID: '12' }).family?.packageManager.name).toBe('apt');
    expect(detectDistro({ ID: 'ubuntu', ID_LIKE: 'debian', VERSION_ID: '24.04' }).family?.name).toBe('debian');
    const unknown = detectDistro({ ID: 'plan9' });
    expect(unknown.family).toBeUndefined();
    expect(() => requireFamily(unknown, 'the packages step')).toThrow(expect.objectContaining({ hint: expect.stringContaining('supported families: debian, redhat, suse, photon') }));
    // ID_LIKE words are looked up as keys, never as inherited object properties.
    expect(detectDistro({ ID: 'x', ID_LIKE: 'constructor toString' }).family).toBeUndefined();
  });

  test('each guest gets its own manager: per-session state never crosses guests', () => {
    expect(detectDistro({ ID: 'fedora', VERSION_ID: '40' }).family!.packageManager).not.toBe(fedora40.family!.packageManager);
  });

  test('the releasever fallback reaches the command line: Amazon Linux 2 → yum --releasever=2', async () => {
    const { session, calls } = rpmGuest({ releasever: false });
    const { context } = fakeStepContext(session, { distro: detectDistro({ ID: 'amzn', ID_LIKE: 'centos rhel fedora', VERSION_ID: '2' }) });
    await packagesStep.run(context, { install: ['socat'] });
    expect(argvs(calls)).toEqual([YUM_RELEASEVER_CALL, ['yum', 'clean', 'expire-cache', '--releasever=2'], ['yum', 'install', ...YUM_TX, '--releasever=2', 'socat']]);
  });
});

describe('dnf: exact commands', () => {
  test('a guest without a release package: asked once, then --releasever from VERSION_ID; metadata refreshed on the first transaction only', async () => {
    const { session, calls } = rpmGuest({ releasever: false });
    const { context } = fakeStepContext(session, { distro: fedora40 });
    await packagesStep.run(context, { install: ['kubelet=1.30.1-150500.1.1', 'ethtool=2:6.7-1.fc40', 'kubectl=1.30.1', 'NetworkManager'] });
    await packagesStep.run(context, { install: ['socat'] });
    expect(argvs(calls)).toEqual([
      RELEASEVER_CALL,
      ['dnf', 'install', ...DNF_TX, '--releasever=40', '--refresh', 'kubelet-1.30.1-150500.1.1', 'ethtool-2:6.7-1.fc40', 'kubectl-1.30.1', 'NetworkManager'],
      ['dnf', 'install', ...DNF_TX, '--releasever=40', 'socat'],
    ]);
  });

  test('a guest that tells its release (a release package or a releasever variable file): no --releasever', async () => {
    const { session, calls } = rpmGuest({ releasever: true });
    const { context } = fakeStepContext(session, { distro: fedora40 });
    await packagesStep.run(context, { install: ['socat'] });
    expect(argvs(calls)).toEqual([RELEASEVER_CALL, ['dnf', 'install', ...DNF_TX, '--refresh', 'socat']]);
  });

  test('order is remove, install, upgrade, hold; hold through versionlock when the plugin answers', async () => {
    const { session, calls } = rpmGuest({ releasever: true, versionlock: true });
    const { context } = fakeStepContext(session, { distro: fedora40 });
    await packagesStep.run(context, { remove: ['nano'], install: ['kubelet=1.30.1-150500.1.1'], upgrade: ['kubectl', 'kubeadm'], hold: ['kubelet', 'kubectl'] });
    expect(argvs(calls)).toEqual([
      RELEASEVER_CALL,
      ['dnf', 'remove', '-y', '--setopt=clean_requirements_on_remove=True', 'nano'],
      ['dnf', 'install', ...DNF_TX, '--refresh', 'kubelet-1.30.1-150500.1.1'],
      ['dnf', 'upgrade', ...DNF_TX, 'kubectl', 'kubeadm'],
      DNF_VERSIONLOCK_PROBE,
      ['dnf', 'versionlock', 'add', 'kubelet', 'kubectl'],
    ]);
  });

  test('upgrade: true is dnf upgrade of everything; hold: true holds what install names', async () => {
    const { session, calls } = rpmGuest({ releasever: false, versionlock: true });
    const { context } = fakeStepContext(session, { distro: fedora40 });
    await packagesStep.run(context, { upgrade: true });
    await packagesStep.run(context, { install: ['kubelet=1.30.1-150500.1.1', 'kubeadm'], hold: true });
    expect(argvs(calls)).toEqual([
      RELEASEVER_CALL,
      ['dnf', 'upgrade', ...DNF_TX, '--releasever=40', '--refresh'],
      ['dnf', 'install', ...DNF_TX, '--releasever=40', 'kubelet-1.30.1-150500.1.1', 'kubeadm'],
      DNF_VERSIONLOCK_PROBE,
      ['dnf', 'versionlock', 'add', '--releasever=40', 'kubelet', 'kubeadm'],
    ]);
  });

  test('without versionlock, hold writes excludepkgs= into [main] of /etc/dnf/dnf.conf, keeping the rest byte for byte', async () => {
    const { session, calls } = rpmGuest({ releasever: true, versionlock: false, files: { '/etc/dnf/dnf.conf': FEDORA_DNF_CONF } });
    const { context } = fakeStepContext(session, { distro: fedora40 });
    await packagesStep.run(context, { hold: ['kubelet', 'kubeadm'] });
    expect(argvs(calls)).toEqual([DNF_VERSIONLOCK_PROBE, 'read /etc/dnf/dnf.conf', 'write /etc/dnf/dnf.conf']);
    expect(writeOf(calls[2])).toEqual({
      path: '/etc/dnf/dnf.conf',
      owner: 'root',
      group: 'root',
      mode: '0644',
      content: `${FEDORA_DNF_CONF}${EXCLUDES_COMMENT}\nexcludepkgs=kubelet kubeadm\n`,
    });
  });

  test('holding what is already excluded writes nothing', async () => {
    const conf = `[main]\nexcludepkgs=kubelet,kubeadm\n`;
    const { session, calls } = rpmGuest({ versionlock: false, files: { '/etc/dnf/dnf.conf': conf } });
    const { context } = fakeStepContext(session, { distro: fedora40 });
    await packagesStep.run(context, { hold: ['kubeadm'] });
    expect(argvs(calls)).toEqual([DNF_VERSIONLOCK_PROBE, 'read /etc/dnf/dnf.conf']);
  });

  test('sysprep package-cache: dnf clean all, then the cache directories emptied (kept)', async () => {
    const { session, calls } = rpmGuest({ releasever: false });
    const { context } = fakeStepContext(session, { distro: fedora40 });
    await sysprepStep.run(context, { operations: ['package-cache'] });
    expect(argvs(calls)).toEqual([RELEASEVER_CALL, ['dnf', 'clean', 'all', '--releasever=40'], ['/bin/sh', '-c', EMPTY_CACHE_DIRS, 'empty-cache', '/var/cache/dnf', '/var/cache/libdnf5'], RPM_DB_LEFTOVERS]);
  });
});

describe('yum (CentOS 7, Amazon Linux 2): exact commands', () => {
  test('install expires the metadata cache first (yum has no --refresh); no weak-deps option', async () => {
    const { session, calls } = rpmGuest({ releasever: true });
    const { context } = fakeStepContext(session, { distro: centos7 });
    await packagesStep.run(context, { remove: ['nano'], install: ['kubelet=1.30.1-150500.1.1'], upgrade: true });
    await packagesStep.run(context, { upgrade: ['kubelet'] });
    expect(argvs(calls)).toEqual([
      YUM_RELEASEVER_CALL,
      ['yum', 'remove', '-y', '--setopt=clean_requirements_on_remove=1', 'nano'],
      ['yum', 'clean', 'expire-cache'],
      ['yum', 'install', ...YUM_TX, 'kubelet-1.30.1-150500.1.1'],
      ['yum', 'update', ...YUM_TX],
      ['yum', 'update', ...YUM_TX, 'kubelet'],
    ]);
  });

  test('hold: yum versionlock when its plugin is enabled, else exclude= in /etc/yum.conf', async () => {
    const locked = rpmGuest({ releasever: true, versionlock: true });
    await packagesStep.run(fakeStepContext(locked.session, { distro: centos7 }).context, { hold: ['kubelet'] });
    expect(argvs(locked.calls)).toEqual([['/bin/sh', '-c', YUM_VERSIONLOCK_PROBE], YUM_RELEASEVER_CALL, ['yum', 'versionlock', 'add', 'kubelet']]);

    const yumConf = '[main]\ncachedir=/var/cache/yum/$basearch/$releasever\nkeepcache=0\nexclude=kernel*\n\n[other]\nx=1\n';
    const excluded = rpmGuest({ releasever: true, versionlock: false, files: { '/etc/yum.conf': yumConf } });
    await packagesStep.run(fakeStepContext(excluded.session, { distro: centos7 }).context, { hold: ['kubelet', 'kubeadm'] });
    expect(argvs(excluded.calls)).toEqual([['/bin/sh', '-c', YUM_VERSIONLOCK_PROBE], 'read /etc/yum.conf', 'write /etc/yum.conf']);
    expect(writeOf(excluded.calls[2]).content).toBe('[main]\ncachedir=/var/cache/yum/$basearch/$releasever\nkeepcache=0\nexclude=kernel* kubelet kubeadm\n\n[other]\nx=1\n');
  });

  test('sysprep package-cache: yum clean all, /var/cache/yum emptied', async () => {
    const { session, calls } = rpmGuest({ releasever: true });
    await sysprepStep.run(fakeStepContext(session, { distro: centos7 }).context, { operations: ['package-cache'] });
    expect(argvs(calls)).toEqual([YUM_RELEASEVER_CALL, ['yum', 'clean', 'all'], ['/bin/sh', '-c', EMPTY_CACHE_DIRS, 'empty-cache', '/var/cache/yum'], RPM_DB_LEFTOVERS]);
  });
});

describe('excludes in the [main] section', () => {
  test('no file, no [main], [main] last or followed by another section, continuation lines', () => {
    expect(addMainExcludes('', ['a'], 'excludepkgs')).toBe(`[main]\n${EXCLUDES_COMMENT}\nexcludepkgs=a\n`);
    expect(addMainExcludes('[updates]\nenabled=1\n', ['a', 'b'], 'exclude')).toBe(`[main]\n${EXCLUDES_COMMENT}\nexclude=a b\n\n[updates]\nenabled=1\n`);
    expect(addMainExcludes('[main]\ngpgcheck=1\n\n\n[x]\ny=2', ['a'], 'excludepkgs')).toBe(`[main]\ngpgcheck=1\n${EXCLUDES_COMMENT}\nexcludepkgs=a\n\n\n[x]\ny=2\n`);
    expect(addMainExcludes('[main]\nexclude = a\n  b,\n  c\n', ['b', 'd'], 'excludepkgs')).toBe('[main]\nexclude = a\n  b,\n  c d\n');
    expect(addMainExcludes('[main]\nexcludepkgs=\n', ['a'], 'excludepkgs')).toBe('[main]\nexcludepkgs=a\n');
    expect(addMainExcludes('[main]\nexcludepkgs=a b\n', ['b', 'a'], 'excludepkgs')).toBeUndefined();
    // An excludepkgs line in another section (a repository's) is not the main one.
    expect(addMainExcludes('[main]\ngpgcheck=1\n[repo]\nexcludepkgs=a\n', ['a'], 'excludepkgs')).toBe(`[main]\ngpgcheck=1\n${EXCLUDES_COMMENT}\nexcludepkgs=a\n[repo]\nexcludepkgs=a\n`);
  });
});

describe('dnf repositories', () => {
  let gnupgHome: string;
  let armored: string;
  let binary: Buffer;
  let fingerprint: string;

  beforeAll(async () => {
    gnupgHome = await mkdtemp(join(tmpdir(), 'ib-unit-rpm-gnupg-'));
    await chmod(gnupgHome, 0o700);
    const gpg = (args: string[], encoding: 'utf8' | 'buffer' = 'utf8') =>
      execa('gpg', ['--homedir', gnupgHome, '--batch', '--no-tty', ...args], { encoding: encoding === 'buffer' ? 'buffer' : 'utf8', stripFinalNewline: encoding !== 'buffer' });
    await gpg(['--passphrase', '', '--quick-gen-key', 'Repo R <r@example.invalid>', 'ed25519', 'sign', 'never']);
    fingerprint = /^fpr:+([0-9A-F]{40}):/m.exec(String((await gpg(['--with-colons', '--list-keys'])).stdout))![1];
    armored = String((await gpg(['--export', '--armor', fingerprint])).stdout);
    binary = Buffer.from((await gpg(['--export', fingerprint], 'buffer')).stdout as Uint8Array);
  });
  afterAll(async () => {
    await execa('gpgconf', ['--homedir', gnupgHome, '--kill', 'gpg-agent'], { reject: false });
    await rm(gnupgHome, { recursive: true, force: true });
  });

  test('the key goes to /etc/pki/rpm-gpg, the .repo file to /etc/yum.repos.d; both recorded; the next install refreshes', async () => {
    const { session, calls } = rpmGuest({ releasever: true });
    const { context, records } = fakeStepContext(session, { distro: fedora40 });
    await packagesStep.run(context, { install: ['socat'] });
    await repositoryStep.run(context, { name: 'kubernetes', url: 'https://pkgs.k8s.io/core:/stable:/v1.30/rpm/', key: armored, fingerprint });
    await packagesStep.run(context, { install: ['kubectl'] });

    const repo = [
      '[kubernetes]',
      'name=kubernetes',
      'baseurl=https://pkgs.k8s.io/core:/stable:/v1.30/rpm/',
      'enabled=1',
      'gpgcheck=1',
      'gpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-kubernetes',
      'repo_gpgcheck=0',
      '',
    ].join('\n');
    expect(argvs(calls)).toEqual([
      RELEASEVER_CALL,
      ['dnf', 'install', ...DNF_TX, '--refresh', 'socat'],
      'write /etc/pki/rpm-gpg/RPM-GPG-KEY-kubernetes',
      'write /etc/yum.repos.d/kubernetes.repo',
      ['dnf', 'install', ...DNF_TX, '--refresh', 'kubectl'],
    ]);
    expect(writeOf(calls[2])).toEqual({ path: '/etc/pki/rpm-gpg/RPM-GPG-KEY-kubernetes', owner: 'root', group: 'root', mode: '0644', content: armored });
    expect(writeOf(calls[3])).toEqual({ path: '/etc/yum.repos.d/kubernetes.repo', owner: 'root', group: 'root', mode: '0644', content: repo });
    const sha = (text: string) => createHash('sha256').update(text).digest('hex');
    expect(records.files).toEqual([
      { path: '/etc/pki/rpm-gpg/RPM-GPG-KEY-kubernetes', sha256: sha(armored), kind: 'config' },
      { path: '/etc/yum.repos.d/kubernetes.repo', sha256: sha(repo), kind: 'config' },
    ]);
  });

  test('a binary key is armored (RFC 4880: base64 and CRC-24) into the same key', async () => {
    const result = armoredPublicKey(binary).toString();
    expect(result).toMatch(/^-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n([A-Za-z0-9+/=]{1,64}\n)+=[A-Za-z0-9+/]{4}\n-----END PGP PUBLIC KEY BLOCK-----\n$/);
    // gpg checks the CRC when it takes the armor off.
    const dearmored = await execa('gpg', ['--homedir', gnupgHome, '--batch', '--dearmor'], { input: result, encoding: 'buffer', stripFinalNewline: false });
    expect(Buffer.from(dearmored.stdout as Uint8Array).equals(binary)).toBe(true);
    expect(String(dearmored.stderr)).toBe('');
    expect((await inspectOpenPgpKey(Buffer.from(result))).keys.map((k) => k.fingerprint)).toEqual([fingerprint]);
    expect(armoredPublicKey(Buffer.from(armored)).toString()).toBe(armored);
  });

  test('a binary key fetched from key_url is written armored; the BOM has the sha256 of what was written', async () => {
    const server = createServer((_request, response) => response.writeHead(200).end(binary));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      const keyUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}/key.gpg`;
      const { session, calls } = rpmGuest({ releasever: true });
      const { context, records } = fakeStepContext(session, { distro: fedora40 });
      await repositoryStep.run(context, { name: 'bin', url: 'http://127.0.0.1:1/rpm/', key_url: keyUrl, fingerprint });
      const written = writeOf(calls[0]);
      expect(written.path).toBe('/etc/pki/rpm-gpg/RPM-GPG-KEY-bin');
      expect(written.content).toBe(armoredPublicKey(binary).toString());
      expect(records.files[0]).toEqual({ path: '/etc/pki/rpm-gpg/RPM-GPG-KEY-bin', sha256: createHash('sha256').update(armoredPublicKey(binary)).digest('hex'), kind: 'config', source: keyUrl });
    } finally {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    }
  });

  test("apt's suite and components fail the step on dnf before anything is written", async () => {
    const { session, calls } = rpmGuest({ releasever: true });
    const { context } = fakeStepContext(session, { distro: fedora40 });
    await expect(repositoryStep.run(context, { name: 'docker', url: 'https://download.docker.com/linux/fedora', suite: 'bookworm', components: ['stable'], key: armored })).rejects.toMatchObject({
      code: 'STEP_FAILED',
      message: 'repository docker: suite and components describe apt repositories; a dnf repository is its URL alone',
    });
    expect(calls).toEqual([]);
  });
});

describe('the rpm database, read from the host', () => {
  const line = (fields: string[]) => `${fields.join('\t')}\n`;

  test('query lines: [epoch:]version-release, noarch, vendor and source rpm; gpg-pubkey keys are not packages', () => {
    const text =
      line(['kubelet', '', '1.30.1', '150500.1.1', 'x86_64', 'obs://build.opensuse.org/isv:kubernetes', 'kubelet-1.30.1-150500.1.1.src.rpm']) +
      line(['ethtool', '2', '6.7', '1.fc40', 'x86_64', 'Fedora Project', 'ethtool-6.7-1.fc40.src.rpm']) +
      line(['gpg-pubkey', '', '234bf806', '6b051eaf', '', '', '']) +
      line(['python3-dnf', '', '4.14.0', '3', 'noarch', '', 'dnf-4.14.0-3.src.rpm']) +
      line(['glibc', '', '2.39', '17.fc40', 'i686', 'Fedora Project', 'glibc-2.39-17.fc40.src.rpm']) +
      line(['glibc', '', '2.39', '17.fc40', 'x86_64', 'Fedora Project', 'glibc-2.39-17.fc40.src.rpm']);
    expect(parseRpmQuery(text)).toEqual([
      { name: 'ethtool', version: '2:6.7-1.fc40', architecture: 'x86_64', source: 'ethtool', epoch: 2, vendor: 'Fedora Project', sourceRpm: 'ethtool-6.7-1.fc40.src.rpm' },
      { name: 'glibc', version: '2.39-17.fc40', architecture: 'i686', source: 'glibc', vendor: 'Fedora Project', sourceRpm: 'glibc-2.39-17.fc40.src.rpm' },
      { name: 'glibc', version: '2.39-17.fc40', architecture: 'x86_64', source: 'glibc', vendor: 'Fedora Project', sourceRpm: 'glibc-2.39-17.fc40.src.rpm' },
      { name: 'kubelet', version: '1.30.1-150500.1.1', architecture: 'x86_64', source: 'kubelet', vendor: 'obs://build.opensuse.org/isv:kubernetes', sourceRpm: 'kubelet-1.30.1-150500.1.1.src.rpm' },
      { name: 'python3-dnf', version: '4.14.0-3', architecture: 'noarch', source: 'dnf', sourceRpm: 'dnf-4.14.0-3.src.rpm' },
    ]);
    expect(sourceRpmName('kernel-6.8.5-301.fc40.src.rpm')).toBe('kernel');
    expect(sourceRpmName('foo-bar-1-2.nosrc.rpm')).toBe('foo-bar');
    expect(sourceRpmName('nonsense')).toBeUndefined();
  });

  test('the database is found through the guest symlink, its backend told to rpm, and queried unprivileged on a copy of the database files alone', async () => {
    const root = await mkdtemp(join(tmpdir(), 'ib-unit-rpmroot-'));
    try {
      await mkdir(join(root, 'usr/lib/sysimage/rpm'), { recursive: true });
      await mkdir(join(root, 'var/lib'), { recursive: true });
      await symlink('../../usr/lib/sysimage/rpm', join(root, 'var/lib/rpm'));
      // A guest's macro files beside its database would run `%(…)` in the host's rpm: never copied.
      for (const file of ['rpmdb.sqlite', 'rpmdb.sqlite-wal', 'rpmdb.sqlite-shm', '.rpm.lock', '.rpmmacros', 'macros', '.rpmrc']) await writeFile(join(root, 'usr/lib/sysimage/rpm', file), file);
      let copied: string[] = [];
      let copyOwner: number | undefined;
      const run = recordingRunner((call) => {
        copied = readdirSync(call.args[call.args.indexOf('/rpmdb') - 1]).sort();
        copyOwner = statSync(call.args[call.args.indexOf('/rpmdb') - 1]).uid;
        return { stdout: line(['rpm', '', '4.19.1.1', '1.fc40', 'x86_64', 'Fedora Project', 'rpm-4.19.1.1-1.fc40.src.rpm']) };
      });
      const packages = await queryRpmDatabase(root, { run });
      expect(run.calls.map((c) => c.file)).toEqual(['bwrap']);
      const { args } = run.calls[0];
      // No privilege: a uid of its own (not nobody's), no capability in any set, no_new_privs, no network, HOME empty
      // and not the copy, which is that uid's.
      const uid = args[args.indexOf('--reuid') + 1];
      expect(Number(uid)).toBeGreaterThanOrEqual(BOX_UIDS.first);
      expect(Number(uid)).toBeLessThan(BOX_UIDS.first + BOX_UIDS.count);
      expect(copyOwner).toBe(Number(uid));
      expect(args.slice(args.indexOf('setpriv'))).toEqual(['setpriv', '--reuid', uid, '--regid', uid, '--clear-groups', '--bounding-set', '-all', '--inh-caps', '-all', '--no-new-privs', '--', 'rpm', '--dbpath', '/rpmdb', '--define', '_db_backend sqlite', '-qa', '--queryformat', RPM_QUERY_FORMAT]);
      expect(args.slice(0, 8)).toEqual(['--unshare-net', '--unshare-pid', '--unshare-ipc', '--unshare-uts', '--unshare-cgroup-try', '--die-with-parent', '--new-session', '--clearenv']);
      expect(args[args.indexOf('HOME') + 1]).toBe('/tmp/home');
      expect(args[args.indexOf('/rpmdb') - 2]).toBe('--bind');
      expect(copied).toEqual(['rpmdb.sqlite', 'rpmdb.sqlite-wal']);
      expect(packages.map((p) => `${p.name} ${p.version} ${p.architecture}`)).toEqual(['rpm 4.19.1.1-1.fc40 x86_64']);
      expect(await rpmArchitecture(root, packages)).toBe('x86_64');
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });

  test('a crafted database of too many files, or of too many bytes in all (sparse), is refused before anything is copied; the query has a time limit', async () => {
    const root = await mkdtemp(join(tmpdir(), 'ib-unit-rpmroot-'));
    try {
      const dir = join(root, 'var/lib/rpm');
      await mkdir(dir, { recursive: true });
      await writeFile(join(dir, 'Packages'), 'bdb');
      for (let i = 0; i < RPM_DATABASE_BOUNDS.files; i++) await writeFile(join(dir, `A${i}`), 'x');
      const run = recordingRunner(() => ({ stdout: '' }));
      await expect(queryRpmDatabase(root, { run })).rejects.toMatchObject({ code: 'BAD_INPUT', message: expect.stringContaining(`has ${RPM_DATABASE_BOUNDS.files + 1} database files`) });
      expect(run.calls).toEqual([]);
      // Within the file count, but past the bytes: three sparse files of a GiB each (their reads would be 3 GiB).
      for (let i = 3; i < RPM_DATABASE_BOUNDS.files; i++) await rm(join(dir, `A${i}`));
      for (const name of ['A0', 'A1', 'A2']) await truncate(join(dir, name), 1 << 30);
      await expect(queryRpmDatabase(root, { run })).rejects.toMatchObject({ code: 'BAD_INPUT', message: expect.stringContaining('more than the 64 files and 2147483648 bytes a real one holds') });
      expect(run.calls).toEqual([]);
      // A real one passes, and its sandboxed query is given a time limit.
      for (const name of ['A0', 'A1', 'A2']) await rm(join(dir, name));
      await queryRpmDatabase(root, { run });
      expect(run.calls[0].options.timeoutMs).toBe(5 * 60_000);
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });

  test('Berkeley DB in /var/lib/rpm is read as bdb_ro; no database is a clear error; no host rpm says what to install', async () => {
    const root = await mkdtemp(join(tmpdir(), 'ib-unit-rpmroot-'));
    try {
      await expect(queryRpmDatabase(root, { run: recordingRunner() })).rejects.toMatchObject({
        code: 'BAD_INPUT',
        message: 'the guest has no rpm database (looked in /usr/lib/sysimage/rpm and /var/lib/rpm)',
      });
      await mkdir(join(root, 'var/lib/rpm'), { recursive: true });
      await mkdir(join(root, 'usr/lib/sysimage/rpm'), { recursive: true }); // present but empty, as on RHEL 9
      await writeFile(join(root, 'var/lib/rpm/Packages'), 'bdb');
      await writeFile(join(root, 'var/lib/rpm/__db.001'), 'environment');
      const run = recordingRunner(() => ({ stdout: '' }));
      await queryRpmDatabase(root, { run });
      const { args } = run.calls[0];
      expect(args.slice(args.indexOf('rpm') + 3, args.indexOf('rpm') + 5)).toEqual(['--define', '_db_backend bdb_ro']);

      const path = process.env.PATH;
      process.env.PATH = '/nonexistent';
      try {
        await expect(queryRpmDatabase(root, { run })).rejects.toMatchObject({ code: 'MISSING_TOOL', hint: 'install it (Debian and Ubuntu: apt-get install rpm)' });
      } finally {
        process.env.PATH = path;
      }
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });

  test('architecture from ELF headers, in rpm names, when the rpm database has no rpm package', async () => {
    const root = await mkdtemp(join(tmpdir(), 'ib-unit-elf-'));
    try {
      expect(await rpmArchitecture(root, [])).toBeUndefined();
      await mkdir(join(root, 'usr/bin'), { recursive: true });
      await writeFile(join(root, 'usr/bin/rpm'), craftElf({ is64: true, littleEndian: true, machine: 0xb7 }));
      expect(await rpmArchitecture(root, [])).toBe('aarch64');
      // The rpm package's own arch wins over the binary's.
      expect(await rpmArchitecture(root, [{ name: 'rpm', version: '4.19-1', architecture: 'x86_64' }])).toBe('x86_64');
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });
});

