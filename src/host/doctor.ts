import { readdir, readFile, statfs } from 'node:fs/promises';
import { release } from 'node:os';
import { dirname } from 'node:path';
import { findEmulator, REAL_HOST } from '../chroot/emulation.js';
import { ARCHITECTURES, programArchitecture } from '../util/architecture.js';
import { errorMessage, isImageBuilderError } from '../util/errors.js';
import type { ExecResult, Runner } from '../util/exec.js';
import { exists, which } from '../util/fs.js';
import { cachedKvmVerdict, kvmVerdictFile, probeKvm, probeTcg, type KvmVerdict } from '../util/libguestfs.js';
import type { Logger } from '../util/log.js';
import type { FoundBuild } from './reap.js';
import { HOST_TOOLS } from '../util/tools.js';
import { CACHE_DIR_HINT, cacheDirProblem } from '../util/lock.js';

/**
 * `imagebuilder doctor`: what this host can do, and for each gap what it costs and how to close it.
 * "Required" means what a default `imagebuilder apply` needs on the fuse backend (qemu-storage-daemon + loop),
 * the path that works on most hosts and in the container; everything else only narrows the choice or slows
 * a build down. The checks read the host through HostProbes, so unit tests can stage any host.
 */

/** ok; degraded: works, slower or with less choice; missing: does not work; unknown: not checked (would be slow). */
export type CheckStatus = 'ok' | 'degraded' | 'missing' | 'unknown';

export interface DoctorCheck {
  /** Stable, for scripts: root, dev-fuse, loop, dev-nodes, nbd, binfmt, libguestfs, space-work, space-cache, tool:NAME, dead-builds. */
  id: string;
  name: string;
  status: CheckStatus;
  /** Whether this gap, when not ok, breaks a default build (it makes doctor exit non-zero). */
  required: boolean;
  /** What was seen. */
  found: string;
  /** What the gap costs: the backend or feature lost, or how much slower. */
  cost?: string;
  fix?: string;
}

export interface DoctorReport {
  /** No required check is missing: a default build can run here. */
  ready: boolean;
  checks: DoctorCheck[];
}

/** How doctor sees the host; `hostProbes()` is the real one. */
export interface HostProbes {
  uid(): number;
  kernelRelease(): string;
  env(name: string): string | undefined;
  exists(path: string): Promise<boolean>;
  which(tool: string): Promise<string | undefined>;
  readText(path: string): Promise<string | undefined>;
  listDir(path: string): Promise<string[] | undefined>;
  /** Free bytes for unprivileged writers on the filesystem that holds `path`, and the directory measured. */
  freeSpace(path: string): Promise<{ bytes: number; measured: string } | undefined>;
  /** Why builds would refuse the cache directory (another user may write it), if they would (lock.ts cacheDirProblem). */
  cacheDirProblem(dir: string): string | undefined;
  run: Runner;
  cachedKvmVerdict(): Promise<KvmVerdict | undefined>;
  kvmVerdictFile(): string;
  /** Starts the libguestfs appliance under KVM (up to 60 s) and remembers the verdict. */
  probeKvm(): Promise<KvmVerdict>;
  /** Starts it under TCG: whether libguestfs works here at all. */
  probeTcg(): Promise<ExecResult>;
  /** For each architecture this host does not run natively: its static qemu-user emulator, if installed. */
  foreignEmulators(): Promise<{ qemu: string; path?: string; dynamic: string[] }[]>;
}

export interface DoctorOptions {
  /** Where builds make their work directories (IMAGEBUILDER_WORK_DIR, else the temp dir). */
  workDir: string;
  cacheDir: string;
  /** Start the libguestfs appliance to learn whether KVM and TCG work (slow); otherwise use the remembered verdict. */
  probeLibguestfs?: boolean;
  /** The registered builds (reap.ts findBuilds): dead ones left resources behind for `imagebuilder cleanup`. */
  builds?: () => Promise<FoundBuild[]>;
}

const GiB = 1024 ** 3;
/** A work dir holds the overlay (the build's changes) and virt-sparsify's temporary copy: a few GiB per build. */
export const WORK_SPACE = { minimum: 4 * GiB, recommended: 10 * GiB };
/** The cache holds verified base images (0.3–2 GiB each). */
export const CACHE_SPACE = { recommended: 5 * GiB };

