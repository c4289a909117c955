import { readFileSync } from 'node:fs';
import { CLONE_NEWUSER, DENIED_SYSCALLS, ENOSYS, EPERM, NOT_IMPLEMENTED_SYSCALLS, seccompBytes, SYSCALL_TABLES, TIOCLINUX, TIOCSETD, TIOCSTI, type SeccompArch } from '../../src/chroot/seccomp.js';

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
