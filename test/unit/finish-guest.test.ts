import { mkdir, mkdtemp, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { initramfsMayRead, watchInitramfs } from '../../src/distro/initramfs.js';
import { fileStep } from '../../src/steps/file.js';
import { parseSelinuxConfig, relabelGuest } from '../../src/distro/selinux.js';
import type { GuestMount } from '../../src/mount/layout.js';
import { ImageBuilderError } from '../../src/util/errors.js';
import { recordingRunner } from '../../src/util/exec.js';
import { which } from '../../src/util/fs.js';
import { createLogger } from '../../src/util/log.js';
import { fakeSession } from '../helpers/fake-session.js';
import { hostSeccompArch, seccompBytes } from '../../src/chroot/seccomp.js';

const GUEST_KERNEL = '6.1.0-50-cloud-amd64';

/** A guest tree on disk (merged /usr: /lib is a link to usr/lib) the finishing work reads; commands are faked. */
async function guestTree(files: Record<string, string>): Promise<string> {
  const root = await mkdtemp(join(tmpdir(), 'ib-finish-'));
  await mkdir(join(root, 'usr/lib'), { recursive: true });
  await symlink('usr/lib', join(root, 'lib'));
  for (const [path, content] of Object.entries(files)) {
    await mkdir(dirname(join(root, path)), { recursive: true });
    await writeFile(join(root, path), content);
  }
  return root;
}

const put = async (root: string, path: string, content: string) => {
  await mkdir(dirname(join(root, path)), { recursive: true });
  await writeFile(join(root, path), content);
};

/** ctime has the file system's granularity; a pause keeps "written after" strictly after. */
const tick = () => new Promise((resolve) => setTimeout(resolve, 20));

function capturingLog() {
  const lines: string[] = [];
  return { log: createLogger({ write: (text) => void lines.push(text) }), lines };
}

const KERNEL_FILES = {
  [`usr/lib/modules/${GUEST_KERNEL}/kernel/fs/xfs/xfs.ko`]: 'module',
  [`usr/lib/modules/${GUEST_KERNEL}/modules.dep`]: '',
  [`boot/vmlinuz-${GUEST_KERNEL}`]: 'kernel',
};

describe('initramfs regeneration for the guest kernel', () => {
  const roots: string[] = [];
  afterAll(async () => {
    for (const root of roots) await rm(root, { recursive: true, force: true });
  });
  const tree = async (files: Record<string, string>) => {
    const root = await guestTree(files);
    roots.push(root);
    return root;
  };

  test('a dracut config written by a step: dracut --kver <guest kernel>, never the host kernel', async () => {
    const root = await tree({ ...KERNEL_FILES, 'usr/bin/dracut': '#!/bin/sh\n', [`boot/initrd.img-${GUEST_KERNEL}`]: 'old' });
    const watch = await watchInitramfs(root);
    await tick();
    await put(root, 'etc/dracut.conf.d/50-imagebuilder.conf', 'add_drivers+=" xfs "\n');
    const { session, calls } = fakeSession(undefined, root);
    const { log, lines } = capturingLog();
    const entries = await watch.regenerate(session, { log, index: 3 });
    expect(calls.map((c) => c.argv)).toEqual([['dracut', '--force', '--no-hostonly', '--kver', GUEST_KERNEL]]);
    expect(entries).toEqual([
      { index: 3, type: 'initramfs', description: `dracut --force --no-hostonly --kver ${GUEST_KERNEL} (dracut configuration changed)`, durationMs: expect.any(Number) },
    ]);
    expect(lines.join('')).toContain(`initramfs of kernel ${GUEST_KERNEL}: dracut configuration changed; regenerating with dracut`);
  });

  test('a new kernel whose package hooks built no initramfs: one dracut run per new kernel, none for the old one', async () => {
    const root = await tree({ ...KERNEL_FILES, 'usr/sbin/dracut': '#!/bin/sh\n', [`boot/initramfs-${GUEST_KERNEL}.img`]: 'old' });
    const watch = await watchInitramfs(root);
    await put(root, 'usr/lib/modules/6.9.0-1.fc40.x86_64/kernel/fs/xfs/xfs.ko', 'new module');
    const { session, calls } = fakeSession(undefined, root);
    const entries = await watch.regenerate(session, { log: capturingLog().log, index: 0 });
    expect(calls.map((c) => c.argv)).toEqual([['dracut', '--force', '--no-hostonly', '--kver', '6.9.0-1.fc40.x86_64']]);
    expect(entries.map((e) => e.description)).toEqual(['dracut --force --no-hostonly --kver 6.9.0-1.fc40.x86_64 (new kernel 6.9.0-1.fc40.x86_64)']);
  });

  test('a kernel upgrade whose own hooks rebuilt the initramfs afterwards: nothing is built twice', async () => {
    const root = await tree({ ...KERNEL_FILES, 'usr/sbin/update-initramfs': '#!/bin/sh\n', [`boot/initrd.img-${GUEST_KERNEL}`]: 'old' });
    const watch = await watchInitramfs(root);
    await tick();
    await put(root, `usr/lib/modules/${GUEST_KERNEL}/kernel/fs/xfs/xfs.ko`, 'upgraded module');
    await tick();
    await put(root, `boot/initrd.img-${GUEST_KERNEL}`, 'rebuilt by the postinst'); // as the kernel's postinst does
    const { session, calls } = fakeSession(undefined, root);
    const { log, lines } = capturingLog();
    expect(await watch.regenerate(session, { log, index: 0 })).toEqual([]);
    expect(calls).toEqual([]);
    expect(lines.join('')).toContain(`initramfs of kernel ${GUEST_KERNEL}: up to date (changed kernel ${GUEST_KERNEL}, rebuilt since by the guest's own hooks)`);
  });

  test('initramfs-tools: a config change after the last rebuild is update-initramfs -u -k <guest kernel>; -c when there is none', async () => {
    const root = await tree({ ...KERNEL_FILES, 'usr/sbin/update-initramfs': '#!/bin/sh\n', [`boot/initrd.img-${GUEST_KERNEL}`]: 'old', 'usr/lib/modules/6.1.0-9-amd64/modules.dep': '' });
    const watch = await watchInitramfs(root);
    await tick();
    await put(root, 'etc/initramfs-tools/modules', 'xfs\n');
    const { session, calls } = fakeSession(undefined, root);
    await watch.regenerate(session, { log: capturingLog().log, index: 0 });
    expect(calls.map((c) => c.argv)).toEqual([
      ['update-initramfs', '-u', '-k', GUEST_KERNEL],
      ['update-initramfs', '-c', '-k', '6.1.0-9-amd64'],
    ]);
  });

  test('nothing changed, or no generator in the guest: no command', async () => {
    const unchanged = await tree({ ...KERNEL_FILES, 'usr/bin/dracut': '#!/bin/sh\n' });
    const watch = await watchInitramfs(unchanged);
    await put(unchanged, 'etc/motd', 'hello\n');
    const first = fakeSession(undefined, unchanged);
    expect(await watch.regenerate(first.session, { log: capturingLog().log, index: 0 })).toEqual([]);
    expect(first.calls).toEqual([]);

    const noGenerator = await tree(KERNEL_FILES);
    const watchNone = await watchInitramfs(noGenerator);
    await put(noGenerator, `usr/lib/modules/${GUEST_KERNEL}/extra/new.ko`, 'module');
    const second = fakeSession(undefined, noGenerator);
    expect(await watchNone.regenerate(second.session, { log: capturingLog().log, index: 0 })).toEqual([]);
    expect(second.calls).toEqual([]);
  });

  test('the next step starts from the trees as the step before left them: a change after that is still seen, an unchanged tree is not walked again', async () => {
    const root = await tree({ ...KERNEL_FILES, 'usr/sbin/update-initramfs': '#!/bin/sh\n', [`boot/initrd.img-${GUEST_KERNEL}`]: 'old' });
    const first = await watchInitramfs(root);
    expect(first.settled()).toBeUndefined();
    await put(root, 'etc/motd', 'step 1\n');
    const one = fakeSession(undefined, root);
    expect(await first.regenerate(one.session, { log: capturingLog().log, index: 0 })).toEqual([]);
    const trees = first.settled();
    expect(trees?.kernels.has(GUEST_KERNEL)).toBe(true);

    // Step 2 starts from step 1's trees and changes the generator's configuration.
    const second = await watchInitramfs(root, trees);
    await tick();
    await put(root, 'etc/initramfs-tools/modules', 'xfs\n');
    const two = fakeSession(undefined, root);
    await second.regenerate(two.session, { log: capturingLog().log, index: 1 });
    expect(two.calls.map((c) => c.argv)).toEqual([['update-initramfs', '-u', '-k', GUEST_KERNEL]]);
    // A generator ran in the guest: the next step reads the trees itself.
    expect(second.settled()).toBeUndefined();

    // Trees handed on are taken as the starting point, not read again: ones that say "no kernel" make the
    // unchanged kernel look new (what a stale hand-over would do, which is why only the step before hands on).
    // With no initramfs there, a kernel taken as new gets one made (-c); read afresh, nothing changed.
    await rm(join(root, `boot/initrd.img-${GUEST_KERNEL}`));
    const fresh = await watchInitramfs(root);
    const unchanged = fakeSession(undefined, root);
    await fresh.regenerate(unchanged.session, { log: capturingLog().log, index: 2 });
    expect(unchanged.calls).toEqual([]);
    const stale = { ...fresh.settled()!, kernels: new Map() };
    const third = await watchInitramfs(root, stale);
    const three = fakeSession(undefined, root);
    await third.regenerate(three.session, { log: capturingLog().log, index: 2 });
    expect(three.calls.map((c) => c.argv)).toEqual([['update-initramfs', '-c', '-k', GUEST_KERNEL]]);
  });

  test('a step that names the paths it writes is watched only when one is an initramfs input, links in the guest followed inside it', async () => {
    const root = await tree({ ...KERNEL_FILES, 'etc/initramfs-tools/modules': '', 'etc/motd': '' });
    // A guest's links: a directory that leads into a watched tree, and a file name that is a link to a directory there.
    await symlink('/etc/initramfs-tools', join(root, 'etc/alias-dir'));
    await symlink('/usr/lib/modules', join(root, 'etc/modules-link'));
    await symlink('../../boot', join(root, 'etc/boot-link'));
    const reads = (path: string) => initramfsMayRead(root, fileStep.writesOnly!({ path, content: '' }));
    expect(await reads('/etc/motd')).toBe(false);
    expect(await reads('/etc/kubernetes/kubelet.conf')).toBe(false);
    expect(await reads('/etc/initramfs-tools/modules')).toBe(true);
    expect(await reads('/etc/dracut.conf.d/k8s.conf')).toBe(true);
    expect(await reads(`/lib/modules/${GUEST_KERNEL}/extra/x.ko`)).toBe(true);
    expect(await reads('/boot/vmlinuz-new')).toBe(true);
    expect(await reads('/etc/alias-dir/hooks/x')).toBe(true);
    expect(await reads('/etc/modules-link')).toBe(true);
    // `..` after a link climbs from where the link led (/boot/../boot/x is /boot/x), not lexically (/etc/boot/x).
    expect(await reads('/etc/boot-link/../boot/x')).toBe(true);
    // The write's temporary sibling, a link of the guest's into a watched tree, is written through too.
    await symlink('/etc/initramfs-tools/conf.d/planted', join(root, 'etc/issue.imagebuilder-new'));
    expect(await reads('/etc/issue')).toBe(true);
    // A path holding a watched tree (a file written over /usr/lib) counts too.
    expect(await reads('/usr/lib')).toBe(true);
  });

  test('a failing dracut fails the build with the kernel version and a hint', async () => {
    const root = await tree({ ...KERNEL_FILES, 'usr/bin/dracut': '#!/bin/sh\n' });
    const watch = await watchInitramfs(root);
    await put(root, 'etc/dracut.conf.d/x.conf', 'hostonly="no"\n');
    const { session } = fakeSession(() => ({ exitCode: 1 }), root);
    await expect(watch.regenerate(session, { log: capturingLog().log, index: 0 })).rejects.toMatchObject({
      code: 'STEP_FAILED',
      message: expect.stringContaining(`regenerating the initramfs of guest kernel ${GUEST_KERNEL}`),
    });
  });
});

describe('SELinux relabel', () => {
  test('parses /etc/selinux/config', () => {
    expect(parseSelinuxConfig('# comment\nSELINUX=enforcing\nSELINUXTYPE=default\n')).toEqual({ mode: 'enforcing', type: 'default' });
    expect(parseSelinuxConfig('SELINUX=Permissive\n')).toEqual({ mode: 'permissive', type: 'targeted' });
    expect(parseSelinuxConfig('# nothing\n')).toBeUndefined();
  });

  const roots: string[] = [];
  afterAll(async () => {
    for (const root of roots) await rm(root, { recursive: true, force: true });
  });
  const FILE_CONTEXTS = 'etc/selinux/targeted/contexts/files/file_contexts';
  async function selinuxGuest(config = 'SELINUX=enforcing\nSELINUXTYPE=targeted\n') {
    const root = await guestTree({ 'etc/selinux/config': config, [FILE_CONTEXTS]: '/etc(/.*)?\tsystem_u:object_r:etc_t:s0\n', 'etc/selinux/targeted/policy/policy.31': '', 'etc/selinux/targeted/policy/policy.33': '' });
    roots.push(root);
    const mounts: GuestMount[] = [
      { device: '/dev/loop0p3', path: '/', type: 'xfs', hostPath: root },
      { device: '/dev/loop0p2', path: '/boot', type: 'xfs', hostPath: join(root, 'boot') },
      { device: '/dev/loop0p1', path: '/boot/efi', type: 'vfat', hostPath: join(root, 'boot/efi') },
    ];
    return { root, layout: { root, mounts } };
  }

  test("the host's setfiles over the whole guest with copies of its own file_contexts (text only) and newest policy; the ESP excluded", async () => {
    const { root, layout } = await selinuxGuest();
    // Precompiled regular expressions that libselinux would load unchecked: never given to the host's setfiles.
    await writeFile(join(root, `${FILE_CONTEXTS}.bin`), 'crafted pcre2 bytecode');
    await writeFile(join(root, `${FILE_CONTEXTS}.local`), '/srv(/.*)?\tsystem_u:object_r:var_t:s0\n');
    await writeFile(join(root, 'etc/selinux/targeted/policy/policy.33'), 'policy 33');
    let copies: Record<string, string> = {};
    let filter = Buffer.alloc(0);
    const run = recordingRunner((call) => {
      const dir = dirname(call.args[call.args.lastIndexOf('-c') + 1]);
      copies = Object.fromEntries(readdirSync(dir).filter((name) => name !== 'seccomp.bpf').sort().map((name) => [name, readFileSync(join(dir, name), 'utf8')]));
      filter = readFileSync(join(dir, 'seccomp.bpf'));
      return {};
    });
    const { log, lines } = capturingLog();
    const entries = await relabelGuest({ run, log, layout, index: 5 });
    const { file, args, options } = run.calls[0];
    const copy = dirname(args[args.lastIndexOf('-c') + 1]);
    expect(copy.startsWith(root)).toBe(false);
    const setfiles = (await which('setfiles'))!;
    expect(args.slice(args.indexOf(setfiles))).toEqual([setfiles, '-m', '-r', root, '-c', join(copy, 'policy'), join(copy, 'file_contexts'), root, join(root, 'boot')]);
    // Confined: bwrap with the seccomp filter as fd 3, no network, the copies read-only and the guest writable,
    // root with only the capabilities labelling needs (setpriv empties the bounding set of the rest), a time limit.
    expect([file, ...args.slice(0, 5)]).toEqual(['/bin/sh', '-c', 'exec "$@" 3<"$0"', join(copy, 'seccomp.bpf'), 'bwrap', '--unshare-net']);
    // The host-tool profile: no ioctl but a terminal's.
    expect(filter.equals(seccompBytes(hostSeccompArch()!, 'host-tool'))).toBe(true);
    const pairs = args.map((arg, i) => `${arg} ${args[i + 1]}`);
    expect(pairs).toEqual(expect.arrayContaining(['--seccomp 3', '--cap-drop ALL', '--cap-add CAP_SYS_ADMIN', '--cap-add CAP_DAC_OVERRIDE', '--cap-add CAP_FOWNER', `--ro-bind ${copy}`, `--bind ${root}`, '--bounding-set -all,+sys_admin,+dac_override,+fowner']));
    expect(args.filter((arg) => arg === '--cap-add')).toHaveLength(4); // and CAP_SETPCAP, for setpriv alone
    expect(options.timeoutMs).toBeGreaterThan(0);
    expect(copies).toEqual({ file_contexts: '/etc(/.*)?\tsystem_u:object_r:etc_t:s0\n', 'file_contexts.local': '/srv(/.*)?\tsystem_u:object_r:var_t:s0\n', policy: 'policy 33' });
    expect(entries).toEqual([
      { index: 5, type: 'selinux-relabel', description: 'setfiles with /etc/selinux/targeted/contexts/files/file_contexts over /, /boot', durationMs: expect.any(Number) },
    ]);
    expect(lines.join('')).toMatch(/SELinux: relabelled \/, \/boot with the guest's targeted policy \(setfiles, \d+\.\ds\)/);
    expect(log.warnings).toEqual([]);
    await expect(stat(join(root, '.autorelabel'))).rejects.toThrow();
  });

  test('SELinux disabled or not configured: nothing runs', async () => {
    for (const config of ['SELINUX=disabled\nSELINUXTYPE=targeted\n', '']) {
      const { root, layout } = await selinuxGuest(config);
      const run = recordingRunner();
      expect(await relabelGuest({ run, log: capturingLog().log, layout, index: 0 })).toEqual([]);
      expect(run.calls).toEqual([]);
      await expect(stat(join(root, '.autorelabel'))).rejects.toThrow();
    }
  });

  test.each([
    ['setfiles is not installed', '/nonexistent', () => recordingRunner(), 'setfiles is not installed on the build host (Debian package policycoreutils)'],
    ['setfiles fails', undefined, () => recordingRunner(() => ({ exitCode: 255, output: 'libsepol.policydb_read: policydb version 35 does not match\n' })), 'setfiles exited with 255: libsepol.policydb_read: policydb version 35 does not match'],
  ])('%s: /.autorelabel and a warning that says why', async (_, path, runner, why) => {
    const { root, layout } = await selinuxGuest();
    const { log } = capturingLog();
    const hostPath = process.env.PATH;
    if (path) process.env.PATH = path;
    const run = runner();
    const entries = await relabelGuest({ run, log, layout, index: 2 }).finally(() => (process.env.PATH = hostPath));
    if (path) expect(run.calls).toEqual([]);
    expect(await readFile(join(root, '.autorelabel'), 'utf8')).toBe('');
    expect(log.warnings).toEqual([
      `SELinux is enforcing in the guest but its files could not be relabelled here: ${why}; created /.autorelabel, so the guest relabels itself at first boot (with one extra reboot)`,
    ]);
    expect(entries).toEqual([{ index: 2, type: 'selinux-relabel', description: `/.autorelabel: the guest relabels itself at first boot (${why})`, durationMs: expect.any(Number) }]);
  });

  test('a guest seen through guestmount, or without its policy type installed: /.autorelabel without running setfiles', async () => {
    const { root, layout } = await selinuxGuest();
    const run = recordingRunner();
    const { log } = capturingLog();
    await relabelGuest({ run, log, layout: { root, mounts: [{ device: 'work.qcow2', path: '/', type: 'guestmount', hostPath: root }] }, index: 0 });
    const other = await selinuxGuest('SELINUX=permissive\nSELINUXTYPE=mls\n');
    await relabelGuest({ run, log, layout: other.layout, index: 0 });
    expect(run.calls).toEqual([]);
    expect(await readFile(join(root, '.autorelabel'), 'utf8')).toBe('');
    expect(await readFile(join(other.root, '.autorelabel'), 'utf8')).toBe('');
    expect(log.warnings).toEqual([
      expect.stringContaining('the guest root is mounted through guestmount, which cannot set security.selinux'),
      expect.stringContaining('SELinux is permissive in the guest but its files could not be relabelled here: the guest has no /etc/selinux/mls/contexts/files/file_contexts'),
    ]);
  });
});
