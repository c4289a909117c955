import { constants } from 'node:fs';
import { lstat, open, readdir, readFile, rename, rm, rmdir } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { listPartitions } from '../mount/block.js';
import { NBD_LOCK } from '../mount/nbd.js';
import { BOX_UID_LOCK } from '../util/box-uid.js';
import { removeFreeLocks } from '../util/lock.js';
import { OWN_ENTRY_PREFIX } from '../chroot/emulation.js';
import { cgroupMembers, SANDBOX_STATE_PREFIX } from '../chroot/sandbox.js';
import { tmpdir } from 'node:os';
import { isInside } from '../util/guest-fs.js';
import { isMounted, mountTable } from '../util/mounts.js';
import { currentOwner, ownerAlive, readJson, RECORD_FILE, registryDir, type BuildOwner, type BuildRecord, type Holding, type RegistryEntry } from '../util/build-record.js';
import { errorMessage } from '../util/errors.js';
import type { Runner } from '../util/exec.js';
import { exists, sleep } from '../util/fs.js';
import type { Logger } from '../util/log.js';
import { DETACHED_EXPORT, loopBackingFile, loopsBackedBy } from '../util/loops.js';
import { abortFuseConnection, fuseControlDir, visibleFuseConnections } from '../util/fuse-connections.js';
import { killAll, otherProcesses, processArgv, processesMentioning, processRoot, stillExiting } from '../util/processes.js';

/**
 * Releases what builds killed by SIGKILL (the OOM killer, a CI timeout, a preempted pod) left on the host. A
 * dead build is found in the registry (or, after a reboot emptied /run, by the record in a work directory), and
 * everything it held is found from its work directory's path — processes naming it or chrooted in it, mounts
 * under it, loop devices backed by a file in it — or from its record, each checked against the host first. A
 * build whose process is alive is never touched: its resources all name its own work directory.
 */

export interface FoundBuild extends BuildOwner {
  id: string;
  workDir: string;
  command?: string;
  createdAt?: string;
  alive: boolean;
}

/** What a dead build still holds on this host (dry run), or what was released (reap). */
export interface Leftovers {
  processes: number[];
  mounts: string[];
  loops: string[];
  nbd: string[];
  nodes: string[];
  binfmt: string[];
  binfmtMounts: string[];
  /** The guest-command sandbox's state directory (its network namespace inside) and cgroups, named after the build's pid. */
  sandbox: string[];
  files: string[];
  /** FUSE connections of its exports whose daemon is stuck exiting (stuckExportsOf), aborted first. */
  stuckExports: number[];
  workDir: boolean;
}

export interface ReapedBuild extends FoundBuild {
  leftovers: Leftovers;
  /** Releases that failed (the build stays registered, so a later cleanup tries again). */
  failures: string[];
}

export interface CleanupReport {
  dryRun: boolean;
  /** Builds whose process is gone: reaped, or with --dry-run what each holds. */
  dead: ReapedBuild[];
  /** Builds still running: untouched. */
  live: FoundBuild[];
  /** With `locks`: the claim files (nbd devices, box uids) no live process held, removed (or, dry run, found). */
  freedLocks?: string[];
}

export interface ReapOptions {
  run: Runner;
  log: Logger;
  /** Work directory parents to scan for records of dead builds the registry no longer lists (after a reboot). */
  workDirParents?: string[];
  /** Only report. */
  dryRun?: boolean;
  /** Where builds register (default /run/imagebuilder). */
  runDir?: string;
  /** The FUSE control filesystem's directory (default: the host's, or one mounted for the abort). Tests. */
  fuseControl?: string;
  /**
   * Also remove the claim files of nbd devices and box uids that no live process holds, in this directory
   * (`imagebuilder cleanup`: HOST_LOCK_DIR). A build does not: each file costs a flock, and a claim takes a stale
   * one over anyway.
   */
  locks?: string;
}

const ID = /^[0-9a-f]{16}$/;
export const WORK_DIR_PREFIX = 'imagebuilder-';

/** A claim on a dead build's file: renamed, so of two reapers only one gets it; a dead reaper's claim can be retaken. */
const CLAIM = /^(.*)\.reaping-(\d+)-(\d+)$/;

