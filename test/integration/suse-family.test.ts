import { access, lstat, mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { expectValidBom } from '../helpers/bom-schema.js';
import { expectNothingLeft, hostState, runCli, sha256 } from '../helpers/host.js';
import { writeRecipe } from '../helpers/recipes.js';
import { expectPinnedKubernetesBom, expectPinnedKubernetesInstalled, hostRpm, rpmGuestImage, rpmInstalled, withRpmGuestMounted } from '../helpers/rpm-guest.js';
import { PINNED_KUBERNETES_RPMS, RPM_PATH, rpmsFetched, startRpmMirror, type RpmMirror } from '../helpers/rpm-mirror.js';

/**
 * The SUSE family end to end on a SYNTHETIC guest: the fixture's userland is Debian's, its package manager is
 * Debian's build of the real zypper 1.14 (libzypp 17) over Debian's rpm 4.18, and its os-release says openSUSE
 * Leap 15.6 (bin/make-debian-image --layout suse-guest). The repository is the signed RPM repository laid out
 * like pkgs.k8s.io that the dnf test uses, built by rpmbuild + rpmsign + createrepo_c and served on 127.0.0.1.
 * Everything is checked from the output image with the host's own rpm, not with the code under test.
 */
describe('SUSE family on a synthetic zypper guest (Debian userland, Debian-built rpm and zypper, os-release openSUSE Leap 15.6)', () => {
  let work: string;
  let mirror: RpmMirror;

  beforeAll(async () => {
    work = await mkdtemp('/var/tmp/ib-suse-family-');
    mirror = await startRpmMirror();
  });
  afterAll(async () => {
    await mirror?.close();
    await rm(work, { recursive: true, force: true });
  });

  const repositoryStep = () => ({ name: 'add the kubernetes repository', repository: { name: 'kubernetes', url: mirror.repoUrl, key_url: mirror.keyUrl, fingerprint: mirror.keyFingerprint } });

  test('zypper: repository with its key imported, pinned installs locked by addlock, upgrade keeps them, cache and zypp id cleaned, BOM from the rpm database', async () => {
    const input = await rpmGuestImage('suse-guest');
    const inputSha = await sha256(input);
    const recipe = await writeRecipe(work, 'suse-pinned', [
      repositoryStep(),
      { name: 'kubernetes tools', packages: { install: ['kubelet=1.36.2-150500.1.1', 'kubeadm=1.36.2-150500.1.1', 'kubectl=1.36.2'], hold: true } },
      // 1.36.3 is in the repository: only the locks keep zypper update from taking it.
      { name: 'upgrade the rest', packages: { upgrade: true } },
      { name: 'hygiene', sysprep: { operations: ['package-cache', 'machine-id'] } },
    ]);
    const output = join(work, 'suse-pinned.qcow2');
    const before = await hostState();
    const served = mirror.requests.length;

    const result = await runCli(['apply', recipe, '--disk-image', input, '--output', output, '--mount-backend', 'fuse', '--sparsify', 'fstrim', '-v']);

    if (result.exitCode !== 0) throw new Error(result.all);
    expect(result.stderr).not.toMatch(/error/i);
    expect(result.stderr).toContain('family suse');
    expect(result.stderr).toContain(`key ${mirror.keyFingerprint} (imagebuilder test rpm mirror <rpm-mirror@imagebuilder.invalid>) matches the recipe`);
    // No base product and no release package in the guest: --releasever from os-release's VERSION_ID.
    expect(result.stderr).toMatch(/\$ chroot \S+ rpm --import \/etc\/pki\/rpm-gpg\/RPM-GPG-KEY-kubernetes\n/);
    expect(result.stderr).toMatch(/\$ chroot \S+ zypper --non-interactive --releasever 15\.6 refresh\n/);
    expect(result.stderr).toMatch(
      /\$ chroot \S+ zypper --non-interactive --releasever 15\.6 install --no-recommends --auto-agree-with-licenses kubelet=1\.36\.2-150500\.1\.1 kubeadm=1\.36\.2-150500\.1\.1 kubectl=1\.36\.2\n/,
    );
    expect(result.stderr).toMatch(/\$ chroot \S+ zypper --non-interactive addlock kubelet kubeadm kubectl\n/);
    // zypper saw the newer versions and kept them back because of the locks.
    expect(result.stderr).toMatch(/The following 3 package updates will NOT be installed:\s+kubeadm kubectl kubelet/);
    expect(await sha256(input)).toBe(inputSha);
    // zypper fetched the metadata and exactly the pinned packages and their dependencies, never 1.36.3.
    const requests = mirror.requests.slice(served);
    expect(requests).toEqual(expect.arrayContaining([`${RPM_PATH}repodata/repomd.xml.key`, `${RPM_PATH}repodata/repomd.xml`]));
    expect(rpmsFetched(mirror, served)).toEqual(PINNED_KUBERNETES_RPMS);

    const bom = JSON.parse(await readFile(`${output}.bom.json`, 'utf8'));
    await withRpmGuestMounted(output, async (root) => {
      // The key in the rpm database is the repository's, imported before zypper first read the repository.
      await expectPinnedKubernetesInstalled(root, mirror.keyFingerprint);

      // addlock wrote one package lock per name.
      const locks = await readFile(join(root, 'etc/zypp/locks'), 'utf8');
      const locked = [...locks.matchAll(/^solvable_name: (\S+)$/gm)].map((m) => m[1]).sort();
      expect(locked).toEqual(['kubeadm', 'kubectl', 'kubelet']);
      expect(locks).toMatch(/^type: package$/m);

      const repoPath = join(root, 'etc/zypp/repos.d/kubernetes.repo');
      const keyPath = join(root, 'etc/pki/rpm-gpg/RPM-GPG-KEY-kubernetes');
      expect(await readFile(repoPath, 'utf8')).toBe(
        `[kubernetes]\nname=kubernetes\nenabled=1\nautorefresh=1\nbaseurl=${mirror.repoUrl}\ntype=rpm-md\ngpgcheck=1\nrepo_gpgcheck=0\npkg_gpgcheck=1\ngpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-kubernetes\nkeeppackages=0\n`,
      );
      expect(await readFile(keyPath, 'utf8')).toBe(mirror.key);
      for (const path of [repoPath, keyPath]) {
        const info = await lstat(path);
        expect([info.mode & 0o7777, info.uid, info.gid]).toEqual([0o644, 0, 0]);
      }
      expect(bom.files).toEqual(
        expect.arrayContaining([
          { path: '/etc/pki/rpm-gpg/RPM-GPG-KEY-kubernetes', sha256: await sha256(keyPath), kind: 'config', source: mirror.keyUrl },
          { path: '/etc/zypp/repos.d/kubernetes.repo', sha256: await sha256(repoPath), kind: 'config' },
        ]),
      );
      // sysprep: zypper's cache emptied (the directory stays), libzypp's per-machine id gone.
      expect(await readdir(join(root, 'var/cache/zypp'))).toEqual([]);
      await expect(access(join(root, 'var/lib/zypp/AnonymousUniqueId'))).rejects.toThrow();
      expect(await readFile(join(root, 'etc/machine-id'), 'utf8')).toBe('');
    });

    expect(bom.os).toMatchObject({ id: 'opensuse-leap', versionId: '15.6' });
    expect(bom.architecture).toBe('x86_64');
    expectPinnedKubernetesBom(bom);
    expectValidBom(bom);
    await expectNothingLeft(before);
  });

  test('pkg_gpgcheck=1 is real: a package signed by another key is refused, the step fails and nothing is written', async () => {
    const input = await rpmGuestImage('suse-guest');
    const recipe = await writeRecipe(work, 'suse-imposter', [repositoryStep(), { packages: { install: ['imposter'] } }]);
    const output = join(work, 'suse-imposter.qcow2');
    const before = await hostState();

    const result = await runCli(['apply', recipe, '--disk-image', input, '--output', output, '--mount-backend', 'fuse', '--sparsify', 'fstrim']);

    expect(result.exitCode).toBe(4);
    expect(result.stderr).toMatch(/error \[STEP_FAILED\]: installing packages: `chroot \S+ zypper --non-interactive --releasever 15\.6 install [^`]* imposter` exited with 8/);
    expect(result.stderr).toContain('imposter-1.0-1.x86_64 (kubernetes): Signature verification failed [4-Signatures public key is not available]');
    expect(result.stderr).toContain('hint: "Signature verification failed" means a package is not signed by the key its repository\'s gpgkey names');
    expect(mirror.requests).toContain(`${RPM_PATH}x86_64/imposter-1.0-1.x86_64.rpm`);
    await expect(access(output)).rejects.toThrow();
    await expect(access(`${output}.bom.json`)).rejects.toThrow();
    await expectNothingLeft(before);
  });
});
