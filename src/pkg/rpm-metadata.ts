import { createGunzip } from 'node:zlib';
import { Decompress } from 'fzstd';
import { readGuestFile } from '../util/guest-fs.js';

/**
 * rpm-md repository metadata as dnf and zypper keep it in the guest's cache (repodata/repomd.xml and the primary
 * file it names), read on the host as data: which package file (its location) has which sha256. Only for the
 * package cache: a file is offered to the guest's manager under a location only when its bytes hash to what
 * this metadata names there, and the manager checks it again (checksum, then the package's signature).
 */

/** The largest compressed primary file read (Fedora's Everything is ~25 MiB as zstd). */
const MAX_COMPRESSED_BYTES = 256 << 20;
/** The largest primary.xml decompressed (Fedora's Everything is ~400 MiB). */
const MAX_PRIMARY_BYTES = 1536 << 20;
/** The largest zstd window or declared frame size accepted: fzstd allocates it up front. */
const MAX_ZSTD_FRAME_BYTES = MAX_PRIMARY_BYTES;
/** The most packages taken from one repository (Fedora's Everything has ~75 000). */
const MAX_PACKAGES = 1_000_000;
const SHA256 = /^[0-9a-f]{64}$/;
/** The longest `<package>` entry kept for a bundle (a real one is a few KiB: its file list is in filelists.xml). */
export const MAX_ENTRY_BYTES = 256 << 10;

/** The primary file's name in repodata/ as repomd.xml gives it; undefined when it names none. */
export function primaryLocation(repomd: string): string | undefined {
  for (const data of repomd.matchAll(/<data\s+type="primary"\s*>([\s\S]*?)<\/data>/g)) {
    const href = /<location\s+href="([^"]+)"/.exec(data[1])?.[1];
    // Only a plain name inside repodata/: the metadata never leads us elsewhere in the guest.
    const name = href?.replace(/^repodata\//, '');
    if (name && /^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(name)) return name;
  }
  return undefined;
}

/** The zstd frame header's window and declared content size, refused above the bound (fzstd allocates them). */
function checkZstdFrame(head: Uint8Array): void {
  if (head.length < 6 || head[0] !== 0x28 || head[1] !== 0xb5 || head[2] !== 0x2f || head[3] !== 0xfd) throw new Error('not a zstd frame');
  const descriptor = head[4];
  const singleSegment = (descriptor >> 5) & 1;
  const sizeFlag = descriptor >> 6;
  let at = 5;
  let window = 0;
  if (!singleSegment) {
    const exponent = head[at] >> 3;
    const base = 2 ** (10 + exponent);
    window = base + (base / 8) * (head[at] & 7);
    at++;
  }
  at += [0, 1, 2, 4][descriptor & 3];
  const sizeBytes = [singleSegment ? 1 : 0, 2, 4, 8][sizeFlag];
  let size = 0;
  for (let i = 0; i < sizeBytes; i++) size += (head[at + i] ?? 0) * 2 ** (8 * i);
  if (sizeBytes === 2) size += 256;
  if (window > MAX_ZSTD_FRAME_BYTES || size > MAX_ZSTD_FRAME_BYTES) throw new Error(`a zstd frame of ${Math.max(window, size)} bytes, above ${MAX_ZSTD_FRAME_BYTES}`);
}

/** Feeds the decompressed text of a primary file to `sink`, chunk by chunk, never more than the bound in all. */
async function decompress(name: string, content: Buffer, sink: (text: string) => void): Promise<void> {
  let total = 0;
  const count = (length: number) => {
    total += length;
    if (total > MAX_PRIMARY_BYTES) throw new Error(`more than ${MAX_PRIMARY_BYTES} bytes decompressed`);
  };
  const decoder = new TextDecoder();
  if (name.endsWith('.zst')) {
    checkZstdFrame(content.subarray(0, 18));
    const stream = new Decompress((data) => {
      count(data.length);
      sink(decoder.decode(data, { stream: true }));
    });
    stream.push(content, true);
    return;
  }
  if (name.endsWith('.gz')) {
    const gunzip = createGunzip();
    const done = new Promise<void>((resolve, reject) => {
      gunzip.on('data', (data: Buffer) => {
        try {
          count(data.length);
          sink(decoder.decode(data, { stream: true }));
        } catch (error) {
          gunzip.destroy();
          reject(error);
        }
      });
      gunzip.on('end', resolve);
      gunzip.on('error', reject);
    });
    gunzip.end(content);
    return done;
  }
  if (name.endsWith('.xml')) {
    count(content.length);
    sink(content.toString('utf8'));
    return;
  }
  throw new Error(`its compression (${name.replace(/^.*?\.xml/, '') || 'unknown'}) is not one imagebuilder reads (gzip, zstd)`);
}

