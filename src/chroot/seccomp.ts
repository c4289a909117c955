/**
 * The seccomp filter every guest command runs under (bwrap --seccomp FD): a classic-BPF program written here,
 * because it is a few dozen instructions with no branch past the next few, and a unit test can run it
 * (test/unit/seccomp.test.ts interprets it); libseccomp would be one more host library and generated code.
 *
 * A denylist of what no build needs and attackers love, and an allowlist of socket families and protocols.
 * Denied calls fail with an errno, never a kill, so a maintainer script that probes (keyctl, unshare) degrades the
 * way it does in a container. clone3 fails with ENOSYS, as on an old kernel: glibc then falls back to clone, whose
 * flags the filter can read.
 */

export const EPERM = 1;
export const ENOTTY = 25;
export const ENOSYS = 38;
export const EPROTONOSUPPORT = 93;
export const EAFNOSUPPORT = 97;

/**
 * Syscalls that answer ENOSYS, as on a kernel without them, so that their callers fall back: clone3 (glibc then
 * uses clone, whose flags the filter reads) and io_uring (liburing users fall back to plain I/O; io_uring has been
 * a steady source of kernel exploits, and its requests are not seen by this filter).
 */
export const NOT_IMPLEMENTED_SYSCALLS = ['clone3', 'io_uring_setup', 'io_uring_enter', 'io_uring_register'] as const;

/** Syscalls denied outright, with why. */
export const DENIED_SYSCALLS: Record<string, string> = {
  bpf: 'eBPF programs and maps run in the host kernel',
  perf_event_open: 'kprobes and tracing read host memory',
  kexec_load: 'replaces the running host kernel',
  kexec_file_load: 'replaces the running host kernel',
  init_module: 'loads code into the host kernel',
  finit_module: 'loads code into the host kernel',
  delete_module: 'unloads host kernel modules',
  add_key: 'the kernel keyring is not namespaced',
  keyctl: 'the kernel keyring is not namespaced',
  request_key: 'the kernel keyring is not namespaced',
  mount: 'the sandbox\'s mounts are set up before the command runs',
  umount2: 'the sandbox\'s mounts are set up before the command runs',
  pivot_root: 'the sandbox\'s root is set up before the command runs',
  open_tree: 'the new mount API',
  move_mount: 'the new mount API',
  fsopen: 'the new mount API',
  fsconfig: 'the new mount API',
  fsmount: 'the new mount API',
  fspick: 'the new mount API',
  mount_setattr: 'the new mount API',
  swapon: 'the host\'s swap',
  swapoff: 'the host\'s swap',
  reboot: 'the host',
  open_by_handle_at: 'opens host files by handle, past any mount namespace',
  userfaultfd: 'a classic kernel-exploit primitive',
  setns: 'joining another namespace',
  fanotify_init: "with CAP_SYS_ADMIN (setfiles' box), a filesystem-wide mark hands over files the host opens",
  fanotify_mark: "with CAP_SYS_ADMIN (setfiles' box), a filesystem-wide mark hands over files the host opens",
  syslog: "the host's kernel log (kernel addresses), which CAP_SYS_ADMIN still reads and clears",
};

/** Per architecture: AUDIT_ARCH value and syscall numbers (include/uapi/asm-generic/unistd.h for aarch64). */
export const SYSCALL_TABLES = {
  x64: {
    auditArch: 0xc000003e,
    // x32 syscalls are x86_64 numbers with this bit set: a second ABI the table above does not cover.
    x32Bit: 0x40000000,
    numbers: {
      ioctl: 16, socket: 41, socketpair: 53, clone: 56, unshare: 272, clone3: 435, io_uring_setup: 425, io_uring_enter: 426, io_uring_register: 427,
      bpf: 321, perf_event_open: 298, kexec_load: 246, kexec_file_load: 320, init_module: 175, finit_module: 313, delete_module: 176,
      add_key: 248, keyctl: 250, request_key: 249, mount: 165, umount2: 166, pivot_root: 155, open_tree: 428, move_mount: 429,
      fsopen: 430, fsconfig: 431, fsmount: 432, fspick: 433, mount_setattr: 442, swapon: 167, swapoff: 168, reboot: 169,
      open_by_handle_at: 304, userfaultfd: 323, setns: 308, fanotify_init: 300, fanotify_mark: 301, syslog: 103,
    },
  },
  arm64: {
    auditArch: 0xc00000b7,
    x32Bit: undefined,
    numbers: {
      ioctl: 29, socket: 198, socketpair: 199, clone: 220, unshare: 97, clone3: 435, io_uring_setup: 425, io_uring_enter: 426, io_uring_register: 427,
      bpf: 280, perf_event_open: 241, kexec_load: 104, kexec_file_load: 294, init_module: 105, finit_module: 273, delete_module: 106,
      add_key: 217, keyctl: 219, request_key: 218, mount: 40, umount2: 39, pivot_root: 41, open_tree: 428, move_mount: 429,
      fsopen: 430, fsconfig: 431, fsmount: 432, fspick: 433, mount_setattr: 442, swapon: 224, swapoff: 225, reboot: 142,
      open_by_handle_at: 265, userfaultfd: 282, setns: 268, fanotify_init: 262, fanotify_mark: 263, syslog: 116,
    },
  },
} as const;

