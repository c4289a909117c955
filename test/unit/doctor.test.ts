import { devFilesystem, runDoctor, type DoctorCheck, type HostProbes } from '../../src/host/doctor.js';
import { recordingRunner, type ExecResult, type RecordedCall } from '../../src/util/exec.js';
import { ImageBuilderError } from '../../src/util/errors.js';
import { HOST_TOOLS } from '../../src/util/tools.js';

const GiB = 1024 ** 3;
const DEVTMPFS_MOUNTINFO = '22 1 0:5 / /dev rw,nosuid shared:2 - devtmpfs udev rw,size=8000k\n';
const CONTAINER_MOUNTINFO = '500 499 0:60 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755\n';
const FILESYSTEMS = 'nodev\tsysfs\nnodev\tproc\nnodev\tbinfmt_misc\n\text4\n';
type Emulators = { qemu: string; path?: string; dynamic: string[] }[];
const EMULATORS: Emulators = [
  { qemu: 'aarch64', path: '/usr/bin/qemu-aarch64-static', dynamic: [] },
  { qemu: 's390x', path: '/usr/bin/qemu-s390x-static', dynamic: [] },
  { qemu: 'riscv64', dynamic: [] },
];

/** A staged host: by default one where everything works; each test breaks what it is about. */
function stagedHost(overrides: {
  uid?: number;
  files?: Record<string, string>;
  /** Paths of the healthy host that this one lacks (prefixes). */
  absent?: string[];
  dirs?: Record<string, string[]>;
  missingTools?: string[];
  freeBytes?: Record<string, number>;
  cacheDirProblem?: string;
  answer?: (call: RecordedCall) => Partial<ExecResult> | undefined;
  kvmVerdict?: 'works' | 'broken';
  probedKvm?: 'works' | 'broken';
  tcgWorks?: boolean;
  env?: Record<string, string>;
  emulators?: Emulators;
} = {}) {
  const files: Record<string, string> = {
    '/dev/fuse': '', '/dev/loop-control': '', '/dev/kvm': '', '/sys/module/loop/parameters/max_part': '0\n',
    '/proc/self/mountinfo': DEVTMPFS_MOUNTINFO, '/proc/filesystems': FILESYSTEMS, '/sys/module/nbd': '',
    ...overrides.files,
  };
  for (const path of Object.keys(files)) if (overrides.absent?.some((prefix) => path.startsWith(prefix))) delete files[path];
  const dirs: Record<string, string[]> = {
    '/sys/block': ['loop0', 'nbd0', 'nbd1', 'vda'],
    ...overrides.dirs,
  };
  const run = recordingRunner((call) => {
    const answer = overrides.answer?.(call);
    if (answer) return answer;
    if (call.file === 'losetup') return { stdout: '/dev/loop3\n' };
    return undefined;
  });
  const probed: string[] = [];
  const probes: HostProbes = {
    uid: () => overrides.uid ?? 0,
    kernelRelease: () => '6.1.0-test',
    env: (name) => overrides.env?.[name],
    exists: async (path) => path in files,
    which: async (tool) => (overrides.missingTools?.includes(tool) ? undefined : `/usr/bin/${tool}`),
    readText: async (path) => files[path],
    listDir: async (path) => dirs[path],
    freeSpace: async (path) => ({ bytes: overrides.freeBytes?.[path] ?? 50 * GiB, measured: path }),
    cacheDirProblem: (dir) => (dir === '/cache' ? overrides.cacheDirProblem : 'not the cache directory doctor was given'),
    run,
    cachedKvmVerdict: async () => overrides.kvmVerdict,
    kvmVerdictFile: () => '/cache/libguestfs-kvm-6.1.0-test',
    probeKvm: async () => {
      probed.push('kvm');
      return overrides.probedKvm ?? 'works';
    },
    probeTcg: async () => {
      probed.push('tcg');
      const ok = overrides.tcgWorks ?? true;
      return { command: 'guestfish', exitCode: ok ? 0 : 1, stdout: '', stderr: '', output: ok ? '' : 'libguestfs: error: /usr/bin/supermin exited with error status 1\n' };
    },
    foreignEmulators: async () => overrides.emulators ?? EMULATORS,
  };
  return { probes, run, probed };
}

const options = { workDir: '/var/tmp', cacheDir: '/cache' };
const byId = (checks: DoctorCheck[], id: string) => {
  const check = checks.find((c) => c.id === id);
  if (!check) throw new Error(`no check ${id}`);
  return check;
};

