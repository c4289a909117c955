import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { lstat, readdir, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';

/** One entry of a directory tree as a tar archive would carry it, named as the tar names it (./etc/, ./etc/passwd). */
export interface TreeEntry {
  type: 'file' | 'directory' | 'symlink' | 'link' | 'character-device' | 'block-device' | 'fifo' | 'socket';
  mode: number;
  uid: number;
  gid: number;
  /** Whole seconds; undefined for symlinks (tar extraction does not set them). */
  mtime?: number;
  size?: number;
  sha256?: string;
  /** A symlink's target, or the first name of a hard-linked inode. */
  linkname?: string;
  device?: string;
  /** Extended attributes but system.* (ACLs), values in hex. */
  xattrs?: Record<string, string>;
}

/**
 * Every entry under `root`, read with lstat, getfattr and sha256 (independent of the code under test), in the
 * order `tar --sort=name` walks: a directory, then its entries in byte order. The second name of an inode is a
 * `link` to the first, as in a tar archive. Names that are not UTF-8 are left out.
 */
export async function describeTree(root: string): Promise<Map<string, TreeEntry>> {
  const xattrs = await treeXattrs(root);
  const tree = new Map<string, TreeEntry>();
  const inodes = new Map<string, string>();
  const visit = async (hostPath: string, name: string) => {
    const stats = await lstat(hostPath, { bigint: true });
    const type = stats.isFile() ? 'file' : stats.isDirectory() ? 'directory' : stats.isSymbolicLink() ? 'symlink' : stats.isCharacterDevice() ? 'character-device' : stats.isBlockDevice() ? 'block-device' : stats.isFIFO() ? 'fifo' : 'socket';
    const key = `${stats.dev}:${stats.ino}`;
    const first = type !== 'directory' && stats.nlink > 1n ? inodes.get(key) : undefined;
    const entry: TreeEntry = first
      ? { type: 'link', mode: Number(stats.mode) & 0o7777, uid: Number(stats.uid), gid: Number(stats.gid), linkname: first }
      : {
          type,
          mode: Number(stats.mode) & 0o7777,
          uid: Number(stats.uid),
          gid: Number(stats.gid),
          ...(type !== 'symlink' ? { mtime: Number(stats.mtimeMs / 1000n) } : {}),
          ...(type === 'file' ? { size: Number(stats.size), sha256: await fileSha256(hostPath) } : {}),
          ...(type === 'symlink' ? { linkname: await readlink(hostPath) } : {}),
          ...(type.endsWith('-device') ? { device: `${stats.rdev}` } : {}),
          ...(xattrs.has(hostPath) ? { xattrs: xattrs.get(hostPath) } : {}),
        };
    if (type !== 'directory' && stats.nlink > 1n && !first) inodes.set(key, name);
    tree.set(name, entry);
    if (type === 'directory') {
      // Names that are not UTF-8 are left out (a pax archive cannot name them).
      const names = (await readdir(hostPath, { encoding: 'buffer' })).sort(Buffer.compare).map((n) => n.toString()).filter((n) => !n.includes('\ufffd'));
      for (const child of names) await visit(join(hostPath, child), `${name}${child}${(await lstat(join(hostPath, child))).isDirectory() ? '/' : ''}`);
    }
  };
  await visit(root, './');
  return tree;
}

const fileSha256 = (path: string) =>
  new Promise<string>((resolve, reject) => {
    const hash = createHash('sha256');
    createReadStream(path).on('data', (chunk) => hash.update(chunk)).on('end', () => resolve(hash.digest('hex'))).on('error', reject);
  });

/** Extended attributes (but system.*) of every path under root, by `getfattr -R`, values in hex. */
async function treeXattrs(root: string): Promise<Map<string, Record<string, string>>> {
  const { stdout } = await execa('getfattr', ['-R', '-P', '-h', '-d', '-m', '-', '-e', 'hex', '--absolute-names', root]);
  const out = new Map<string, Record<string, string>>();
  // getfattr writes the bytes of odd names as \ooo; the rest is the name's own UTF-8.
  const unescape = (text: string) => Buffer.concat(text.split(/(\\[0-7]{3})/).map((part) => (/^\\[0-7]{3}$/.test(part) ? Buffer.from([parseInt(part.slice(1), 8)]) : Buffer.from(part)))).toString();
  let current: Record<string, string> | undefined;
  for (const line of stdout.split('\n')) {
    const file = /^# file: (.*)$/.exec(line);
    if (file) out.set(unescape(file[1]), (current = {}));
    else if (line && current) {
      const [name, value = ''] = line.split(/=(.*)/s);
      if (!name.startsWith('system.')) current[unescape(name)] = value.replace(/^0x/, '');
    }
  }
  for (const [path, attributes] of out) if (!Object.keys(attributes).length) out.delete(path);
  return out;
}

/** Unpacks a tar archive with GNU tar, keeping numeric owners, modes, every extended attribute and POSIX ACLs. */
export async function gnuExtract(archive: string, into: string): Promise<void> {
  await execa('tar', ['--extract', '--file', archive, '--directory', into, '--numeric-owner', '--same-permissions', '--same-owner', '--xattrs', '--xattrs-include=*', '--acls']);
}

/** The POSIX ACLs under `root` as getfacl prints them (numeric ids, paths relative to root), only of paths that have one. */
export async function treeAcls(root: string): Promise<string> {
  const { stdout } = await execa('getfacl', ['--recursive', '--physical', '--numeric', '--skip-base', '.'], { cwd: root });
  return stdout;
}
