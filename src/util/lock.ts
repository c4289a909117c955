import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { constants, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, realpathSync, statSync, type Stats } from 'node:fs';
import { chmod, link, lstat, mkdir, open, readdir, readlink, stat, unlink, type FileHandle } from 'node:fs/promises';
import { hostname } from 'node:os';
import { dirname, join } from 'node:path';
import { errorMessage, ImageBuilderError } from './errors.js';
import { othersMayRename, sleep } from './fs.js';
import type { Logger } from './log.js';

/**
 * Locks that neither a dead holder nor a local user can keep, and that a live holder never loses.
 *
 * - Liveness on one kernel is the kernel's: the holder keeps an flock(2) on the lock file's open file
 *   description, which the kernel drops when the holder exits however it dies (SIGKILL, OOM), whatever its pid
 *   namespace. Node has no flock, so `flock(1)` (util-linux) locks the descriptor it inherits as fd 3 and exits:
 *   the lock stays with our descriptor. A pid in the file means nothing across pid namespaces and is never
 *   trusted: it is only shown in messages.
 * - Across kernels (a cache on NFS shared by pods on several nodes, where flock may not reach other hosts) the
 *   holder renews a lease: it rewrites the file every heartbeat. A waiter breaks a lock of another kernel only
 *   after seeing its content unchanged for a whole lease on its own clock (no clock skew between hosts).
 * - Taking over is done under a second O_EXCL `.break` file and re-checked there, so two waiters never both
 *   take a lock over, and one never takes it over from a holder that renewed meanwhile.
 * - Lock files live in a directory private to this user (checked: a real directory, ours, mode 0700), are
 *   created complete under a private name and hard-linked into place, and opened with O_NOFOLLOW: a symlink or a
 *   file planted by another user is never followed, never written.
 */

/** Which kernel (boot) and host a process runs on: pods on one node share the boot id, not the hostname. */
export interface LockIdentity {
  host: string;
  boot: string;
}

let ownIdentity: LockIdentity | undefined;
export function kernelIdentity(): LockIdentity {
  if (!ownIdentity) {
    let boot = '';
    try {
      boot = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
    } catch {
      // Unknown: no lock of ours is then called dead by the kernel's word alone; leases still expire.
    }
    ownIdentity = { host: hostname(), boot };
  }
  return ownIdentity;
}

export interface LockRecord {
  pid: number;
  host: string;
  boot: string;
  since: string;
  what: string;
  /** Unique per acquisition: how a holder knows the file is still its own. */
  token: string;
  /** Renewals so far; every heartbeat changes the file. */
  beat: number;
  renewedAt: string;
}

export interface LockOptions {
  signal?: AbortSignal;
  log?: Logger;
  pollMs?: number;
  /** A lock of another kernel whose file stays unchanged this long is stale (its holder died). Default 60 s. */
  leaseMs?: number;
  /** How often the holder renews its lease. Default a sixth of the lease. */
  heartbeatMs?: number;
  /** A lock file holding no record (a planted or half-written one) is stale after this long unchanged. Default: the lease. */
  staleEmptyMs?: number;
  /** Tests: act as a process of another kernel. */
  identity?: LockIdentity;
  /** Tests (and filesystems where flock does not reach other hosts): rely on the lease alone. Default true. */
  kernelLock?: boolean;
}

export const DEFAULT_LEASE_MS = 60_000;
/** How far another host's clock may be off when judging its lease by mtime (lockHeld only). */
const CLOCK_SKEW_MS = 5 * 60_000;
const FLOCK_CONFLICT = 75;

export type Release = () => Promise<void>;

const errnoOf = (error: unknown) => (error as NodeJS.ErrnoException)?.code;
const euid = () => process.geteuid?.() ?? 0;

function parseRecord(text: string): LockRecord | undefined {
  try {
    const record = JSON.parse(text) as LockRecord;
    return typeof record?.pid === 'number' && typeof record.host === 'string' ? record : undefined;
  } catch {
    return undefined;
  }
}

/** What to do when a results directory (`--results`, `OUTPUT.test`) is refused. */
export const RESULTS_DIR_HINT = "name a results directory of this user's own (or one that does not exist yet: it is made) that no one else may write";