async function claim(path: string): Promise<string | undefined> {
  const me = currentOwner();
  const claimed = `${path.replace(CLAIM, '$1')}.reaping-${me.pid}-${me.startTime}`;
  return (await rename(path, claimed).then(() => true, () => false)) ? claimed : undefined;
}

/** A file's claim by a reaper still at work. */
function claimedByLiveReaper(name: string): boolean {
  const match = CLAIM.exec(name);
  return !!match && ownerAlive({ pid: Number(match[2]), startTime: Number(match[3]) });
}

interface Candidate {
  found: FoundBuild;
  /** The registry file (or, for a build found only by its work directory, its record). */
  file: string;
  record?: BuildRecord;
}

/**
 * A work directory and record that a build of ours made: owned by us, not writable by others, no symlinks. Work
 * directories may lie in the shared temp directory, where anyone could plant a record naming what we would
 * then release as root.
 */
async function ours(workDir: string, recordFile: string): Promise<boolean> {
  const dir = await lstat(workDir).catch(() => undefined);
  const file = await lstat(recordFile).catch(() => undefined);
  const me = process.geteuid?.();
  return !!dir?.isDirectory() && dir.uid === me && (dir.mode & 0o022) === 0 && !!file?.isFile() && file.uid === me;
}

async function candidates(workDirParents: string[], runDir?: string): Promise<Candidate[]> {
  const found: Candidate[] = [];
  const seen = new Set<string>();
  const dir = registryDir(runDir);
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    if (!/\.json($|\.reaping-)/.test(name) || claimedByLiveReaper(name)) continue;
    const entry = await readJson<RegistryEntry>(join(dir, name));
    if (!entry || !ID.test(entry.id) || typeof entry.workDir !== 'string') continue;
    const record = (await ours(entry.workDir, join(entry.workDir, RECORD_FILE))) ? await readJson<BuildRecord>(join(entry.workDir, RECORD_FILE)) : undefined;
    seen.add(entry.workDir);
    found.push({ file: join(dir, name), record, found: describe(entry, record) });
  }
  for (const parent of workDirParents) {
    for (const name of await readdir(parent).catch(() => [] as string[])) {
      const workDir = join(parent, name);
      if (!name.startsWith(WORK_DIR_PREFIX) || !ID.test(name.slice(WORK_DIR_PREFIX.length)) || seen.has(workDir)) continue;
      const files = await readdir(workDir).catch(() => [] as string[]);
      const recordName = files.find((file) => file === RECORD_FILE || file.startsWith(`${RECORD_FILE}.reaping-`));
      if (!recordName || claimedByLiveReaper(recordName) || !(await ours(workDir, join(workDir, recordName)))) continue;
      const record = await readJson<BuildRecord>(join(workDir, recordName));
      if (!record || record.workDir !== workDir) continue;
      found.push({ file: join(workDir, recordName), record, found: describe(record, record) });
    }
  }
  return found;
}

function describe(entry: RegistryEntry, record: BuildRecord | undefined): FoundBuild {
  return {
    id: entry.id,
    workDir: entry.workDir,
    pid: entry.pid,
    startTime: entry.startTime,
    ...(entry.pidNamespace ? { pidNamespace: entry.pidNamespace } : {}),
    ...(record?.command ? { command: record.command } : {}),
    ...(record?.createdAt ? { createdAt: record.createdAt } : {}),
    alive: ownerAlive(entry),
  };
}

/** Every registered build, live or dead: what `doctor` reports. */
export async function findBuilds(workDirParents: string[] = [], runDir?: string): Promise<FoundBuild[]> {
  return (await candidates(workDirParents, runDir)).map((c) => c.found);
}

/** Processes started for the build: chrooted into its guest, or naming a path in its work directory. */
async function processesOf(workDir: string, helpers: boolean): Promise<number[]> {
  const pids: number[] = [];
  for (const { pid, argv: args } of await otherProcesses()) {
    const root = processRoot(pid);
    const argv = args.split('\0');
    const names = argv.some((arg) => arg.includes(`${workDir}/`) || arg.endsWith(workDir));
    // The helpers serving the disk go last, once nothing is mounted from it.
    const helper = /^(qemu-storage-daemon|qemu-nbd|guestmount)$/.test(basename(argv[0] ?? ''));
    if ((root && root !== '/' && isInside(workDir, root)) || (names && (helpers || !helper))) pids.push(pid);
  }
  return pids;
}

