import { lstat, mkdir, mkdtemp, readdir, readFile, readlink, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { constants, readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { MAX_DIR_ENTRIES, MAX_REMOVE_DEPTH, moveAsideInGuest, openBeneath, readGuestDir, readGuestFile, readGuestText, readGuestThrough, guardHostFilesystems, removeGuestFile, statGuest, walkGuestTree, writeGuestFileFromHost, writeGuestSymlink } from '../../src/util/guest-fs.js';
import { REPO } from '../helpers/host.js';

/** Host-side access to a guest tree: what a crafted image plants is neither followed, opened as a device or FIFO, nor read without limit. */
describe('guest-fs', () => {
  let root: string;
  let outside: string;
  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'ib-guestfs-'));
    outside = await mkdtemp(join(tmpdir(), 'ib-guestfs-host-'));
    await writeFile(join(outside, 'secret'), 'host secret\n');
    await mkdir(join(root, 'etc'));
  });
  afterEach(async () => {
    await rm(root, { recursive: true, force: true });
    await rm(outside, { recursive: true, force: true });
  });

  test('an absolute symlink to a host file resolves inside the guest, never to the host file', async () => {
    await symlink(join(outside, 'secret'), join(root, 'etc/os-release'));
    expect(await readGuestText(root, '/etc/os-release')).toBeUndefined();
    await mkdir(join(root, outside), { recursive: true });
    await writeFile(join(root, outside, 'secret'), 'the guest own file\n');
    expect(await readGuestText(root, '/etc/os-release')).toBe('the guest own file\n');
  });

  test('a directory on the way swapped for a link after the path was resolved (a guest process racing the host) is refused, never followed', async () => {
    // What resolveInRoot gave, /etc/sub/secret, no link on the way then; a guest process has since put a link there.
    await symlink(outside, join(root, 'etc/sub'));
    // A link is not a directory to step into (openGuest: nothing there).
    await expect(openBeneath(root, '/etc/sub/secret', constants.O_RDONLY)).rejects.toMatchObject({ code: 'ENOTDIR' });
    // The last name too.
    await symlink(join(outside, 'secret'), join(root, 'etc/last'));
    await expect(openBeneath(root, '/etc/last', constants.O_RDONLY)).rejects.toMatchObject({ code: 'ELOOP' });
    // Unswapped, it opens what is there.
    await mkdir(join(root, 'etc/real'));
    await writeFile(join(root, 'etc/real/file'), 'guest file');
    const handle = await openBeneath(root, '/etc/real/file', constants.O_RDONLY);
    try {
      expect(await handle.readFile('utf8')).toBe('guest file');
    } finally {
      await handle.close();
    }
  });

  test('a FIFO is refused at once (no waiting for a writer), a device node too, naming what it is', async () => {
    await execa('mkfifo', [join(root, 'etc/fstab')]);
    await expect(readGuestText(root, '/etc/fstab')).rejects.toMatchObject({ code: 'BAD_INPUT', message: expect.stringContaining("the guest's /etc/fstab is a FIFO") });
    await execa('mknod', [join(root, 'etc/zero'), 'c', '1', '5']);
    await expect(readGuestFile(root, '/etc/zero', 100)).rejects.toMatchObject({ code: 'BAD_INPUT', message: expect.stringContaining('a character device') });
  });

  test('reading a binary ahead (readGuestThrough): regular guest files only, links resolved inside the guest, never a FIFO or device', async () => {
    await mkdir(join(root, 'usr/bin'), { recursive: true });
    await writeFile(join(root, 'usr/bin/containerd'), Buffer.alloc(3 << 20, 1));
    expect(await readGuestThrough(root, '/usr/bin/containerd', 1 << 30)).toBe(true);
    expect(await readGuestThrough(root, '/usr/bin/absent', 1 << 30)).toBe(false);
    // A link to the host's file resolves inside the guest, where there is none.
    await symlink(join(outside, 'secret'), join(root, 'usr/bin/runc'));
    expect(await readGuestThrough(root, '/usr/bin/runc', 1 << 30)).toBe(false);
    // A FIFO would block a reader, a device never end: neither is opened for reading.
    await execa('mkfifo', [join(root, 'usr/bin/kubelet')]);
    expect(await readGuestThrough(root, '/usr/bin/kubelet', 1 << 30)).toBe(false);
    await execa('mknod', [join(root, 'usr/bin/crictl'), 'c', '1', '5']);
    expect(await readGuestThrough(root, '/usr/bin/crictl', 1 << 30)).toBe(false);
    // Interrupted: it stops reading (and still closes the file).
    const aborted = AbortSignal.abort();
    expect(await readGuestThrough(root, '/usr/bin/containerd', 1 << 30, aborted)).toBe(true);
  });

  test('a file larger than the cap is refused, not read whole', async () => {
    await writeFile(join(root, 'etc/os-release'), Buffer.alloc(5000, 'a'));
    await expect(readGuestFile(root, '/etc/os-release', 4096)).rejects.toMatchObject({ code: 'BAD_INPUT', message: expect.stringContaining('larger than 4096 bytes') });
    expect((await readGuestFile(root, '/etc/os-release', 5000))!.length).toBe(5000);
  });

  test('a directory symlinked at the host is listed inside the guest', async () => {
    await symlink(outside, join(root, 'boot'));
    expect(await readGuestDir(root, '/boot')).toBeUndefined();
    await mkdir(join(root, outside), { recursive: true });
    await writeFile(join(root, outside, 'vmlinuz-1'), '');
    expect(await readGuestDir(root, '/boot')).toEqual(['vmlinuz-1']);
  });

  test('a write replaces a planted symlink (or dangling one) rather than writing through it; parents resolve inside', async () => {
    await mkdir(join(root, 'usr/share/imagebuilder'), { recursive: true });
    await symlink(join(outside, 'secret'), join(root, 'usr/share/imagebuilder/bom.json'));
    await writeGuestFileFromHost(root, '/usr/share/imagebuilder/bom.json', '{}\n', { mode: 0o644, time: new Date(1700000000000) });
    expect(await readFile(join(outside, 'secret'), 'utf8')).toBe('host secret\n');
    const written = await lstat(join(root, 'usr/share/imagebuilder/bom.json'));
    expect(written.isFile()).toBe(true);
    expect(written.mode & 0o7777).toBe(0o644);
    expect(written.mtimeMs).toBe(1700000000000);
    // A parent directory that is a host-absolute symlink: made inside the guest.
    await symlink(outside, join(root, 'var'));
    await writeGuestFileFromHost(root, '/var/lib/record.json', 'x', { mode: 0o600 });
    expect(readdirSync(outside)).toEqual(['secret']);
    expect(readFileSync(join(root, outside, 'lib/record.json'), 'utf8')).toBe('x');
    // No temporary file left beside the target.
    expect(readdirSync(join(root, 'usr/share/imagebuilder'))).toEqual(['bom.json']);
  });

  test("the host itself as root '/' (the host's own programs' ELF headers are read the same way)", async () => {
    expect((await readGuestFile('/', '/proc/self/exe', 1 << 30))!.subarray(1, 4).toString()).toBe('ELF');
    expect((await readGuestText('/', '/etc/hostname')) ?? '').not.toBe('');
  });

  test('walkGuestTree lists a tree depth first, names sorted, without following a planted symlink or opening a FIFO', async () => {
    await symlink(outside, join(root, 'lib'));
    await mkdir(join(root, outside, 'modules/6.1/kernel'), { recursive: true });
    await writeFile(join(root, outside, 'modules/6.1/kernel/b.ko'), 'b');
    await writeFile(join(root, outside, 'modules/6.1/kernel/a.ko'), 'a');
    // Below the top, links are entries: one to the host's directory is listed as a link, never entered.
    await symlink(outside, join(root, outside, 'modules/6.1/build'));
    await execa('mkfifo', [join(root, outside, 'modules/6.1/fifo')]);
    await writeFile(join(root, outside, 'modules/6.1/initrd'), 'skipped');
    // The top (/lib → a host path) resolves inside the guest, as every guest path does.
    const entries: { guestPath: string; stat: import('node:fs').BigIntStats }[] = [];
    await walkGuestTree(root, '/lib/modules', (guestPath, stat) => entries.push({ guestPath, stat }), (path) => path.endsWith('/initrd'));
    const top = join(outside, 'modules');
    expect(entries.map((e) => e.guestPath)).toEqual([top, `${top}/6.1`, `${top}/6.1/build`, `${top}/6.1/fifo`, `${top}/6.1/kernel`, `${top}/6.1/kernel/a.ko`, `${top}/6.1/kernel/b.ko`]);
    expect(entries[2].stat.isSymbolicLink()).toBe(true);
    expect(entries[3].stat.isFIFO()).toBe(true);
    expect(entries[5].stat.size).toBe(1n);
    const none: string[] = [];
    await walkGuestTree(root, '/no/such/dir', (guestPath) => none.push(guestPath));
    expect(none).toEqual([]);
  });

  test('a directory of more than MAX_DIR_ENTRIES names is refused by a listing and by a walk, not read into memory whole', async () => {
    await mkdir(join(root, 'var/lib/apt/lists'), { recursive: true });
    await execa('sh', ['-c', `cd ${join(root, 'var/lib/apt/lists')} && seq 1 ${MAX_DIR_ENTRIES + 1} | xargs touch`]);
    const refusal = { code: 'BAD_INPUT', message: `the guest's /var/lib/apt/lists holds more than ${MAX_DIR_ENTRIES} entries, more than the host lists` };
    await expect(readGuestDir(root, '/var/lib/apt/lists')).rejects.toMatchObject(refusal);
    await expect(walkGuestTree(root, '/var/lib/apt', () => undefined, undefined, 10 * MAX_DIR_ENTRIES)).rejects.toMatchObject(refusal);
    await execa('sh', ['-c', `rm ${join(root, 'var/lib/apt/lists')}/1`]);
    expect(await readGuestDir(root, '/var/lib/apt/lists')).toHaveLength(MAX_DIR_ENTRIES);
  }, 60_000);

  test('walkGuestTree refuses a tree larger than its bound, naming it, rather than walking without end', async () => {
    await mkdir(join(root, 'etc/apt/sources.list.d'), { recursive: true });
    for (let i = 0; i < 12; i++) await writeFile(join(root, `etc/apt/sources.list.d/s${i}.list`), '');
    const seen: string[] = [];
    await expect(walkGuestTree(root, '/etc/apt', (guestPath) => seen.push(guestPath), undefined, 10)).rejects.toMatchObject({
      code: 'BAD_INPUT',
      message: expect.stringContaining("the guest's /etc/apt is a tree of more than 10 entries"),
    });
    expect(seen).toHaveLength(10);
    // Within the bound, the same tree is walked whole: /etc/apt, sources.list.d and its 12 files.
    seen.length = 0;
    await walkGuestTree(root, '/etc/apt', (guestPath) => seen.push(guestPath), undefined, 14);
    expect(seen).toHaveLength(14);
  });

  test("the session's host filesystems (its /sys, its /dev of real nodes), reached through a guest link, are neither opened nor read nor walked", async () => {
    // A tmpfs standing for the session's sysfs: a file only the host's root reads there, a device node beside it.
    await mkdir(join(root, 'sys'));
    await execa('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', join(root, 'sys')]);
    try {
      await writeFile(join(root, 'sys/product_serial'), 'HOST-SERIAL\n', { mode: 0o400 });
      await execa('mknod', [join(root, 'sys/zero'), 'c', '1', '5']);
      await symlink('/sys/product_serial', join(root, 'etc/fstab'));
      await symlink('../sys/zero', join(root, 'etc/zero'));
      await symlink('/sys', join(root, 'etc/sysdir'));
      const guard = await guardHostFilesystems(root);
      // While the session mounts, a read waits rather than step into what is being mounted.
      let settled = false;
      const waiting = readGuestText(root, '/etc/fstab').finally(() => (settled = true));
      waiting.catch(() => undefined);
      await new Promise((resolve) => setTimeout(resolve, 50));
      expect(settled).toBe(false);
      await guard.refuse([join(root, 'sys')]);
      await expect(waiting).rejects.toMatchObject({ code: 'BAD_INPUT' });
      const onHost = expect.stringContaining("is inside the host's own filesystems the build mounts for the guest's programs");
      await expect(readGuestText(root, '/etc/fstab')).rejects.toMatchObject({ code: 'BAD_INPUT', message: onHost });
      await expect(readGuestFile(root, '/etc/zero', 100)).rejects.toMatchObject({ code: 'BAD_INPUT', message: onHost });
      expect(await readGuestThrough(root, '/etc/fstab', 100)).toBe(false);
      // The mount point itself, as a directory: not listed.
      expect(await readGuestDir(root, '/etc/sysdir')).toBeUndefined();
      expect(await readGuestDir(root, '/sys')).toBeUndefined();
      const walked: string[] = [];
      await walkGuestTree(root, '/', (guestPath) => walked.push(guestPath));
      expect(walked).toContain('/etc/fstab');
      expect(walked.filter((path) => path.startsWith('/sys'))).toEqual([]);
      // The host reading itself (root '/') is no guest: unaffected by a guest's refusals.
      expect((await readGuestText('/', join(root, 'sys/product_serial')))).toBe('HOST-SERIAL\n');
      guard.release();
      // Released (the session's mounts gone), the same link reads what is there: the refusal was what stopped it.
      expect(await readGuestText(root, '/etc/fstab')).toBe('HOST-SERIAL\n');
      await expect(readGuestFile(root, '/etc/zero', 100)).rejects.toMatchObject({ message: expect.stringContaining('is a character device') });
    } finally {
      await execa('umount', [join(root, 'sys')]);
    }
  });

  test("writes, removals and renames through a guest link into the session's host filesystems (its /dev of real nodes) are refused and change nothing there", async () => {
    // A tmpfs standing for the session's /dev: a device node, a file; the guest's apt lists directory a link to it.
    await mkdir(join(root, 'dev'));
    await execa('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', join(root, 'dev')]);
    try {
      await execa('mknod', [join(root, 'dev/null'), 'c', '1', '3']);
      await writeFile(join(root, 'dev/kept'), 'session file\n');
      await mkdir(join(root, 'var/lib/apt'), { recursive: true });
      await symlink('/dev', join(root, 'var/lib/apt/lists'));
      const guard = await guardHostFilesystems(root);
      let released = false;
      try {
        await guard.refuse([join(root, 'dev')]);
        const onHost = { code: 'BAD_INPUT', message: expect.stringContaining("is inside the host's own filesystems the build mounts for the guest's programs") };
        await expect(writeGuestFileFromHost(root, '/var/lib/apt/lists/new', 'x', { mode: 0o644 })).rejects.toMatchObject(onHost);
        await expect(writeGuestFileFromHost(root, '/var/lib/apt/lists/kept', 'x', { mode: 0o644 })).rejects.toMatchObject(onHost);
        await expect(writeGuestFileFromHost(root, '/var/lib/apt/lists/partial/new', 'x', { mode: 0o644 })).rejects.toMatchObject(onHost);
        await expect(writeGuestSymlink(root, '/var/lib/apt/lists/link', '/etc/shadow')).rejects.toMatchObject(onHost);
        await expect(removeGuestFile(root, '/var/lib/apt/lists/null')).rejects.toMatchObject(onHost);
        await expect(moveAsideInGuest(root, '/var/lib/apt/lists/null')).rejects.toMatchObject(onHost);
        // The directory given as the parent itself, not through a link: refused the same.
        await expect(removeGuestFile(root, '/dev/null')).rejects.toMatchObject(onHost);
        expect((await readdir(join(root, 'dev'))).sort()).toEqual(['kept', 'null']);
        expect((await lstat(join(root, 'dev/null'))).isCharacterDevice()).toBe(true);
        expect(await readFile(join(root, 'dev/kept'), 'utf8')).toBe('session file\n');
        guard.release();
        released = true;
        // Released (the session's mounts gone), the same guest path is the guest's own to write: the refusal was what stopped it.
        await writeGuestFileFromHost(root, '/var/lib/apt/lists/new', 'x', { mode: 0o644 });
        expect(await readFile(join(root, 'dev/new'), 'utf8')).toBe('x');
      } finally {
        if (!released) guard.release();
      }
    } finally {
      await execa('umount', [join(root, 'dev')]);
    }
  });

  describe('moveAsideInGuest: what a step left at the name goes, what was there comes back', () => {
    test('a directory tree a step left at the name is removed, and the file set aside comes back', async () => {
      await writeFile(join(root, 'etc/resolv.conf'), 'original\n');
      const saved = (await moveAsideInGuest(root, '/etc/resolv.conf'))!;
      await mkdir(join(root, 'etc/resolv.conf/sub'), { recursive: true });
      await writeFile(join(root, 'etc/resolv.conf/sub/file'), 'left by a step\n');
      await symlink(outside, join(root, 'etc/resolv.conf/link-out'));
      await saved.restore();
      expect(await readFile(join(root, 'etc/resolv.conf'), 'utf8')).toBe('original\n');
      expect(await readdir(join(root, 'etc'))).toEqual(['resolv.conf']);
      // The link was removed, not followed: the host directory it named is whole.
      expect(await readFile(join(outside, 'secret'), 'utf8')).toBe('host secret\n');
    });

    test('a tree a step left at the name deeper than MAX_REMOVE_DEPTH is refused, holding no descriptor afterwards', async () => {
      await writeFile(join(root, 'etc/resolv.conf'), 'original\n');
      const saved = (await moveAsideInGuest(root, '/etc/resolv.conf'))!;
      await mkdir(join(root, 'etc/resolv.conf', ...Array(MAX_REMOVE_DEPTH + 2).fill('d')), { recursive: true });
      const descriptors = (await readdir('/proc/self/fd')).length;
      await expect(saved.restore()).rejects.toMatchObject({ code: 'BAD_INPUT', message: expect.stringContaining(`a directory tree more than ${MAX_REMOVE_DEPTH} levels deep`) });
      expect((await readdir('/proc/self/fd')).length).toBe(descriptors);
      // One as deep as allowed goes whole, and the file comes back.
      await rm(join(root, 'etc/resolv.conf'), { recursive: true });
      await mkdir(join(root, 'etc/resolv.conf', ...Array(MAX_REMOVE_DEPTH - 1).fill('d')), { recursive: true });
      await saved.restore();
      expect(await readFile(join(root, 'etc/resolv.conf'), 'utf8')).toBe('original\n');
    });

    test('directories a step left at the name holding more than MAX_DIR_ENTRIES names together (each fewer, one inside the other) are refused, not read into memory whole', async () => {
      await writeFile(join(root, 'etc/resolv.conf'), 'original\n');
      const saved = (await moveAsideInGuest(root, '/etc/resolv.conf'))!;
      // crowd: half the bound's files and `inner`, which holds the other half: the names held on the way down pass it.
      const half = MAX_DIR_ENTRIES / 2;
      await mkdir(join(root, 'etc/resolv.conf/crowd/inner'), { recursive: true });
      for (const dir of ['crowd', 'crowd/inner']) await execa('sh', ['-c', `cd ${join(root, 'etc/resolv.conf', dir)} && seq 1 ${half} | xargs touch`]);
      await expect(saved.restore()).rejects.toMatchObject({ code: 'BAD_INPUT', message: `the guest's /etc/resolv.conf holds more than ${MAX_DIR_ENTRIES} entries, more than the host lists` });
      // Refused on listing `inner`, before any of its names was removed; once it is gone, the file comes back.
      expect((await readdir(join(root, 'etc/resolv.conf/crowd/inner'))).length).toBe(half);
      await execa('rm', ['-rf', join(root, 'etc/resolv.conf/crowd')]);
      await saved.restore();
      expect(await readFile(join(root, 'etc/resolv.conf'), 'utf8')).toBe('original\n');
    }, 180_000);

    test("a mount a step moved under the name (the session's /dev, moved with `mv`) is refused, not emptied", async () => {
      await writeFile(join(root, 'etc/resolv.conf'), 'original\n');
      const saved = (await moveAsideInGuest(root, '/etc/resolv.conf'))!;
      await mkdir(join(root, 'etc/resolv.conf/dev'), { recursive: true });
      await execa('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', join(root, 'etc/resolv.conf/dev')]);
      try {
        await execa('mknod', [join(root, 'etc/resolv.conf/dev/null'), 'c', '1', '3']);
        await expect(saved.restore()).rejects.toMatchObject({ code: 'BAD_INPUT', message: expect.stringContaining('a directory on another filesystem (a mount point), which is not removed') });
        expect((await lstat(join(root, 'etc/resolv.conf/dev/null'))).isCharacterDevice()).toBe(true);
      } finally {
        await execa('umount', [join(root, 'etc/resolv.conf/dev')]);
      }
    });

    test('a parent a step replaced with a link is refused on restore, not followed (to where the link leads, in the guest or out)', async () => {
      await mkdir(join(root, 'etc/dir'));
      await writeFile(join(root, 'etc/dir/file'), 'original\n');
      const saved = (await moveAsideInGuest(root, '/etc/dir/file'))!;
      await rename(join(root, 'etc/dir'), join(root, 'etc/dir-moved'));
      await symlink(outside, join(root, 'etc/dir'));
      await writeFile(join(outside, 'file'), 'host file\n');
      await expect(saved.restore()).rejects.toMatchObject({ code: 'BAD_INPUT', message: expect.stringContaining('not a directory on the way (dir') });
      expect(await readFile(join(outside, 'file'), 'utf8')).toBe('host file\n');
      expect((await readdir(join(root, 'etc/dir-moved'))).filter((name) => name.includes('imagebuilder-saved'))).toHaveLength(1);
    });
  });

  test('a guest root that is gone is an error for writes and removals, not an absent file', async () => {
    const gone = join(root, 'no-such-root');
    await expect(removeGuestFile(gone, '/etc/resolv.conf')).rejects.toMatchObject({ code: 'ENOENT' });
    await expect(moveAsideInGuest(gone, '/etc/resolv.conf')).rejects.toMatchObject({ code: 'ENOENT' });
    // A missing parent inside the guest is an absent file: nothing to remove.
    await expect(removeGuestFile(root, '/no/such/dir/file')).resolves.toBeUndefined();
  });

  test('statGuest does not follow the last name', async () => {
    await symlink('/dev/null', join(root, 'etc/masked'));
    expect((await statGuest(root, '/etc/masked'))!.isSymbolicLink()).toBe(true);
    expect(await readlink(join(root, 'etc/masked'))).toBe('/dev/null');
  });
});