/**
 * Reads the `<package>` entries of a primary.xml as text arrives: each entry's location href → its sha256
 * (entries with another checksum type, or none, are left out). Entries are cut at `</package>`, so memory holds
 * one entry at a time, whatever the file's size.
 */
export class PrimaryReader {
  readonly packages = new Map<string, string>();
  /** The whole `<package>` entry of each package whose sha256 is in `keep` (a bundle's index is made of them). */
  readonly entries = new Map<string, string>();

  constructor(private readonly keep?: ReadonlySet<string>) {}

  /** The text after the last `</package>`, in the pieces it came in (joined only when an entry ends). */
  private pending: string[] = [];
  private pendingLength = 0;
  /** The last characters of the pending text, where an end tag may have begun. */
  private tail = '';

  push(text: string): void {
    const END = '</package>';
    // Where an end tag is: in this text, or cut between the last piece and this one.
    const tail = this.tail;
    this.tail = (tail + text).slice(-(END.length - 1));
    if (!(tail + text).includes(END)) {
      this.pending.push(text);
      this.pendingLength += text.length;
      // One entry is a few KiB; a run without an end is not a primary.xml.
      if (this.pendingLength > 16 << 20) throw new Error('a <package> entry longer than 16 MiB');
      return;
    }
    let rest = this.pending.join('') + text;
    let end: number;
    while ((end = rest.indexOf(END)) >= 0) {
      this.entry(rest.slice(0, end));
      rest = rest.slice(end + END.length);
    }
    this.pending = [rest];
    this.pendingLength = rest.length;
  }

  private entry(text: string): void {
    // `<package ` opens an entry (its attributes follow); `<packager>` inside it is another element.
    const start = text.indexOf('<package ');
    if (start < 0) return;
    const body = text.slice(start);
    const sha256 = /<checksum\s+type="sha256"[^>]*>\s*([0-9a-f]{64})\s*<\/checksum>/.exec(body)?.[1];
    const href = /<location\s+(?:xml:base="[^"]*"\s+)?href="([^"]+)"/.exec(body)?.[1];
    if (!sha256 || !SHA256.test(sha256) || !href) return;
    if (this.packages.size >= MAX_PACKAGES) throw new Error(`more than ${MAX_PACKAGES} packages`);
    this.packages.set(decodeXml(href), sha256);
    // Copied out of the chunk it was cut from (a slice would keep the whole chunk alive), and bounded.
    if (this.keep?.has(sha256) && !this.entries.has(sha256) && body.length <= MAX_ENTRY_BYTES) this.entries.set(sha256, Buffer.from(`${body}</package>`).toString());
  }
}

function decodeXml(text: string): string {
  return text.replace(/&(amp|lt|gt|quot|apos);/g, (_, entity: string) => ({ amp: '&', lt: '<', gt: '>', quot: '"', apos: "'" })[entity] ?? '');
}

/**
 * The packages a repository's cached metadata names (location href → sha256), from the guest directory that
 * holds its repomd.xml and primary file, with the entries of the packages whose sha256 is in `keep`. Undefined, with the reason, when the metadata is missing or not
 * readable as such: that repository's packages are then simply not cached.
 */
export async function readRepositoryPackages(root: string, repodataDir: string, keep?: ReadonlySet<string>): Promise<{ packages: Map<string, string>; entries: Map<string, string> } | { skipped: string }> {
  try {
    const repomd = await readGuestFile(root, `${repodataDir}/repomd.xml`, 4 << 20);
    if (!repomd) return { skipped: 'no repomd.xml' };
    const name = primaryLocation(repomd.toString('utf8'));
    if (!name) return { skipped: 'its repomd.xml names no primary file' };
    const content = await readGuestFile(root, `${repodataDir}/${name}`, MAX_COMPRESSED_BYTES);
    if (!content) return { skipped: `${name} is missing` };
    const reader = new PrimaryReader(keep);
    await decompress(name, content, (text) => reader.push(text));
    return { packages: reader.packages, entries: reader.entries };
  } catch (error) {
    // Unreadable or unbounded metadata is a reason not to cache, never a failed build.
    return { skipped: (error as Error).message };
  }
}