/** Mount points under the work directory, deepest first; with `types`, only filesystems of those types. */
async function mountsIn(workDir: string, types?: Set<string>): Promise<string[]> {
  return (await mountTable())
    .filter((mount) => isInside(workDir, mount.target) && (!types || types.has(mount.type)))
    .map((mount) => mount.target)
    .sort((a, b) => b.length - a.length);
}

/** A build killed during a step-cache snapshot left its guest's filesystems frozen: umount would wait on them. */
const FREEZABLE = new Set(['ext2', 'ext3', 'ext4', 'xfs', 'btrfs']);

/**
 * Loop devices whose backing file is in the work directory (the fuse backend's export), and those the build
 * noted whose export's mount died with a mount namespace of its own: no live file can be behind those.
 */
async function loopsOf(workDir: string, holdings: Holding[]): Promise<string[]> {
  const loops = await loopsBackedBy(workDir);
  for (const holding of holdings) {
    if (holding.kind === 'loop' && !loops.includes(holding.device) && (await loopBackingFile(holding.device)) === DETACHED_EXPORT) loops.push(holding.device);
  }
  return loops;
}

type ExportHolding = Extract<Holding, { kind: 'fuse-export' }>;

/**
 * A build killed in a mount namespace of its own (a container, `unshare -m`) can leave its export's daemon the
 * last process of that namespace. The namespace then goes in the daemon's own exit, unmounting the guest's
 * filesystems, whose last writes go through the loop device to the export that only this exiting daemon could
 * serve: the kernel waits forever, and so would partx and losetup on that loop device. Aborting the FUSE
 * connection (which the daemon's exit would do a moment later) fails those writes instead. `abort`: the
 * connections of daemons still part-way through exiting; `blocked`: such connections whose number a live
 * build's export or a mount we can see has now, which are never aborted (the loop device is then left alone).
 */
async function stuckExportsOf(holdings: Holding[], liveConnections: Set<number>): Promise<{ abort: ExportHolding[]; blocked: ExportHolding[] }> {
  const visible = await visibleFuseConnections();
  const found = { abort: [] as ExportHolding[], blocked: [] as ExportHolding[] };
  for (const holding of holdings) {
    if (holding.kind !== 'fuse-export' || !stillExiting(holding.server)) continue;
    (liveConnections.has(holding.connection) || visible.has(holding.connection) ? found.blocked : found.abort).push(holding);
  }
  return found;
}

/** How long a daemon whose connection was aborted may take to finish exiting (its guest's unmount fails fast). */
const EXIT_AFTER_ABORT_MS = 30000;

/** nbd devices the build connected that are still served by a process of its work directory. */
async function nbdOf(workDir: string, holdings: Holding[]): Promise<string[]> {
  const devices: string[] = [];
  for (const holding of holdings) {
    if (holding.kind !== 'nbd') continue;
    const pid = (await readFile(`/sys/block/${basename(holding.device)}/pid`, 'utf8').catch(() => '')).trim();
    const argv = pid ? await processArgv(Number(pid)) : '';
    if (argv.includes(`${workDir}/`)) devices.push(holding.device);
  }
  return devices;
}

/** Partition nodes it made for a disk that is now free or still its own (never for a disk another build attached since). */
async function nodesOf(holdings: Holding[], disks: string[]): Promise<string[]> {
  const nodes: string[] = [];
  for (const holding of holdings) {
    if (holding.kind !== 'node' || !(await exists(holding.path))) continue;
    const sys = `/sys/block/${basename(holding.disk)}`;
    const inUse = (await loopBackingFile(holding.disk)) || (await readFile(`${sys}/pid`, 'utf8').catch(() => '')).trim();
    if (!inUse || disks.includes(holding.disk)) nodes.push(holding.path);
  }
  return nodes;
}

/** binfmt_misc mounts a build made for itself (emulation.ts names them after its pid). */
async function binfmtMountsOf(pid: number): Promise<string[]> {
  const text = await readFile('/proc/self/mounts', 'utf8');
  return text
    .split('\n')
    .map((line) => line.split(' '))
    .filter((fields) => fields[2] === 'binfmt_misc' && basename(fields[1] ?? '').startsWith(`${OWN_ENTRY_PREFIX}binfmt-${pid}-`))
    .map((fields) => fields[1]);
}

