import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { chmod, chown, copyFile, mkdir, mkdtemp, open, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { createOverlay, probeInputImage, readImageStart } from '../image/qemu-img.js';
import type { MountBackendName, MountContext } from '../mount/backend.js';
import { mountGuestLayout, type GuestLayout } from '../mount/layout.js';
import { listKernels } from '../bom/inventory.js';
import { selectMountBackend } from '../mount/select.js';
import { programArchitecture } from '../util/architecture.js';
import { readLogTail, startHelper, type Helper } from '../util/daemon.js';
import { ImageBuilderError, errorMessage } from '../util/errors.js';
import { tail } from '../util/exec.js';
import { readGuestFile, statGuest } from '../util/guest-fs.js';
import { openRegularFile } from '../util/fs.js';
import { cachedKvmVerdict } from '../util/libguestfs.js';
import { probeBootKvm } from './kvm.js';
import { throwIfAborted } from '../util/signals.js';
import { requireBoxedTool, unprivilegedCommand, type SandboxBind } from '../util/unprivileged.js';
import { claimBoxUid } from '../util/box-uid.js';
import { ensurePrivateDir, RESULTS_DIR_HINT } from '../util/lock.js';
import { hostSeccompArch, seccompBytes } from '../chroot/seccomp.js';
import { inCgroups, makeCgroups, type Cgroup } from '../chroot/sandbox.js';
import { agentMetaData, agentUserData, installAgent } from './agent.js';
import { makeIso } from './iso9660.js';
import { CHANNEL_NAME, readChannel, type GuestReport } from './channel.js';
import { ConsoleLog, recordConsole } from './console.js';
import { formatBytes } from '../util/size.js';
import type { Logger } from '../util/log.js';
import { freeSpace } from '../util/free-space.js';
import { hasEsp, machineFor, PARTITION_TABLE_BYTES, qemuArgs, type Accel, type Firmware, type QemuArgsRequest } from './firmware.js';

/**
 * What booting needs of a build: how to run and log, its work directory and cache, and the stack every release
 * goes on as the resource is taken. A pipeline BuildContext is one (its `cleanup`); so is a MountContext.
 */
export type BootContext = MountContext;

export interface BootOptions {
  /** A POSIX sh script run as root in the booted guest, once systemd has started it (multi-user.target). */
  script: string;
  /**
   * How the script gets run: `systemd`, a unit written into the overlay before the boot; `cloud-init`, a NoCloud
   * seed (a small ISO 9660 labelled cidata) whose user-data writes and starts it. Default auto: cloud-init when
   * the guest has it (it then also finds its datasource on a local disk instead of waiting on a network), else systemd.
   */
  via?: 'auto' | 'systemd' | 'cloud-init';
  /** From qemu's start to the report; default 6 minutes under KVM, 10 under TCG (20 for another architecture). */
  timeoutMs?: number;
  /** Default auto: KVM when /dev/kvm works for this guest (native architecture, KVM verdict `works`), else TCG. */
  accel?: Accel | 'auto';
  /** Default auto: UEFI when the image has an EFI System Partition, BIOS otherwise. */
  firmware?: Firmware | 'auto';
  /** Where the serial console's log is kept (default: the boot's own directory in the work dir, gone with it). */
  resultsDir?: string;
  /** How the overlay is mounted to add the check (default auto). */
  mountBackend?: MountBackendName | 'auto';
  memoryMiB?: number;
  cpus?: number;
  /** The most output taken back from the guest (default 4 MiB). */
  maxOutputBytes?: number;
  /** The most of the serial console kept in console.log (default 16 MiB: its beginning and its last MiB). */
  consoleMaxBytes?: number;
  /** The largest the guest's throw-away disk (its overlay) may grow, and any other file qemu writes (default 8 GiB). */
  maxDiskBytes?: number;
}

/** Why a boot ended without a report; made into an error once the console log is complete. */
class BootFailure extends Error {
  constructor(message: string, readonly hint: string) {
    super(message);
  }
}

export interface BootResult {
  /** The script's exit status in the guest. */
  exitCode: number;
  /** Its stdout and stderr, interleaved. */
  output: string;
  /** The guest's serial console (firmware, bootloader, kernel, systemd). */
  consoleLog: string;
  /** From qemu's start to the report's arrival. */
  bootMs: number;
  accel: Accel;
  firmware: Firmware;
  /** How the script was run. */
  via: 'systemd' | 'cloud-init';
}

/** Beyond the guest's own wait for its boot to finish (FAILED_UNITS_SCRIPT: 5 minutes), so that it reports first. */
const DEFAULT_TIMEOUT_MS: Record<Accel, number> = { kvm: 6 * 60_000, tcg: 10 * 60_000 };
/** After the report, how long the guest gets to power itself off before qemu is stopped. */
const POWEROFF_GRACE_MS: Record<Accel, number> = { kvm: 20_000, tcg: 60_000 };
/** How much of the console's end an error shows lines from. */
const CONSOLE_TAIL_BYTES = 64 << 10;
/** A Unix socket's path must fit sockaddr_un's sun_path (108 bytes, NUL included). */
const MAX_SOCKET_PATH = 107;
/**
 * A guest may write its whole virtual disk, which a crafted image makes as large as it likes: a boot writes a few
 * hundred MB (journal, cloud-init, a check's files), so this is far from what a real check needs.
 */
const DEFAULT_MAX_DISK_BYTES = 8 * 2 ** 30;
/** Where qemu's box shows the VM's directory (overlay, UEFI variables, seed, kernel) and, apart, our sockets. */
const VM_DIR_IN_BOX = '/vm';
const SOCKET_DIR_IN_BOX = '/sockets';
/** What of qemu's own output is kept (qemu.log): its beginning and its end. */
const QEMU_LOG_MAX_BYTES = 1 << 20;
/**
 * The threads qemu may have at once, its uid's alone: one per vCPU, its I/O pool (at most 64), a few of its own.
 * Far above that, an escaped qemu's thread or fork bomb stops here rather than at the host's pid limit.
 */
const QEMU_MAX_TASKS = 512;
/** The image's descriptor, as qemu inherits it (after stdin, stdout and stderr). */
const IMAGE_FD_IN_QEMU = 3;
/** The status a box (bwrap) ends with when its program was killed by SIGXFSZ (128 + 25): a file grew past its limit. */
const FILE_TOO_LARGE_EXIT = 128 + 25;
/**
 * qemu writes the disk from threads that block signals: past RLIMIT_FSIZE the write fails (EFBIG), the guest sees
 * I/O errors and qemu goes on. The overlay is watched (its size, and the blocks it holds: space allocated past
 * its end is not bounded by RLIMIT_FSIZE): within this of the bound, the boot is stopped and fails, and a guest
 * that reports in between fails all the same.
 */
const DISK_WATCH_MS = 1000;
const DISK_BOUND_SLACK = 4 << 20;

/** Debian's name for the host's architecture, from its own programs. */
async function hostArchitecture(): Promise<string | undefined> {
  return (await programArchitecture('/'))?.architecture?.debian;
}

async function chooseAccel(context: BootContext, guestArch: string, wanted: Accel | 'auto'): Promise<Accel> {
  if (wanted === 'tcg') return 'tcg';
  const native = (await hostArchitecture()) === guestArch;
  const kvmUsable = native && (await kvmForQemuBox()) !== undefined;
  if (wanted === 'kvm') {
    if (!kvmUsable) {
      throw new ImageBuilderError('ENVIRONMENT', native ? '--accel kvm: /dev/kvm is missing, or not open to an unprivileged qemu (its mode must let its group, other than root\'s, or everyone read and write it)' : `--accel kvm: a ${guestArch} guest cannot use this host's KVM`, {
        hint: 'boot with TCG (accel tcg or auto), slower but sure; or make /dev/kvm the kvm group\'s, mode 0660, as Debian\'s udev rules do',
      });
    }
    return 'kvm';
  }
  if (!kvmUsable) return 'tcg';
  // /dev/kvm may be there and guests still not run (nested virtualisation): on x86 qemu is asked with the
  // smallest guest there is (once per kernel); elsewhere libguestfs's verdict on this kernel, when it has one.
  const verdict = guestArch === 'amd64' ? await probeBootKvm(context.run, context.log, context.cacheDir, context.workDir, context.signal) : ((await cachedKvmVerdict(context.cacheDir)) ?? 'works');
  return verdict === 'works' ? 'kvm' : 'tcg';
}

/**
 * Whether qemu, run unprivileged in its box, may open /dev/kvm, and with which supplementary group: the device's
 * group when its mode lets that group read and write (never root's group, which qemu is not given), none when
 * everyone may. Undefined when it may not: KVM is then not used (a boot that could not open it would fail).
 */
async function kvmForQemuBox(): Promise<{ groups: number[] } | undefined> {
  const info = await stat('/dev/kvm').catch(() => undefined);
  if (!info?.isCharacterDevice()) return undefined;
  if ((info.mode & 0o006) === 0o006) return { groups: [] };
  if ((info.mode & 0o060) === 0o060 && info.gid !== 0) return { groups: [info.gid] };
  return undefined;
}

/**
 * Mounts the overlay (on a stack of its own, unwound before the boot), checks it boots with systemd, learns its
 * architecture, and puts the check in. Returns the guest's architecture (Debian's name).
 */
async function prepareOverlay(
  context: BootContext,
  overlay: string,
  dir: string,
  options: BootOptions & { firmware: Firmware },
): Promise<{ arch: string; via: 'systemd' | 'cloud-init'; cloudInit: boolean; kernel?: DirectKernel }> {
  let kernel: DirectKernel | undefined;
  let arch: string | undefined;
  let via: 'systemd' | 'cloud-init' = 'systemd';
  let cloudInit = false;
  const stack = context.cleanup.child('boot: the overlay mounted to add the check');
  const mountContext: MountContext = { ...context, cleanup: stack, workDir: join(dir, 'mount') };
  await mkdir(mountContext.workDir);
  try {
    const backend = await selectMountBackend(mountContext, options.mountBackend ?? 'auto');
    const disk = await backend.attach(mountContext, { image: overlay, format: 'qcow2', readOnly: false });
    const layout = disk.kind === 'tree' ? undefined : await mountGuestLayout(mountContext, disk.device, false);
    const root = disk.kind === 'tree' ? disk.root : layout!.root;
    arch = (await programArchitecture(root))?.architecture?.debian;
    if (!arch) throw new ImageBuilderError('BAD_INPUT', 'the image has no program whose architecture could be read (/bin/sh, /usr/bin/env)', { hint: 'is this a Linux OS disk image?' });
    const systemd = (await statGuest(root, '/lib/systemd/systemd')) ?? (await statGuest(root, '/usr/lib/systemd/systemd'));
    if (!systemd) {
      throw new ImageBuilderError('BAD_INPUT', 'the guest does not boot with systemd; booting it to run a check is supported for systemd guests only (yet)', {
        hint: 'neither /lib/systemd/systemd nor /usr/lib/systemd/systemd is in the image',
      });
    }
    cloudInit = (await statGuest(root, '/usr/bin/cloud-init')) !== undefined;
    if (options.via === 'cloud-init' && !cloudInit) throw new ImageBuilderError('BAD_INPUT', 'the guest has no cloud-init (/usr/bin/cloud-init) to run the check through', { hint: "run it through a systemd unit instead (via: 'systemd' or 'auto')" });
    via = options.via === 'systemd' || !cloudInit ? 'systemd' : 'cloud-init';
    await installAgent(root, options.script, via === 'systemd');
    if (options.firmware === 'direct-kernel') {
      if (!layout) throw new ImageBuilderError('BAD_INPUT', '--direct-kernel needs the root filesystem\'s UUID, which the guestmount backend does not show', { hint: 'use the nbd or fuse mount backend' });
      // Beside the overlay: in the directory qemu's box sees.
      kernel = await directKernel(mountContext, layout, dirname(overlay), arch);
    }
  } catch (error) {
    await stack.unwind();
    throw error;
  } finally {
    // Unmounted and detached before the boot: qemu is then the only writer of the overlay.
    const failures = await stack.unwind();
    if (failures.length) throw new ImageBuilderError('COMMAND_FAILED', `releasing the overlay after adding the check: ${failures.join('; ')}`);
  }
  return { arch: arch!, via, cloudInit, ...(kernel ? { kernel } : {}) };
}

type DirectKernel = NonNullable<QemuArgsRequest['kernel']>;

/** The most a guest's kernel or initramfs may be to be copied out for --direct-kernel. */
const MAX_KERNEL_BYTES = 512 << 20;

/**
 * --direct-kernel: the guest's newest kernel and its initramfs, copied out through guest-fs (never following a
 * guest link out of it, regular files only, bounded), and a command line of ours: the root filesystem by the
 * UUID blkid reads on it, read-only until systemd remounts it, the console on the serial port, and panic=-1 (a
 * kernel that cannot find its root ends the boot at once instead of waiting out the deadline).
 */
async function directKernel(context: MountContext, layout: GuestLayout, dir: string, arch: string): Promise<DirectKernel> {
  const { root } = layout;
  const kernels = (await listKernels(root)).filter((k) => k.image);
  const newest = kernels.sort((a, b) => a.version.localeCompare(b.version, 'en', { numeric: true })).at(-1);
  if (!newest) throw new ImageBuilderError('BAD_INPUT', '--direct-kernel: the image has no kernel in /boot (vmlinuz-VERSION)', { hint: 'boot it through its bootloader instead (without --direct-kernel)' });
  const initrdPath = [`/boot/initrd.img-${newest.version}`, `/boot/initramfs-${newest.version}.img`, `/boot/initrd-${newest.version}`];
  const copyOut = async (guestPath: string, name: string) => {
    const bytes = await readGuestFile(root, guestPath, MAX_KERNEL_BYTES);
    if (!bytes) return undefined;
    const path = join(dir, name);
    // Read-only to qemu whatever the umask: it runs as another uid, and only the overlay and variables are its to write.
    await writeFile(path, bytes, { mode: 0o644 });
    await chmod(path, 0o644);
    return path;
  };
  const kernel = await copyOut(newest.image!, 'vmlinuz');
  if (!kernel) throw new ImageBuilderError('BAD_INPUT', `--direct-kernel: ${newest.image} is not a regular file in the image`);
  let initrd: string | undefined;
  for (const path of initrdPath) if (!initrd) initrd = await copyOut(path, 'initrd');
  const rootMount = layout.mounts[0];
  // -p: read from the filesystem itself, never blkid's cache (the host's, or stale).
  const uuid = (await context.run('blkid', ['-p', '-o', 'value', '-s', 'UUID', rootMount.device], { allowFailure: true, log: context.log, purpose: 'reading the root filesystem\'s UUID' })).stdout.trim();
  if (!/^[0-9A-Fa-f-]+$/.test(uuid)) throw new ImageBuilderError('BAD_INPUT', `--direct-kernel: the root filesystem (${rootMount.device}) has no UUID to boot it by`);
  // A root in a btrfs subvolume boots from it, as its bootloader's rootflags= would say.
  const rootflags = rootMount.selecting?.length ? ` rootflags=${rootMount.selecting.join(',')}` : '';
  const console = arch === 'arm64' ? 'ttyAMA0' : 'ttyS0,115200n8';
  context.log.info(`boot: --direct-kernel: ${newest.image}${initrd ? ' and its initramfs' : ' (no initramfs found)'}, root=UUID=${uuid}${rootflags}`);
  return { kernel, ...(initrd ? { initrd } : {}), append: `root=UUID=${uuid}${rootflags} ro console=${console} panic=-1` };
}

/** The console's last lines, for an error. */
async function consoleTail(consoleLog: string): Promise<string | undefined> {
  // Only the end is read (a guest may have flooded its console), and only printable text and newlines are kept:
  // the firmware's escape sequences, and any a guest sends, never reach the user's terminal.
  // The log we wrote, by its name again: only while it is still a regular file there (no link, no FIFO).
  const opened = await openRegularFile(consoleLog, { follow: false }).catch(() => undefined);
  if (!opened) return undefined;
  const { handle, size } = opened;
  try {
    const length = Math.min(size, CONSOLE_TAIL_BYTES);
    const { buffer } = await handle.read(Buffer.alloc(length), 0, length, size - length);
    const text = buffer.toString('utf8').replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '').replace(/[^\P{C}\n]/gu, '');
    return tail(text, 25) || undefined;
  } finally {
    await handle.close();
  }
}

