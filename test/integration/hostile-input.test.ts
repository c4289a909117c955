import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { execa } from 'execa';
import { fixtureImage } from '../helpers/fixtures.js';
import { runCli } from '../helpers/host.js';
import { CANARY_CONTENT, expectHostUntouched, snapshotHost } from '../helpers/hostile.js';
import { writeRecipe } from '../helpers/recipes.js';

/**
 * Input images that are not self-contained: each names a host file or device (the canary, a loop device over a
 * canary disk, a FIFO) that qemu would open as part of the "guest". Each is refused before anything is mounted,
 * with a BAD_INPUT naming what it refers to, by `inspect` and by `apply`; nothing is written, the host is as it
 * was, and a FIFO does not hang the probe.
 */
describe('hostile input images: only self-contained images are accepted', () => {
  let work: string;
  let tmp: string;
  let recipe: string;
  beforeAll(async () => {
    work = await mkdtemp('/var/tmp/ib-hostile-input-');
    tmp = await mkdtemp('/var/tmp/ib-hostile-input-tmp-');
    recipe = await writeRecipe(work, 'marker', [{ file: { path: '/etc/marker', content: 'x\n' } }]);
  });
  afterAll(async () => {
    await rm(work, { recursive: true, force: true });
    await rm(tmp, { recursive: true, force: true });
  });

  /** A descriptor-only VMDK (createType monolithicFlat) whose extents are the given files. */
  const vmdkDescriptor = (extents: string[]) =>
    ['# Disk DescriptorFile', 'version=1', 'CID=fffffffe', 'parentCID=ffffffff', 'createType="monolithicFlat"', '', ...extents.map((file) => `RW 2048 FLAT "${file}" 0`), ''].join('\n');

  /** Runs inspect and apply on the image and checks each refuses it, naming `reference`; nothing is left. */
  async function expectRefused(image: string, reference: string, host: Awaited<ReturnType<typeof snapshotHost>>) {
    const inspected = await runCli(['inspect', image], { env: { IMAGEBUILDER_WORK_DIR: tmp } });
    expect(inspected.exitCode).toBe(2);
    expect(inspected.stderr).toContain(`error [BAD_INPUT]: ${image} refers to ${reference}`);
    expect(inspected.stderr).toContain('imagebuilder takes only self-contained images');
    const output = join(work, 'refused-out.qcow2');
    const applied = await runCli(['apply', recipe, '--disk-image', image, '--output', output, '--sparsify', 'none'], { env: { IMAGEBUILDER_WORK_DIR: tmp } });
    expect(applied.exitCode).toBe(2);
    expect(applied.stderr).toContain(`${image} refers to ${reference}`);
    expect(applied.all).not.toContain(CANARY_CONTENT.trim());
    expect((await readdir(work)).filter((name) => name.includes('refused-out'))).toEqual([]);
    expect(await readdir(tmp)).toEqual([]);
    await expectHostUntouched(host);
  }

  test('a qcow2 whose external data file is the host canary, and one whose backing file is', async () => {
    let host = await snapshotHost();
    const dataFile = join(work, 'data-file.qcow2');
    // data_file_raw: the canary's bytes would be the guest disk's first bytes. qemu-img create would truncate the
    // data file it names, so the image is made over a stand-in of the same name length, and the name swapped in.
    const standIn = host.canaryFile.replace(/ib-canary-[^/]+/, (dir) => dir.replace(/[^-]+$/, (random) => 'x'.repeat(random.length)));
    await execa('mkdir', ['-p', dirname(standIn)]);
    await execa('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', `data_file=${standIn},data_file_raw=on`, dataFile, '64K']);
    const bytes = await readFile(dataFile);
    await writeFile(dataFile, Buffer.from(bytes.toString('latin1').replace(standIn, host.canaryFile), 'latin1'));
    await rm(dirname(standIn), { recursive: true, force: true });
    await expectRefused(dataFile, `the external data file ${host.canaryFile}`, host);

    host = await snapshotHost();
    const backed = join(work, 'backed.qcow2');
    await execa('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', host.canaryFile, '-F', 'raw', backed, '1M']);
    await expectRefused(backed, `the backing file ${host.canaryFile}`, host);
  });

  test('a VMDK whose extent is the host canary, a host block device (a loop device over a canary disk), or a FIFO (no hang)', async () => {
    let host = await snapshotHost();
    const toFile = join(work, 'extent-file.vmdk');
    await writeFile(toFile, vmdkDescriptor([host.canaryFile]));
    await expectRefused(toFile, host.canaryFile, host);

    host = await snapshotHost();
    const disk = join(work, 'host-disk.img');
    await writeFile(disk, Buffer.concat([Buffer.from(CANARY_CONTENT), Buffer.alloc(1 << 20)]));
    const loop = (await execa('losetup', ['--find', '--show', disk])).stdout.trim();
    try {
      const toDevice = join(work, 'extent-device.vmdk');
      await writeFile(toDevice, vmdkDescriptor([loop]));
      const applied = await runCli(['apply', recipe, '--disk-image', toDevice, '--output', join(work, 'device-out.qcow2'), '--sparsify', 'none'], { env: { IMAGEBUILDER_WORK_DIR: tmp } });
      expect(applied.exitCode).toBe(2);
      expect(applied.stderr).toContain(`${toDevice} refers to ${loop}`);
      expect(applied.all).not.toContain(CANARY_CONTENT.trim());
    } finally {
      await execa('losetup', ['--detach', loop]);
    }
    await expectHostUntouched(host);

    host = await snapshotHost();
    const fifo = join(work, 'extent.fifo');
    await execa('mkfifo', [fifo]);
    const toFifo = join(work, 'extent-fifo.vmdk');
    // Two extents: the first beside the descriptor (still another file), the second a FIFO.
    await writeFile(join(work, 'extent-fifo-flat.vmdk'), Buffer.alloc(1 << 20));
    await writeFile(toFifo, vmdkDescriptor(['extent-fifo-flat.vmdk', 'extent.fifo']));
    await expectRefused(toFifo, join(work, 'extent-fifo-flat.vmdk'), host);
  });

  test('a raw disk whose first sector is a qcow2 header naming a host backing file is described by its content, and refused', async () => {
    const host = await snapshotHost();
    // A raw fixture with its first 64 KiB replaced by a qcow2 header: whoever probes it sees a qcow2 over the canary.
    const raw = join(work, 'header.raw');
    await execa('qemu-img', ['convert', '-O', 'raw', await fixtureImage('whole-disk'), raw]);
    const header = join(work, 'header.qcow2');
    await execa('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', host.canaryFile, '-F', 'raw', header, '1M']);
    await execa('dd', [`if=${header}`, `of=${raw}`, 'conv=notrunc', 'bs=64k', 'count=1', 'status=none']);
    await expectRefused(raw, `the backing file ${host.canaryFile}`, host);
  });

  test('a self-contained image of every format qemu reads is accepted, its format pinned', async () => {
    const base = await fixtureImage('whole-disk');
    for (const format of ['vmdk', 'vdi', 'vhdx']) {
      const image = join(work, `standalone.${format}`);
      await execa('qemu-img', ['convert', '-O', format, base, image]);
      const inspected = await runCli(['inspect', image, '--format', 'json'], { env: { IMAGEBUILDER_WORK_DIR: tmp } });
      expect({ format, exitCode: inspected.exitCode, stderr: inspected.stderr }).toEqual({ format, exitCode: 0, stderr: '' });
      expect(JSON.parse(inspected.stdout).image.format).toBe(format);
      await rm(image);
    }
  });
});