const TCG_COST =
  'libguestfs runs its appliance under TCG (emulation): each start takes ~13 s instead of ~2 s, so virt-sparsify ' +
  'takes ~35 s (--sparsify fstrim: ~1 s) and a guestmount build ~120 s; the fuse and nbd backends are not affected';

export async function runDoctor(probes: HostProbes, options: DoctorOptions): Promise<DoctorReport> {
  const checks = [
    checkRoot(probes),
    await checkDevFuse(probes),
    await checkLoop(probes),
    await checkDevNodes(probes),
    await checkNbd(probes),
    await checkBinfmt(probes),
    await checkLibguestfs(probes, options.probeLibguestfs ?? false),
    await checkSpace(probes, 'space-work', 'work dir space', options.workDir, WORK_SPACE.recommended, WORK_SPACE.minimum),
    await checkSpace(probes, 'space-cache', 'cache dir space', options.cacheDir, CACHE_SPACE.recommended),
    checkCacheDir(probes, options.cacheDir),
    ...(await checkTools(probes)),
    ...(options.builds ? [checkDeadBuilds(await options.builds())] : []),
  ];
  return { ready: !checks.some((c) => c.required && c.status === 'missing'), checks };
}

/** Reported, not released: doctor only looks. */
export function checkDeadBuilds(builds: FoundBuild[]): DoctorCheck {
  const base = { id: 'dead-builds', name: 'killed builds', required: false };
  const dead = builds.filter((b) => !b.alive);
  const running = builds.length - dead.length;
  if (!dead.length) return { ...base, status: 'ok', found: `none${running ? ` (${running} build(s) running)` : ''}` };
  return {
    ...base, status: 'degraded',
    found: `${dead.length} build(s) whose process is gone: ${dead.map((b) => `${b.workDir} (pid ${b.pid})`).join(', ')}`,
    cost: 'what they held (mounts, loop devices, helper processes, disk space) stays taken until released',
    fix: 'imagebuilder cleanup (the next build also does it when it starts)',
  };
}

function checkRoot(probes: HostProbes): DoctorCheck {
  const uid = probes.uid();
  if (uid === 0) return { id: 'root', name: 'root', status: 'ok', required: true, found: 'running as root' };
  return {
    id: 'root', name: 'root', status: 'missing', required: true, found: `running as uid ${uid}`,
    cost: 'nothing works: loop devices, mounts and the chroot need root',
    fix: 'run as root (sudo imagebuilder …), or the container with --privileged',
  };
}

async function checkDevFuse(probes: HostProbes): Promise<DoctorCheck> {
  if (await probes.exists('/dev/fuse')) return { id: 'dev-fuse', name: '/dev/fuse', status: 'ok', required: true, found: 'present' };
  return {
    id: 'dev-fuse', name: '/dev/fuse', status: 'missing', required: true, found: '/dev/fuse does not exist',
    cost: 'the fuse backend (the default here) and the guestmount backend; only nbd is left, if its module is loaded',
    fix: 'modprobe fuse; in a container: --privileged (or --device /dev/fuse)',
  };
}

async function checkLoop(probes: HostProbes): Promise<DoctorCheck> {
  const base = { id: 'loop', name: 'loop devices', required: true };
  const cost = 'the fuse backend puts a loop device over its export: without one, only nbd or guestmount are left';
  if (!(await probes.exists('/dev/loop-control'))) {
    return { ...base, status: 'missing', found: '/dev/loop-control does not exist', cost, fix: 'modprobe loop; in a container: --privileged -v /dev:/dev' };
  }
  let free: ExecResult;
  try {
    free = await probes.run('losetup', ['--find'], { allowFailure: true });
  } catch (error) {
    if (isImageBuilderError(error) && error.code === 'MISSING_TOOL') return { ...base, status: 'missing', found: 'losetup is not installed', cost, fix: 'apt-get install mount' };
    throw error;
  }
  if (free.exitCode !== 0) {
    return { ...base, status: 'missing', found: `losetup --find failed: ${free.output.trim()}`, cost, fix: 'detach unused loop devices (losetup -a lists them), or raise max_loop' };
  }
  // When the kernel does not scan partitions of a loop device by itself (max_part=0), partx -a adds them.
  const maxPart = (await probes.readText('/sys/module/loop/parameters/max_part'))?.trim();
  const scan = maxPart === undefined || maxPart === '0'
    ? 'partitions are not scanned by the kernel here: partx -a adds them'
    : `the kernel scans up to ${maxPart} partitions`;
  return { ...base, status: 'ok', found: `next free: ${free.stdout.trim()}; ${scan}` };
}

