/**
 * The free space of a FAT12/16/32 filesystem (an EFI system partition), read from its boot sector and its FATs
 * without mounting it: what the kernel's FITRIM on vfat discards, for hosts whose kernel has no vfat. The guest
 * wrote every byte read here, so each field is checked against the others and the device's size; anything that
 * does not add up is refused (the caller leaves the partition to the appliance), never guessed at.
 */

/** Reads `length` bytes at `offset` of the filesystem's device (short only at its end). */
export type ReadAt = (offset: number, length: number) => Promise<Buffer>;

export interface FatGeometry {
  bits: 12 | 16 | 32;
  clusterBytes: number;
  /** Data clusters: numbered 2 … clusters + 1. */
  clusters: number;
  /** Byte offset of cluster 2, the first data cluster. */
  dataOffset: number;
  fatOffset: number;
  fatBytes: number;
  /** Copies of the FAT, one after the other from fatOffset. */
  fats: number;
}

export interface ByteRange {
  offset: number;
  length: number;
}

/** A FAT larger than this is not read (a 64 MiB FAT32 maps 1 TiB at 64 KiB clusters; ESPs are well under). */
export const MAX_FAT_BYTES = 64 * 2 ** 20;

/** The boot sector's geometry, or why it is not a FAT this code will read. */
export function fatGeometry(boot: Buffer, deviceBytes: number): FatGeometry | string {
  if (boot.length < 512) return 'the boot sector is short';
  if (boot.readUInt16LE(510) !== 0xaa55) return 'the boot sector has no 55AA signature';
  const sectorBytes = boot.readUInt16LE(11);
  const sectorsPerCluster = boot[13];
  const reservedSectors = boot.readUInt16LE(14);
  const fats = boot[16];
  const rootEntries = boot.readUInt16LE(17);
  const totalSectors = boot.readUInt16LE(19) || boot.readUInt32LE(32);
  const fatSectors = boot.readUInt16LE(22) || boot.readUInt32LE(36);
  if (![512, 1024, 2048, 4096].includes(sectorBytes)) return `bytes per sector ${sectorBytes} is not 512, 1024, 2048 or 4096`;
  if (!sectorsPerCluster || sectorsPerCluster & (sectorsPerCluster - 1)) return `sectors per cluster ${sectorsPerCluster} is not a power of two`;
  if (!reservedSectors || !fats || !fatSectors || !totalSectors) return 'reserved sectors, FAT count, FAT size or total sectors is zero';
  if (fats > 2) return `${fats} copies of the FAT (mkfs.fat makes 1 or 2)`;
  if (totalSectors * sectorBytes > deviceBytes) return `the filesystem (${totalSectors * sectorBytes} bytes) is larger than its device (${deviceBytes})`;
  const fatBytes = fatSectors * sectorBytes;
  if (fatBytes > MAX_FAT_BYTES) return `its FAT (${fatBytes} bytes) is larger than ${MAX_FAT_BYTES}`;
  const rootSectors = Math.ceil((rootEntries * 32) / sectorBytes);
  const dataSector = reservedSectors + fats * fatSectors + rootSectors;
  if (dataSector >= totalSectors) return 'its data area starts past its end';
  const clusters = Math.floor((totalSectors - dataSector) / sectorsPerCluster);
  // The type is the cluster count's, as the specification (and the kernel) decide it, not the label's.
  const bits = clusters < 4085 ? 12 : clusters < 65525 ? 16 : 32;
  // The 16-bit FAT size is zero exactly on FAT32 (whose size is then at offset 36, where FAT12/16 keep their drive number).
  if ((boot.readUInt16LE(22) === 0) !== (bits === 32)) return `a FAT${bits} by its cluster count has the other type's FAT size field`;
  if (bits === 32 && rootEntries !== 0) return 'a FAT32 by its cluster count has a FAT12/16 root directory';
  if (bits !== 32 && rootEntries === 0) return 'a FAT12/16 by its cluster count has no root directory';
  const needed = bits === 12 ? Math.ceil(((clusters + 2) * 3) / 2) : ((clusters + 2) * bits) / 8;
  if (needed > fatBytes) return `its FAT (${fatBytes} bytes) is too small for ${clusters} clusters`;
  return { bits, clusterBytes: sectorsPerCluster * sectorBytes, clusters, dataOffset: dataSector * sectorBytes, fatOffset: reservedSectors * sectorBytes, fatBytes, fats };
}

/** The FAT entry of `cluster` (12, 16 or the low 28 bits of 32). */
function entry(fat: Buffer, bits: 12 | 16 | 32, cluster: number): number {
  if (bits === 16) return fat.readUInt16LE(cluster * 2);
  if (bits === 32) return fat.readUInt32LE(cluster * 4) & 0x0fffffff;
  const pair = fat.readUInt16LE(Math.floor((cluster * 3) / 2));
  return cluster & 1 ? pair >> 4 : pair & 0xfff;
}

/**
 * Byte ranges (within the device) of the runs of free clusters at least `minBytes` long, in order. A cluster is
 * free when its entry is 0 in every copy of the FAT (FAT32 may keep the copies apart and use another than the
 * first); nothing else is read, so a crafted FAT can only mark its own clusters free.
 */
export async function fatFreeRanges(read: ReadAt, deviceBytes: number, minBytes = 0): Promise<{ geometry: FatGeometry; ranges: ByteRange[]; freeBytes: number } | string> {
  const geometry = fatGeometry(await read(0, 512), deviceBytes);
  if (typeof geometry === 'string') return geometry;
  const fats: Buffer[] = [];
  for (let copy = 0; copy < geometry.fats; copy++) {
    const fat = await read(geometry.fatOffset + copy * geometry.fatBytes, geometry.fatBytes);
    if (fat.length < geometry.fatBytes) return 'its FAT is cut short by the end of the device';
    fats.push(fat);
  }
  const ranges: ByteRange[] = [];
  let freeBytes = 0;
  let runStart = -1;
  const close = (end: number) => {
    const length = (end - runStart) * geometry.clusterBytes;
    freeBytes += length;
    if (length >= minBytes && length > 0) ranges.push({ offset: geometry.dataOffset + (runStart - 2) * geometry.clusterBytes, length });
    runStart = -1;
  };
  const last = geometry.clusters + 1;
  for (let cluster = 2; cluster <= last; cluster++) {
    const free = fats.every((fat) => entry(fat, geometry.bits, cluster) === 0);
    if (free && runStart < 0) runStart = cluster;
    else if (!free && runStart >= 0) close(cluster);
  }
  if (runStart >= 0) close(last + 1);
  return { geometry, ranges, freeBytes };
}