describe('imagebuilder doctor: verdicts', () => {
  test('a host where everything works: ready, every check ok, no appliance started', async () => {
    const host = stagedHost({ kvmVerdict: 'works' });
    const report = await runDoctor(host.probes, options);
    expect(report.ready).toBe(true);
    expect(report.checks.filter((c) => c.status !== 'ok')).toEqual([]);
    expect(byId(report.checks, 'loop').found).toBe('next free: /dev/loop3; partitions are not scanned by the kernel here: partx -a adds them');
    expect(byId(report.checks, 'nbd').found).toBe('loaded, 2 devices');
    expect(byId(report.checks, 'binfmt').found).toBe('static emulators: aarch64, s390x (registered with binfmt_misc for a build when the host has not)');
    expect(host.probed).toEqual([]);
    // Exactly one host command: losetup --find (no module loaded, nothing attached).
    expect(host.run.calls.map((c) => [c.file, ...c.args])).toEqual([['losetup', '--find']]);
    // One tool check per entry of the tool table.
    expect(report.checks.filter((c) => c.id.startsWith('tool:')).map((c) => c.name)).toEqual(Object.keys(HOST_TOOLS));
  });

  test('not root: required, not ready', async () => {
    const report = await runDoctor(stagedHost({ uid: 1000 }).probes, options);
    expect(byId(report.checks, 'root')).toMatchObject({ status: 'missing', required: true, found: 'running as uid 1000' });
    expect(report.ready).toBe(false);
  });

  test('no /dev/fuse: required (the fuse backend), with the container fix', async () => {
    const report = await runDoctor(stagedHost({ absent: ['/dev/fuse'] }).probes, options);
    expect(byId(report.checks, 'dev-fuse')).toMatchObject({ status: 'missing', required: true });
    expect(byId(report.checks, 'dev-fuse').fix).toContain('--device /dev/fuse');
    expect(report.ready).toBe(false);
  });

  test('losetup --find failing: loop missing, with its output', async () => {
    const host = stagedHost({ answer: (c) => (c.file === 'losetup' ? { exitCode: 1, output: 'losetup: cannot find an unused loop device\n' } : undefined) });
    const report = await runDoctor(host.probes, options);
    expect(byId(report.checks, 'loop')).toMatchObject({ status: 'missing', required: true, found: 'losetup --find failed: losetup: cannot find an unused loop device' });
    expect(report.ready).toBe(false);
  });

  test('losetup not installed: loop missing with the package, not a crash', async () => {
    const host = stagedHost({
      missingTools: ['losetup'],
      answer: (c) => {
        if (c.file === 'losetup') throw new ImageBuilderError('MISSING_TOOL', 'losetup is not installed');
        return undefined;
      },
    });
    const report = await runDoctor(host.probes, options);
    expect(byId(report.checks, 'loop')).toMatchObject({ status: 'missing', found: 'losetup is not installed', fix: 'apt-get install mount' });
    expect(byId(report.checks, 'tool:losetup')).toMatchObject({ status: 'missing', required: true, fix: 'apt-get install mount' });
  });

  test("a container's private /dev: degraded, fixed by -v /dev:/dev; still ready", async () => {
    const report = await runDoctor(stagedHost({ files: { '/proc/self/mountinfo': CONTAINER_MOUNTINFO } }).probes, options);
    expect(byId(report.checks, 'dev-nodes')).toMatchObject({ status: 'degraded', required: false, fix: 'run the container with -v /dev:/dev' });
    expect(byId(report.checks, 'dev-nodes').found).toContain('/dev is tmpfs');
    expect(report.ready).toBe(true);
  });

  test('no nbd module for this kernel: missing but optional, the fuse backend named as the way out', async () => {
    const host = stagedHost({ dirs: { '/sys/block': ['loop0', 'vda'] }, absent: ['/sys/module/nbd'], answer: (c) => (c.file === 'modprobe' ? { exitCode: 1 } : undefined) });
    const report = await runDoctor(host.probes, options);
    const nbd = byId(report.checks, 'nbd');
    expect(nbd).toMatchObject({ status: 'missing', required: false, found: 'not loaded, and no nbd module for kernel 6.1.0-test here' });
    expect(nbd.cost).toContain('fuse backend');
    expect(host.run.calls.find((c) => c.file === 'modprobe')?.args).toEqual(['--dry-run', '--quiet', 'nbd']);
    expect(report.ready).toBe(true);
  });

  test('nbd module available but not loaded: the modprobe line', async () => {
    const report = await runDoctor(stagedHost({ dirs: { '/sys/block': ['vda'] }, absent: ['/sys/module/nbd'] }).probes, options);
    expect(byId(report.checks, 'nbd')).toMatchObject({ status: 'missing', found: 'available but not loaded', fix: 'modprobe nbd max_part=16 (on the host, when in a container)' });
  });

  test('foreign architectures: no binfmt_misc in the kernel, disabled, or no static emulator', async () => {
    let report = await runDoctor(stagedHost({ files: { '/proc/filesystems': 'nodev\tproc\n\text4\n' } }).probes, options);
    expect(byId(report.checks, 'binfmt')).toMatchObject({ status: 'missing', required: false, found: 'kernel 6.1.0-test has no binfmt_misc' });
    expect(byId(report.checks, 'binfmt').cost).toContain('another architecture');
    expect(report.ready).toBe(true);

    report = await runDoctor(stagedHost({ files: { '/proc/sys/fs/binfmt_misc/status': 'disabled\n' } }).probes, options);
    expect(byId(report.checks, 'binfmt')).toMatchObject({ status: 'missing', found: 'binfmt_misc is disabled', fix: 'echo 1 > /proc/sys/fs/binfmt_misc/status' });

    report = await runDoctor(stagedHost({ emulators: [{ qemu: 'aarch64', dynamic: ['/usr/bin/qemu-aarch64'] }, { qemu: 'riscv64', dynamic: [] }] }).probes, options);
    expect(byId(report.checks, 'binfmt')).toMatchObject({
      status: 'missing',
      found: 'binfmt_misc is there, but no static qemu-user emulator is installed (dynamically linked only: aarch64, which cannot start inside a guest)',
      fix: expect.stringContaining('qemu-user-static'),
    });
  });

  test('KVM: remembered broken is degraded with the TCG cost; never probed is unknown and starts nothing', async () => {
    const broken = stagedHost({ kvmVerdict: 'broken' });
    let report = await runDoctor(broken.probes, options);
    const check = byId(report.checks, 'libguestfs');
    expect(check).toMatchObject({ status: 'degraded', required: false });
    expect(check.found).toContain('remembered in /cache/libguestfs-kvm-6.1.0-test');
    expect(check.cost).toContain('~13 s instead of ~2 s');
    expect(broken.probed).toEqual([]);
    expect(report.ready).toBe(true);

    const unprobed = stagedHost();
    report = await runDoctor(unprobed.probes, options);
    expect(byId(report.checks, 'libguestfs')).toMatchObject({ status: 'unknown', fix: expect.stringContaining('--probe-libguestfs') });
    expect(unprobed.probed).toEqual([]);
  });

  test('--probe-libguestfs: KVM first, TCG only when KVM fails; an appliance that never starts is required', async () => {
    const works = stagedHost({ probedKvm: 'works' });
    expect(byId((await runDoctor(works.probes, { ...options, probeLibguestfs: true })).checks, 'libguestfs').status).toBe('ok');
    expect(works.probed).toEqual(['kvm']);

    const tcgOnly = stagedHost({ probedKvm: 'broken' });
    expect(byId((await runDoctor(tcgOnly.probes, { ...options, probeLibguestfs: true })).checks, 'libguestfs').status).toBe('degraded');
    expect(tcgOnly.probed).toEqual(['kvm', 'tcg']);

    const dead = stagedHost({ probedKvm: 'broken', tcgWorks: false });
    const report = await runDoctor(dead.probes, { ...options, probeLibguestfs: true });
    expect(byId(report.checks, 'libguestfs')).toMatchObject({ status: 'missing', required: true });
    expect(byId(report.checks, 'libguestfs').found).toContain('supermin exited with error status 1');
    expect(report.ready).toBe(false);
  });

  test('no /dev/kvm is TCG without a probe; the user\'s LIBGUESTFS_BACKEND_SETTINGS is taken as is', async () => {
    const host = stagedHost({ absent: ['/dev/kvm'] });
    let report = await runDoctor(host.probes, { ...options, probeLibguestfs: true });
    expect(byId(report.checks, 'libguestfs')).toMatchObject({ status: 'degraded', found: 'no /dev/kvm' });
    expect(host.probed).toEqual(['tcg']);

    report = await runDoctor(stagedHost({ env: { LIBGUESTFS_BACKEND_SETTINGS: 'force_tcg' } }).probes, options);
    expect(byId(report.checks, 'libguestfs')).toMatchObject({ status: 'degraded', found: 'LIBGUESTFS_BACKEND_SETTINGS=force_tcg (yours)' });
  });

  test('free space: the work dir below its minimum is required, the cache dir only ever degraded', async () => {
    const report = await runDoctor(stagedHost({ freeBytes: { '/var/tmp': 3 * GiB, '/cache': 1 * GiB } }).probes, options);
    expect(byId(report.checks, 'space-work')).toMatchObject({ status: 'missing', required: true, found: '3.0 GiB free in /var/tmp' });
    expect(byId(report.checks, 'space-cache')).toMatchObject({ status: 'degraded', required: false });
    expect(report.ready).toBe(false);
    const low = await runDoctor(stagedHost({ freeBytes: { '/var/tmp': 6 * GiB } }).probes, options);
    expect(byId(low.checks, 'space-work').status).toBe('degraded');
    expect(low.ready).toBe(true);
  });

  test("a cache directory another user may write: required, with the fix; an unreadable one says why", async () => {
    const report = await runDoctor(stagedHost({ cacheDirProblem: 'it belongs to uid 1000, not to this user (uid 0)' }).probes, options);
    expect(byId(report.checks, 'cache-dir')).toMatchObject({ status: 'missing', required: true, found: '/cache: it belongs to uid 1000, not to this user (uid 0)' });
    expect(byId(report.checks, 'cache-dir').fix).toMatch(/chmod go-w/);
    expect(report.ready).toBe(false);
    const probes = stagedHost().probes;
    const broken = await runDoctor({ ...probes, cacheDirProblem: () => { throw new Error('EACCES: permission denied'); } }, options);
    expect(byId(broken.checks, 'cache-dir')).toMatchObject({ status: 'missing', found: '/cache: EACCES: permission denied' });
  });

  test('tools: a missing required tool fails the report with its package; a missing optional one does not', async () => {
    let report = await runDoctor(stagedHost({ missingTools: ['qemu-storage-daemon'] }).probes, options);
    expect(byId(report.checks, 'tool:qemu-storage-daemon')).toMatchObject({
      status: 'missing', required: true, cost: 'the fuse mount backend', fix: 'apt-get install qemu-utils (Debian 12: qemu-system-common)',
    });
    expect(report.ready).toBe(false);
    report = await runDoctor(stagedHost({ missingTools: ['qemu-nbd', 'rpm'] }).probes, options);
    expect(byId(report.checks, 'tool:rpm')).toMatchObject({ status: 'missing', required: false, fix: 'apt-get install rpm' });
    expect(report.ready).toBe(true);
  });

  test('builds killed without releasing what they held: degraded, with cleanup as the fix; running ones are fine', async () => {
    const build = (pid: number, alive: boolean) => ({ id: `${pid}`.padStart(16, '0'), workDir: `/var/tmp/imagebuilder-${pid}`, pid, startTime: 1, alive });
    let report = await runDoctor(stagedHost().probes, { ...options, builds: async () => [build(10, true)] });
    expect(byId(report.checks, 'dead-builds')).toMatchObject({ status: 'ok', found: 'none (1 build(s) running)' });
    report = await runDoctor(stagedHost().probes, { ...options, builds: async () => [build(10, true), build(11, false)] });
    expect(byId(report.checks, 'dead-builds')).toMatchObject({
      status: 'degraded', required: false, found: '1 build(s) whose process is gone: /var/tmp/imagebuilder-11 (pid 11)', fix: expect.stringContaining('imagebuilder cleanup'),
    });
    expect(report.ready).toBe(true);
  });
});

describe('devFilesystem', () => {
  test('the last mount on /dev wins; other mount points are ignored', () => {
    expect(devFilesystem(DEVTMPFS_MOUNTINFO)).toBe('devtmpfs');
    expect(devFilesystem(`${DEVTMPFS_MOUNTINFO}${CONTAINER_MOUNTINFO}30 22 0:6 / /dev/pts rw - devpts devpts rw\n`)).toBe('tmpfs');
    expect(devFilesystem('30 22 0:6 / /dev/pts rw - devpts devpts rw\n')).toBeUndefined();
  });
});
