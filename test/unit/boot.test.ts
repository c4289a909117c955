import { link, lstat, mkdir, mkdtemp, readdir, readFile, readlink, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { execa } from 'execa';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AGENT_DIR, AGENT_UNIT, agentScript, agentUserData, EMERGENCY_UNIT, installAgent } from '../../src/boot/agent.js';
import { makeIso } from '../../src/boot/iso9660.js';
import { connect } from 'node:net';
import { CHANNEL_NAME, parseReport, readChannel } from '../../src/boot/channel.js';
import { ConsoleLog } from '../../src/boot/console.js';
import { inCgroups } from '../../src/chroot/sandbox.js';
import { hasEsp, machineFor, PARTITION_TABLE_BYTES, qemuArgs, type MachineSpec } from '../../src/boot/firmware.js';
import { PROBE_EXIT_STATUS, probeBootSector } from '../../src/boot/kvm.js';

const ESP = 'c12a7328-f81f-11d2-ba4b-00a0c93ec93b';
const LINUX = '0fc63daf-8483-4772-8e79-3d69d8477de4';

/** A GUID as GPT stores it: the first three fields little-endian. */
function guidBytes(guid: string): Buffer {
  const hex = guid.replace(/-/g, '');
  const b = Buffer.from(hex, 'hex');
  return Buffer.concat([Buffer.from(b.subarray(0, 4)).reverse(), Buffer.from(b.subarray(4, 6)).reverse(), Buffer.from(b.subarray(6, 8)).reverse(), b.subarray(8)]);
}

function gptDisk(types: string[]): Buffer {
  const disk = Buffer.alloc(PARTITION_TABLE_BYTES);
  disk[446 + 4] = 0xee; // protective MBR
  disk.writeUInt16LE(0xaa55, 510);
  disk.write('EFI PART', 512, 'latin1');
  disk.writeBigUInt64LE(2n, 512 + 72);
  disk.writeUInt32LE(128, 512 + 80);
  disk.writeUInt32LE(128, 512 + 84);
  types.forEach((type, i) => guidBytes(type).copy(disk, 1024 + i * 128));
  return disk;
}

function mbrDisk(types: number[]): Buffer {
  const disk = Buffer.alloc(PARTITION_TABLE_BYTES);
  types.forEach((type, i) => (disk[446 + i * 16 + 4] = type));
  disk.writeUInt16LE(0xaa55, 510);
  return disk;
}

describe('boot: the firmware a disk needs', () => {
  test('GPT with an EFI System Partition: UEFI, wherever the ESP is', () => {
    expect(hasEsp(gptDisk([ESP, LINUX]))).toBe(true);
    expect(hasEsp(gptDisk([LINUX, LINUX, ESP]))).toBe(true);
  });
  test('GPT without one, MBR without 0xEF, no table at all: BIOS', () => {
    expect(hasEsp(gptDisk([LINUX]))).toBe(false);
    expect(hasEsp(mbrDisk([0x83]))).toBe(false);
    expect(hasEsp(Buffer.alloc(PARTITION_TABLE_BYTES))).toBe(false);
    expect(hasEsp(Buffer.alloc(100))).toBe(false);
  });
  test('MBR with a 0xEF partition: UEFI', () => {
    expect(hasEsp(mbrDisk([0x83, 0xef]))).toBe(true);
  });
  test('a GPT header naming entries beyond what was read is not followed', () => {
    const disk = gptDisk([LINUX]);
    disk.writeBigUInt64LE(1n << 40n, 512 + 72);
    expect(hasEsp(disk)).toBe(false);
  });
});

