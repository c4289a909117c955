import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { readdir, readFile, readlink } from 'node:fs/promises';
import { sleep } from './fs.js';
import type { BuildOwner } from './build-record.js';
import type { Logger } from './log.js';

/** The pids of every process now (/proc listed synchronously: the kernel answers from memory). */
export function processIds(): number[] {
  return readdirSync('/proc').filter((entry) => /^\d+$/.test(entry)).map(Number);
}

/**
 * The paths of every file some process of this host has open, as the kernel names them (links resolved): a layer
 * a build's qemu-storage-daemon reads. Read from /proc/<pid>/fd links only, never through them. Throws unless
 * root (another user sees no root process's files, so what is open would be unknown); as root, a process whose
 * files are still refused (a container's init, outside our namespaces) is one no build of ours runs as.
 * Processes of other PID namespaces are not seen.
 */
export async function openFilePaths(): Promise<Set<string>> {
  if (process.getuid?.() !== 0) throw new Error('only root sees which files every process has open');
  const open = new Set<string>();
  const skipped = (error: unknown) => ['ENOENT', 'ESRCH', 'EACCES', 'EPERM'].includes((error as NodeJS.ErrnoException).code ?? '');
  for (const pid of processIds()) {
    let fds: string[];
    try {
      fds = await readdir(`/proc/${pid}/fd`);
    } catch (error) {
      if (skipped(error)) continue;
      throw error;
    }
    for (const fd of fds) {
      try {
        const target = await readlink(`/proc/${pid}/fd/${fd}`);
        if (target.startsWith('/')) open.add(target);
      } catch (error) {
        if (!skipped(error)) throw error;
      }
    }
  }
  return open;
}

/**
 * A process's arguments, NUL-separated ('' when it is gone or a kernel thread). Read asynchronously: the kernel
 * takes the process's memory lock to read them, which a process stuck in disk wait (on a dead export) may hold.
 */
export async function processArgv(pid: number): Promise<string> {
  return readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
}

/** A process's root directory, undefined when it is gone (a link the kernel answers without the process's locks). */
export function processRoot(pid: number): string | undefined {
  try {
    return readlinkSync(`/proc/${pid}/root`);
  } catch {
    return undefined;
  }
}

/**
 * Every process but us with its arguments (processArgv), read all at once: one await per process cost ~15 ms a
 * scan of a host's ~70 processes.
 */
export async function otherProcesses(): Promise<{ pid: number; argv: string }[]> {
  const pids = processIds().filter((pid) => pid !== process.pid);
  const argvs = await Promise.all(pids.map(processArgv));
  return pids.map((pid, index) => ({ pid, argv: argvs[index] }));
}

/** Processes (other than us) whose command line mentions `text`: helpers started for one build's work dir. */
export async function processesMentioning(text: string): Promise<number[]> {
  return (await otherProcesses()).filter(({ argv }) => argv.includes(text)).map(({ pid }) => pid);
}

/**
 * /proc/<pid>/stat fields after the command name's closing ')' (the name may hold spaces and parentheses): the
 * state is [0], the flags [6], the start time [19].
 */
export function statFields(path: string): string[] | undefined {
  try {
    const stat = readFileSync(path, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  } catch {
    return undefined;
  }
}

/** The kernel's PF_EXITING task flag: set on entering the exit path (do_exit). */
const PF_EXITING = 0x4;

/**
 * Whether `owner` (its pid with its start time, even as a zombie) is part-way through exiting: its main thread
 * is exiting or gone, and a thread of it is in the kernel's exit path still. Such a process can neither be
 * killed nor serve anything.
 */
export function stillExiting(owner: BuildOwner): boolean {
  const leader = statFields(`/proc/${owner.pid}/stat`);
  if (!leader || Number(leader[19]) !== owner.startTime) return false;
  // The process as a whole, not one worker thread of a live one ending its work: its main thread is in exit too.
  if (leader[0] !== 'Z' && (Number(leader[6]) & PF_EXITING) === 0) return false;
  let threads: string[];
  try {
    threads = readdirSync(`/proc/${owner.pid}/task`);
  } catch {
    return false;
  }
  return threads.some((tid) => {
    const fields = statFields(`/proc/${owner.pid}/task/${tid}/stat`);
    return !!fields && !['Z', 'X'].includes(fields[0]) && (Number(fields[6]) & PF_EXITING) !== 0;
  });
}

/** SIGTERM, a grace period, then SIGKILL, until none of `find()`'s processes remain. Returns how many there were. */
export async function killAll(find: () => Promise<number[]>, log: Logger, what: string, graceMs = 3000): Promise<number> {
  let pids = await find();
  const count = pids.length;
  if (count) log.warn(`killing ${count} ${what}: ${pids.join(' ')}`);
  for (const signal of ['SIGTERM', 'SIGKILL'] as const) {
    for (const pid of pids) {
      try {
        process.kill(pid, signal);
      } catch {
        // already gone
      }
    }
    for (let waited = 0; waited < graceMs && (pids = await find()).length; waited += 100) await sleep(100);
    if (!pids.length) break;
  }
  return count;
}
