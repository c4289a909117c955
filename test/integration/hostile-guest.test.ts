import { lstat, mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { execa } from 'execa';
import { deriveImage } from '../helpers/derive-image.js';
import { fixtureImage } from '../helpers/fixtures.js';
import { runCli } from '../helpers/host.js';
import { CANARY_CONTENT, expectHostUntouched, snapshotHost } from '../helpers/hostile.js';
import { withImageMounted } from '../helpers/inspect.js';
import { writeRecipe } from '../helpers/recipes.js';
import { rpmGuestImage, RPM_GUEST_DBPATH } from '../helpers/rpm-guest.js';

/**
 * Hostile guests: images crafted (by the test, from the real fixtures) to reach the build host through what
 * imagebuilder does with them on the host side — mounting their filesystems, reading and writing their files,
 * running host tools over their data. Each attack is tried for real; after each, the host must be as it was
 * (a canary file and directory, kernel settings, binfmt_misc, mounts, loop devices, helper processes) and the
 * build either fails with a clear error or succeeds without the attack having any effect.
 */
describe('hostile guest images', () => {
  let work: string;
  let tmp: string;
  let wholeDisk: string;
  beforeAll(async () => {
    work = await mkdtemp('/var/tmp/ib-hostile-');
    tmp = await mkdtemp('/var/tmp/ib-hostile-tmp-');
    wholeDisk = await fixtureImage('whole-disk');
  });
  afterAll(async () => {
    await rm(work, { recursive: true, force: true });
    await rm(tmp, { recursive: true, force: true });
  });
  const env = () => ({ IMAGEBUILDER_WORK_DIR: tmp });
  const apply = (recipe: string, image: string, output: string, extra: string[] = []) =>
    runCli(['apply', recipe, '--disk-image', image, '--output', join(work, output), '--sparsify', 'none', '--sbom', 'none', ...extra], { env: env() });

  describe('mounts: the superblock says what a filesystem is, the fstab only where; nodev, nosuid, errors=remount-ro', () => {
    test("an fstab naming the host kernel's filesystems (debugfs, tracefs, securityfs, binfmt_misc, configfs, bpf) mounts none of them", async () => {
      const host = await snapshotHost();
      const image = await deriveImage(wholeDisk, join(work, 'kernel-fstab.qcow2'), {}, {
        // The root filesystem's own UUID under types that are not what its superblock says, and a virtual one.
        thenRun: [
          'u=$(blkid -p -o value -s UUID "$2")',
          'for t in debugfs tracefs securityfs configfs bpf; do mkdir -p "$1/opt/$t"; echo "UUID=$u /opt/$t $t defaults 0 0" >> "$1/etc/fstab"; done',
          'mkdir -p "$1/opt/binfmt"; echo "none /opt/binfmt binfmt_misc defaults 0 0" >> "$1/etc/fstab"',
        ].join('; '),
      });
      const recipe = await writeRecipe(work, 'kernel-fstab', [
        { name: 'no kernel filesystem inside', run: "! grep -E ' (debugfs|tracefs|securityfs|configfs|bpf|binfmt_misc) ' /proc/self/mounts && [ -z \"$(ls -A /opt/debugfs)$(ls -A /opt/tracefs)\" ] && echo KERNEL-FS-ABSENT" },
      ]);
      const result = await apply(recipe, image, 'kernel-fstab-out.qcow2');
      expectSuccess(result);
      expect(result.all).toContain('KERNEL-FS-ABSENT');
      for (const type of ['debugfs', 'tracefs', 'securityfs', 'configfs', 'bpf']) {
        expect(result.stderr).toMatch(new RegExp(`not mounting /etc/fstab:\\d+ \\(UUID=\\S+ /opt/${type} ${type}\\): \\S+ holds ext4 \\(the line says ${type}\\)`));
      }
      await expectHostUntouched(host);
    });

    test("device nodes shipped in the image are inert (a loop device over a canary disk, /dev/mem), and an errors=panic superblock is mounted errors=remount-ro", async () => {
      const host = await snapshotHost();
      // A "host disk" whose content the attack wants: a loop device over a file holding the canary.
      const disk = join(work, 'host-disk.img');
      await writeFile(disk, Buffer.concat([Buffer.from(CANARY_CONTENT), Buffer.alloc(1 << 20)]));
      const loop = (await execa('losetup', ['--find', '--show', disk])).stdout.trim();
      try {
        const [major, minor] = (await readFile(`/sys/class/block/${loop.replace('/dev/', '')}/dev`, 'utf8')).trim().split(':');
        const image = await deriveImage(wholeDisk, join(work, 'device-nodes.qcow2'), {}, {
          thenRun: `mknod "$1/root/hostdisk" b ${major} ${minor}; mknod "$1/root/mem" c 1 1; chmod 0666 "$1/root/hostdisk" "$1/root/mem"`,
        });
        // The superblock asks the kernel to panic on the first error it finds (set once unmounted, so it stays).
        const raw = `${image}.raw`;
        await execa('qemu-img', ['convert', '-O', 'raw', image, raw]);
        await execa('tune2fs', ['-e', 'panic', raw]);
        expect((await execa('dumpe2fs', ['-h', raw])).stdout).toMatch(/Errors behavior:\s+Panic/);
        await execa('qemu-img', ['convert', '-O', 'qcow2', raw, image]);
        await rm(raw);
        const recipe = await writeRecipe(work, 'device-nodes', [
          {
            name: 'read and write the host disk',
            run: [
              'if head -c 64 /root/hostdisk; then echo READ-HOST-DISK; fi',
              'if echo pwned > /root/hostdisk; then echo WROTE-HOST-DISK; fi',
              'if head -c 1 /root/mem >/dev/null; then echo READ-MEM; fi',
              "grep ' / ' /proc/self/mounts",
            ].join('\n'),
          },
        ]);
        const result = await apply(recipe, image, 'device-nodes-out.qcow2');
        expectSuccess(result);
        expect(result.all).not.toContain('READ-HOST-DISK');
        expect(result.all).not.toContain('WROTE-HOST-DISK');
        expect(result.all).not.toContain('READ-MEM');
        expect(result.all).not.toContain(CANARY_CONTENT.trim());
        expect(result.all).toMatch(/\/dev\/\S+ \/ ext4 \S*nosuid,nodev\S*errors=remount-ro/);
        expect((await readFile(disk)).subarray(0, CANARY_CONTENT.length).toString()).toBe(CANARY_CONTENT);
      } finally {
        await execa('losetup', ['--detach', loop]);
      }
      await expectHostUntouched(host);
    });
  });

  describe('host-side reads and writes of guest files: no symlink followed, no FIFO or device opened, sizes capped', () => {
    test('symlinks planted at the in-image BOM and at its temporary name do not make the host write through them', async () => {
      const host = await snapshotHost();
      const image = await deriveImage(wholeDisk, join(work, 'bom-links.qcow2'), {}, {
        thenRun: [
          'mkdir -p "$1/usr/share/imagebuilder"',
          `ln -s ${host.canaryFile} "$1/usr/share/imagebuilder/bom.json"`,
          `ln -s ${host.canaryFile} "$1/usr/share/imagebuilder/bom.json.imagebuilder-new"`,
          `ln -s ${host.canaryDir}/subdir "$1/usr/share/imagebuilder/dir"`,
        ].join('; '),
      });
      const recipe = await writeRecipe(work, 'bom-links', [{ file: { path: '/etc/marker', content: 'built\n' } }]);
      const result = await apply(recipe, image, 'bom-links-out.qcow2');
      expectSuccess(result);
      await withImageMounted(join(work, 'bom-links-out.qcow2'), 'whole-disk', async (root) => {
        const bom = join(root, 'usr/share/imagebuilder/bom.json');
        expect((await lstat(bom)).isFile()).toBe(true);
        expect(JSON.parse(await readFile(bom, 'utf8')).recipe.name).toBe('bom-links');
      });
      await expectHostUntouched(host);
    });

    test("a FIFO at /etc/resolv.conf (read and rewritten around every session) neither hangs nor is opened: it comes back as the FIFO it was", async () => {
      const host = await snapshotHost();
      const image = await deriveImage(wholeDisk, join(work, 'resolv-fifo.qcow2'), {}, { thenRun: 'rm -f "$1/etc/resolv.conf"; mkfifo "$1/etc/resolv.conf"' });
      const recipe = await writeRecipe(work, 'resolv-fifo', [{ run: 'grep -q nameserver /etc/resolv.conf && echo DNS-FOR-THE-BUILD' }]);
      const result = await apply(recipe, image, 'resolv-fifo-out.qcow2');
      expectSuccess(result);
      expect(result.all).toContain('DNS-FOR-THE-BUILD');
      await withImageMounted(join(work, 'resolv-fifo-out.qcow2'), 'whole-disk', async (root) => {
        expect((await lstat(join(root, 'etc/resolv.conf'))).isFIFO()).toBe(true);
      });
      await expectHostUntouched(host);
    });

    test("a guest command that never returns (a crafted systemctl, asked by a service step; a crafted apt-get) fails its step at the recipe's limits.timeout, and nothing is left behind", async () => {
      const host = await snapshotHost();
      const image = await deriveImage(wholeDisk, join(work, 'sleeping-systemctl.qcow2'), {}, {
        thenRun: 'for tool in systemctl apt-get; do rm -f "$1/usr/bin/$tool"; printf "#!/bin/sh\\nexec sleep 3600\\n" > "$1/usr/bin/$tool"; chmod 0755 "$1/usr/bin/$tool"; done',
      });
      const recipe = join(work, 'sleeping-systemctl.yaml');
      await writeFile(recipe, 'name: sleeping-systemctl\nlimits: { timeout: 3 }\nsteps:\n  - service: { enable: [ssh] }\n');
      const started = Date.now();
      const result = await apply(recipe, image, 'sleeping-systemctl-out.qcow2');
      expect(result.exitCode).not.toBe(0);
      expect(result.stderr).toMatch(/step 1\/1 \(enable ssh\)[^\n]*`chroot \S+ systemctl is-enabled ssh\.service` did not finish within 3 s \(the recipe's limits\.timeout\)/);
      // Well before the sleep would have ended: the timeout, not the guest, ended it.
      expect(Date.now() - started).toBeLessThan(120_000);
      await expect(stat(join(work, 'sleeping-systemctl-out.qcow2'))).rejects.toMatchObject({ code: 'ENOENT' });
      // A package install (which throws on failure, unlike the probe above) in a step without network: its apt-get
      // stopped at the limit is said to be that, with the limit's hint, not put down to the missing network.
      const install = join(work, 'sleeping-apt.yaml');
      await writeFile(install, 'name: sleeping-apt\nnetwork: none\nlimits: { timeout: 3 }\nsteps:\n  - packages: { install: [hello] }\n');
      const installing = await apply(install, image, 'sleeping-apt-out.qcow2');
      expect(installing.exitCode).not.toBe(0);
      expect(installing.stderr).toMatch(/`chroot \S+ apt-get [^`\n]*` did not finish within 3 s \(the recipe's limits\.timeout\)/);
      expect(installing.stderr).toContain('hint: a guest program that never returns (a crafted or broken image) is stopped there: raise limits.timeout');
      expect(installing.stderr).not.toContain('this step has no network');
      await expect(stat(join(work, 'sleeping-apt-out.qcow2'))).rejects.toMatchObject({ code: 'ENOENT' });
      await expectHostUntouched(host);
    }, 300_000);

    /** A build of `image` (named `name`) refused with `message` before its step runs, the host untouched. */
    const expectRefusedBeforeTheStep = async (name: string, image: (path: string) => Promise<string>, message: string) => {
      const host = await snapshotHost();
      const derived = await image(join(work, `${name}.qcow2`));
      const recipe = await writeRecipe(work, name, [{ run: 'echo RAN' }]);
      const result = await apply(recipe, derived, `${name}-out.qcow2`);
      expect(result.exitCode).toBe(2);
      expect(result.stderr).toContain(message);
      expect(result.all).not.toContain('RAN\n');
      await expectHostUntouched(host);
    };

    test("a /run that leads into /dev (where the session's own /dev links lead out of the guest) is refused before anything is mounted", async () => {
      await expectRefusedBeforeTheStep('run-into-dev', (path) => deriveImage(wholeDisk, path, {}, { thenRun: 'rm -rf "$1/run" "$1/dev/fd"; ln -s /dev/fd "$1/run"' }),
        "the guest's /run leads to /dev/fd, inside its /dev (/dev)");
    });

    test("a /run that leads to one of the guest's own mount points (/boot) is refused, and that mount is not taken for the session's", async () => {
      const separateBoot = await fixtureImage('separate-boot');
      await expectRefusedBeforeTheStep('run-onto-boot', (path) => deriveImage(separateBoot, path, {}, { partitioned: true, partition: 3, thenRun: 'rm -rf "$1/run"; ln -s /boot "$1/run"' }),
        "the guest's /run leads to /boot, which is a mount point already");
    });

    test('an ext4 root whose superblock names an external journal (a host disk the kernel or e2fsck would open) is refused before it is mounted', async () => {
      await expectRefusedBeforeTheStep('external-journal', async (path) => {
        const raw = `${path}.raw`;
        await execa('qemu-img', ['convert', '-O', 'raw', wholeDisk, raw]);
        // debugfs rewrites the superblock's checksum, so blkid still finds ext4 there.
        await execa('debugfs', ['-w', '-R', 'ssv journal_uuid 11111111-2222-3333-4444-555555555555', raw]);
        expect((await execa('dumpe2fs', ['-h', raw])).stdout).toMatch(/Journal UUID:\s+11111111-2222-3333-4444-555555555555/);
        await execa('qemu-img', ['convert', '-O', 'qcow2', raw, path]);
        await rm(raw);
        return path;
      }, 'is an ext filesystem whose journal is on another device (journal uuid 11111111222233334444555555555555');
      // The kernel's way in: no journal inode, a device number (8:1, a host disk's first partition) to open instead.
      await expectRefusedBeforeTheStep('external-journal-device', async (path) => {
        const raw = `${path}.raw`;
        await execa('qemu-img', ['convert', '-O', 'raw', wholeDisk, raw]);
        await execa('debugfs', ['-w', '-R', 'ssv journal_inum 0', raw]);
        await execa('debugfs', ['-w', '-R', 'ssv journal_dev 0x801', raw]);
        expect((await execa('dumpe2fs', ['-h', raw])).stdout).toMatch(/Journal device:\s+0x0801/);
        await execa('qemu-img', ['convert', '-O', 'qcow2', raw, path]);
        await rm(raw);
        return path;
      }, 'is an ext filesystem whose journal is on another device (journal uuid 00000000000000000000000000000000, device 2049)');
    });

    test('fstab lines that lead to / itself (`/.`, `//`, a link to /) or to a place already mounted are not mounted: the root is not covered, and nothing is left mounted', async () => {
      const host = await snapshotHost();
      const separateBoot = await fixtureImage('separate-boot');
      const image = await deriveImage(separateBoot, join(work, 'fstab-onto-root.qcow2'), {}, {
        partitioned: true,
        partition: 3,
        // /boot's own filesystem, asked for again over the root (three spellings) and over /boot.
        thenRun: [
          'b=$(awk \'$2=="/boot" {print $1}\' "$1/etc/fstab")',
          'ln -s / "$1/rootlink"',
          'for p in /. // /rootlink /boot; do echo "$b $p ext4 defaults 0 0" >> "$1/etc/fstab"; done',
        ].join('; '),
      });
      const recipe = await writeRecipe(work, 'fstab-onto-root', [{ name: 'the real root', run: 'test -f /etc/os-release && test -d /usr/bin && echo ROOT-NOT-COVERED' }]);
      const result = await apply(recipe, image, 'fstab-onto-root-out.qcow2');
      expectSuccess(result);
      expect(result.all).toContain('ROOT-NOT-COVERED');
      for (const path of ['/.', '//', '/rootlink']) expect(result.stderr).toMatch(new RegExp(`not mounting /etc/fstab:\\d+ \\(\\S+ ${path.replace(/\./g, '\\.')} ext4\\): it leads to the root itself`));
      expect(result.stderr).toMatch(/not mounting \/etc\/fstab:\d+ \(\S+ \/boot ext4\): it leads to a place already mounted/);
      await expectHostUntouched(host);
    });

    test("a step that renames a parent of the session's mount points (/sys a link to /srv/s, then mv /srv /srv2) leaves none of them mounted", async () => {
      const host = await snapshotHost();
      const image = await deriveImage(wholeDisk, join(work, 'moved-mounts.qcow2'), {}, { thenRun: 'rm -rf "$1/sys"; mkdir -p "$1/srv/s"; ln -s /srv/s "$1/sys"' });
      const recipe = await writeRecipe(work, 'moved-mounts', [
        { run: 'mv /srv /srv2 && test -f /srv2/s/kernel/uevent_seqnum && echo MOVED-WITH-SYSFS' },
        { file: { path: '/etc/marker', content: 'after\n' } },
      ]);
      const result = await apply(recipe, image, 'moved-mounts-out.qcow2');
      expectSuccess(result);
      expect(result.all).toContain('MOVED-WITH-SYSFS');
      // Released where the rename moved them, not looked for where they were mounted.
      expect((await readFile('/proc/self/mountinfo', 'utf8')).split('\n').filter((line) => line.includes('/srv2/'))).toEqual([]);
      await withImageMounted(join(work, 'moved-mounts-out.qcow2'), 'whole-disk', async (root) => {
        expect(await readdir(join(root, 'srv2/s'))).toEqual([]);
      });
      await expectHostUntouched(host);
    });

    test.each([
      ['/sys/kernel/uevent_seqnum', "the host's sysfs"],
      ['/dev/pts/ptmx', "the session's devpts, where opening ptmx makes a terminal"],
    ])("/etc/fstab a link to %s (%s, mounted for the guest's programs): the swap step, reading fstab on the host, refuses it unopened", async (target) => {
      const host = await snapshotHost();
      const name = `fstab-into-${basename(target)}`;
      const image = await deriveImage(wholeDisk, join(work, `${name}.qcow2`), {}, { thenRun: `ln -sf ${target} "$1/etc/fstab"` });
      const recipe = await writeRecipe(work, name, [{ swap: { off: true } }]);
      const result = await apply(recipe, image, `${name}-out.qcow2`);
      expect(result.exitCode).toBe(2);
      expect(result.stderr).toContain(`the guest's ${target} is inside the host's own filesystems the build mounts for the guest's programs`);
      await expectHostUntouched(host);
    });

    test("/usr/sbin a link to /dev: the session's policy-rc.d, written from the host, is refused rather than written into the session's /dev of real nodes", async () => {
      const host = await snapshotHost();
      const image = await deriveImage(wholeDisk, join(work, 'sbin-into-dev.qcow2'), {}, { thenRun: 'mv "$1/usr/sbin" "$1/usr/sbin.real"; ln -s /dev "$1/usr/sbin"' });
      const recipe = await writeRecipe(work, 'sbin-into-dev', [{ run: 'echo RAN-$((40+2))' }]);
      const result = await apply(recipe, image, 'sbin-into-dev-out.qcow2');
      expect(result.exitCode).toBe(2);
      expect(result.stderr).toContain("the guest's /dev/policy-rc.d is inside the host's own filesystems the build mounts for the guest's programs");
      expect(result.all).not.toContain('RAN-42');
      await expectHostUntouched(host);
    });

    test.each([
      ['/etc/os-release a FIFO', 'rm -f "$1/etc/os-release" "$1/usr/lib/os-release"; mkfifo "$1/usr/lib/os-release"; ln -s ../usr/lib/os-release "$1/etc/os-release"', "the guest's /etc/os-release is a FIFO"],
      ['/etc/fstab of 2 MiB', 'head -c 2097152 /dev/zero | tr "\\0" "#" > "$1/etc/fstab"', "the guest's /etc/fstab is larger than 1048576 bytes"],
      ['/var/lib/dpkg/status a symlink to the host canary', 'ln -sf CANARY "$1/var/lib/dpkg/status"', "the guest has no dpkg database"],
    ])('%s: a clear BAD_INPUT, nothing read from the host, no hang', async (_name, craft, message) => {
      const host = await snapshotHost();
      const image = await deriveImage(wholeDisk, join(work, `crafted-${message.length}.qcow2`), {}, { thenRun: craft.replace('CANARY', host.canaryFile) });
      const result = await runCli(['inspect', image, '--format', 'json'], { env: env() });
      expect(result.exitCode).toBe(2);
      expect(result.stderr).toContain(message);
      expect(result.all).not.toContain(CANARY_CONTENT.trim());
      expect(await readdir(tmp)).toEqual([]);
      await expectHostUntouched(host);
    });
  });

  describe('--untrusted: the filesystems are parsed inside the libguestfs appliance, not by this kernel', () => {
    test('shell --untrusted sees the guest through guestmount (FUSE), not an ext4 mount of this kernel; another backend beside it is a clear error', async () => {
      const host = await snapshotHost();
      const refused = await runCli(['inspect', wholeDisk, '--untrusted', '--mount-backend', 'fuse'], { env: env() });
      expect(refused.exitCode).toBe(2);
      expect(refused.stderr).toContain('--untrusted mounts the image through guestmount, and --mount-backend asks for fuse');
      // diff inspects its image sides the same way: --untrusted and IMAGEBUILDER_UNTRUSTED reach it.
      for (const [args, extra] of [[['--untrusted'], {}], [[], { IMAGEBUILDER_UNTRUSTED: '1' }]] as const) {
        const diffed = await runCli(['diff', wholeDisk, wholeDisk, ...args, '--mount-backend', 'fuse'], { env: { ...env(), ...extra } });
        expect(diffed.exitCode).toBe(2);
        expect(diffed.stderr).toContain('--untrusted mounts the image through guestmount, and --mount-backend asks for fuse');
      }
      const shell = await runCli(['shell', '--disk-image', wholeDisk, '--command', "grep ' / ' /proc/self/mounts; . /etc/os-release; echo ID=$ID"], { env: { ...env(), IMAGEBUILDER_UNTRUSTED: '1' } });
      expectSuccess(shell);
      expect(shell.stdout).toContain('ID=debian');
      expect(shell.stdout).toMatch(/ \/ fuse\S* /);
      expect(shell.stdout).not.toMatch(/ \/ ext4 /);
      await expectHostUntouched(host);
    });
  });

  describe("host programs never interpret guest content with host privileges", () => {
    /** Paths an attack's `%(…)` would create on the host if the host's rpm ran it. */
    const PWNED = ['/var/tmp/imagebuilder-hostile-rpmmacros', '/var/tmp/imagebuilder-hostile-rpmmacros-sandboxed'];
    afterEach(async () => {
      for (const path of PWNED) await rm(path, { force: true });
    });

    test('a .rpmmacros beside the rpm database (%(cmd) run by any rpm that reads it) is never read: inspect and apply', async () => {
      const host = await snapshotHost();
      // rpm expands %_install_langs at start-up: a shell command in it runs as whoever runs rpm.
      const macros = `%_install_langs %(touch ${PWNED[0]}; echo all)\n%_netsharedpath %(cat ${host.canaryFile} > /var/tmp/imagebuilder-hostile-rpmmacros-sandboxed)\n`;
      const image = await deriveImage(await rpmGuestImage(), join(work, 'rpmmacros.qcow2'), { [`/${RPM_GUEST_DBPATH}/.rpmmacros`]: macros }, { partitioned: true, mountOptions: 'nouuid' });
      // The attack is real: the host's rpm, run as imagebuilder once ran it (HOME at a copy of the directory), obeys it.
      const proof = await mkdtemp(join(work, 'proof-'));
      await writeFile(join(proof, '.rpmmacros'), macros);
      await execa('rpm', ['--dbpath', proof, '-qa'], { env: { HOME: proof }, reject: false });
      expect(await stat(PWNED[0]).then(() => true, () => false)).toBe(true);
      for (const path of PWNED) await rm(path, { force: true });

      const inspected = await runCli(['inspect', image, '--format', 'json'], { env: env() });
      expectSuccess(inspected);
      expect(JSON.parse(inspected.stdout).inventory.family).toBe('redhat');
      const recipe = await writeRecipe(work, 'rpmmacros', [{ file: { path: '/etc/marker', content: 'x\n' } }]);
      const applied = await apply(recipe, image, 'rpmmacros-out.qcow2');
      expectSuccess(applied);
      for (const path of PWNED) expect(await stat(path).then(() => path, () => undefined)).toBeUndefined();
      await expectHostUntouched(host);
    });

    test("a guest's precompiled file_contexts.bin (PCRE2 bytecode libselinux would load unchecked, and trust over the text) never reaches the host's setfiles", async () => {
      const host = await snapshotHost();
      const contexts = 'etc/selinux/default/contexts/files/file_contexts';
      // The .bin says /etc/hostile-marker is shadow_t; the guest's own text says otherwise. Newer than the text, so
      // libselinux prefers it.
      const image = await deriveImage(await fixtureImage('selinux-dracut'), join(work, 'selinux-bin.qcow2'), {}, {
        partitioned: true,
        partition: 2,
        thenRun: `fc="$1/${contexts}"; { cat "$fc"; printf '/etc/hostile-marker\\t--\\tsystem_u:object_r:shadow_t:s0\\n'; } > "$1/../evil_fc"; sefcontext_compile -o "$fc.bin" "$1/../evil_fc"; touch -d tomorrow "$fc.bin"`,
      });
      const textOnly = await mkdtemp(join(work, 'fc-'));
      const labels = await withImageMounted(image, 'selinux-dracut', async (root) => {
        await writeFile(join(textOnly, 'file_contexts'), await readFile(join(root, contexts)));
        const matched = async (file: string) => (await execa('matchpathcon', ['-m', 'file', '-f', file, '/etc/hostile-marker'])).stdout.split('\t')[1].trim();
        return { withBin: await matched(join(root, contexts)), fromText: await matched(join(textOnly, 'file_contexts')) };
      });
      // The attack is real: the host's libselinux takes the guest's .bin over its text.
      expect(labels.withBin).toBe('system_u:object_r:shadow_t:s0');
      expect(labels.fromText).not.toBe(labels.withBin);
      const recipe = await writeRecipe(work, 'selinux-bin', [{ file: { path: '/etc/hostile-marker', content: 'x\n' } }]);
      const result = await apply(recipe, image, 'selinux-bin-out.qcow2');
      expectSuccess(result);
      await withImageMounted(join(work, 'selinux-bin-out.qcow2'), 'selinux-dracut', async (root) => {
        const label = await execa('getfattr', ['--absolute-names', '--only-values', '-n', 'security.selinux', join(root, 'etc/hostile-marker')]);
        expect(label.stdout.replace(/\0$/, '')).toBe(labels.fromText);
      });
      await expectHostUntouched(host);
    });
  });
});

/** Exit code 0, or the failure with the whole output. */
function expectSuccess(result: { exitCode?: number; all: string }): void {
  if (result.exitCode !== 0) throw new Error(`exit code ${result.exitCode}:\n${result.all}`);
}
