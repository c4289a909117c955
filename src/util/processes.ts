import { readdirSync, readlinkSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { sleep } from './fs.js';
import type { Logger } from './log.js';

/** The pids of every process now (/proc listed synchronously: the kernel answers from memory). */
export function processIds(): number[] {
  return readdirSync('/proc').filter((entry) => /^\d+$/.test(entry)).map(Number);
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