/**
 * The modules that read a mounted guest must do it through src/util/guest-fs.ts. They may use only the
 * node:fs calls that open nothing (lstat, readlink) or that act on the host's own temp files; each other
 * call is listed with the reason it does not open a guest path.
 */
describe('guest-fs is the only way the host opens a guest file', () => {
  const SAFE = new Set(['lstat', 'readlink', 'mkdtemp', 'rm', 'constants', 'Stats', 'FileHandle', 'createWriteStream']);
  const ALLOWED: Record<string, Record<string, string>> = {
    'src/distro/selinux.ts': { writeFile: 'copies of guest data into a private host temp directory', existsSync: "the host's own /sys/fs/selinux (whether SELinux runs here)" },
    'src/pkg/rpm.ts': Object.fromEntries(['writeFile', 'readdir', 'chown'].map((name) => [name, 'copies of guest data in a private host temp directory, handed to the sandboxed rpm'])),
    'src/mount/layout.ts': {
      readFile: '/proc/filesystems (host)',
      open: 'the exclusive-open test of a host block device',
      mkdir: 'mount points, at paths already resolved inside the guest before anything runs in it',
      opendir: 'names of a read-only probe mount (btrfs subvolumes), streamed and bounded, each then lstat-ed',
    },
    'src/chroot/session.ts': {
      readFile: "the host's resolv.conf",
      readdir: '/proc (host)',
      mkdir: 'mount points, at paths resolved inside the guest',
      symlink: 'links in the private /dev tmpfs',
    },
    'src/chroot/sandbox.ts': Object.fromEntries(['statSync', 'mkdir', 'readFile', 'rmdir', 'stat', 'writeFile'].map((name) => [name, "the host's cgroupfs, /proc/sys, $PATH and the sandbox's private temp directory; never a guest path"])),
    'src/chroot/dns-forward.ts': Object.fromEntries(['chmod', 'chown', 'mkdir', 'readFile'].map((name) => [name, "the sandbox's private state directory on the host and the relay's log there; never a guest path"])),
    'src/chroot/emulation.ts': Object.fromEntries(['open', 'readdir', 'readFile', 'realpath', 'rmdir'].map((name) => [name, "the host's binfmt_misc and /proc/mounts; of the guest, only its ELF header (guest-fs) and an lstat"])),
    'src/image/rootfs-tar.ts': {
      opendir: 'the lstat-based walk, after the session closed (no guest process runs), streamed and bounded per directory',
      statfs: "what the guest's filesystems use, asked of their mount points (host paths the host mounted)",
    },
    'src/mount/block.ts': Object.fromEntries(['readdir', 'readFile', 'stat', 'open'].map((name) => [name, "the host's /sys/class/block and /dev nodes of the devices we attached (open: an ext superblock read from our own partition device)"])),
    'src/mount/nbd.ts': { readdir: "the host's /sys/block" },
    'src/mount/grow.ts': {
      readFile: "the host's /sys/class/block",
      realpath: "the host's /sys/class/block",
      statfs: 'mount points the host mounted a guest filesystem on (no file is opened: only its size is read)',
    },
    'src/mount/fuse.ts': { writeFile: 'the FUSE export\'s mount point, a new file in the private work directory' },
    'src/mount/guestmount.ts': { mkdir: 'the guestmount mount point in the private work directory' },
    'src/boot/boot.ts': {
      open: 'the image the user named, read-only and O_NONBLOCK (a FIFO is refused), checked to be the file at that path',
      stat: 'that image, /dev/kvm and the work directory, on the host',
      ...Object.fromEntries(['chmod', 'chown', 'copyFile', 'mkdir', 'writeFile'].map((name) => [name, "the VM's directory in the private work directory (seed, firmware variables, overlay); guest files only through guest-fs"])),
    },
    'src/boot/channel.ts': { chmod: 'our own listening sockets' },
    'src/boot/console.ts': Object.fromEntries(['rmSync', 'openSync', 'writeSync', 'closeSync'].map((name) => [name, 'console.log in the results directory (ours: ensurePrivateDir), made new'])),
    'src/boot/kvm.ts': Object.fromEntries(['mkdir', 'readFile', 'writeFile'].map((name) => [name, "the KVM verdict in the host's cache directory"])),
    'src/steps/copy.ts': Object.fromEntries(['statSync', 'readdir', 'stat'].map((name) => [name, "the recipe's host sources (confined to its directory by host-inputs.ts); the guest side through guest-fs"])),
    'src/steps/host-inputs.ts': Object.fromEntries(['lstatSync', 'realpathSync', 'readdir', 'stat'].map((name) => [name, "the recipe's host inputs, resolved and confined to the recipe's directory"])),
    'src/steps/run.ts': { statSync: "a recipe's run.file on the host, confined" },
    'src/steps/download.ts': { open: "the download's own file in the private work directory", createReadStream: 'the same file' },
    'src/steps/repository.ts': { chown: "the gpg box's own empty HOME in the private work directory" },
    'src/pkg/package-cache.ts': {
      ...Object.fromEntries(['mkdir', 'readdir', 'readFile', 'rename', 'rm', 'stat', 'utimes', 'writeFile'].map((name) => [name, "the host's package store in the cache directory; guest files only through guest-fs"])),
      statfs: "the guest root's mount point, a host path the host mounted (no file is opened: its free space bounds the offer)",
    },
  };
  const GUEST_FACING = ['src/distro', 'src/pkg', 'src/bom', 'src/chroot', 'src/mount', 'src/boot', 'src/checks', 'src/steps', 'src/image/rootfs-tar.ts', 'src/pipeline/inspect.ts'];

  test.each(GUEST_FACING)('%s', async (entry) => {
    const files = entry.endsWith('.ts') ? [entry] : readdirSync(join(REPO, entry)).filter((name) => name.endsWith('.ts')).map((name) => `${entry}/${name}`);
    for (const file of files) {
      const text = readFileSync(join(REPO, file), 'utf8');
      const imported = [...text.matchAll(/import\s+(?:type\s+)?\{([^}]*)\}\s+from\s+'node:fs(?:\/promises)?'/g)].flatMap((m) => m[1].split(',').map((name) => name.trim().replace(/^type\s+/, '')).filter(Boolean));
      const forbidden = imported.filter((name) => !SAFE.has(name) && !(ALLOWED[file] ?? {})[name]);
      expect({ file, forbidden }).toEqual({ file, forbidden: [] });
    }
  });
});
