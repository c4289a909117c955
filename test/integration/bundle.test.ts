import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { fixtureImage } from '../helpers/fixtures.js';
import { leftoversUnder, NOTHING_LEFT, REPO, runCli, runCliOffline } from '../helpers/host.js';
import { dpkgVersion, withImageMounted } from '../helpers/inspect.js';
import { SERIES, startLocalMirror, type LocalMirror } from '../helpers/local-mirror.js';
import { nodeRecipeSets, writeRecipe } from '../helpers/recipes.js';
import { writeOciArchive } from '../helpers/oci.js';

/**
 * Air-gapped builds (issue #20), for real: `imagebuilder bundle` runs a recipe against the signed local mirror
 * and Debian's own mirror, then `apply --bundle` builds from the bundle inside a network namespace that has
 * nothing but loopback (made here with unshare --net): neither mirror is reachable from there.
 */
describe('air-gapped bundles (apt)', () => {
  let work: string;
  let mirror: LocalMirror;
  let disk: string;
  let recipe: string;
  let env: Record<string, string>;
  const bundleDir = () => join(work, 'bundle');

  const offline = (args: string[], extraEnv: Record<string, string> = {}) => runCliOffline(args, { ...env, ...extraEnv });
  const bom = async (output: string) => JSON.parse(await readFile(`${output}.bom.json`, 'utf8'));

  beforeAll(async () => {
    work = await mkdtemp('/var/tmp/ib-bundle-');
    mirror = await startLocalMirror();
    env = { IMAGEBUILDER_NO_CACHE: '1', IMAGEBUILDER_CACHE: join(work, 'cache'), IMAGEBUILDER_WORK_DIR: join(work, 'tmp') };
    await mkdir(env.IMAGEBUILDER_WORK_DIR);
    disk = await fixtureImage('gpt-esp');
    recipe = await writeRecipe(work, 'tools', [
      { repository: { name: 'kubernetes', url: mirror.aptUrl, key_url: mirror.keyUrl, fingerprint: mirror.keyFingerprint } },
      // kubectl and cri-tools from the signed stand-in; socat (and what it needs) from Debian's own mirror.
      { name: 'tools', packages: { install: [`kubectl=${mirror.versions.kubectl[0]}`, 'cri-tools', 'socat'] } },
      { download: { url: mirror.files.runc.url, checksum_url: mirror.files.runc.checksumUrl, dest: '/usr/local/sbin/runc', mode: '0755' } },
    ]);
  }, 600_000);
  afterAll(async () => {
    await mirror?.close();
    await rm(work, { recursive: true, force: true });
  });

  test('bundle, then apply --bundle with no network: the same packages and files as an online build, the bundle in the BOM, the guest\'s apt configuration as it was', async () => {
    const made = await runCli(['bundle', recipe, '--disk-image', disk, '--output', bundleDir(), '--mount-backend', 'fuse', '--json'], { env });
    if (made.exitCode !== 0) throw new Error(made.all);
    const result = JSON.parse(made.stdout.trim().split('\n').pop()!);
    const manifestText = await readFile(join(bundleDir(), 'bundle.json'), 'utf8');
    expect(result.manifestSha256).toBe(createHash('sha256').update(manifestText).digest('hex'));
    const manifest = JSON.parse(manifestText);
    const kinds = (kind: string) => manifest.files.filter((file: { kind: string }) => file.kind === kind);
    expect(kinds('base-image')).toHaveLength(1);
    expect(kinds('download').map((file: { origin: string }) => file.origin).sort()).toEqual([mirror.files.runc.checksumUrl, mirror.files.runc.url, mirror.keyUrl].sort());
    const packages = await readFile(join(bundleDir(), 'apt/Packages'), 'latin1');
    const kubectl = packages.split('\n\n').find((stanza) => stanza.startsWith('Package: kubectl\n'));
    expect(kubectl).toContain(`\nVersion: ${mirror.versions.kubectl[0]}\n`);
    expect(packages).toMatch(/^Package: socat$/m);
    expect(kinds('package').length).toBeGreaterThanOrEqual(3);
    expect(manifest.recipe.sha256).toMatch(/^[0-9a-f]{64}$/);

    const online = join(work, 'online.qcow2');
    const built = await runCli(['apply', recipe, '--disk-image', disk, '--output', online, '--mount-backend', 'fuse', '--sparsify', 'none'], { env });
    if (built.exitCode !== 0) throw new Error(built.all);

    const requests = mirror.requests.length;
    const output = join(work, 'offline.qcow2');
    const fromBundle = await offline(['apply', recipe, '--bundle', bundleDir(), '--output', output, '--mount-backend', 'fuse', '--sparsify', 'none']);
    if (fromBundle.exitCode !== 0) throw new Error(fromBundle.all);
    expect(mirror.requests.length).toBe(requests);
    expect(fromBundle.stderr).toContain(`from the bundle: ${mirror.files.runc.url}`);
    const [onlineBom, offlineBom] = [await bom(online), await bom(output)];
    expect(offlineBom.packages).toEqual(onlineBom.packages);
    expect(offlineBom.files).toEqual(onlineBom.files);
    expect(offlineBom.offline).toMatchObject({ bundle: result.manifestSha256, network: 'none' });
    expect(onlineBom.offline).toBeUndefined();
    await withImageMounted(output, 'gpt-esp', async (root) => {
      expect(await dpkgVersion(root, 'kubectl')).toBe(mirror.versions.kubectl[0]);
      expect(await dpkgVersion(root, 'socat')).toBeDefined();
      // The guest's own sources are what it had (plus the recipe's repository), and none of the bundle's lists or caches stayed.
      expect(await readFile(join(root, 'etc/apt/sources.list'), 'utf8')).toMatch(/^deb http:\/\/deb\.debian\.org\/debian bookworm main$/m);
      expect(await readFile(join(root, 'etc/apt/sources.list.d/kubernetes.sources'), 'utf8')).toContain(`URIs: ${mirror.aptUrl}`);
      const { stdout } = await execa('find', [join(root, 'var/lib/apt'), join(root, 'var/cache/apt'), join(root, 'etc/apt'), '-name', '*bundle*']);
      expect(stdout).toBe('');
    });
    expect(await leftoversUnder(env.IMAGEBUILDER_WORK_DIR)).toEqual(NOTHING_LEFT);
  }, 1_200_000);

  test('an altered or missing file of the bundle fails with exit 3 before anything runs, naming it', async () => {
    const altered = join(work, 'altered');
    await execa('cp', ['-a', '--reflink=auto', bundleDir(), altered]);
    const manifest = JSON.parse(await readFile(join(altered, 'bundle.json'), 'utf8'));
    const deb = manifest.files.find((file: { kind: string }) => file.kind === 'package').path;
    const download = manifest.files.find((file: { kind: string }) => file.kind === 'download').path;
    await writeFile(join(altered, deb), 'not the package');
    await rm(join(altered, download));
    const result = await offline(['apply', recipe, '--bundle', altered, '--output', join(work, 'altered.qcow2'), '--mount-backend', 'fuse']);
    expect(result.exitCode).toBe(3);
    expect(result.stderr).toContain(`${deb}: size`);
    expect(result.stderr).toContain(`${download}: missing`);
    expect(result.stderr).not.toContain('step 1/');
  }, 600_000);

  test("the base is verified against bundle.json's sum alone: nothing beside it is read (a FIFO there), and a compressed base is refused", async () => {
    const planted = join(work, 'planted');
    await execa('cp', ['-a', '--reflink=auto', bundleDir(), planted]);
    const manifest = JSON.parse(await readFile(join(planted, 'bundle.json'), 'utf8'));
    const sums = manifest.files.find((file: { kind: string }) => file.kind === 'base-sums');
    // A SHA256SUMS that names no image (its entry in bundle.json made to match), then a FIFO phase 0 would read next.
    const unnamed = Buffer.from(`${'0'.repeat(64)}  other.qcow2\n`);
    await writeFile(join(planted, sums.path), unnamed);
    Object.assign(sums, { size: unnamed.length, sha256: createHash('sha256').update(unnamed).digest('hex') });
    await writeFile(join(planted, 'bundle.json'), JSON.stringify(manifest));
    await execa('mkfifo', [join(planted, 'base', 'sha256sum.txt')]);
    const output = join(work, 'planted.qcow2');
    const result = await offline(['apply', recipe, '--bundle', planted, '--output', output, '--mount-backend', 'fuse', '--sparsify', 'none']);
    if (result.exitCode !== 0) throw new Error(result.all);
    expect((await bom(output)).input).toMatchObject({ verified: true, checksumSource: `${join(planted, 'bundle.json')} (${manifest.base.path})` });

    // The same bundle with its base xz-compressed (bundle.json made to match): refused before phase 0 unpacks it.
    await rm(join(planted, 'base', 'sha256sum.txt'));
    // (A small xz stream stands for it: the refusal reads its first bytes alone.)
    const packed = (await execa('xz', ['-0', '-c'], { input: 'a disk image', encoding: 'buffer' })).stdout as Buffer;
    await writeFile(join(planted, manifest.base.path), packed);
    const baseEntry = manifest.files.find((file: { kind: string }) => file.kind === 'base-image');
    const sha256 = createHash('sha256').update(packed).digest('hex');
    Object.assign(baseEntry, { size: packed.length, sha256 });
    manifest.base.sha256 = sha256;
    await writeFile(join(planted, 'bundle.json'), JSON.stringify(manifest));
    const refused = await offline(['apply', recipe, '--bundle', planted, '--output', join(work, 'packed.qcow2'), '--mount-backend', 'fuse']);
    expect(refused.exitCode).toBe(3);
    expect(refused.stderr).toContain(`its base image ${manifest.base.path} is xz-compressed, which no bundle holds`);
    await rm(planted, { recursive: true, force: true });
  }, 900_000);

  test('a recipe changed after bundling fails naming what the bundle lacks, and to bundle again', async () => {
    const changed = await writeRecipe(work, 'changed', [
      { repository: { name: 'kubernetes', url: mirror.aptUrl, key_url: mirror.keyUrl, fingerprint: mirror.keyFingerprint } },
      { name: 'tools', packages: { install: [`kubectl=${mirror.versions.kubectl[0]}`, 'cri-tools', 'socat', 'jq'] } },
    ]);
    const result = await offline(['apply', changed, '--bundle', bundleDir(), '--output', join(work, 'changed.qcow2'), '--mount-backend', 'fuse']);
    expect(result.exitCode).toBe(4);
    expect(result.stderr).toContain('the bundle has no package jq');
    expect(result.stderr).toContain('imagebuilder bundle');
    expect(result.stderr).not.toMatch(/Temporary failure resolving|Could not resolve/);
  }, 600_000);

  test('a recipe whose packages are all installed already: apt fetched nothing, and offline it still has its (empty) source', async () => {
    const installed = await writeRecipe(work, 'installed', [{ packages: { install: ['apt'] } }, { file: { path: '/etc/offline-marker', content: 'built\n' } }]);
    const dir = join(work, 'installed-bundle');
    const made = await runCli(['bundle', installed, '--disk-image', disk, '--output', dir, '--mount-backend', 'fuse'], { env });
    if (made.exitCode !== 0) throw new Error(made.all);
    expect(await readFile(join(dir, 'apt/Packages'), 'utf8')).toBe('');
    const result = await offline(['apply', installed, '--bundle', dir, '--output', join(work, 'installed.qcow2'), '--mount-backend', 'fuse', '--sparsify', 'none']);
    if (result.exitCode !== 0) throw new Error(result.all);
    expect(result.stderr).toMatch(/apt is already the newest version/);
  }, 600_000);

  test('--format tar: one archive with its sha256 beside it; two offline builds from it with SOURCE_DATE_EPOCH have equal BOMs (--verify-repeatable)', async () => {
    const archive = join(work, 'bundle.tar');
    const made = await runCli(['bundle', recipe, '--disk-image', disk, '--output', archive, '--format', 'tar', '--mount-backend', 'fuse'], { env });
    if (made.exitCode !== 0) throw new Error(made.all);
    const sums = await readFile(`${archive}.sha256`, 'utf8');
    const { stdout: actual } = await execa('sha256sum', [archive]);
    expect(sums.split(/\s+/)[0]).toBe(actual.split(/\s+/)[0]);
    expect(sums.trim().endsWith('  bundle.tar')).toBe(true);
    const output = join(work, 'from-tar.qcow2');
    const result = await offline(['apply', recipe, '--bundle', archive, '--output', output, '--mount-backend', 'fuse', '--sparsify', 'none', '--verify-repeatable'], { SOURCE_DATE_EPOCH: '1767225600' });
    if (result.exitCode !== 0) throw new Error(result.all);
    expect(result.stderr).toContain('repeatable: both builds');
    expect((await bom(output)).packages).toEqual((await bom(join(work, 'offline.qcow2'))).packages);
    expect(await leftoversUnder(env.IMAGEBUILDER_WORK_DIR)).toEqual(NOTHING_LEFT);
  }, 1_200_000);
  test('a matrix whose bases are bundles (a directory and an archive) builds them all offline', async () => {
    const matrix = join(work, 'matrix.yaml');
    await writeFile(matrix, [
      'recipe: tools.yaml',
      'bases:',
      `  - { name: from-dir, bundle: "${bundleDir()}" }`,
      `  - { name: from-tar, bundle: "${join(work, 'bundle.tar')}" }`,
      'output:',
      '  dir: matrix-out',
      '  name: "{{ base }}"',
    ].join('\n'));
    const result = await offline(['matrix', matrix, '--mount-backend', 'fuse', '--json'], { IMAGEBUILDER_SPARSIFY: 'none' });
    if (result.exitCode !== 0) throw new Error(result.all);
    const printed = JSON.parse(result.stdout) as { results: { name: string; status: string; bom: string }[] };
    expect(printed.results.map((r) => [r.name, r.status])).toEqual([['from-dir', 'succeeded'], ['from-tar', 'succeeded']]);
    const online = (await bom(join(work, 'offline.qcow2'))).packages;
    for (const build of printed.results) {
      const built = JSON.parse(await readFile(build.bom, 'utf8'));
      expect(built.offline.network).toBe('none');
      expect(built.packages).toEqual(online);
    }
  }, 1_200_000);

  test('the shipped example recipe, bundled and built offline: containerd, conntrack and socat from the bundle, as online', async () => {
    const example = `${REPO}/recipes/examples/k8s-node-containerd.yaml`;
    const dir = join(work, 'example-bundle');
    const made = await runCli(['bundle', example, '--disk-image', disk, '--output', dir, '--mount-backend', 'fuse'], { env });
    if (made.exitCode !== 0) throw new Error(made.all);
    const output = join(work, 'example.qcow2');
    const result = await offline(['apply', example, '--bundle', dir, '--output', output, '--mount-backend', 'fuse', '--sparsify', 'none']);
    if (result.exitCode !== 0) throw new Error(result.all);
    const built = await bom(output);
    await withImageMounted(output, 'gpt-esp', async (root) => {
      for (const name of ['containerd', 'conntrack', 'socat']) {
        const version = await dpkgVersion(root, name);
        expect(version).toBeDefined();
        expect(built.packages).toContainEqual(expect.objectContaining({ name, version, origin: 'added' }));
      }
      expect(await readFile(join(root, 'etc/containerd/config.toml'), 'utf8')).toContain('SystemdCgroup = true');
    });
  }, 1_200_000);

  test('a container archive beside the recipe travels in the bundle: built offline where the recipe has no archive beside it', async () => {
    const connected = join(work, 'connected');
    const far = join(work, 'far');
    await mkdir(connected);
    await mkdir(far);
    const { manifestDigest } = await writeOciArchive(join(connected, 'pause.tar'), 'registry.k8s.io/pause:3.9', 'hello from the bundle\n');
    const steps = [{ packages: { install: ['containerd'] } }, { 'container-images': { archives: ['pause.tar'] } }];
    const recipe = await writeRecipe(connected, 'images', steps);
    const dir = join(work, 'images-bundle');
    const made = await runCli(['bundle', recipe, '--disk-image', disk, '--output', dir, '--mount-backend', 'fuse'], { env });
    if (made.exitCode !== 0) throw new Error(made.all);
    const manifest = JSON.parse(await readFile(join(dir, 'bundle.json'), 'utf8'));
    const archive = manifest.files.find((file: { kind: string }) => file.kind === 'container-archive');
    expect(archive).toMatchObject({ origin: 'pause.tar', sha256: createHash('sha256').update(await readFile(join(connected, 'pause.tar'))).digest('hex') });

    // The far side has the recipe and the bundle, nothing else.
    const farRecipe = await writeRecipe(far, 'images', steps);
    const output = join(work, 'images.qcow2');
    const result = await offline(['apply', farRecipe, '--bundle', dir, '--output', output, '--mount-backend', 'fuse', '--sparsify', 'none']);
    if (result.exitCode !== 0) throw new Error(result.all);
    expect((await bom(output)).containerImages).toEqual([{ reference: 'registry.k8s.io/pause:3.9', digest: manifestDigest, namespace: 'k8s.io' }]);

    const renamed = await writeRecipe(far, 'renamed', [steps[0], { 'container-images': { archives: ['other.tar'] } }]);
    const missing = await offline(['apply', renamed, '--bundle', dir, '--output', join(work, 'renamed.qcow2'), '--mount-backend', 'fuse']);
    expect(missing.exitCode).toBe(4);
    expect(missing.stderr).toContain('the bundle has no container image archive other.tar');
    expect(await leftoversUnder(env.IMAGEBUILDER_WORK_DIR)).toEqual(NOTHING_LEFT);
  }, 1_200_000);

  test('the shipped node recipe against the stand-in mirrors, as one archive, built offline: pinned and held packages, the table\'s components', async () => {
    const node = `${REPO}/recipes/kubernetes-node.yaml`;
    const archive = join(work, 'node-bundle.tar');
    const made = await runCli(['bundle', node, '--disk-image', disk, '--output', archive, '--format', 'tar', '--mount-backend', 'fuse', ...nodeRecipeSets(mirror)], { env });
    if (made.exitCode !== 0) throw new Error(made.all);
    const requests = mirror.requests.length;
    const output = join(work, 'node.qcow2');
    const result = await offline(['apply', node, '--bundle', archive, '--output', output, '--mount-backend', 'fuse', '--sparsify', 'none', ...nodeRecipeSets(mirror)]);
    if (result.exitCode !== 0) throw new Error(result.all);
    expect(mirror.requests.length).toBe(requests);
    const built = await bom(output);
    expect(built.input.path).toBe(`${archive}!/${'base/' + disk.split('/').pop()}`);
    for (const file of [mirror.files.containerd, mirror.files.runc, mirror.files.crictl, mirror.files.cniPlugins]) expect(result.stderr).toContain(`from the bundle: ${file.url}`);
    const row = SERIES['1.36'];
    const components = Object.fromEntries((built.components as { name: string; version: string }[]).map((c) => [c.name, c.version]));
    expect(components).toMatchObject({ kubelet: '1.36.2', kubeadm: '1.36.2', kubectl: '1.36.2', crictl: row.crictl_version, 'cni-plugins': row.cni_plugins_version });
    await withImageMounted(output, 'gpt-esp', async (root) => {
      for (const name of ['kubelet', 'kubeadm', 'kubectl']) {
        expect(await dpkgVersion(root, name)).toBe('1.36.2-1.1');
        expect((await execa('dpkg-query', [`--admindir=${root}/var/lib/dpkg`, '-W', '-f', '${Status}', name])).stdout).toBe('hold ok installed');
      }
      expect(await dpkgVersion(root, 'cri-tools')).toBe(row.cri_tools_deb_version);
    });
    expect(await leftoversUnder(env.IMAGEBUILDER_WORK_DIR)).toEqual(NOTHING_LEFT);
  }, 1_200_000);
});
