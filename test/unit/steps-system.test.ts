import { createHash } from 'node:crypto';
import { chmod, mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { detectDistro } from '../../src/distro/families.js';
import { createApt } from '../../src/pkg/apt.js';
import { parseRecipe } from '../../src/recipe/load.js';
import { findStepType } from '../../src/steps/registry.js';
import { kernelModulesStep } from '../../src/steps/kernel-modules.js';
import { serviceStep } from '../../src/steps/service.js';
import { disableSwapInFstab, swapStep } from '../../src/steps/swap.js';
import { sysctlStep } from '../../src/steps/sysctl.js';
import { sysprepStep } from '../../src/steps/sysprep.js';
import { userStep } from '../../src/steps/user.js';
import type { FakeCall } from '../helpers/fake-session.js';
import { fakeSession, fakeStepContext } from '../helpers/fake-session.js';

const sha = (text: string) => createHash('sha256').update(text).digest('hex');

/** A write through writeGuestFile, as the guest's shell receives it: path, owner, group, mode and the bytes on stdin. */
function asWrite(call: FakeCall) {
  if (call.argv[0] !== '/bin/sh' || call.argv[3] !== 'write-file') return undefined;
  const [, , , , path, owner, group, mode] = call.argv;
  return { path, owner, group, mode, content: call.input };
}

/** Every call: a write as `write PATH OWNER:GROUP MODE`, any other command as its argv joined. */
const commands = (calls: FakeCall[]) =>
  calls.map((call) => {
    const write = asWrite(call);
    return write ? `write ${write.path} ${write.owner}:${write.group} ${write.mode}` : call.argv.join(' ');
  });

const writes = (calls: FakeCall[]) => calls.map(asWrite).filter(Boolean);

const problemsOf = (key: string, value: unknown) =>
  parseRecipe(JSON.stringify({ name: 't', steps: [{ [key]: value }] }), 'r.json').problems.map((p) => p.message);

describe('the system step types are registered, documented, and their examples validate', () => {
  test.each(['service', 'sysctl', 'kernel-modules', 'swap', 'user', 'sysprep'])('%s', (key) => {
    const type = findStepType(key)!;
    expect(type).toBeDefined();
    expect(type.schema.additionalProperties).toBe(false);
    expect(problemsOf(key, type.example)).toEqual([]);
    expect(type.describe(type.example).length).toBeGreaterThan(3);
  });

  test('schemas reject what the steps cannot do', () => {
    expect(problemsOf('service', {})).toEqual(['steps[0].service must NOT have fewer than 1 properties']);
    expect(problemsOf('service', { enable: ['-x'] })[0]).toMatch(/^steps\[0\]\.service\.enable\[0\] must match pattern/);
    expect(problemsOf('service', { start: ['ssh'] })[0]).toContain('unknown key "start"');
    expect(problemsOf('sysctl', { settings: {} })).toEqual(['steps[0].sysctl.settings must NOT have fewer than 1 properties']);
    expect(problemsOf('sysctl', { name: '../x', settings: { a: 1 } })[0]).toMatch(/^steps\[0\]\.sysctl\.name must match pattern/);
    expect(problemsOf('sysctl', { name: 'k8s.conf', settings: { a: 1 } })[0]).toMatch(/^steps\[0\]\.sysctl\.name must match pattern/);
    expect(problemsOf('sysctl', { settings: { a: 'x\ny' } })).not.toEqual([]);
    expect(problemsOf('sysctl', { settings: { 'net.ipv4.ip_forward': 1, 'net.ipv4.conf.*.rp_filter': '2', '-kernel.x': 'a b' } })).toEqual([]);
    expect(problemsOf('kernel-modules', { name: 'x' })).toContain('steps[0].kernel-modules: missing required key "load"');
    expect(problemsOf('kernel-modules', { blacklist: ['floppy'] })).toEqual([]);
    expect(problemsOf('kernel-modules', { load: ['bad name'] })).not.toEqual([]);
    expect(problemsOf('swap', { off: false })).toEqual(['steps[0].swap.off must be equal to constant']);
    expect(problemsOf('swap', {})).toEqual(['steps[0].swap: missing required key "off"']);
    expect(problemsOf('user', { users: [{ name: 'Bad Name' }] })[0]).toMatch(/^steps\[0\]\.user\.users\[0\]\.name must match pattern/);
    expect(problemsOf('user', { users: [{ name: 'a', sudo: true }] })).not.toEqual([]);
    expect(problemsOf('user', { users: [{ name: 'a', sudo: false, authorized_keys: [] }] })).toEqual([]);
    expect(problemsOf('user', { users: [{ name: 'a', password: 'x' }] })[0]).toContain('unknown key "password"');
    expect(problemsOf('sysprep', {})).toEqual([]);
    expect(problemsOf('sysprep', { operations: ['logs', 'bogus'] })[0]).toMatch(/^steps\[0\]\.sysprep\.operations\[1\] must be one of "package-cache", "cloud-init", /);
  });
});

describe('service step', () => {
  test('looks every unit up first, then runs unmask, enable, disable, mask, and records each unit', async () => {
    const { session, calls } = fakeSession((call) => (call.argv[1] === 'is-enabled' ? { exitCode: 1, stdout: 'disabled\ndisabled\nenabled\nmasked\nenabled\n' } : undefined));
    const { context, records } = fakeStepContext(session);
    await serviceStep.run(context, { mask: ['apt-daily.timer'], enable: ['kubelet', 'containerd.service'], disable: ['fstrim.timer'], unmask: ['getty@tty1.service'] });
    expect(commands(calls)).toEqual([
      'systemctl is-enabled getty@tty1.service kubelet.service containerd.service fstrim.timer apt-daily.timer',
      'systemctl unmask getty@tty1.service',
      'systemctl enable kubelet.service containerd.service',
      'systemctl disable fstrim.timer',
      'systemctl mask apt-daily.timer',
    ]);
    expect(records.units).toEqual([
      { unit: 'getty@tty1.service', state: 'unmasked' },
      { unit: 'kubelet.service', state: 'enabled' },
      { unit: 'containerd.service', state: 'enabled' },
      { unit: 'fstrim.timer', state: 'disabled' },
      { unit: 'apt-daily.timer', state: 'masked' },
    ]);
  });

  test('an unknown unit is a STEP_FAILED error naming it, before anything changes (systemd 252 wording)', async () => {
    const { session, calls } = fakeSession((call) =>
      call.argv[1] === 'is-enabled' ? { exitCode: 1, stdout: 'enabled\n', stderr: 'Failed to get unit file state for nope.service: No such file or directory\n' } : undefined,
    );
    const { context, records } = fakeStepContext(session);
    await expect(serviceStep.run(context, { enable: ['ssh', 'nope'] })).rejects.toMatchObject({
      code: 'STEP_FAILED',
      message: 'step 1/1 (test): unknown unit nope.service: the guest has no unit file for it',
      hint: expect.stringContaining('systemctl list-unit-files'),
    });
    expect(commands(calls)).toEqual(['systemctl is-enabled ssh.service nope.service']);
    expect(records.units).toEqual([]);
  });

  test('an unknown unit to mask is an error too (systemctl itself would mask a typo silently); newer systemd says not-found', async () => {
    const { session, calls } = fakeSession((call) => (call.argv[1] === 'is-enabled' ? { exitCode: 4, stdout: 'static\nnot-found\n' } : undefined));
    const { context } = fakeStepContext(session);
    await expect(serviceStep.run(context, { mask: ['swap.target', 'zram-typo.swap'] })).rejects.toMatchObject({ code: 'STEP_FAILED', message: expect.stringContaining('unknown unit zram-typo.swap') });
    expect(calls).toHaveLength(1);
  });

  test('a guest without systemctl, a failing systemctl and contradictions are clear errors', async () => {
    const noSystemd = fakeSession(() => ({ exitCode: 127, stderr: "chroot: failed to run command 'systemctl': No such file or directory\n" }));
    await expect(serviceStep.run(fakeStepContext(noSystemd.session).context, { enable: ['ssh'] })).rejects.toMatchObject({
      code: 'STEP_FAILED',
      message: 'step 1/1 (test): the guest has no systemctl',
    });

    const failing = fakeSession((call) => (call.argv[1] === 'enable' ? { exitCode: 1, output: 'Failed to enable unit: File /etc/systemd/system/x: Read-only file system\n' } : undefined));
    await expect(serviceStep.run(fakeStepContext(failing.session).context, { enable: ['ssh'] })).rejects.toMatchObject({
      code: 'STEP_FAILED',
      message: 'step 1/1 (test): enable ssh.service: `systemctl enable ssh.service` exited with 1',
      detail: 'Failed to enable unit: File /etc/systemd/system/x: Read-only file system',
    });

    const contradiction = fakeSession();
    await expect(serviceStep.run(fakeStepContext(contradiction.session).context, { enable: ['ssh'], mask: ['ssh.service'] })).rejects.toMatchObject({
      code: 'STEP_FAILED',
      message: 'step 1/1 (test): ssh.service cannot be both enabled and masked',
    });
    expect(contradiction.calls).toEqual([]);
  });
});

describe('sysctl step', () => {
  test('writes one sysctl.d file, keys in the given order, and never runs sysctl', async () => {
    const { session, calls } = fakeSession();
    const { context, records } = fakeStepContext(session);
    await sysctlStep.run(context, { name: '99-kubernetes', settings: { 'net.ipv4.ip_forward': 1, 'net.bridge.bridge-nf-call-iptables': 1, 'net.ipv4.ip_local_port_range': '32768 60999' } });
    const content = '# Written by imagebuilder.\nnet.ipv4.ip_forward = 1\nnet.bridge.bridge-nf-call-iptables = 1\nnet.ipv4.ip_local_port_range = 32768 60999\n';
    expect(commands(calls)).toEqual(['write /etc/sysctl.d/99-kubernetes.conf root:root 0644']);
    expect(writes(calls)[0]!.content).toBe(content);
    expect(records.files).toEqual([{ path: '/etc/sysctl.d/99-kubernetes.conf', sha256: sha(content), kind: 'config' }]);
  });

  test('the default name is 99-imagebuilder', async () => {
    const { session, calls } = fakeSession();
    await sysctlStep.run(fakeStepContext(session).context, { settings: { 'vm.swappiness': 0 } });
    expect(writes(calls)).toEqual([{ path: '/etc/sysctl.d/99-imagebuilder.conf', owner: 'root', group: 'root', mode: '0644', content: '# Written by imagebuilder.\nvm.swappiness = 0\n' }]);
  });
});

describe('kernel-modules step', () => {
  test('load, options and blacklist: a modules-load.d file and a modprobe.d file, no modprobe', async () => {
    const { session, calls } = fakeSession();
    const { context, records } = fakeStepContext(session);
    await kernelModulesStep.run(context, { name: 'k8s', load: ['overlay', 'br_netfilter'], options: { nf_conntrack: 'hashsize=131072' }, blacklist: ['floppy', 'pcspkr'] });
    const load = '# Written by imagebuilder.\noverlay\nbr_netfilter\n';
    const modprobe = '# Written by imagebuilder.\noptions nf_conntrack hashsize=131072\nblacklist floppy\nblacklist pcspkr\n';
    expect(writes(calls)).toEqual([
      { path: '/etc/modules-load.d/k8s.conf', owner: 'root', group: 'root', mode: '0644', content: load },
      { path: '/etc/modprobe.d/k8s.conf', owner: 'root', group: 'root', mode: '0644', content: modprobe },
    ]);
    expect(calls).toHaveLength(2);
    expect(records.files).toEqual([
      { path: '/etc/modules-load.d/k8s.conf', sha256: sha(load), kind: 'config' },
      { path: '/etc/modprobe.d/k8s.conf', sha256: sha(modprobe), kind: 'config' },
    ]);
  });

  test('only what is asked for is written', async () => {
    const loadOnly = fakeSession();
    await kernelModulesStep.run(fakeStepContext(loadOnly.session).context, { load: ['overlay'] });
    expect(commands(loadOnly.calls)).toEqual(['write /etc/modules-load.d/99-imagebuilder.conf root:root 0644']);
    const blacklistOnly = fakeSession();
    await kernelModulesStep.run(fakeStepContext(blacklistOnly.session).context, { blacklist: ['floppy'] });
    expect(writes(blacklistOnly.calls)).toEqual([{ path: '/etc/modprobe.d/99-imagebuilder.conf', owner: 'root', group: 'root', mode: '0644', content: '# Written by imagebuilder.\nblacklist floppy\n' }]);
  });
});

describe('swap step', () => {
  let root: string;
  let outside: string;
  const FSTAB = [
    '# /etc/fstab: static file system information.',
    'UUID=8b2c4d6e /	ext4	errors=remount-ro	0	1',
    'UUID=0d1c2b3a	none	swap	sw	0	0',
    '/swapfile none swap sw 0 0',
    '/data/swap\\040file none swap defaults,pri=5 0 0',
    '/escape/swapfile none swap sw 0 0',
    '/swaplink none swap sw 0 0',
    '/missing.swap none swap sw 0 0',
    '# /old.swap none swap sw 0 0',
    '/dev/vdb2 none swap sw 0 0',
    '',
  ].join('\n');

  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'swap-root-'));
    outside = await mkdtemp(join(tmpdir(), 'swap-host-'));
    await mkdir(join(root, 'etc'));
    await mkdir(join(root, 'srv/data'), { recursive: true });
    await writeFile(join(root, 'etc/fstab'), FSTAB, { mode: 0o644 });
    await writeFile(join(root, 'swapfile'), 'SWAP');
    await writeFile(join(root, 'srv/data/swap file'), 'SWAP');
    await writeFile(join(root, 'etc/passwd'), 'root:x:0:0::/root:/bin/sh\n');
    await symlink('srv/data', join(root, 'data')); // relative, inside the guest
    await symlink(outside, join(root, 'escape')); // absolute: the guest's view of it, never the host's
    await writeFile(join(outside, 'swapfile'), 'HOST FILE');
    await symlink('/etc/passwd', join(root, 'swaplink'));
  });
  afterEach(async () => {
    await rm(root, { recursive: true, force: true });
    await rm(outside, { recursive: true, force: true });
  });

  test('comments out swap lines, removes regular swap files inside the guest only, writes the zram config, masks swap.target', async () => {
    const { session, calls } = fakeSession(undefined, root);
    const { context, records } = fakeStepContext(session);
    await swapStep.run(context, { off: true });
    const expected = FSTAB.replace(/^(UUID=0d1c2b3a|\/swapfile|\/data|\/escape|\/swaplink|\/missing|\/dev\/vdb2)/gm, '# disabled by imagebuilder: $1');
    const uid = process.getuid!();
    const gid = process.getgid!();
    expect(commands(calls)).toEqual([
      `write /etc/fstab ${uid}:${gid} 0644`,
      'rm -f -- /swapfile',
      'rm -f -- /srv/data/swap file',
      'write /etc/systemd/zram-generator.conf root:root 0644',
      '/bin/sh -c command -v "$1" >/dev/null 2>&1 command-v systemctl',
      'systemctl mask swap.target',
    ]);
    const [fstab, zram] = writes(calls);
    expect(fstab!.content).toBe(expected);
    expect(fstab!.content).toContain('\n# disabled by imagebuilder: /swapfile none swap sw 0 0\n');
    expect(fstab!.content).toContain('\n# /old.swap none swap sw 0 0\n'); // already a comment: left as it was
    expect(zram!.content).toBe('# Written by imagebuilder: swap is off, so no zram swap devices.\n');
    expect(records.files).toEqual([
      { path: '/etc/fstab', sha256: sha(expected), kind: 'config' },
      { path: '/etc/systemd/zram-generator.conf', sha256: sha(zram!.content!), kind: 'config' },
    ]);
    expect(records.units).toEqual([{ unit: 'swap.target', state: 'masked' }]);
    // Nothing here touched a file itself: the host file behind the absolute guest symlink is untouched.
    expect(await readFile(join(outside, 'swapfile'), 'utf8')).toBe('HOST FILE');
  });

  test('a symlinked /etc/fstab is edited at its target inside the guest; a second run changes nothing in fstab', async () => {
    await rm(join(root, 'etc/fstab'));
    await writeFile(join(root, 'etc/fstab.real'), 'UUID=1 / ext4 defaults 0 1\n# disabled by imagebuilder: UUID=2 none swap sw 0 0\n');
    await symlink('/etc/fstab.real', join(root, 'etc/fstab'));
    const { session, calls } = fakeSession(undefined, root);
    await swapStep.run(fakeStepContext(session).context, { off: true });
    expect(commands(calls)).not.toContainEqual(expect.stringMatching(/fstab/));

    await writeFile(join(root, 'etc/fstab.real'), 'UUID=1 / ext4 defaults 0 1\nUUID=2 none swap sw 0 0\n');
    await chmod(join(root, 'etc/fstab.real'), 0o640); // its mode is kept
    const second = fakeSession(undefined, root);
    await swapStep.run(fakeStepContext(second.session).context, { off: true });
    expect(writes(second.calls)[0]).toMatchObject({ path: '/etc/fstab.real', mode: '0640', content: 'UUID=1 / ext4 defaults 0 1\n# disabled by imagebuilder: UUID=2 none swap sw 0 0\n' });
  });

  test('without systemctl in the guest, swap.target is left alone; without fstab, nothing is edited', async () => {
    await rm(join(root, 'etc/fstab'));
    const { session, calls } = fakeSession((call) => (call.argv[3] === 'command-v' ? { exitCode: 1 } : undefined), root);
    const { context, records } = fakeStepContext(session);
    await swapStep.run(context, { off: true });
    expect(commands(calls)).toEqual(['write /etc/systemd/zram-generator.conf root:root 0644', '/bin/sh -c command -v "$1" >/dev/null 2>&1 command-v systemctl']);
    expect(records.units).toEqual([]);
  });

  test('disableSwapInFstab keeps everything else byte for byte', () => {
    expect(disableSwapInFstab('a / ext4 x 0 1\n\tUUID=x  none  swap  sw\n#c\n')).toEqual({ text: 'a / ext4 x 0 1\n# disabled by imagebuilder: \tUUID=x  none  swap  sw\n#c\n', sources: ['UUID=x'] });
    expect(disableSwapInFstab('').sources).toEqual([]);
  });
});

