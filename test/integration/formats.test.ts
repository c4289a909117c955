import { mkdtemp, open, readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { fixtureImage } from '../helpers/fixtures.js';
import { expectNothingLeft, hostState, runCli, jsonResult } from '../helpers/host.js';
import { withImageMounted } from '../helpers/inspect.js';
import { writeRecipe } from '../helpers/recipes.js';
import { expectValidBom } from '../helpers/bom-schema.js';

/** Every output format from one build, each checked by qemu-img, all listed in the SHA256SUMS beside them. */
describe('imagebuilder apply --format', () => {
  let work: string;
  beforeAll(async () => {
    work = await mkdtemp('/var/tmp/ib-formats-');
  });
  afterAll(() => rm(work, { recursive: true, force: true }));

  const info = async (path: string, format?: string) =>
    JSON.parse((await execa('qemu-img', ['info', '--output=json', ...(format ? ['-f', format] : []), path])).stdout) as {
      format: string;
      'virtual-size': number;
      'actual-size': number;
      'format-specific'?: { data?: { 'create-type'?: string } };
    };

  test('qcow2 (compressed), raw, vmdk streamOptimized, fixed vpc, vhdx and vdi, with a SHA256SUMS that sha256sum accepts', async () => {
    const input = await fixtureImage('whole-disk');
    const recipe = await writeRecipe(work, 'formats', [{ run: 'echo formats > /etc/marker' }]);
    const output = join(work, 'node.qcow2');
    const before = await hostState();
    const formats = ['qcow2', 'raw', 'vmdk', 'vpc', 'vhdx', 'vdi'];
    const result = await runCli(['apply', recipe, '--disk-image', input, '--output', output, '--sparsify', 'fstrim', '--compress', '--json', ...formats.flatMap((f) => ['--format', f])]);
    if (result.exitCode !== 0) throw new Error(result.all);
    const printed = jsonResult(result.stdout) as { artifacts: { path: string; format: string; sha256: string }[]; sums: string };
    const expected = ['node.qcow2', 'node.img', 'node.vmdk', 'node.vhd', 'node.vhdx', 'node.vdi'].map((name) => join(work, name));
    expect(printed.artifacts.map((a) => [a.path, a.format])).toEqual(expected.map((path, i) => [path, formats[i]]));

    const virtualSize = (await info(input))['virtual-size'];
    for (const artifact of printed.artifacts) {
      // A fixed VHD is raw data with a footer: no probe can tell, so it is named explicitly (and checked below).
      const details = await info(artifact.path, artifact.format === 'vpc' ? 'vpc' : undefined);
      expect(details.format).toBe(artifact.format);
      // vpc rounds to its CHS geometry unless told to keep the size: Azure needs it exact and MiB-aligned.
      expect(details['virtual-size']).toBe(virtualSize);
    }
    expect((await info(join(work, 'node.vmdk')))['format-specific']?.data?.['create-type']).toBe('streamOptimized');
    expect(virtualSize % (1 << 20)).toBe(0);
    const vhd = await open(join(work, 'node.vhd'));
    const footer = Buffer.alloc(512);
    await vhd.read(footer, 0, 512, (await vhd.stat()).size - 512);
    await vhd.close();
    expect(footer.subarray(0, 8).toString('latin1')).toBe('conectix'); // the fixed-VHD footer
    expect(footer.readUInt32BE(60)).toBe(2); // disk type 2: fixed
    for (const path of [join(work, 'node.qcow2'), join(work, 'node.vhdx'), join(work, 'node.vdi')]) await execa('qemu-img', ['check', path]);
    // Compressed qcow2 takes less room than the same data uncompressed in the raw image.
    expect((await stat(join(work, 'node.qcow2'))).blocks).toBeLessThan((await stat(join(work, 'node.img'))).blocks);
    await withImageMounted(join(work, 'node.vhdx'), 'whole-disk', async (root) => {
      expect(await readFile(join(root, 'etc/marker'), 'utf8')).toBe('formats\n');
    });

    // The sums file is what phase 0 reads, and coreutils agrees with every line.
    expect(printed.sums).toBe(join(work, 'SHA256SUMS'));
    const sums = await readFile(printed.sums, 'utf8');
    expect(sums.trim().split('\n').map((line) => line.split('  ')[1]).sort()).toEqual([...expected.map((p) => p.slice(work.length + 1)), 'node.qcow2.bom.json', 'node.qcow2.cdx.json', 'node.qcow2.spdx.json'].sort());
    await execa('sha256sum', ['--check', '--strict', 'SHA256SUMS'], { cwd: work });
    const bom = JSON.parse(await readFile(`${output}.bom.json`, 'utf8'));
    expect(bom.artifacts).toEqual(printed.artifacts);
    expectValidBom(bom);
    expect(bom.output).toEqual({ ...printed.artifacts[0], sparsify: 'fstrim', compressed: true });
    await expectNothingLeft(before);
  });
});
