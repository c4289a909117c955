/**
 * A minimal ELF file, byte by byte as elf(5) lays it out: the file header and, when `programHeaders` lists
 * p_type values, a program header table right after it. Enough for what reads headers (machine, class, byte
 * order, e_flags, PT_INTERP); it is not a program that runs.
 */
export function craftElf(options: { is64: boolean; littleEndian: boolean; machine: number; flags?: number; programHeaders?: number[] }): Buffer {
  const { is64, littleEndian, machine, flags = 0, programHeaders = [] } = options;
  const headerSize = is64 ? 64 : 52;
  const entrySize = is64 ? 56 : 32;
  const bytes = Buffer.alloc(headerSize + entrySize * programHeaders.length);
  const u16 = (value: number, offset: number) => (littleEndian ? bytes.writeUInt16LE(value, offset) : bytes.writeUInt16BE(value, offset));
  const u32 = (value: number, offset: number) => (littleEndian ? bytes.writeUInt32LE(value, offset) : bytes.writeUInt32BE(value, offset));
  bytes.write('\x7fELF', 0, 'latin1');
  bytes[4] = is64 ? 2 : 1;
  bytes[5] = littleEndian ? 1 : 2;
  bytes[6] = 1; // EV_CURRENT
  u16(3, 16); // ET_DYN, as a PIE
  u16(machine, 18);
  u32(1, 20);
  if (is64) {
    if (littleEndian) bytes.writeBigUInt64LE(BigInt(headerSize), 32);
    else bytes.writeBigUInt64BE(BigInt(headerSize), 32);
  } else {
    u32(headerSize, 28);
  }
  u32(flags, is64 ? 48 : 36);
  u16(headerSize, is64 ? 52 : 40);
  u16(entrySize, is64 ? 54 : 42);
  u16(programHeaders.length, is64 ? 56 : 44);
  programHeaders.forEach((type, index) => u32(type, headerSize + index * entrySize));
  return bytes;
}

export const PT_LOAD = 1;
export const PT_INTERP = 3;