describe('user step', () => {
  /** A guest passwd/group database that useradd and groupadd calls change. */
  function guestAccounts(initial: { passwd?: string[]; group?: string[] } = {}) {
    const passwd = [...(initial.passwd ?? [])];
    const group = [...(initial.group ?? [])];
    return (call: FakeCall) => {
      const [command, database, name] = call.argv;
      if (command === 'getent') {
        const line = (database === 'passwd' ? passwd : group).find((entry) => entry.startsWith(`${name}:`));
        return line ? { stdout: `${line}\n` } : { exitCode: 2 };
      }
      if (command === 'groupadd') group.push(`${call.argv.at(-1)}:x:${call.argv.includes('--gid') ? call.argv[call.argv.indexOf('--gid') + 1] : 1001}:`);
      if (command === 'useradd') {
        const user = call.argv.at(-1)!;
        const uid = call.argv.includes('--uid') ? call.argv[call.argv.indexOf('--uid') + 1] : '1000';
        passwd.push(`${user}:x:${uid}:${uid}::/home/${user}:${call.argv.includes('--shell') ? call.argv[call.argv.indexOf('--shell') + 1] : '/bin/sh'}`);
      }
      return undefined;
    };
  }

  test('a new group and user with keys and sudo: exact commands, files and modes', async () => {
    const { session, calls } = fakeSession(guestAccounts());
    const { context, records } = fakeStepContext(session);
    await userStep.run(context, {
      groups: [{ name: 'k8s-admins', gid: 1500 }],
      users: [{ name: 'ops', uid: 1500, groups: ['k8s-admins', 'adm'], shell: '/bin/bash', authorized_keys: ['ssh-ed25519 AAAA ops@a', 'ssh-rsa BBBB ops@b '], sudo: 'ALL=(ALL) NOPASSWD:ALL' }],
    });
    expect(commands(calls)).toEqual([
      'getent group k8s-admins',
      'groupadd --gid 1500 k8s-admins',
      'getent passwd ops',
      'getent group ops',
      'useradd --uid 1500 --create-home --shell /bin/bash --groups k8s-admins,adm --user-group ops',
      'getent passwd ops',
      'install -d -m 0700 -o ops -g 1500 /home/ops/.ssh',
      'write /home/ops/.ssh/authorized_keys ops:1500 0600',
      '/bin/sh -c command -v "$1" >/dev/null 2>&1 command-v visudo',
      'visudo -c -f -',
      'write /etc/sudoers.d/ops root:root 0440',
    ]);
    const keys = 'ssh-ed25519 AAAA ops@a\nssh-rsa BBBB ops@b\n';
    const sudoers = '# Written by imagebuilder.\nops ALL=(ALL) NOPASSWD:ALL\n';
    expect(writes(calls).map((w) => w!.content)).toEqual([keys, sudoers]);
    expect(calls[9].input).toBe(sudoers); // what visudo checked is what is installed
    expect(records.files).toEqual([
      { path: '/home/ops/.ssh/authorized_keys', sha256: sha(keys), kind: 'config' },
      { path: '/etc/sudoers.d/ops', sha256: sha(sudoers), kind: 'config' },
    ]);
  });

  test('an existing user is updated, not an error: only what differs, groups appended', async () => {
    const { session, calls } = fakeSession(guestAccounts({ passwd: ['debian:x:1000:1000::/home/debian:/bin/sh'], group: ['docker:x:999:'] }));
    await userStep.run(fakeStepContext(session).context, { groups: [{ name: 'docker' }], users: [{ name: 'debian', uid: 1000, shell: '/bin/bash', groups: ['docker'] }] });
    expect(commands(calls)).toEqual(['getent group docker', 'getent passwd debian', 'usermod --shell /bin/bash --append --groups docker debian']);

    const unchanged = fakeSession(guestAccounts({ passwd: ['debian:x:1000:1000::/home/debian:/bin/bash'] }));
    await userStep.run(fakeStepContext(unchanged.session).context, { users: [{ name: 'debian', shell: '/bin/bash', home: '/home/debian' }] });
    expect(commands(unchanged.calls)).toEqual(['getent passwd debian']);

    const moved = fakeSession(guestAccounts({ passwd: ['svc:x:500:500::/home/svc:/bin/sh'], group: ['svc:x:500:'] }));
    await userStep.run(fakeStepContext(moved.session).context, { groups: [{ name: 'svc', gid: 600 }], users: [{ name: 'svc', uid: 600, home: '/srv/svc' }] });
    expect(commands(moved.calls)).toEqual(['getent group svc', 'groupmod --gid 600 svc', 'getent passwd svc', 'usermod --uid 600 --home /srv/svc --move-home svc']);
  });

  test('a system user gets no home unless needed; a group of its name becomes its primary group', async () => {
    const { session, calls } = fakeSession(guestAccounts({ group: ['etcd:x:990:'] }));
    await userStep.run(fakeStepContext(session).context, { users: [{ name: 'etcd', system: true, shell: '/usr/sbin/nologin' }] });
    expect(commands(calls)).toEqual(['getent passwd etcd', 'getent group etcd', 'useradd --system --shell /usr/sbin/nologin --gid etcd etcd']);
  });

  test('sudo: false removes the file; dots in a name become underscores (sudo skips names with dots)', async () => {
    const { session, calls } = fakeSession(guestAccounts({ passwd: ['first.last:x:1000:1000::/home/first.last:/bin/sh'] }));
    await userStep.run(fakeStepContext(session).context, { users: [{ name: 'first.last', sudo: false }] });
    expect(commands(calls)).toEqual(['getent passwd first.last', 'rm -f -- /etc/sudoers.d/first_last']);
  });

  test('a rule visudo rejects is not installed; without sudo in the guest the file is written with a warning', async () => {
    const rejecting = fakeSession((call) => {
      if (call.argv[0] === 'getent') return { stdout: 'ops:x:1000:1000::/home/ops:/bin/sh\n' };
      if (call.argv[0] === 'visudo') return { exitCode: 1, output: 'stdin:2:13: syntax error\nops ALL=(ALL NOPASSWD:ALL\n' };
      return undefined;
    });
    await expect(userStep.run(fakeStepContext(rejecting.session).context, { users: [{ name: 'ops', sudo: 'ALL=(ALL NOPASSWD:ALL' }] })).rejects.toMatchObject({
      code: 'STEP_FAILED',
      message: 'step 1/1 (test): the sudo rule for ops is not valid sudoers syntax: "ALL=(ALL NOPASSWD:ALL"',
      detail: expect.stringContaining('syntax error'),
    });
    expect(writes(rejecting.calls)).toEqual([]);

    const warnings: string[] = [];
    const noSudo = fakeSession((call) => {
      if (call.argv[0] === 'getent') return { stdout: 'ops:x:1000:1000::/home/ops:/bin/sh\n' };
      if (call.argv[3] === 'command-v') return { exitCode: 1 };
      return undefined;
    });
    const { context } = fakeStepContext(noSudo.session);
    context.log = { ...context.log, warn: (m: string) => void warnings.push(m) };
    await userStep.run(context, { users: [{ name: 'ops', sudo: 'ALL=(ALL) ALL' }] });
    expect(commands(noSudo.calls)).toEqual(['getent passwd ops', '/bin/sh -c command -v "$1" >/dev/null 2>&1 command-v visudo', 'write /etc/sudoers.d/ops root:root 0440']);
    expect(warnings).toEqual(['step 1/1 (test): sudo is not installed in the guest: /etc/sudoers.d/ops written without checking it (install sudo in an earlier step)']);
  });

  test("useradd's failure is a STEP_FAILED error with its message", async () => {
    const { session } = fakeSession((call) => {
      if (call.argv[0] === 'getent') return { exitCode: 2 };
      if (call.argv[0] === 'useradd') return { exitCode: 6, output: "useradd: group 'docker' does not exist\n" };
      return undefined;
    });
    await expect(userStep.run(fakeStepContext(session).context, { users: [{ name: 'ops', groups: ['docker'] }] })).rejects.toMatchObject({
      code: 'STEP_FAILED',
      message: 'step 1/1 (test): creating user ops: `useradd --create-home --groups docker --user-group ops` exited with 6',
      detail: "useradd: group 'docker' does not exist",
      hint: expect.stringContaining('groups must exist first'),
    });
  });
});

