import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { CleanupStack } from './cleanup.js';
import { ImageBuilderError } from './errors.js';
import type { Runner } from './exec.js';
import { tryAcquireLock } from './lock.js';
import type { Logger } from './log.js';

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
const DEFAULT_LOCK_DIR = '/run/lock/imagebuilder';

export interface BoxUidOptions {
  /** Tests: a lock directory and a range of their own. */
  lockDir?: string;
  range?: { first: number; count: number };
}

/**
 * Claims a uid (and the gid of the same number) no one else uses, for as long as `cleanup` holds it: the
 * release is pushed on the spot, so it must be pushed before the process that runs as it (released after it).
 */
export async function claimBoxUid(run: Runner, cleanup: CleanupStack, log: Logger, purpose: string, options: BoxUidOptions = {}): Promise<number> {
  const { first, count } = options.range ?? BOX_UIDS;
  const lockDir = options.lockDir ?? DEFAULT_LOCK_DIR;
  for (let uid = first; uid < first + count; uid++) {
    const release = await tryAcquireLock(join(lockDir, `box-uid-${uid}.lock`), `uid ${uid} (${purpose})`, { log });
    if (!release) continue;
    // Under the lock, so no other build of ours takes it meanwhile.
    const taken = (await knownToUserDatabase(run, uid)) ?? (await processRunningAs(uid));
    if (taken) {
      log.debug(`uid ${uid} is not free for ${purpose}: ${taken}`);
      await release();
      continue;
    }
    cleanup.push(`uid ${uid} (${purpose})`, release);
    return uid;
  }
  throw new ImageBuilderError('ENVIRONMENT', `no free uid for ${purpose} among ${first}…${first + count - 1}: each is held by another build, named in the user database, or running a process`, {
    hint: `wait for other builds to finish, or see what runs as these uids (ps -eo uid,pid,args | awk '$1 >= ${first}')`,
  });
}

/** Why the user or group database names `id` (locally or through NSS: LDAP, sssd), or undefined when neither does. */
async function knownToUserDatabase(run: Runner, id: number): Promise<string | undefined> {
  for (const database of ['passwd', 'group']) {
    // getent exits 2 for "not found"; anything else (found, or the database unreadable) keeps the id out of use.
    const result = await run('getent', [database, String(id)], { allowFailure: true });
    if (result.exitCode !== 2) return `getent ${database} ${id} exited ${result.exitCode}${result.stdout.trim() ? `: ${result.stdout.trim().slice(0, 80)}` : ''}`;
  }
  return undefined;
}

/** Which process runs as `uid` (any of its real, effective, saved or filesystem uids), if one does. */
export async function processRunningAs(uid: number, procDir = '/proc'): Promise<string | undefined> {
  const pids = (await readdir(procDir)).filter((name) => /^\d+$/.test(name));
  const statuses = await Promise.all(pids.map((pid) => readFile(join(procDir, pid, 'status'), 'utf8').then((text) => ({ pid, text }), () => undefined)));
  for (const status of statuses) {
    const uids = /^Uid:\s*(.*)$/m.exec(status?.text ?? '')?.[1]?.split(/\s+/).map(Number) ?? [];
    if (uids.includes(uid)) return `process ${status!.pid} runs as it`;
  }
  return undefined;
}
