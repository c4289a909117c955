import { mkdir, readdir, readFile, readlink, symlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { constants as osConstants } from 'node:os';
import { execa } from 'execa';
import { ImageBuilderError } from '../util/errors.js';
import { enableEmulation } from './emulation.js';
import { replaceTemporarily } from './guest-file.js';
import { CleanupStack } from '../util/cleanup.js';
import { formatCommand, type ExecOptions, type ExecResult, type Runner } from '../util/exec.js';
import { resolveInRoot } from '../util/fs.js';
import { isMounted } from '../util/mounts.js';
import { killAll } from '../util/processes.js';
import { sourceDateEpoch } from '../util/time.js';
import type { Logger } from '../util/log.js';

export interface SessionFile {
  path: string;
  content: string;
  mode: number;
}

export interface ChrootOptions {
  run: Runner;
  log: Logger;
  signal?: AbortSignal;
  /** Files present only while the session is open, e.g. policy-rc.d that keeps services from starting. */
  sessionFiles?: SessionFile[];
  /** The guest is mounted read-only: nothing is put into it (no DNS file, no session files). */
  readOnly?: boolean;
}

/**
 * Capabilities no build step needs and that would reach past the guest into the build host: loading kernel
 * modules, swapoff and mounts (sys_admin), firewall and interface changes, the clock, reboot, raw I/O,
 * tracing host processes, leaving the chroot by a second chroot, and device nodes for host disks.
 * Dropped from the bounding set, so even root inside the chroot cannot have them.
 */
export const DROPPED_CAPABILITIES = ['sys_module', 'sys_admin', 'net_admin', 'sys_time', 'sys_boot', 'sys_rawio', 'sys_ptrace', 'sys_chroot', 'mknod'];

/**
 * Run by the host's /bin/sh as PID 1 of a new PID, mount, UTS and IPC namespace (unshare): a /proc of that
 * namespace only (no host process, hence no /proc/1/root), with /proc/sys read-only (no host sysctl can be
 * changed), then chroot and drop the capabilities above (capsh), then the command. When the command ends,
 * the kernel ends everything it left running in the namespace.
 */
const ENTER_GUEST = [
  'set -e',
  'root=$1; shift',
  'mount -t proc -o nosuid,nodev,noexec proc "$root/proc"',
  'for p in sys sysrq-trigger; do [ -e "$root/proc/$p" ] || continue; mount --bind "$root/proc/$p" "$root/proc/$p"; mount -o remount,bind,ro "$root/proc/$p"; done',
  `exec capsh --chroot="$root" --drop=${DROPPED_CAPABILITIES.map((c) => `cap_${c}`).join(',')} --inh= --shell=/bin/sh -- -c 'exec "$@"' sh "$@"`,
].join('\n');

/**
 * CHROOT_ENV, and the build's SOURCE_DATE_EPOCH when set: the guest's own tools that honour it (mkinitramfs, dracut,
 * gzip of man pages, Python byte-compiling …) then date what they write at the build's time too.
 */
export function guestEnv(env: NodeJS.ProcessEnv = process.env): Record<string, string> {
  const epoch = sourceDateEpoch(env);
  return { ...CHROOT_ENV, ...(epoch ? { SOURCE_DATE_EPOCH: String(epoch.getTime() / 1000) } : {}) };
}

/**
 * argv (host side) that runs `argv` inside the guest at `root`, confined as ENTER_GUEST describes. The kernel
 * kills unshare when imagebuilder dies (even by SIGKILL: setpriv --pdeathsig), and unshare's --kill-child then
 * ends the namespace, so nothing a step started outlives a killed build.
 */
export function confinedCommand(root: string, argv: string[]): [string, string[]] {
  return ['setpriv', ['--pdeathsig', 'KILL', '--', 'unshare', '--pid', '--fork', '--kill-child', '--mount', '--propagation', 'private', '--uts', '--ipc', '/bin/sh', '-c', ENTER_GUEST, 'enter-guest', root, ...argv]];
}

/** The environment every command inside the guest gets; nothing from the host leaks in. */
export const CHROOT_ENV: Record<string, string> = {
  PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
  HOME: '/root',
  LC_ALL: 'C',
  LANG: 'C',
  TERM: 'dumb',
  DEBIAN_FRONTEND: 'noninteractive',
  DEBCONF_NONINTERACTIVE_SEEN: 'true',
  // systemctl and friends act on files only, never on a running manager.
  SYSTEMD_OFFLINE: '1',
};

export interface ChrootExecOptions extends Omit<ExecOptions, 'env' | 'extraEnv'> {
  env?: Record<string, string>;
}

export interface ChrootSession {
  readonly root: string;
  /** Runs argv inside the guest. */
  exec(argv: string[], options?: ChrootExecOptions): Promise<ExecResult>;
  /** Runs argv inside the guest on the user's terminal (stdin, stdout, stderr inherited); returns its exit code. */
  interactive(argv: string[], env?: Record<string, string>, signal?: AbortSignal): Promise<number>;
  /** Kills every process whose root is inside the guest; returns how many there were. */
  sweep(): Promise<number>;
  close(): Promise<void>;
}

/** Processes whose root directory is the guest (or below it): what a step left running. */
async function processesInside(root: string): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const processRoot = await readlink(`/proc/${entry}/root`).catch(() => undefined);
    if (processRoot && (processRoot === root || processRoot.startsWith(`${root}/`))) pids.push(Number(entry));
  }
  return pids;
}

