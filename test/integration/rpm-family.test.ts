import { access, lstat, readdir, readFile, rm, mkdtemp } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { expectNothingLeft, hostState, runCli, sha256 } from '../helpers/host.js';
import { writeRecipe } from '../helpers/recipes.js';
import { expectPinnedKubernetesBom, expectPinnedKubernetesInstalled, hostRpm, rpmGuestImage, rpmInstalled, withRpmGuestMounted } from '../helpers/rpm-guest.js';
import { PINNED_KUBERNETES_RPMS, RPM_PATH, rpmsFetched, startRpmMirror, type RpmMirror } from '../helpers/rpm-mirror.js';

/** A fingerprint as vendors print it: ten groups of four, two spaces in the middle. */
const spaced = (fpr: string) => fpr.replace(/(.{4})/g, '$1 ').trim().replace(/^((?:\S+ ){4}\S+) /, '$1  ');

/** /etc/dnf/dnf.conf as Debian's dnf (and Fedora's) ship it: what the fixture has. */
const FEDORA_DNF_CONF = `# see \`man dnf.conf\` for defaults and possible options

[main]
gpgcheck=True
installonly_limit=3
clean_requirements_on_remove=True
best=False
skip_if_unavailable=True
`;

/**
 * The RedHat family end to end on a SYNTHETIC RPM guest: the fixture's userland is Debian's, its package manager is
 * Debian's build of the real rpm 4.18 and dnf 4.14 (with dnf-plugins-core's versionlock), and its os-release says
 * Fedora 40 (bin/make-debian-image --layout rpm-guest). The repository is a signed RPM repository laid out like
 * pkgs.k8s.io, built by rpmbuild + rpmsign + createrepo_c and served on 127.0.0.1 (test/helpers/rpm-mirror.ts).
 * Everything is checked from the output image with the host's own rpm, not with the code under test.
 */