/**
 * Boots a throw-away copy of `image` in qemu and runs `options.script` in it: the image is never written (the
 * guest runs on a qcow2 overlay in the work dir, over the image opened read-only, its format probed in the
 * sandbox first and named from then on). A one-shot systemd unit, written into the overlay before the boot,
 * runs the script once the guest is up, sends its output and exit status back over a virtio-serial port (never
 * the console), and powers off. KVM when it works here, TCG otherwise; UEFI (OVMF) when the image has an EFI
 * System Partition, BIOS otherwise; no network. qemu runs as our child with a death signal (it dies with a
 * killed build) and its release is on context.cleanup from the moment it is spawned, as is every file made.
 */
export async function bootAndRun(context: BootContext, image: string, options: BootOptions): Promise<BootResult> {
  throwIfAborted(context.signal);
  const { run, log } = context;
  // Absolute: the overlay names it as its backing file, which qemu would otherwise take relative to the overlay.
  image = resolve(image);
  // The image reaches qemu as this descriptor, read-only (its path is not in qemu's box): opened before the probe,
  // and still the file at that path after it. O_NONBLOCK: a FIFO there is refused, not waited on.
  const imageFile = await open(image, constants.O_RDONLY | constants.O_NONBLOCK);
  const closeImage = context.cleanup.push(`the image ${image}, open for qemu`, () => imageFile.close()).release;
  const input = await probeInputImage(run, image, log);
  const [held, named] = [await imageFile.stat(), await stat(image)];
  if (!(held.isFile() || held.isBlockDevice()) || held.dev !== named.dev || held.ino !== named.ino || held.size !== named.size || held.mtimeMs !== named.mtimeMs) {
    throw new ImageBuilderError('BAD_INPUT', `${image} is not a disk image file, or changed while it was being read`, { hint: 'boot an image nothing else is writing' });
  }
  const dir = await mkdtemp(join(context.workDir, 'boot-'));
  context.cleanup.push(`boot directory ${dir}`, () => rm(dir, { recursive: true, force: true }));
  // All of the VM qemu may open by name: its box binds this directory, ours (0755: qemu makes nothing in it); the
  // overlay and the variable store in it are made qemu's to write once the check is in.
  const vmDir = join(dir, 'vm');
  await mkdir(vmDir);
  await chmod(vmDir, 0o755);
  // Ours, or qemu could make files in it (a work directory on NFS with root_squash makes it nobody's).
  if ((await stat(vmDir)).uid !== process.getuid?.()) {
    throw new ImageBuilderError('ENVIRONMENT', `${vmDir} is not owned by this user (a root-squashed network filesystem?), so a boot cannot keep qemu from writing there`, { hint: 'use a local work directory (IMAGEBUILDER_WORK_DIR)' });
  }
  const overlay = join(vmDir, 'disk.qcow2');
  await createOverlay(run, image, input.format, overlay, log);

  const firmware: Firmware = options.firmware && options.firmware !== 'auto' ? options.firmware : hasEsp(await readImageStart(context.run, overlay, 'qcow2', PARTITION_TABLE_BYTES, dir, context.log)) ? 'uefi' : 'bios';
  if (firmware === 'direct-kernel') log.warn("boot: --direct-kernel: the image's kernel and initramfs are started by qemu; its bootloader and firmware path are NOT tested");
  const { arch, via, cloudInit, kernel } = await prepareOverlay(context, overlay, dir, { ...options, firmware });
  // A guest with cloud-init always gets a seed: it finds its datasource on a local disk at once rather than
  // looking for one on a network it does not have. Its user-data runs the check only when cloud-init is to.
  let seed: string | undefined;
  if (cloudInit) {
    seed = join(vmDir, 'seed.iso');
    const files = [
      { name: 'meta-data', content: Buffer.from(agentMetaData(`imagebuilder-boot-${randomBytes(8).toString('hex')}`)) },
      { name: 'user-data', content: Buffer.from(via === 'cloud-init' ? agentUserData(options.script) : '#cloud-config\n{}\n') },
    ];
    await writeFile(seed, makeIso('cidata', files), { mode: 0o644 });
    await chmod(seed, 0o644);
  }
  const accel = await chooseAccel(context, arch, options.accel ?? 'auto');
  const spec = await machineFor(arch, firmware);

  const resultsDir = options.resultsDir ?? dir;
  // Ours alone: a directory another user made at that name (`OUTPUT.test` in /tmp) could hold a link where the
  // console log, which the guest writes, is opened.
  await ensurePrivateDir(resultsDir, log, { purpose: 'write boot results in', readable: true, hint: RESULTS_DIR_HINT });
  const consoleLog = join(resultsDir, 'console.log');
  let uefiVars: string | undefined;
  if (firmware === 'uefi') {
    uefiVars = join(vmDir, 'efivars.fd');
    await copyFile(spec.uefi!.vars, uefiVars);
  }
  // Our sockets, which qemu connects to: in a directory of ours (0711) in one only root reaches (0700).
  const socketDir = join(join(dir, 'sockets', 'results.sock').length <= MAX_SOCKET_PATH ? dir : await shortSocketDir(context), 'sockets');
  await mkdir(socketDir);
  await chmod(socketDir, 0o711);
  const channelSocket = join(socketDir, 'results.sock');
  const consoleSocket = join(socketDir, 'console.sock');
  // qemu runs as a uid of its own: it writes the overlay and the variable store; the rest (seed, kernel) it only
  // reads. Claimed before qemu starts, so released after it is gone.
  const qemuUid = await claimBoxUid(run, context.cleanup, log, `qemu booting ${basename(image)}`, { signal: context.signal });
  for (const path of [overlay, uefiVars]) if (path) await chown(path, qemuUid, qemuUid);
  const memoryMiB = options.memoryMiB ?? 1024;
  const inBox = (path: string) => join(dirname(path) === vmDir ? VM_DIR_IN_BOX : SOCKET_DIR_IN_BOX, basename(path));
  const args = qemuArgs({
    spec, accel, firmware, disk: inBox(overlay), image: { fd: IMAGE_FD_IN_QEMU, format: input.format },
    ...(seed ? { seed: inBox(seed) } : {}),
    ...(uefiVars ? { uefiVars: inBox(uefiVars) } : {}),
    consoleSocket: inBox(consoleSocket), channelSocket: inBox(channelSocket), channelName: CHANNEL_NAME,
    ...(kernel ? { kernel: { ...kernel, kernel: inBox(kernel.kernel), ...(kernel.initrd ? { initrd: inBox(kernel.initrd) } : {}) } } : {}),
    memoryMiB,
    cpus: options.cpus ?? 2,
  });
  const maxDiskBytes = await diskBound(dir, options.maxDiskBytes ?? DEFAULT_MAX_DISK_BYTES);
  const seccompFile = await writeQemuFilter(dir, log);
  const cgroups = await qemuCgroups(context, memoryMiB);
  const box = inCgroups(cgroups, await qemuBox(spec.qemu, args, { vmDir, socketDir, accel, maxDiskBytes, uid: qemuUid, seccompFile }));
  // Another architecture's instructions are translated one by one: twice the time.
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS[accel] * (arch === (await hostArchitecture()) ? 1 : 2);
  log.info(`boot: ${spec.qemu} (${accel}, ${firmware}, the check run by ${via}) as uid ${qemuUid} in a sandbox, console in ${consoleLog}, up to ${Math.round(timeoutMs / 1000)} s`);

  // Listening before qemu starts: it connects to both while it starts, before the guest runs.
  const serialConsole = await recordConsole(consoleSocket, consoleLog, { maxBytes: options.consoleMaxBytes });
  context.cleanup.push('the console reader', async () => serialConsole.close());
  // The log is complete once qemu has closed the console; not waited on for longer than a few seconds.
  const consoleComplete = async () => {
    await Promise.race([serialConsole.done, new Promise((resolve) => setTimeout(resolve, 5000).unref())]);
    serialConsole.close();
  };
  const channel = await readChannel(channelSocket, options.maxOutputBytes ?? 4 << 20);
  context.cleanup.push('the results channel', async () => channel.close());
  let consoleConnected = false;
  void serialConsole.connected.then(() => (consoleConnected = true));
  const started = Date.now();
  let qemu: Helper | undefined;
  let stopQemu: (() => Promise<void>) | undefined;
  try {
    await startHelper(
      box[0],
      box[1],
      {
        log, logFile: join(dir, 'qemu.log'), logSink: new ConsoleLog(join(dir, 'qemu.log'), { maxBytes: QEMU_LOG_MAX_BYTES }),
        purpose: 'booting the image', signal: context.signal, timeoutMs: 60_000, ready: async () => consoleConnected, passFds: [imageFile.fd],
      },
      (helper) => {
        qemu = helper;
        stopQemu = context.cleanup.push(`qemu (pid ${helper.pid})`, () => helper.stop(5000)).release;
      },
    );
  } finally {
    // qemu holds its own copy.
    await closeImage();
  }
  // What qemu has written: the overlay and the variable store (their sizes, or the blocks they hold if more).
  const diskUsed = async () => {
    let used = 0;
    for (const path of [overlay, uefiVars]) {
      if (!path) continue;
      const info = await stat(path);
      used += Math.max(info.size, info.blocks * 512);
    }
    return used;
  };
  let timer: NodeJS.Timeout | undefined;
  let diskWatch: NodeJS.Timeout | undefined;
  let onAbort: (() => void) | undefined;
  let report: GuestReport;
  try {
    report = await Promise.race([
      channel.report,
      new Promise<never>((_, reject) => {
        diskWatch = setInterval(() => {
          diskUsed().then((used) => {
            if (used >= maxDiskBytes - DISK_BOUND_SLACK) reject(diskFull(maxDiskBytes));
          }, reject);
        }, DISK_WATCH_MS);
      }),
      qemu!.gone.then(async (exit) => {
        if (exit.code === FILE_TOO_LARGE_EXIT) throw diskFull(maxDiskBytes);
        const oomKills = (await Promise.all(cgroups.map((cgroup) => cgroup.counters()))).reduce((sum, counters) => sum + counters.oomKills, 0);
        if (oomKills) throw new BootFailure(`qemu was killed for using more than ${formatBytes(qemuMemoryBytes(memoryMiB))} of memory, the most a boot with ${memoryMiB} MiB of guest memory may`, 'qemu needs its guest memory and, under TCG, up to 1 GiB of translated code beside it: a qemu using far more is itself the problem');
        const qemuLog = (await readLogTail(join(dir, 'qemu.log'))).trim();
        throw new BootFailure(`the guest stopped before it reported (qemu exited${qemuLog ? `: ${tail(qemuLog, 3)}` : ''})`, 'the console log shows how far it got (firmware, bootloader, kernel, systemd)');
      }),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => {
          reject(new BootFailure(`the guest did not report within ${Math.round(timeoutMs / 1000)} s (${accel}, ${firmware})`, accel === 'tcg' ? 'TCG is slow: give it longer (timeoutMs), or find in the console log where it stopped' : 'the console log shows where it stopped'));
        }, timeoutMs);
      }),
      new Promise<never>((_, reject) => {
        onAbort = () => reject(new ImageBuilderError('INTERRUPTED', 'interrupted while the guest was booting'));
        context.signal?.addEventListener('abort', onAbort, { once: true });
        if (context.signal?.aborted) onAbort();
      }),
    ]);
  } catch (error) {
    await stopQemu?.();
    await consoleComplete();
    if (error instanceof ImageBuilderError) throw error;
    const detail = await consoleTail(consoleLog);
    if (error instanceof BootFailure) throw new ImageBuilderError('CHECK_FAILED', `${error.message}; its console is in ${consoleLog}`, { detail, hint: error.hint });
    throw new ImageBuilderError('CHECK_FAILED', `reading the guest's report: ${errorMessage(error)}; its console is in ${consoleLog}`, { detail });
  } finally {
    clearTimeout(timer);
    clearInterval(diskWatch);
    if (onAbort) context.signal?.removeEventListener('abort', onAbort);
    channel.close();
  }
  const bootMs = Date.now() - started;
  // A guest may report between its writes' failing and the watch's next look: what it says then is not trusted.
  if ((await diskUsed()) >= maxDiskBytes - DISK_BOUND_SLACK) {
    await stopQemu?.();
    await consoleComplete();
    throw new ImageBuilderError('CHECK_FAILED', `${diskFull(maxDiskBytes).message}; its console is in ${consoleLog}`, { hint: diskFull(maxDiskBytes).hint });
  }
  log.info(`boot: the guest reported after ${(bootMs / 1000).toFixed(1)} s (exit status ${report.exitCode}); waiting for it to power off`);
  // It powers itself off; one that does not within the grace is stopped (the overlay is thrown away either way).
  const graceTimer = new Promise<'late'>((resolve) => setTimeout(() => resolve('late'), POWEROFF_GRACE_MS[accel]).unref());
  if ((await Promise.race([qemu!.gone.then(() => 'off' as const), graceTimer])) === 'late') log.warn(`boot: the guest did not power off within ${POWEROFF_GRACE_MS[accel] / 1000} s of reporting; stopping qemu`);
  await stopQemu?.();
  await consoleComplete();
  return { exitCode: report.exitCode, output: report.output, consoleLog, bootMs, accel, firmware, via };
}

