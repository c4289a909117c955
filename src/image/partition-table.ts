/** Partition tables read as data: whether an image has an EFI System Partition (booting it, --format ova). */

/** The EFI System Partition's GPT type GUID, as its 16 bytes lie on disk (the first three fields little-endian). */
const ESP_TYPE = Buffer.from('28732ac11ff8d211ba4b00a0c93ec93b', 'hex');
const SECTOR = 512;

/**
 * Whether a disk's partition table (its first sectors, as raw bytes) has an EFI System Partition: a GPT entry of
 * type C12A7328-F81F-11D2-BA4B-00A0C93EC93B, or an MBR entry of type 0xEF. Read as data, bounded by `head`:
 * entries beyond it are not looked at (the caller reads enough for the standard 128 entries at LBA 2).
 */
export function hasEsp(head: Buffer): boolean {
  if (head.length < 2 * SECTOR || head.readUInt16LE(510) !== 0xaa55) return false;
  const mbrTypes = [0, 1, 2, 3].map((i) => head[446 + i * 16 + 4]);
  if (mbrTypes.includes(0xef)) return true;
  if (!mbrTypes.includes(0xee)) return false;
  const header = head.subarray(SECTOR, 2 * SECTOR);
  if (header.toString('latin1', 0, 8) !== 'EFI PART') return false;
  const entriesLba = Number(header.readBigUInt64LE(72));
  const count = header.readUInt32LE(80);
  const size = header.readUInt32LE(84);
  if (size < 128 || size > 4096 || entriesLba < 2) return false;
  for (let i = 0; i < Math.min(count, 1024); i++) {
    const at = entriesLba * SECTOR + i * size;
    if (at + 16 > head.length) break;
    if (head.subarray(at, at + 16).equals(ESP_TYPE)) return true;
  }
  return false;
}

/** How many bytes hasEsp needs for a standard GPT: the MBR, the header and 128 entries of 128 bytes. */
export const PARTITION_TABLE_BYTES = 34 * SECTOR;
