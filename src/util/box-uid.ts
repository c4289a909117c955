import { randomInt } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { CleanupStack } from './cleanup.js';
import { ImageBuilderError } from './errors.js';
import { execRunner, tail, type Runner } from './exec.js';
import { HOST_LOCK_DIR, tryAcquireLock } from './lock.js';
import { createLogger, type Logger } from './log.js';
import { killAll } from './processes.js';
import { SANDBOX_ID } from './unprivileged.js';

/**
 * A uid of its own for each long-lived process that faces a hostile guest from outside it: qemu booting the
 * image, the DNS relay its commands query. Processes that share a uid reach each other: each may signal, and
 * (being dumpable) ptrace, the others, and open their /proc/<pid>/root and /proc/<pid>/fd, whatever box they
 * are in, for a PID namespace hides the host from the box, not the box from the host. uid 65534 is every
 * nobody service's on the host, and every box's of ours: a qemu broken out of would have had all of them.
 *
 * A uid here is claimed, not looked up: from a range systemd's UIDS-GIDS.md lists as unused by any allocator
 * (1879048192…2147352575; well clear of its start, where another tool might begin), taken only when the user
 * and group databases do not know it, under a lock the kernel drops when its build dies however it dies
 * (util/lock.ts, as nbd devices are claimed), and only when no process runs as it (one a dead build left).
 * Within its uid, such a process may also be counted (RLIMIT_NPROC) without counting anyone else's.
 */
export const BOX_UIDS = { first: 1_900_000_000, count: 4096 };

/** Where the claims are kept: root's own directory, as the nbd locks are (/run/lock itself is everyone's). */
const DEFAULT_LOCK_DIR = HOST_LOCK_DIR;
/** A uid's claim file, and the pattern cleanup finds them by. */
export const boxUidLockName = (uid: number) => `box-uid-${uid}.lock`;
export const BOX_UID_LOCK = /^box-uid-\d+\.lock$/;

export interface BoxUidOptions {
  /** Tests: a lock directory and a range of their own. */
  lockDir?: string;
  range?: { first: number; count: number };
  signal?: AbortSignal;
}

/** How long one user-database lookup may take (NSS may ask LDAP or sssd). */
const LOOKUP_TIMEOUT_MS = 10_000;

/**
 * Claims a uid (and the gid of the same number) no one else uses, for as long as `cleanup` holds it: pushed on
 * the spot, so it must be claimed before the process that runs as it is started (and is released after it). Its
 * release first kills whatever still runs as it (a child the process left, which no death signal reaches), so
 * the next holder starts alone. Where this user namespace maps no uid of the range (a rootless container), nobody
 * (SANDBOX_ID), as before, said so.
 */
export async function claimBoxUid(run: Runner, cleanup: CleanupStack, log: Logger, purpose: string, options: BoxUidOptions = {}): Promise<number> {
  const { first, count } = options.range ?? BOX_UIDS;
  const lockDir = options.lockDir ?? DEFAULT_LOCK_DIR;
  if (!(await rangeMapped(first, count))) {
    log.warn(`${purpose} runs as nobody (${SANDBOX_ID}), shared with other processes: this user namespace maps no uid of ${first}…${first + count - 1} (/proc/self/uid_map)`);
    return SANDBOX_ID;
  }
  // From a random place in the range: builds in containers that do not share /run/lock (each with its own PID
  // namespace, so neither sees the other's processes) seldom pick the same uid.
  const start = randomInt(count);
  for (let tried = 0; tried < count; tried++) {
    const uid = first + ((start + tried) % count);
    const release = await tryAcquireLock(join(lockDir, boxUidLockName(uid)), `uid ${uid} (${purpose})`, { log });
    if (!release) continue;
    let taken: string | undefined;
    try {
      // Under the lock, so no other build of ours takes it meanwhile.
      taken = (await knownToUserDatabase(run, uid, options.signal)) ?? (await processesRunningAs(uid)).map((pid) => `process ${pid} runs as it`)[0];
    } catch (error) {
      await release();
      throw error;
    }
    if (taken) {
      log.debug(`uid ${uid} is not free for ${purpose}: ${taken}`);
      await release();
      continue;
    }
    cleanup.push(`uid ${uid} (${purpose})`, async () => {
      await killAll(() => processesRunningAs(uid), log, `process(es) still running as uid ${uid} (${purpose})`);
      await release();
    });
    return uid;
  }
  throw new ImageBuilderError('ENVIRONMENT', `no free uid for ${purpose} among ${first}…${first + count - 1}: each is held by another build, named in the user database, or running a process`, {
    hint: `wait for other builds to finish, or see what runs as these uids (ps -eo uid,pid,args | awk '$1 >= ${first}')`,
  });
}

