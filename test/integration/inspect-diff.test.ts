import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { fixtureImage } from '../helpers/fixtures.js';
import { expectNothingLeft, hostState, runCli, sha256 } from '../helpers/host.js';
import { withImageMounted } from '../helpers/inspect.js';
import { writeRecipe } from '../helpers/recipes.js';

/** inspect reads any image read-only; diff tells what a recipe changed, from images or from BOMs. */
describe('imagebuilder inspect and diff', () => {
  let work: string;
  beforeAll(async () => {
    work = await mkdtemp('/var/tmp/ib-inspect-');
  });
  afterAll(() => rm(work, { recursive: true, force: true }));

  test('inspect lists exactly what dpkg-query lists inside the image, and writes nothing', async () => {
    const input = await fixtureImage('separate-boot');
    const inputSha = await sha256(input);
    const before = await hostState();
    const result = await runCli(['inspect', input, '--format', 'json']);
    expect(result.exitCode).toBe(0);
    const { image, inventory } = JSON.parse(result.stdout);
    expect(image).toEqual({ path: input, format: 'qcow2', sha256: inputSha });
    await withImageMounted(input, 'separate-boot', async (root) => {
      const listed = (await execa('dpkg-query', [`--admindir=${root}/var/lib/dpkg`, '-W', '-f', '${db:Status-Status} ${Package} ${Version} ${Architecture}\n'])).stdout
        .split('\n')
        .filter((line) => line.startsWith('installed '))
        .map((line) => line.split(' ').slice(1).join(' '))
        .sort();
      expect(inventory.packages.map((p: { name: string; version: string; architecture: string }) => `${p.name} ${p.version} ${p.architecture}`).sort()).toEqual(listed);
      const kernels = (await execa('ls', [join(root, 'lib/modules')])).stdout.split('\n');
      expect(inventory.kernels.map((k: { version: string }) => k.version)).toEqual(kernels);
    });
    expect(inventory.os.id).toBe('debian');
    expect(inventory.architecture).toBe('amd64');
    expect(await sha256(input)).toBe(inputSha);
    await expectNothingLeft(before);
  });

  test('diff of an image before and after a recipe shows exactly the recipe\'s changes, from images and from BOMs', async () => {
    const input = await fixtureImage('gpt-esp');
    const recipe = await writeRecipe(work, 'change', [
      { packages: { install: ['hello'] } },
      { service: { enable: ['systemd-networkd'] } },
      { file: { path: '/etc/changed.conf', content: 'x\n' } },
    ]);
    const output = join(work, 'after.qcow2');
    expect((await runCli(['apply', recipe, '--disk-image', input, '--output', output, '--sparsify', 'none'])).exitCode).toBe(0);
    const bom = JSON.parse(await readFile(`${output}.bom.json`, 'utf8'));
    const hello = bom.packages.find((p: { name: string }) => p.name === 'hello');

    const before = await hostState();
    const images = await runCli(['diff', input, output, '--json']);
    expect(images.exitCode).toBe(0);
    const diff = JSON.parse(images.stdout);
    expect(diff.packages).toEqual({ added: [expect.objectContaining({ name: 'hello', version: hello.version, architecture: 'amd64' })], removed: [], changed: [] });
    expect(diff.units.added).toContainEqual({ unit: 'systemd-networkd.service', state: 'enabled' });
    expect(diff.units.removed).toEqual([]);
    expect(diff.identical).toBe(false);
    const table = await runCli(['diff', input, output]);
    expect(table.stdout).toContain(`  + hello ${hello.version} (amd64)`);
    await expectNothingLeft(before);

    // A BOM against itself is identical; the image after against its own BOM agrees on packages and units.
    const same = JSON.parse((await runCli(['diff', `${output}.bom.json`, `${output}.bom.json`, '--json'])).stdout);
    expect(same.identical).toBe(true);
    const mixed = JSON.parse((await runCli(['diff', output, `${output}.bom.json`, '--json'])).stdout);
    expect(mixed.packages).toEqual({ added: [], removed: [], changed: [] });
    expect(mixed.units).toEqual({ added: [], removed: [], changed: [] });
  });
});

describe('imagebuilder apply --verify-repeatable', () => {
  test('two builds of a pinned recipe agree on packages, units and files; the first build\'s artifacts are kept', async () => {
    const work = await mkdtemp('/var/tmp/ib-repeat-');
    try {
      const input = await fixtureImage('gpt-esp');
      const recipe = await writeRecipe(work, 'pinned', [{ packages: { install: ['hello'] } }, { file: { path: '/etc/pinned.conf', content: 'x\n' } }]);
      const output = join(work, 'pinned.qcow2');
      const before = await hostState();
      const result = await runCli(['apply', recipe, '--disk-image', input, '--output', output, '--sparsify', 'none', '--verify-repeatable']);
      if (result.exitCode !== 0) throw new Error(result.all);
      expect(result.stderr).toContain('repeatable: both builds have the same packages, units and files');
      const left = (await execa('ls', ['-A', work])).stdout.split('\n').sort();
      expect(left).toEqual(['SHA256SUMS', 'pinned.qcow2', 'pinned.qcow2.bom.json', 'pinned.qcow2.cdx.json', 'pinned.qcow2.spdx.json', 'pinned.yaml']);
      await expectNothingLeft(before);
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  });
});