/**
 * Makes `dir` a directory only this user can enter, or refuses: a symlink, a non-directory or a directory of
 * another user (planted in a world-writable parent such as /run/lock or /tmp) is never used; our own directory
 * with a looser mode is made 0700. A parent that others may write without the sticky bit is refused too: they
 * could swap the directory for another after this check. `readable` (a results directory the user reads): made
 * 0755, and an existing one of ours is used as it is (never chmod-ed: it may be /tmp) unless others may write it
 * without the sticky bit, which is refused. `purpose` completes "refusing to … DIR"; `hint` replaces the default.
 */
export async function ensurePrivateDir(dir: string, log?: Logger, options: { purpose?: string; readable?: boolean; hint?: string } = {}): Promise<void> {
  const parent = dirname(dir);
  await mkdir(parent, { recursive: true });
  const refuse = (why: string, hint = PLANTED_HINT) =>
    new ImageBuilderError('ENVIRONMENT', `refusing to ${options.purpose ?? 'keep locks in'} ${dir}: ${why}`, { hint: options.hint ?? hint });
  // Followed: a parent that is a symlink (~/.cache on another disk) is the user's own doing; what counts is
  // who may write the directory it leads to.
  const parentProblem = openParentProblem(parent, await stat(parent));
  if (parentProblem) throw refuse(parentProblem);
  await mkdir(dir, { mode: options.readable ? 0o755 : 0o700 }).catch((error) => {
    if (errnoOf(error) !== 'EEXIST') throw error;
  });
  const info = await lstat(dir);
  if (info.isSymbolicLink()) throw refuse(`it is a symbolic link (to ${await readlink(dir).catch(() => '?')})`);
  const problem = directoryProblem(info, options.readable);
  // root's own directory on an NFS export that squashes root looks like nobody's.
  if (problem) throw refuse(problem, info.isDirectory() && info.uid !== euid() ? `${PLANTED_HINT}; on NFS with root_squash, export it with no_root_squash or give each host its own cache` : undefined);
  if (options.readable) return;
  if ((info.mode & 0o077) !== 0) {
    // Ours, so in a sticky or private parent nobody else can replace it between the lstat and the chmod.
    await chmod(dir, 0o700);
    log?.warn(`${dir} was mode ${(info.mode & 0o777).toString(8)}, open to other users: made it private (0700)`);
  }
}

const PLANTED_HINT = 'another user may have planted it to make imagebuilder follow or trust it: check what it is, remove it as root, and run again';

/** Why a directory's parent lets every user swap it for another after it is checked, if it does. */
function openParentProblem(parent: string, info: Stats | undefined): string | undefined {
  return info && othersMayRename(info.mode) ? `its parent ${parent} is writable by every user (mode ${(info.mode & 0o7777).toString(8)}, no sticky bit)` : undefined;
}

/** Why an existing directory (lstat-ed: a link is not one) is not ours to use as ensurePrivateDir's, if it is not. */
function directoryProblem(info: Stats, readable?: boolean): string | undefined {
  if (info.isSymbolicLink()) return 'it is a symbolic link';
  if (!info.isDirectory()) return 'it is not a directory';
  if (info.uid !== euid()) return `it belongs to uid ${info.uid}, not to this user (uid ${euid()})`;
  if (readable && othersMayRename(info.mode, 0o022)) return `others may write it (mode ${(info.mode & 0o7777).toString(8)}, no sticky bit) and swap what is written there`;
  return undefined;
}

/**
 * A results directory that is already there, checked before a build as ensurePrivateDir (`readable`) will check it
 * at the build's end: one another user made at `OUTPUT.test` fails the build now, not after it.
 */
export function checkResultsDir(dir: string): void {
  let problem: string | undefined;
  try {
    problem = openParentProblem(dirname(dir), statSync(dirname(dir), { throwIfNoEntry: false }));
    const info = lstatSync(dir, { throwIfNoEntry: false });
    problem ??= info && directoryProblem(info, true);
  } catch (error) {
    problem = errorMessage(error);
  }
  if (problem) throw new ImageBuilderError('ENVIRONMENT', `refusing to write test results in ${dir}: ${problem}`, { hint: RESULTS_DIR_HINT });
}

/** What to do when the cache directory is refused. */
export const CACHE_DIR_HINT =
  "use a cache directory of this user's own that no one else may write (chmod go-w it, or point --cache / IMAGEBUILDER_CACHE elsewhere; a directory that does not exist yet is made private)";

