import { readdir, readFile } from 'node:fs/promises';
import { sleep } from './fs.js';
import type { Logger } from './log.js';

/** Processes (other than us) whose command line mentions `text`: helpers started for one build's work dir. */
export async function processesMentioning(text: string): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    const cmdline = await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
    if (cmdline.includes(text)) pids.push(Number(entry));
  }
  return pids;
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
