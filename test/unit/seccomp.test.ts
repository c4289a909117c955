import { readFileSync } from 'node:fs';
import { ALLOWED_SOCKETS, CLONE_NEWUSER, DENIED_SYSCALLS, EAFNOSUPPORT, ENOSYS, ENOTTY, EPERM, EPROTONOSUPPORT, NOT_IMPLEMENTED_SYSCALLS, seccompBytes, SYSCALL_TABLES, TCGETS, TCGETS2, TIOCGWINSZ, TIOCLINUX, TIOCSETD, TIOCSTI, type SeccompArch } from '../../src/chroot/seccomp.js';

/** A classic-BPF interpreter for the opcodes a seccomp filter uses: runs the filter's bytes on one syscall. */
function runFilter(bytes: Buffer, data: { nr: number; arch: number; args?: number[] }): number {
  const word = (offset: number) => {
    if (offset === 0) return data.nr >>> 0;
    if (offset === 4) return data.arch >>> 0;
    const index = (offset - 16) / 8;
    if (Number.isInteger(index)) return (data.args?.[index] ?? 0) >>> 0;
    return 0; // the high halves of the arguments
  };
  let a = 0;
  for (let pc = 0; pc * 8 < bytes.length; pc++) {
    const code = bytes.readUInt16LE(pc * 8);
    const jt = bytes.readUInt8(pc * 8 + 2);
    const jf = bytes.readUInt8(pc * 8 + 3);
    const k = bytes.readUInt32LE(pc * 8 + 4);
    if (code === 0x20) a = word(k);
    else if (code === 0x06) return k;
    else if (code === 0x15) pc += a === k ? jt : jf;
    else if (code === 0x35) pc += a >= k ? jt : jf;
    else if (code === 0x45) pc += (a & k) !== 0 ? jt : jf;
    else throw new Error(`unexpected opcode 0x${code.toString(16)} at ${pc}`);
  }
  throw new Error('the filter ran off its end');
}

const ALLOW = 0x7fff0000;
const errno = (value: number) => 0x00050000 | value;