describe('sysprep step', () => {
  const LISTS = 'if [ -d /var/lib/apt/lists ]; then find /var/lib/apt/lists -mindepth 1 ! -path /var/lib/apt/lists/partial ! -path /var/lib/apt/lists/lock -delete; fi';
  const CLOUD_INIT =
    'set -e; if command -v cloud-init >/dev/null 2>&1; then exec cloud-init clean --logs; fi; ' +
    'if [ -d /var/lib/cloud ]; then find /var/lib/cloud -mindepth 1 -maxdepth 1 ! -name seed -exec rm -rf --one-file-system -- {} +; fi; ' +
    'rm -f /var/log/cloud-init.log /var/log/cloud-init-output.log';
  const REMOVE_FILES = 'for pattern in "$@"; do for file in $pattern; do if [ -f "$file" ] && [ ! -L "$file" ]; then rm -f -- "$file"; fi; done; done';
  const HISTORY =
    'set -e; getent passwd | cut -d: -f6 | sort -u | while IFS= read -r home; do [ -d "$home" ] || continue; ' +
    'for name in .bash_history .zsh_history .sh_history .ash_history .history .python_history .lesshst; do ' +
    'if [ -f "$home/$name" ] && [ ! -L "$home/$name" ]; then rm -f -- "$home/$name"; fi; done; done';
  const TMP = 'set -e; for dir in /tmp /var/tmp; do if [ -d "$dir" ]; then find "$dir" -mindepth 1 -maxdepth 1 -exec rm -rf --one-file-system -- {} +; fi; done';
  const LOGS =
    "set -e; [ -d /var/log ] || exit 0; find /var/log -path /var/log/journal -prune -o -type f -exec truncate -s 0 {} +; if [ -d /var/log/journal ]; then find /var/log/journal -type f \\( -name '*.journal' -o -name '*.journal~' \\) -delete; fi";

  test('all operations by default, in a fixed order, each inside the guest', async () => {
    const { session, calls } = fakeSession();
    await sysprepStep.run(fakeStepContext(session).context, {});
    expect(calls.map((c) => c.argv)).toEqual([
      ['apt-get', 'clean'],
      ['/bin/sh', '-c', LISTS],
      ['/bin/sh', '-c', CLOUD_INIT],
      ['/bin/sh', '-c', 'rm -f /etc/ssh/ssh_host_*'],
      ['truncate', '-s', '0', '/etc/machine-id'],
      ['/bin/sh', '-c', REMOVE_FILES, 'remove-files', '/var/lib/dbus/machine-id'],
      ['/bin/sh', '-c', HISTORY],
      ['/bin/sh', '-c', TMP],
      ['/bin/sh', '-c', LOGS],
    ]);
  });

  test('a subset runs in the fixed order whatever order the recipe gives', async () => {
    const { session, calls } = fakeSession();
    await sysprepStep.run(fakeStepContext(session).context, { operations: ['logs', 'machine-id'] });
    expect(calls.map((c) => c.argv)).toEqual([['truncate', '-s', '0', '/etc/machine-id'], ['/bin/sh', '-c', REMOVE_FILES, 'remove-files', '/var/lib/dbus/machine-id'], ['/bin/sh', '-c', LOGS]]);
  });

  test('package-cache needs a known family: skipped with a warning by default, an error when asked for', async () => {
    const unknown = detectDistro({ ID: 'plan9' });
    const warnings: string[] = [];
    const all = fakeSession();
    const { context } = fakeStepContext(all.session, { distro: unknown });
    context.log = { ...context.log, warn: (m: string) => void warnings.push(m) };
    await sysprepStep.run(context, {});
    expect(all.calls.map((c) => c.argv[0])).not.toContain('apt-get');
    expect(warnings).toEqual(['step 1/1 (test): package-cache skipped: unknown distribution family']);

    const explicit = fakeSession();
    await expect(sysprepStep.run(fakeStepContext(explicit.session, { distro: unknown }).context, { operations: ['package-cache'] })).rejects.toMatchObject({
      code: 'STEP_FAILED',
      message: expect.stringContaining('the package-cache operation of sysprep is not supported'),
    });
  });

  test('a failing operation is a STEP_FAILED error naming it', async () => {
    const { session } = fakeSession((call) => (call.argv[0] === 'truncate' ? { exitCode: 1, output: "truncate: cannot open '/etc/machine-id' for writing: Read-only file system\n" } : undefined));
    await expect(sysprepStep.run(fakeStepContext(session).context, { operations: ['machine-id'] })).rejects.toMatchObject({
      code: 'STEP_FAILED',
      message: 'step 1/1 (test): sysprep machine-id: `truncate -s 0 /etc/machine-id` exited with 1',
      detail: expect.stringContaining('Read-only file system'),
    });
  });

  test("apt's cleanCache makes the next install in the session fetch the package lists again", async () => {
    const apt = createApt();
    const { session, calls } = fakeSession();
    await apt.install(session, [{ name: 'socat' }]);
    await apt.cleanCache(session);
    await apt.install(session, [{ name: 'hello' }]);
    expect(calls.map((c) => (c.argv[3] === 'write-file' ? `write ${c.argv[4]}` : c.argv.slice(0, 2).join(' ')))).toEqual([
      'write /run/imagebuilder-apt.conf',
      'apt-get update',
      'apt-get install',
      'apt-get clean',
      'apt-get clean',
      `/bin/sh -c`,
      'apt-get update',
      'apt-get install',
      'apt-get clean',
    ]);
    expect(calls[5].argv[2]).toBe(LISTS);
  });
});