/**
 * The cache directory, made (0700) when it is missing, or refused when another user may have put anything in
 * it. Everything under it is trusted: a cached image is used as verified, a layer is replayed into the output,
 * tmp/ is removed recursively. So it must be ours and written by no one else, each entry at its top ours and
 * (a directory) written by no one else, and no directory above it may let others swap it. A symlink at its name (a
 * cache on a bigger disk) is followed only if it is ours. Never chmod-ed: it may be a directory the user shares.
 */
export function ensureCacheDir(dir: string): void {
  const check = () => {
    const problem = cacheDirProblem(dir);
    if (problem) throw new ImageBuilderError('ENVIRONMENT', `refusing to use the cache directory ${dir}: ${problem}`, { hint: CACHE_DIR_HINT });
  };
  check(); // where it would be made, before anything is made there
  mkdirSync(dirname(dir), { recursive: true, mode: 0o755 });
  try {
    mkdirSync(dir, { mode: 0o700 });
  } catch (error) {
    if (errnoOf(error) !== 'EEXIST') throw error;
  }
  check();
}

/** Why `dir` may not be trusted as the cache directory, if it may not (ensureCacheDir's rules; doctor reports them). */
export function cacheDirProblem(dir: string): string | undefined {
  const link = lstatSync(dir, { throwIfNoEntry: false });
  // A missing one is made where it would be: the directories above it count already.
  if (!link) return swappableParentProblem(dirname(dir));
  if (link.isSymbolicLink() && link.uid !== euid()) return `it is a symbolic link (to ${readlinkSync(dir)}) that uid ${link.uid} made, not this user`;
  let real: string;
  try {
    real = realpathSync(dir);
  } catch (error) {
    return `it does not lead to a directory (${errorMessage(error)})`;
  }
  for (const parent of new Set([dirname(dir), dirname(real)])) {
    const problem = swappableParentProblem(parent);
    if (problem) return problem;
  }
  const own = (path: string, info: Stats): string | undefined => {
    if (info.uid !== euid()) return `${path} belongs to uid ${info.uid}, not to this user (uid ${euid()})`;
    if (info.isDirectory() && (info.mode & 0o022) !== 0) return `${path} may be written by its group or others (mode ${(info.mode & 0o7777).toString(8)})`;
    return undefined;
  };
  const info = statSync(real);
  if (!info.isDirectory()) return 'it is not a directory';
  const top = own(real, info);
  if (top) return top;
  for (const name of readdirSync(real)) {
    const entry = lstatSync(`${real}/${name}`, { throwIfNoEntry: false });
    const problem = entry && own(`${real}/${name}`, entry);
    if (problem) return problem;
  }
  return undefined;
}

/**
 * Why another user could rename a directory under `parent` away and put one of theirs in its place, if they
 * could: a directory on the way from / (that exists: a missing one would be made by us) is theirs (not ours,
 * not root's), or others may write it without the sticky bit.
 */
function swappableParentProblem(parent: string): string | undefined {
  for (let at = parent; ; at = dirname(at)) {
    const info = statSync(at, { throwIfNoEntry: false });
    if (info && info.uid !== euid() && info.uid !== 0) return `${at === parent ? 'its parent' : 'a directory above it,'} ${at} belongs to uid ${info.uid}, who could swap it for another`;
    if (info && othersMayRename(info.mode, 0o022)) return `${at === parent ? 'its parent' : 'a directory above it,'} ${at} may be written by its group or others (mode ${(info.mode & 0o7777).toString(8)}, no sticky bit), who could swap it for another`;
    if (at === dirname(at)) return undefined;
  }
}

/**
 * flock(2) on our descriptor by way of flock(1): exclusive or shared, never blocking. True when taken; false
 * when someone holds a conflicting lock.
 */
