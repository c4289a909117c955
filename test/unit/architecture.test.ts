import { writeFileSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, realpath, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { binfmtRegistration, enableEmulation, entryMatches, parseBinfmtEntry, type EmulationHost } from '../../src/chroot/emulation.js';
import { ARCHITECTURES, architectureOf, programArchitecture, runsNatively } from '../../src/util/architecture.js';
import { CleanupStack } from '../../src/util/cleanup.js';
import { hasProgramInterpreter, parseElfHeader } from '../../src/util/elf.js';
import { recordingRunner } from '../../src/util/exec.js';
import { createLogger } from '../../src/util/log.js';
import { craftElf, PT_INTERP, PT_LOAD } from '../helpers/elf.js';

const AARCH64 = { is64: true, littleEndian: true, machine: 0xb7 };
const X86_64 = { is64: true, littleEndian: true, machine: 0x3e };
const byDebianName = (name: string) => ARCHITECTURES.find((a) => a.debian === name)!;

describe('ELF headers name the architecture', () => {
  test("the host's own /bin/sh (a real ELF file), read as emulation reads it (root '/'), is what Node says this host is", async () => {
    const host = await programArchitecture('/');
    expect(host?.program).toBe(await realpath('/bin/sh'));
    const header = host?.header;
    expect(header).toBeDefined();
    const expected = { x64: 'amd64', arm64: 'arm64', ia32: 'i386', s390x: 's390x', riscv64: 'riscv64' }[process.arch as string];
    expect(architectureOf(header!)?.debian).toBe(expected);
    // Debian's /bin/sh (dash) is dynamically linked: it names its loader.
    expect(await hasProgramInterpreter('/bin/sh')).toBe(true);
  });

  test.each([
    [{ ...X86_64 }, 'amd64', 'x86_64', 'x86_64'],
    [{ is64: false, littleEndian: true, machine: 0x03 }, 'i386', 'i686', 'i386'],
    [{ ...AARCH64 }, 'arm64', 'aarch64', 'aarch64'],
    // EABI5 with EF_ARM_ABI_FLOAT_HARD (what Debian's armhf gcc writes), and EABI5 soft-float.
    [{ is64: false, littleEndian: true, machine: 0x28, flags: 0x05000400 }, 'armhf', 'armv7hl', 'arm'],
    [{ is64: false, littleEndian: true, machine: 0x28, flags: 0x05000200 }, 'armel', 'armv7l', 'arm'],
    [{ is64: true, littleEndian: true, machine: 0x15 }, 'ppc64el', 'ppc64le', 'ppc64le'],
    [{ is64: true, littleEndian: false, machine: 0x15 }, 'ppc64', 'ppc64', 'ppc64'],
    [{ is64: true, littleEndian: false, machine: 0x16 }, 's390x', 's390x', 's390x'],
    [{ is64: true, littleEndian: true, machine: 0xf3 }, 'riscv64', 'riscv64', 'riscv64'],
  ])('%j is %s (rpm %s, qemu-%s)', (fields, debian, rpm, qemu) => {
    const header = parseElfHeader(craftElf(fields));
    expect(header).toMatchObject({ machine: fields.machine, is64: fields.is64, littleEndian: fields.littleEndian });
    expect(architectureOf(header!)).toMatchObject({ debian, rpm, qemu });
  });

  test('not ELF, truncated, or an unknown machine', () => {
    expect(parseElfHeader(Buffer.from('#!/bin/sh\necho not elf\n'.padEnd(80)))).toBeUndefined();
    expect(parseElfHeader(craftElf(AARCH64).subarray(0, 40))).toBeUndefined();
    expect(architectureOf(parseElfHeader(craftElf({ ...AARCH64, machine: 0x1234 }))!)).toBeUndefined();
    // Big-endian aarch64 is not arm64.
    expect(architectureOf(parseElfHeader(craftElf({ ...AARCH64, littleEndian: false }))!)).toBeUndefined();
  });

  test('PT_INTERP in the program header table tells a dynamic program from a static one', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ib-unit-elf-'));
    try {
      await writeFile(join(dir, 'static'), craftElf({ ...X86_64, programHeaders: [PT_LOAD, PT_LOAD] }));
      await writeFile(join(dir, 'dynamic'), craftElf({ ...X86_64, programHeaders: [6, PT_INTERP, PT_LOAD] }));
      await writeFile(join(dir, 'dynamic32be'), craftElf({ is64: false, littleEndian: false, machine: 0x14, programHeaders: [PT_LOAD, PT_INTERP] }));
      await writeFile(join(dir, 'script'), '#!/bin/sh\n'.padEnd(100));
      expect(await hasProgramInterpreter(join(dir, 'static'))).toBe(false);
      expect(await hasProgramInterpreter(join(dir, 'dynamic'))).toBe(true);
      expect(await hasProgramInterpreter(join(dir, 'dynamic32be'))).toBe(true);
      expect(await hasProgramInterpreter(join(dir, 'script'))).toBeUndefined();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test("a guest's /bin/sh is resolved inside the guest: an absolute symlink does not reach the host's", async () => {
    const root = await mkdtemp(join(tmpdir(), 'ib-unit-guest-'));
    try {
      expect(await programArchitecture(root)).toBeUndefined();
      await mkdir(join(root, 'usr/bin'), { recursive: true });
      await symlink('usr/bin', join(root, 'bin'));
      // The host has a /usr/bin/dash of its own architecture; the guest's is aarch64.
      await writeFile(join(root, 'usr/bin/dash'), craftElf(AARCH64));
      await symlink('/usr/bin/dash', join(root, 'usr/bin/sh'));
      const found = await programArchitecture(root);
      expect(found?.program).toBe('/usr/bin/dash');
      expect(found?.architecture?.debian).toBe('arm64');
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });

  test('a host runs its own programs and, amd64, i386 ones; not another architecture', () => {
    const header = (fields: Parameters<typeof craftElf>[0]) => parseElfHeader(craftElf(fields))!;
    expect(runsNatively(header(X86_64), header(X86_64))).toBe(true);
    expect(runsNatively(header(X86_64), header({ is64: false, littleEndian: true, machine: 0x03 }))).toBe(true);
    expect(runsNatively(header(X86_64), header(AARCH64))).toBe(false);
    expect(runsNatively(header(AARCH64), header(X86_64))).toBe(false);
  });
});

describe('binfmt_misc registration', () => {
  test('aarch64: the exact line, magic and mask as qemu-binfmt-conf.sh and Debian define them, with F', () => {
    expect(binfmtRegistration('imagebuilder-aarch64-1', byDebianName('arm64'), '/usr/bin/qemu-aarch64-static')).toBe(
      ':imagebuilder-aarch64-1:M::' +
        '\\x7f\\x45\\x4c\\x46\\x02\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x00\\xb7\\x00:' +
        '\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\x00\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xfe\\xff\\xff\\xff:' +
        '/usr/bin/qemu-aarch64-static:F',
    );
    // x86_64 (for arm64 hosts) from qemu's scripts/qemu-binfmt-conf.sh: byte order and version bits masked.
    expect(binfmtRegistration('n', byDebianName('amd64'), '/q')).toBe(
      ':n:M::\\x7f\\x45\\x4c\\x46\\x02\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x00\\x3e\\x00:' +
        '\\xff\\xff\\xff\\xff\\xff\\xfe\\xfe\\x00\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xfe\\xff\\xff\\xff:/q:F',
    );
  });

  test("every architecture's magic and mask equal the installed qemu-user package's /usr/lib/binfmt.d files", async () => {
    const decode = (escaped: string) => Buffer.from(escaped.replace(/\\x([0-9a-f]{2})/gi, (_, hex) => String.fromCharCode(parseInt(hex, 16))), 'latin1').toString('hex');
    const compared: string[] = [];
    for (const architecture of ARCHITECTURES) {
      const text = await readFile(`/usr/lib/binfmt.d/qemu-${architecture.qemu}.conf`, 'utf8').catch(() => undefined);
      // Debian ships no entry for the host's own family (x86_64 and i386 on amd64).
      if (text === undefined) continue;
      const [, , , , magic, mask] = text.trim().split(':');
      expect({ qemu: architecture.qemu, magic: architecture.binfmtMagic, mask: architecture.binfmtMask }).toEqual({ qemu: architecture.qemu, magic: decode(magic), mask: decode(mask) });
      compared.push(architecture.qemu);
    }
    // bin/setup installs qemu-user-static: the foreign architectures of an amd64 host are all there.
    expect(compared).toEqual(expect.arrayContaining(['aarch64', 'arm', 'ppc64le', 'ppc64', 's390x', 'riscv64']));
  });

  test('entries parse as the kernel prints them and match as the kernel matches', () => {
    const entry = parseBinfmtEntry(
      'qemu-aarch64',
      'enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: POF\noffset 0\nmagic 7f454c460201010000000000000000000200b700\nmask ffffffffffffff00fffffffffffffffffeffffff\n',
    );
    expect(entry).toEqual({
      name: 'qemu-aarch64',
      enabled: true,
      interpreter: '/usr/libexec/qemu-binfmt/aarch64-binfmt-P',
      flags: 'POF',
      offset: 0,
      magic: Buffer.from('7f454c460201010000000000000000000200b700', 'hex'),
      mask: Buffer.from('ffffffffffffff00fffffffffffffffffeffffff', 'hex'),
    });
    expect(entryMatches(entry, craftElf(AARCH64))).toBe(true);
    // EI_OSABI is masked out; e_type EXEC (2) and DYN (3) both match; another machine does not.
    const gnu = craftElf(AARCH64);
    gnu[7] = 3;
    expect(entryMatches(entry, gnu)).toBe(true);
    expect(entryMatches(entry, craftElf(X86_64))).toBe(false);
    expect(entryMatches({ ...entry, enabled: false }, craftElf(AARCH64))).toBe(false);
    expect(parseBinfmtEntry('jar', 'disabled\ninterpreter /usr/bin/jexec\nflags: \nextension .jar\n')).toMatchObject({ enabled: false, flags: '', magic: undefined });
  });
});

describe('enableEmulation (a fake host tree; the real one is test/integration/foreign-arch.test.ts)', () => {
  let dir: string;
  let host: EmulationHost;
  let guest: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ib-unit-emulation-'));
    host = { root: join(dir, 'host'), mountsFile: join(dir, 'mounts'), searchPath: [join(dir, 'host/usr/bin')], tmpDir: join(dir, 'tmp') };
    guest = join(dir, 'guest');
    for (const path of ['host/bin', 'host/usr/bin', 'guest/bin', 'tmp']) await mkdir(join(dir, path), { recursive: true });
    await writeFile(join(host.root, 'bin/sh'), craftElf({ ...X86_64, programHeaders: [PT_INTERP] }));
    await writeFile(join(guest, 'bin/sh'), craftElf(AARCH64));
    await writeFile(host.mountsFile, 'proc /proc proc rw 0 0\n');
  });
  afterEach(() => rm(dir, { recursive: true, force: true }));

  const log = createLogger({ write: () => undefined });
  const fakeBinfmt = async (path: string, entries: Record<string, string> = {}) => {
    await mkdir(path, { recursive: true });
    await writeFile(join(path, 'status'), 'enabled\n');
    await writeFile(join(path, 'register'), '');
    for (const [name, text] of Object.entries(entries)) await writeFile(join(path, name), text);
    await writeFile(host.mountsFile, `proc /proc proc rw 0 0\nbinfmt_misc ${path} binfmt_misc rw,relatime 0 0\n`);
  };
  const AARCH64_ENTRY = (interpreter: string, flags: string) =>
    `enabled\ninterpreter ${interpreter}\nflags: ${flags}\noffset 0\nmagic 7f454c460201010000000000000000000200b700\nmask ffffffffffffff00fffffffffffffffffeffffff\n`;

  test('a guest of the host architecture runs natively: nothing is run, mounted or registered', async () => {
    await writeFile(join(guest, 'bin/sh'), craftElf(X86_64));
    const run = recordingRunner();
    const cleanup = new CleanupStack(log);
    expect(await enableEmulation(guest, { run, log, cleanup, host })).toMatchObject({ mode: 'native', guest: { debian: 'amd64' } });
    expect(run.calls).toEqual([]);
    expect(cleanup.size).toBe(0);
  });

  test('no emulator installed: a clear MISSING_TOOL error naming the packages, before anything is touched', async () => {
    const run = recordingRunner();
    const cleanup = new CleanupStack(log);
    const error = await enableEmulation(guest, { run, log, cleanup, host }).catch((e: unknown) => e);
    expect(error).toMatchObject({
      code: 'MISSING_TOOL',
      message: 'the guest is arm64 (/bin/sh) and this host is amd64: its programs need the static qemu-aarch64 emulator, which is not installed',
    });
    expect((error as { hint: string }).hint).toContain('apt-get install qemu-user-static');
    expect((error as { hint: string }).hint).toContain('qemu-user-binfmt');
    expect(run.calls).toEqual([]);
    expect(cleanup.size).toBe(0);
    expect(await readdir(host.tmpDir)).toEqual([]);
  });

  test('only a dynamically linked qemu-aarch64 (Debian 12 qemu-user): the same error, saying why it cannot serve', async () => {
    await writeFile(join(host.root, 'usr/bin/qemu-aarch64'), craftElf({ ...X86_64, programHeaders: [PT_INTERP, PT_LOAD] }));
    const run = recordingRunner();
    await expect(enableEmulation(guest, { run, log, cleanup: new CleanupStack(log), host })).rejects.toMatchObject({
      code: 'MISSING_TOOL',
      message: expect.stringContaining(`(${join(host.root, 'usr/bin/qemu-aarch64')} is dynamically linked: it cannot start inside the guest)`),
    });
    expect(run.calls).toEqual([]);
  });

  test('an enabled matching entry with F is used as it is: nothing registered', async () => {
    const binfmt = join(dir, 'binfmt');
    await fakeBinfmt(binfmt, { 'qemu-aarch64': AARCH64_ENTRY('/usr/libexec/qemu-binfmt/aarch64-binfmt-P', 'POF') });
    const run = recordingRunner();
    const cleanup = new CleanupStack(log);
    expect(await enableEmulation(guest, { run, log, cleanup, host })).toEqual({
      mode: 'existing', guest: byDebianName('arm64'), entry: 'qemu-aarch64', interpreter: '/usr/libexec/qemu-binfmt/aarch64-binfmt-P',
    });
    expect(await readFile(join(binfmt, 'register'), 'utf8')).toBe('');
    expect(run.calls).toEqual([]);
    expect(cleanup.size).toBe(0);
  });

  test('an entry without F: explained in a warning, and an entry with F registered in the mounted binfmt_misc, removed on release', async () => {
    const binfmt = join(dir, 'binfmt');
    await fakeBinfmt(binfmt, { 'qemu-aarch64': AARCH64_ENTRY('/usr/bin/qemu-aarch64-static', 'P') });
    await writeFile(join(host.root, 'usr/bin/qemu-aarch64-static'), craftElf({ ...X86_64, programHeaders: [PT_LOAD] }));
    const warnings: string[] = [];
    const capture = createLogger({ write: (text) => void warnings.push(text) });
    const run = recordingRunner();
    const cleanup = new CleanupStack(capture);
    const emulation = await enableEmulation(guest, { run, log: capture, cleanup, host });
    const entry = `imagebuilder-aarch64-${process.pid}-`;
    expect(emulation).toMatchObject({ mode: 'registered', entry: expect.stringMatching(new RegExp(`^${entry}\\d+$`)), interpreter: join(host.root, 'usr/bin/qemu-aarch64-static') });
    expect(capture.warnings.join('\n')).toContain('binfmt_misc entry qemu-aarch64 would run the guest\'s arm64 programs with /usr/bin/qemu-aarch64-static, but without the F (fix-binary) flag');
    const name = (emulation as { entry: string }).entry;
    expect(await readFile(join(binfmt, 'register'), 'utf8')).toBe(binfmtRegistration(name, byDebianName('arm64'), join(host.root, 'usr/bin/qemu-aarch64-static')));
    expect(run.calls).toEqual([]); // the host's own binfmt_misc mount: nothing mounted
    // The kernel would have made the entry file; releasing writes -1 to it.
    await writeFile(join(binfmt, name), '');
    expect(await cleanup.unwind()).toEqual([]);
    expect(await readFile(join(binfmt, name), 'utf8')).toBe('-1');
  });

  test('no binfmt_misc mounted: a private mount is made for the session and unmounted on release', async () => {
    await writeFile(join(host.root, 'usr/bin/qemu-aarch64-static'), craftElf({ ...X86_64, programHeaders: [PT_LOAD] }));
    // What the kernel shows in a fresh binfmt_misc mount.
    const run = recordingRunner((call) => {
      if (call.file === 'mount') {
        writeFileSync(join(call.args[3], 'status'), 'enabled\n');
        writeFileSync(join(call.args[3], 'register'), '');
      }
      return undefined;
    });
    const cleanup = new CleanupStack(log);
    const emulation = await enableEmulation(guest, { run, log, cleanup, host });
    expect(emulation.mode).toBe('registered');
    const [mountPoint] = await readdir(host.tmpDir);
    expect(mountPoint).toMatch(/^imagebuilder-binfmt-/);
    const path = join(host.tmpDir, mountPoint);
    expect(run.calls.map((c) => [c.file, ...c.args])).toEqual([['mount', '-t', 'binfmt_misc', 'binfmt_misc', path]]);
    expect(await readFile(join(path, 'register'), 'utf8')).toMatch(/^:imagebuilder-aarch64-\d+-\d+:M::\\x7f\\x45\\x4c\\x46.*:F$/);
    // What the kernel leaves after the umount: an empty directory.
    await rm(join(path, 'register'));
    await rm(join(path, 'status'));
    expect(await cleanup.unwind()).toEqual([]);
    expect(run.calls.map((c) => [c.file, ...c.args])).toEqual([['mount', '-t', 'binfmt_misc', 'binfmt_misc', path], ['umount', path]]);
    expect(await readdir(host.tmpDir)).toEqual([]);
  });

  test("another run's private binfmt_misc mount is not used: it goes away when that run ends", async () => {
    await fakeBinfmt(join(host.tmpDir, 'imagebuilder-binfmt-other'), { 'imagebuilder-aarch64-1-1': AARCH64_ENTRY('/usr/bin/qemu-aarch64-static', 'F') });
    await writeFile(join(host.root, 'usr/bin/qemu-aarch64-static'), craftElf({ ...X86_64, programHeaders: [PT_LOAD] }));
    const run = recordingRunner((call) => {
      if (call.file === 'mount') writeFileSync(join(call.args[3], 'register'), '');
      return undefined;
    });
    const cleanup = new CleanupStack(log);
    expect((await enableEmulation(guest, { run, log, cleanup, host })).mode).toBe('registered');
    expect(run.calls[0].args.slice(0, 3)).toEqual(['-t', 'binfmt_misc', 'binfmt_misc']);
    expect(run.calls[0].args[3]).not.toContain('imagebuilder-binfmt-other');
    await rm(join(run.calls[0].args[3], 'register'));
    expect(await cleanup.unwind()).toEqual([]);
  });
});
