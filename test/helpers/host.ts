import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readdir, readFile, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { GUEST_REACHABLE_PORTS } from './static-server.js';

export const REPO = new URL('../..', import.meta.url).pathname.replace(/\/$/, '');
export const CLI = `${REPO}/bin/run.js`;

/** Runs the real CLI the way a user does. */
export async function runCli(args: string[], options: { cwd?: string; env?: Record<string, string> } = {}) {
  // The test mirrors on this host's loopback, explicitly opted in (the sandbox refuses the rest of it).
  const hostPorts = [...GUEST_REACHABLE_PORTS].join(',');
  const env = { ...(hostPorts ? { IMAGEBUILDER_HOST_PORTS: hostPorts } : {}), ...options.env };
  const result = await execa('node', [CLI, ...args], { cwd: options.cwd, env, reject: false, all: true });
  return { exitCode: result.exitCode, stdout: String(result.stdout), stderr: String(result.stderr), all: String(result.all) };
}

/** The CLI in a network namespace of its own with no interface but loopback (an air-gapped host, made with unshare --net). */
export async function runCliOffline(args: string[], env: Record<string, string>) {
  const result = await execa('unshare', ['--net', '--', 'node', CLI, ...args], { env, reject: false, all: true });
  return { exitCode: result.exitCode, stdout: String(result.stdout), stderr: String(result.stderr), all: String(result.all) };
}

/** `--json` prints one event per line, the result last: the result. */
export function jsonResult<T = any>(stdout: string): T {
  const lines = stdout.trim().split('\n');
  const result = JSON.parse(lines.at(-1)!) as { event?: string };
  if (result.event !== 'result') throw new Error(`the last line of --json output is not the result: ${lines.at(-1)}`);
  return result as T;
}

export async function sha256(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** What a build may leave on the host: mounts, loop devices, helper processes, sandbox namespaces and cgroups. */
export interface HostState {
  mounts: string[];
  loops: string[];
  helpers: string[];
  sandboxes: string[];
}

export async function hostState(): Promise<HostState> {
  const mounts = (await readFile('/proc/mounts', 'utf8'))
    .split('\n')
    // /run/netns: `ip netns add` mounts it on first use and nothing unmounts it; a build must never make it.
    .filter((line) => /imagebuilder-|\/dev\/loop|fuse| \/run\/netns /.test(line));
  const loops = (await execa('losetup', ['--list', '--noheadings', '--output', 'NAME,BACK-FILE'], { reject: false })).stdout
    .split('\n')
    .filter(Boolean);
  // Zombies have exited (a daemonized helper is reaped by PID 1, here late): they hold nothing.
  const helpers = (await execa('ps', ['-eo', 'pid=,stat=,args='], { reject: false })).stdout
    .split('\n')
    .map((line) => line.trim().split(/\s+/))
    .filter(([, stat, ...args]) => stat && !stat.startsWith('Z') && /qemu-storage-daemon|qemu-nbd|guestmount|qemu-system|^pasta|\/pasta /.test(args.join(' ')))
    .map(([pid, , ...args]) => `${pid} ${args.join(' ')}`);
  // The build sandbox's network namespaces and cgroups (src/chroot/sandbox.ts): released with the build.
  const sandboxes: string[] = [];
  for (const dir of ['/run/netns', '/sys/fs/cgroup', '/sys/fs/cgroup/memory', '/sys/fs/cgroup/pids']) {
    for (const name of await readdir(dir).catch(() => [] as string[])) if (name.startsWith('imagebuilder-')) sandboxes.push(join(dir, name));
  }
  return { mounts, loops, helpers, sandboxes };
}

/** Asserts the host holds nothing more than it did before the build. */
export async function expectNothingLeft(before: HostState): Promise<void> {
  const after = await hostState();
  expect(after.mounts).toEqual(before.mounts);
  expect(after.loops).toEqual(before.loops);
  expect(after.helpers).toEqual(before.helpers);
  expect(after.sandboxes).toEqual(before.sandboxes);
}

/**
 * What the host still holds for builds whose work directories are under `dir` (the IMAGEBUILDER_WORK_DIR a test
 * gives): mounts, loop devices backed there, live processes naming it or chrooted in it, and the work directories.
 * Other builds on the machine (other tests, other users) are not looked at.
 */
export async function leftoversUnder(dir: string): Promise<{ mounts: string[]; loops: string[]; processes: string[]; workDirs: string[] }> {
  const inside = (path: string) => path === dir || path.startsWith(`${dir}/`);
  const mounts = (await readFile('/proc/self/mountinfo', 'utf8'))
    .split('\n')
    .map((line) => line.split(' ')[4])
    .filter((target): target is string => !!target && inside(target));
  const loops: string[] = [];
  for (const name of await readdir('/sys/block')) {
    const backing = await readFile(`/sys/block/${name}/loop/backing_file`, 'utf8').catch(() => '');
    if (backing && inside(backing.trim())) loops.push(`/dev/${name}`);
  }
  const processes: string[] = [];
  for (const pid of (await readdir('/proc')).filter((entry) => /^\d+$/.test(entry) && Number(entry) !== process.pid)) {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
    if (!stat || stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z')) continue; // a zombie holds nothing
    const cmdline = (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).split('\0').join(' ');
    const root = await readlink(`/proc/${pid}/root`).catch(() => '/');
    if (cmdline.includes(dir) || (root !== '/' && inside(root))) processes.push(`${pid} ${cmdline.trim()}`);
  }
  const workDirs = (await readdir(dir).catch(() => [] as string[])).filter((name) => name.startsWith('imagebuilder-'));
  return { mounts, loops, processes, workDirs };
}

export const NOTHING_LEFT = { mounts: [], loops: [], processes: [], workDirs: [] };