/**
 * `body` given a uid claimed for it alone (claimBoxUid), released once it ends, whatever its outcome: for a
 * short-lived box (gpg, gpgv, rpm on hostile input) that nobody, every nobody service's uid, would expose to
 * them and them to it. Without a logger, the claim's notes are not said.
 */
export async function withBoxUid<T>(purpose: string, body: (uid: number) => Promise<T>, options: BoxUidOptions & { log?: Logger } = {}): Promise<T> {
  const log = options.log ?? createLogger({ write: () => undefined });
  const held = new CleanupStack(log);
  try {
    // The host's own user database is asked, whatever runner the box's command goes through.
    return await body(await claimBoxUid(execRunner, held, log, purpose, options));
  } finally {
    await held.unwind();
  }
}

/** Whether this process's user namespace maps every uid and gid of the range (always, outside a user namespace). */
export async function rangeMapped(first: number, count: number, self = '/proc/self'): Promise<boolean> {
  for (const map of ['uid_map', 'gid_map']) {
    const lines = (await readFile(join(self, map), 'utf8').catch(() => '0 0 4294967295')).trim().split('\n');
    const covered = lines.some((line) => {
      const [inside, , length] = line.trim().split(/\s+/).map(Number);
      return inside <= first && first + count <= inside + length;
    });
    if (!covered) return false;
  }
  return true;
}

/**
 * Why the user or group database names `id` (locally or through NSS: LDAP, sssd), or undefined when neither does.
 * getent says "not found" by exiting 2, found by 0; anything else (a broken NSS module) is an error, not a guess.
 */
async function knownToUserDatabase(run: Runner, id: number, signal?: AbortSignal): Promise<string | undefined> {
  for (const database of ['passwd', 'group']) {
    const result = await run('getent', [database, String(id)], { allowFailure: true, timeoutMs: LOOKUP_TIMEOUT_MS, signal });
    if (result.exitCode === 2) continue;
    if (result.exitCode === 0) return `getent ${database} ${id} names it: ${result.stdout.trim().slice(0, 80)}`;
    throw new ImageBuilderError('ENVIRONMENT', `cannot tell whether uid ${id} is free: getent ${database} ${id} exited ${result.exitCode}`, {
      hint: `${tail(result.output, 3) || 'no output'}; check the host's user database (/etc/nsswitch.conf)`,
    });
  }
  return undefined;
}

/** The processes that run as `uid` (any of their real, effective, saved or filesystem uids). */
export async function processesRunningAs(uid: number, procDir = '/proc'): Promise<number[]> {
  const pids = (await readdir(procDir)).filter((name) => /^\d+$/.test(name));
  const statuses = await Promise.all(pids.map((pid) => readFile(join(procDir, pid, 'status'), 'utf8').then((text) => ({ pid, text }), () => undefined)));
  return statuses.filter((status) => (/^Uid:\s*(.*)$/m.exec(status?.text ?? '')?.[1]?.split(/\s+/).map(Number) ?? []).includes(uid)).map((status) => Number(status!.pid));
}