describe('RedHat family on a synthetic RPM guest (Debian userland, Debian-built rpm and dnf, os-release Fedora 40)', () => {
  let work: string;
  let mirror: RpmMirror;

  beforeAll(async () => {
    work = await mkdtemp('/var/tmp/ib-rpm-family-');
    mirror = await startRpmMirror();
  });
  afterAll(async () => {
    await mirror?.close();
    await rm(work, { recursive: true, force: true });
  });

  const repositoryStep = () => ({
    name: 'add the kubernetes repository',
    repository: { name: 'kubernetes', url: mirror.repoUrl, key_url: mirror.keyUrl, fingerprint: spaced(mirror.keyFingerprint) },
  });
  const repoFile = () =>
    `[kubernetes]\nname=kubernetes\nbaseurl=${mirror.repoUrl}\nenabled=1\ngpgcheck=1\ngpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-kubernetes\nrepo_gpgcheck=0\n`;

  test('dnf: repository with a verified key, pinned installs held by versionlock, upgrade keeps them, cache cleaned, BOM from the rpm database', async () => {
    const input = await rpmGuestImage();
    const inputSha = await sha256(input);
    const recipe = await writeRecipe(work, 'rpm-pinned', [
      repositoryStep(),
      { name: 'kubernetes tools', packages: { install: ['kubelet=1.36.2-150500.1.1', 'kubeadm=1.36.2-150500.1.1', 'kubectl=1.36.2'], hold: true } },
      // 1.36.3 is in the repository: only the locks keep dnf upgrade from taking it.
      { name: 'upgrade the rest', packages: { upgrade: true } },
      { name: 'clean', sysprep: { operations: ['package-cache'] } },
    ]);
    const output = join(work, 'rpm-pinned.qcow2');
    const before = await hostState();
    const served = mirror.requests.length;

    const started = Date.now();
    const result = await runCli(['apply', recipe, '--disk-image', input, '--output', output, '--mount-backend', 'fuse', '--sparsify', 'fstrim', '--json', '-v']);
    const seconds = (Date.now() - started) / 1000;

    expect(result).toMatchObject({ exitCode: 0 });
    expect(result.stderr).not.toMatch(/error/i);
    expect(result.stderr).toContain('family redhat');
    expect(result.stderr).toContain(`key ${mirror.keyFingerprint} (imagebuilder test rpm mirror <rpm-mirror@imagebuilder.invalid>) matches the recipe`);
    // The guest has no release package: dnf was told the release by os-release's VERSION_ID, and asked first.
    expect(result.stderr).toMatch(/\$ chroot \S+ dnf install -y --setopt=install_weak_deps=False --setopt=keepcache=False --releasever=40 --refresh kubelet-1\.36\.2-150500\.1\.1 kubeadm-1\.36\.2-150500\.1\.1 kubectl-1\.36\.2\n/);
    // dnf imported the repository key from the file the step wrote, then checked every package against it.
    expect(result.stderr).toContain('From       : /etc/pki/rpm-gpg/RPM-GPG-KEY-kubernetes');
    expect(result.stderr).toContain(`Fingerprint: ${mirror.keyFingerprint.replace(/(.{4})/g, "$1 ").trim()}`);
    expect(await sha256(input)).toBe(inputSha);
    // The host fetched the key; dnf fetched the metadata and exactly the pinned packages and their dependencies.
    const requests = mirror.requests.slice(served);
    expect(requests).toEqual(expect.arrayContaining([`${RPM_PATH}repodata/repomd.xml.key`, `${RPM_PATH}repodata/repomd.xml`]));
    expect(rpmsFetched(mirror, served)).toEqual(PINNED_KUBERNETES_RPMS);

    const bom = JSON.parse(await readFile(`${output}.bom.json`, 'utf8'));
    await withRpmGuestMounted(output, async (root) => {
      // The rpm database, read by the host's rpm; the key dnf imported is the repository's.
      await expectPinnedKubernetesInstalled(root, mirror.keyFingerprint);
      expect((await execa('sh', [join(root, 'usr/bin/kubectl')])).stdout).toBe('kubectl v1.36.2 (imagebuilder test mirror)');

      // versionlock holds exactly what install named, at the installed versions; dnf.conf is untouched.
      const locks = (await readFile(join(root, 'etc/dnf/plugins/versionlock.list'), 'utf8')).split('\n').filter((line) => line && !line.startsWith('#'));
      expect(locks.sort()).toEqual(['kubeadm-0:1.36.2-150500.1.1.*', 'kubectl-0:1.36.2-150500.1.1.*', 'kubelet-0:1.36.2-150500.1.1.*']);
      expect(await readFile(join(root, 'etc/dnf/dnf.conf'), 'utf8')).toBe(FEDORA_DNF_CONF);

      const repoPath = join(root, 'etc/yum.repos.d/kubernetes.repo');
      const keyPath = join(root, 'etc/pki/rpm-gpg/RPM-GPG-KEY-kubernetes');
      expect(await readFile(repoPath, 'utf8')).toBe(repoFile());
      expect(await readFile(keyPath, 'utf8')).toBe(mirror.key);
      for (const path of [repoPath, keyPath]) {
        const info = await lstat(path);
        expect([info.mode & 0o7777, info.uid, info.gid]).toEqual([0o644, 0, 0]);
      }
      expect(bom.files).toEqual(
        expect.arrayContaining([
          { path: '/etc/pki/rpm-gpg/RPM-GPG-KEY-kubernetes', sha256: await sha256(keyPath), kind: 'config', source: mirror.keyUrl },
          { path: '/etc/yum.repos.d/kubernetes.repo', sha256: await sha256(repoPath), kind: 'config' },
        ]),
      );
      // sysprep package-cache: dnf clean all, and the cache directory (dnf's own) left empty.
      expect((await lstat(join(root, 'var/cache/dnf'))).isDirectory()).toBe(true);
      expect(await readdir(join(root, 'var/cache/dnf'))).toEqual([]);
    });

    // The BOM: read from the rpm database, [epoch:]version-release, rpm's architecture names.
    expect(bom.os).toMatchObject({ id: 'fedora', versionId: '40' });
    expect(bom.architecture).toBe('x86_64');
    expectPinnedKubernetesBom(bom);
    expect(bom.steps.map((s: { type: string }) => s.type)).toEqual(['repository', 'packages', 'packages', 'sysprep']);
    await expectNothingLeft(before);
    console.log(`rpm-guest build (repository, 3 pinned + deps, hold, upgrade, sysprep): ${seconds.toFixed(1)} s; stages ${JSON.stringify(bom.durationsMs)}`);
  });

  test('dnf without the versionlock plugin: the hold goes into excludepkgs= in dnf.conf, and upgrade: true keeps the package', async () => {
    const input = await rpmGuestImage();
    const recipe = await writeRecipe(work, 'rpm-excludes', [
      // As on a stock Fedora, which does not install python3-dnf-plugin-versionlock.
      { name: 'no versionlock plugin', run: "sed -i 's/^enabled *=.*/enabled = 0/' /etc/dnf/plugins/versionlock.conf" },
      repositoryStep(),
      { packages: { install: ['kubectl=1.36.2-150500.1.1'], hold: true } },
      { packages: { upgrade: true } },
    ]);
    const output = join(work, 'rpm-excludes.qcow2');
    const before = await hostState();
    const served = mirror.requests.length;

    const result = await runCli(['apply', recipe, '--disk-image', input, '--output', output, '--mount-backend', 'fuse', '--sparsify', 'fstrim']);

    expect(result).toMatchObject({ exitCode: 0 });
    expect(result.stderr).not.toMatch(/error/i);
    expect(rpmsFetched(mirror, served)).toEqual(['kubectl-1.36.2-150500.1.1.x86_64.rpm']);
    await withRpmGuestMounted(output, async (root) => {
      expect(await rpmInstalled(root, 'kubectl')).toBe('1.36.2-150500.1.1.x86_64');
      expect(await readFile(join(root, 'etc/dnf/dnf.conf'), 'utf8')).toBe(
        `${FEDORA_DNF_CONF}# Held by imagebuilder (no versionlock here): these stay at their installed versions; --disableexcludes=main overrides.\nexcludepkgs=kubectl\n`,
      );
      expect((await readFile(join(root, 'etc/dnf/plugins/versionlock.list'), 'utf8')).trim()).toBe('');
    });
    await expectNothingLeft(before);
  });

  test('gpgcheck=1 is real: a package signed by another key is refused, the step fails and nothing is written', async () => {
    const input = await rpmGuestImage();
    const recipe = await writeRecipe(work, 'rpm-imposter', [repositoryStep(), { packages: { install: ['imposter'] } }]);
    const output = join(work, 'rpm-imposter.qcow2');
    const before = await hostState();

    const result = await runCli(['apply', recipe, '--disk-image', input, '--output', output, '--mount-backend', 'fuse', '--sparsify', 'fstrim']);

    expect(result).toMatchObject({ exitCode: 4 });
    expect(result.stderr).toContain('error [STEP_FAILED]');
    expect(result.stderr).toMatch(/GPG check FAILED/);
    expect(result.stderr).toContain('Public key for imposter-1.0-1.x86_64.rpm is not installed');
    expect(result.stderr).toContain('hint: "GPG check FAILED" means a package is not signed by the key');
    await expect(access(output)).rejects.toThrow();
    await expect(access(`${output}.bom.json`)).rejects.toThrow();
    await expectNothingLeft(before);
  });
});