/** The filesystem type mounted at /dev, from /proc/self/mountinfo ("… /dev … - devtmpfs …"). */
export function devFilesystem(mountinfo: string): string | undefined {
  let type: string | undefined;
  for (const line of mountinfo.split('\n')) {
    const [left, right] = line.split(' - ');
    if (!right) continue;
    if (left.split(' ')[4] === '/dev') type = right.split(' ')[0]; // the last mount on /dev is the visible one
  }
  return type;
}

async function checkDevNodes(probes: HostProbes): Promise<DoctorCheck> {
  const base = { id: 'dev-nodes', name: 'new device nodes', required: false };
  const type = devFilesystem((await probes.readText('/proc/self/mountinfo')) ?? '');
  if (type === 'devtmpfs') return { ...base, status: 'ok', found: '/dev is the kernel\'s devtmpfs: loop and partition nodes appear as the kernel adds them' };
  return {
    ...base, status: 'degraded', found: `/dev is ${type ?? 'not a mount'} (a container's private copy), not the kernel's devtmpfs`,
    cost: 'a loop device the kernel adds after the container started has no node here, so losetup fails once the loop devices copied at start are busy (partition nodes imagebuilder makes itself)',
    fix: 'run the container with -v /dev:/dev',
  };
}

async function checkNbd(probes: HostProbes): Promise<DoctorCheck> {
  const base = { id: 'nbd', name: 'nbd module', required: false };
  const cost = 'the nbd backend; auto uses the fuse backend instead, at the same native kernel speed';
  const devices = ((await probes.listDir('/sys/block')) ?? []).filter((name) => /^nbd\d+$/.test(name));
  if (devices.length) return { ...base, status: 'ok', found: `loaded, ${devices.length} devices` };
  if (await probes.exists('/sys/module/nbd')) {
    return { ...base, status: 'missing', found: 'loaded with nbds_max=0: no /dev/nbdN', cost, fix: 'rmmod nbd && modprobe nbd nbds_max=16 max_part=16' };
  }
  let available = false;
  try {
    available = (await probes.run('modprobe', ['--dry-run', '--quiet', 'nbd'], { allowFailure: true })).exitCode === 0;
  } catch (error) {
    if (!(isImageBuilderError(error) && error.code === 'MISSING_TOOL')) throw error;
  }
  return available
    ? { ...base, status: 'missing', found: 'available but not loaded', cost, fix: 'modprobe nbd max_part=16 (on the host, when in a container)' }
    : { ...base, status: 'missing', found: `not loaded, and no nbd module for kernel ${probes.kernelRelease()} here`, cost, fix: 'load it on the host (modprobe nbd max_part=16), or use a kernel built with CONFIG_BLK_DEV_NBD' };
}

const BINFMT = '/proc/sys/fs/binfmt_misc';

/**
 * Foreign guests (arm64 on amd64) run their programs under a static qemu-user emulator through binfmt_misc.
 * imagebuilder registers the emulator itself for a build (src/chroot/emulation.ts), mounting binfmt_misc
 * privately when the host has not: what it needs is the kernel's binfmt_misc, not disabled, and the emulators.
 */
