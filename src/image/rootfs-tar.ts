import { deviceNumbers } from '../util/devices.js';
import { createWriteStream } from 'node:fs';
import { lstat, opendir, readlink, statfs } from 'node:fs/promises';
import { readGuestText } from '../util/guest-fs.js';
import { dirname, join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import { ImageBuilderError } from '../util/errors.js';
import type { Runner } from '../util/exec.js';
import type { Logger } from '../util/log.js';
import { mountsUnder } from '../util/mounts.js';
import { throwIfAborted } from '../util/signals.js';
import { clampTime, sourceDateEpoch } from '../util/time.js';
import { packEntry, packFile, type TarHeader } from '../util/tar-pack.js';

/*
 * The guest's root filesystem as a POSIX (pax) tar archive, read from the mounted tree: every guest filesystem at
 * its place (/boot, /home …), nothing of the host. Kept: numeric owners (and the names the guest's own passwd and
 * group give them), modes with setuid/setgid/sticky, mtimes (whole seconds), symlinks, hard links (one inode: a
 * file, then link entries), character and block devices, fifos, extended attributes (security.capability,
 * security.selinux, trusted.*, user.*) as `SCHILY.xattr.NAME` pax records, the form GNU tar and bsdtar write and
 * read, and POSIX ACLs (system.posix_acl_*) in tar's own text form, `SCHILY.acl.access` and `SCHILY.acl.default`.
 * Not kept: sockets (nothing can use a socket file of an image that is not running), other system.* attributes,
 * and names that are not UTF-8 (pax paths are UTF-8).
 *
 * Deterministic: `./` first, then depth first with each directory's entries in byte order (`tar --sort=name`), no
 * atime/ctime, and with SOURCE_DATE_EPOCH every mtime later than it is clamped to it (`tar --clamp-mtime`).
 * Streamed: one directory listing per level in memory, file contents piped through.
 *
 * tar-stream writes the entries. Its own pax records are JS strings encoded as UTF-8, which would corrupt binary
 * attribute values (a capability set is binary; tar-stream has no xattr support, mafintosh/tar-stream#108), so the
 * extended header is encoded here and pushed into the pack just before the entry it describes.
 */

export interface RootfsTarOptions {
  run: Runner;
  log: Logger;
  signal?: AbortSignal;
  /**
   * Host paths of the guest's mounted filesystems (root first). Anything else mounted under the root (the
   * chroot session's /proc, /sys, /dev) is not the guest's: the archive is refused rather than holding it.
   */
  guestMounts?: string[];
  /** Default: SOURCE_DATE_EPOCH. */
  clampMtime?: Date;
  /**
   * The most names held at once (default MAX_TAR_DIR_ENTRIES): a directory's and those of the directories it is in.
   * Each listing is sorted whole in memory, and kept while its subdirectories are walked.
   */
  maxDirEntries?: number;
}

/**
 * Every directory's names are held and sorted before its entries are written (byte order, as `tar --sort=name`):
 * a crafted image's directory of tens of millions of names (hard links to one inode cost only directory blocks)
 * would take gigabytes. A million is far past what a node image's directory holds.
 */
export const MAX_TAR_DIR_ENTRIES = 1_000_000;

/** tar-stream writes a header's mtime as `seconds | 0`: from 2038-01-19 on it wraps negative, corrupting the field. */
const TAR_STREAM_MAX_MTIME_SECONDS = 2 ** 31 - 1;

export interface RootfsTarResult {
  entries: number;
  /** Guest paths left out, with why. */
  skipped: string[];
}

type Stats = Awaited<ReturnType<typeof lstatBig>>;
const lstatBig = (path: string) => lstat(path, { bigint: true });

/** Writes the tree at `root` to `target` as a tar archive. */
export async function writeRootfsTar(root: string, target: string, options: RootfsTarOptions): Promise<RootfsTarResult> {
  const foreign = (await mountsUnder(root)).filter((mount) => mount !== root && !(options.guestMounts ?? []).includes(mount));
  if (foreign.length) {
    throw new ImageBuilderError('INTERNAL', `cannot write the root filesystem tar: ${foreign.join(', ')} ${foreign.length === 1 ? 'is' : 'are'} mounted inside the guest tree`, {
      hint: 'the chroot session must be closed before the tar is written; this is a bug in imagebuilder',
    });
  }
  // Reading directories (readdir, getfattr) would update their atimes: the guest's filesystems are remounted
  // noatime first, so writing the tar writes nothing into the image (files are also opened O_NOATIME).
  for (const mount of [root, ...(options.guestMounts ?? []).filter((m) => m !== root)]) {
    await options.run('mount', ['-o', 'remount,noatime', mount], { allowFailure: true, log: options.log });
  }
  const budget = await contentBudget([root, ...(options.guestMounts ?? [])], dirname(target));
  let contentBytes = 0;
  const epoch = options.clampMtime ?? sourceDateEpoch();
  const maxDirEntries = options.maxDirEntries ?? MAX_TAR_DIR_ENTRIES;
  const [xattrs, users, groups] = await Promise.all([readXattrs(options.run, root, options.signal), idNames(root, '/etc/passwd'), idNames(root, '/etc/group')]);
  const skipped: string[] = [];
  const aclPaths: string[] = [];
  const links = new Map<string, string>();
  let entries = 0;

  const pack = tar.pack();
  const writing = pipeline(pack, createWriteStream(target, { mode: 0o644 }), { signal: options.signal });
  const addEntry = async (guestPath: string, hostPath: string, stats: Stats) => {
    const name = guestPath === '/' ? './' : `.${guestPath}${stats.isDirectory() ? '/' : ''}`;
    const inode = `${stats.dev}:${stats.ino}`;
    const hardLink = !stats.isDirectory() && stats.nlink > 1n ? links.get(inode) : undefined;
    const pax: [string, Buffer][] = [];
    // A hard link shares its inode's attributes, written with its first name (as GNU tar does).
    for (const [attribute, value] of hardLink ? [] : (xattrs.get(hostPath) ?? [])) {
      const acl = POSIX_ACL_RECORDS[attribute];
      const text = acl ? posixAclText(value) : undefined;
      if (acl && text !== undefined) pax.push([acl, Buffer.from(text)]);
      else if (attribute.startsWith('system.')) aclPaths.push(guestPath);
      else pax.push([`SCHILY.xattr.${attribute}`, value]);
    }
    const header: TarHeader = {
      name,
      mode: Number(stats.mode) & 0o7777,
      uid: Number(stats.uid),
      gid: Number(stats.gid),
      uname: users.get(Number(stats.uid)),
      gname: groups.get(Number(stats.gid)),
      mtime: clampTime(new Date(Number(stats.mtimeMs / 1000n) * 1000), epoch),
    };
    if (hardLink) {
      Object.assign(header, { type: 'link', linkname: hardLink, size: 0 });
    } else if (stats.isFile()) {
      Object.assign(header, { type: 'file', size: Number(stats.size) });
      contentBytes += Number(stats.size);
      if (contentBytes > budget) {
        throw new ImageBuilderError('BAD_INPUT', `the root filesystem tar would hold more than ${budget} bytes of file content, past twice what the guest's filesystems use (plus 1 GiB) or the room beside the output, at ${guestPath} (${stats.size} bytes, ${Number(stats.blocks) * 512} of them on disk)`, {
          hint: 'a tar holds a sparse file whole: remove or truncate such files in a step before the tar is written (a crafted image can hold terabytes that take no space)',
        });
      }
    } else if (stats.isDirectory()) {
      header.type = 'directory';
    } else if (stats.isSymbolicLink()) {
      Object.assign(header, { type: 'symlink', linkname: await readlink(hostPath) });
    } else if (stats.isCharacterDevice() || stats.isBlockDevice()) {
      const { major, minor } = deviceNumbers(stats.rdev);
      if (major > USTAR_MAX || minor > USTAR_MAX) return void skipped.push(`${guestPath} (device ${major}:${minor}: too large for a tar header)`);
      Object.assign(header, { type: stats.isCharacterDevice() ? 'character-device' : 'block-device', devmajor: major, devminor: minor });
    } else if (stats.isFIFO()) {
      header.type = 'fifo';
    } else {
      return void skipped.push(`${guestPath} (${stats.isSocket() ? 'a socket' : 'an unknown file type'})`);
    }
    if (!stats.isDirectory() && stats.nlink > 1n && !hardLink) links.set(inode, name);

    // What the ustar header cannot hold goes into the pax header; the ustar fields then get a stand-in.
    if (!fitsUstarName(header.name)) pax.push(['path', Buffer.from(header.name)]), (header.name = standIn(header.name, 100));
    if (header.linkname && !isAscii(header.linkname, 100)) pax.push(['linkpath', Buffer.from(header.linkname)]), (header.linkname = standIn(header.linkname, 100));
    for (const key of ['uid', 'gid'] as const) if (header[key]! > USTAR_MAX) pax.push([key, Buffer.from(String(header[key]))]), (header[key] = 0);
    for (const key of ['uname', 'gname'] as const) if (header[key] && !isAscii(header[key]!, 32)) pax.push([key, Buffer.from(header[key]!)]), (header[key] = undefined);
    // Before 1970 or past what tar-stream writes: the pax record holds it, the ustar field the nearest it can.
    const mtimeSeconds = header.mtime!.getTime() / 1000;
    if (mtimeSeconds < 0 || mtimeSeconds > TAR_STREAM_MAX_MTIME_SECONDS) {
      pax.push(['mtime', Buffer.from(String(mtimeSeconds))]);
      header.mtime = new Date(mtimeSeconds < 0 ? 0 : TAR_STREAM_MAX_MTIME_SECONDS * 1000);
    }
    if (pax.length) pack.push(paxHeader(pax, header.mtime!));

    // Without atime updates: writing the tar does not write to the guest's filesystems (nor change the disk image).
    if (header.type === 'file') await packFile(pack, header as TarHeader & { size: number }, hostPath, { noAtime: true });
    else await packEntry(pack, header);
    entries++;
  };

  // The names held at once: each directory's, on the way down, until its walk ends. Bounded as a whole, or a tree
  // of directories each just under the bound, nested, would be held together.
  let held = 0;
  const walk = async (guestDir: string, hostDir: string): Promise<void> => {
    const names: Buffer[] = [];
    // opendir's types take only text encodings; Node gives Buffer names with 'buffer' all the same.
    for await (const entry of await opendir(hostDir, { encoding: 'buffer' as BufferEncoding, bufferSize: 1024 })) {
      names.push(entry.name as unknown as Buffer);
      if (++held > maxDirEntries) {
        throw new ImageBuilderError('BAD_INPUT', `the guest's ${guestDir} and the directories it is in hold more than ${maxDirEntries} names: the root filesystem tar sorts each directory's names in memory, and holds them while it walks beneath`, {
          hint: `remove or spread out that directory's entries in a step before --format tar, or write a disk image format instead`,
        });
      }
    }
    names.sort(Buffer.compare);
    for (const raw of names) {
      throwIfAborted(options.signal);
      const text = UTF8.decode(raw, { stream: false });
      const guestPath = `${guestDir === '/' ? '' : guestDir}/${text}`;
      if (!Buffer.from(text).equals(raw)) {
        skipped.push(`${guestDir}/${raw.toString('latin1')} (the name is not UTF-8)`);
        continue;
      }
      const hostPath = join(hostDir, text);
      const stats = await lstatBig(hostPath);
      await addEntry(guestPath, hostPath, stats);
      if (stats.isDirectory()) await walk(guestPath, hostPath);
    }
    held -= names.length;
  };

  try {
    await addEntry('/', root, await lstatBig(root));
    await walk('/', root);
    pack.finalize();
  } catch (error) {
    pack.destroy(error as Error);
    await writing.catch(() => undefined);
    if (error instanceof ImageBuilderError) throw error;
    throw new ImageBuilderError('COMMAND_FAILED', `writing the root filesystem tar ${target} failed: ${(error as Error).message}`, { cause: error });
  }
  await writing;
  if (skipped.length) options.log.warn(`the root filesystem tar leaves out ${skipped.length} entr${skipped.length === 1 ? 'y' : 'ies'}: ${skipped.join(', ')}`);
  if (aclPaths.length) {
    const paths = [...new Set(aclPaths)];
    options.log.warn(`the root filesystem tar does not keep the system.* attributes (NFSv4 or rich ACLs, or a POSIX ACL it cannot read) of ${paths.length} path(s): ${paths.slice(0, 10).join(', ')}${paths.length > 10 ? ' …' : ''}`);
  }
  return { entries, skipped };
}

/**
 * The file content a tar of the guest may hold: twice what its filesystems use, plus 1 GiB (a file shared by
 * reflinks or compressed by btrfs is written once per name). A tar holds a sparse file whole, so a crafted
 * image's terabyte that takes no space would otherwise be written out as zeros, filling the output's disk.
 */
async function contentBudget(mounts: string[], targetDir: string): Promise<number> {
  let used = 0;
  for (const mount of new Set(mounts)) {
    const { blocks, bfree, bsize } = await statfs(mount);
    used += (blocks - bfree) * bsize;
  }
  // What a filesystem says it uses is the image's own word: never more than the target's room, whatever it claims.
  const target = await statfs(targetDir);
  return Math.min(2 * used + (1 << 30), target.bavail * target.bsize);
}

/** The pax records GNU tar (`--acls`) and bsdtar keep POSIX ACLs in, by the attribute the kernel keeps them in. */
const POSIX_ACL_RECORDS: Record<string, string> = {
  'system.posix_acl_access': 'SCHILY.acl.access',
  'system.posix_acl_default': 'SCHILY.acl.default',
};

const ACL_TAGS: Record<number, string> = { 0x01: 'user:', 0x02: 'user:', 0x04: 'group:', 0x08: 'group:', 0x10: 'mask:', 0x20: 'other:' };
/** Tags whose entries name a user or group (the others apply to the owner, owning group, mask, others). */
const ACL_QUALIFIED = new Set([0x02, 0x08]);

/**
 * A POSIX ACL as the kernel stores it in its xattr (linux/posix_acl_xattr.h: a little-endian u32 version 2,
 * then 8-byte entries: u16 tag, u16 permissions, u32 id) in the long text form of acl_to_text(3), one entry per
 * line, which GNU tar writes in SCHILY.acl.* and reads back with acl_from_text(3). Ids stay numeric: the
 * archive is of the guest, whose users the extracting host need not know by name. Undefined if malformed.
 */
export function posixAclText(value: Buffer): string | undefined {
  if (value.length < 4 || (value.length - 4) % 8 !== 0 || value.readUInt32LE(0) !== 2) return undefined;
  const lines: string[] = [];
  for (let offset = 4; offset < value.length; offset += 8) {
    const tag = value.readUInt16LE(offset);
    const perm = value.readUInt16LE(offset + 2);
    const prefix = ACL_TAGS[tag];
    if (!prefix) return undefined;
    const qualifier = ACL_QUALIFIED.has(tag) ? String(value.readUInt32LE(offset + 4)) : '';
    lines.push(`${prefix}${qualifier}:${perm & 4 ? 'r' : '-'}${perm & 2 ? 'w' : '-'}${perm & 1 ? 'x' : '-'}\n`);
  }
  return lines.join('');
}

const UTF8 = new TextDecoder('utf-8', { fatal: false });
/** The largest number a 6-digit octal ustar field (uid, gid, device numbers as tar-stream writes them) holds. */
const USTAR_MAX = 0o777777;

function isAscii(text: string, maxBytes: number): boolean {
  return /^[\x01-\x7f]*$/.test(text) && text.length <= maxBytes;
}

/** Whether tar-stream can put the name into ustar's name (100 bytes) and prefix (155) fields, split at a slash. */
export function fitsUstarName(name: string): boolean {
  if (!isAscii(name, 256)) return false;
  let rest = name;
  let prefix = '';
  while (rest.length > 100) {
    const slash = rest.indexOf('/');
    if (slash === -1) return false;
    prefix += (prefix ? '/' : '') + rest.slice(0, slash);
    rest = rest.slice(slash + 1);
  }
  return prefix.length <= 155;
}

/**
 * An ASCII stand-in for a ustar field whose real value is in the pax header (what pax-unaware readers see): its
 * end, never starting with `/` or holding a `..` component (a guest name cut to `/etc/cron.d/x` or `../x` would
 * have such a reader write outside where it extracts).
 */
export function standIn(text: string, maxBytes: number): string {
  const cut = text.replace(/[^\x01-\x7f]/g, '_').slice(-maxBytes);
  return cut.split('/').map((part) => (part === '..' ? '__' : part)).join('/').replace(/^\/+/, '');
}

export { deviceNumbers };

/** One pax record, `LEN KEY=VALUE\n`, LEN counting its own digits; the value is bytes, as they are. */
function paxRecord(key: string, value: Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`), value, Buffer.from('\n')]);
  let length = body.length + String(body.length).length;
  if (String(length).length > String(body.length).length) length++;
  return Buffer.concat([Buffer.from(String(length)), body]);
}

const octal = (value: number, digits: number) => `${value.toString(8).padStart(digits, '0')}\0`;

/** A pax extended header ('x') with its records, padded to whole 512-byte blocks. */
export function paxHeader(records: [string, Buffer][], mtime: Date): Buffer {
  const data = Buffer.concat(records.map(([key, value]) => paxRecord(key, value)));
  const block = Buffer.alloc(512);
  block.write('PaxHeader', 0, 'latin1');
  block.write(octal(0o644, 7), 100, 'latin1');
  block.write(octal(0, 7), 108, 'latin1');
  block.write(octal(0, 7), 116, 'latin1');
  block.write(octal(data.length, 11), 124, 'latin1');
  block.write(octal(Math.max(0, Math.floor(mtime.getTime() / 1000)), 11), 136, 'latin1');
  block.write('x', 156, 'latin1');
  block.write('ustar\x0000', 257, 'latin1');
  block.fill(' ', 148, 156);
  let sum = 0;
  for (const byte of block) sum += byte;
  block.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  return Buffer.concat([block, data, Buffer.alloc((512 - (data.length % 512)) % 512)]);
}

/**
 * Every extended attribute under `root`, by host path, from one `getfattr` walk (symlinks' own attributes, never
 * followed). getfattr escapes bytes of names as \ooo; values come in hex.
 */
async function readXattrs(run: Runner, root: string, signal?: AbortSignal): Promise<Map<string, [string, Buffer][]>> {
  const result = await run('getfattr', ['--absolute-names', '--no-dereference', '--physical', '--recursive', '--dump', '--match=-', '--encoding=hex', root], {
    signal,
    purpose: 'reading the extended attributes of the guest tree',
  });
  const xattrs = new Map<string, [string, Buffer][]>();
  let current: [string, Buffer][] | undefined;
  for (const line of result.stdout.split('\n')) {
    if (line.startsWith('# file: ')) {
      current = [];
      xattrs.set(unescapeOctal(line.slice('# file: '.length)), current);
    } else if (line && current) {
      const equals = line.indexOf('=');
      const name = unescapeOctal(equals === -1 ? line : line.slice(0, equals));
      const value = equals === -1 ? '' : line.slice(equals + 1);
      current.push([name, Buffer.from(value.replace(/^0x/, ''), 'hex')]);
    }
  }
  for (const list of xattrs.values()) list.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return xattrs;
}

function unescapeOctal(text: string): string {
  const bytes: number[] = [];
  const raw = Buffer.from(text);
  for (let i = 0; i < raw.length; i++) {
    if (raw[i] === 0x5c && i + 3 < raw.length && /^[0-7]{3}$/.test(raw.subarray(i + 1, i + 4).toString('latin1'))) {
      bytes.push(parseInt(raw.subarray(i + 1, i + 4).toString('latin1'), 8));
      i += 3;
    } else bytes.push(raw[i]);
  }
  return Buffer.from(bytes).toString();
}

/** uid (or gid) → name, from the guest's own passwd or group file (the first line wins, as NSS reads it). */
async function idNames(root: string, file: string): Promise<Map<number, string>> {
  const names = new Map<number, string>();
  const text = (await readGuestText(root, file)) ?? '';
  for (const line of text.split('\n')) {
    const [name, , id] = line.split(':');
    if (name && /^\d+$/.test(id ?? '') && !names.has(Number(id))) names.set(Number(id), name);
  }
  return names;
}
