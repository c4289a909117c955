import { constants } from 'node:fs';
import { mkdtemp, open, readdir, readFile, rm, rmdir } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { expectValidBom } from '../helpers/bom-schema.js';
import { fixtureImage } from '../helpers/fixtures.js';
import { expectNothingLeft, hostState, runCli, sha256, jsonResult } from '../helpers/host.js';
import { dpkgVersion, withImageMounted } from '../helpers/inspect.js';
import { writeRecipe } from '../helpers/recipes.js';

/** The binfmt_misc mounts in the host's mount table. */
async function binfmtMounts(): Promise<string[]> {
  return (await readFile('/proc/mounts', 'utf8')).split('\n').filter((line) => line.split(' ')[2] === 'binfmt_misc');
}

/** Runs `body` with binfmt_misc mounted at a directory of the test's own; unmounted (and removed) after. */
async function withBinfmt<T>(body: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp('/tmp/ib-test-binfmt-');
  await execa('mount', ['-t', 'binfmt_misc', 'binfmt_misc', dir]);
  try {
    return await body(dir);
  } finally {
    await execa('umount', [dir]);
    await rmdir(dir);
  }
}

/** What binfmt_misc holds: its mounts, and every registered entry (read through a mount of the test's own). */
async function binfmtState() {
  const mounts = await binfmtMounts();
  const entries = await withBinfmt(async (dir) => (await readdir(dir)).filter((name) => name !== 'register' && name !== 'status').sort());
  return { mounts, entries };
}

async function writeControl(path: string, text: string) {
  const file = await open(path, constants.O_WRONLY);
  try {
    await file.write(text);
  } finally {
    await file.close();
  }
}

/** qemu's aarch64 magic and mask as the installed qemu-user package registers them (not imagebuilder's table). */
async function aarch64MagicAndMask(): Promise<string> {
  const [, , , offset, magic, mask] = (await readFile('/usr/lib/binfmt.d/qemu-aarch64.conf', 'utf8')).trim().split(':');
  return `${offset}:${magic}:${mask}`;
}

