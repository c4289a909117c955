import { lstat, mkdtemp, readFile, readdir, readlink, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { fixtureImage } from '../helpers/fixtures.js';
import { expectNothingLeft, hostState, runCli, sha256, jsonResult } from '../helpers/host.js';
import { checkFilesystems, dpkgVersion, withImageMounted } from '../helpers/inspect.js';
import { writeRecipe } from '../helpers/recipes.js';
import { expectValidBom } from '../helpers/bom-schema.js';

/** Real builds through the fuse backend (qemu-storage-daemon + loop), one per disk layout. */
describe('imagebuilder apply --mount-backend fuse', () => {
  let work: string;
  beforeAll(async () => {
    work = await mkdtemp('/var/tmp/ib-apply-');
  });
  afterAll(async () => {
    await rm(work, { recursive: true, force: true });
  });

  async function qemuImgInfo(path: string) {
    return JSON.parse((await execa('qemu-img', ['info', '--output=json', path])).stdout) as { format: string };
  }

  test('GPT image with an ESP: installs a real package, writes files, keeps the input untouched', async () => {
    const input = await fixtureImage('gpt-esp');
    const inputSha = await sha256(input);
    const recipe = await writeRecipe(work, 'gpt', [
      { name: 'tools', packages: { install: ['socat'] } },
      { file: { path: '/etc/imagebuilder/hello.conf', content: 'greeting = hello\n', mode: '0640', owner: 'root', group: 'adm' } },
      { run: 'test -x /usr/sbin/policy-rc.d\nnslookup_ok=$(getent hosts deb.debian.org >/dev/null && echo yes)\necho "dns=$nslookup_ok" > /root/dns.txt' },
    ]);
    const output = join(work, 'gpt-out.qcow2');
    const before = await hostState();

    const result = await runCli(['apply', recipe, '--disk-image', input, '--output', output, '--mount-backend', 'fuse', '--sparsify', 'fstrim', '--json'], {
      env: { SOURCE_DATE_EPOCH: '1700000000' },
    });

    expect(result.stderr).not.toContain('error');
    expect(result.exitCode).toBe(0);
    const printed = jsonResult(result.stdout) as { output: { path: string; sha256: string }; bom: string };
    expect(printed.output.path).toBe(output);
    expect(printed.output.sha256).toBe(await sha256(output));
    expect(await sha256(input)).toBe(inputSha);
    expect((await qemuImgInfo(output)).format).toBe('qcow2');
    await execa('qemu-img', ['check', output]);
    // The ESP is vfat, which this host's kernel cannot mount: a warning naming the fstab entry, not a crash.
    expect(result.stderr).toMatch(/warn: cannot mount \/etc\/fstab:\d+ \(UUID=C0FF-EE01 \/boot\/efi vfat\)/);

    const bom = JSON.parse(await readFile(printed.bom, 'utf8'));
    await withImageMounted(output, 'gpt-esp', async (root) => {
      const version = await dpkgVersion(root, 'socat');
      expect(version).toMatch(/\d/);
      expect(bom.packages).toContainEqual(expect.objectContaining({ name: 'socat', version, architecture: 'amd64', origin: 'added' }));
      const file = await lstat(join(root, 'etc/imagebuilder/hello.conf'));
      expect(file.mode & 0o7777).toBe(0o640);
      expect(file.gid).toBe(4); // adm in Debian's base-passwd, resolved inside the guest
      expect(await readFile(join(root, 'etc/imagebuilder/hello.conf'), 'utf8')).toBe('greeting = hello\n');
      expect(await readFile(join(root, 'root/dns.txt'), 'utf8')).toBe('dns=yes\n');
      // Session scaffolding is gone: the dangling resolv.conf symlink is back, policy-rc.d removed.
      expect(await readlink(join(root, 'etc/resolv.conf'))).toBe('../run/systemd/resolve/stub-resolv.conf');
      await expect(lstat(join(root, 'usr/sbin/policy-rc.d'))).rejects.toThrow();
      const kernels = (await execa('ls', [join(root, 'lib/modules')])).stdout.split('\n').filter(Boolean);
      expect(bom.kernels.map((k: { version: string }) => k.version)).toEqual(kernels);
      // The image carries its own BOM, dated by SOURCE_DATE_EPOCH.
      const inside = JSON.parse(await readFile(join(root, 'usr/share/imagebuilder/bom.json'), 'utf8'));
      expect(inside.packages).toEqual(bom.packages);
      expect(inside.createdAt).toBe('2023-11-14T22:13:20.000Z');
      expect((await lstat(join(root, 'usr/share/imagebuilder/bom.json'))).mtimeMs).toBe(1700000000000);
    });
    expect(bom.createdAt).toBe('2023-11-14T22:13:20.000Z');
    expectValidBom(bom);
    expect(bom.input).toEqual({ path: input, format: 'qcow2', sha256: inputSha, verified: false }); // no sums file beside the fixture
    expect(bom.os.id).toBe('debian');
    expect(bom.architecture).toBe('amd64');
    expect(bom.recipe.sha256).toBe(await sha256(recipe));
    expect(bom.steps.map((s: { type: string }) => s.type)).toEqual(['packages', 'file', 'run']);
    expect(bom.mountBackend).toBe('fuse');
    expect(bom.durationsMs.total).toBeGreaterThan(0);
    await expectNothingLeft(before);
  });

  test('MBR raw image: exact version pin, output stays raw, regular resolv.conf restored byte for byte', async () => {
    const input = await fixtureImage('mbr', 'raw');
    const inputSha = await sha256(input);
    // Learn the current version the mirror serves, then pin exactly that one.
    const probe = await writeRecipe(work, 'probe', [{ packages: { install: ['hello'] } }]);
    const first = await runCli(['apply', probe, '--disk-image', input, '--output', join(work, 'probe.img'), '--mount-backend', 'fuse', '--sparsify', 'none', '--json']);
    expect(first.exitCode).toBe(0);
    const probeBom = JSON.parse(await readFile(jsonResult(first.stdout).bom, 'utf8'));
    const helloVersion = probeBom.packages.find((p: { name: string }) => p.name === 'hello').version as string;

    const recipe = await writeRecipe(work, 'mbr', [{ packages: { install: [`hello=${helloVersion}`] } }]);
    const output = join(work, 'mbr-out.img');
    const before = await hostState();
    const result = await runCli(['apply', recipe, '--disk-image', input, '--output', output, '--mount-backend', 'fuse', '--sparsify', 'fstrim']);
    expect(result.exitCode).toBe(0);
    expect((await qemuImgInfo(output)).format).toBe('raw');
    expect(await sha256(input)).toBe(inputSha);
    await withImageMounted(output, 'mbr', async (root) => {
      expect(await dpkgVersion(root, 'hello')).toBe(helloVersion);
      expect(await readFile(join(root, 'etc/resolv.conf'), 'utf8')).toBe('nameserver 192.0.2.53\n');
    });
    const bom = JSON.parse(await readFile(`${output}.bom.json`, 'utf8'));
    expect(bom.packages).toContainEqual(expect.objectContaining({ name: 'hello', version: helloVersion }));
    await expectNothingLeft(before);
  });

  test('filesystem on the whole disk (no partition table), backend chosen by auto', async () => {
    const input = await fixtureImage('whole-disk');
    const hostDomain = await readFile('/proc/sys/kernel/domainname', 'utf8');
    await writeFile(join(work, 'motd.tmpl'), 'built by {{ builder }} for {{ cluster | upper }}\n');
    await writeFile(join(work, 'blob.bin'), Buffer.from([0, 255, 10, 13]));
    const recipe = await writeRecipe(work, 'whole', [
      { file: { path: '/etc/motd', template: 'motd.tmpl' } },
      { file: { path: '/opt/blob.bin', source: 'blob.bin', mode: '0600' } },
      { name: 'mark it', run: 'echo whole-disk > /etc/marker' },
      // A step must not be able to change the build host's kernel settings through the guest's /proc.
      { name: 'only on ubuntu', when: { distro: 'ubuntu' }, run: 'exit 1' },
      { name: 'try the host', run: '(echo ib-test > /proc/sys/kernel/domainname) 2>/dev/null && echo changed > /etc/host-check || echo refused > /etc/host-check' },
    ], { builder: 'nobody', cluster: 'dev' });
    const output = join(work, 'whole-out.qcow2');
    const before = await hostState();
    const result = await runCli(['apply', recipe, '--disk-image', input, '--output', output, '--sparsify', 'fstrim', '--set', 'builder=ci', '--set', 'cluster=prod']);
    expect(result.exitCode).toBe(0);
    // auto tries nbd first: where the host has no nbd module it says so and goes on with fuse.
    const hasNbd = (await readdir('/sys/block')).some((name) => name.startsWith('nbd'));
    expect(result.stderr).toContain(
      hasNbd ? 'mount backend: nbd' : 'mount backend: fuse (passed over: nbd: the nbd kernel module is not loaded (on the host: modprobe nbd max_part=16))',
    );
    await withImageMounted(output, 'whole-disk', async (root) => {
      expect(await readFile(join(root, 'etc/marker'), 'utf8')).toBe('whole-disk\n');
      expect(await readFile(join(root, 'etc/host-check'), 'utf8')).toBe('refused\n');
      expect(await readFile(join(root, 'etc/motd'), 'utf8')).toBe('built by ci for PROD\n');
      expect(await readFile(join(root, 'opt/blob.bin'))).toEqual(Buffer.from([0, 255, 10, 13]));
    });
    expect(await readFile('/proc/sys/kernel/domainname', 'utf8')).toBe(hostDomain);
    expect(result.stderr).toContain('(only on ubuntu): skipped (distro is debian, not ubuntu)');
    const bom = JSON.parse(await readFile(`${output}.bom.json`, 'utf8'));
    expect(bom.steps.map((s: { name: string; skipped?: string }) => [s.name, s.skipped])).toEqual([
      [undefined, undefined],
      [undefined, undefined],
      ['mark it', undefined],
      ['only on ubuntu', 'distro is debian, not ubuntu'],
      ['try the host', undefined],
    ]);
    await expectNothingLeft(before);
  });

  test('separate /boot from fstab: writes under /boot land on the boot partition, swap is skipped', async () => {
    const input = await fixtureImage('separate-boot');
    const recipe = await writeRecipe(work, 'boot', [{ run: 'echo on-boot > /boot/marker\ntest -e /boot/grub || ls /boot | grep -q vmlinuz' }]);
    const output = join(work, 'boot-out.qcow2');
    const before = await hostState();
    const result = await runCli(['apply', recipe, '--disk-image', input, '--output', output, '--mount-backend', 'fuse', '--sparsify', 'fstrim', '--json']);
    expect(result.exitCode).toBe(0);
    expect(result.stderr).toMatch(/mounted \/boot: \/dev\/loop\d+p1 \(ext4\)/);
    expect(result.stderr).not.toMatch(/swap/i);
    await withImageMounted(output, 'separate-boot', async (root) => {
      expect(await readFile(join(root, 'boot/marker'), 'utf8')).toBe('on-boot\n');
    });
    // The root filesystem's own /boot, under the mount point, must not have it.
    await withImageMounted(output, 'separate-boot', async (root) => {
      await expect(lstat(join(root, 'boot/marker'))).rejects.toThrow();
    }, { boot: false });
    const bom = JSON.parse(await readFile(jsonResult(result.stdout).bom, 'utf8'));
    expect(bom.kernels.length).toBeGreaterThan(0);
    expect(bom.kernels[0].image).toMatch(/^\/boot\/vmlinuz-/);
    await expectNothingLeft(before);
  });

  test('xfs root (mounted with nouuid)', async () => {
    const input = await fixtureImage('xfs');
    const recipe = await writeRecipe(work, 'xfs', [{ run: 'echo on-xfs > /etc/marker' }]);
    const output = join(work, 'xfs-out.qcow2');
    const before = await hostState();
    const result = await runCli(['apply', recipe, '--disk-image', input, '--output', output, '--mount-backend', 'fuse', '--sparsify', 'fstrim']);
    expect(result.exitCode).toBe(0);
    expect(result.stderr).toMatch(/guest root: \/dev\/loop\d+p1 \(xfs, nouuid\)/);
    await withImageMounted(output, 'xfs', async (root) => {
      expect(await readFile(join(root, 'etc/marker'), 'utf8')).toBe('on-xfs\n');
    });
    // Intact: xfs_repair -n finds nothing to repair.
    expect(await checkFilesystems(output)).toEqual(['p1 xfs']);
    await expectNothingLeft(before);
  });

  test('btrfs with root and home subvolumes and a separate /boot, as Fedora Cloud lays it out', async () => {
    const input = await fixtureImage('btrfs-subvol');
    const recipe = await writeRecipe(work, 'btrfs', [
      { run: 'echo in-root > /etc/marker\necho in-home > /home/marker-step\necho in-boot > /boot/marker-step\ncat /home/marker-home > /root/seen-home\nls /boot | grep -q vmlinuz' },
    ]);
    const output = join(work, 'btrfs-out.qcow2');
    const before = await hostState();
    const result = await runCli(['apply', recipe, '--disk-image', input, '--output', output, '--mount-backend', 'fuse', '--sparsify', 'fstrim']);
    expect(result.exitCode).toBe(0);
    expect(result.stderr).toMatch(/guest root: \/dev\/loop\d+p2 \(btrfs, subvol=root\)/);
    expect(result.stderr).toMatch(/mounted \/boot: \/dev\/loop\d+p1 \(ext4\)/);
    expect(result.stderr).toMatch(/mounted \/home: \/dev\/loop\d+p2 \(btrfs\)/);
    await withImageMounted(output, 'btrfs-subvol', async (root) => {
      expect(await readFile(join(root, 'etc/marker'), 'utf8')).toBe('in-root\n');
      expect(await readFile(join(root, 'root/seen-home'), 'utf8')).toBe('home subvolume\n');
      expect(await readFile(join(root, 'boot/marker-step'), 'utf8')).toBe('in-boot\n'); // on the ext4 /boot partition
      await expect(lstat(join(root, 'home/marker-step'))).rejects.toThrow(); // not in the root subvolume
    });
    await withImageMounted(output, 'btrfs-subvol', async (root) => {
      await expect(lstat(join(root, 'boot/marker-step'))).rejects.toThrow(); // not under the root subvolume's /boot
    }, { boot: false });
    await withImageMounted(output, 'btrfs-subvol', async (home) => {
      expect(await readFile(join(home, 'marker-step'), 'utf8')).toBe('in-home\n');
    }, { rootOptions: 'subvol=home', boot: false });
    // Intact: fsck.ext4 -n on /boot and btrfs check --readonly on the subvolumes' filesystem find nothing wrong.
    expect(await checkFilesystems(output)).toEqual(['p1 ext4', 'p2 btrfs']);
    await expectNothingLeft(before);
  });
});
