import { exists, which } from '../util/fs.js';
import { ImageBuilderError } from '../util/errors.js';
import { packageHint } from '../util/tools.js';

/** How the guest's kernel is reached: its bootloader through UEFI or BIOS, or (a fallback) its kernel and initramfs handed to qemu. */
export type Firmware = 'uefi' | 'bios' | 'direct-kernel';
export type Accel = 'kvm' | 'tcg';

// Read from the image's own partition table (src/image, where --format ova needs it too).
export { hasEsp, PARTITION_TABLE_BYTES } from '../image/partition-table.js';

/** What boots a guest of one architecture: the emulator, its machine and its UEFI firmware (code, and variables to copy). */
export interface MachineSpec {
  arch: string;
  qemu: string;
  machine: string;
  /** The UEFI firmware's code (read-only) and the template of its variable store (copied, written). */
  uefi?: { code: string; vars: string; package: string };
  /** Whether BIOS (SeaBIOS, qemu's default on x86) can boot it. */
  bios: boolean;
}

/** Debian's OVMF (package ovmf): the 4 MiB builds first (Debian 12 and 13), the 2 MiB ones of older releases after. */
const OVMF = [
  { code: '/usr/share/OVMF/OVMF_CODE_4M.fd', vars: '/usr/share/OVMF/OVMF_VARS_4M.fd' },
  { code: '/usr/share/OVMF/OVMF_CODE.fd', vars: '/usr/share/OVMF/OVMF_VARS.fd' },
];
/** Debian's AAVMF (package qemu-efi-aarch64). */
const AAVMF = [{ code: '/usr/share/AAVMF/AAVMF_CODE.fd', vars: '/usr/share/AAVMF/AAVMF_VARS.fd' }];

async function firstPresent(candidates: { code: string; vars: string }[]) {
  for (const candidate of candidates) if ((await exists(candidate.code)) && (await exists(candidate.vars))) return candidate;
  return undefined;
}

/**
 * The machine that boots a guest of `arch` (Debian's name) on this host, with the firmware `firmware` needs.
 * What is missing is said with its Debian package.
 */
export async function machineFor(arch: string, firmware: Firmware): Promise<MachineSpec> {
  const spec =
    arch === 'amd64'
      ? { qemu: 'qemu-system-x86_64', machine: 'q35', firmware: OVMF, firmwarePackage: 'ovmf', bios: true }
      : arch === 'arm64'
        ? { qemu: 'qemu-system-aarch64', machine: 'virt', firmware: AAVMF, firmwarePackage: 'qemu-efi-aarch64', bios: false }
        : undefined;
  if (!spec) {
    throw new ImageBuilderError('ENVIRONMENT', `booting ${arch} guests is not supported yet (amd64, and arm64 where qemu-system-aarch64 and AAVMF are installed)`);
  }
  if (!(await which(spec.qemu))) {
    throw new ImageBuilderError('MISSING_TOOL', `booting an ${arch} guest needs ${spec.qemu}, which is not installed`, {
      hint: `install ${arch === 'arm64' ? 'the Debian package qemu-system-arm and qemu-efi-aarch64 (arm64 guests are not supported without them)' : packageHint(spec.qemu)}`,
    });
  }
  if (firmware === 'bios' && !spec.bios) {
    throw new ImageBuilderError('BAD_INPUT', `an ${arch} guest boots only through UEFI, and this image has no EFI System Partition`);
  }
  const found = firmware === 'uefi' ? await firstPresent(spec.firmware) : undefined;
  if (firmware === 'uefi' && !found) {
    throw new ImageBuilderError('MISSING_TOOL', `booting an ${arch} guest through UEFI needs its firmware (${spec.firmware.map((f) => f.code).join(' or ')}), which is not installed`, {
      hint: `install the Debian package ${spec.firmwarePackage}`,
    });
  }
  return { arch, qemu: spec.qemu, machine: spec.machine, bios: spec.bios, ...(found ? { uefi: { ...found, package: spec.firmwarePackage } } : {}) };
}

/** qemu's seccomp filter (`-sandbox`), on every qemu that runs a guest. */
export const QEMU_SANDBOX = 'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny';

export interface QemuArgsRequest {
  spec: MachineSpec;
  accel: Accel;
  firmware: Firmware;
  /** The throw-away qcow2 overlay the guest boots from and writes to (as qemu sees it: in its box). */
  disk: string;
  /**
   * The image under the overlay: a descriptor qemu inherits (opened read-only by us), and its probed format. qemu
   * runs unprivileged in a box where the image's path does not exist: the backing chain is given explicitly,
   * never read from the overlay, and the image's own backing field (qcow2) is ignored.
   */
  image: { fd: number; format: string };
  /** A cloud-init NoCloud seed (raw ISO 9660), attached read-only as a second disk. */
  seed?: string;
  /** The writable copy of the UEFI variable store (uefi only). */
  uefiVars?: string;
  /**
   * The serial console: a Unix socket we listen on (the reader that bounds the log, console.ts), which qemu
   * connects to while it starts (server=off), before the guest runs: nothing is missed.
   */
  consoleSocket: string;
  /** direct-kernel: the guest's kernel and initramfs (copied out of it) and the command line they boot with. */
  kernel?: { kernel: string; initrd?: string; append: string };
  /** The results channel: a Unix socket we listen on, which qemu connects to. */
  channelSocket: string;
  channelName: string;
  memoryMiB: number;
  cpus: number;
}

