import { lstat, mkdir, mkdtemp, readdir, readFile, rm, symlink } from 'node:fs/promises';
import { release } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { fixtureImage } from '../helpers/fixtures.js';
import { expectNothingLeft, hostState, runCli, sha256 } from '../helpers/host.js';
import { dpkgVersion, withImageMounted } from '../helpers/inspect.js';
import { writeRecipe } from '../helpers/recipes.js';
import { expectValidBom } from '../helpers/bom-schema.js';

const FILE_CONTEXTS = 'etc/selinux/default/contexts/files/file_contexts';

/** The security.selinux label of a file as stored on disk (this host's kernel need not run SELinux to read it). */
async function labelOf(path: string): Promise<string | undefined> {
  const result = await execa('getfattr', ['--absolute-names', '--only-values', '-n', 'security.selinux', path], { reject: false, encoding: 'buffer' });
  return result.exitCode === 0 ? Buffer.from(result.stdout).toString().replace(/\0$/, '') : undefined;
}

/** The label the guest's own policy gives a regular file at guestPath (matchpathcon over the guest's file_contexts). */
async function expectedLabel(root: string, guestPath: string): Promise<string> {
  const { stdout } = await execa('matchpathcon', ['-m', 'file', '-f', join(root, FILE_CONTEXTS), guestPath]);
  return stdout.split('\t')[1].trim();
}

/**
 * A synthetic guest with Fedora's boot and security setup on Debian's userland (bin/make-debian-image --layout
 * selinux-dracut): Debian's selinux-policy-default, SELINUX=enforcing, every file labelled; dracut in place of
 * initramfs-tools; ext4 / and a separate ext4 /boot.
 */
