import { randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { chmod, chown, link, mkdir, mkdtemp, rm, stat, symlink, utimes, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { execa } from 'execa';
import tar from 'tar-stream';
import { writeRootfsTar } from '../../src/image/rootfs-tar.js';
import { execRunner } from '../../src/util/exec.js';
import { createLogger } from '../../src/util/log.js';
import { describeTree, gnuExtract, treeAcls } from '../helpers/tree.js';

type Read = { header: tar.Header & { pax?: Record<string, string> }; content: Buffer };

/** Every entry of an archive as tar-stream's extract reads it, in order. */
async function readWithTarStream(path: string): Promise<Read[]> {
  const entries: Read[] = [];
  const extract = tar.extract();
  createReadStream(path).pipe(extract as unknown as NodeJS.WritableStream);
  for await (const entry of extract) {
    const chunks: Buffer[] = [];
    for await (const chunk of entry) chunks.push(chunk as Buffer);
    entries.push({ header: entry.header as Read['header'], content: Buffer.concat(chunks) });
  }
  return entries;
}

/**
 * The root filesystem tar writer on a small tree holding every kind of entry (made here as root: device nodes,
 * foreign owners, security.capability need it), read back by tar-stream and by GNU tar.
 */
describe('writeRootfsTar', () => {
  let work: string;
  let tree: string;
  const epoch = new Date(1_700_000_000_000);
  const longDir = `${'d'.repeat(90)}/${'e'.repeat(90)}`;
  const log = createLogger({ write: () => undefined });
  const socketServer = createServer();

  beforeAll(async () => {
    work = await mkdtemp('/var/tmp/ib-rootfs-tar-');
    tree = join(work, 'tree');
    await mkdir(join(tree, 'etc'), { recursive: true });
    await writeFile(join(tree, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n');
    await writeFile(join(tree, 'etc/group'), 'root:x:0:\nstaff:x:1000:\n');
    await mkdir(join(tree, 'home/alice'), { recursive: true, mode: 0o750 });
    await chmod(join(tree, 'home/alice'), 0o750);
    await chown(join(tree, 'home/alice'), 1000, 1000);
    await mkdir(join(tree, 'tmp'));
    await chmod(join(tree, 'tmp'), 0o1777);
    await mkdir(join(tree, 'srv'));
    await chmod(join(tree, 'srv'), 0o2775);
    await mkdir(join(tree, 'usr/bin'), { recursive: true });
    await writeFile(join(tree, 'usr/bin/su'), 'setuid\n');
    await chmod(join(tree, 'usr/bin/su'), 0o4755);
    await writeFile(join(tree, 'usr/bin/ping'), randomBytes(200_000));
    await chmod(join(tree, 'usr/bin/ping'), 0o755);
    // cap_setuid is bit 7: the capability set holds a byte 0x80, which is not UTF-8.
    await execa('setcap', ['cap_setuid,cap_net_raw+ep', join(tree, 'usr/bin/ping')]);
    await link(join(tree, 'usr/bin/ping'), join(tree, 'usr/bin/ping6'));
    await utimes(join(tree, 'usr/bin/ping'), new Date('2000-01-01T00:00:00Z'), new Date('2023-01-01T00:00:00Z'));
    await writeFile(join(tree, 'etc/motd'), 'hello\n');
    await execa('setfattr', ['-n', 'user.comment', '-v', 'made by a test', join(tree, 'etc/motd')]);
    await execa('setfattr', ['-n', 'user.binary', '-v', '0x00ff80fe0a', join(tree, 'etc/motd')]);
    await execa('setfattr', ['-n', 'trusted.overlay.opaque', '-v', 'y', join(tree, 'srv')]);
    // POSIX ACLs: an access ACL naming a user and a group, and a directory's default ACL.
    await execa('setfacl', ['-m', 'u:1000:r-x,g:1000:r--', join(tree, 'etc/motd')]);
    await execa('setfacl', ['-d', '-m', 'u:1000:rwx,g::r-x', join(tree, 'srv')]);
    await symlink('../etc/motd', join(tree, 'usr/motd'));
    await symlink(`/${'t'.repeat(120)}/dangling`, join(tree, 'usr/long-link'));
    await mkdir(join(tree, 'dev'));
    await execa('mknod', ['-m', '0666', join(tree, 'dev/null'), 'c', '1', '3']);
    await execa('mknod', ['-m', '0660', join(tree, 'dev/nvme0n1p9'), 'b', '259', '70000']);
    await execa('mkfifo', ['-m', '0600', join(tree, 'dev/initctl')]);
    // A listening socket (Node removes its file on close, so it stays open until the end).
    await new Promise<void>((resolve) => socketServer.listen(join(tree, 'dev/log'), resolve));
    await mkdir(join(tree, longDir), { recursive: true });
    await writeFile(join(tree, longDir, 'file-with-a-path-longer-than-ustar-holds'), 'long\n');
    await writeFile(join(tree, 'etc/ünïcödé'), 'utf-8 name\n');
    await writeFile(Buffer.concat([Buffer.from(join(tree, 'etc/bad-')), Buffer.from([0xff])]), 'latin-1 name\n');
    await writeFile(join(tree, 'etc/subuid-owned'), '');
    await chown(join(tree, 'etc/subuid-owned'), 300_000, 300_000);
    await writeFile(join(tree, 'etc/future'), '');
    await utimes(join(tree, 'etc/future'), new Date('2100-01-01T00:00:00Z'), new Date('2100-01-01T00:00:00Z'));
    await writeFile(join(tree, 'etc/old'), '');
    await utimes(join(tree, 'etc/old'), new Date('1990-05-06T07:08:09Z'), new Date('1990-05-06T07:08:09Z'));
  });
  afterAll(async () => {
    await new Promise((resolve) => socketServer.close(resolve));
    await rm(work, { recursive: true, force: true });
  });

  test('every entry kind survives: GNU tar unpacks exactly the tree (less the socket and the non-UTF-8 name), mtimes clamped', async () => {
    const archive = join(work, 'rootfs.tar');
    const logged = createLogger({ write: () => undefined });
    const result = await writeRootfsTar(tree, archive, { run: execRunner, log: logged, clampMtime: epoch });
    // Read without touching access times (O_NOATIME): writing the tar writes nothing to the tree's filesystem.
    expect((await stat(join(tree, 'usr/bin/ping'))).atime).toEqual(new Date('2000-01-01T00:00:00Z'));
    expect(result.skipped.sort()).toEqual(['/dev/log (a socket)', '/etc/bad-\xff (the name is not UTF-8)']);
    expect(logged.warnings).toEqual([expect.stringMatching(/^the root filesystem tar leaves out 2 entries: /)]);

    const out = join(work, 'gnu');
    await mkdir(out);
    await gnuExtract(archive, out);
    const expected = await describeTree(tree);
    expected.delete('./dev/log');
    for (const entry of expected.values()) if (entry.mtime !== undefined) entry.mtime = Math.min(entry.mtime, epoch.getTime() / 1000);
    const actual = await describeTree(out);
    // The extraction directory is ours: its own mode and times are tar's ./ entry, owner included.
    expect(actual).toEqual(expected);
    // Spot checks of what that comparison covers.
    expect(actual.get('./usr/bin/su')?.mode).toBe(0o4755);
    expect(actual.get('./tmp/')?.mode).toBe(0o1777);
    expect(actual.get('./usr/bin/ping6')).toMatchObject({ type: 'link', linkname: './usr/bin/ping' });
    expect(actual.get('./usr/bin/ping')?.xattrs?.['security.capability']).toMatch(/80/);
    expect(actual.get('./etc/motd')?.xattrs).toEqual({ 'user.binary': '00ff80fe0a', 'user.comment': Buffer.from('made by a test').toString('hex') });
    expect(actual.get('./dev/nvme0n1p9')?.type).toBe('block-device');
    expect(actual.get('./etc/future')?.mtime).toBe(1_700_000_000);
    expect(actual.get('./etc/old')?.mtime).toBe(Date.parse('1990-05-06T07:08:09Z') / 1000);
    expect((await execa('getcap', [join(out, 'usr/bin/ping')])).stdout).toBe(`${join(out, 'usr/bin/ping')} cap_setuid,cap_net_raw=ep`);
    // The ACLs as getfacl reads them, on the tree and after GNU tar --acls unpacked the archive.
    const acls = await treeAcls(tree);
    expect(acls).toContain('# file: etc/motd\n# owner: 0\n# group: 0\nuser::rw-\nuser:1000:r-x\ngroup::r--\ngroup:1000:r--\nmask::r-x\nother::r--');
    expect(acls).toContain('default:user:1000:rwx');
    expect(await treeAcls(out)).toBe(acls);

    // GNU tar's verbose listing: owners by name from the tree's own passwd/group, devices, links, attributes.
    const listing = (await execa('tar', ['--xattrs', '--xattrs-include=*', '-tvvf', archive])).stdout;
    expect(listing).toMatch(/^drwxr-x--- +alice\/staff .* \.\/home\/alice\/$/m);
    expect(listing).toMatch(/^brw-rw---- +root\/root +259,70000 .* \.\/dev\/nvme0n1p9$/m);
    expect(listing).toMatch(/^crw-rw-rw- +root\/root +1,3 .* \.\/dev\/null$/m);
    expect(listing).toMatch(/^prw------- +root\/root .* \.\/dev\/initctl$/m);
    expect(listing).toMatch(/^hrwxr-xr-x +root\/root .* \.\/usr\/bin\/ping6 link to \.\/usr\/bin\/ping$/m);
    expect(listing).toMatch(/^ {2}x: +20 security\.capability$/m);
    expect(listing).toMatch(/^-rw-r--r-- +300000\/300000 .* \.\/etc\/subuid-owned$/m);
  });

  test('tar-stream reads it back: ./ first, sorted, ustar fields and pax records as written; the same tree gives the same bytes', async () => {
    const archive = join(work, 'again.tar');
    await writeRootfsTar(tree, archive, { run: execRunner, log, clampMtime: epoch });
    const entries = await readWithTarStream(archive);
    const names = entries.map((e) => e.header.name);
    expect(names[0]).toBe('./');
    expect(names.slice(1, 7)).toEqual([`./${'d'.repeat(90)}/`, `./${longDir}/`, `./${longDir}/file-with-a-path-longer-than-ustar-holds`, './dev/', './dev/initctl', './dev/null']);
    // Depth first, byte order within a directory (the order the first archive's listing had, which GNU tar accepted).
    const parents = names.map((n) => n.replace(/[^/]+\/?$/, ''));
    for (const [i, name] of names.entries()) if (i > 0) expect(names.indexOf(parents[i])).toBeLessThan(i);
    const byName = new Map(entries.map((e) => [e.header.name, e]));
    expect(byName.get('./home/alice/')?.header).toMatchObject({ type: 'directory', mode: 0o750, uid: 1000, gid: 1000, uname: 'alice', gname: 'staff' });
    expect(byName.get('./dev/null')?.header).toMatchObject({ type: 'character-device', devmajor: 1, devminor: 3, mode: 0o666 });
    expect(byName.get('./dev/nvme0n1p9')?.header).toMatchObject({ type: 'block-device', devmajor: 259, devminor: 70000 });
    expect(byName.get('./dev/initctl')?.header.type).toBe('fifo');
    expect(byName.get('./usr/motd')?.header).toMatchObject({ type: 'symlink', linkname: '../etc/motd' });
    // Beyond ustar's 100 bytes: the pax linkpath and path records.
    expect(byName.get('./usr/long-link')?.header.linkname).toBe(`/${'t'.repeat(120)}/dangling`);
    expect(byName.get(`./${longDir}/file-with-a-path-longer-than-ustar-holds`)?.content.toString()).toBe('long\n');
    expect(byName.get('./etc/ünïcödé')?.content.toString()).toBe('utf-8 name\n');
    // Beyond ustar's 6 octal digits: pax uid/gid records (tar-stream leaves them to the reader; GNU tar applied them above).
    expect(byName.get('./etc/subuid-owned')?.header.pax).toMatchObject({ uid: '300000', gid: '300000' });
    expect(byName.get('./usr/bin/ping6')?.header).toMatchObject({ type: 'link', linkname: './usr/bin/ping' });
    expect(byName.get('./usr/bin/ping')?.content.length).toBe(200_000);
    expect(byName.get('./etc/motd')?.header.pax?.['SCHILY.xattr.user.comment']).toBe('made by a test');
    expect(byName.get('./srv/')?.header.pax?.['SCHILY.xattr.trusted.overlay.opaque']).toBe('y');
    // ACLs in GNU tar's records, long text form with numeric ids; the system.* attributes themselves not copied.
    expect(byName.get('./etc/motd')?.header.pax?.['SCHILY.acl.access']).toBe('user::rw-\nuser:1000:r-x\ngroup::r--\ngroup:1000:r--\nmask::r-x\nother::r--\n');
    expect(byName.get('./srv/')?.header.pax?.['SCHILY.acl.default']).toBe('user::rwx\nuser:1000:rwx\ngroup::r-x\nmask::rwx\nother::r-x\n');
    expect(Object.keys(byName.get('./etc/motd')?.header.pax ?? {}).filter((key) => key.includes('system.'))).toEqual([]);
    expect(byName.get('./etc/future')?.header.mtime).toEqual(epoch);
    expect(names).not.toContain('./dev/log');

    const first = (await stat(join(work, 'rootfs.tar'))).size;
    expect((await stat(archive)).size).toBe(first);
    expect((await execa('cmp', [archive, join(work, 'rootfs.tar')], { reject: false })).exitCode).toBe(0);
  });

  test('refuses a sparse file past what the filesystems use (a crafted terabyte that takes no space), rather than write it out as zeros', async () => {
    // A guest filesystem of its own (a small tmpfs, ~nothing used): the budget is 2 × used + 1 GiB.
    const guest = join(work, 'sparse-guest');
    await mkdir(guest);
    await execa('mount', ['-t', 'tmpfs', '-o', 'size=64m', 'tmpfs', guest]);
    try {
      await writeFile(join(guest, 'small'), 'x');
      await execa('truncate', ['-s', '4T', join(guest, 'huge')]);
      await expect(writeRootfsTar(guest, join(work, 'sparse.tar'), { run: execRunner, log, guestMounts: [guest] })).rejects.toMatchObject({
        code: 'BAD_INPUT',
        message: expect.stringMatching(/past twice what the guest's filesystems use \(plus 1 GiB\) or the room beside the output, at \/huge \(4398046511104 bytes, 0 of them on disk\)/),
      });
      // What was written before the refusal is small: the zeros were never written.
      expect((await stat(join(work, 'sparse.tar')).catch(() => ({ size: 0 }))).size).toBeLessThan(1 << 20);
      // A sparse file within the budget (a lastlog of a few MiB) is kept, whole, as GNU tar without --sparse keeps it.
      await rm(join(guest, 'huge'));
      await execa('truncate', ['-s', '8M', join(guest, 'lastlog')]);
      await writeRootfsTar(guest, join(work, 'sparse.tar'), { run: execRunner, log, guestMounts: [guest] });
      expect((await stat(join(work, 'sparse.tar'))).size).toBeGreaterThan(8 << 20);
    } finally {
      await execa('umount', [guest]);
      await rm(join(work, 'sparse.tar'), { force: true });
    }
  }, 60_000);

  test('mtimes from 2038-01-19 on (past what tar-stream writes) and before 1970 are kept exactly, in pax records', async () => {
    // Without a clamp: SOURCE_DATE_EPOCH unset for this write.
    const saved = process.env.SOURCE_DATE_EPOCH;
    delete process.env.SOURCE_DATE_EPOCH;
    const times = join(work, 'times');
    const stamps: Record<string, string> = { 'last-32-bit': '2038-01-19T03:14:07Z', 'past-32-bit': '2038-01-19T03:14:08Z', 'year-2100': '2100-01-01T00:00:00Z', 'year-1960': '1960-01-01T00:00:00Z' };
    try {
      await mkdir(times);
      for (const [name, when] of Object.entries(stamps)) {
        await writeFile(join(times, name), `${name}\n`);
        await utimes(join(times, name), new Date(when), new Date(when));
      }
      const archive = join(work, 'times.tar');
      await writeRootfsTar(times, archive, { run: execRunner, log, guestMounts: [times] });
      const byName = new Map((await readWithTarStream(archive)).map((entry) => [entry.header.name, entry]));
      // tar-stream reads the pax record without applying it: the ustar field holds the nearest it can.
      const seconds = (when: string) => Date.parse(when) / 1000;
      expect(byName.get('./last-32-bit')?.header).toMatchObject({ mtime: new Date(stamps['last-32-bit']) });
      expect(byName.get('./last-32-bit')?.header.pax).toBeNull();
      for (const name of ['past-32-bit', 'year-2100']) expect(byName.get(`./${name}`)?.header).toMatchObject({ mtime: new Date(stamps['last-32-bit']), pax: { mtime: String(seconds(stamps[name])) } });
      expect(byName.get('./year-1960')?.header).toMatchObject({ mtime: new Date(0), pax: { mtime: String(seconds(stamps['year-1960'])) } });
      const out = join(work, 'times-gnu');
      await mkdir(out);
      await gnuExtract(archive, out);
      for (const [name, when] of Object.entries(stamps)) expect({ name, mtime: (await stat(join(out, name))).mtime }).toEqual({ name, mtime: new Date(when) });
    } finally {
      if (saved !== undefined) process.env.SOURCE_DATE_EPOCH = saved;
      await rm(times, { recursive: true, force: true });
      await rm(join(work, 'times-gnu'), { recursive: true, force: true });
    }
  });

  test("refuses directories of more names than it holds in memory (a crafted image's millions of links; nested directories each under the bound), naming them", async () => {
    const crowded = join(work, 'crowded');
    await mkdir(join(crowded, 'var/spool'), { recursive: true });
    await writeFile(join(crowded, 'var/spool/0'), '');
    for (let i = 1; i <= 40; i++) await link(join(crowded, 'var/spool/0'), join(crowded, `var/spool/${i}`));
    const refusal = (path: string, bound: number) => ({
      code: 'BAD_INPUT',
      message: `the guest's ${path} and the directories it is in hold more than ${bound} names: the root filesystem tar sorts each directory's names in memory, and holds them while it walks beneath`,
    });
    try {
      // Held on the way down: / (var), /var (spool) and /var/spool's 41.
      await expect(writeRootfsTar(crowded, join(work, 'crowded.tar'), { run: execRunner, log, guestMounts: [crowded], maxDirEntries: 42 })).rejects.toMatchObject(refusal('/var/spool', 42));
      // At the bound, it is written whole.
      const result = await writeRootfsTar(crowded, join(work, 'crowded.tar'), { run: execRunner, log, guestMounts: [crowded], maxDirEntries: 43 });
      expect(result.entries).toBe(3 + 41);
      // /var/spool/inner with 30 names: each directory is under a bound of 60, the names held together are not.
      await mkdir(join(crowded, 'var/spool/inner'));
      for (let i = 1; i <= 30; i++) await link(join(crowded, 'var/spool/0'), join(crowded, `var/spool/inner/${i}`));
      await expect(writeRootfsTar(crowded, join(work, 'crowded.tar'), { run: execRunner, log, guestMounts: [crowded], maxDirEntries: 60 })).rejects.toMatchObject(refusal('/var/spool/inner', 60));
    } finally {
      await rm(crowded, { recursive: true, force: true });
      await rm(join(work, 'crowded.tar'), { force: true });
    }
  });

  test('refuses a tree with a foreign filesystem mounted inside (a chroot session left open), writing nothing usable', async () => {
    const proc = join(tree, 'proc');
    await mkdir(proc);
    await execa('mount', ['-t', 'tmpfs', 'tmpfs', proc]);
    try {
      await expect(writeRootfsTar(tree, join(work, 'refused.tar'), { run: execRunner, log, guestMounts: [tree] })).rejects.toMatchObject({
        code: 'INTERNAL',
        message: expect.stringContaining(`${proc} is mounted inside the guest tree`),
      });
      await expect(stat(join(work, 'refused.tar'))).rejects.toMatchObject({ code: 'ENOENT' });
    } finally {
      await execa('umount', [proc]);
      await rm(proc, { recursive: true });
    }
  });
});