async function checkBinfmt(probes: HostProbes): Promise<DoctorCheck> {
  const base = { id: 'binfmt', name: 'foreign architectures', required: false };
  const cost = 'guests of another architecture (arm64 on amd64 …) cannot run their package manager: their builds fail; native guests are not affected';
  if (!/\sbinfmt_misc$/m.test((await probes.readText('/proc/filesystems')) ?? '')) {
    return { ...base, status: 'missing', found: `kernel ${probes.kernelRelease()} has no binfmt_misc`, cost, fix: 'modprobe binfmt_misc (on the host, when in a container)' };
  }
  if ((await probes.readText(`${BINFMT}/status`))?.trim() === 'disabled') {
    return { ...base, status: 'missing', found: 'binfmt_misc is disabled', cost, fix: `echo 1 > ${BINFMT}/status` };
  }
  const emulators = await probes.foreignEmulators();
  const usable = emulators.filter((e) => e.path).map((e) => e.qemu);
  const dynamicOnly = emulators.filter((e) => !e.path && e.dynamic.length).map((e) => e.qemu);
  if (!usable.length) {
    return {
      ...base, status: 'missing',
      found: `binfmt_misc is there, but no static qemu-user emulator is installed${dynamicOnly.length ? ` (dynamically linked only: ${dynamicOnly.join(', ')}, which cannot start inside a guest)` : ''}`,
      cost, fix: 'apt-get install qemu-user-static (on Debian 13 it brings the static qemu-user)',
    };
  }
  return { ...base, status: 'ok', found: `static emulators: ${usable.join(', ')} (registered with binfmt_misc for a build when the host has not)` };
}

async function checkLibguestfs(probes: HostProbes, probe: boolean): Promise<DoctorCheck> {
  const base = { id: 'libguestfs', name: 'libguestfs KVM', required: false };
  const settings = probes.env('LIBGUESTFS_BACKEND_SETTINGS');
  const hasKvm = await probes.exists('/dev/kvm');
  let kvm: KvmVerdict | 'absent' | 'yours' | undefined;
  if (settings !== undefined) kvm = 'yours';
  else if (!hasKvm) kvm = 'absent';
  else kvm = probe ? await probes.probeKvm() : await probes.cachedKvmVerdict();

  // Probing goes on to TCG when KVM does not serve: if that fails too, libguestfs does not work at all.
  if (probe && kvm !== 'works' && !(kvm === 'yours' && !settings?.includes('force_tcg'))) {
    const tcg = await probes.probeTcg();
    if (tcg.exitCode !== 0) {
      return {
        ...base, status: 'missing', required: true,
        found: `the appliance does not start, even under TCG: ${tcg.output.trim().split('\n').pop() ?? ''}`,
        cost: 'virt-sparsify (the default sparsify uses it for filesystems this host cannot mount) and the guestmount backend fail; --sparsify fstrim and the fuse backend need no appliance',
        fix: 'run libguestfs-test-tool to see why; the appliance boots the kernel in /boot (apt-get install linux-image-$(dpkg --print-architecture))',
      };
    }
  }
  switch (kvm) {
    case 'works':
      return { ...base, status: 'ok', found: `the appliance starts under KVM${probe ? '' : ` (remembered in ${probes.kvmVerdictFile()})`}` };
    case 'yours':
      return settings?.includes('force_tcg')
        ? { ...base, status: 'degraded', found: `LIBGUESTFS_BACKEND_SETTINGS=${settings} (yours)`, cost: TCG_COST, fix: 'unset LIBGUESTFS_BACKEND_SETTINGS where KVM works' }
        : { ...base, status: 'ok', found: `LIBGUESTFS_BACKEND_SETTINGS=${settings} (yours, used as is)` };
    case 'absent':
      return { ...base, status: 'degraded', found: 'no /dev/kvm', cost: TCG_COST, fix: 'enable (nested) virtualisation for this machine; in a container, --privileged passes /dev/kvm' };
    case 'broken':
      return {
        ...base, status: 'degraded', found: `/dev/kvm is present but the appliance does not start under KVM (nested virtualisation?)${probe ? '' : `; remembered in ${probes.kvmVerdictFile()}`}`,
        cost: TCG_COST, fix: `enable nested KVM on the hypervisor, then delete ${probes.kvmVerdictFile()}; or avoid the appliance: fuse backend and --sparsify fstrim`,
      };
    default:
      return {
        ...base, status: 'unknown', found: '/dev/kvm is present; whether the appliance can use it is not known yet',
        cost: 'none yet: the first build that starts the appliance probes it once (up to 60 s) and falls back to TCG if needed',
        fix: 'imagebuilder doctor --probe-libguestfs (starts the appliance: up to 60 s under KVM, ~15 s more under TCG)',
      };
  }
}

const gib = (bytes: number) => `${(bytes / GiB).toFixed(1)} GiB`;