describe('SELinux and dracut guests (synthetic: Debian userland with selinux-policy-default and dracut)', () => {
  let work: string;
  let input: string;
  let guestKernel: string;
  beforeAll(async () => {
    work = await mkdtemp('/var/tmp/ib-selinux-');
    input = await fixtureImage('selinux-dracut');
    guestKernel = await withImageMounted(input, 'selinux-dracut', async (root) => (await readdir(join(root, 'lib/modules'))).join(' '));
  });
  afterAll(async () => {
    await rm(work, { recursive: true, force: true });
  });

  test('files a recipe writes (file steps, a package install, a script) get the labels the guest policy gives them, on / and /boot', async () => {
    const inputSha = await sha256(input);
    const recipe = await writeRecipe(work, 'labels', [
      { packages: { install: ['socat'] } },
      { file: { path: '/etc/imagebuilder/hello.conf', content: 'greeting = hello\n' } },
      { file: { path: '/etc/ssh/ssh_host_ed25519_key', content: 'not a real key\n', mode: '0600' } },
      { run: 'printf "#!/bin/sh\\necho hi\\n" > /usr/local/bin/hello && chmod 755 /usr/local/bin/hello\necho on-boot > /boot/imagebuilder-marker' },
    ]);
    const output = join(work, 'labels.qcow2');
    const before = await hostState();
    const result = await runCli(['apply', recipe, '--disk-image', input, '--output', output, '--mount-backend', 'fuse', '--sparsify', 'fstrim']);
    expect(result.stderr).not.toContain('error');
    expect(result.exitCode).toBe(0);
    expect(result.stderr).toMatch(/SELinux: relabelled \/, \/boot with the guest's default policy \(setfiles, \d+\.\ds\)/);
    expect(await sha256(input)).toBe(inputSha);

    const expected: [string, string][] = [
      ['/etc/imagebuilder/hello.conf', 'etc_t'],
      ['/etc/ssh/ssh_host_ed25519_key', 'sshd_key_t'],
      ['/usr/bin/socat', 'bin_t'],
      ['/usr/local/bin/hello', 'bin_t'],
      ['/boot/imagebuilder-marker', 'boot_t'],
    ];
    await withImageMounted(output, 'selinux-dracut', async (root) => {
      expect(await dpkgVersion(root, 'socat')).toMatch(/\d/);
      for (const [guestPath, type] of expected) {
        const policy = await expectedLabel(root, guestPath);
        expect([guestPath, policy]).toEqual([guestPath, `system_u:object_r:${type}:s0`]);
        expect([guestPath, await labelOf(join(root, guestPath))]).toEqual([guestPath, policy]);
      }
      // The BOM written into the image comes before the relabel, and is labelled too.
      expect(await labelOf(join(root, 'usr/share/imagebuilder/bom.json'))).toBe(await expectedLabel(root, '/usr/share/imagebuilder/bom.json'));
      await expect(lstat(join(root, '.autorelabel'))).rejects.toThrow();
      // Nothing touched the kernel or dracut's configuration: the initramfs is the input's.
      await withImageMounted(input, 'selinux-dracut', async (inputRoot) => {
        expect(await sha256(join(root, `boot/initrd.img-${guestKernel}`))).toBe(await sha256(join(inputRoot, `boot/initrd.img-${guestKernel}`)));
      });
    });
    const bom = JSON.parse(await readFile(`${output}.bom.json`, 'utf8'));
    expectValidBom(bom);
    expect(bom.steps.map((s: { type: string }) => s.type)).toEqual(['packages', 'file', 'file', 'run', 'selinux-relabel']);
    expect(bom.steps[4]).toMatchObject({ index: 4, description: 'setfiles with /etc/selinux/default/contexts/files/file_contexts over /, /boot' });
    expect(bom.warnings).toEqual([]);
    await expectNothingLeft(before);
  });

  test('without setfiles on the build host: /.autorelabel in the guest, and a warning that says why', async () => {
    // A PATH with every host command but setfiles.
    const bin = join(work, 'path-without-setfiles');
    await mkdir(bin);
    for (const dir of ['/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin']) {
      for (const name of await readdir(dir).catch(() => [] as string[])) {
        if (name !== 'setfiles') await symlink(join(dir, name), join(bin, name)).catch(() => undefined); // the first one wins, as on PATH
      }
    }
    const recipe = await writeRecipe(work, 'fallback', [{ file: { path: '/etc/imagebuilder/hello.conf', content: 'greeting = hello\n' } }]);
    const output = join(work, 'fallback.qcow2');
    const before = await hostState();
    const result = await runCli(['apply', recipe, '--disk-image', input, '--output', output, '--mount-backend', 'fuse', '--sparsify', 'fstrim'], { env: { PATH: bin } });
    expect(result.exitCode).toBe(0);
    const warning =
      'SELinux is enforcing in the guest but its files could not be relabelled here: setfiles is not installed on the build host (Debian package policycoreutils); ' +
      'created /.autorelabel, so the guest relabels itself at first boot (with one extra reboot)';
    expect(result.stderr).toContain(`warn: ${warning}`);
    await withImageMounted(output, 'selinux-dracut', async (root) => {
      expect((await lstat(join(root, '.autorelabel'))).isFile()).toBe(true);
      // Nothing relabelled it: the recipe's file has no label, the base image's files keep theirs.
      expect(await labelOf(join(root, 'etc/imagebuilder/hello.conf'))).toBeUndefined();
      expect(await labelOf(join(root, 'etc/passwd'))).toBe('system_u:object_r:etc_t:s0');
    });
    const bom = JSON.parse(await readFile(`${output}.bom.json`, 'utf8'));
    expect(bom.warnings).toEqual([warning]);
    expect(bom.steps.at(-1)).toMatchObject({ type: 'selinux-relabel', description: '/.autorelabel: the guest relabels itself at first boot (setfiles is not installed on the build host (Debian package policycoreutils))' });
    await expectNothingLeft(before);
  });

  test("a dracut config written by a recipe: the GUEST kernel's initramfs is regenerated with it, nothing for the host kernel", async () => {
    const hostKernel = release();
    expect(guestKernel).not.toBe(hostKernel);
    const recipe = await writeRecipe(work, 'dracut', [
      { file: { path: '/etc/imagebuilder/initramfs-marker', content: 'in the initramfs\n' } },
      { file: { path: '/etc/dracut.conf.d/50-imagebuilder.conf', content: 'install_items+=" /etc/imagebuilder/initramfs-marker "\n' } },
    ]);
    const output = join(work, 'dracut.qcow2');
    const before = await hostState();
    const result = await runCli(['apply', recipe, '--disk-image', input, '--output', output, '--mount-backend', 'fuse', '--sparsify', 'fstrim']);
    expect(result.stderr).not.toContain('error');
    expect(result.exitCode).toBe(0);
    expect(result.stderr).toContain(`initramfs of kernel ${guestKernel}: dracut configuration changed; regenerating with dracut`);

    const inputInitrd = await withImageMounted(input, 'selinux-dracut', (root) => sha256(join(root, `boot/initrd.img-${guestKernel}`)));
    await withImageMounted(output, 'selinux-dracut', async (root) => {
      const initrd = join(root, `boot/initrd.img-${guestKernel}`);
      expect(await sha256(initrd)).not.toBe(inputInitrd);
      const listing = (await execa('lsinitramfs', [initrd])).stdout.split('\n');
      expect(listing).toContain('etc/imagebuilder/initramfs-marker');
      expect(listing.some((entry) => entry.startsWith(`usr/lib/modules/${guestKernel}/`) || entry.startsWith(`lib/modules/${guestKernel}/`))).toBe(true);
      expect(listing.filter((entry) => entry.includes(hostKernel))).toEqual([]);
      // Nothing was built for the host's kernel version, anywhere the guest keeps initramfs images.
      expect((await readdir(join(root, 'boot'))).filter((name) => name.includes(hostKernel))).toEqual([]);
      expect(await readdir(join(root, 'lib/modules'))).toEqual([guestKernel]);
      // Written before the relabel: labelled like the rest of /boot.
      expect(await labelOf(initrd)).toBe('system_u:object_r:boot_t:s0');
    });
    const bom = JSON.parse(await readFile(`${output}.bom.json`, 'utf8'));
    expectValidBom(bom);
    expect(bom.steps.map((s: { type: string; description: string }) => [s.type, s.description])).toEqual([
      ['file', expect.any(String)],
      ['file', expect.any(String)],
      ['initramfs', `dracut --force --no-hostonly --kver ${guestKernel} (dracut configuration changed)`],
      ['selinux-relabel', 'setfiles with /etc/selinux/default/contexts/files/file_contexts over /, /boot'],
    ]);
    await expectNothingLeft(before);
  });
});
