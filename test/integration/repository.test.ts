import { access, lstat, mkdtemp, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { fixtureImage } from '../helpers/fixtures.js';
import { expectNothingLeft, hostState, runCli, sha256 } from '../helpers/host.js';
import { dpkgVersion, withImageMounted } from '../helpers/inspect.js';
import { APT_PATH, startLocalMirror, type LocalMirror } from '../helpers/local-mirror.js';
import { writeRecipe } from '../helpers/recipes.js';

/** dpkg's own Status field for a package in the image ("hold ok installed"), read by the host's dpkg-query. */
async function dpkgStatus(root: string, name: string): Promise<string> {
  return (await execa('dpkg-query', [`--admindir=${root}/var/lib/dpkg`, '-W', '-f', '${Status}', name])).stdout;
}

/** A fingerprint as vendors print it: ten groups of four, two spaces in the middle. */
const spaced = (fpr: string) => fpr.replace(/(.{4})/g, '$1 ').trim().replace(/^((?:\S+ ){4}\S+) /, '$1  ');

interface BomFile {
  path: string;
  sha256: string;
  kind: string;
  source?: string;
}

/**
 * The repository step against a signed apt repository laid out like pkgs.k8s.io (test/helpers/local-mirror.ts),
 * then pinned and held packages from it, through real builds (fuse backend) of a GPT image. Everything is
 * checked from the output image with the host's own tools, not with the code under test.
 */
describe('repository step, pinned and held packages from a signed local mirror', () => {
  let work: string;
  let mirror: LocalMirror;
  let pinned: string | undefined;

  beforeAll(async () => {
    work = await mkdtemp('/var/tmp/ib-repository-');
    mirror = await startLocalMirror();
  });
  afterAll(async () => {
    await mirror?.close();
    await rm(work, { recursive: true, force: true });
  });

  const repositoryStep = (fingerprint: string) => ({
    name: 'add the kubernetes repository',
    repository: { name: 'kubernetes', url: mirror.aptUrl, key_url: mirror.keyUrl, fingerprint },
  });

  test('adds the repository, installs exact versions from it and holds them, so upgrade: true keeps them back', async () => {
    const input = await fixtureImage('gpt-esp');
    const inputSha = await sha256(input);
    const [older, newer] = mirror.versions.kubelet;
    expect([older, newer]).toEqual(['1.36.2-1.1', '1.36.3-1.1']);
    const recipe = await writeRecipe(work, 'k8s-pinned', [
      repositoryStep(spaced(mirror.keyFingerprint).toLowerCase()),
      { name: 'kubernetes tools', packages: { install: [`kubelet=${older}`, `kubeadm=${older}`, `kubectl=${older}`], hold: true } },
      // The newer versions are right there in the repository: only the holds keep apt-get upgrade from taking them.
      { name: 'upgrade the rest', packages: { upgrade: true } },
    ]);
    const output = join(work, 'k8s-pinned.qcow2');
    const before = await hostState();
    const served = mirror.requests.length;

    const result = await runCli(['apply', recipe, '--disk-image', input, '--output', output, '--mount-backend', 'fuse', '--sparsify', 'fstrim', '--json']);

    // The whole result on failure: stderr says why.
    expect(result).toMatchObject({ exitCode: 0 });
    expect(result.stderr).not.toContain('error');
    expect(result.stderr).toContain(`key ${mirror.keyFingerprint} (imagebuilder test mirror <mirror@imagebuilder.invalid>) matches the recipe`);
    expect(await sha256(input)).toBe(inputSha);
    // The host fetched the key; apt inside the guest fetched the signed index and exactly the pinned packages.
    const requests = mirror.requests.slice(served);
    expect(requests).toEqual(expect.arrayContaining([`${APT_PATH}Release.key`, `${APT_PATH}InRelease`]));
    const debs = requests.filter((path) => path.endsWith('.deb')).sort();
    expect(debs).toEqual(
      [`kubeadm_${older}`, `kubectl_${older}`, `kubelet_${older}`, 'cri-tools_1.36.0-1.1', 'kubernetes-cni_1.9.1-1.1'].map((p) => `${APT_PATH}amd64/${p}_amd64.deb`).sort(),
    );

    const sources = `Types: deb\nURIs: ${mirror.aptUrl}\nSuites: /\nSigned-By: /etc/apt/keyrings/kubernetes.asc\n`;
    const bom = JSON.parse(await readFile(`${output}.bom.json`, 'utf8'));
    await withImageMounted(output, 'gpt-esp', async (root) => {
      for (const name of ['kubelet', 'kubeadm', 'kubectl']) {
        expect(await dpkgVersion(root, name)).toBe(older);
        expect(await dpkgStatus(root, name)).toBe('hold ok installed');
      }
      // Dependencies come from the same repository and are not held: hold: true is what install names.
      expect(await dpkgVersion(root, 'cri-tools')).toBe('1.36.0-1.1');
      expect(await dpkgVersion(root, 'kubernetes-cni')).toBe('1.9.1-1.1');
      expect(await dpkgStatus(root, 'cri-tools')).toBe('install ok installed');
      expect((await execa('sh', [join(root, 'usr/bin/kubectl')])).stdout).toBe('kubectl v1.36.2 (imagebuilder test mirror)');

      const sourcesPath = join(root, 'etc/apt/sources.list.d/kubernetes.sources');
      const keyPath = join(root, 'etc/apt/keyrings/kubernetes.asc');
      expect(await readFile(sourcesPath, 'utf8')).toBe(sources);
      expect(await readFile(keyPath, 'utf8')).toBe(mirror.key);
      for (const path of [sourcesPath, keyPath]) {
        const info = await lstat(path);
        expect([info.mode & 0o7777, info.uid, info.gid]).toEqual([0o644, 0, 0]);
      }
      expect(bom.files).toEqual(
        expect.arrayContaining<BomFile>([
          { path: '/etc/apt/keyrings/kubernetes.asc', sha256: await sha256(keyPath), kind: 'config', source: mirror.keyUrl },
          { path: '/etc/apt/sources.list.d/kubernetes.sources', sha256: await sha256(sourcesPath), kind: 'config' },
        ]),
      );
    });
    for (const [name, version] of [['kubelet', older], ['kubeadm', older], ['kubectl', older], ['cri-tools', '1.36.0-1.1'], ['kubernetes-cni', '1.9.1-1.1']]) {
      expect(bom.packages).toContainEqual(expect.objectContaining({ name, version, architecture: 'amd64', origin: 'added' }));
    }
    expect(bom.steps.map((s: { type: string }) => s.type)).toEqual(['repository', 'packages', 'packages']);
    expect(result.stderr).toMatch(/The following packages have been kept back:\s+kubeadm kubectl kubelet/);
    await expectNothingLeft(before);
    pinned = output;
  });

  test('a held package is not upgraded; released, kubectl alone moves to the newer version and is held again', async () => {
    expect(pinned).toBeDefined(); // the output of the previous test is this one's input
    const [older, newer] = mirror.versions.kubectl;

    // Held: asking to upgrade it fails the step (apt refuses to change a held package), and nothing is written.
    const refused = await writeRecipe(work, 'k8s-upgrade-held', [{ packages: { upgrade: ['kubectl'] } }]);
    const refusedOutput = join(work, 'k8s-upgrade-held.qcow2');
    const beforeRefused = await hostState();
    const failed = await runCli(['apply', refused, '--disk-image', pinned!, '--output', refusedOutput, '--mount-backend', 'fuse', '--sparsify', 'fstrim']);
    expect(failed).toMatchObject({ exitCode: 4 });
    expect(failed.stderr).toContain('error [STEP_FAILED]');
    expect(failed.stderr).toMatch(/[Hh]eld packages were changed/);
    await expect(access(refusedOutput)).rejects.toThrow();
    await expectNothingLeft(beforeRefused);

    const recipe = await writeRecipe(work, 'k8s-upgrade', [
      { name: 'release kubectl', run: 'apt-mark unhold kubectl' },
      { name: 'upgrade kubectl', packages: { upgrade: ['kubectl'], hold: ['kubectl'] } },
    ]);
    const output = join(work, 'k8s-upgraded.qcow2');
    const before = await hostState();
    const served = mirror.requests.length;
    const result = await runCli(['apply', recipe, '--disk-image', pinned!, '--output', output, '--mount-backend', 'fuse', '--sparsify', 'fstrim']);
    // The whole result on failure: stderr says why.
    expect(result).toMatchObject({ exitCode: 0 });
    expect(result.stderr).not.toContain('error');
    // The source written by the first build is what the guest's apt used: only the newer kubectl was fetched.
    expect(mirror.requests.slice(served).filter((path) => path.endsWith('.deb'))).toEqual([`${APT_PATH}amd64/kubectl_${newer}_amd64.deb`]);

    await withImageMounted(output, 'gpt-esp', async (root) => {
      expect(await dpkgVersion(root, 'kubectl')).toBe(newer);
      expect(await dpkgStatus(root, 'kubectl')).toBe('hold ok installed');
      for (const name of ['kubelet', 'kubeadm']) {
        expect(await dpkgVersion(root, name)).toBe(older);
        expect(await dpkgStatus(root, name)).toBe('hold ok installed');
      }
      expect((await execa('sh', [join(root, 'usr/bin/kubectl')])).stdout).toBe('kubectl v1.36.3 (imagebuilder test mirror)');
    });
    const bom = JSON.parse(await readFile(`${output}.bom.json`, 'utf8'));
    expect(bom.packages).toContainEqual(expect.objectContaining({ name: 'kubectl', version: newer, origin: 'changed', baseVersion: older }));
    expect(bom.packages).toContainEqual(expect.objectContaining({ name: 'kubelet', version: older, origin: 'base' }));
    await expectNothingLeft(before);
  });

  test('a wrong fingerprint fails the step with exit code 4, before apt runs, and leaves nothing', async () => {
    const input = await fixtureImage('gpt-esp');
    const wrong = 'DE15 B144 86CD 377B 9E87  6E1A 2346 54DA 9A29 6436';
    const recipe = await writeRecipe(work, 'k8s-wrong-key', [repositoryStep(wrong), { packages: { install: ['kubectl'] } }]);
    const output = join(work, 'k8s-wrong-key.qcow2');
    const before = await hostState();
    const served = mirror.requests.length;

    const result = await runCli(['apply', recipe, '--disk-image', input, '--output', output, '--mount-backend', 'fuse', '--sparsify', 'fstrim']);

    expect(result).toMatchObject({ exitCode: 4 });
    expect(result.stderr).toContain(
      `error [STEP_FAILED]: step 1/2 (add the kubernetes repository): the key of repository kubernetes has fingerprint ${mirror.keyFingerprint}, expected DE15B14486CD377B9E876E1A234654DA9A296436`,
    );
    expect(result.stderr).toContain(`actual   fingerprint ${mirror.keyFingerprint}`);
    // The host fetched the key and nothing else: the guest's apt never saw the repository.
    expect(mirror.requests.slice(served)).toEqual([`${APT_PATH}Release.key`]);
    await expect(access(output)).rejects.toThrow();
    await expect(access(`${output}.bom.json`)).rejects.toThrow();
    await expectNothingLeft(before);
  });
});
