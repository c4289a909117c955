import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { sleep } from './fs.js';
import type { Logger } from './log.js';

// /proc is read synchronously: each read takes microseconds from the kernel's memory, where one await per process
// cost ~15 ms for a host's ~70 processes, paid by every scan of a build's release.

/** The pids of every process now. */
export function processIds(): number[] {
  return readdirSync('/proc').filter((entry) => /^\d+$/.test(entry)).map(Number);
}

/** A process's arguments ('' when it is gone or a kernel thread). */
export function processArgv(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8');
  } catch {
    return '';
  }
}

/** A process's root directory, undefined when it is gone. */
export function processRoot(pid: number): string | undefined {
  try {
    return readlinkSync(`/proc/${pid}/root`);
  } catch {
    return undefined;
  }
}

/** Processes (other than us) whose command line mentions `text`: helpers started for one build's work dir. */
export async function processesMentioning(text: string): Promise<number[]> {
  return processIds().filter((pid) => pid !== process.pid && processArgv(pid).includes(text));
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
