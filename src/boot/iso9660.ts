/**
 * A minimal ISO 9660 image (ECMA-119): one volume, files in the root directory only, no Rock Ridge or Joliet.
 * Enough for a cloud-init NoCloud seed (volume id `cidata`, files user-data and meta-data): Linux's isofs shows
 * the names lowercased without the `;1` version (its default map=normal), which is what cloud-init reads.
 */

const SECTOR = 2048;

export interface IsoFile {
  /** The name as a reader sees it: lowercase letters, digits, '-' and '_' (written uppercase, as ISO 9660 has it). */
  name: string;
  content: Buffer;
}

function bothEndian32(value: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt32LE(value, 0);
  b.writeUInt32BE(value, 4);
  return b;
}

function bothEndian16(value: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt16LE(value, 0);
  b.writeUInt16BE(value, 2);
  return b;
}

/** 7-byte directory record date (fixed: the seed's content, not its time, is what matters). */
function recordDate(date: Date): Buffer {
  return Buffer.from([date.getUTCFullYear() - 1900, date.getUTCMonth() + 1, date.getUTCDate(), date.getUTCHours(), date.getUTCMinutes(), date.getUTCSeconds(), 0]);
}

/** 17-byte volume descriptor date: "YYYYMMDDHHMMSScc" and the offset from GMT. */
function volumeDate(date: Date): Buffer {
  const pad = (n: number, w = 2) => String(n).padStart(w, '0');
  const text = `${pad(date.getUTCFullYear(), 4)}${pad(date.getUTCMonth() + 1)}${pad(date.getUTCDate())}${pad(date.getUTCHours())}${pad(date.getUTCMinutes())}${pad(date.getUTCSeconds())}00`;
  return Buffer.concat([Buffer.from(text, 'latin1'), Buffer.from([0])]);
}

function directoryRecord(identifier: Buffer, extent: number, length: number, directory: boolean, date: Date): Buffer {
  const size = 33 + identifier.length + (identifier.length % 2 === 0 ? 1 : 0);
  const record = Buffer.alloc(size);
  record[0] = size;
  bothEndian32(extent).copy(record, 2);
  bothEndian32(length).copy(record, 10);
  recordDate(date).copy(record, 18);
  record[25] = directory ? 2 : 0;
  bothEndian16(1).copy(record, 28);
  record[32] = identifier.length;
  identifier.copy(record, 33);
  return record;
}

function padded(text: string, length: number): Buffer {
  return Buffer.from(text.padEnd(length, ' ').slice(0, length), 'latin1');
}

const sectors = (bytes: number) => Math.max(1, Math.ceil(bytes / SECTOR));

/** The image, as bytes. `date` stamps every record (default: the Unix epoch, so equal inputs give equal images). */
export function makeIso(volumeId: string, files: IsoFile[], date = new Date(0)): Buffer {
  for (const file of files) {
    if (!/^[a-z0-9_-]{1,30}$/.test(file.name)) throw new Error(`ISO 9660 file name not supported here: ${file.name}`);
  }
  const sorted = [...files].sort((a, b) => a.name.toUpperCase().localeCompare(b.name.toUpperCase()));
  // Layout: system area (16), primary descriptor (16), terminator (17), L path table (18), M path table (19),
  // root directory (20), then each file's data.
  const rootSector = 20;
  const identifiers = sorted.map((file) => Buffer.from(`${file.name.toUpperCase()}.;1`, 'latin1'));
  const rootLength = 34 + 34 + identifiers.reduce((sum, id) => sum + 33 + id.length + (id.length % 2 === 0 ? 1 : 0), 0);
  if (rootLength > SECTOR) throw new Error('too many files for one directory sector');
  let next = rootSector + 1;
  const extents = sorted.map((file) => {
    const at = next;
    next += sectors(file.content.length);
    return at;
  });
  const total = next;
  const image = Buffer.alloc(total * SECTOR);

  const root = Buffer.concat([
    directoryRecord(Buffer.from([0]), rootSector, SECTOR, true, date),
    directoryRecord(Buffer.from([1]), rootSector, SECTOR, true, date),
    ...sorted.map((file, i) => directoryRecord(identifiers[i], extents[i], file.content.length, false, date)),
  ]);
  root.copy(image, rootSector * SECTOR);
  sorted.forEach((file, i) => file.content.copy(image, extents[i] * SECTOR));

  // Path tables: the root alone (identifier length 1, its extent, parent 1, identifier 0, padding).
  const pathTable = (bigEndian: boolean) => {
    const entry = Buffer.alloc(10);
    entry[0] = 1;
    if (bigEndian) entry.writeUInt32BE(rootSector, 2);
    else entry.writeUInt32LE(rootSector, 2);
    if (bigEndian) entry.writeUInt16BE(1, 6);
    else entry.writeUInt16LE(1, 6);
    return entry;
  };
  pathTable(false).copy(image, 18 * SECTOR);
  pathTable(true).copy(image, 19 * SECTOR);

  const pvd = Buffer.alloc(SECTOR);
  pvd[0] = 1;
  pvd.write('CD001', 1, 'latin1');
  pvd[6] = 1;
  padded('LINUX', 32).copy(pvd, 8);
  padded(volumeId, 32).copy(pvd, 40);
  bothEndian32(total).copy(pvd, 80);
  bothEndian16(1).copy(pvd, 120);
  bothEndian16(1).copy(pvd, 124);
  bothEndian16(SECTOR).copy(pvd, 128);
  bothEndian32(10).copy(pvd, 132);
  pvd.writeUInt32LE(18, 140);
  pvd.writeUInt32BE(19, 148);
  directoryRecord(Buffer.from([0]), rootSector, SECTOR, true, date).copy(pvd, 156);
  padded('', 128).copy(pvd, 190);
  padded('', 128).copy(pvd, 318);
  padded('', 128).copy(pvd, 446);
  padded('IMAGEBUILDER', 128).copy(pvd, 574);
  padded('', 37).copy(pvd, 702);
  padded('', 37).copy(pvd, 739);
  padded('', 37).copy(pvd, 776);
  volumeDate(date).copy(pvd, 813);
  volumeDate(date).copy(pvd, 830);
  Buffer.concat([Buffer.from('0000000000000000', 'latin1'), Buffer.from([0])]).copy(pvd, 847);
  volumeDate(date).copy(pvd, 864);
  pvd[881] = 1;
  pvd.copy(image, 16 * SECTOR);

  const terminator = Buffer.alloc(SECTOR);
  terminator[0] = 255;
  terminator.write('CD001', 1, 'latin1');
  terminator[6] = 1;
  terminator.copy(image, 17 * SECTOR);
  return image;
}