export async function flockDescriptor(handle: FileHandle, mode: 'exclusive' | 'shared'): Promise<boolean> {
  return new Promise((resolve, reject) => {
    const child = spawn('flock', [`--${mode}`, '--nonblock', '--conflict-exit-code', String(FLOCK_CONFLICT), '3'], { stdio: ['ignore', 'ignore', 'pipe', handle.fd] });
    let stderr = '';
    child.stderr?.on('data', (data: Buffer) => void (stderr += data.toString()));
    child.on('error', (error) => {
      reject(
        errnoOf(error) === 'ENOENT'
          ? new ImageBuilderError('MISSING_TOOL', 'flock is not installed: imagebuilder takes its locks with it', { hint: 'install util-linux (it provides flock)', cause: error })
          : error,
      );
    });
    child.on('close', (code) => {
      if (code === 0) resolve(true);
      else if (code === FLOCK_CONFLICT) resolve(false);
      else reject(new ImageBuilderError('ENVIRONMENT', `flock failed (exit ${code}): ${stderr.trim()}`, { hint: 'the filesystem of the lock files must support flock' }));
    });
  });
}

/** flockDescriptor, waiting (every 200 ms) until it is taken; INTERRUPTED when `signal` aborts first. */
export async function waitForFlock(handle: FileHandle, mode: 'exclusive' | 'shared', signal?: AbortSignal): Promise<void> {
  while (!(await flockDescriptor(handle, mode))) {
    if (signal?.aborted) throw new ImageBuilderError('INTERRUPTED', `interrupted while waiting for a ${mode} lock`);
    await sleep(200);
  }
}

const OPEN_EXISTING = constants.O_RDWR | constants.O_NOFOLLOW | constants.O_NONBLOCK;

/** What a waiter has seen of a lock it does not hold: the content, and since when (its own clock) unchanged. */
interface Observation {
  key: string;
  since: number;
}

type Attempt = { held: Release } | { busy: LockRecord | undefined } | { retry: true };

class LockAttempt {
  private observed?: Observation;
  private readonly identity: LockIdentity;
  private readonly kernelLock: boolean;
  private readonly leaseMs: number;
  private readonly heartbeatMs: number;
  private readonly staleEmptyMs: number;

  constructor(
    private readonly path: string,
    private readonly what: string,
    private readonly options: LockOptions,
  ) {
    this.identity = options.identity ?? kernelIdentity();
    this.kernelLock = options.kernelLock ?? true;
    this.leaseMs = options.leaseMs ?? DEFAULT_LEASE_MS;
    this.heartbeatMs = options.heartbeatMs ?? Math.max(10, Math.floor(this.leaseMs / 6));
    this.staleEmptyMs = options.staleEmptyMs ?? this.leaseMs;
  }

  private record(token: string, beat: number, since: string): LockRecord {
    return { pid: process.pid, host: this.identity.host, boot: this.identity.boot, since, what: this.what, token, beat, renewedAt: new Date().toISOString() };
  }

  /** One try: take the lock, or say who holds it. */
  async once(): Promise<Attempt> {
    let handle: FileHandle;
    try {
      handle = await open(this.path, OPEN_EXISTING);
    } catch (error) {
      const code = errnoOf(error);
      if (code === 'ENOENT') return this.create();
      if (code === 'ELOOP') return this.removeForeign('a symbolic link');
      throw error;
    }
    let keep = false;
    try {
      const info = await handle.stat();
      if (!info.isFile() || info.uid !== euid()) {
        return await this.removeForeign(info.isFile() ? `a file of uid ${info.uid}` : 'not a regular file');
      }
      if (this.kernelLock && !(await flockDescriptor(handle, 'exclusive'))) return { busy: parseRecord(await readAll(handle)) };
      // The file may have been released (unlinked) between our open and our flock: then ours is a dead inode.
      const now = await lstat(this.path).catch(() => undefined);
      if (!now || now.ino !== info.ino || now.dev !== info.dev) return { retry: true };
      const text = await readAll(handle);
      const record = parseRecord(text);
      const sameKernel = this.kernelLock && record !== undefined && record.boot !== '' && record.boot === this.identity.boot;
      if (!sameKernel && !this.leaseExpired(`${text}\0${now.mtimeMs}`, record ? this.leaseMs : this.staleEmptyMs)) return { busy: record };
      const held = await this.takeOver(handle, text, record, sameKernel);
      if (held) keep = true;
      return held ? { held } : { busy: record };
    } finally {
      if (!keep) await handle.close();
    }
  }

  private leaseExpired(key: string, staleMs: number): boolean {
    const now = performance.now();
    if (this.observed?.key !== key) this.observed = { key, since: now };
    return now - this.observed.since >= staleMs;
  }