/** Emulator registrations carry their build's pid (emulation.ts): only those of a pid no live build has. */
async function binfmtOf(pid: number, mounts: string[]): Promise<string[]> {
  const entries: string[] = [];
  for (const dir of ['/proc/sys/fs/binfmt_misc', ...mounts]) {
    for (const name of await readdir(dir).catch(() => [] as string[])) {
      if (name.startsWith(OWN_ENTRY_PREFIX) && new RegExp(`-${pid}-\\d+$`).test(name) && !entries.some((e) => basename(e) === name)) entries.push(join(dir, name));
    }
  }
  return entries;
}

/** Where the sandbox (chroot/sandbox.ts) puts its cgroups, named `imagebuilder-<pid>-…`. */
const CGROUP_DIRS = ['/sys/fs/cgroup', '/sys/fs/cgroup/memory', '/sys/fs/cgroup/pids'];

/**
 * The sandbox's state directories (the network namespace is a bind mount inside) and cgroups of a build. In the
 * shared temp directory anyone may plant a name like ours: only a real directory owned by us counts (mkdtemp
 * made it; no other user can make one owned by root), never a symlink or another user's directory.
 */
async function sandboxOf(pid: number): Promise<string[]> {
  const found: string[] = [];
  for (const name of await readdir(tmpdir()).catch(() => [] as string[])) {
    if (!name.startsWith(`${SANDBOX_STATE_PREFIX}${pid}-`)) continue;
    const entry = await lstat(join(tmpdir(), name)).catch(() => undefined);
    if (entry?.isDirectory() && entry.uid === process.geteuid?.()) found.push(join(tmpdir(), name));
  }
  for (const dir of CGROUP_DIRS) {
    for (const name of await readdir(dir).catch(() => [] as string[])) if (name.startsWith(`imagebuilder-${pid}-`)) found.push(join(dir, name));
  }
  return found;
}

async function survey(build: FoundBuild, record: BuildRecord | undefined, livePids: Set<number>, liveConnections: Set<number>): Promise<Leftovers> {
  const holdings = record?.holdings ?? [];
  const loops = await loopsOf(build.workDir, holdings);
  const nbd = await nbdOf(build.workDir, holdings);
  return {
    processes: await processesOf(build.workDir, true),
    mounts: await mountsIn(build.workDir),
    loops,
    nbd,
    nodes: await nodesOf(holdings, [...loops, ...nbd]),
    binfmtMounts: livePids.has(build.pid) ? [] : await binfmtMountsOf(build.pid),
    binfmt: livePids.has(build.pid) ? [] : await binfmtOf(build.pid, await binfmtMountsOf(build.pid)),
    sandbox: livePids.has(build.pid) ? [] : await sandboxOf(build.pid),
    files: (await Promise.all(holdings.filter((h) => h.kind === 'file').map(async (h) => ((await exists(h.path)) ? h.path : '')))).filter(Boolean),
    stuckExports: (await stuckExportsOf(holdings, liveConnections)).abort.map((h) => h.connection),
    workDir: !record?.keep && (await exists(build.workDir)),
  };
}

async function unmount(run: Runner, target: string, lazy: boolean): Promise<boolean> {
  if ((await run('umount', [target], { allowFailure: true })).exitCode === 0) return true;
  return lazy && (await run('umount', ['--lazy', target], { allowFailure: true })).exitCode === 0;
}

