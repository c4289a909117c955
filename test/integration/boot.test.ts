import { mkdtemp, readdir, readFile, readlink, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { bootAndRun, type BootOptions, type BootResult } from '../../src/boot/boot.js';
import { bootKvmVerdictFile, PROBE_EXIT_STATUS, probeBootKvm, probeBootSector } from '../../src/boot/kvm.js';
import { execRunner } from '../../src/util/exec.js';
import { BOX_UIDS, boxUidLockName, claimBoxUid } from '../../src/util/box-uid.js';
import { HOST_LOCK_DIR } from '../../src/util/lock.js';
import { CleanupStack } from '../../src/util/cleanup.js';
import { startBuild, withResources } from '../../src/pipeline/context.js';
import { ImageBuilderError } from '../../src/util/errors.js';
import { createLogger } from '../../src/util/log.js';
import { fixtureImage } from '../helpers/fixtures.js';
import { leftoversUnder, NOTHING_LEFT, REPO, sha256 } from '../helpers/host.js';

/**
 * Booting a real image: the efi-boot fixture (Debian 12 with its cloud kernel, GRUB at the ESP's removable path)
 * in qemu under TCG, whatever this host's KVM, through OVMF. The check runs in the booted guest and its output
 * comes back over virtio-serial; the image is never written, and nothing of the boot is left on the host.
 */
describe('boot: a throw-away overlay of an image booted in qemu, a check run in it', () => {
  let work: string;
  let tmp: string;
  let runDir: string;
  let image: string;
  let cloudInitImage: string;
  beforeAll(async () => {
    work = await mkdtemp('/var/tmp/ib-boot-');
    tmp = await mkdtemp('/var/tmp/ib-boot-tmp-');
    runDir = await mkdtemp('/var/tmp/ib-boot-run-');
    image = await fixtureImage('efi-boot');
    cloudInitImage = await fixtureImage('efi-boot', 'qcow2', { cloudInit: true });
    await fixtureImage('efi-boot', 'qcow2', { arch: 'arm64' });
  });
  afterAll(async () => {
    await rm(work, { recursive: true, force: true });
    await rm(tmp, { recursive: true, force: true });
    await rm(runDir, { recursive: true, force: true });
  });

  const logged: string[] = [];
  const boot = (options: BootOptions, disk = image): Promise<BootResult> => {
    const log = createLogger({ level: 'debug', write: (text) => void logged.push(text) });
    const start = startBuild({ log, workDir: tmp, cacheDir: join(work, 'cache'), runDir });
    return withResources(start, { workDir: tmp, runDir }, (context) => bootAndRun(context, disk, options));
  };
  // qemu's own command line names only paths in its box; its box's (bwrap's) names the work directory.
  const qemusOfThisTest = async () =>
    (await execa('ps', ['-eo', 'pid=,args='])).stdout.split('\n').filter((line) => /qemu-system/.test(line) && (line.includes(tmp) || line.includes('-name imagebuilder-boot')));
  /** qemu's process itself (not its box's), once it runs: its pid. */
  const qemuProcess = async (deadline = Date.now() + 120_000) => {
    for (;;) {
      const own = (await execa('ps', ['-eo', 'pid=,comm=,args='])).stdout.split('\n').map((line) => line.trim().split(/\s+/)).find(([, comm, ...args]) => comm.startsWith('qemu-system') && args.join(' ').includes('-name imagebuilder-boot'));
      if (own) return Number(own[0]);
      if (Date.now() > deadline) throw new Error('qemu never started');
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  };

  test('UEFI under TCG: systemd comes up, the check runs, its output and exit status come back; the image is untouched; qemu runs unprivileged in a box', async () => {
    const before = await sha256(image);
    const results = join(work, 'results');
    const booting = boot({
      script: 'systemctl is-system-running --wait\nuname -r\ncat /etc/os-release\nsystemctl --failed --no-legend --plain\nexit 3\n',
      accel: 'tcg',
      resultsDir: results,
    });
    booting.catch(() => undefined);
    // What a guest that broke out of qemu would be: a uid of its own, no capability in any set, no_new_privs, two
    // seccomp filters (ours, from its box, and qemu's own -sandbox); seeing
    // the host's /usr and the VM's directory, not the host's filesystem nor the image's path (a descriptor only).
    const pid = await qemuProcess();
    // qemu applies its own filter (-sandbox) while it parses its options: read once it has.
    let status = await readFile(`/proc/${pid}/status`, 'utf8');
    for (const until = Date.now() + 20_000; !/^Seccomp_filters:\s*2$/m.test(status) && Date.now() < until; ) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      status = await readFile(`/proc/${pid}/status`, 'utf8');
    }
    const field = (name: string) => new RegExp(`^${name}:[ \\t]*(.*)$`, 'm').exec(status)?.[1];
    // A uid of its own, from the claimed range, not nobody's: no other process of the host runs as it.
    const uid = Number(field('Uid')?.split(/\s+/)[0]);
    expect(uid).toBeGreaterThanOrEqual(BOX_UIDS.first);
    expect(uid).toBeLessThan(BOX_UIDS.first + BOX_UIDS.count);
    expect(field('Uid')?.split(/\s+/)).toEqual([uid, uid, uid, uid].map(String));
    expect(field('Gid')?.split(/\s+/)).toEqual([uid, uid, uid, uid].map(String));
    const others = (await execa('ps', ['-eo', 'pid=,uid=', '--no-headers'])).stdout.split('\n').map((line) => line.trim().split(/\s+/).map(Number)).filter(([, owner]) => owner === uid);
    expect(others.map(([other]) => other)).toEqual([pid]);
    // What a process of nobody's (a host service, or another of our boxes) could do to it before: enter its root
    // (its overlay), reopen its image descriptor, signal it. Refused now, and root still can (the check is real).
    const asNobody = (...command: string[]) => execa('setpriv', ['--reuid', '65534', '--regid', '65534', '--clear-groups', ...command], { reject: false });
    const imageFd = (await Promise.all((await readdir(`/proc/${pid}/fd`)).map(async (fd) => ({ fd, target: await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '') })))).find(({ target }) => target === image)?.fd;
    expect(imageFd).toBeDefined();
    for (const attempt of [['ls', `/proc/${pid}/root/vm`], ['head', '-c', '1', `/proc/${pid}/fd/${imageFd}`], ['kill', '-0', String(pid)]]) {
      expect({ attempt, refused: (await asNobody(...attempt)).exitCode !== 0 }).toEqual({ attempt, refused: true });
      expect({ attempt, asRoot: (await execa(attempt[0], attempt.slice(1), { reject: false })).exitCode }).toEqual({ attempt, asRoot: 0 });
    }
    // A cgroup of its own (v2, or v1's memory and pids hierarchies): its memory (the guest's 1 GiB and 1.5 GiB
    // beside it) and its tasks.
    const memberships = await readFile(`/proc/${pid}/cgroup`, 'utf8');
    const v2 = await stat('/sys/fs/cgroup/cgroup.controllers').then(() => true, () => false);
    const cgroupOf = (hierarchy: string) => new RegExp(`^\\d+:${hierarchy}:(/.*)$`, 'm').exec(memberships)?.[1] ?? '';
    const cgroups = v2 ? { memory: join('/sys/fs/cgroup', cgroupOf('')), pids: join('/sys/fs/cgroup', cgroupOf('')) } : { memory: join('/sys/fs/cgroup/memory', cgroupOf('memory')), pids: join('/sys/fs/cgroup/pids', cgroupOf('pids')) };
    for (const dir of Object.values(cgroups)) expect(dir).toMatch(new RegExp(`/imagebuilder-${process.pid}-boot-[0-9a-f]{8}$`));
    const limit = (dir: string, file: string) => readFile(join(dir, file), 'utf8').then((text) => text.trim());
    expect(await limit(cgroups.memory, v2 ? 'memory.max' : 'memory.limit_in_bytes')).toBe(String(2560 * 2 ** 20));
    expect(await limit(cgroups.pids, 'pids.max')).toBe('512');
    // Its threads and processes are bounded, its uid's alone.
    expect(/^Max processes\s+(\S+)\s+(\S+)/m.exec(await readFile(`/proc/${pid}/limits`, 'utf8'))?.slice(1)).toEqual(['512', '512']);
    expect(field('Groups')).toBe('');
    for (const set of ['CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb']) expect(field(set)).toBe('0000000000000000');
    expect(field('NoNewPrivs')).toBe('1');
    expect(field('Seccomp')).toBe('2');
    expect(field('Seccomp_filters')).toBe('2');
    const seen = await readdir(`/proc/${pid}/root`);
    expect(seen).toEqual(expect.arrayContaining(['usr', 'vm', 'dev', 'proc', 'tmp']));
    for (const hostOnly of ['var', 'root', 'home', 'run', 'work']) expect(seen).not.toContain(hostOnly);
    await expect(stat(`/proc/${pid}/root/etc/shadow`)).rejects.toThrow(/ENOENT/);
    expect((await readdir(`/proc/${pid}/root/vm`)).sort()).toEqual(['disk.qcow2', 'efivars.fd']);
    // Our sockets: qemu connected to each while it started, and each then stopped listening (and is gone).
    expect(await readdir(`/proc/${pid}/root/sockets`)).toEqual([]);
    // What qemu may write: the overlay and the variable store, not their directory (it makes nothing there).
    for (const [path, owner] of [['vm', 0], ['vm/disk.qcow2', uid], ['vm/efivars.fd', uid], ['sockets', 0]] as const) expect({ path, uid: (await stat(`/proc/${pid}/root/${path}`)).uid }).toEqual({ path, uid: owner });
    await expect(stat(`/proc/${pid}/root${image}`)).rejects.toThrow(/ENOENT/);
    // Its descriptors: the image (named as we opened it), and what it opened in its box (named as it sees them).
    const descriptors = await readdir(`/proc/${pid}/fd`);
    const targets = await Promise.all(descriptors.map((fd) => readlink(`/proc/${pid}/fd/${fd}`).catch(() => '')));
    expect(targets).toContain(image);
    expect(targets).toContain('/vm/disk.qcow2');
    for (const target of targets.filter((t) => t.startsWith('/'))) expect({ target, inBox: target === image || /^\/(vm|dev|usr)\//.test(target) }).toEqual({ target, inBox: true });
    const result = await booting;
    console.log(`boot: ${result.accel} ${result.firmware} reported after ${(result.bootMs / 1000).toFixed(1)} s`);
    expect(result).toMatchObject({ accel: 'tcg', firmware: 'uefi', via: 'systemd', exitCode: 3, consoleLog: join(results, 'console.log') });
    const lines = result.output.split('\n');
    expect(lines[0]).toBe('running');
    expect(lines[1]).toMatch(/^6\.1\.0-\d+-cloud-amd64$/);
    expect(result.output).toContain('VERSION_CODENAME=bookworm');
    expect(result.output).toContain('ID=debian');
    // The console log is kept beside the results: the firmware, GRUB, the kernel and systemd all wrote to it.
    const console_ = await readFile(result.consoleLog, 'utf8');
    expect(console_).toContain('Linux version 6.1.0');
    expect(console_).toMatch(/efi: EFI v[\d.]+ by EDK II/); // OVMF
    expect(console_).toContain('imagebuilder-boot: the check exited with 3');
    expect(result.bootMs).toBeGreaterThan(0);
    expect(await sha256(image)).toBe(before);
    expect(await qemusOfThisTest()).toEqual([]);
    expect(await leftoversUnder(tmp)).toEqual(NOTHING_LEFT);
    for (const dir of Object.values(cgroups)) await expect(stat(dir)).rejects.toThrow(/ENOENT/);
    // qemu left nothing running as its uid (its release would have had to kill it, saying so).
    expect(logged.join('')).not.toContain('still running as uid');
    // Its uid is free again once qemu is gone: the next boot may claim it.
    const stack = new CleanupStack(createLogger({ level: 'error' }));
    expect(await claimBoxUid(execRunner, stack, createLogger({ level: 'error' }), 'the next boot', { range: { first: uid, count: 1 } })).toBe(uid);
    await stack.unwind();
  });

  test('an image without an ESP boots through BIOS (SeaBIOS, GRUB in the MBR gap)', async () => {
    const bios = await fixtureImage('bios-boot');
    const before = await sha256(bios);
    const result = await boot({ script: 'systemctl is-system-running --wait\nuname -r\n', accel: 'tcg', resultsDir: join(work, 'results-bios') }, bios);
    console.log(`boot (BIOS): ${result.accel} ${result.firmware} reported after ${(result.bootMs / 1000).toFixed(1)} s`);
    expect(result).toMatchObject({ accel: 'tcg', firmware: 'bios', via: 'systemd', exitCode: 0 });
    expect(result.output).toMatch(/^running\n6\.1\.0-\d+-cloud-amd64\n$/);
    const console_ = await readFile(result.consoleLog, 'utf8');
    expect(console_).toContain('Linux version 6.1.0');
    expect(console_).not.toContain('by EDK II');
    expect(await sha256(bios)).toBe(before);
    expect(await qemusOfThisTest()).toEqual([]);
    expect(await leftoversUnder(tmp)).toEqual(NOTHING_LEFT);
  });

  test('--direct-kernel: the image\'s own kernel and initramfs started by qemu, root by its UUID; said to be a fallback', async () => {
    const before = await sha256(image);
    const result = await boot({ script: 'cat /proc/cmdline\nuname -r\nsystemctl is-system-running --wait\n', accel: 'tcg', firmware: 'direct-kernel', resultsDir: join(work, 'results-direct') });
    console.log(`boot (direct kernel): ${result.accel} reported after ${(result.bootMs / 1000).toFixed(1)} s`);
    expect(result).toMatchObject({ accel: 'tcg', firmware: 'direct-kernel', via: 'systemd', exitCode: 0 });
    // The efi-boot fixture's root filesystem UUID (bin/make-debian-image), found by blkid on the overlay.
    expect(result.output).toMatch(/^root=UUID=0b00710a-6e7f-4a8b-9c0d-e1b000000e02 ro console=ttyS0,115200n8 panic=-1\n6\.1\.0-\d+-cloud-amd64\nrunning\n$/);
    const console_ = await readFile(result.consoleLog, 'utf8');
    expect(console_).not.toContain('by EDK II'); // no firmware of the image's path ran
    expect(logged.join('')).toContain('--direct-kernel: the image\'s kernel and initramfs are started by qemu; its bootloader and firmware path are NOT tested');
    expect(await sha256(image)).toBe(before);
    expect(await qemusOfThisTest()).toEqual([]);
    expect(await leftoversUnder(tmp)).toEqual(NOTHING_LEFT);
  });

  test('a guest that floods its serial console: the log keeps its beginning and its end, bounded, and the check still reports', async () => {
    // 1 MiB of 'x' straight to the serial port, with the log bounded at 128 KiB (16 MiB by default).
    const script = 'systemctl is-system-running --wait >/dev/null\nhead -c 1048576 /dev/zero | tr "\\\\0" x >/dev/ttyS0\necho flooded\n';
    const result = await boot({ script, accel: 'tcg', firmware: 'direct-kernel', consoleMaxBytes: 128 << 10, resultsDir: join(work, 'results-flood') });
    expect(result).toMatchObject({ exitCode: 0, output: 'flooded\n' });
    const text = await readFile(result.consoleLog, 'utf8');
    const marker = /\n\[imagebuilder: (\d+) bytes of console output dropped here; the first (\d+) and the last (\d+) are kept\]\n/.exec(text);
    expect(marker).not.toBeNull();
    expect(Number(marker![1])).toBeGreaterThan(1048576 - (128 << 10));
    expect(Number(marker![2]) + Number(marker![3])).toBe(128 << 10);
    expect(Buffer.byteLength(text)).toBe((128 << 10) + marker![0].length);
    expect(text.slice(0, marker!.index)).toContain('Linux version'); // the kernel's first words are kept
    expect(text.slice(marker!.index)).toContain('imagebuilder-boot: the check exited with 0'); // and the runner's last
    expect(await qemusOfThisTest()).toEqual([]);
    expect(await leftoversUnder(tmp)).toEqual(NOTHING_LEFT);
  });

  test('a guest that fills its disk: qemu is stopped at the boot\'s bound (RLIMIT_FSIZE), said so; nothing left', async () => {
    // 512 MiB of zeros (written as data) into a 2 GiB disk, with writes bounded at 192 MiB (8 GiB by default).
    const script = 'systemctl is-system-running --wait >/dev/null\ndd if=/dev/zero of=/var/tmp/fill bs=1M count=512 conv=fsync\necho filled\n';
    const maxDiskBytes = 192 << 20;
    const error = await boot({ script, accel: 'tcg', firmware: 'direct-kernel', maxDiskBytes, resultsDir: join(work, 'results-fill') }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ImageBuilderError);
    expect((error as ImageBuilderError).message).toContain(`the guest wrote ${maxDiskBytes} bytes into its throw-away disk, the most a boot may; qemu was stopped`);
    expect(await qemusOfThisTest()).toEqual([]);
    expect(await leftoversUnder(tmp)).toEqual(NOTHING_LEFT);
  });

  test('a work directory with too little room to boot in: said before qemu starts, nothing left', async () => {
    // 64 MiB of tmpfs: less than the 1 GiB a download or a boot leaves free, so no room at all.
    const small = await mkdtemp('/var/tmp/ib-boot-small-');
    await execa('mount', ['-t', 'tmpfs', '-o', 'size=64m', 'tmpfs', small]);
    try {
      const start = startBuild({ log: createLogger({ write: () => undefined }), workDir: small, cacheDir: join(work, 'cache'), runDir });
      const error = await withResources(start, { workDir: small, runDir }, (context) => bootAndRun(context, image, { script: 'true', accel: 'tcg', firmware: 'direct-kernel' })).catch((e: unknown) => e);
      expect(error).toMatchObject({ code: 'ENVIRONMENT', message: expect.stringMatching(/has too little free space to boot an image in: 0 MiB beyond the 1 GiB left free$/) });
      expect(await qemusOfThisTest()).toEqual([]);
      // The tmpfs itself (the test's own) and nothing under it.
      expect(await leftoversUnder(small)).toEqual({ ...NOTHING_LEFT, mounts: [small] });
    } finally {
      await execa('umount', [small]);
      await rm(small, { recursive: true, force: true });
    }
  });

  test('the KVM probe: its boot sector runs and ends qemu with the agreed status (under TCG, so on any host); the verdict is remembered', async () => {
    const disk = join(work, 'probe.raw');
    await writeFile(disk, probeBootSector());
    const tcg = await execa('qemu-system-x86_64', ['-machine', 'pc,accel=tcg', '-m', '16', '-nodefaults', '-no-user-config', '-display', 'none', '-nic', 'none', '-monitor', 'none', '-serial', 'none',
      '-device', 'isa-debug-exit,iobase=0xf4,iosize=1', '-drive', `file=${disk},format=raw,if=ide,index=0`], { reject: false, timeout: 30_000 });
    expect(tcg.exitCode).toBe(PROBE_EXIT_STATUS);
    const cacheDir = join(work, 'kvm-cache');
    const log = createLogger({ level: 'debug', write: (text) => void logged.push(text) });
    const verdict = await probeBootKvm(execRunner, log, cacheDir, tmp);
    console.log(`KVM on this host: ${verdict}`);
    expect(['works', 'broken']).toContain(verdict);
    expect((await readFile(bootKvmVerdictFile(cacheDir), 'utf8')).trim()).toBe(verdict);
    // Remembered: a planted verdict is what the next probe returns, without asking qemu.
    await writeFile(bootKvmVerdictFile(cacheDir), verdict === 'works' ? 'broken\n' : 'works\n');
    expect(await probeBootKvm(execRunner, log, cacheDir, tmp)).toBe(verdict === 'works' ? 'broken' : 'works');
    expect((await readdir(tmp)).filter((name) => name.startsWith('kvm-probe-'))).toEqual([]);
  });

  test('arm64 under TCG: AAVMF, the image\'s GRUB for arm64 and its kernel; the check comes back', async () => {
    const arm = await fixtureImage('efi-boot', 'qcow2', { arch: 'arm64' });
    const before = await sha256(arm);
    const result = await boot({ script: 'uname -m\nsystemctl is-system-running --wait\nuname -r\n', accel: 'auto', resultsDir: join(work, 'results-arm64') }, arm);
    console.log(`boot (arm64): ${result.accel} ${result.firmware} reported after ${(result.bootMs / 1000).toFixed(1)} s`);
    // auto: this amd64 host's KVM cannot run an arm64 guest, so TCG.
    expect(result).toMatchObject({ accel: 'tcg', firmware: 'uefi', via: 'systemd', exitCode: 0 });
    expect(result.output).toMatch(/^aarch64\nrunning\n6\.1\.0-\d+-cloud-arm64\n$/);
    const console_ = await readFile(result.consoleLog, 'utf8');
    expect(console_).toMatch(/efi: EFI v[\d.]+ by EDK II/); // AAVMF
    expect(await sha256(arm)).toBe(before);
    expect(await qemusOfThisTest()).toEqual([]);
    expect(await leftoversUnder(tmp)).toEqual(NOTHING_LEFT);
  });

  test('a guest with cloud-init: the check comes through a NoCloud seed (ISO 9660 labelled cidata), which cloud-init takes as its datasource', async () => {
    const before = await sha256(cloudInitImage);
    const result = await boot(
      {
        script: 'systemctl is-system-running --wait\ncloud-init status\ngrep -o "DataSourceNoCloud[^\\"]*" /run/cloud-init/result.json\nuname -r\n',
        accel: 'tcg',
        resultsDir: join(work, 'results-cloud-init'),
      },
      cloudInitImage,
    );
    console.log(`boot (cloud-init): ${result.accel} ${result.firmware} reported after ${(result.bootMs / 1000).toFixed(1)} s`);
    expect(result).toMatchObject({ accel: 'tcg', firmware: 'uefi', via: 'cloud-init', exitCode: 0 });
    const lines = result.output.split('\n');
    expect(lines[0]).toBe('running');
    expect(lines[1]).toBe('status: done');
    expect(lines[2]).toMatch(/^DataSourceNoCloud \[seed=\/dev\/vd[b-z]\]/);
    expect(lines[3]).toMatch(/^6\.1\.0-\d+-cloud-amd64$/);
    expect(await sha256(cloudInitImage)).toBe(before);
    expect(await qemusOfThisTest()).toEqual([]);
    expect(await leftoversUnder(tmp)).toEqual(NOTHING_LEFT);
  });

  test('a guest that never reports (no ESP: BIOS; no bootloader): a clear error naming the console log, and qemu is gone', async () => {
    // The mbr fixture has no bootloader: SeaBIOS finds nothing to boot, and the deadline ends it.
    const results = join(work, 'results-timeout');
    const error = await boot({ script: 'true', accel: 'tcg', resultsDir: results, timeoutMs: 15_000 }, await fixtureImage('mbr')).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ImageBuilderError);
    expect((error as ImageBuilderError).message).toMatch(/did not report within 15 s \(tcg, bios\); its console is in .*results-timeout\/console\.log/);
    expect((await stat(join(results, 'console.log'))).isFile()).toBe(true);
    expect(await qemusOfThisTest()).toEqual([]);
    expect(await leftoversUnder(tmp)).toEqual(NOTHING_LEFT);
  });

  test('SIGKILL of the process booting it: qemu dies with it', async () => {
    // A process of its own running bootAndRun from the build (dist/), killed once qemu runs.
    const program = `
      import { bootAndRun } from '${REPO}/dist/boot/boot.js';
      import { startBuild, withResources } from '${REPO}/dist/pipeline/context.js';
      const start = startBuild({ workDir: ${JSON.stringify(tmp)}, cacheDir: ${JSON.stringify(join(work, 'cache'))}, runDir: ${JSON.stringify(runDir)} });
      await withResources(start, { workDir: ${JSON.stringify(tmp)}, runDir: ${JSON.stringify(runDir)} }, (c) => bootAndRun(c, ${JSON.stringify(image)}, { script: 'sleep 600', accel: 'tcg' }));
    `;
    const child = execa('node', ['--input-type=module', '-e', program], { reject: false, all: true });
    const deadline = Date.now() + 120_000;
    while ((await qemusOfThisTest()).length === 0) {
      if (Date.now() > deadline || child.exitCode !== null) throw new Error(`qemu never started: ${(await child).all}`);
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    // The uid qemu runs as, claimed by a lock file the kernel's flock alone cannot remove.
    const uid = Number(/^Uid:\s+(\d+)/m.exec(await readFile(`/proc/${await qemuProcess()}/status`, 'utf8'))?.[1]);
    const claim = join(HOST_LOCK_DIR, boxUidLockName(uid));
    expect((await stat(claim)).isFile()).toBe(true);
    child.kill('SIGKILL');
    await child;
    const gone = Date.now() + 10_000;
    while ((await qemusOfThisTest()).length && Date.now() < gone) await new Promise((resolve) => setTimeout(resolve, 100));
    expect(await qemusOfThisTest()).toEqual([]);
    // What the kernel cannot end (the work directory) is the next build's or `imagebuilder cleanup`'s to release.
    await expect(stat(claim)).resolves.toBeDefined();
    const cleanup = await execa('node', [`${REPO}/bin/run.js`, 'cleanup'], { env: { IMAGEBUILDER_WORK_DIR: tmp, IMAGEBUILDER_RUN_DIR: runDir }, reject: false });
    expect(await leftoversUnder(tmp)).toEqual(NOTHING_LEFT);
    // …and the uid's claim file, which cleanup removed through the lock protocol (no live process held it).
    expect(cleanup.stdout).toContain(boxUidLockName(uid));
    await expect(stat(claim)).rejects.toThrow();
  });
});
