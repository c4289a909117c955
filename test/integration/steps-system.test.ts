import { createHash } from 'node:crypto';
import { lstat, mkdtemp, readFile, readdir, readlink, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { fixtureImage } from '../helpers/fixtures.js';
import { expectNothingLeft, hostState, runCli, jsonResult } from '../helpers/host.js';
import { dpkgVersion, withImageMounted } from '../helpers/inspect.js';
import { writeRecipe } from '../helpers/recipes.js';

const sha = (text: string) => createHash('sha256').update(text).digest('hex');
const exists = (path: string) => lstat(path).then(
  () => true,
  () => false,
);
const passwdLine = (passwd: string, name: string) => passwd.split('\n').find((line) => line.startsWith(`${name}:`));
const groupMembers = (group: string, name: string) => passwdLine(group, name)?.split(':')[3].split(',').filter(Boolean);

const KEY = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIImagebuilderIntegrationTestKeyOnly ops@test';

/** Real builds with the service, sysctl, kernel-modules, user, sysprep and swap steps; checked without the code under test. */
describe('system configuration steps in a real image', () => {
  let work: string;
  beforeAll(async () => {
    work = await mkdtemp('/var/tmp/ib-system-');
  });
  afterAll(async () => {
    await rm(work, { recursive: true, force: true });
  });

  test('service, sysctl, kernel-modules, user and sysprep on a GPT image', async () => {
    const input = await fixtureImage('gpt-esp');
    const recipe = await writeRecipe(work, 'system', [
      // openssh-server makes real host keys in its postinst; sudo brings visudo.
      { name: 'ssh and sudo', packages: { install: ['openssh-server', 'sudo'] } },
      {
        name: 'leave traces',
        run: [
          'echo 0123456789abcdef0123456789abcdef > /etc/machine-id',
          'mkdir -p /var/lib/dbus && cp /etc/machine-id /var/lib/dbus/machine-id',
          'echo old > /var/log/imagebuilder-test.log',
          'mkdir -p /var/log/journal/0123 && echo data > /var/log/journal/0123/system.journal',
          'echo "ls -la" > /root/.bash_history',
          'mkdir -p /var/lib/cloud/instances/i-1 /var/lib/cloud/seed/nocloud && echo "instance-id: i-1" > /var/lib/cloud/seed/nocloud/meta-data',
          'ln -s /var/lib/cloud/instances/i-1 /var/lib/cloud/instance',
          'touch /tmp/junk /var/tmp/junk && mkdir -p /tmp/dir/sub && touch /tmp/dir/sub/x',
          'useradd --create-home --shell /bin/sh legacy',
          'echo "history" > /home/legacy/.bash_history',
          'ls /etc/ssh/ssh_host_*_key >/dev/null',
          'test -e /etc/systemd/system/timers.target.wants/fstrim.timer',
        ].join('\n'),
      },
      { service: { enable: ['serial-getty@ttyS0.service', 'systemd-networkd'], disable: ['fstrim.timer'], mask: ['apt-daily.timer', 'apt-daily-upgrade.timer'] } },
      { sysctl: { name: '99-kubernetes', settings: { 'net.ipv4.ip_forward': 1, 'net.bridge.bridge-nf-call-iptables': 1, 'vm.overcommit_memory': '1' } } },
      { 'kernel-modules': { name: 'k8s', load: ['overlay', 'br_netfilter'], options: { nf_conntrack: 'hashsize=131072' }, blacklist: ['floppy'] } },
      {
        user: {
          groups: [{ name: 'k8s-admins', gid: 1500 }],
          users: [
            { name: 'ops', uid: 1600, groups: ['k8s-admins', 'adm'], shell: '/bin/bash', authorized_keys: [KEY], sudo: 'ALL=(ALL) NOPASSWD:ALL' },
            { name: 'legacy', shell: '/bin/bash', groups: ['k8s-admins'] },
            { name: 'etcd', system: true, shell: '/usr/sbin/nologin' },
          ],
        },
      },
      { sysprep: {} },
    ]);
    const output = join(work, 'system-out.qcow2');
    const before = await hostState();

    const result = await runCli(['apply', recipe, '--disk-image', input, '--output', output, '--mount-backend', 'fuse', '--sparsify', 'fstrim', '--json']);
    expect(result.stderr).not.toContain('error');
    expect(result.exitCode).toBe(0);
    const bom = JSON.parse(await readFile(jsonResult(result.stdout).bom, 'utf8'));

    const sysctl = '# Written by imagebuilder.\nnet.ipv4.ip_forward = 1\nnet.bridge.bridge-nf-call-iptables = 1\nvm.overcommit_memory = 1\n';
    const modulesLoad = '# Written by imagebuilder.\noverlay\nbr_netfilter\n';
    const modprobe = '# Written by imagebuilder.\noptions nf_conntrack hashsize=131072\nblacklist floppy\n';
    const sudoers = '# Written by imagebuilder.\nops ALL=(ALL) NOPASSWD:ALL\n';
    await withImageMounted(output, 'gpt-esp', async (root) => {
      const etc = (path: string) => join(root, 'etc', path);
      expect(await dpkgVersion(root, 'openssh-server')).toMatch(/\d/);

      // service: symlinks as systemd reads them
      expect(await readlink(etc('systemd/system/getty.target.wants/serial-getty@ttyS0.service'))).toBe('/lib/systemd/system/serial-getty@.service');
      expect(await readlink(etc('systemd/system/multi-user.target.wants/systemd-networkd.service'))).toBe('/lib/systemd/system/systemd-networkd.service');
      expect(await exists(etc('systemd/system/timers.target.wants/fstrim.timer'))).toBe(false);
      expect(await readlink(etc('systemd/system/apt-daily.timer'))).toBe('/dev/null');
      expect(await readlink(etc('systemd/system/apt-daily-upgrade.timer'))).toBe('/dev/null');

      // sysctl and kernel modules: exact content
      expect(await readFile(etc('sysctl.d/99-kubernetes.conf'), 'utf8')).toBe(sysctl);
      expect(await readFile(etc('modules-load.d/k8s.conf'), 'utf8')).toBe(modulesLoad);
      expect(await readFile(etc('modprobe.d/k8s.conf'), 'utf8')).toBe(modprobe);

      // users and groups
      const passwd = await readFile(etc('passwd'), 'utf8');
      const group = await readFile(etc('group'), 'utf8');
      const ops = passwdLine(passwd, 'ops')!.split(':');
      expect([ops[2], ops[5], ops[6]]).toEqual(['1600', '/home/ops', '/bin/bash']);
      const opsGid = Number(ops[3]);
      expect(passwdLine(group, 'ops')).toBe(`ops:x:${opsGid}:`);
      expect(passwdLine(group, 'k8s-admins')).toBe('k8s-admins:x:1500:ops,legacy');
      expect(groupMembers(group, 'adm')).toContain('ops');
      expect(passwdLine(passwd, 'legacy')).toMatch(/^legacy:x:\d+:\d+::\/home\/legacy:\/bin\/bash$/);
      const etcd = passwdLine(passwd, 'etcd')!.split(':');
      expect(Number(etcd[2])).toBeLessThan(1000);
      expect(etcd[6]).toBe('/usr/sbin/nologin');
      expect(await exists(join(root, 'home/etcd'))).toBe(false);

      const sshDir = await stat(join(root, 'home/ops/.ssh'));
      expect([sshDir.mode & 0o7777, sshDir.uid, sshDir.gid]).toEqual([0o700, 1600, opsGid]);
      const keys = await stat(join(root, 'home/ops/.ssh/authorized_keys'));
      expect([keys.mode & 0o7777, keys.uid, keys.gid]).toEqual([0o600, 1600, opsGid]);
      expect(await readFile(join(root, 'home/ops/.ssh/authorized_keys'), 'utf8')).toBe(`${KEY}\n`);
      const sudo = await stat(etc('sudoers.d/ops'));
      expect([sudo.mode & 0o7777, sudo.uid, sudo.gid]).toEqual([0o440, 0, 0]);
      expect(await readFile(etc('sudoers.d/ops'), 'utf8')).toBe(sudoers);
      // The guest's own sudo accepts its whole configuration, our file included (read-only mount: checks only).
      expect((await execa('chroot', [root, 'visudo', '-c'], { reject: false })).stdout).toContain('/etc/sudoers.d/ops: parsed OK');

      // sysprep
      expect((await stat(etc('machine-id'))).size).toBe(0);
      expect(await exists(join(root, 'var/lib/dbus/machine-id'))).toBe(false);
      expect((await readdir(etc('ssh'))).filter((name) => name.startsWith('ssh_host_'))).toEqual([]);
      expect(await exists(etc('ssh/sshd_config'))).toBe(true);
      expect((await stat(join(root, 'var/log/imagebuilder-test.log'))).size).toBe(0);
      expect((await stat(join(root, 'var/log/dpkg.log'))).size).toBe(0);
      expect(await exists(join(root, 'var/log/journal/0123/system.journal'))).toBe(false);
      expect(await exists(join(root, 'var/lib/cloud/instances'))).toBe(false);
      expect(await exists(join(root, 'var/lib/cloud/instance'))).toBe(false);
      expect(await readFile(join(root, 'var/lib/cloud/seed/nocloud/meta-data'), 'utf8')).toBe('instance-id: i-1\n');
      expect(await readdir(join(root, 'tmp'))).toEqual([]);
      expect(await readdir(join(root, 'var/tmp'))).toEqual([]);
      expect(await exists(join(root, 'root/.bash_history'))).toBe(false);
      expect(await exists(join(root, 'home/legacy/.bash_history'))).toBe(false);
      expect((await readdir(join(root, 'var/lib/apt/lists'))).filter((name) => name !== 'lock' && name !== 'partial')).toEqual([]);
      expect((await readdir(join(root, 'var/cache/apt/archives'))).filter((name) => name.endsWith('.deb'))).toEqual([]);
    });

    expect(bom.units).toEqual([
      { unit: 'serial-getty@ttyS0.service', state: 'enabled' },
      { unit: 'systemd-networkd.service', state: 'enabled' },
      { unit: 'fstrim.timer', state: 'disabled' },
      { unit: 'apt-daily.timer', state: 'masked' },
      { unit: 'apt-daily-upgrade.timer', state: 'masked' },
    ]);
    expect(bom.files).toEqual([
      { path: '/etc/sysctl.d/99-kubernetes.conf', sha256: sha(sysctl), kind: 'config' },
      { path: '/etc/modules-load.d/k8s.conf', sha256: sha(modulesLoad), kind: 'config' },
      { path: '/etc/modprobe.d/k8s.conf', sha256: sha(modprobe), kind: 'config' },
      { path: '/home/ops/.ssh/authorized_keys', sha256: sha(`${KEY}\n`), kind: 'config' },
      { path: '/etc/sudoers.d/ops', sha256: sha(sudoers), kind: 'config' },
    ]);
    expect(bom.steps.map((s: { type: string }) => s.type)).toEqual(['packages', 'run', 'service', 'sysctl', 'kernel-modules', 'user', 'sysprep']);
    await expectNothingLeft(before);
  });

  test('swap off on an image with a swap partition and a swap file', async () => {
    const input = await fixtureImage('separate-boot');
    const fstabBefore = await withImageMounted(input, 'separate-boot', (root) => readFile(join(root, 'etc/fstab'), 'utf8'));
    expect(fstabBefore).toMatch(/^UUID=\S+\tnone\tswap\tsw\t0\t0$/m);
    const recipe = await writeRecipe(work, 'swap', [
      { name: 'a swap file', run: 'dd if=/dev/zero of=/swapfile bs=1M count=4 status=none\nchmod 600 /swapfile\nmkswap /swapfile >/dev/null\necho "/swapfile none swap sw 0 0" >> /etc/fstab' },
      { swap: { off: true } },
    ]);
    const output = join(work, 'swap-out.qcow2');
    const before = await hostState();
    const result = await runCli(['apply', recipe, '--disk-image', input, '--output', output, '--mount-backend', 'fuse', '--sparsify', 'fstrim', '--json']);
    expect(result.stderr).not.toContain('error');
    expect(result.exitCode).toBe(0);
    const bom = JSON.parse(await readFile(jsonResult(result.stdout).bom, 'utf8'));

    const expectedFstab = `${fstabBefore}/swapfile none swap sw 0 0\n`.replace(/^(UUID=\S+\tnone\tswap\t|\/swapfile none swap )/gm, '# disabled by imagebuilder: $1');
    const zram = '# Written by imagebuilder: swap is off, so no zram swap devices.\n';
    await withImageMounted(output, 'separate-boot', async (root) => {
      const fstab = await readFile(join(root, 'etc/fstab'), 'utf8');
      expect(fstab).toBe(expectedFstab);
      // Every other line is kept as it was; no active swap line is left.
      expect(fstab.split('\n').filter((line) => !line.startsWith('#') && line.split(/\s+/)[2] === 'swap')).toEqual([]);
      expect(fstab).toContain('PARTLABEL=boot\t/boot\text4\tdefaults\t0\t2');
      expect(await exists(join(root, 'swapfile'))).toBe(false);
      expect(await readFile(join(root, 'etc/systemd/zram-generator.conf'), 'utf8')).toBe(zram);
      expect(await readlink(join(root, 'etc/systemd/system/swap.target'))).toBe('/dev/null');
    });
    expect(bom.units).toEqual([{ unit: 'swap.target', state: 'masked' }]);
    expect(bom.files).toEqual([
      { path: '/etc/fstab', sha256: sha(expectedFstab), kind: 'config' },
      { path: '/etc/systemd/zram-generator.conf', sha256: sha(zram), kind: 'config' },
    ]);
    await expectNothingLeft(before);
  });

  test('an unknown unit fails the build with exit code 4, naming the unit, and leaves nothing', async () => {
    const input = await fixtureImage('gpt-esp');
    const recipe = await writeRecipe(work, 'unknown-unit', [{ name: 'units', service: { enable: ['ssh-typo'] } }]);
    const output = join(work, 'unknown-out.qcow2');
    const before = await hostState();
    const result = await runCli(['apply', recipe, '--disk-image', input, '--output', output, '--mount-backend', 'fuse', '--sparsify', 'none']);
    expect(result.exitCode).toBe(4);
    expect(result.stderr).toContain('error [STEP_FAILED]: step 1/1 (units): unknown unit ssh-typo.service: the guest has no unit file for it');
    expect(result.stderr).toContain('hint: check the name');
    expect(await exists(output)).toBe(false);
    await expectNothingLeft(before);
  });
});