/** A DNS configuration that works inside the guest: the host's, or the real upstreams behind a local stub. */
async function hostResolvConf(): Promise<string> {
  const text = await readFile('/etc/resolv.conf', 'utf8').catch(() => '');
  if (/^nameserver\s+127\.0\.0\.53/m.test(text)) {
    const upstream = await readFile('/run/systemd/resolve/resolv.conf', 'utf8').catch(() => undefined);
    if (upstream) return upstream;
  }
  return text;
}

/**
 * Opens a chroot session on a mounted guest: its programs made runnable (qemu-user through binfmt_misc for
 * a foreign architecture), private /proc, /sys, a minimal /dev (not the host's: a guest script cannot reach
 * host disks), /dev/pts, a private /run, working DNS, services blocked.
 * Everything is undone by close(), in reverse, after killing what is still running inside.
 */
export async function openChroot(root: string, options: ChrootOptions): Promise<ChrootSession> {
  const { run, log } = options;
  const cleanup = new CleanupStack(log);
  const mountIn = async (guestPath: string, args: string[]) => {
    const target = join(root, await resolveInRoot(root, guestPath));
    await mkdir(target, { recursive: true });
    // Registered before the mount: an interrupt while mount runs must not leave it behind.
    cleanup.push(`mount ${target}`, async () => {
      if (!(await isMounted(target))) return;
      const result = await run('umount', [target], { allowFailure: true });
      if (result.exitCode !== 0) await run('umount', ['--lazy', target], { allowFailure: true });
    });
    await run('mount', [...args, target], { log, purpose: `mounting ${guestPath} in the guest` });
    return target;
  };

  try {
    // First, before anything is mounted in the guest: a foreign guest (arm64 on amd64) without an emulator
    // fails here, and its registration outlives everything that runs inside.
    await enableEmulation(root, { run, log, cleanup });
    // /proc is mounted per command, inside its own PID namespace (confinedCommand); the directory must exist.
    await mkdir(join(root, await resolveInRoot(root, '/proc')), { recursive: true });
    await mountIn('/sys', ['-t', 'sysfs', '-o', 'ro', 'sysfs']);
    const dev = await mountIn('/dev', ['-t', 'tmpfs', '-o', 'mode=0755,nosuid', 'tmpfs']);
    for (const [name, major, minor] of [['null', 1, 3], ['zero', 1, 5], ['full', 1, 7], ['random', 1, 8], ['urandom', 1, 9], ['tty', 5, 0]] as const) {
      await run('mknod', ['-m', '666', join(dev, name), 'c', String(major), String(minor)]);
    }
    for (const [name, target] of [['fd', '/proc/self/fd'], ['stdin', '/proc/self/fd/0'], ['stdout', '/proc/self/fd/1'], ['stderr', '/proc/self/fd/2'], ['ptmx', 'pts/ptmx']]) {
      await symlink(target, join(dev, name));
    }
    await mkdir(join(dev, 'shm'), { mode: 0o1777 });
    await mountIn('/dev/pts', ['-t', 'devpts', '-o', 'newinstance,ptmxmode=0666,mode=0620', 'devpts']);
    await mountIn('/run', ['-t', 'tmpfs', '-o', 'mode=0755,nosuid,nodev', 'tmpfs']);

    const files: SessionFile[] = options.readOnly ? [] : [{ path: '/etc/resolv.conf', content: await hostResolvConf(), mode: 0o644 }, ...(options.sessionFiles ?? [])];
    for (const file of files) {
      // The file itself is replaced, not followed: a symlink stays the same symlink once restored.
      const guestPath = join(await resolveInRoot(root, dirname(file.path)), basename(file.path));
      const restore = await replaceTemporarily(root, guestPath, file.content, file.mode);
      cleanup.push(`restore ${file.path}`, restore);
    }
    // Last pushed, first run on release: nothing may hold the mounts when they are unmounted.
    cleanup.push('processes inside the guest', async () => void (await killAll(() => processesInside(root), log, 'process(es) left running inside the guest')));
  } catch (error) {
    await cleanup.unwind();
    throw error;
  }

  return {
    root,
    exec: (argv, execOptions = {}) =>
      run(...confinedCommand(root, argv), {
        // Messages show what ran in the guest, not the confinement wrapper around it.
        display: formatCommand('chroot', [root, ...argv]), log, ...execOptions, env: { ...guestEnv(), ...execOptions.env }, signal: execOptions.signal ?? options.signal }),
    interactive: async (argv, env = {}, signal = options.signal) => {
      const [file, args] = confinedCommand(root, argv);
      log.debug(`$ ${formatCommand('chroot', [root, ...argv])}`);
      // The user's terminal, in our process group: job control and Ctrl-C belong to the shell.
      // SIGTERM (not Ctrl-C) to imagebuilder ends the shell too, and everything is released.
      const result = await execa(file, args, { stdio: 'inherit', env: { ...guestEnv(), TERM: process.env.TERM ?? 'dumb', ...env }, extendEnv: false, reject: false, cancelSignal: signal });
      if (signal?.aborted) throw signal.reason;
      return result.exitCode ?? 128 + (osConstants.signals[result.signal as NodeJS.Signals] ?? 15);
    },
    sweep: () => killAll(() => processesInside(root), log, 'process(es) left running inside the guest'),
    close: async () => {
      const failures = await cleanup.unwind();
      if (failures.length) {
        throw new ImageBuilderError('COMMAND_FAILED', `closing the chroot session failed: ${failures.join('; ')}`, {
          hint: 'nothing was written; `mount | grep imagebuilder` shows what is still mounted',
        });
      }
    },
  };
}
