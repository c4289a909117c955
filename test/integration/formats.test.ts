import { mkdir, mkdtemp, open, readFile, readdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { fixtureImage } from '../helpers/fixtures.js';
import { expectNothingLeft, hostState, runCli, jsonResult } from '../helpers/host.js';
import { withImageMounted } from '../helpers/inspect.js';
import { writeRecipe } from '../helpers/recipes.js';
import { expectValidBom } from '../helpers/bom-schema.js';
import { expectOvfStructure, ovfAttribute } from '../helpers/ovf.js';

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

  /** The members of a tar as GNU tar lists them, in order. */
  const members = async (path: string, gzip = false) => (await execa('tar', [gzip ? '-tzf' : '-tf', path])).stdout.split('\n');
  /** The magic and version of a tar's first header: "ustar\0" "00" is POSIX ustar, "ustar " " \0" GNU (oldgnu). */
  const tarMagic = (header: Buffer) => header.toString('latin1', 257, 265);
  const GiB = 1024 ** 3;

  /**
   * An OVA read back with tar, sha256sum, qemu-img and xmllint: its members in order, its manifest, its VMDK
   * against the raw output of the same build, its descriptor's values. Returns the extracted VMDK.
   */
  async function expectOva(ova: string, name: string, expected: { firmware: string; capacity: number; compareWith: { path: string; format: string } }): Promise<string> {
    const header = Buffer.alloc(512);
    const handle = await open(ova);
    await handle.read(header, 0, 512, 0);
    await handle.close();
    expect(tarMagic(header)).toBe('ustar\u000000');
    expect(await members(ova)).toEqual([`${name}.ovf`, `${name}-disk1.vmdk`, `${name}.mf`]);
    const dir = join(work, `${name}-ova`);
    await mkdir(dir);
    await execa('tar', ['-xf', ova, '-C', dir]);
    // ovftool's manifest lines are a form sha256sum --check reads.
    await execa('sha256sum', ['--check', '--strict', `${name}.mf`], { cwd: dir });
    expect((await readFile(join(dir, `${name}.mf`), 'utf8')).split('\n').filter(Boolean).map((line) => line.replace(/\)= .*/, '').replace('SHA256(', ''))).toEqual([`${name}.ovf`, `${name}-disk1.vmdk`]);
    const vmdk = join(dir, `${name}-disk1.vmdk`);
    const details = await info(vmdk, 'vmdk');
    expect(details.format).toBe('vmdk');
    expect(details['format-specific']?.data?.['create-type']).toBe('streamOptimized');
    expect(details['virtual-size']).toBe(expected.capacity);
    await execa('qemu-img', ['compare', '-f', 'vmdk', '-F', expected.compareWith.format, vmdk, expected.compareWith.path]);

    const xml = await readFile(join(dir, `${name}.ovf`), 'utf8');
    await expectOvfStructure(xml);
    expect(await ovfAttribute(xml, 'File', 'href')).toBe(`${name}-disk1.vmdk`);
    expect(Number(await ovfAttribute(xml, 'File', 'size'))).toBe((await stat(vmdk)).size);
    expect(Number(await ovfAttribute(xml, 'Disk', 'capacity'))).toBe(expected.capacity);
    expect(await ovfAttribute(xml, 'Disk', 'format')).toBe('http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized');
    expect(await ovfAttribute(xml, 'Config', 'value')).toBe(expected.firmware);
    expect(await ovfAttribute(xml, 'OperatingSystemSection', 'id')).toBe('96'); // the fixture is Debian, amd64
    return vmdk;
  }

  /** A GCE tarball read back with GNU tar and gzip: disk.raw alone, oldgnu, a whole number of GiB. Returns disk.raw. */
  async function expectGceTar(path: string, name: string): Promise<string> {
    expect(await members(path, true)).toEqual(['disk.raw']);
    // The first header, as gzip and od read it: GNU (oldgnu) magic, and type S, a sparse member (holes not stored).
    const hex = (await execa('sh', ['-c', 'gzip -dc "$1" | head -c 512 | od -An -tx1 -v', 'sh', path])).stdout.replace(/\s+/g, '');
    const header = Buffer.from(hex, 'hex');
    expect(tarMagic(header)).toBe('ustar  \u0000');
    expect(String.fromCharCode(header[156])).toBe('S');
    const dir = join(work, `${name}-gce`);
    await mkdir(dir);
    await execa('tar', ['-xSzf', path, '-C', dir]);
    expect(await readdir(dir)).toEqual(['disk.raw']);
    const raw = join(dir, 'disk.raw');
    expect((await stat(raw)).size % GiB).toBe(0);
    return raw;
  }

  test('ova (EFI: the image has an ESP) and gce beside raw, each read back by tar, sha256sum, qemu-img and xmllint', async () => {
    const input = await fixtureImage('gpt-esp');
    const recipe = await writeRecipe(work, 'cloud', [{ run: 'echo cloud > /etc/marker' }]);
    const output = join(work, 'cloud.img');
    const before = await hostState();
    const started = Date.now();
    const result = await runCli(['apply', recipe, '--disk-image', input, '--output', output, '--sparsify', 'none', '--json', '--format', 'raw,ova,gce']);
    if (result.exitCode !== 0) throw new Error(result.all);
    const printed = jsonResult(result.stdout) as { artifacts: { path: string; format: string; sha256: string }[]; sums: string };
    expect(printed.artifacts.map((a) => [a.path, a.format])).toEqual([[output, 'raw'], [join(work, 'cloud.ova'), 'ova'], [join(work, 'cloud.tar.gz'), 'gce']]);
    const capacity = (await info(input))['virtual-size'];
    await expectOva(join(work, 'cloud.ova'), 'cloud', { firmware: 'efi', capacity, compareWith: { path: output, format: 'raw' } });
    const raw = await expectGceTar(join(work, 'cloud.tar.gz'), 'cloud');
    expect((await stat(raw)).size).toBe(capacity); // the fixture is 2 GiB already
    await execa('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', raw, output]);
    // eslint-disable-next-line no-console
    console.log(`raw,ova,gce of a ${capacity / GiB} GiB image: ${((Date.now() - started) / 1000).toFixed(1)} s; ova ${(await stat(join(work, 'cloud.ova'))).size} bytes, gce ${(await stat(join(work, 'cloud.tar.gz'))).size} bytes`);

    await execa('sha256sum', ['--check', '--strict', 'SHA256SUMS'], { cwd: work });
    const sums = await readFile(printed.sums, 'utf8');
    for (const name of ['cloud.img', 'cloud.ova', 'cloud.tar.gz']) expect(sums).toContain(`  ${name}\n`);
    const bom = JSON.parse(await readFile(`${output}.bom.json`, 'utf8'));
    expect(bom.artifacts).toEqual(printed.artifacts);
    expectValidBom(bom);
    await expectNothingLeft(before);
  });

  test('gce first and ova, no disk image (BIOS: no ESP): a .tar.gz output name, the two disks equal; --test refused without a disk image', async () => {
    const input = await fixtureImage('mbr');
    const recipe = await writeRecipe(work, 'bios', [{ run: 'echo bios > /etc/marker' }]);
    const output = join(work, 'bios.tar.gz');
    const refused = await runCli(['apply', recipe, '--disk-image', input, '--output', output, '--format', 'gce,ova', '--test']);
    expect(refused.exitCode).toBe(2);
    expect(refused.stderr).toContain('a GCE image tarball and an OVA package alone do not boot');
    const before = await hostState();
    const result = await runCli(['apply', recipe, '--disk-image', input, '--output', output, '--sparsify', 'none', '--json', '--format', 'gce,ova']);
    if (result.exitCode !== 0) throw new Error(result.all);
    const printed = jsonResult(result.stdout) as { artifacts: { path: string; format: string }[] };
    expect(printed.artifacts.map((a) => [a.path, a.format])).toEqual([[output, 'gce'], [join(work, 'bios.ova'), 'ova']]);
    const raw = await expectGceTar(output, 'bios');
    const capacity = (await info(input))['virtual-size'];
    await expectOva(join(work, 'bios.ova'), 'bios', { firmware: 'bios', capacity, compareWith: { path: raw, format: 'raw' } });
    await withImageMounted(raw, 'mbr', async (root) => {
      expect(await readFile(join(root, 'etc/marker'), 'utf8')).toBe('bios\n');
    });
    const bom = JSON.parse(await readFile(`${output}.bom.json`, 'utf8'));
    expectValidBom(bom);
    expect(bom.output).toEqual({ ...printed.artifacts[0], sparsify: 'none' });
    await expectNothingLeft(before);
  });
});
