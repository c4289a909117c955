import { readlinkSync } from 'node:fs';
import { mkdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { writeJsonAtomic } from './fs.js';
import { DEFAULT_RUN_DIR } from './paths.js';
import type { FuseConnection } from './fuse-connections.js';
import { statFields } from './processes.js';

/**
 * What a build holds, written down as it takes it, so that a build killed by SIGKILL (which no handler sees)
 * can be released by the next one. Two places:
 * - the registry, RUN_DIR/builds/<id>.json (root-only, fixed): which work directories have a build behind
 *   them, since IMAGEBUILDER_WORK_DIR differs from build to build;
 * - the record, <work dir>/build.json: the build's process and what it holds that cannot be found from the
 *   work directory's path alone (nbd devices, partition device nodes, partial outputs beside the output).
 * A build is alive while its process is: the same pid with the same start time (so a reused pid is not it).
 */

export const RECORD_FILE = 'build.json';

/** Something a build holds besides what lives under its work directory. */
export type Holding =
  | { kind: 'nbd'; device: string }
  /**
   * A loop device over the fuse backend's export. Found by its backing file while that is reachable; noted
   * because a build killed in a mount namespace of its own (a container, `unshare -m`) takes the export's
   * mount with it, and the loop device, which is the kernel's, then names its backing file only as "/".
   */
  | { kind: 'loop'; device: string }
  /**
   * The fuse backend's export: its FUSE connection (/sys/fs/fuse/connections/<n>) and the daemon serving it. A
   * build killed in a mount namespace of its own can leave that daemon stuck exiting (reap.ts): the reaper
   * aborts the connection, which is what the daemon's exit would have done.
   */
  | ({ kind: 'fuse-export'; server: BuildOwner } & FuseConnection)
  /** A partition device node made with mknod (no udev here). */
  | { kind: 'node'; path: string; disk: string }
  /** A file outside the work directory, removed if the build dies: a partial output. */
  | { kind: 'file'; path: string };

export interface BuildOwner {
  pid: number;
  /** /proc/<pid>/stat field 22: clock ticks after boot. */
  startTime: number;
  /** The PID namespace its pid means something in (/proc/self/ns/pid, "pid:[4026531836]"). */
  pidNamespace?: string;
}

export interface BuildRecord extends BuildOwner {
  id: string;
  workDir: string;
  /** The command line that started it, for people reading `imagebuilder cleanup`. */
  command: string;
  createdAt: string;
  /** --keep-work-dir: the directory is left in place even when its build died. */
  keep: boolean;
  holdings: Holding[];
}

export interface RegistryEntry extends BuildOwner {
  id: string;
  workDir: string;
}

export function registryDir(runDir = DEFAULT_RUN_DIR): string {
  return join(runDir, 'builds');
}

/** The start time of a process, or undefined when there is none (or only its zombie: it holds nothing). */
export function processStartTime(pid: number): number | undefined {
  const fields = statFields(`/proc/${pid}/stat`);
  if (!fields || fields[0] === 'Z' || fields[0] === 'X') return undefined;
  return Number(fields[19]);
}

function pidNamespace(): string | undefined {
  try {
    return readlinkSync('/proc/self/ns/pid');
  } catch {
    return undefined;
  }
}

export function currentOwner(): BuildOwner {
  const namespace = pidNamespace();
  return { pid: process.pid, startTime: processStartTime(process.pid) ?? 0, ...(namespace ? { pidNamespace: namespace } : {}) };
}

/**
 * Whether the process that owned a build may still be running (not merely a process with a reused pid). A build
 * of another PID namespace (a pod sharing the work directory's volume) cannot be judged from here: it counts as
 * alive, since taking a live build's mounts away is the one thing a reaper must never do.
 */
export function ownerAlive(owner: BuildOwner): boolean {
  if (owner.pidNamespace && owner.pidNamespace !== pidNamespace()) return true;
  return owner.pid > 0 && processStartTime(owner.pid) === owner.startTime;
}

/** Atomic: a reader (a reaper in another process) sees the old text or the new, never half of one. */
const writeJson = (path: string, value: unknown) => writeJsonAtomic(path, value, { mode: 0o600 });

export async function readJson<T>(path: string): Promise<T | undefined> {
  try {
    return JSON.parse(await readFile(path, 'utf8')) as T;
  } catch {
    return undefined;
  }
}

/** Registers a work directory before it exists, so that no moment of a build is unknown to a reaper. */
export async function registerBuild(entry: RegistryEntry, runDir?: string): Promise<void> {
  await mkdir(registryDir(runDir), { recursive: true, mode: 0o700 });
  await writeJson(join(registryDir(runDir), `${entry.id}.json`), entry);
}

export async function unregisterBuild(id: string, runDir?: string): Promise<void> {
  await rm(join(registryDir(runDir), `${id}.json`), { force: true });
}

// Writes of one record are chained, so holdings noted close together are all kept.
const pending = new Map<string, Promise<void>>();

async function updateRecord(workDir: string, change: (record: BuildRecord) => BuildRecord): Promise<void> {
  const path = join(workDir, RECORD_FILE);
  const previous = pending.get(path) ?? Promise.resolve();
  const next = previous.then(async () => {
    const record = await readJson<BuildRecord>(path);
    if (record) await writeJson(path, change(record));
  });
  pending.set(path, next.catch(() => undefined));
  await next;
}

export async function writeRecord(record: BuildRecord): Promise<void> {
  await writeJson(join(record.workDir, RECORD_FILE), record);
}

/**
 * Notes in the build's record a resource it is about to take (before, so a SIGKILL in between leaves it
 * findable); a reaper checks each against the host before releasing it, so noting one not taken is harmless.
 * A work directory without a record (a library caller's own) notes nothing.
 */
export async function noteHolding(workDir: string, holding: Holding): Promise<void> {
  await updateRecord(workDir, (record) => ({ ...record, holdings: [...record.holdings, holding] }));
}

/** The resource was released by the build itself: a reaper must not look for it any more. */
export async function forgetHolding(workDir: string, holding: Holding): Promise<void> {
  const same = (a: Holding) => JSON.stringify(a) === JSON.stringify(holding);
  await updateRecord(workDir, (record) => ({ ...record, holdings: record.holdings.filter((h) => !same(h)) }));
}