/** Releases a dead build's leftovers in the order its own cleanup would have: processes, mounts, disks, helpers. */
async function release(build: FoundBuild, record: BuildRecord | undefined, found: Leftovers, liveConnections: Set<number>, options: ReapOptions): Promise<string[]> {
  const { run, log } = options;
  const failures: string[] = [];
  const attempt = async (what: string, body: () => Promise<unknown>) => {
    try {
      await body();
    } catch (error) {
      failures.push(`${what}: ${errorMessage(error)}`);
    }
  };
  const { workDir } = build;
  const stuck = await stuckExportsOf(record?.holdings ?? [], liveConnections);
  for (const holding of stuck.blocked) failures.push(`FUSE connection ${holding.connection} of qemu-storage-daemon (pid ${holding.server.pid}), stuck exiting: its number is in use again, not aborted`);
  for (const holding of stuck.abort) {
    const what = `FUSE connection ${holding.connection} of qemu-storage-daemon (pid ${holding.server.pid}), stuck exiting`;
    log.warn(`aborting ${what}`);
    await attempt(what, async () => {
      const result = await abortFuseConnection(await fuseControlDir(run, options.fuseControl), holding, () => stillExiting(holding.server));
      if (result === 'not ours') throw new Error('its number names another connection now: not aborted');
      for (let waited = 0; stillExiting(holding.server); waited += 100) {
        if (waited >= EXIT_AFTER_ABORT_MS) throw new Error(`still exiting ${EXIT_AFTER_ABORT_MS / 1000} s after the abort`);
        await sleep(100);
      }
    });
  }
  // A loop device over a connection left stuck would hang whoever touches it: the next cleanup tries again.
  if (failures.length) return failures;
  await attempt('processes', () => killAll(() => processesOf(workDir, false), log, `process(es) of the dead build in ${workDir}`));
  for (const target of await mountsIn(workDir, FREEZABLE)) await run('fsfreeze', ['--unfreeze', target], { allowFailure: true });
  // Deepest first; what is still busy (the export under a loop device) is tried again once the disks are gone.
  for (const target of await mountsIn(workDir)) await unmount(run, target, false);
  for (const device of found.nbd) await attempt(`nbd ${device}`, () => run('qemu-nbd', ['--disconnect', device], { log }));
  for (const loop of await loopsOf(workDir, record?.holdings ?? [])) {
    await attempt(`partitions of ${loop}`, async () => {
      if ((await listPartitions(loop)).length) await run('partx', ['-d', loop], { allowFailure: true, log });
    });
    await attempt(`loop device ${loop}`, () => run('losetup', ['--detach', loop], { log }));
  }
  for (const node of found.nodes) await attempt(`device node ${node}`, () => rm(node, { force: true }));
  await attempt('helpers', () => killAll(() => processesOf(workDir, true), log, `helper process(es) of the dead build in ${workDir}`));
  for (const target of await mountsIn(workDir)) if (!(await unmount(run, target, true))) failures.push(`umount ${target} failed`);
  for (const entry of found.binfmt) {
    await attempt(`binfmt_misc entry ${basename(entry)}`, async () => {
      const file = await open(entry, constants.O_WRONLY);
      await file.write('-1').finally(() => file.close());
    });
  }
  for (const mount of found.binfmtMounts) {
    await attempt(`binfmt_misc mount ${mount}`, async () => {
      if ((await run('umount', [mount], { allowFailure: true, log })).exitCode === 0) await rmdir(mount);
    });
  }
  for (const path of found.sandbox) {
    await attempt(`sandbox ${path}`, async () => {
      if (!path.startsWith('/sys/fs/cgroup')) {
        const netns = join(path, 'netns');
        // pasta daemonized, so it outlived the build; it names the namespace file on its command line.
        await killAll(() => processesMentioning(netns), log, `pasta of the dead build's ${netns}`);
        if (await isMounted(netns)) await run('umount', ['--lazy', netns], { log });
        await rm(path, { recursive: true, force: true });
      } else {
        // A cgroup goes once empty: what a step left in it is killed first.
        await killAll(() => cgroupMembers([path]), log, `process(es) left in ${path}`);
        await rmdir(path);
      }
    });
  }
  for (const file of found.files) await attempt(`file ${file}`, () => removeRecordedFile(file));
  if (!record?.keep) {
    const busy = await mountsIn(workDir);
    if (busy.length) failures.push(`not removing ${workDir}: still mounted there: ${busy.join(' ')}`);
    else await attempt(`work directory ${workDir}`, () => rm(workDir, { recursive: true, force: true }));
  }
  return failures;
}

/**
 * A file or directory a dead build noted it was writing outside its work directory (a partial output, its staging
 * directory, a cache layer): the directory, which a build makes with mkdtemp, is removed with what is in it only
 * while it is still ours and no one else may write it; anything else at the name is unlinked, never followed or
 * entered. In a shared directory (/tmp) another user may have put a tree of their own at a noted name (a build
 * killed before making it, or after renaming it away): removing that path by path could be raced into following
 * a link they swap in.
 */