/** The least room a boot starts with: a boot writes a few hundred MB (journal, cloud-init, a check's files). */
const MIN_BOOT_ROOM = 512 << 20;

/**
 * The most the guest may write: `wanted`, or what the work directory's filesystem has free beyond the reserve a
 * download leaves (util/free-space.ts), whichever is less; too little to boot in is said before qemu starts.
 */
async function diskBound(dir: string, wanted: number): Promise<number> {
  const { free, reserve } = await freeSpace(dir);
  const room = free - reserve;
  if (room >= wanted) return wanted;
  if (room < MIN_BOOT_ROOM) {
    throw new ImageBuilderError('ENVIRONMENT', `${dir} has too little free space to boot an image in: ${formatBytes(Math.max(0, room))} beyond the ${formatBytes(reserve)} left free`, {
      hint: 'free space there, or point IMAGEBUILDER_WORK_DIR at a larger filesystem',
    });
  }
  return room;
}

const diskFull = (maxDiskBytes: number) =>
  new BootFailure(`the guest wrote ${maxDiskBytes} bytes into its throw-away disk, the most a boot may; qemu was stopped`, `a boot writes a few hundred MB: an image that fills ${formatBytes(maxDiskBytes)} while it boots is itself the problem (bootAndRun's maxDiskBytes sets the bound)`);

