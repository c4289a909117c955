import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { expectNothingLeft, hostState, type HostState } from './host.js';

/**
 * What a hostile image must never change on the build host, read before an attack and compared after it:
 * a canary file and directory the attack aims at (tests point guest symlinks, devices and fstab entries at
 * them), kernel settings a root process could change through /proc/sys, the binfmt_misc registrations, and
 * everything `hostState` covers (mounts, loop devices, helper processes).
 */
export interface HostSnapshot {
  canaryDir: string;
  canaryFile: string;
  files: Record<string, string>;
  canaryMtimeMs: number;
  sysctls: Record<string, string>;
  binfmt: string[];
  state: HostState;
}

/** Kernel settings a root process inside the guest could try to change (all world-readable). */
export const WATCHED_SYSCTLS = [
  'kernel/core_pattern',
  'kernel/modprobe',
  'kernel/hostname',
  'kernel/panic',
  'kernel/panic_on_oops',
  'net/ipv4/ip_forward',
  'vm/overcommit_memory',
  'fs/protected_symlinks',
];

export const CANARY_CONTENT = 'host canary: a hostile image must never change or read this\n';

/** Every file under `dir` (relative path → content), and every directory as `path/`. */
async function readTree(dir: string, prefix = ''): Promise<Record<string, string>> {
  const files: Record<string, string> = {};
  for (const entry of (await readdir(dir, { withFileTypes: true })).sort((a, b) => a.name.localeCompare(b.name))) {
    const path = `${prefix}${entry.name}`;
    if (entry.isDirectory()) Object.assign(files, { [`${path}/`]: '' }, await readTree(join(dir, entry.name), `${path}/`));
    else files[path] = await readFile(join(dir, entry.name), 'utf8');
  }
  return files;
}

async function binfmtEntries(): Promise<string[]> {
  return (await readdir('/proc/sys/fs/binfmt_misc').catch(() => [] as string[])).sort();
}

/** Makes a fresh canary directory (with one file) under /var/tmp and reads the host's state. */
export async function snapshotHost(): Promise<HostSnapshot> {
  const canaryDir = await mkdtemp('/var/tmp/ib-canary-');
  const canaryFile = join(canaryDir, 'canary.txt');
  await writeFile(canaryFile, CANARY_CONTENT, { mode: 0o600 });
  await mkdir(join(canaryDir, 'subdir'));
  await writeFile(join(canaryDir, 'subdir', 'inner.txt'), CANARY_CONTENT);
  const sysctls: Record<string, string> = {};
  for (const name of WATCHED_SYSCTLS) sysctls[name] = await readFile(`/proc/sys/${name}`, 'utf8').catch(() => '(unreadable)');
  return {
    canaryDir,
    canaryFile,
    files: await readTree(canaryDir),
    canaryMtimeMs: (await stat(canaryFile)).mtimeMs,
    sysctls,
    binfmt: await binfmtEntries(),
    state: await hostState(),
  };
}

/** Asserts the host is as the snapshot found it; then removes the canary. */
export async function expectHostUntouched(before: HostSnapshot): Promise<void> {
  try {
    expect(await readTree(before.canaryDir)).toEqual(before.files);
    expect(before.files).toEqual({ 'canary.txt': CANARY_CONTENT, 'subdir/': '', 'subdir/inner.txt': CANARY_CONTENT });
    expect((await stat(before.canaryFile)).mtimeMs).toBe(before.canaryMtimeMs);
    const sysctls: Record<string, string> = {};
    for (const name of WATCHED_SYSCTLS) sysctls[name] = await readFile(`/proc/sys/${name}`, 'utf8').catch(() => '(unreadable)');
    expect(sysctls).toEqual(before.sysctls);
    expect(await binfmtEntries()).toEqual(before.binfmt);
    await expectNothingLeft(before.state);
  } finally {
    await rm(before.canaryDir, { recursive: true, force: true });
  }
}

/**
 * The canary alone as snapshotHost made it (entries, content, mtime); then removes it. For tests whose attack
 * aims only at the canary: expectHostUntouched's host-wide mounts and helpers also see the builds that other
 * test runs on a shared machine start and end meanwhile.
 */
export async function expectCanaryUntouched(before: HostSnapshot): Promise<void> {
  try {
    expect(await readTree(before.canaryDir)).toEqual(before.files);
    expect(await readTree(join(before.canaryDir, 'subdir'))).toEqual({ 'inner.txt': CANARY_CONTENT });
    expect((await readdir(before.canaryDir)).sort()).toEqual(['canary.txt', 'subdir']);
    expect((await stat(before.canaryFile)).mtimeMs).toBe(before.canaryMtimeMs);
  } finally {
    await rm(before.canaryDir, { recursive: true, force: true });
  }
}