export type SeccompArch = keyof typeof SYSCALL_TABLES;

/**
 * ioctls denied: typing into a terminal (TIOCSTI), the console's selection/paste (TIOCLINUX), and setting a
 * terminal's line discipline (TIOCSETD), which loads the host kernel's rarely used line-discipline modules.
 */
export const TIOCSTI = 0x5412;
export const TIOCLINUX = 0x541c;
export const TIOCSETD = 0x5423;
/**
 * The sockets a build uses, by family and the protocols allowed in it: local sockets, IPv4 and IPv6 (apt, dnf,
 * curl, through pasta's NAT: the protocol's default, TCP, UDP, ICMP for ping), and netlink (glibc's getaddrinfo
 * asks NETLINK_ROUTE for the interfaces' addresses; libselinux, libaudit and libudev use SELINUX, AUDIT and
 * KOBJECT_UEVENT). Another family fails with EAFNOSUPPORT and another protocol with EPROTONOSUPPORT, as on a kernel
 * without them: AF_VSOCK would reach the hypervisor and the host's own vsock services past the network namespace,
 * and the kernel loads a protocol's module before any permission check (AF_ALG, AF_RDS, AF_TIPC, AF_CAN, SCTP,
 * DCCP, L2TP, generic netlink and netfilter's netlink among them) into the host kernel.
 */
export const ALLOWED_SOCKETS = {
  AF_UNIX: { family: 1, protocols: [0, 1] },
  AF_INET: { family: 2, protocols: [0, 1, 6, 17] },
  AF_INET6: { family: 10, protocols: [0, 6, 17, 58] },
  AF_NETLINK: { family: 16, protocols: [0, 7, 9, 15] },
} as const;

/**
 * The only ioctls a host tool's box allows (isatty and the terminal's size); any other fails with ENOTTY. setfiles
 * makes none: a crafted policy that takes it over would otherwise have every filesystem ioctl on the host's /usr
 * with CAP_SYS_ADMIN (FIFREEZE freezes the host's root filesystem; XFS's handle ioctls and btrfs's tree search
 * read any file of it).
 */
export const TCGETS = 0x5401;
export const TIOCGWINSZ = 0x5413;
/** isatty's ioctl from glibc 2.42 on. */
export const TCGETS2 = 0x802c542a;
export const HOST_TOOL_IOCTLS = [TCGETS, TCGETS2, TIOCGWINSZ] as const;

/**
 * Who runs under the filter: a guest command (`guest`: the denylist above), or a host program parsing hostile
 * data with root's capabilities (`host-tool`, setfiles' box: the same, and ioctls allowlisted).
 */
export type SeccompProfile = 'guest' | 'host-tool';

/** unshare/clone flag for a new user namespace, where an unprivileged process gets every capability back. */
export const CLONE_NEWUSER = 0x10000000;

// Classic BPF opcodes and seccomp return values (linux/filter.h, linux/seccomp.h).
const LD_W_ABS = 0x20;
const JEQ_K = 0x15;
const JGE_K = 0x35;
const JSET_K = 0x45;
const RET_K = 0x06;
const RET_ALLOW = 0x7fff0000;
const RET_ERRNO = 0x00050000;

// Offsets in struct seccomp_data: nr, arch, then args[] as 64-bit words (the low half first, little-endian hosts).
const NR = 0;
const ARCH = 4;
const argLow = (index: number) => 16 + 8 * index;

interface Instruction {
  code: number;
  jt: number;
  jf: number;
  k: number;
}

const load = (offset: number): Instruction => ({ code: LD_W_ABS, jt: 0, jf: 0, k: offset });
const ret = (value: number): Instruction => ({ code: RET_K, jt: 0, jf: 0, k: value });
/** When the accumulator equals k, go on; else skip `skip` instructions. */
const ifEqual = (k: number, skip: number): Instruction => ({ code: JEQ_K, jt: 0, jf: skip, k });