/** The fd set (`-add-fd`) the image's descriptor is in: qemu opens it as /dev/fdset/1. */
const IMAGE_FDSET = 1;

/** Formats whose qemu driver takes a `backing` option (BlockdevOptionsGenericCOWFormat); the rest refuse it. */
const COW_FORMATS = new Set(['qcow2', 'vmdk']);

/** The guest's disk: the overlay, over the image read through its inherited descriptor. */
function diskNodes(request: QemuArgsRequest) {
  const image = {
    'node-name': 'image',
    driver: request.image.format,
    'read-only': true,
    file: { driver: 'file', filename: `/dev/fdset/${IMAGE_FDSET}`, 'read-only': true },
    // The formats that may name a parent (qcow2, vmdk) are told they have none: the probe found none, and in
    // qemu's box a name would be read there (its /proc, /dev).
    ...(COW_FORMATS.has(request.image.format) ? { backing: null } : {}),
  };
  return { 'node-name': 'disk0', driver: 'qcow2', discard: 'unmap', file: { driver: 'file', filename: request.disk }, backing: image };
}

/**
 * qemu's command line: no display, no default devices, no network at all (-nic none: the guest never reaches
 * the host or anything else), the serial console on a socket we read, the disk on virtio-blk, and one virtio-serial
 * port named `channelName` on another of our sockets. qemu is their client (server=off): it needs no directory it
 * may write, and fails to start if we are not listening. -no-reboot: a guest that reboots (a panic with panic=N, a
 * failed boot's reboot) ends qemu instead of booting again.
 */
export function qemuArgs(request: QemuArgsRequest): string[] {
  const { spec, accel } = request;
  // Emulated arm64: `max` with QEMU's own pointer-authentication algorithm, not the architected QARMA (which
  // costs emulation its speed and the guest nothing it needs).
  const cpu = accel === 'kvm' ? 'host' : spec.arch === 'arm64' ? 'max,pauth-impdef=on' : 'max';
  const args = [
    '-name', 'imagebuilder-boot',
    // The guest is as hostile as the image: should it break out into qemu, seccomp leaves it no exec, no
    // set*id, no scheduler or resource control and no obsolete system calls.
    '-sandbox', QEMU_SANDBOX,
    '-machine', `${spec.machine},accel=${accel}`,
    '-cpu', cpu,
    '-m', String(request.memoryMiB),
    '-smp', String(request.cpus),
    '-nodefaults',
    '-no-user-config',
    '-display', 'none',
    '-no-reboot',
    '-nic', 'none',
    // The first chardev: connected before anything else is made, the guest not yet running.
    '-chardev', `socket,id=console0,path=${request.consoleSocket},server=off`,
    '-serial', 'chardev:console0',
    '-monitor', 'none',
  ];
  if (request.firmware === 'uefi') {
    const uefi = spec.uefi!;
    args.push(
      '-drive', `if=pflash,format=raw,unit=0,readonly=on,file=${uefi.code}`,
      '-drive', `if=pflash,format=raw,unit=1,file=${request.uefiVars}`,
    );
  }
  if (request.firmware === 'direct-kernel') {
    const { kernel, initrd, append } = request.kernel!;
    args.push('-kernel', kernel, ...(initrd ? ['-initrd', initrd] : []), '-append', append);
  }
  args.push(
    // Formats named: qemu never probes the overlay (ours) nor the image (probed in the sandbox when it came in).
    '-add-fd', `fd=${request.image.fd},set=${IMAGE_FDSET},opaque=image`,
    '-blockdev', JSON.stringify(diskNodes(request)),
    // With -kernel, qemu's own loader takes boot index 0.
    '-device', `virtio-blk-pci,drive=disk0${request.firmware === 'direct-kernel' ? '' : ',bootindex=0'}`,
    ...(request.seed ? ['-drive', `if=none,id=seed0,format=raw,readonly=on,file=${request.seed}`, '-device', 'virtio-blk-pci,drive=seed0'] : []),
    '-device', 'virtio-serial-pci,id=vser0',
    '-chardev', `socket,id=results0,path=${request.channelSocket},server=off`,
    '-device', `virtserialport,bus=vser0.0,chardev=results0,name=${request.channelName}`,
    '-device', 'virtio-rng-pci',
  );
  return args;
}
