import { lstat, mkdir, mkdtemp, readFile, readlink, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { fixtureImage } from '../helpers/fixtures.js';
import { expectNothingLeft, hostState, REPO, runCli, sha256 } from '../helpers/host.js';
import { dpkgVersion, withImageMounted } from '../helpers/inspect.js';
import { startLocalMirror, type LocalMirror } from '../helpers/local-mirror.js';
import { writeOciArchive } from '../helpers/oci.js';
import { expectValidBom } from '../helpers/bom-schema.js';

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

  test('builds a kubeadm-ready Debian node: pinned and held packages, verified binaries, config, no swap, clean', async () => {
    const input = await fixtureImage('separate-boot');
    await mkdir(join(work, 'images'));
    const { manifestDigest } = await writeOciArchive(join(work, 'images/control-plane.tar'), 'registry.k8s.io/kube-apiserver:v1.30.1', 'apiserver\n');
    const output = join(work, 'node.qcow2');
    const before = await hostState();
    const result = await runCli([
      'apply', `${REPO}/recipes/kubernetes-node.yaml`, '--disk-image', input, '--output', output, '--mount-backend', 'fuse', '--sparsify', 'fstrim',
      '--set', 'kubernetes_version=1.30.1',
      '--set', `kubernetes_repo_base=${mirror.url}/core:/stable:/v1.30`,
      '--set', `kubernetes_repo_fingerprint=${mirror.keyFingerprint}`,
      '--set', `github_mirror=${mirror.url}`,
      '--set', 'import_control_plane_images=true',
      '--set', `control_plane_images_archive=${join(work, 'images/control-plane.tar')}`,
    ]);
    if (result.exitCode !== 0) throw new Error(result.all);
    expect(result.stderr).not.toContain('error [');
    // Everything Kubernetes came from the mirror.
    for (const path of ['/core:/stable:/v1.30/deb/InRelease', '/core:/stable:/v1.30/deb/Release.key']) expect(mirror.requests).toContain(path);
    for (const file of [mirror.files.containerd, mirror.files.runc, mirror.files.crictl, mirror.files.cniPlugins]) {
      expect(mirror.requests).toContain(new URL(file.url).pathname);
      expect(mirror.requests).toContain(new URL(file.checksumUrl).pathname);
    }

    const bom = JSON.parse(await readFile(`${output}.bom.json`, 'utf8'));
    await withImageMounted(output, 'separate-boot', async (root) => {
      const admindir = `--admindir=${root}/var/lib/dpkg`;
      for (const name of ['kubelet', 'kubeadm', 'kubectl']) {
        expect(await dpkgVersion(root, name)).toBe('1.30.1-1.1');
        expect((await execa('dpkg-query', [admindir, '-W', '-f', '${Status}', name])).stdout).toBe('hold ok installed');
        expect(bom.packages).toContainEqual(expect.objectContaining({ name, version: '1.30.1-1.1', origin: 'added' }));
      }
      expect(await dpkgVersion(root, 'cri-tools')).toBe('1.30.0-1.1');
      expect(await dpkgVersion(root, 'kubernetes-cni')).toBe('1.4.0-1.1');
      expect(await readFile(join(root, 'etc/apt/sources.list.d/kubernetes.sources'), 'utf8')).toContain(`URIs: ${mirror.url}/core:/stable:/v1.30/deb/`);

      // Release binaries, byte for byte what the mirror published.
      for (const binary of ['usr/local/bin/containerd', 'usr/local/bin/ctr', 'usr/local/bin/containerd-shim-runc-v2', 'usr/local/sbin/runc', 'usr/local/bin/crictl']) {
        expect((await lstat(join(root, binary))).mode & 0o111).not.toBe(0);
      }
      expect(await sha256(join(root, 'usr/local/sbin/runc'))).toBe(mirror.files.runc.sha256);
      expect((await readdir(join(root, 'opt/cni/bin'))).sort()).toEqual(expect.arrayContaining(['bridge', 'host-local', 'loopback', 'portmap']));
      const config = await readFile(join(root, 'etc/containerd/config.toml'), 'utf8');
      expect(config).toContain('SystemdCgroup = true');
      expect(config).toContain('sandbox_image = "registry.k8s.io/pause:3.9"');
      expect(await readFile(join(root, 'etc/crictl.yaml'), 'utf8')).toContain('runtime-endpoint: unix:///run/containerd/containerd.sock');

      // Units enabled as files only; kubelet enabled, nothing started.
      expect(await readlink(join(root, 'etc/systemd/system/multi-user.target.wants/containerd.service'))).toBe('/usr/local/lib/systemd/system/containerd.service');
      expect(await readlink(join(root, 'etc/systemd/system/multi-user.target.wants/kubelet.service'))).toMatch(/kubelet\.service$/);
      expect(await readFile(join(root, 'etc/modules-load.d/kubernetes.conf'), 'utf8')).toMatch(/^overlay\nbr_netfilter\n/m);
      const sysctl = await readFile(join(root, 'etc/sysctl.d/99-kubernetes.conf'), 'utf8');
      for (const line of ['net.bridge.bridge-nf-call-iptables = 1', 'net.bridge.bridge-nf-call-ip6tables = 1', 'net.ipv4.ip_forward = 1']) expect(sysctl).toContain(line);

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
    expect(bom.containerImages).toEqual([{ reference: 'registry.k8s.io/kube-apiserver:v1.30.1', digest: manifestDigest }]);
    expect(bom.units).toEqual(expect.arrayContaining([{ unit: 'containerd.service', state: 'enabled' }, { unit: 'kubelet.service', state: 'enabled' }]));
    expectValidBom(bom);
    expect(bom.recipe.variables.kubernetes_deb_version).toBe('1.30.1-1.1');
    expect(bom.recipe.variables.kubernetes_series).toBe('v1.30');
    expect(bom.steps.filter((s: { skipped?: string }) => s.skipped).map((s: { name: string }) => s.name)).toEqual([
      'node prerequisites (dnf/yum)',
      'pkgs.k8s.io repository (dnf/yum)',
      'kubelet, kubeadm, kubectl pinned and locked (dnf/yum)',
    ]);
    await expectNothingLeft(before);
  });
});
