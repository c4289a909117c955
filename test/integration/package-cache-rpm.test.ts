import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { leftoversUnder, NOTHING_LEFT, runCli } from '../helpers/host.js';
import { writeRecipe } from '../helpers/recipes.js';
import { rpmGuestImage, rpmInstalled, withRpmGuestMounted } from '../helpers/rpm-guest.js';
import { PINNED_KUBERNETES_RPMS, rpmsFetched, startRpmMirror, type RpmMirror } from '../helpers/rpm-mirror.js';
import { sha256Text } from '../../src/util/digest.js';

/**
 * The package cache (src/pkg/package-cache.ts, src/pkg/rpm-package-cache.ts) for dnf and zypper: real builds of the
 * synthetic RPM guests (Debian-built dnf 4 and zypper) installing from the signed local rpm-md mirror, whose
 * request log says what the guest's manager downloaded.
 */
describe.each([
  { manager: 'dnf', layout: 'rpm-guest' as const, cacheDir: 'var/cache/dnf' },
  { manager: 'zypper', layout: 'suse-guest' as const, cacheDir: 'var/cache/zypp/packages' },
])('package cache ($manager)', ({ manager, layout, cacheDir }) => {
  let work: string;
  let mirror: RpmMirror;
  let cache: string;
  let env: Record<string, string>;
  let disk: string;
  let recipe: string;

  beforeAll(async () => {
    work = await mkdtemp(`/var/tmp/ib-package-cache-${manager}-`);
    mirror = await startRpmMirror();
    cache = join(work, 'cache');
    env = { IMAGEBUILDER_NO_CACHE: '', IMAGEBUILDER_CACHE: cache, IMAGEBUILDER_WORK_DIR: join(work, 'tmp') };
    await mkdir(env.IMAGEBUILDER_WORK_DIR);
    disk = await rpmGuestImage(layout);
    recipe = await writeRecipe(work, 'tools', [
      { repository: { name: 'kubernetes', url: mirror.repoUrl, key_url: mirror.keyUrl, fingerprint: mirror.keyFingerprint } },
      { name: 'tools', packages: { install: ['kubelet=1.36.2-150500.1.1', 'kubeadm=1.36.2-150500.1.1', 'kubectl=1.36.2'] } },
    ]);
  });
  afterAll(async () => {
    await mirror?.close();
    await rm(work, { recursive: true, force: true });
  });

  const build = (output: string, extra: string[] = [], environment = env) =>
    runCli(['apply', recipe, '--disk-image', disk, '--output', join(work, output), '--mount-backend', 'fuse', '--sparsify', 'none', ...extra], { env: environment });
  /** The .rpm files left anywhere under the manager's cache directory in an output image. */
  const rpmsLeft = (output: string) =>
    withRpmGuestMounted(join(work, output), async (root) => {
      const found: string[] = [];
      const walk = async (dir: string): Promise<void> => {
        for (const entry of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
          if (entry.isDirectory()) await walk(join(dir, entry.name));
          else if (entry.name.endsWith('.rpm')) found.push(join(dir, entry.name));
        }
      };
      await walk(join(root, cacheDir));
      return { found, kubelet: await rpmInstalled(root, 'kubelet') };
    });
  const storeNames = async () => (await readdir(join(cache, 'packages/rpm')).catch(() => [] as string[])).sort();

  test('the second build downloads no package the first did; nothing of the cache is left in the image', async () => {
    const served = mirror.requests.length;
    const first = await build('first.qcow2');
    if (first.exitCode !== 0) throw new Error(first.all);
    expect(rpmsFetched(mirror, served)).toEqual(PINNED_KUBERNETES_RPMS);
    expect(first.stderr).toContain(`package cache: kept ${PINNED_KUBERNETES_RPMS.length} downloaded .rpm file(s)`);
    const stored = await storeNames();
    expect(stored).toHaveLength(PINNED_KUBERNETES_RPMS.length);
    for (const name of stored) expect(`${sha256Text(await readFile(join(cache, 'packages/rpm', name)))}.rpm`).toBe(name);

    const again = mirror.requests.length;
    const second = await build('second.qcow2', ['--refresh', '2']);
    if (second.exitCode !== 0) throw new Error(second.all);
    // The server's word: the metadata again, no package.
    expect(rpmsFetched(mirror, again)).toEqual([]);
    expect(mirror.requests.slice(again).some((path) => path.endsWith('repomd.xml'))).toBe(true);
    expect(second.stderr).toContain(`package cache: ${PINNED_KUBERNETES_RPMS.length} .rpm file(s)`);
    for (const output of ['first.qcow2', 'second.qcow2']) {
      const left = await rpmsLeft(output);
      expect(left.kubelet).toBe('1.36.2-150500.1.1.x86_64');
      expect(left.found).toEqual([]);
    }
    const bomPackages = async (output: string) => JSON.parse(await readFile(join(work, `${output}.bom.json`), 'utf8')).packages;
    expect(await bomPackages('second.qcow2')).toEqual(await bomPackages('first.qcow2'));
    const list = await runCli(['cache', 'list', '--json'], { env });
    expect(JSON.parse(list.stdout).packages.filter((p: { kind: string }) => p.kind === 'rpm').map((p: { sha256: string }) => `${p.sha256}.rpm`).sort()).toEqual(stored);
    expect(await leftoversUnder(env.IMAGEBUILDER_WORK_DIR)).toEqual(NOTHING_LEFT);
  });

  test('a poisoned cached file is removed and never offered; the manager fetches the real one; two builds at once share the cache', async () => {
    const stored = await storeNames();
    await writeFile(join(cache, 'packages/rpm', stored[0]), 'not the package its name says');
    const served = mirror.requests.length;
    const [a, b] = await Promise.all([build('a.qcow2', ['--refresh', '2']), build('b.qcow2', ['--refresh', '2'])]);
    for (const result of [a, b]) if (result.exitCode !== 0) throw new Error(result.all);
    expect(`${a.stderr}${b.stderr}`).toContain('does not hold what its name says; removed, not offered');
    // Only the poisoned one was fetched again (by one build or both), never another.
    expect(new Set(rpmsFetched(mirror, served)).size).toBe(1);
    expect(await storeNames()).toEqual(stored);
    for (const name of stored) expect(`${sha256Text(await readFile(join(cache, 'packages/rpm', name)))}.rpm`).toBe(name);
    for (const output of ['a.qcow2', 'b.qcow2']) expect((await rpmsLeft(output)).found).toEqual([]);
  });

  test('with the step cache (a session per step), the metadata is fetched once per build, not again by a later step', async () => {
    const repomdFetched = (from: number) => mirror.requests.slice(from).filter((path) => path.endsWith('repomd.xml')).length;
    const fresh = async (name: string, steps: object[]) => {
      // A step cache of its own: every step runs, each in a session of its own.
      const recipeFile = await writeRecipe(work, name, [{ repository: { name: 'kubernetes', url: mirror.repoUrl, key_url: mirror.keyUrl, fingerprint: mirror.keyFingerprint } }, ...steps]);
      const served = mirror.requests.length;
      const result = await runCli(['apply', recipeFile, '--disk-image', disk, '--output', join(work, `${name}.qcow2`), '--mount-backend', 'fuse', '--sparsify', 'none'], {
        env: { ...env, IMAGEBUILDER_CACHE: join(work, `cache-${name}`) },
      });
      if (result.exitCode !== 0) throw new Error(result.all);
      expect(result.stderr).toMatch(/step 2\/\d \(.*\) done/);
      return repomdFetched(served);
    };
    const once = await fresh('one-step', [{ packages: { install: ['kubectl=1.36.2'] } }]);
    expect(once).toBeGreaterThan(0);
    // Two more package steps, each in its own session: the same metadata fetches as one step, and both installed.
    expect(await fresh('three-steps', [{ packages: { install: ['kubectl=1.36.2'] } }, { packages: { install: ['cri-tools'] } }, { packages: { install: ['kubernetes-cni'] } }])).toBe(once);
    const installed = await withRpmGuestMounted(join(work, 'three-steps.qcow2'), async (root) => [await rpmInstalled(root, 'cri-tools'), await rpmInstalled(root, 'kubernetes-cni')]);
    expect(installed).toEqual([expect.stringMatching(/^1\.36\.0-/), expect.stringMatching(/^1\.9\.1-/)]);
  });

  test('--no-cache neither uses nor fills the cache', async () => {
    const before = await storeNames();
    const served = mirror.requests.length;
    const result = await build('nocache.qcow2', ['--no-cache']);
    if (result.exitCode !== 0) throw new Error(result.all);
    expect(result.stderr).not.toContain('package cache:');
    expect(rpmsFetched(mirror, served)).toEqual(PINNED_KUBERNETES_RPMS);
    expect(await storeNames()).toEqual(before);
  });
});
