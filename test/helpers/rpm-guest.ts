import { copyFile, lstat, mkdir, mkdtemp, readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { FIXTURE_CACHE } from './fixtures.js';
import { REPO, sha256 } from './host.js';
import { withImageMounted } from './inspect.js';
import { deriveImage } from './derive-image.js';
import { FEDORA_PATH, type RpmMirror } from './rpm-mirror.js';

/**
 * The synthetic RPM-family guests (bin/make-debian-image): Debian's userland with Debian's own rpm and package
 * manager, an empty rpm database at /usr/lib/sysimage/rpm, and an os-release that names the family under test:
 * `rpm-guest` has Debian's dnf and dnf-plugins-core and says Fedora 40; `suse-guest` has Debian's zypper and says
 * openSUSE Leap 15.6. Cached like the other fixture images (keyed by the script's sha256); tests only ever read them.
 */
export async function rpmGuestImage(layout: 'rpm-guest' | 'suse-guest' = 'rpm-guest'): Promise<string> {
  const script = `${REPO}/bin/make-debian-image`;
  const version = (await sha256(script)).slice(0, 12);
  const dir = `${FIXTURE_CACHE}/images`;
  const path = `${dir}/${layout}-${version}.qcow2`;
  if (await stat(path).catch(() => undefined)) return path;
  await mkdir(dir, { recursive: true });
  await execa(script, ['--layout', layout, '--format', 'qcow2', '--output', path, '--cache-dir', FIXTURE_CACHE], { stderr: 'inherit' });
  return path;
}

/** Mounts an rpm-guest or suse-guest image (or a build's output) read-only, without the code under test. */
export function withRpmGuestMounted<T>(image: string, body: (root: string) => Promise<T>): Promise<T> {
  // Both are partitioned like the xfs layout: GPT, p1 an xfs root (mounted nouuid).
  return withImageMounted(image, 'xfs', body);
}

/** Where the rpm-guest and suse-guest keep their rpm database (their /var/lib/rpm is a relative link to it). */
export const RPM_GUEST_DBPATH = 'usr/lib/sysimage/rpm';

/**
 * Queries the image's rpm database with the host's rpm (`rpm -q ARGS`), on a copy of the database files: a
 * read-only mount does not let sqlite make its shared-memory file. Returns rpm's stdout and exit code.
 */
export async function hostRpm(root: string, args: string[]): Promise<{ stdout: string; exitCode: number }> {
  const copy = await mkdtemp(join(tmpdir(), 'ib-test-rpmdb-'));
  try {
    const source = join(root, RPM_GUEST_DBPATH);
    for (const entry of await readdir(source)) {
      if ((await lstat(join(source, entry))).isFile() && !entry.endsWith('-shm')) await copyFile(join(source, entry), join(copy, entry));
    }
    const result = await execa('rpm', ['--dbpath', copy, ...args], { reject: false, env: { LC_ALL: 'C' } });
    return { stdout: String(result.stdout), exitCode: result.exitCode ?? -1 };
  } finally {
    await rm(copy, { recursive: true, force: true });
  }
}

/** `[epoch:]version-release.arch` of an installed package, or undefined when the rpm database lacks it. */
export async function rpmInstalled(root: string, name: string): Promise<string | undefined> {
  const result = await hostRpm(root, ['-q', '--queryformat', '%|EPOCH?{%{EPOCH}:}|%{VERSION}-%{RELEASE}.%{ARCH}', name]);
  return result.exitCode === 0 ? result.stdout : undefined;
}

/**
 * The guest's rpm database, read by the host's rpm, holds the pinned 1.36.2 set and its dependencies, and exactly one
 * imported key: the repository's (gpg-pubkey-<last 8 hex of its fingerprint>).
 */
export async function expectPinnedKubernetesInstalled(root: string, keyFingerprint: string): Promise<void> {
  for (const name of ['kubelet', 'kubeadm', 'kubectl']) expect(await rpmInstalled(root, name)).toBe('1.36.2-150500.1.1.x86_64');
  expect(await rpmInstalled(root, 'cri-tools')).toBe('1.36.0-150500.1.1.x86_64');
  expect(await rpmInstalled(root, 'kubernetes-cni')).toBe('1.9.1-150500.1.1.x86_64');
  expect(await rpmInstalled(root, 'ethtool')).toBe('2:6.7-1.fc40.x86_64');
  const pubkeys = await hostRpm(root, ['-q', 'gpg-pubkey', '--queryformat', '%{VERSION}\n']);
  expect(pubkeys.stdout.trim().split('\n')).toEqual([keyFingerprint.slice(-8).toLowerCase()]);
}

/**
 * The BOM of a build of the pinned 1.36.2 set from the pkgs.k8s.io stand-in: read from the rpm database, exactly
 * those packages and their dependency, [epoch:]version-release and rpm's architecture names, nothing removed.
 */
export function expectPinnedKubernetesBom(bom: { packages: { name: string }[]; removedPackages: unknown[] }): void {
  const byName = Object.fromEntries(bom.packages.map((p) => [p.name, p]));
  expect(Object.keys(byName).sort()).toEqual(['cri-tools', 'ethtool', 'kubeadm', 'kubectl', 'kubelet', 'kubernetes-cni']);
  expect(byName.kubelet).toEqual({
    name: 'kubelet',
    version: '1.36.2-150500.1.1',
    architecture: 'x86_64',
    source: 'kubelet',
    vendor: 'imagebuilder test mirror of pkgs.k8s.io',
    sourceRpm: 'kubelet-1.36.2-150500.1.1.src.rpm',
    origin: 'added',
  });
  expect(byName.ethtool).toMatchObject({ version: '2:6.7-1.fc40', epoch: 2, architecture: 'x86_64', sourceRpm: 'ethtool-6.7-1.fc40.src.rpm', origin: 'added' });
  expect(bom.removedPackages).toEqual([]);
}

/**
 * A copy of the synthetic rpm-guest (Debian userland, Debian's rpm and dnf, os-release Fedora 40) whose dnf knows
 * a Fedora repository, as every real Fedora image does: /etc/yum.repos.d/fedora.repo as Fedora ships it ($releasever,
 * $basearch and all), pointing at the mirror's Fedora stand-in, and that repository's key in /etc/pki/rpm-gpg.
 * Made without the code under test (deriveImage), into `work`.
 */
export async function rpmGuestWithFedoraRepository(work: string, mirror: RpmMirror): Promise<string> {
  const baseurl = `${mirror.url}${FEDORA_PATH.replace('/40/', '/$releasever/').replace('/x86_64/', '/$basearch/')}`;
  return deriveImage(await rpmGuestImage(), join(work, 'fedora-guest.qcow2'), {
    '/etc/yum.repos.d/fedora.repo':
      `[fedora]\nname=Fedora $releasever - $basearch\nbaseurl=${baseurl}\nenabled=1\nmetadata_expire=7d\nrepo_gpgcheck=0\ntype=rpm\ngpgcheck=1\n` +
      'gpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-fedora-$releasever-$basearch\nskip_if_unavailable=False\n',
    '/etc/pki/rpm-gpg/RPM-GPG-KEY-fedora-40-x86_64': mirror.fedoraKey,
  }, { partitioned: true, mountOptions: 'nouuid' });
}

/**
 * The suse-guest fixture (openSUSE Leap 15.6 by os-release) with a main repository as a real image has one, its
 * key already in the rpm database: here the stand-in repository of the node prerequisites. Into `work`.
 */
export async function suseGuestWithMainRepository(work: string, mirror: RpmMirror): Promise<string> {
  return deriveImage(await rpmGuestImage('suse-guest'), join(work, 'suse-guest.qcow2'), {
    '/etc/zypp/repos.d/repo-oss.repo':
      `[repo-oss]\nname=Main Repository\nenabled=1\nautorefresh=1\nbaseurl=${mirror.fedoraRepoUrl}\ntype=rpm-md\n` +
      'gpgcheck=1\nrepo_gpgcheck=0\npkg_gpgcheck=1\ngpgkey=file:///etc/RPM-GPG-KEY-oss\nkeeppackages=0\n',
    '/etc/RPM-GPG-KEY-oss': mirror.fedoraKey,
  }, { partitioned: true, mountOptions: 'nouuid', thenRun: `rpm --root "$1" --dbpath /${RPM_GUEST_DBPATH} --import "$1/etc/RPM-GPG-KEY-oss"` });
}