/**
 * qemu as a hostile guest's next target: should the guest break out of it, it is a uid of its own (util/box-uid.ts:
 * no other process of the host, nobody's services and our other boxes included, can be signalled, traced or
 * entered through /proc from it, nor it from them) with no capability (no_new_privs, the bounding set empty) in a
 * box of its own (util/unprivileged.ts: its own mount, PID, network and IPC namespaces; the host's /usr read-only,
 * the VM's directory, our sockets and, for KVM, /dev/kvm with its group; no descriptor of ours but the image's:
 * Node's spawn passes only those it is given), under our seccomp filter and qemu's own. Every file it may write is
 * bounded (RLIMIT_FSIZE; see DISK_WATCH_MS), and so are its threads and processes (RLIMIT_NPROC, which counts its
 * uid's alone) and, from outside the box, its memory (qemuCgroups); its output goes through a pipe into a bounded
 * log; no core dump. It dies with us: the box with its parent, and its PID namespace with it.
 */
async function qemuBox(qemu: string, args: string[], options: { vmDir: string; socketDir: string; accel: Accel; maxDiskBytes: number; uid: number; seccompFile?: string }): Promise<[string, string[]]> {
  await requireBoxedTool(qemu, 'booting the image');
  await requireBoxedTool('prlimit', 'booting the image (it bounds the files qemu writes)');
  const binds: SandboxBind[] = [
    { host: options.vmDir, inside: VM_DIR_IN_BOX, writable: true },
    { host: options.socketDir, inside: SOCKET_DIR_IN_BOX },
  ];
  const kvm = options.accel === 'kvm' ? { deviceNodes: ['/dev/kvm'], ...(await kvmForQemuBox()) } : {};
  const limits = ['prlimit', `--fsize=${options.maxDiskBytes}`, `--nproc=${QEMU_MAX_TASKS}`, '--core=0', '--'];
  const seccomp = options.seccompFile ? { seccomp: { file: options.seccompFile, fd: IMAGE_FD_IN_QEMU + 1 } } : {};
  return unprivilegedCommand([...limits, qemu, ...args], { binds, uid: options.uid, ...seccomp, ...kvm });
}

