import { open } from 'node:fs/promises';

/** The fields of an ELF file header (elf(5)) that say what machine a program is for and how it is loaded. */
export interface ElfHeader {
  /** ELFCLASS64 (true) or ELFCLASS32. */
  is64: boolean;
  littleEndian: boolean;
  /** e_type: 2 ET_EXEC, 3 ET_DYN (PIE and shared objects). */
  type: number;
  /** e_machine: EM_X86_64 0x3e, EM_AARCH64 0xb7 … */
  machine: number;
  /** e_flags: processor-specific (ARM: EABI version and float ABI). */
  flags: number;
  /** The first bytes of the file, as binfmt_misc matches its magic against them. */
  bytes: Buffer;
}

const ELF_MAGIC = 0x7f454c46;
/** Enough for the whole header of either class (52 bytes for ELF32, 64 for ELF64). */
export const ELF_HEADER_SIZE = 64;
const PT_INTERP = 3;

/** Parses an ELF file header; undefined when the bytes are not one. */
export function parseElfHeader(bytes: Buffer): ElfHeader | undefined {
  if (bytes.length < 52 || bytes.readUInt32BE(0) !== ELF_MAGIC) return undefined;
  const is64 = bytes[4] === 2;
  const littleEndian = bytes[5] === 1;
  if (is64 && bytes.length < ELF_HEADER_SIZE) return undefined;
  const u16 = (offset: number) => (littleEndian ? bytes.readUInt16LE(offset) : bytes.readUInt16BE(offset));
  const u32 = (offset: number) => (littleEndian ? bytes.readUInt32LE(offset) : bytes.readUInt32BE(offset));
  return { is64, littleEndian, type: u16(16), machine: u16(18), flags: u32(is64 ? 48 : 36), bytes: bytes.subarray(0, ELF_HEADER_SIZE) };
}

/**
 * Whether an ELF program names a program interpreter (PT_INTERP: a dynamic loader such as
 * /lib64/ld-linux-x86-64.so.2). The kernel opens that path at exec time, relative to the caller's root:
 * inside a foreign guest it is not there, so only a program without one (static, static-pie) can be an
 * emulator that binfmt_misc starts in a chroot. Undefined when the file is not ELF.
 */
export async function hasProgramInterpreter(path: string): Promise<boolean | undefined> {
  const file = await open(path, 'r');
  try {
    const head = Buffer.alloc(ELF_HEADER_SIZE);
    const { bytesRead } = await file.read(head, 0, ELF_HEADER_SIZE, 0);
    const header = parseElfHeader(head.subarray(0, bytesRead));
    if (!header) return undefined;
    const le = header.littleEndian;
    const u16 = (b: Buffer, o: number) => (le ? b.readUInt16LE(o) : b.readUInt16BE(o));
    const u32 = (b: Buffer, o: number) => (le ? b.readUInt32LE(o) : b.readUInt32BE(o));
    const phoff = header.is64 ? Number(le ? head.readBigUInt64LE(32) : head.readBigUInt64BE(32)) : u32(head, 28);
    const phentsize = u16(head, header.is64 ? 54 : 42);
    const phnum = u16(head, header.is64 ? 56 : 44);
    const table = Buffer.alloc(phentsize * phnum);
    await file.read(table, 0, table.length, phoff);
    for (let i = 0; i < phnum; i++) if (u32(table, i * phentsize) === PT_INTERP) return true;
    return false;
  } finally {
    await file.close();
  }
}