/** The accumulator (already loaded) allowed when it is one of `values`, else `otherwise`. */
function allowOnly(values: readonly number[], otherwise: Instruction): Instruction[] {
  // Each comparison jumps over the ones after it and `otherwise`, to the allow.
  return [...values.map((value, index) => ({ code: JEQ_K, jt: values.length - index, jf: 0, k: value })), otherwise, ret(RET_ALLOW)];
}

/** The filter for one host architecture (the guest's programs, even under qemu-user, make the host's syscalls). */
export function seccompProgram(arch: SeccompArch, profile: SeccompProfile = 'guest'): Instruction[] {
  const table = SYSCALL_TABLES[arch];
  const deny = ret(RET_ERRNO | EPERM);
  const program: Instruction[] = [
    load(ARCH),
    // Another ABI's syscall (i386 `int 0x80` on x86_64, arm32 on arm64) has other numbers: deny them all.
    { code: JEQ_K, jt: 1, jf: 0, k: table.auditArch },
    deny,
    load(NR),
  ];
  if (table.x32Bit !== undefined) program.push({ code: JGE_K, jt: 0, jf: 1, k: table.x32Bit }, deny);
  for (const name of Object.keys(DENIED_SYSCALLS)) program.push(ifEqual(table.numbers[name as keyof typeof table.numbers], 1), deny);
  for (const name of NOT_IMPLEMENTED_SYSCALLS) program.push(ifEqual(table.numbers[name], 1), ret(RET_ERRNO | ENOSYS));
  // ioctl(fd, request, …): the request is an unsigned int, so its low half is all the kernel reads.
  const ioctl = profile === 'host-tool'
    ? allowOnly(HOST_TOOL_IOCTLS, ret(RET_ERRNO | ENOTTY))
    : [ifEqual(TIOCSTI, 1), deny, ifEqual(TIOCLINUX, 1), deny, ifEqual(TIOCSETD, 1), deny, ret(RET_ALLOW)];
  program.push(ifEqual(table.numbers.ioctl, ioctl.length + 1), load(argLow(1)), ...ioctl);
  // socket(family, type, protocol) and socketpair(…): the family, then its protocol.
  const sockets = socketChecks();
  for (const name of ['socket', 'socketpair'] as const) program.push(ifEqual(table.numbers[name], sockets.length), ...sockets);
  // unshare(flags) and clone(flags, …) asking for a new user namespace.
  for (const name of ['unshare', 'clone'] as const) {
    program.push(ifEqual(table.numbers[name], 4), load(argLow(0)), { code: JSET_K, jt: 0, jf: 1, k: CLONE_NEWUSER }, deny, ret(RET_ALLOW));
  }
  program.push(ret(RET_ALLOW));
  return program;
}

/**
 * For socket and socketpair: the family loaded and looked up in ALLOWED_SOCKETS (each match jumps to its protocol
 * check), EAFNOSUPPORT for none; each protocol check loads the protocol and allows only its family's list.
 */
function socketChecks(): Instruction[] {
  const allowed = Object.values(ALLOWED_SOCKETS);
  const protocolChecks = allowed.map(({ protocols }) => [load(argLow(2)), ...allowOnly(protocols, ret(RET_ERRNO | EPROTONOSUPPORT))]);
  const program: Instruction[] = [load(argLow(0))];
  // Family i's comparison jumps past the comparisons after it, the EAFNOSUPPORT and the checks of families before i.
  allowed.forEach(({ family }, index) => {
    const skip = allowed.length - index + protocolChecks.slice(0, index).reduce((sum, check) => sum + check.length, 0);
    program.push({ code: JEQ_K, jt: skip, jf: 0, k: family });
  });
  program.push(ret(RET_ERRNO | EAFNOSUPPORT));
  for (const check of protocolChecks) program.push(...check);
  return program;
}

/** The program as struct sock_filter[] bytes, what bwrap --seccomp reads from its fd. */
export function seccompBytes(arch: SeccompArch, profile: SeccompProfile = 'guest'): Buffer {
  const program = seccompProgram(arch, profile);
  const bytes = Buffer.alloc(program.length * 8);
  program.forEach((instruction, index) => {
    bytes.writeUInt16LE(instruction.code, index * 8);
    bytes.writeUInt8(instruction.jt, index * 8 + 2);
    bytes.writeUInt8(instruction.jf, index * 8 + 3);
    bytes.writeUInt32LE(instruction.k >>> 0, index * 8 + 4);
  });
  return bytes;
}

/** The host's architecture as a seccomp table, or undefined where there is none (no filter, said in the log). */
export function hostSeccompArch(arch: string = process.arch): SeccompArch | undefined {
  return arch === 'x64' || arch === 'arm64' ? arch : undefined;
}
