import { lstat, mkdir, mkdtemp, readFile, readlink, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { fixtureImage } from '../helpers/fixtures.js';
import { expectNothingLeft, hostState, REPO, runCli, sha256 } from '../helpers/host.js';
import { dpkgVersion, withImageMounted } from '../helpers/inspect.js';
import { DEFAULT_SERIES, pinnedRelease, SERIES, startLocalMirror, type LocalMirror } from '../helpers/local-mirror.js';
import { nodeRecipeSets } from '../helpers/recipes.js';
import { writeOciArchive } from '../helpers/oci.js';
import { expectValidBom } from '../helpers/bom-schema.js';
import { rpmGuestWithFedoraRepository, rpmInstalled, suseGuestWithMainRepository, withRpmGuestMounted } from '../helpers/rpm-guest.js';
import { evr, FEDORA_PACKAGES, FEDORA_PATH, OTHER_DISTRO_PACKAGES, RPM_PATH, startRpmMirror, type RpmMirror, type RpmPackage } from '../helpers/rpm-mirror.js';

/** The names of the steps a build skipped (their `when:` did not match the guest), from its BOM. */
const skippedSteps = (bom: { steps: { name: string; skipped?: string }[] }) => bom.steps.filter((s) => s.skipped).map((s) => s.name);

/**
 * The shipped recipes/kubernetes-node.yaml, unchanged, built air-gapped from a local mirror: only --set of the
 * mirror URLs (and the mirror's own signing key) differ from a build against pkgs.k8s.io and GitHub.
 */
describe('recipes/kubernetes-node.yaml against a local mirror', () => {
  let work: string;
  let mirror: LocalMirror;
  beforeAll(async () => {
    work = await mkdtemp('/var/tmp/ib-k8s-');
    mirror = await startLocalMirror();
  });
  afterAll(async () => {
    await mirror?.close();
    await rm(work, { recursive: true, force: true });
  });

  // Every series the recipe's table supports, built with --set kubernetes_version alone (the default series is
  // the test above's): the table picks the companions, the stand-ins serve exactly those versions, and the BOM
  // says so. The steps before the first one that depends on the series come from the step cache after the first.
  test('each supported series: kubernetes_version alone picks its companions, and the BOM lists exactly those versions', async () => {
    const cache = join(work, 'series-cache');
    for (const [index, series] of Object.keys(SERIES).filter((s) => s !== DEFAULT_SERIES).entries()) {
      const row = SERIES[series];
      const output = join(work, `node-${series}.qcow2`);
      const result = await runCli(
        ['apply', `${REPO}/recipes/kubernetes-node.yaml`, '--disk-image', await fixtureImage('gpt-esp'), '--output', output, '--mount-backend', 'fuse', '--sparsify', 'none', ...nodeRecipeSets(mirror, mirror, series)],
        { env: { IMAGEBUILDER_NO_CACHE: '', IMAGEBUILDER_CACHE: cache } },
      );
      if (result.exitCode !== 0) throw new Error(result.all);
      const bom = JSON.parse(await readFile(`${output}.bom.json`, 'utf8'));
      const version = pinnedRelease(series);
      const packages = Object.fromEntries((bom.packages as { name: string; version: string }[]).map((p) => [p.name, p.version]));
      expect({ kubelet: packages.kubelet, kubeadm: packages.kubeadm, kubectl: packages.kubectl, 'cri-tools': packages['cri-tools'], 'kubernetes-cni': packages['kubernetes-cni'] }).toEqual({
        kubelet: `${version}-1.1`, kubeadm: `${version}-1.1`, kubectl: `${version}-1.1`, 'cri-tools': row.cri_tools_deb_version, 'kubernetes-cni': row.kubernetes_cni_deb_version,
      });
      const components = Object.fromEntries((bom.components as { name: string; version: string }[]).map((c) => [c.name, c.version]));
      expect(components).toMatchObject({ kubelet: version, kubeadm: version, kubectl: version, crictl: row.crictl_version, 'cni-plugins': row.cni_plugins_version });
      // The release files of the series' versions, each verified by its sums file (containerd and runc are the
      // stand-ins' real binaries, which say their own versions: see the test above).
      const files = mirror.series(series);
      const downloads = (bom.files as { kind: string; source?: string; sha256: string }[]).filter((f) => f.kind === 'download');
      for (const artifact of [files.containerd, files.runc, files.crictl, files.cniPlugins]) expect(downloads).toContainEqual(expect.objectContaining({ source: artifact.url, sha256: artifact.sha256 }));
      expect(files.crictl.url).toContain(`/v${row.crictl_version}/`);
      expect(files.containerd.url).toContain(`/v${row.containerd_version}/`);
      expect(bom.recipe.variables).toMatchObject({ kubernetes_series: `v${series}`, containerd_version: row.containerd_version, runc_version: row.runc_version, pause_image: row.pause_image });
      expect(mirror.requests).toContain(`/core:/stable:/v${series}/deb/InRelease`);
      // After the first build, the steps before the repository (the first that depends on the series) came from the cache.
      if (index > 0) expect(bom.steps.filter((step: { cached?: boolean }) => step.cached).length).toBeGreaterThan(3);
    }
  }, 900_000);

  test('a series the table does not have: a located error naming the supported ones, before any work', async () => {
    const result = await runCli(['apply', `${REPO}/recipes/kubernetes-node.yaml`, '--disk-image', await fixtureImage('gpt-esp'), '--output', join(work, 'old.qcow2'), '--set', 'kubernetes_version=1.30.2']);
    expect(result.exitCode).toBe(2);
    expect(result.stderr).toContain(`--set kubernetes_version: kubernetes_version = "1.30.2" selects "1.30" in table kubernetes_release (`);
    expect(result.stderr).toContain(`which has no such row; it has: ${Object.keys(SERIES).join(', ')}`);
  });

  test('builds a kubeadm-ready Debian node: pinned and held packages, verified binaries, config, no swap, clean', async () => {
    const input = await fixtureImage('separate-boot');
    await mkdir(join(work, 'images'));
    const { manifestDigest } = await writeOciArchive(join(work, 'images/control-plane.tar'), 'registry.k8s.io/kube-apiserver:v1.36.2', 'apiserver\n');
    const output = join(work, 'node.qcow2');
    const before = await hostState();
    const result = await runCli([
      'apply', `${REPO}/recipes/kubernetes-node.yaml`, '--disk-image', input, '--output', output, '--mount-backend', 'fuse', '--sparsify', 'fstrim',
      ...nodeRecipeSets(mirror),
      '--set', 'import_control_plane_images=true',
      '--set', `control_plane_images_archive=${join(work, 'images/control-plane.tar')}`,
      // The archive is the user's, outside the shipped recipe's directory: allowed by name, as a user would.
      '--allow-host-path', join(work, 'images'),
    ]);
    if (result.exitCode !== 0) throw new Error(result.all);
    expect(result.stderr).not.toContain('error [');
    // Everything Kubernetes came from the mirror.
    for (const path of ['/core:/stable:/v1.36/deb/InRelease', '/core:/stable:/v1.36/deb/Release.key']) expect(mirror.requests).toContain(path);
    for (const file of [mirror.files.containerd, mirror.files.runc, mirror.files.crictl, mirror.files.cniPlugins]) {
      expect(mirror.requests).toContain(new URL(file.url).pathname);
      expect(mirror.requests).toContain(new URL(file.checksumUrl).pathname);
    }

    const bom = JSON.parse(await readFile(`${output}.bom.json`, 'utf8'));
    await withImageMounted(output, 'separate-boot', async (root) => {
      const admindir = `--admindir=${root}/var/lib/dpkg`;
      for (const name of ['kubelet', 'kubeadm', 'kubectl']) {
        expect(await dpkgVersion(root, name)).toBe('1.36.2-1.1');
        expect((await execa('dpkg-query', [admindir, '-W', '-f', '${Status}', name])).stdout).toBe('hold ok installed');
        expect(bom.packages).toContainEqual(expect.objectContaining({ name, version: '1.36.2-1.1', origin: 'added' }));
      }
      expect(await dpkgVersion(root, 'cri-tools')).toBe('1.36.0-1.1');
      expect(await dpkgVersion(root, 'kubernetes-cni')).toBe('1.9.1-1.1');
      expect(await readFile(join(root, 'etc/apt/sources.list.d/kubernetes.sources'), 'utf8')).toContain(`URIs: ${mirror.url}/core:/stable:/v1.36/deb/`);

      // Release binaries, byte for byte what the mirror published.
      for (const binary of ['usr/local/bin/containerd', 'usr/local/bin/ctr', 'usr/local/bin/containerd-shim-runc-v2', 'usr/local/sbin/runc', 'usr/local/bin/crictl']) {
        expect((await lstat(join(root, binary))).mode & 0o111).not.toBe(0);
      }
      expect(await sha256(join(root, 'usr/local/sbin/runc'))).toBe(mirror.files.runc.sha256);
      expect((await readdir(join(root, 'opt/cni/bin'))).sort()).toEqual(expect.arrayContaining(['bridge', 'host-local', 'loopback', 'portmap']));
      const config = await readFile(join(root, 'etc/containerd/config.toml'), 'utf8');
      expect(config).toContain('SystemdCgroup = true');
      // containerd 2.x's config version 3, the pause image pinned where its CRI images plugin reads it.
      expect(config).toMatch(/^version = 3$/m);
      expect(config).toContain(`[plugins.'io.containerd.cri.v1.images'.pinned_images]\n  sandbox = "${SERIES[DEFAULT_SERIES].pause_image}"`);
      expect(await readFile(join(root, 'etc/crictl.yaml'), 'utf8')).toContain('runtime-endpoint: unix:///run/containerd/containerd.sock');

      // Units enabled as files only; kubelet enabled, nothing started.
      expect(await readlink(join(root, 'etc/systemd/system/multi-user.target.wants/containerd.service'))).toBe('/usr/local/lib/systemd/system/containerd.service');
      expect(await readlink(join(root, 'etc/systemd/system/multi-user.target.wants/kubelet.service'))).toMatch(/kubelet\.service$/);
      expect(await readFile(join(root, 'etc/modules-load.d/kubernetes.conf'), 'utf8')).toMatch(/^overlay\nbr_netfilter\n/m);
      const sysctl = await readFile(join(root, 'etc/sysctl.d/99-kubernetes.conf'), 'utf8');
      for (const line of [
        'net.bridge.bridge-nf-call-iptables = 1', 'net.bridge.bridge-nf-call-ip6tables = 1', 'net.ipv4.ip_forward = 1', 'net.ipv6.conf.all.forwarding = 1',
        'vm.overcommit_memory = 1', 'vm.panic_on_oom = 0', 'kernel.panic = 10', 'kernel.panic_on_oops = 1', 'kernel.keys.root_maxkeys = 1000000', 'kernel.keys.root_maxbytes = 25000000',
      ]) expect(sysctl).toContain(line);

      // Swap off: the fixture's swap partition line is commented out.
      const fstab = await readFile(join(root, 'etc/fstab'), 'utf8');
      expect(fstab.split('\n').filter((line) => /\sswap\s/.test(line) && !line.startsWith('#'))).toEqual([]);
      expect(fstab).toMatch(/^# disabled by imagebuilder: .*\sswap\s/m);

      // Hygiene.
      expect(await readFile(join(root, 'etc/machine-id'), 'utf8')).toBe('');
      expect((await readdir(join(root, 'etc/ssh')).catch(() => [] as string[])).filter((name) => name.startsWith('ssh_host_'))).toEqual([]);

      // The preloaded control-plane image is in containerd's store.
      const blobs = join(root, 'var/lib/containerd/io.containerd.content.v1.content/blobs/sha256');
      await readFile(join(blobs, manifestDigest.slice('sha256:'.length)));
    });

    // The BOM lists every downloaded file with its sha256 and origin, the images, and the units.
    const downloads = bom.files.filter((f: { kind: string }) => f.kind === 'download');
    expect(downloads).toEqual(
      expect.arrayContaining([
        { path: '/usr/local', sha256: mirror.files.containerd.sha256, kind: 'download', source: mirror.files.containerd.url },
        { path: '/usr/local/sbin/runc', sha256: mirror.files.runc.sha256, kind: 'download', source: mirror.files.runc.url },
        { path: '/usr/local/bin', sha256: mirror.files.crictl.sha256, kind: 'download', source: mirror.files.crictl.url },
        { path: '/opt/cni/bin', sha256: mirror.files.cniPlugins.sha256, kind: 'download', source: mirror.files.cniPlugins.url },
      ]),
    );
    expect(bom.containerImages).toEqual([{ reference: 'registry.k8s.io/kube-apiserver:v1.36.2', digest: manifestDigest, namespace: 'k8s.io' }]);
    // The node's components, as the binaries in the image say (the release tarballs' in /usr/local and /opt/cni
    // over the packages'): the mirror's stand-ins print the versions it published; containerd and runc are
    // Debian's own builds, repackaged as upstream's tarballs, and say Debian's versions.
    const components = Object.fromEntries((bom.components as { name: string; version: string; purl: string; source: string }[]).map((c) => [c.name, c]));
    expect(Object.keys(components).sort()).toEqual(['cni-plugins', 'containerd', 'crictl', 'kubeadm', 'kubectl', 'kubelet', 'runc']);
    for (const name of ['kubelet', 'kubeadm', 'kubectl']) {
      expect(components[name]).toEqual({ name, version: '1.36.2', purl: `pkg:golang/k8s.io/kubernetes@v1.36.2#cmd/${name}`, source: `/usr/bin/${name}` });
    }
    expect(components.crictl).toEqual({ name: 'crictl', version: '1.36.0', purl: 'pkg:golang/sigs.k8s.io/cri-tools@v1.36.0#cmd/crictl', source: '/usr/local/bin/crictl' });
    expect(components['cni-plugins']).toEqual({ name: 'cni-plugins', version: '1.9.1', purl: 'pkg:golang/github.com/containernetworking/plugins@v1.9.1', source: '/opt/cni/bin/loopback' });
    // containerd 2 is Go module github.com/containerd/containerd/v2.
    expect(components.containerd).toMatchObject({ version: expect.stringMatching(/^2\.\d+\.\d+/), purl: expect.stringMatching(/^pkg:golang\/github\.com\/containerd\/containerd\/v2@v2\.\d+\.\d+$/), source: '/usr/local/bin/containerd' });
    expect(components.runc).toMatchObject({ version: expect.stringMatching(/^1\.\d+\.\d+/), purl: expect.stringMatching(/^pkg:golang\/github\.com\/opencontainers\/runc@v1\.\d+\.\d+$/), source: '/usr/local/sbin/runc' });
    // And in the SBOMs, with their purls.
    const cdx = JSON.parse(await readFile(`${output}.cdx.json`, 'utf8')) as { components: { name: string; purl?: string; type: string }[] };
    expect(cdx.components).toEqual(expect.arrayContaining([expect.objectContaining({ type: 'application', name: 'kubelet', purl: 'pkg:golang/k8s.io/kubernetes@v1.36.2#cmd/kubelet' })]));
    const spdx = JSON.parse(await readFile(`${output}.spdx.json`, 'utf8')) as { packages: { name: string; externalRefs?: { referenceLocator: string }[] }[] };
    expect(spdx.packages.find((p) => p.name === 'cni-plugins')?.externalRefs).toEqual([expect.objectContaining({ referenceLocator: 'pkg:golang/github.com/containernetworking/plugins@v1.9.1' })]);
    expect(bom.units).toEqual(expect.arrayContaining([{ unit: 'containerd.service', state: 'enabled' }, { unit: 'kubelet.service', state: 'enabled' }]));
    // The recipe's own checks, judged on the image: all that read files passed; the rest wait for a booted node.
    const checks = bom.checks as { check: string; attribute: string; status: string }[];
    expect(checks.filter((c) => c.status === 'failed')).toEqual([]);
    expect(checks.filter((c) => c.status === 'skipped').map((c) => `${c.check}: ${c.attribute}`)).toEqual([
      'containerd starts at boot, and runs: running', 'containerd answers on its socket: exit status', 'kernel module br_netfilter: loaded', 'kernel parameter net.ipv4.ip_forward: value',
      "kubelet's --protect-kernel-defaults would start: value", 'kernel parameter kernel.panic: value', 'kernel parameter kernel.panic_on_oops: value',
    ]);
    expect(checks.filter((c) => c.status === 'passed').length).toBe(10);
    expectValidBom(bom);
    expect(bom.recipe.variables.kubernetes_deb_version).toBe('1.36.2-1.1');
    expect(bom.recipe.variables.kubernetes_series).toBe('v1.36');
    expect(skippedSteps(bom)).toEqual([
      'node prerequisites (dnf/yum)',
      'node prerequisites (zypper/tdnf)',
      'pkgs.k8s.io repository (dnf/yum)',
      'pkgs.k8s.io repository (zypper/tdnf)',
      'kubelet, kubeadm, kubectl pinned and locked (dnf/yum)',
      'kubelet, kubeadm, kubectl pinned and locked (zypper/tdnf)',
    ]);
    await expectNothingLeft(before);
  });
});

/**
 * The same shipped recipe on the RedHat family, on a SYNTHETIC Fedora 40 guest (the rpm-guest fixture: Debian's
 * userland with Debian's real rpm and dnf) that knows a stand-in of Fedora's repository. pkgs.k8s.io's RPM
 * repository is stood in for by a local one built with rpmbuild and signed like upstream; again only --set
 * of the URLs (and the stand-in's key fingerprint) differ from a real build.
 */
describe('recipes/kubernetes-node.yaml on synthetic Fedora 40 and openSUSE Leap 15.6 guests (Debian userland, Debian-built rpm, dnf and zypper) against local RPM repositories', () => {
  let work: string;
  let mirror: LocalMirror;
  let rpmMirror: RpmMirror;
  beforeAll(async () => {
    work = await mkdtemp('/var/tmp/ib-k8s-rpm-');
    mirror = await startLocalMirror();
    rpmMirror = await startRpmMirror();
  });
  afterAll(async () => {
    await mirror?.close();
    await rpmMirror?.close();
    await rm(work, { recursive: true, force: true });
  });

  /** The shipped recipe, pinned to 1.36.2, against the two stand-in repositories: only --set differs from a real build. */
  async function applyShippedRecipe(input: string, output: string) {
    const result = await runCli([
      'apply', `${REPO}/recipes/kubernetes-node.yaml`, '--disk-image', input, '--output', output, '--mount-backend', 'fuse', '--sparsify', 'fstrim', '-v',
      ...nodeRecipeSets(rpmMirror, mirror),
    ]);
    if (result.exitCode !== 0) throw new Error(result.all);
    expect(result.stderr).not.toContain('error [');
    return result;
  }

  /** The .rpm paths a build fetched from the stand-ins: the prerequisites given, and pkgs.k8s.io's pinned five. */
  const expectFetched = (requests: string[], prerequisites: { name: string; version: string; release: string }[]) =>
    expect(requests.filter((path) => path.endsWith('.rpm')).sort()).toEqual(
      [
        ...prerequisites.map((p) => `${FEDORA_PATH}Packages/${p.name}-${p.version}-${p.release}.x86_64.rpm`),
        `${RPM_PATH}x86_64/cri-tools-1.36.0-150500.1.1.x86_64.rpm`,
        `${RPM_PATH}x86_64/kubeadm-1.36.2-150500.1.1.x86_64.rpm`,
        `${RPM_PATH}x86_64/kubectl-1.36.2-150500.1.1.x86_64.rpm`,
        `${RPM_PATH}x86_64/kubelet-1.36.2-150500.1.1.x86_64.rpm`,
        `${RPM_PATH}x86_64/kubernetes-cni-1.9.1-150500.1.1.x86_64.rpm`,
      ].sort(),
    );

  /** In the output's rpm database (read by the host's rpm): the pinned five, in the BOM as added, and the prerequisites. */
  async function expectShippedRecipeInstalled(root: string, bom: { packages: unknown[] }, prerequisites: RpmPackage[]) {
    for (const name of ['kubelet', 'kubeadm', 'kubectl']) {
      expect(await rpmInstalled(root, name)).toBe('1.36.2-150500.1.1.x86_64');
      expect(bom.packages).toContainEqual(expect.objectContaining({ name, version: '1.36.2-150500.1.1', origin: 'added' }));
    }
    expect(await rpmInstalled(root, 'cri-tools')).toBe('1.36.0-150500.1.1.x86_64');
    expect(await rpmInstalled(root, 'kubernetes-cni')).toBe('1.9.1-150500.1.1.x86_64');
    for (const p of prerequisites) expect(await rpmInstalled(root, p.name)).toBe(`${evr(p)}.x86_64`);
  }

  test('dnf: prerequisites from Fedora, pkgs.k8s.io with exclude=, pinned install with --disableexcludes=kubernetes, versionlocked', async () => {
    const input = await rpmGuestWithFedoraRepository(work, rpmMirror);
    const output = join(work, 'node-fedora.qcow2');
    const before = await hostState();
    const served = rpmMirror.requests.length;
    const result = await applyShippedRecipe(input, output);
    expect(result.stderr).toContain('family redhat');
    // As Kubernetes' instructions for dnf/yum: the install names the excluding repository, with the guest's release.
    expect(result.stderr).toMatch(
      /\$ chroot \S+ dnf install -y --setopt=install_weak_deps=False --setopt=keepcache=False --releasever=40 --refresh --disableexcludes=kubernetes kubelet-1\.36\.2 kubeadm-1\.36\.2 kubectl-1\.36\.2 cri-tools kubernetes-cni\n/,
    );
    // The prerequisites came from the Fedora stand-in ($releasever and $basearch substituted by dnf), the
    // Kubernetes packages from the pkgs.k8s.io stand-in at the pinned version.
    expectFetched(rpmMirror.requests.slice(served), FEDORA_PACKAGES);
    expect(rpmMirror.requests).toContain(`${RPM_PATH}repodata/repomd.xml.key`);
    for (const file of [mirror.files.containerd, mirror.files.runc, mirror.files.crictl, mirror.files.cniPlugins]) expect(mirror.requests).toContain(new URL(file.url).pathname);

    const bom = JSON.parse(await readFile(`${output}.bom.json`, 'utf8'));
    await withRpmGuestMounted(output, async (root) => {
      await expectShippedRecipeInstalled(root, bom, FEDORA_PACKAGES);
      expect(await readFile(join(root, 'etc/yum.repos.d/kubernetes.repo'), 'utf8')).toBe(
        `[kubernetes]\nname=kubernetes\nbaseurl=${rpmMirror.url}/core:/stable:/v1.36/rpm/\nenabled=1\ngpgcheck=1\ngpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-kubernetes\nrepo_gpgcheck=0\n` +
          'exclude=kubelet kubeadm kubectl cri-tools kubernetes-cni\n',
      );
      // hold: true locked what install named, at the installed versions.
      const locks = (await readFile(join(root, 'etc/dnf/plugins/versionlock.list'), 'utf8')).split('\n').filter((line) => line && !line.startsWith('#'));
      expect(locks.sort()).toEqual(['cri-tools-0:1.36.0-150500.1.1.*', 'kubeadm-0:1.36.2-150500.1.1.*', 'kubectl-0:1.36.2-150500.1.1.*', 'kubelet-0:1.36.2-150500.1.1.*', 'kubernetes-cni-0:1.9.1-150500.1.1.*']);
      // kubelet's unit came with its rpm, in /usr/lib/systemd/system (/lib is a link to usr/lib in this userland), and is enabled.
      expect(await readlink(join(root, 'etc/systemd/system/multi-user.target.wants/kubelet.service'))).toMatch(/^(\/usr)?\/lib\/systemd\/system\/kubelet\.service$/);
      expect(await readFile(join(root, 'usr/lib/systemd/system/kubelet.service'), 'utf8')).toContain('ExecStart=/usr/bin/kubelet');
      expect(await sha256(join(root, 'usr/local/sbin/runc'))).toBe(mirror.files.runc.sha256);
      expect(await readFile(join(root, 'etc/containerd/config.toml'), 'utf8')).toContain('SystemdCgroup = true');
      // sysprep: dnf's cache is empty, the machine is anonymous again.
      expect(await readdir(join(root, 'var/cache/dnf'))).toEqual([]);
      expect(await readFile(join(root, 'etc/machine-id'), 'utf8')).toBe('');
    });
    expect(bom.os).toMatchObject({ id: 'fedora', versionId: '40' });
    expect(skippedSteps(bom)).toEqual([
      'node prerequisites (apt)',
      'node prerequisites (zypper/tdnf)',
      'pkgs.k8s.io repository (apt)',
      'pkgs.k8s.io repository (zypper/tdnf)',
      'kubelet, kubeadm, kubectl pinned and held (apt)',
      'kubelet, kubeadm, kubectl pinned and locked (zypper/tdnf)',
      'preload control-plane images',
    ]);
    expectValidBom(bom);
    await expectNothingLeft(before);
  });

  test('zypper: prerequisites from the distribution repository, pkgs.k8s.io, pinned install locked by addlock', async () => {
    const input = await suseGuestWithMainRepository(work, rpmMirror);
    const output = join(work, 'node-suse.qcow2');
    const before = await hostState();
    const served = rpmMirror.requests.length;
    const result = await applyShippedRecipe(input, output);
    expect(result.stderr).toContain('family suse');
    expect(result.stderr).toMatch(
      /\$ chroot \S+ zypper --non-interactive --releasever 15\.6 install --no-recommends --auto-agree-with-licenses kubelet=1\.36\.2 kubeadm=1\.36\.2 kubectl=1\.36\.2 cri-tools kubernetes-cni\n/,
    );
    expect(result.stderr).toMatch(/\$ chroot \S+ zypper --non-interactive addlock kubelet kubeadm kubectl cri-tools kubernetes-cni\n/);
    const prerequisites = ['ca-certificates', 'conntrack-tools', 'ebtables', 'ethtool', 'iptables', 'socat'];
    const standIns = [...FEDORA_PACKAGES, ...OTHER_DISTRO_PACKAGES].filter((p) => prerequisites.includes(p.name));
    expect(standIns.map((p) => p.name).sort()).toEqual(prerequisites);
    expectFetched(rpmMirror.requests.slice(served), standIns);

    const bom = JSON.parse(await readFile(`${output}.bom.json`, 'utf8'));
    await withRpmGuestMounted(output, async (root) => {
      await expectShippedRecipeInstalled(root, bom, standIns);
      // No per-repository exclude on zypper: the repository file is plain, the locks hold the packages.
      expect(await readFile(join(root, 'etc/zypp/repos.d/kubernetes.repo'), 'utf8')).not.toContain('exclude');
      const locks = await readFile(join(root, 'etc/zypp/locks'), 'utf8');
      expect([...locks.matchAll(/^solvable_name: (\S+)$/gm)].map((m) => m[1]).sort()).toEqual(['cri-tools', 'kubeadm', 'kubectl', 'kubelet', 'kubernetes-cni']);
      expect(await readlink(join(root, 'etc/systemd/system/multi-user.target.wants/kubelet.service'))).toMatch(/^(\/usr)?\/lib\/systemd\/system\/kubelet\.service$/);
      expect(await sha256(join(root, 'usr/local/sbin/runc'))).toBe(mirror.files.runc.sha256);
      expect(await readdir(join(root, 'var/cache/zypp'))).toEqual([]);
      expect(await readFile(join(root, 'etc/machine-id'), 'utf8')).toBe('');
    });
    expect(bom.os).toMatchObject({ id: 'opensuse-leap', versionId: '15.6' });
    expect(skippedSteps(bom)).toEqual([
      'node prerequisites (apt)',
      'node prerequisites (dnf/yum)',
      'pkgs.k8s.io repository (apt)',
      'pkgs.k8s.io repository (dnf/yum)',
      'kubelet, kubeadm, kubectl pinned and held (apt)',
      'kubelet, kubeadm, kubectl pinned and locked (dnf/yum)',
      'preload control-plane images',
    ]);
    expectValidBom(bom);
    await expectNothingLeft(before);
  });
});