/** An arm64 Debian guest on this amd64 host: its programs run under qemu-user through binfmt_misc. */
describe('foreign architecture (arm64 guest, qemu-user-static)', () => {
  let work: string;
  let input: string;
  beforeAll(async () => {
    work = await mkdtemp('/var/tmp/ib-arch-');
    input = await fixtureImage('mbr', 'qcow2', { arch: 'arm64' });
  });
  afterAll(async () => {
    await rm(work, { recursive: true, force: true });
  });

  test('apply installs a real arm64 package from Debian through apt under emulation; the BOM says arm64; nothing is left mounted or registered', async () => {
    const inputSha = await sha256(input);
    const recipe = await writeRecipe(work, 'arm64', [
      { packages: { install: ['hello'] } },
      { run: 'uname -m > /root/arch.txt; dpkg --print-architecture >> /root/arch.txt; hello >> /root/arch.txt' },
    ]);
    const output = join(work, 'arm64-out.qcow2');
    const before = await hostState();
    const binfmtBefore = await binfmtState();

    const result = await runCli(['apply', recipe, '--disk-image', input, '--output', output, '--mount-backend', 'fuse', '--sparsify', 'fstrim', '--json']);

    expect(result.stderr).not.toContain('error');
    expect(result.exitCode).toBe(0);
    expect(result.stderr).toMatch(/the guest is arm64 \(\/usr\/bin\/dash\) and this host is amd64: its programs run under \S+ \(binfmt_misc entry \S+/);
    expect(await sha256(input)).toBe(inputSha);
    const printed = jsonResult(result.stdout) as { bom: string };
    const bom = JSON.parse(await readFile(printed.bom, 'utf8'));
    expectValidBom(bom);
    expect(bom.architecture).toBe('arm64');
    await withImageMounted(output, 'mbr', async (root) => {
      const version = await dpkgVersion(root, 'hello');
      expect(version).toMatch(/\d/);
      expect(bom.packages).toContainEqual(expect.objectContaining({ name: 'hello', version, architecture: 'arm64', origin: 'added' }));
      const status = (await execa('dpkg-query', [`--admindir=${root}/var/lib/dpkg`, '-W', '-f', '${Architecture}', 'hello'])).stdout;
      expect(status).toBe('arm64');
      // The installed program itself is an AArch64 ELF file (e_machine 183 at byte 18, little-endian).
      const elf = await readFile(join(root, 'usr/bin/hello'));
      expect(elf.subarray(0, 4).toString('latin1')).toBe('\x7fELF');
      expect(elf.readUInt16LE(18)).toBe(183);
      expect(await readFile(join(root, 'root/arch.txt'), 'utf8')).toBe('aarch64\narm64\nHello, world!\n');
    });
    await expectNothingLeft(before);
    expect(await binfmtState()).toEqual(binfmtBefore);
  });

  test('shell runs the guest\'s commands under emulation; an entry the host has with F is used, not another', async () => {
    const before = await hostState();
    const plain = await runCli(['shell', '--disk-image', input, '--command', 'uname -m; dpkg --print-architecture']);
    expect({ exitCode: plain.exitCode, stdout: plain.stdout, stderr: plain.stderr }).toEqual({ exitCode: 0, stdout: 'aarch64\narm64', stderr: '' });

    await withBinfmt(async (dir) => {
      await writeControl(join(dir, 'register'), `:ibtest-aarch64:M:${await aarch64MagicAndMask()}:/usr/bin/qemu-aarch64-static:F`);
      try {
        const result = await runCli(['shell', '--disk-image', input, '--verbose', '--command', 'uname -m']);
        expect(result.exitCode).toBe(0);
        expect(result.stdout).toBe('aarch64');
        expect(result.stderr).toContain('its programs run under /usr/bin/qemu-aarch64-static (binfmt_misc entry ibtest-aarch64)');
        expect(result.stderr).not.toContain('removed at the end');
        expect((await readdir(dir)).sort()).toEqual(['ibtest-aarch64', 'register', 'status']);
      } finally {
        await writeControl(join(dir, 'ibtest-aarch64'), '-1');
      }
    });
    await expectNothingLeft(before);
  });

  test('an entry without F (its emulator is not inside the guest) is explained, and shadowed by ours for the session only', async () => {
    const before = await hostState();
    await withBinfmt(async (dir) => {
      // As a registration of a non-static qemu would be: the kernel opens the interpreter only at exec time,
      // inside the chroot, where /usr/libexec/qemu-binfmt/… does not exist.
      await writeControl(join(dir, 'register'), `:ibtest-aarch64-nofix:M:${await aarch64MagicAndMask()}:/usr/libexec/qemu-binfmt/aarch64-binfmt-P:P`);
      try {
        const result = await runCli(['shell', '--disk-image', input, '--verbose', '--command', 'uname -m']);
        expect(result.stderr).toContain(
          "binfmt_misc entry ibtest-aarch64-nofix would run the guest's arm64 programs with /usr/libexec/qemu-binfmt/aarch64-binfmt-P, but without the F (fix-binary) flag",
        );
        // The entry registered for the session was matched first (newest), so the command ran.
        expect(result.exitCode).toBe(0);
        expect(result.stdout).toBe('aarch64');
        expect(result.stderr).toMatch(/binfmt_misc entry imagebuilder-aarch64-\d+-\d+, removed at the end/);
        // Ours is gone; the host's stays as it was.
        expect((await readdir(dir)).sort()).toEqual(['ibtest-aarch64-nofix', 'register', 'status']);
      } finally {
        await writeControl(join(dir, 'ibtest-aarch64-nofix'), '-1');
      }
    });
    await expectNothingLeft(before);
  });
});
