import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { stringify } from 'yaml';
import { fixtureImage } from '../helpers/fixtures.js';
import { CLI, expectNothingLeft, hostState, REPO, runCli, sha256 } from '../helpers/host.js';
import { startImageServer, type ImageServer } from '../helpers/image-server.js';
import { withImageMounted } from '../helpers/inspect.js';
import { expectValidBom } from '../helpers/bom-schema.js';
import { sha256Text } from '../../src/util/digest.js';

/**
 * `imagebuilder matrix` for real: two base images served over HTTP with their SHA256SUMS × two Kubernetes
 * versions, two builds at a time through the fuse backend, one shared cache given by IMAGEBUILDER_CACHE.
 */

/** The step that is interrupted: its duration is this run's own, so pgrep finds no other process's sleep. */
const LONG_SLEEP = `sleep 300.${process.pid}`;
describe('imagebuilder matrix', () => {
  let work: string;
  let server: ImageServer;
  let bases: Record<string, { path: string; sha256: string }>;
  beforeAll(async () => {
    work = await mkdtemp('/var/tmp/ib-matrix-');
    server = await startImageServer();
    bases = {};
    for (const layout of ['gpt-esp', 'whole-disk'] as const) {
      const path = await fixtureImage(layout);
      bases[layout] = { path, sha256: await sha256(path) };
      server.serve(`/${layout}/${layout}.qcow2`, { path });
      server.serve(`/${layout}/SHA256SUMS`, { data: Buffer.from(`${bases[layout].sha256}  ${layout}.qcow2\n`) });
    }
  });
  afterAll(async () => {
    await server.close();
    await rm(work, { recursive: true, force: true });
  });

  async function writeMatrix(dir: string, steps: unknown[], versions: string[], layouts: string[]): Promise<string> {
    await writeFile(join(dir, 'node.yaml'), stringify({ name: 'node', variables: { kubernetes_version: '1.29.0' }, steps }));
    const matrix = join(dir, 'matrix.yaml');
    await writeFile(
      matrix,
      [
        'recipe: node.yaml',
        'bases:',
        ...layouts.map((layout) => `  - { name: ${layout}, image: "${server.url}/${layout}/${layout}.qcow2" }`),
        'variables:',
        `  kubernetes_version: [${versions.join(', ')}]`,
        'output:',
        '  dir: out',
        '  name: "{{ base }}-k8s-{{ kubernetes_version }}"',
      ].join('\n'),
    );
    return matrix;
  }

  test('four builds, two at a time, each base fetched and verified once into the shared cache; outputs and BOMs carry their variables', async () => {
    const dir = await mkdtemp(join(work, 'four-'));
    const cache = await mkdtemp(join(work, 'cache-'));
    const scratch = await mkdtemp(join(work, 'scratch-'));
    const matrix = await writeMatrix(
      dir,
      [
        { file: { path: '/etc/kubernetes-version', content: '{{ kubernetes_version }}\n' } },
        { run: 'echo "built for {{ kubernetes_version }}" > /root/matrix.txt' },
      ],
      ['1.30.2', '1.31.0'],
      ['gpt-esp', 'whole-disk'],
    );
    const before = await hostState();
    const started = Date.now();
    // The cache, the work directories and the sparsify mode come from the environment, as a CI system sets them.
    const result = await runCli(['matrix', matrix, '--jobs', '2', '--mount-backend', 'fuse', '--json'], {
      env: { IMAGEBUILDER_CACHE: cache, IMAGEBUILDER_WORK_DIR: scratch, IMAGEBUILDER_SPARSIFY: 'none' },
    });
    if (result.exitCode !== 0) throw new Error(result.all);
    expect(Date.now() - started).toBeLessThan(180000);

    const printed = JSON.parse(result.stdout) as {
      results: { name: string; base: string; variables: Record<string, string>; status: string; output: { path: string; sha256: string }; bom: string }[];
      bases: { name: string; source: string }[];
    };
    expect(printed.bases.map((b) => [b.name, b.source])).toEqual([
      ['gpt-esp', 'download'],
      ['whole-disk', 'download'],
    ]);
    expect(printed.results.map((r) => [r.name, r.base, r.variables, r.status])).toEqual([
      ['gpt-esp-k8s-1.30.2', 'gpt-esp', { kubernetes_version: '1.30.2' }, 'succeeded'],
      ['gpt-esp-k8s-1.31.0', 'gpt-esp', { kubernetes_version: '1.31.0' }, 'succeeded'],
      ['whole-disk-k8s-1.30.2', 'whole-disk', { kubernetes_version: '1.30.2' }, 'succeeded'],
      ['whole-disk-k8s-1.31.0', 'whole-disk', { kubernetes_version: '1.31.0' }, 'succeeded'],
    ]);
    for (const build of printed.results) {
      const version = build.variables.kubernetes_version;
      expect(build.output.path).toBe(join(dir, 'out', build.name, `${build.name}.qcow2`));
      expect(await sha256(build.output.path)).toBe(build.output.sha256);
      const bom = JSON.parse(await readFile(build.bom, 'utf8'));
      expectValidBom(bom);
      expect(bom.recipe.variables).toEqual({ kubernetes_version: version });
      expect(bom.input).toMatchObject({ url: `${server.url}/${build.base}/${build.base}.qcow2`, sha256: bases[build.base].sha256, verified: true });
      expect(bom.files).toContainEqual({ path: '/etc/kubernetes-version', sha256: sha256Text(`${version}\n`), kind: 'config' });
      expect(bom.output.sparsify).toBe('none'); // IMAGEBUILDER_SPARSIFY took effect
      const sums = await readFile(join(dir, 'out', build.name, 'SHA256SUMS'), 'utf8');
      expect(sums).toContain(`${build.output.sha256}  ${build.name}.qcow2\n`);
      expect(await readFile(join(dir, 'out', build.name, `${build.name}.log`), 'utf8')).toContain(`succeeded in`);
    }
    // What the BOM says was written is really in the image.
    await withImageMounted(printed.results[3].output.path, 'whole-disk', async (root) => {
      expect(await readFile(join(root, 'etc/kubernetes-version'), 'utf8')).toBe('1.31.0\n');
      expect(await readFile(join(root, 'root/matrix.txt'), 'utf8')).toBe('built for 1.31.0\n');
    });

    // Each base crossed the network once, although two builds used it (and verified it from the cache).
    expect(server.gets('/gpt-esp/gpt-esp.qcow2')).toHaveLength(1);
    expect(server.gets('/whole-disk/whole-disk.qcow2')).toHaveLength(1);
    expect((await readdir(join(cache, 'images/sha256'))).filter((name) => /^[0-9a-f]{64}$/.test(name)).sort()).toEqual(
      [bases['gpt-esp'].sha256, bases['whole-disk'].sha256].sort(),
    );
    expect(await readdir(join(cache, 'locks'))).toEqual([]);
    expect(result.stderr).toMatch(/^\[matrix\] \[ *[\d.]+s\] 4 build\(s\), 2 at a time/m);
    expect(result.stderr).toMatch(/^\[whole-disk-k8s-1\.31\.0\] /m);
    // IMAGEBUILDER_WORK_DIR took effect, and every work directory is gone.
    expect(await readFile(join(dir, 'out', printed.results[0].name, `${printed.results[0].name}.log`), 'utf8')).toContain(`release: work directory ${scratch}/imagebuilder-`);
    expect(await readdir(scratch)).toEqual([]);
    await expectNothingLeft(before);
  });

  test('SIGINT stops every running build: each releases its mounts, devices and helpers; no output; exit code 130', async () => {
    const dir = await mkdtemp(join(work, 'interrupt-'));
    const cache = await mkdtemp(join(work, 'cache-'));
    const scratch = await mkdtemp(join(work, 'scratch-'));
    const matrix = await writeMatrix(dir, [{ name: 'long sleep', run: `echo "sleeping {{ kubernetes_version }}"\n${LONG_SLEEP}` }], ['1.30.2', '1.31.0', '1.32.0'], ['gpt-esp']);
    const before = await hostState();
    const child = execa('node', [CLI, 'matrix', matrix, '--jobs', '2', '--mount-backend', 'fuse', '--sparsify', 'none', '--cache', cache, '--work-dir', scratch], {
      reject: false,
      all: true,
    });
    let seen = '';
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`builds never started:\n${seen}`)), 120000);
      child.all!.on('data', (chunk: Buffer) => {
        seen += chunk.toString();
        if (seen.includes('run at') && (seen.match(/step 1\/1 \(long sleep\): run at/g) ?? []).length >= 2) {
          clearTimeout(timer);
          // Both sleeps are running once their step has started: give the shells a moment.
          setTimeout(resolve, 2000);
        }
      });
    });
    child.kill('SIGINT');
    const result = await child;
    expect(result.exitCode).toBe(130);
    const all = String(result.all);
    expect(all).toContain('SIGINT received');
    expect(all).toMatch(/gpt-esp-k8s-1\.30\.2 +gpt-esp +kubernetes_version=1\.30\.2 +cancelled/);
    expect(all).toMatch(/gpt-esp-k8s-1\.32\.0 +gpt-esp +kubernetes_version=1\.32\.0 +cancelled +- /);
    expect(all).toContain('error [INTERRUPTED]');
    expect((await execa('pgrep', ['-f', LONG_SLEEP], { reject: false })).stdout).toBe('');
    for (const name of ['gpt-esp-k8s-1.30.2', 'gpt-esp-k8s-1.31.0']) {
      expect((await readdir(join(dir, 'out', name))).filter((f) => !f.endsWith('.log'))).toEqual([]);
    }
    expect(await stat(join(dir, 'out', 'gpt-esp-k8s-1.32.0')).catch(() => undefined)).toBeUndefined();
    expect(await readdir(scratch)).toEqual([]);
    await expectNothingLeft(before);
  });

  test('a bad matrix is refused with file:line:column before anything is fetched, exit code 2', async () => {
    const dir = await mkdtemp(join(work, 'bad-'));
    const matrix = await writeMatrix(dir, [{ run: 'true' }], ['1.30.2'], ['gpt-esp']);
    await writeFile(matrix, (await readFile(matrix, 'utf8')).replace('kubernetes_version: [', 'kubernetes_versoin: ['));
    const requests = server.requests.length;
    const result = await runCli(['matrix', matrix]);
    expect(result.exitCode).toBe(2);
    expect(result.stderr).toContain(`error [BAD_RECIPE]: ${matrix}:5:3: "kubernetes_versoin" is not a variable of recipe node (node.yaml) (did you mean "kubernetes_version"?); it defines: kubernetes_version`);
    expect(server.requests.length).toBe(requests);
  });
});

describe('recipes/examples/matrix.yaml from the command line', () => {
  test('--list names its builds without fetching anything; --emit jobs and argo write manifests', async () => {
    const path = join(REPO, 'recipes/examples/matrix.yaml');
    const list = await runCli(['matrix', path, '--list', '--json']);
    expect(list.exitCode).toBe(0);
    const builds = JSON.parse(list.stdout) as { name: string; variables: Record<string, string> }[];
    expect(builds.map((b) => b.name)).toContain('debian-13-arm64-k8s-1.34.10');
    expect(builds.find((b) => b.name === 'debian-13-arm64-k8s-1.34.10')!.variables).toEqual({ kubernetes_version: '1.34.10', arch: 'arm64' });
    for (const emit of ['jobs', 'argo']) {
      const result = await runCli(['matrix', path, '--emit', emit]);
      expect(result.exitCode).toBe(0);
      expect(result.stdout).toContain('/config/examples/matrix.yaml');
      expect(result.stdout).toContain(emit === 'jobs' ? 'kind: Job' : 'kind: Workflow');
    }
  });
});
