import { mkdir, mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { leftoversUnder, NOTHING_LEFT, REPO, runCli, runCliOffline } from '../helpers/host.js';
import { writeRecipe } from '../helpers/recipes.js';
import { startLocalMirror, type LocalMirror } from '../helpers/local-mirror.js';
import { nodeRecipeSets } from '../helpers/recipes.js';
import { expectPinnedKubernetesInstalled, rpmGuestImage, rpmGuestWithFedoraRepository, rpmInstalled, suseGuestWithMainRepository, withRpmGuestMounted } from '../helpers/rpm-guest.js';
import { PINNED_KUBERNETES_RPMS, rpmsFetched, startRpmMirror, type RpmMirror } from '../helpers/rpm-mirror.js';
import { sha256Text } from '../../src/util/digest.js';

/**
 * Air-gapped builds (issue #20) for the rpm families, for real: `imagebuilder bundle` runs the recipe on the
 * synthetic dnf and zypper guests against the signed local rpm-md mirror (a stand-in for pkgs.k8s.io), then
 * `apply --bundle` builds from the bundle inside a network namespace with nothing but loopback (unshare --net),
 * where the mirror is unreachable.
 */
describe.each([
  { manager: 'dnf', layout: 'rpm-guest' as const, repoFile: 'etc/yum.repos.d/kubernetes.repo', distributionRepository: 'fedora', withDistributionRepository: rpmGuestWithFedoraRepository },
  { manager: 'zypper', layout: 'suse-guest' as const, repoFile: 'etc/zypp/repos.d/kubernetes.repo', distributionRepository: 'repo-oss', withDistributionRepository: suseGuestWithMainRepository },
])('air-gapped bundles ($manager)', ({ manager, layout, repoFile, distributionRepository, withDistributionRepository }) => {
  let work: string;
  let mirror: RpmMirror;
  /** The apt stand-in, for the release files (containerd, runc …) the shipped node recipe downloads. */
  let releases: LocalMirror | undefined;
  let disk: string;
  let recipe: string;
  let env: Record<string, string>;
  const bundleDir = () => join(work, 'bundle');

  const offline = (args: string[]) => runCliOffline(args, env);
  const bom = async (output: string) => JSON.parse(await readFile(`${output}.bom.json`, 'utf8'));

  beforeAll(async () => {
    work = await mkdtemp(`/var/tmp/ib-bundle-${manager}-`);
    mirror = await startRpmMirror();
    env = { IMAGEBUILDER_NO_CACHE: '1', IMAGEBUILDER_CACHE: join(work, 'cache'), IMAGEBUILDER_WORK_DIR: join(work, 'tmp') };
    await mkdir(env.IMAGEBUILDER_WORK_DIR);
    disk = await rpmGuestImage(layout);
    recipe = await writeRecipe(work, 'tools', [
      { repository: { name: 'kubernetes', url: mirror.repoUrl, key_url: mirror.keyUrl, fingerprint: mirror.keyFingerprint } },
      { name: 'tools', packages: { install: ['kubelet=1.36.2-150500.1.1', 'kubeadm=1.36.2-150500.1.1', 'kubectl=1.36.2'], hold: true } },
    ]);
  }, 900_000);
  afterAll(async () => {
    await mirror?.close();
    await releases?.close();
    await rm(work, { recursive: true, force: true });
  });

  test('bundle keeps what the manager fetched as an rpm-md repository; apply --bundle with no network installs the same packages, signature-checked, the guest\'s configuration as it was', async () => {
    const requests = mirror.requests.length;
    const made = await runCli(['bundle', recipe, '--disk-image', disk, '--output', bundleDir(), '--mount-backend', 'fuse'], { env });
    if (made.exitCode !== 0) throw new Error(made.all);
    expect(rpmsFetched(mirror, requests)).toEqual(PINNED_KUBERNETES_RPMS);
    const manifest = JSON.parse(await readFile(join(bundleDir(), 'bundle.json'), 'utf8'));
    const packages = manifest.files.filter((file: { kind: string }) => file.kind === 'package');
    expect(packages.map((file: { origin: string }) => file.origin.replace(/^.*\//, '')).sort()).toEqual(PINNED_KUBERNETES_RPMS);
    for (const file of packages) {
      expect(file.path).toMatch(/^rpm\/kubernetes\/packages\/[0-9a-f]{64}\.rpm$/);
      expect(`rpm/kubernetes/packages/${sha256Text(await readFile(join(bundleDir(), file.path)))}.rpm`).toBe(file.path);
    }
    const primary = await readFile(join(bundleDir(), 'rpm/kubernetes/repodata/primary.xml'), 'utf8');
    expect(primary).toContain(`packages="${PINNED_KUBERNETES_RPMS.length}"`);
    expect(primary.match(/<location href="packages\/[0-9a-f]{64}\.rpm"\/>/g)).toHaveLength(PINNED_KUBERNETES_RPMS.length);
    expect(await readFile(join(bundleDir(), 'rpm/kubernetes/repodata/repomd.xml'), 'utf8')).toContain(`<checksum type="sha256">${sha256Text(primary)}</checksum>`);

    const online = join(work, 'online.qcow2');
    const built = await runCli(['apply', recipe, '--disk-image', disk, '--output', online, '--mount-backend', 'fuse', '--sparsify', 'none'], { env });
    if (built.exitCode !== 0) throw new Error(built.all);

    const before = mirror.requests.length;
    const output = join(work, 'offline.qcow2');
    const fromBundle = await offline(['apply', recipe, '--bundle', bundleDir(), '--output', output, '--mount-backend', 'fuse', '--sparsify', 'none']);
    if (fromBundle.exitCode !== 0) throw new Error(fromBundle.all);
    expect(mirror.requests.length).toBe(before);
    const [onlineBom, offlineBom] = [await bom(online), await bom(output)];
    expect(offlineBom.packages).toEqual(onlineBom.packages);
    expect(offlineBom.files).toEqual(onlineBom.files);
    expect(offlineBom.offline).toMatchObject({ network: 'none', trust: expect.stringContaining('rpm-md') });
    await withRpmGuestMounted(output, async (root) => {
      // The packages, and the repository's key imported as online (dnf imports it from the .repo's gpgkey when it checks the first package).
      await expectPinnedKubernetesInstalled(root, mirror.keyFingerprint);
      // The guest's repository is the recipe's, pointing at the mirror; nothing of the bundle stayed.
      expect(await readFile(join(root, repoFile), 'utf8')).toContain(`baseurl=${mirror.repoUrl}`);
      const { stdout } = await execa('find', [join(root, 'etc'), join(root, 'var/cache'), '-name', '*bundle*', '-o', '-name', '*.rpm']);
      expect(stdout).toBe('');
    });
    expect(await leftoversUnder(env.IMAGEBUILDER_WORK_DIR)).toEqual(NOTHING_LEFT);
  }, 1_800_000);

  test('a recipe changed after bundling fails naming the package the bundle lacks, and to bundle again', async () => {
    const changed = await writeRecipe(work, 'changed', [
      { repository: { name: 'kubernetes', url: mirror.repoUrl, key_url: mirror.keyUrl, fingerprint: mirror.keyFingerprint } },
      { name: 'tools', packages: { install: ['kubelet=1.36.2-150500.1.1', 'kubeadm=1.36.2-150500.1.1', 'kubectl=1.36.3'] } },
    ]);
    const result = await offline(['apply', changed, '--bundle', bundleDir(), '--output', join(work, 'changed.qcow2'), '--mount-backend', 'fuse']);
    expect(result.exitCode).toBe(4);
    expect(result.stderr).toContain('the bundle has no package kubectl=1.36.3');
    expect(result.stderr).toContain('imagebuilder bundle');
    expect(await readdir(work)).not.toContain('changed.qcow2');
  }, 600_000);

  test('the shipped node recipe on a guest with its distribution\'s repository, bundled as one archive: offline, the same packages from both repositories', async () => {
    releases = await startLocalMirror();
    const input = await withDistributionRepository(work, mirror);
    const node = `${REPO}/recipes/kubernetes-node.yaml`;
    const sets = nodeRecipeSets(mirror, releases);
    const archive = join(work, 'node-bundle.tar');
    const made = await runCli(['bundle', node, '--disk-image', input, '--output', archive, '--format', 'tar', '--mount-backend', 'fuse', ...sets], { env });
    if (made.exitCode !== 0) throw new Error(made.all);
    expect(await readFile(`${archive}.sha256`, 'utf8')).toMatch(/^[0-9a-f]{64}  node-bundle\.tar\n$/);

    const online = join(work, 'node-online.qcow2');
    const built = await runCli(['apply', node, '--disk-image', input, '--output', online, '--mount-backend', 'fuse', '--sparsify', 'none', ...sets], { env });
    if (built.exitCode !== 0) throw new Error(built.all);
    const output = join(work, 'node-offline.qcow2');
    const [rpmRequests, releaseRequests] = [mirror.requests.length, releases.requests.length];
    const fromBundle = await offline(['apply', node, '--bundle', archive, '--output', output, '--mount-backend', 'fuse', '--sparsify', 'none', ...sets]);
    if (fromBundle.exitCode !== 0) throw new Error(fromBundle.all);
    expect([mirror.requests.length, releases.requests.length]).toEqual([rpmRequests, releaseRequests]);
    const [onlineBom, offlineBom] = [await bom(online), await bom(output)];
    expect(offlineBom.packages).toEqual(onlineBom.packages);
    expect(offlineBom.files).toEqual(onlineBom.files);
    // Packages from the guest's own repository and from the recipe's, each kept under its own name.
    const manifest = JSON.parse((await execa('tar', ['-xOf', archive, 'bundle.json'])).stdout);
    const repositories = new Set(manifest.files.filter((file: { kind: string }) => file.kind === 'package').map((file: { path: string }) => file.path.split('/')[1]));
    expect([...repositories].sort()).toEqual(['kubernetes', distributionRepository].sort());
    await withRpmGuestMounted(output, async (root) => {
      expect(await rpmInstalled(root, 'kubelet')).toBe('1.36.2-150500.1.1.x86_64');
      expect(await rpmInstalled(root, 'socat')).toBeDefined();
    });
    expect(await leftoversUnder(env.IMAGEBUILDER_WORK_DIR)).toEqual(NOTHING_LEFT);
  }, 1_800_000);
});