  /** A new lock file: written and locked under a private name, then linked into place (it appears whole or not at all). */
  private async create(): Promise<Attempt> {
    const temp = `${this.path}.${process.pid}.${randomBytes(6).toString('hex')}.new`;
    const handle = await open(temp, constants.O_RDWR | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
    try {
      const token = randomBytes(16).toString('hex');
      const record = this.record(token, 0, new Date().toISOString());
      await writeRecord(handle, record);
      if (this.kernelLock && !(await flockDescriptor(handle, 'exclusive'))) throw new Error(`internal: cannot flock the new ${temp}`);
      try {
        await link(temp, this.path);
      } catch (error) {
        if (errnoOf(error) === 'EEXIST') {
          await handle.close();
          return { retry: true };
        }
        throw error;
      }
      return { held: this.hold(handle, record) };
    } catch (error) {
      await handle.close().catch(() => undefined);
      throw error;
    } finally {
      await unlink(temp).catch(() => undefined);
    }
  }

  /**
   * Something at the lock path that we did not make: the directory is private now, so it was planted before
   * (while it was not) or by root. Unlinking never follows it.
   */
  private async removeForeign(what: string): Promise<Attempt> {
    this.options.log?.warn(`${this.path} is ${what}, not a lock file of imagebuilder: removing it (never following it)`);
    await unlink(this.path).catch((error) => {
      if (errnoOf(error) !== 'ENOENT') throw error;
    });
    return { retry: true };
  }

  /** Under the `.break` file: if the lock still reads as judged, it becomes ours (the same inode, our record). */
  private async takeOver(handle: FileHandle, judged: string, previous: LockRecord | undefined, sameKernel: boolean): Promise<Release | undefined> {
    const breaker = `${this.path}.break`;
    let breakerHandle: FileHandle;
    try {
      breakerHandle = await open(breaker, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
    } catch (error) {
      if (errnoOf(error) !== 'EEXIST') throw error;
      // A breaker left by a process that died while breaking is itself stale after a lease.
      const info = await lstat(breaker).catch(() => undefined);
      if (info && Date.now() - info.mtimeMs > this.leaseMs) await unlink(breaker).catch(() => undefined);
      return undefined;
    }
    try {
      await breakerHandle.close();
      if ((await readAll(handle)) !== judged) return undefined;
      const token = randomBytes(16).toString('hex');
      const record = this.record(token, 0, new Date().toISOString());
      await writeRecord(handle, record);
      const who = previous ? `process ${previous.pid} on ${previous.host}, ${previous.what}` : 'no holder recorded';
      this.options.log?.warn(
        `removing the stale lock ${this.path} (${who}): ${sameKernel ? 'its process is gone' : `unchanged for ${(this.leaseMs / 1000).toFixed(1)}s, its lease expired`}`,
      );
      return this.hold(handle, record);
    } finally {
      await unlink(breaker).catch(() => undefined);
    }
  }

  /** The heartbeat that renews the lease while we hold it, and the release. */
  private hold(handle: FileHandle, first: LockRecord): Release {
    let record = first;
    let lost = false;
    let chain: Promise<void> = Promise.resolve();
    const renew = async () => {
      if (lost) return;
      const current = parseRecord(await readAll(handle));
      if (current?.token !== record.token) {
        lost = true;
        this.options.log?.warn(`the lock ${this.path} was taken over by process ${current?.pid} on ${current?.host}: this process's lease lapsed`);
        return;
      }
      record = { ...record, beat: record.beat + 1, renewedAt: new Date().toISOString() };
      await writeRecord(handle, record);
    };
    const timer = setInterval(() => {
      chain = chain.then(renew).catch((error) => this.options.log?.debug(`renewing the lock ${this.path}: ${(error as Error).message}`));
    }, this.heartbeatMs);
    timer.unref();
    let released = false;
    return async () => {
      if (released) return;
      released = true;
      clearInterval(timer);
      await chain;
      try {
        const info = await handle.stat();
        const now = await lstat(this.path).catch(() => undefined);
        const mine = parseRecord(await readAll(handle))?.token === record.token;
        // Unlinked while still locked: a waiter that opened it finds its inode gone and starts again.
        if (mine && now && now.ino === info.ino && now.dev === info.dev) await unlink(this.path).catch(() => undefined);
      } finally {
        await handle.close();
      }
    };
  }
}

async function readAll(handle: FileHandle): Promise<string> {
  const { size } = await handle.stat();
  const buffer = Buffer.alloc(Math.min(size, 64 * 1024));
  const { bytesRead } = await handle.read(buffer, 0, buffer.length, 0);
  return buffer.subarray(0, bytesRead).toString('utf8');
}

async function writeRecord(handle: FileHandle, record: LockRecord): Promise<void> {
  const data = Buffer.from(`${JSON.stringify(record)}\n`);
  await handle.write(data, 0, data.length, 0);
  await handle.truncate(data.length);
}

/**
 * Takes the lock at `path` and returns its release. While another live process holds it, waits (saying so
 * once) until it is released, its holder dies, or the signal aborts.
 */
export async function acquireLock(path: string, what: string, options: LockOptions = {}): Promise<Release> {
  await ensurePrivateDir(dirname(path), options.log);
  const attempt = new LockAttempt(path, what, options);
  const pollMs = options.pollMs ?? 200;
  let announced = false;
  for (;;) {
    if (options.signal?.aborted) throw options.signal.reason;
    const result = await attempt.once();
    if ('held' in result) return result.held;
    if ('retry' in result) continue;
    if (!announced && result.busy) {
      const holder = result.busy;
      const elsewhere = holder.host === (options.identity ?? kernelIdentity()).host ? '' : ` on ${holder.host}`;
      options.log?.info(`waiting for process ${holder.pid}${elsewhere}, which is fetching ${holder.what}`);
      announced = true;
    }
    await sleep(pollMs);
  }
}

/** One try, never waiting: the release, or undefined while someone else holds it. */
export async function tryAcquireLock(path: string, what: string, options: LockOptions = {}): Promise<Release | undefined> {
  await ensurePrivateDir(dirname(path), options.log);
  const attempt = new LockAttempt(path, what, options);
  for (let tries = 0; tries < 5; tries++) {
    const result = await attempt.once();
    if ('held' in result) return result.held;
    if ('busy' in result) return undefined;
  }
  return undefined;
}

/**
 * Whether someone may hold the lock now (for prune, which must not remove what a live process writes): held
 * when its flock is taken; free when it is a record of this kernel with no flock; else judged by the age of
 * the file, with room for another host's clock. In doubt: held.
 */
export async function lockHeld(path: string, options: Pick<LockOptions, 'leaseMs' | 'identity' | 'kernelLock'> = {}): Promise<boolean> {
  let handle: FileHandle;
  try {
    handle = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (error) {
    return errnoOf(error) !== 'ENOENT';
  }
  try {
    const kernelLock = options.kernelLock ?? true;
    if (kernelLock && !(await flockDescriptor(handle, 'shared'))) return true;
    const record = parseRecord(await readAll(handle));
    const identity = options.identity ?? kernelIdentity();
    if (kernelLock && record && record.boot !== '' && record.boot === identity.boot) return false;
    const info = await handle.stat();
    return Date.now() - info.mtimeMs < (options.leaseMs ?? DEFAULT_LEASE_MS) + CLOCK_SKEW_MS;
  } finally {
    await handle.close();
  }
}

/** Where the host-wide claims (nbd devices, box uids) are kept: root's own directory (/run/lock itself is everyone's). */
export const HOST_LOCK_DIR = '/run/lock/imagebuilder';

/**
 * The lock files in `dir` (named by `pattern`) that no live process holds: a holder killed by SIGKILL leaves its
 * file (the kernel drops only the flock). Each is taken through the lock protocol itself, so one a build is
 * claiming meanwhile is never removed from under it, then released, which removes it. `dryRun`: only named.
 */
export async function removeFreeLocks(dir: string, pattern: RegExp, options: { log?: Logger; dryRun?: boolean } = {}): Promise<string[]> {
  const names = await readdir(dir).catch(() => [] as string[]);
  const freed: string[] = [];
  for (const name of names.filter((n) => pattern.test(n)).sort()) {
    const path = join(dir, name);
    if (options.dryRun) {
      if (!(await lockHeld(path))) freed.push(name);
      continue;
    }
    const release = await tryAcquireLock(path, 'imagebuilder cleanup', { log: options.log });
    if (!release) continue;
    await release();
    freed.push(name);
  }
  return freed;
}