/** The memory qemu's cgroup allows: the guest's, and room beside it for qemu's own (under TCG, its translated code). */
const qemuMemoryBytes = (memoryMiB: number) => (memoryMiB + QEMU_MEMORY_OVERHEAD_MIB) * 2 ** 20;
const QEMU_MEMORY_OVERHEAD_MIB = 1536;

/**
 * qemu's own cgroup (chroot/sandbox.ts's makeCgroups, named as the build's so the reaper finds it): its memory,
 * no swap, and its tasks, so a qemu the guest broke out of cannot take the host's memory, whatever its uid may.
 * Where /sys/fs/cgroup is read-only (a container given none to write), without, said so.
 */
async function qemuCgroups(context: BootContext, memoryMiB: number): Promise<Cgroup[]> {
  const name = `imagebuilder-${process.pid}-boot-${randomBytes(4).toString('hex')}`;
  try {
    return await makeCgroups(name, { memoryBytes: qemuMemoryBytes(memoryMiB), pids: QEMU_MAX_TASKS }, context.cleanup, context.log);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EROFS') {
      throw new ImageBuilderError('COMMAND_FAILED', `cannot make qemu's cgroup for its memory and tasks limits: ${errorMessage(error)}`, {
        hint: 'imagebuilder runs as root on a host with the memory and pids cgroup controllers (cgroup v2, or v1 memory and pids hierarchies)',
      });
    }
    context.log.warn('boot: qemu runs without a memory limit of its own: /sys/fs/cgroup is read-only here');
    return [];
  }
}

/**
 * The guest commands' seccomp filter (chroot/seccomp.ts), for qemu too, beneath its own `-sandbox`: that one is a
 * deny-list of its own choosing, which leaves the kernel keyrings (state that would outlive this boot under its
 * uid), io_uring, userfaultfd, bpf, perf, new user namespaces and every socket family open. qemu uses none of them
 * (io_uring only if asked, and it falls back to epoll when it is missing). In the boot's directory (ours, 0700).
 */
async function writeQemuFilter(dir: string, log: Logger): Promise<string | undefined> {
  const arch = hostSeccompArch();
  if (!arch) {
    log.warn(`boot: qemu runs without our seccomp filter (only its own -sandbox): no syscall table for this host's architecture (${process.arch})`);
    return undefined;
  }
  const file = join(dir, 'qemu-seccomp.bpf');
  await writeFile(file, seccompBytes(arch), { mode: 0o600 });
  return file;
}

/** A directory with a short path for the results socket, when the work dir's is too long for one. */
async function shortSocketDir(context: BootContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'imagebuilder-boot-'));
  context.cleanup.push(`socket directory ${dir}`, () => rm(dir, { recursive: true, force: true }));
  return dir;
}