async function checkSpace(probes: HostProbes, id: string, name: string, dir: string, recommended: number, minimum?: number): Promise<DoctorCheck> {
  const required = minimum !== undefined;
  const space = await probes.freeSpace(dir);
  const what = id === 'space-work' ? 'builds (the work overlay and virt-sparsify\'s temporary copy)' : 'cached base images (URLs are downloaded there once)';
  const fix = id === 'space-work' ? `free space there, or point IMAGEBUILDER_WORK_DIR at a larger disk` : 'imagebuilder cache prune, or point IMAGEBUILDER_CACHE at a larger disk';
  if (!space) return { id, name, status: 'unknown', required: false, found: `cannot measure the free space of ${dir}` };
  const found = `${gib(space.bytes)} free in ${dir}${space.measured !== dir ? ` (measured at ${space.measured}, it does not exist yet)` : ''}`;
  if (minimum !== undefined && space.bytes < minimum) return { id, name, status: 'missing', required, found, cost: `${what}: a build needs at least ${gib(minimum)}`, fix };
  if (space.bytes < recommended) return { id, name, status: 'degraded', required, found, cost: `${what}: large images may not fit (${gib(recommended)} recommended)`, fix };
  return { id, name, status: 'ok', required, found };
}

function checkCacheDir(probes: HostProbes, dir: string): DoctorCheck {
  const base = { id: 'cache-dir', name: 'cache dir owner', required: true };
  let problem: string | undefined;
  try {
    problem = probes.cacheDirProblem(dir);
  } catch (error) {
    problem = errorMessage(error);
  }
  if (!problem) return { ...base, status: 'ok', found: `${dir}: this user's own, or made so by the first build` };
  return { ...base, status: 'missing', found: `${dir}: ${problem}`, cost: 'every command that uses the cache refuses it: another user could have planted images or layers there', fix: CACHE_DIR_HINT };
}

async function checkTools(probes: HostProbes): Promise<DoctorCheck[]> {
  const checks: DoctorCheck[] = [];
  for (const [tool, entry] of Object.entries(HOST_TOOLS)) {
    const path = await probes.which(tool);
    const base = { id: `tool:${tool}`, name: tool, required: entry.required };
    if (path) checks.push({ ...base, status: 'ok', found: path });
    else {
      checks.push({
        ...base, status: 'missing', found: 'not on PATH', cost: entry.neededBy,
        fix: `apt-get install ${entry.package}${entry.bookwormPackage ? ` (Debian 12: ${entry.bookwormPackage})` : ''}`,
      });
    }
  }
  return checks;
}

/** The real host. */
export function hostProbes(run: Runner, log: Logger, cacheDir: string): HostProbes {
  return {
    uid: () => process.getuid?.() ?? -1,
    kernelRelease: () => release(),
    env: (name) => process.env[name],
    exists,
    which,
    readText: (path) => readFile(path, 'utf8').catch(() => undefined),
    listDir: (path) => readdir(path).catch(() => undefined),
    async freeSpace(path) {
      // A directory that does not exist yet will be made on its nearest existing ancestor's filesystem.
      for (let dir = path; ; dir = dirname(dir)) {
        const stats = await statfs(dir).catch(() => undefined);
        if (stats) return { bytes: stats.bavail * stats.bsize, measured: dir };
        if (dir === dirname(dir)) return undefined;
      }
    },
    cacheDirProblem,
    run,
    cachedKvmVerdict: () => cachedKvmVerdict(cacheDir),
    kvmVerdictFile: () => kvmVerdictFile(cacheDir),
    probeKvm: () => probeKvm(run, log, cacheDir),
    probeTcg: () => probeTcg(run, log),
    async foreignEmulators() {
      const native = (await programArchitecture('/'))?.architecture?.qemu;
      // (An amd64 host runs i386 programs itself.)
      const names = [...new Set(ARCHITECTURES.map((a) => a.qemu))].filter((qemu) => qemu !== native && !(native === 'x86_64' && qemu === 'i386'));
      return Promise.all(names.map(async (qemu) => ({ qemu, ...(await findEmulator(ARCHITECTURES.find((a) => a.qemu === qemu)!, REAL_HOST)) })));
    },
  };
}
