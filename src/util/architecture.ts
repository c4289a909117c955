import { readGuestHead } from './guest-fs.js';
import { ELF_HEADER_SIZE, parseElfHeader, type ElfHeader } from './elf.js';
import { resolveInRoot } from './fs.js';

/**
 * One machine architecture, under each name the tools use: Debian's (dpkg), rpm's (%_arch), qemu's (the
 * emulator qemu-NAME and its binfmt_misc entry), and the ELF header fields that identify its programs.
 */
export interface Architecture {
  debian: string;
  rpm: string;
  qemu: string;
  /** e_machine, ELF class and byte order of its programs. */
  machine: number;
  is64: boolean;
  littleEndian: boolean;
  /** ARM only: EF_ARM_ABI_FLOAT_HARD set (armhf) or not (armel); both run under qemu-arm. */
  hardFloat?: boolean;
  /**
   * binfmt_misc magic and mask (20 bytes, hex) as qemu's scripts/qemu-binfmt-conf.sh defines them and
   * Debian's qemu-user-static / qemu-user-binfmt ship them in /usr/lib/binfmt.d/qemu-NAME.conf: the ELF
   * identification, e_type ET_EXEC or ET_DYN, and e_machine.
   */
  binfmtMagic: string;
  binfmtMask: string;
}

const EF_ARM_ABI_FLOAT_HARD = 0x400;

/** The magic of an ELF64 or ELF32, little- or big-endian, ET_EXEC program of `machine`. */
const magic = (is64: boolean, littleEndian: boolean, machine: number) => {
  const bytes = Buffer.alloc(20);
  bytes.writeUInt32BE(0x7f454c46, 0);
  bytes[4] = is64 ? 2 : 1;
  bytes[5] = littleEndian ? 1 : 2;
  bytes[6] = 1;
  if (littleEndian) {
    bytes.writeUInt16LE(2, 16);
    bytes.writeUInt16LE(machine, 18);
  } else {
    bytes.writeUInt16BE(2, 16);
    bytes.writeUInt16BE(machine, 18);
  }
  return bytes.toString('hex');
};

// The masks, from qemu-binfmt-conf.sh: they ignore EI_OSABI (byte 7), the low bit of e_type (EXEC or DYN),
// and, per architecture, what its ABI variants put in EI_ABIVERSION or the byte order of the class bytes.
const MASK = 'ffffffffffffff00fffffffffffffffffeffffff';
const X86_MASK = 'fffffffffffefe00fffffffffffffffffeffffff';
const PPC64LE_MASK = 'fffffffffffffffcfffffffffffffffffeffff00';
/** s390x and ppc64: big-endian, e_type in bytes 16-17. */
const BE64_MASK = 'fffffffffffffffcfffffffffffffffffffeffff';
const LOONGARCH64_MASK = 'fffffffffffffffc00fffffffffffffffeffffff';
const MIPS64EL_MASK = 'ffffffffffffff00fefffffffffffffffeffffff';

const arch = (debian: string, rpm: string, qemu: string, machine: number, is64: boolean, littleEndian: boolean, binfmtMask: string, hardFloat?: boolean): Architecture => ({
  debian, rpm, qemu, machine, is64, littleEndian, binfmtMask, binfmtMagic: magic(is64, littleEndian, machine), ...(hardFloat === undefined ? {} : { hardFloat }),
});

export const ARCHITECTURES: readonly Architecture[] = [
  arch('amd64', 'x86_64', 'x86_64', 0x3e, true, true, X86_MASK),
  arch('i386', 'i686', 'i386', 0x03, false, true, X86_MASK),
  arch('arm64', 'aarch64', 'aarch64', 0xb7, true, true, MASK),
  arch('armhf', 'armv7hl', 'arm', 0x28, false, true, MASK, true),
  arch('armel', 'armv7l', 'arm', 0x28, false, true, MASK, false),
  arch('ppc64el', 'ppc64le', 'ppc64le', 0x15, true, true, PPC64LE_MASK),
  arch('ppc64', 'ppc64', 'ppc64', 0x15, true, false, BE64_MASK),
  arch('s390x', 's390x', 's390x', 0x16, true, false, BE64_MASK),
  arch('riscv64', 'riscv64', 'riscv64', 0xf3, true, true, MASK),
  arch('loong64', 'loongarch64', 'loongarch64', 0x102, true, true, LOONGARCH64_MASK),
  arch('mips64el', 'mips64el', 'mips64el', 0x08, true, true, MIPS64EL_MASK),
];

/** The architecture an ELF header is for; undefined for a machine not in the table. */
export function architectureOf(header: ElfHeader): Architecture | undefined {
  return ARCHITECTURES.find(
    (a) =>
      a.machine === header.machine &&
      a.is64 === header.is64 &&
      a.littleEndian === header.littleEndian &&
      (a.hardFloat === undefined || a.hardFloat === ((header.flags & EF_ARM_ABI_FLOAT_HARD) !== 0)),
  );
}

/** Programs every Linux guest has, whose ELF header says what the guest runs on. */
export const ARCHITECTURE_PROBES = ['/bin/sh', '/usr/bin/env'];

export interface ProgramArchitecture {
  /** The guest path of the program read (after symlinks, resolved inside the guest). */
  program: string;
  header: ElfHeader;
  /** Undefined when the machine is not one imagebuilder knows. */
  architecture?: Architecture;
}

/**
 * What a system's programs are built for, read from the ELF header of the first probe that is an ELF file,
 * resolved inside `root` (an absolute symlink such as /bin/sh -> /usr/bin/dash points into the guest, never
 * at the host). `root` '/' asks the same of the host. Undefined when no probe is an ELF program.
 */
export async function programArchitecture(root: string, probes: readonly string[] = ARCHITECTURE_PROBES): Promise<ProgramArchitecture | undefined> {
  for (const probe of probes) {
    const program = await resolveInRoot(root, probe);
    // Not a regular file (a FIFO, a device) or gone: not a program to learn from.
    const head = await readGuestHead(root, program, ELF_HEADER_SIZE).catch(() => undefined);
    const header = head && parseElfHeader(head);
    if (header) return { program, header, architecture: architectureOf(header) };
  }
  return undefined;
}

/** Whether a host of architecture `host` runs `guest` programs itself: its own, and i386 on amd64. */
export function runsNatively(host: ElfHeader, guest: ElfHeader): boolean {
  if (host.machine === guest.machine && host.is64 === guest.is64 && host.littleEndian === guest.littleEndian) return true;
  return host.machine === 0x3e && guest.machine === 0x03;
}