describe.each(Object.keys(SYSCALL_TABLES) as SeccompArch[])('seccomp filter for %s', (arch) => {
  const table = SYSCALL_TABLES[arch];
  const bytes = seccompBytes(arch);
  const call = (nr: number, args?: number[]) => runFilter(bytes, { nr, arch: table.auditArch, args });

  test('every denied syscall fails with EPERM; the ones around it pass', () => {
    for (const name of Object.keys(DENIED_SYSCALLS)) expect({ name, result: call(table.numbers[name as keyof typeof table.numbers]) }).toEqual({ name, result: errno(EPERM) });
    // read, write, openat, execve stay allowed (x86_64: 0, 1, 257, 59; aarch64: 63, 64, 56, 221).
    for (const nr of arch === 'x64' ? [0, 1, 257, 59] : [63, 64, 56, 221]) expect(call(nr)).toBe(ALLOW);
  });

  test('clone3 and io_uring answer ENOSYS (callers fall back); clone and unshare are denied only for a new user namespace', () => {
    expect(call(table.numbers.clone3)).toBe(errno(ENOSYS));
    expect(NOT_IMPLEMENTED_SYSCALLS.map((name) => call(table.numbers[name]))).toEqual(NOT_IMPLEMENTED_SYSCALLS.map(() => errno(ENOSYS)));
    // io_uring_setup, io_uring_enter, io_uring_register: 425, 426, 427 in both tables (asm-generic numbering).
    expect([425, 426, 427].map((nr) => call(nr))).toEqual([errno(ENOSYS), errno(ENOSYS), errno(ENOSYS)]);
    for (const nr of [table.numbers.clone, table.numbers.unshare]) {
      expect(call(nr, [CLONE_NEWUSER])).toBe(errno(EPERM));
      expect(call(nr, [CLONE_NEWUSER | 0x00020000 | 0x11])).toBe(errno(EPERM));
      expect(call(nr, [0x01200011])).toBe(ALLOW); // fork()'s flags
    }
  });

  test('ioctl TIOCSTI, TIOCLINUX and TIOCSETD are denied; other ioctls pass', () => {
    expect(call(table.numbers.ioctl, [0, TIOCSTI])).toBe(errno(EPERM));
    expect(call(table.numbers.ioctl, [0, TIOCLINUX])).toBe(errno(EPERM));
    expect(call(table.numbers.ioctl, [0, TIOCSETD])).toBe(errno(EPERM));
    expect(call(table.numbers.ioctl, [0, 0x5423])).toBe(errno(EPERM));
    expect(call(table.numbers.ioctl, [0, 0x5401])).toBe(ALLOW); // TCGETS
  });

  test('sockets: local, IPv4, IPv6 and netlink with their usual protocols pass; other families EAFNOSUPPORT, other protocols EPROTONOSUPPORT', () => {
    for (const nr of [table.numbers.socket, table.numbers.socketpair]) {
      const socket = (family: number, protocol = 0) => call(nr, [family, 1, protocol]);
      // unix; TCP/UDP/ICMP over IPv4; TCP/UDP/ICMPv6 over IPv6; netlink route, selinux, audit, uevents.
      const allowed = [[1, 0], [1, 1], [2, 0], [2, 6], [2, 17], [2, 1], [10, 0], [10, 6], [10, 17], [10, 58], [16, 0], [16, 7], [16, 9], [16, 15]];
      expect(allowed.map(([family, protocol]) => socket(family, protocol))).toEqual(allowed.map(() => ALLOW));
      // AF_VSOCK 40, AF_ALG 38, AF_PACKET 17, AF_RDS 21, AF_CAN 29, AF_TIPC 30, AF_BLUETOOTH 31, AF_UNSPEC 0.
      expect([40, 38, 17, 21, 29, 30, 31, 0].map((family) => socket(family))).toEqual(Array(8).fill(errno(EAFNOSUPPORT)));
      // SCTP 132, DCCP 33, L2TP 115, SMC 256, raw 255 over IP; netlink's generic 16, netfilter 12, crypto 21, sock_diag 4; unix 2.
      const refused = [[2, 132], [2, 33], [10, 132], [10, 115], [2, 256], [2, 255], [16, 16], [16, 12], [16, 21], [16, 4], [1, 2]];
      expect(refused.map(([family, protocol]) => socket(family, protocol))).toEqual(refused.map(() => errno(EPROTONOSUPPORT)));
    }
    expect(Object.values(ALLOWED_SOCKETS).map(({ family }) => family)).toEqual([1, 2, 10, 16]);
    // connect, bind and sendto (x86_64 42, 49, 44; aarch64 203, 200, 206) are not looked at.
    for (const nr of arch === 'x64' ? [42, 49, 44] : [203, 200, 206]) expect(call(nr, [40])).toBe(ALLOW);
  });

  test("the host-tool profile (setfiles' box) allows a terminal's ioctls and no other; the rest of the filter is the guest's", () => {
    const hostTool = seccompBytes(arch, 'host-tool');
    const toolCall = (nr: number, args?: number[]) => runFilter(hostTool, { nr, arch: table.auditArch, args });
    expect(toolCall(table.numbers.ioctl, [1, TCGETS])).toBe(ALLOW);
    expect(toolCall(table.numbers.ioctl, [1, TIOCGWINSZ])).toBe(ALLOW);
    expect(toolCall(table.numbers.ioctl, [1, TCGETS2])).toBe(ALLOW);
    // FIFREEZE, FITHAW, FS_IOC_GETFLAGS, FS_IOC_SETFLAGS, BTRFS_IOC_TREE_SEARCH, XFS_IOC_FD_TO_HANDLE, TIOCSTI.
    const denied = [0xc0045877, 0xc0045878, 0x80086601, 0x40086602, 0xd0009411, 0xc0185868, TIOCSTI];
    expect(denied.map((request) => toolCall(table.numbers.ioctl, [3, request]))).toEqual(denied.map(() => errno(ENOTTY)));
    // The guest profile lets those through (a guest's own filesystems), as before.
    expect(call(table.numbers.ioctl, [3, 0x80086601])).toBe(ALLOW);
    for (const name of Object.keys(DENIED_SYSCALLS)) expect(toolCall(table.numbers[name as keyof typeof table.numbers])).toBe(errno(EPERM));
    expect(toolCall(table.numbers.io_uring_setup)).toBe(errno(ENOSYS));
    expect(toolCall(table.numbers.socket, [40, 1, 0])).toBe(errno(EAFNOSUPPORT));
    expect(toolCall(table.numbers.unshare, [CLONE_NEWUSER])).toBe(errno(EPERM));
    expect(toolCall(arch === 'x64' ? 0 : 63)).toBe(ALLOW);
  });

  test('another ABI\'s syscalls are denied whatever their number', () => {
    for (const other of [0x40000003 /* i386 */, 0x40000028 /* arm */, arch === 'x64' ? 0xc00000b7 : 0xc000003e]) {
      expect(runFilter(bytes, { nr: 0, arch: other })).toBe(errno(EPERM));
    }
    if (arch === 'x64') expect(call(0x40000000 | 1)).toBe(errno(EPERM)); // x32 write
  });
});

test('the x86_64 numbers are the kernel headers\' (where this host has them)', () => {
  let header: string;
  try {
    header = readFileSync('/usr/include/x86_64-linux-gnu/asm/unistd_64.h', 'utf8');
  } catch {
    return;
  }
  for (const [name, nr] of Object.entries(SYSCALL_TABLES.x64.numbers)) expect({ name, nr: Number(new RegExp(`#define __NR_${name}\\s+(\\d+)`).exec(header)?.[1]) }).toEqual({ name, nr });
});

test('the aarch64 numbers are asm-generic\'s (where this host has them)', () => {
  let header: string;
  try {
    header = readFileSync('/usr/include/asm-generic/unistd.h', 'utf8');
  } catch {
    return;
  }
  for (const [name, nr] of Object.entries(SYSCALL_TABLES.arm64.numbers)) expect({ name, nr: Number(new RegExp(`#define __NR(?:3264)?_${name}\\s+(\\d+)`).exec(header)?.[1]) }).toEqual({ name, nr });
});