describe('boot: the report on the virtio-serial channel', () => {
  const frame = (status: number, output: string) => Buffer.concat([Buffer.from(`imagebuilder-boot-result status=${status} bytes=${Buffer.byteLength(output)}\n`), Buffer.from(output)]);
  test('read once all of it has arrived, UTF-8 intact', () => {
    const whole = frame(3, 'running\n6.1.0 ✓\n');
    for (let cut = 0; cut < whole.length; cut++) expect(parseReport(whole.subarray(0, cut), 1 << 20)).toBeUndefined();
    expect(parseReport(whole, 1 << 20)).toEqual({ exitCode: 3, output: 'running\n6.1.0 ✓\n' });
  });
  test('anything else, or more than is taken, is an error', () => {
    expect(() => parseReport(Buffer.from('hello there\n'), 100)).toThrow(/something other than a report/);
    expect(() => parseReport(Buffer.alloc(300, 0x41), 100)).toThrow(/something other than a report/);
    expect(() => parseReport(frame(0, 'x'.repeat(200)), 100)).toThrow(/more than the 100 taken/);
  });
});

describe('boot: reading the channel', () => {
  test('listens before qemu starts, takes its one connection (no second client heard), reads a report sent in pieces', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ib-boot-channel-'));
    const path = join(dir, 'results.sock');
    const channel = await readChannel(path, 1 << 20);
    try {
      // Connectable by qemu's uid (nobody): the directory it is in is what keeps others out.
      expect((await stat(path)).mode & 0o777).toBe(0o666);
      const qemu = connect(path);
      await new Promise((resolve) => qemu.once('connect', resolve));
      qemu.write('imagebuilder-boot-result status=0 by');
      // A second client (after qemu's) is refused: the server took one connection and closed.
      const second = connect(path);
      const refused = await new Promise<string>((resolve) => { second.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error')); second.once('connect', () => resolve('connected')); });
      expect(refused).toMatch(/ECONNREFUSED|ENOENT/);
      // The rest a byte at a time, past the first buffer's 4 KiB: gathered whole.
      const rest = Buffer.from(`tes=${8000 + 3}\nok\n${'z'.repeat(8000)}`);
      for (const byte of rest) qemu.write(Buffer.from([byte]));
      qemu.end();
      await expect(channel.report).resolves.toEqual({ exitCode: 0, output: `ok\n${'z'.repeat(8000)}` });
    } finally {
      channel.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('boot: the qemu command line', () => {
  const spec: MachineSpec = { arch: 'amd64', qemu: 'qemu-system-x86_64', machine: 'q35', bios: true, uefi: { code: '/usr/share/OVMF/OVMF_CODE_4M.fd', vars: '/usr/share/OVMF/OVMF_VARS_4M.fd', package: 'ovmf' } };
  const request = { spec, disk: '/w/disk.qcow2', image: { fd: 3, format: 'qcow2' }, uefiVars: '/w/efivars.fd', consoleSocket: '/w/console.sock', channelSocket: '/w/results.sock', channelName: CHANNEL_NAME, memoryMiB: 1024, cpus: 2 };
  test('UEFI: the firmware read-only, a copy of its variables writable; no network; console and channel our sockets, qemu their client', () => {
    const args = qemuArgs({ ...request, accel: 'tcg', firmware: 'uefi' }).join(' ');
    expect(args).toContain('-machine q35,accel=tcg');
    expect(args).toContain('if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd');
    expect(args).toContain('if=pflash,format=raw,unit=1,file=/w/efivars.fd');
    expect(args).toContain('-nic none');
    expect(args).toContain('-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny');
    expect(args).not.toMatch(/-netdev|user,|hostfwd/);
    // The console is our socket (our bounded reader), connected to before anything else, never a file qemu grows.
    expect(args).toContain('-chardev socket,id=console0,path=/w/console.sock,server=off -serial chardev:console0');
    expect(args.indexOf('id=console0')).toBeLessThan(args.indexOf('id=results0'));
    expect(args).not.toContain('file:');
    expect(args).toContain('socket,id=results0,path=/w/results.sock,server=off');
    expect(args).not.toContain('server=on');
    expect(args).toContain(`virtserialport,bus=vser0.0,chardev=results0,name=${CHANNEL_NAME}`);
    // The image by its inherited descriptor (its path is not in qemu's box), under the overlay, formats named.
    expect(args).toContain('-add-fd fd=3,set=1,opaque=image');
    const disk = JSON.parse(args.split(' -blockdev ')[1].split(' ')[0]);
    expect(disk).toEqual({
      'node-name': 'disk0', driver: 'qcow2', discard: 'unmap', file: { driver: 'file', filename: '/w/disk.qcow2' },
      backing: { 'node-name': 'image', driver: 'qcow2', 'read-only': true, backing: null, file: { driver: 'file', filename: '/dev/fdset/1', 'read-only': true } },
    });
    expect(args).toContain('virtio-blk-pci,drive=disk0,bootindex=0');
  });
  test('a raw image: its node has no backing field to clear; a VMDK\'s is cleared', () => {
    const args = qemuArgs({ ...request, image: { fd: 3, format: 'raw' }, accel: 'tcg', firmware: 'bios' });
    const disk = JSON.parse(args[args.indexOf('-blockdev') + 1]);
    expect(disk.backing).toEqual({ 'node-name': 'image', driver: 'raw', 'read-only': true, file: { driver: 'file', filename: '/dev/fdset/1', 'read-only': true } });
    // A VMDK may name a parent too: told it has none.
    const vmdk = qemuArgs({ ...request, image: { fd: 3, format: 'vmdk' }, accel: 'tcg', firmware: 'bios' });
    expect(JSON.parse(vmdk[vmdk.indexOf('-blockdev') + 1]).backing).toMatchObject({ driver: 'vmdk', backing: null });
  });
  test('BIOS: no pflash (SeaBIOS, qemu\'s own); KVM uses the host CPU', () => {
    const args = qemuArgs({ ...request, accel: 'kvm', firmware: 'bios' }).join(' ');
    expect(args).not.toContain('pflash');
    expect(args).toContain('-cpu host');
    expect(args).toContain('accel=kvm');
  });
  test('direct kernel: the kernel, initramfs and command line given to qemu, no pflash', () => {
    const args = qemuArgs({ ...request, accel: 'tcg', firmware: 'direct-kernel', kernel: { kernel: '/w/vmlinuz', initrd: '/w/initrd', append: 'root=UUID=abc ro console=ttyS0,115200n8 panic=-1' } });
    expect(args).not.toContain('pflash');
    const at = args.indexOf('-kernel');
    expect(args.slice(at, at + 6)).toEqual(['-kernel', '/w/vmlinuz', '-initrd', '/w/initrd', '-append', 'root=UUID=abc ro console=ttyS0,115200n8 panic=-1']);
    // qemu's kernel loader has boot index 0; the disk must not claim it too (qemu refuses to start).
    expect(args).toContain('virtio-blk-pci,drive=disk0');
    expect(args.join(' ')).not.toContain('bootindex');
  });
});

describe('boot: arm64 guests', () => {
  test('the virt machine through AAVMF, emulated with QEMU\'s own pointer authentication', () => {
    const spec: MachineSpec = { arch: 'arm64', qemu: 'qemu-system-aarch64', machine: 'virt', bios: false, uefi: { code: '/usr/share/AAVMF/AAVMF_CODE.fd', vars: '/usr/share/AAVMF/AAVMF_VARS.fd', package: 'qemu-efi-aarch64' } };
    const args = qemuArgs({ spec, accel: 'tcg', firmware: 'uefi', disk: '/w/disk.qcow2', image: { fd: 3, format: 'qcow2' }, uefiVars: '/w/vars.fd', consoleSocket: '/w/console.sock', channelSocket: '/w/r.sock', channelName: CHANNEL_NAME, memoryMiB: 1024, cpus: 2 }).join(' ');
    expect(args).toContain('-machine virt,accel=tcg');
    expect(args).toContain('-cpu max,pauth-impdef=on');
    expect(args).toContain('if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/AAVMF/AAVMF_CODE.fd');
    expect(args).toContain('-nic none');
  });
  test('machineFor: BIOS is refused for arm64 (UEFI only)', async () => {
    await expect(machineFor('arm64', 'bios')).rejects.toThrow(/an arm64 guest boots only through UEFI/);
  });
});

describe('boot: the KVM probe', () => {
  test('its boot sector: mov al, 0x2a; out 0xf4, al; hlt; jmp back to the hlt; the boot signature', () => {
    const sector = probeBootSector();
    expect(sector.length).toBe(512);
    expect([...sector.subarray(0, 7)]).toEqual([0xb0, 0x2a, 0xe6, 0xf4, 0xf4, 0xeb, 0xfd]);
    expect(sector.readUInt16LE(510)).toBe(0xaa55);
    // isa-debug-exit ends qemu with (value << 1) | 1.
    expect(PROBE_EXIT_STATUS).toBe(85);
  });
});

describe('boot: the check written into the overlay', () => {
  let root: string;
  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'ib-boot-agent-'));
  });
  afterEach(async () => {
    await rm(root, { recursive: true, force: true });
  });
  test('the script, its runner and an enabled unit', async () => {
    await installAgent(root, 'uname -r');
    expect(await readFile(join(root, AGENT_DIR, 'check'), 'utf8')).toBe('uname -r\n');
    expect(await readFile(join(root, AGENT_DIR, 'report'), 'utf8')).toBe(agentScript());
    const unit = await readFile(join(root, 'etc/systemd/system', AGENT_UNIT), 'utf8');
    expect(unit).toContain(`ExecStart=/bin/sh ${AGENT_DIR}/report`);
    expect(unit).not.toContain('Type=oneshot');
    // A runner under way survives systemd isolating emergency.target (the emergency one would not take over).
    expect(unit).toContain('IgnoreOnIsolate=yes');
    const wants = join(root, 'etc/systemd/system/multi-user.target.wants', AGENT_UNIT);
    expect((await lstat(wants)).isSymbolicLink()).toBe(true);
    expect(await readlink(wants)).toBe(`/etc/systemd/system/${AGENT_UNIT}`);
    // A boot that stops in emergency or rescue mode still runs the check (without sysinit.target, which failed).
    const emergency = await readFile(join(root, 'etc/systemd/system', EMERGENCY_UNIT), 'utf8');
    expect(emergency).toContain('DefaultDependencies=no');
    expect(emergency).toContain(`ExecStart=/bin/sh ${AGENT_DIR}/report`);
    for (const target of ['emergency.target', 'rescue.target']) {
      expect(await readlink(join(root, `etc/systemd/system/${target}.wants`, EMERGENCY_UNIT))).toBe(`/etc/systemd/system/${EMERGENCY_UNIT}`);
    }
    // Either unit may start; the runner reports once.
    expect(agentScript()).toContain('mkdir /run/imagebuilder-boot.started 2>/dev/null || exit 0');
  });
  test('when cloud-init starts the check, only the emergency unit is installed', async () => {
    await installAgent(root, 'true', false);
    expect(await readFile(join(root, 'etc/systemd/system', EMERGENCY_UNIT), 'utf8')).toContain('WantedBy=emergency.target rescue.target');
    await expect(lstat(join(root, 'etc/systemd/system', AGENT_UNIT))).rejects.toThrow(/ENOENT/);
    await expect(lstat(join(root, 'etc/systemd/system/multi-user.target.wants', AGENT_UNIT))).rejects.toThrow(/ENOENT/);
  });
  test('what the guest planted at those paths is replaced, never written through', async () => {
    const outside = await mkdtemp(join(tmpdir(), 'ib-boot-outside-'));
    try {
      await writeFile(join(outside, 'victim'), 'host file\n');
      await mkdir(join(root, 'etc/systemd/system/multi-user.target.wants'), { recursive: true });
      await symlink(join(outside, 'victim'), join(root, 'etc/systemd/system', AGENT_UNIT));
      await symlink(join(outside, 'victim'), join(root, 'etc/systemd/system/multi-user.target.wants', AGENT_UNIT));
      // A directory of the guest that is a symlink to the host's: followed inside the guest, not onto the host.
      await symlink(outside, join(root, 'etc/imagebuilder-boot'));
      await installAgent(root, 'true');
      expect(await readFile(join(outside, 'victim'), 'utf8')).toBe('host file\n');
      expect(await readdir(outside)).toEqual(['victim']);
      expect((await lstat(join(root, 'etc/systemd/system', AGENT_UNIT))).isFile()).toBe(true);
      expect(await readFile(join(root, outside, 'check'), 'utf8')).toBe('true\n');
    } finally {
      await rm(outside, { recursive: true, force: true });
    }
  });

  test('the runner reports on the named port and powers off', () => {
    const script = agentScript();
    expect(script).toContain(`name=${CHANNEL_NAME}`);
    expect(script).toContain('/dev/virtio-ports/$name');
    expect(script).toContain("printf 'imagebuilder-boot-result status=%d bytes=%d\\n'");
    expect(script).toContain('systemctl poweroff');
  });
});

describe('boot: the cloud-init NoCloud seed', () => {
  const iso = makeIso('cidata', [
    { name: 'user-data', content: Buffer.from('#cloud-config\n{}\n') },
    { name: 'meta-data', content: Buffer.from('instance-id: iid-1\n') },
  ]);
  const record = (sector: number, index: number) => {
    let at = sector * 2048;
    for (let i = 0; i < index; i++) at += iso[at];
    return iso.subarray(at, at + iso[at]);
  };
  test('an ISO 9660 volume labelled cidata: primary descriptor, terminator, sizes both-endian', () => {
    expect(iso.length % 2048).toBe(0);
    expect(iso.toString('latin1', 16 * 2048 + 1, 16 * 2048 + 6)).toBe('CD001');
    expect(iso[16 * 2048]).toBe(1);
    expect(iso.toString('latin1', 16 * 2048 + 40, 16 * 2048 + 72).trimEnd()).toBe('cidata');
    expect(iso.readUInt32LE(16 * 2048 + 80)).toBe(iso.length / 2048);
    expect(iso.readUInt32BE(16 * 2048 + 84)).toBe(iso.length / 2048);
    expect(iso[17 * 2048]).toBe(255);
  });
  test('the root directory: . and .., then the files in name order, each pointing at its content', () => {
    const root = iso.readUInt32LE(16 * 2048 + 156 + 2);
    expect(record(root, 0)[33]).toBe(0);
    expect(record(root, 1)[33]).toBe(1);
    const names = [2, 3].map((i) => record(root, i)).map((r) => ({ name: r.toString('latin1', 33, 33 + r[32]), extent: r.readUInt32LE(2), size: r.readUInt32LE(10) }));
    expect(names.map((n) => n.name)).toEqual(['META-DATA.;1', 'USER-DATA.;1']);
    expect(iso.toString('utf8', names[0].extent * 2048, names[0].extent * 2048 + names[0].size)).toBe('instance-id: iid-1\n');
    expect(iso.toString('utf8', names[1].extent * 2048, names[1].extent * 2048 + names[1].size)).toBe('#cloud-config\n{}\n');
  });
  test('names it cannot write are refused', () => {
    expect(() => makeIso('cidata', [{ name: 'Network Config', content: Buffer.alloc(1) }])).toThrow(/not supported/);
  });
  test('the user-data writes the check and its runner and starts the runner as a unit of its own', () => {
    const text = agentUserData('uname -r');
    expect(text.startsWith('#cloud-config\n')).toBe(true);
    const config = JSON.parse(text.slice('#cloud-config\n'.length));
    expect(config.write_files.map((f: { path: string }) => f.path)).toEqual([`${AGENT_DIR}/check`, `${AGENT_DIR}/report`]);
    expect(Buffer.from(config.write_files[0].content, 'base64').toString()).toBe('uname -r\n');
    expect(Buffer.from(config.write_files[1].content, 'base64').toString()).toBe(agentScript());
    expect(config.runcmd[0].slice(0, 2)).toEqual(['systemd-run', '--no-block']);
  });
});

describe('boot: the console log is bounded', () => {
  test('a console within the limit is kept whole', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'console-'));
    const log = new ConsoleLog(join(dir, 'console.log'), { maxBytes: 1000, endBytes: 100 });
    log.write(Buffer.from('firmware\n'));
    log.write(Buffer.from('kernel\n'));
    log.close();
    expect(await readFile(join(dir, 'console.log'), 'utf8')).toBe('firmware\nkernel\n');
    await rm(dir, { recursive: true });
  });
  test('what was at its name is never written through: a link, a hard link to another file, a FIFO are replaced by a new file', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'console-'));
    const precious = join(dir, 'precious');
    await writeFile(precious, 'precious\n');
    for (const plant of [() => symlink(precious, join(dir, 'console.log')), () => link(precious, join(dir, 'console.log')), () => execa('mkfifo', [join(dir, 'console.log')])]) {
      await rm(join(dir, 'console.log'), { force: true });
      await plant();
      const log = new ConsoleLog(join(dir, 'console.log'), { maxBytes: 1000, endBytes: 100 });
      log.write(Buffer.from('ssh-ed25519 AAAA guest\n'));
      log.close();
      expect((await lstat(join(dir, 'console.log'))).isFile()).toBe(true);
      expect(await readFile(join(dir, 'console.log'), 'utf8')).toBe('ssh-ed25519 AAAA guest\n');
      expect(await readFile(precious, 'utf8')).toBe('precious\n');
    }
    await rm(dir, { recursive: true });
  });
  test('a directory at its name is an error naming the results directory, not a raw EISDIR', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'console-'));
    await mkdir(join(dir, 'console.log'));
    expect(() => new ConsoleLog(join(dir, 'console.log'))).toThrow(expect.objectContaining({ code: 'ENVIRONMENT', message: expect.stringContaining(`cannot write the console log ${join(dir, 'console.log')}`) }));
    await rm(dir, { recursive: true });
  });
  test('a flood keeps its beginning and its end, says how much was dropped between, and never grows past the limit', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'console-'));
    const log = new ConsoleLog(join(dir, 'console.log'), { maxBytes: 1000, endBytes: 100 });
    log.write(Buffer.from('BEGIN\n'));
    for (let i = 0; i < 10_000; i++) log.write(Buffer.from(`flood line ${i}\n`));
    log.write(Buffer.from('LAST WORDS\n'));
    log.close();
    const text = await readFile(join(dir, 'console.log'), 'utf8');
    const total = 6 + Array.from({ length: 10_000 }, (_, i) => `flood line ${i}\n`.length).reduce((a, b) => a + b, 0) + 11;
    expect(text.startsWith('BEGIN\nflood line 0\n')).toBe(true);
    expect(text.endsWith('LAST WORDS\n')).toBe(true);
    const marker = /\n\[imagebuilder: (\d+) bytes of console output dropped here; the first 900 and the last 100 are kept\]\n/.exec(text);
    expect(marker).not.toBeNull();
    expect(Number(marker![1])).toBe(total - 1000);
    expect(Buffer.byteLength(text) - marker![0].length).toBe(1000);
    await rm(dir, { recursive: true });
  });
});

describe('boot: qemu joins its cgroup first', () => {
  test('a cgroup that cannot be joined stops it, said on stderr (exit 125): never run without its limits', async () => {
    const [file, args] = inCgroups([{ dir: '/nonexistent-cgroup', counters: async () => ({ oomKills: 0, pidsRefused: 0 }) }], ['echo', ['ran']]);
    const result = await execa(file, args, { reject: false });
    expect([result.exitCode, result.stdout]).toEqual([125, '']);
    expect(result.stderr).toMatch(/\nimagebuilder: could not join the cgroup \/nonexistent-cgroup\/cgroup\.procs$/);
    expect(inCgroups([], ['echo', ['ran']])).toEqual(['echo', ['ran']]);
  });
});