async function removeRecordedFile(path: string): Promise<void> {
  const info = await lstat(path).catch(() => undefined);
  if (!info) return;
  if (!info.isDirectory()) return rm(path, { force: true });
  if (info.uid !== process.geteuid?.() || (info.mode & 0o022) !== 0) {
    throw new Error(`${path} is a directory of uid ${info.uid}, mode ${(info.mode & 0o777).toString(8)}: not one this build made, so not removed`);
  }
  await rm(path, { recursive: true, force: true });
}

/**
 * Finds builds whose process is gone and releases what they held (with dryRun, only says what). Builds that are
 * alive are listed and left alone. Safe to run at any time, by any number of processes at once.
 */
export async function reapDeadBuilds(options: ReapOptions): Promise<CleanupReport> {
  const { log } = options;
  const all = await candidates(options.workDirParents ?? [], options.runDir);
  const liveCandidates = all.filter((c) => c.found.alive);
  const live = liveCandidates.map((c) => c.found);
  const livePids = new Set(live.map((b) => b.pid));
  // The live builds' exports now (one whose daemon is gone gave its number back).
  const liveConnections = new Set(liveCandidates.flatMap((c) => (c.record?.holdings ?? []).flatMap((h) => (h.kind === 'fuse-export' && ownerAlive(h.server) ? [h.connection] : []))));
  const dead: ReapedBuild[] = [];
  for (const candidate of all.filter((c) => !c.found.alive)) {
    const { found: build, record } = candidate;
    if (options.dryRun) {
      dead.push({ ...build, leftovers: await survey(build, record, livePids, liveConnections), failures: [] });
      continue;
    }
    const claimed = await claim(candidate.file);
    if (!claimed) continue; // another reaper took it
    const leftovers = await survey(build, record, livePids, liveConnections);
    log.warn(`build ${build.id} (pid ${build.pid}${build.command ? `: ${build.command}` : ''}) is gone; releasing what it left: ${summary(leftovers) || 'nothing but its registration'}`);
    const failures = await release(build, record, leftovers, liveConnections, options);
    for (const failure of failures) log.error(`could not release ${failure}`);
    if (failures.length) {
      // Left registered (unclaimed), so the next cleanup tries again.
      await rename(claimed, claimed.replace(CLAIM, '$1')).catch(() => undefined);
    } else {
      await rm(claimed, { force: true });
      await rm(join(registryDir(options.runDir), `${build.id}.json`), { force: true });
    }
    dead.push({ ...build, leftovers, failures });
  }
  // Last, and never at the cost of the report of what was released above.
  const freedLocks = options.locks
    ? await removeFreeLocks(options.locks, STALE_CLAIM, { log, dryRun: options.dryRun }).catch((error: unknown) => {
        log.error(`could not look for claim files no one holds in ${options.locks}: ${errorMessage(error)}`);
        return [];
      })
    : undefined;
  return { dryRun: options.dryRun ?? false, dead, live, ...(freedLocks ? { freedLocks } : {}) };
}

/** The claim files a killed build may leave in the host's lock directory: nbd devices and box uids. */
const STALE_CLAIM = new RegExp(`${NBD_LOCK.source}|${BOX_UID_LOCK.source}`);

/** "2 process(es), 3 mount(s), /dev/loop4, …": what a dead build left, in a line. */
export function summary(leftovers: Leftovers): string {
  const parts: string[] = leftovers.stuckExports.map((connection) => `FUSE connection ${connection} (its daemon stuck exiting)`);
  if (leftovers.processes.length) parts.push(`${leftovers.processes.length} process(es) (${leftovers.processes.join(' ')})`);
  if (leftovers.mounts.length) parts.push(`${leftovers.mounts.length} mount(s)`);
  parts.push(...leftovers.loops, ...leftovers.nbd, ...leftovers.nodes, ...leftovers.binfmt.map((entry) => `binfmt_misc ${basename(entry)}`), ...leftovers.binfmtMounts, ...leftovers.sandbox, ...leftovers.files);
  if (leftovers.workDir) parts.push('its work directory');
  return parts.join(', ');
}
