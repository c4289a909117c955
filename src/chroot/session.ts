import { mkdir } from 'node:fs/promises';
import { basename, dirname, join, relative } from 'node:path';
import { constants as osConstants } from 'node:os';
import { execa } from 'execa';
import { displayGuestCommand, formatBytes, hostAddresses, openBuildSandbox, refusedDestination, sandboxedCommand, SESSION_DEV_BYTES, type BuildSandbox, type GuestTimeout, type GuestNetwork, type SandboxLimits } from './sandbox.js';
import { ImageBuilderError } from '../util/errors.js';
import { enableEmulation } from './emulation.js';
import { replaceTemporarily } from './guest-file.js';
import { CleanupStack } from '../util/cleanup.js';
import { CommandTimeout, formatCommand, type ExecOptions, type ExecResult, type Runner } from '../util/exec.js';
import { resolveInRoot, sleep } from '../util/fs.js';
import { guardHostFilesystems, holdDirectory, isInside, realRoot as realPathOfRoot } from '../util/guest-fs.js';
import { isMounted, mountsUnder, mountTable } from '../util/mounts.js';
import { killAll, processIds, processRoot } from '../util/processes.js';
import { sourceDateEpoch } from '../util/time.js';
import { terminalRelay, type Logger } from '../util/log.js';

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
  /** The build's sandbox (network, cgroups, seccomp), shared by its sessions; without one the session makes its own. */
  sandbox?: BuildSandbox;
  /** Limits of the sandbox the session makes when it is given none. */
  limits?: Partial<SandboxLimits>;
  /** Host loopback ports of the sandbox the session makes when it is given none (--host-port). */
  hostPorts?: number[];
  /** Private networks of the sandbox the session makes when it is given none (--allow-network). */
  allowNetworks?: string[];
  /** The network guest commands get unless an exec says otherwise. */
  network?: GuestNetwork;
  /**
   * How long a guest command may run when its exec sets no time of its own: a crafted image's /bin/sh (or
   * systemctl, getent …) that never returns must not hold the build, its mounts and its devices forever.
   */
  commandTimeout?: GuestTimeout;
  /**
   * Host directories the guest reads for the session, bound read-only under its private /run (never into the
   * image): an offline build's bundle repository. Each must be a directory this build made.
   */
  readOnlyBinds?: { host: string; guest: `/run/${string}` }[];
}

/**
 * CHROOT_ENV, and the build's SOURCE_DATE_EPOCH when set: the guest's own tools that honour it (mkinitramfs, dracut,
 * gzip of man pages, Python byte-compiling …) then date what they write at the build's time too.
 */
export function guestEnv(env: NodeJS.ProcessEnv = process.env): Record<string, string> {
  const epoch = sourceDateEpoch(env);
  return { ...CHROOT_ENV, ...(epoch ? { SOURCE_DATE_EPOCH: String(epoch.getTime() / 1000) } : {}) };
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
  /** This command's network: the session's by default. */
  network?: GuestNetwork;
  /** The guest's root read-only for this command (a minimal /dev, a fresh /tmp): checks, which must not change the image. */
  readOnlyRoot?: boolean;
  /**
   * The tool's own command that needs no network (a write into the guest, a probe): it runs with none whatever
   * the step's, and a failure is not put down to that. A build whose commands all say so makes no network.
   */
  needsNoNetwork?: boolean;
}

export interface ChrootSession {
  readonly root: string;
  /**
   * This session's private /run (a fresh tmpfs each session) as the host reaches it, for what the host itself
   * keeps there: a directory descriptor's /proc/self/fd path, valid until close(). One object per session, shared
   * by every view of it (a step's network wrapper).
   */
  readonly privateRun?: { readonly dir: string; readonly closed: boolean };
  /** Runs argv inside the guest. */
  exec(argv: string[], options?: ChrootExecOptions): Promise<ExecResult>;
  /**
   * Runs argv inside the guest on a pty of its own, relayed to the user's terminal (script(1)): nothing the
   * guest does to its terminal (TIOCSTI, a new controlling terminal) reaches the user's. Returns its exit code.
   */
  interactive(argv: string[], env?: Record<string, string>, signal?: AbortSignal): Promise<number>;
  /** Kills every process whose root is inside the guest; returns how many there were. */
  sweep(): Promise<number>;
  close(): Promise<void>;
}

/** Processes whose root directory is the guest (or below it): what a step left running. */
async function processesInside(root: string): Promise<number[]> {
  return processIds().filter((pid) => {
    const processRootDir = processRoot(pid);
    return processRootDir !== undefined && (processRootDir === root || processRootDir.startsWith(`${root}/`));
  });
}

/** What guest commands left running: in the build's cgroups, or (a session without them) rooted in the guest. */
async function leftBehind(root: string, sandbox: BuildSandbox): Promise<number[]> {
  const find = async () => {
    const pids = new Set([...(await sandbox.processes()), ...(await processesInside(root))]);
    pids.delete(process.pid);
    return [...pids];
  };
  // A command's PID namespace is torn down as its init exits: give the kernel a moment before calling what
  // remains left behind.
  for (let waited = 0; waited < 500; waited += 50) {
    const pids = await find();
    if (!pids.length) return pids;
    await sleep(50);
  }
  return find();
}

/**
 * After a guest command failed: when the build's memory or pids limit was hit meanwhile, a STEP error that
 * names it (the command's own failure would only say "Killed" or "Resource temporarily unavailable").
 */
async function throwIfLimitHit(sandbox: BuildSandbox, before: { oomKills: number; pidsRefused: number }, options: ExecOptions, command: string, cause?: unknown): Promise<void> {
  const after = await sandbox.counters();
  const hit = after.oomKills > before.oomKills
    ? { limit: `the memory limit (${formatBytes(sandbox.limits.memoryBytes)})`, change: '--memory-limit or the recipe\'s limits.memory' }
    : after.pidsRefused > before.pidsRefused
      ? { limit: `the pids limit (${sandbox.limits.pids} processes)`, change: '--pids-limit or the recipe\'s limits.pids' }
      : undefined;
  if (!hit) return;
  const detail = cause instanceof Error ? `: ${cause.message.split('\n')[0]}` : '';
  throw new ImageBuilderError(options.errorCode ?? 'COMMAND_FAILED', `${options.purpose ?? command} — it hit ${hit.limit}${detail}`, {
    hint: `the guest's commands of one build share that limit; raise it with ${hit.change} if the step really needs more`,
  });
}

/**
 * Unmounts those of `targets` (paths under `root`) mounted now, in the order given, by one umount; any that stays
 * (busy) is detached lazily. A release registered before its mount: nothing mounted, nothing done.
 */
async function unmountTargets(run: Runner, root: string, targets: string[]): Promise<void> {
  const present = new Set(await mountsUnder(root));
  const mounted = targets.filter((target) => present.has(target));
  if (!mounted.length) return;
  if ((await run('umount', mounted, { allowFailure: true })).exitCode === 0) return;
  for (const target of mounted) if (await isMounted(target)) await run('umount', ['--lazy', target], { allowFailure: true });
}

/** A mount the session made, as the kernel's table names it: its id and its device (an id alone is reused once freed). */
interface SessionMount {
  id: number;
  device: string;
}

/**
 * Where the session's mounts are now (a rename of a parent moves a mount point), in mount order: only an entry of
 * the same id and device, under the guest's root (another build's mount may have been given a freed id).
 */
async function whereMounted(mounts: readonly SessionMount[], realRoot: string): Promise<string[]> {
  const table = await mountTable();
  return table.filter((entry) => mounts.some((mount) => mount.id === entry.id && mount.device === entry.device) && entry.target.startsWith(`${realRoot}/`)).map((entry) => entry.target);
}

/**
 * Unmounts the session's mounts wherever they are now, innermost first, by one umount; what stays (busy) is
 * detached lazily; one still mounted after that fails the release (and keeps the host's reads off it).
 */
async function unmountSession(run: Runner, mounts: readonly SessionMount[], realRoot: string): Promise<void> {
  const present = (await whereMounted(mounts, realRoot)).reverse();
  if (!present.length) return;
  // Done once umount says so: looking again could find another build's mount given a freed id.
  if ((await run('umount', present, { allowFailure: true })).exitCode === 0) return;
  for (const target of (await whereMounted(mounts, realRoot)).reverse()) await run('umount', ['--lazy', target], { allowFailure: true });
  const left = await whereMounted(mounts, realRoot);
  if (left.length) {
    throw new ImageBuilderError('COMMAND_FAILED', `the session's mounts at ${left.join(', ')} could not be released`, { hint: '`mount | grep imagebuilder` shows them; `imagebuilder cleanup` releases what a build left' });
  }
}

/** The six device nodes of the guest's /dev: name, major, minor. */
const DEVICE_NODES = [['null', 1, 3], ['zero', 1, 5], ['full', 1, 7], ['random', 1, 8], ['urandom', 1, 9], ['tty', 5, 0]] as const;
const DEVICE_LINKS = [['fd', '/proc/self/fd'], ['stdin', '/proc/self/fd/0'], ['stdout', '/proc/self/fd/1'], ['stderr', '/proc/self/fd/2'], ['ptmx', 'pts/ptmx']] as const;

/**
 * What of sysfs says which machine the host is, each hidden where this kernel has it (a directory under an empty
 * read-only tmpfs, a file under /dev/null): ACPI tables (a licence key in MSDM), DMI (serial numbers, the product
 * UUID), QEMU's fw_cfg (a cloud's user data), iBFT and the iSCSI boot tables (a target and its secrets), the
 * device tree (a board's serial number), the hypervisor's (Xen: EC2's instance UUID). /sys/firmware/efi stays:
 * packages ask whether the machine booted by EFI. Mounted by the host under its own fresh sysfs, never through
 * the guest's paths; shell globs (iscsi_boot0 …) allowed.
 */
export const SYSFS_HIDDEN = ['firmware/acpi/tables', 'firmware/dmi', 'firmware/qemu_fw_cfg', 'firmware/ibft', 'firmware/iscsi_boot*', 'firmware/devicetree', 'firmware/fdt', 'devices/virtual/dmi/id', 'hypervisor'];

/**
 * A read-only /sys (SYSFS_HIDDEN hidden), our own /dev (a tmpfs: six nodes, the usual links, /dev/shm, a new devpts instance) and a
 * private /run: every mount in one process and released by one umount (a process each cost ~10 ms a mount). /dev
 * (with its /dev/shm) is SESSION_DEV_BYTES; /run (apt's binary caches, a bundle's lists, the container archives a
 * container-images step stages: gigabytes) is as large as the build's memory limit, which its pages count against
 * where the build has its cgroup.
 * Targets are resolved inside the guest first; everything under /dev is in our own tmpfs.
 */
const SESSION_MOUNTS_SCRIPT = [
  'set -e; sys=$1; dev=$2; run=$3; runsize=$4; shift 4',
  // From a network namespace of its own (sysfs shows the mounter's): the guest sees no interface of the host's.
  'unshare --net -- mount -t sysfs -o ro sysfs "$sys"',
  `for hidden in ${SYSFS_HIDDEN.map((path) => `"$sys"/${path}`).join(' ')}; do`,
  '  if [ -L "$hidden" ]; then :',
  '  elif [ -d "$hidden" ]; then mount -t tmpfs -o ro,nosuid,nodev,noexec,mode=0755,size=4096 tmpfs "$hidden"',
  '  elif [ -f "$hidden" ]; then mount --bind /dev/null "$hidden"; fi',
  'done',
  // Sized: without the build's cgroup (a read-only /sys/fs/cgroup), each would be half the host's memory.
  `mount -t tmpfs -o mode=0755,nosuid,size=${SESSION_DEV_BYTES} tmpfs "$dev"`,
  'while [ "$1" != -- ]; do mknod -m 666 "$dev/$1" c "$2" "$3"; shift 3; done; shift',
  'while [ $# -gt 0 ]; do ln -s "$2" "$dev/$1"; shift 2; done',
  'mkdir -m 1777 "$dev/shm"; mkdir "$dev/pts"',
  'mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$dev/pts"',
  'mount -t tmpfs -o "mode=0755,nosuid,nodev,size=$runsize" tmpfs "$run"',
].join('\n');

async function mountSessionFilesystems(root: string, { run, log, cleanup, runBytes }: { run: Runner; log: Logger; cleanup: CleanupStack; runBytes: number }): Promise<string> {
  const names = ['/sys', '/dev', '/run'];
  const resolved = await Promise.all(names.map((guestPath) => resolveInRoot(root, guestPath)));
  // Resolved before anything is mounted, so none may lead into another: a /run that led into /dev (/dev/fd)
  // would be reached through our own /dev's links, which lead out of the guest, when the script mounts it.
  for (const [i, a] of resolved.entries()) {
    for (const [j, b] of resolved.entries()) {
      if (i !== j && isInside(a, b)) {
        throw new ImageBuilderError('BAD_INPUT', `the guest's ${names[j]} leads to ${b}, ${a === b ? 'which is' : 'inside'} its ${names[i]} (${a}): the build mounts its own filesystems on each`, {
          hint: `${names[j]} must be a directory of its own in the image (a link elsewhere, as /var/run -> /run, is fine)`,
        });
      }
    }
  }
  const [sys, dev, runDir] = await Promise.all(resolved.map(async (guestPath) => {
    const target = join(root, guestPath);
    await mkdir(target, { recursive: true });
    return target;
  }));
  // Released by path: a target that is a mount point already (a guest /run leading to its /boot/efi) would have
  // that mount taken for ours, should the script stop before mounting there.
  const mountedAlready = new Set(await mountsUnder(root));
  for (const [i, target] of [sys, dev, runDir].entries()) {
    if (mountedAlready.has(target)) {
      throw new ImageBuilderError('BAD_INPUT', `the guest's ${names[i]} leads to ${resolved[i]}, which is a mount point already: one of the image's filesystems, or a mount an earlier session could not release`, {
        hint: `${names[i]} must be a directory of its own in the image's root filesystem; \`mount | grep ${target}\` shows what is mounted there`,
      });
    }
  }
  // In mount order; released in reverse. Registered before anything is mounted: an interrupt while the script
  // runs must not leave a mount behind.
  const targets = [sys, dev, join(dev, 'pts'), runDir];
  // Pushed before the mounts' release, so lifted only once they are gone: from before they are mounted, no guest
  // path leads a host read into the host's sysfs or to a device node of our /dev (guest-fs refuses them by
  // filesystem, and a read on its way waits while they are mounted).
  const guard = await guardHostFilesystems(root);
  // The kernel's table names real paths: a work directory given through a link is compared as it really is.
  const realRoot = await realPathOfRoot(root);
  const realTargets = targets.map((target) => join(realRoot, relative(root, target)));
  // What hides parts of the session's /sys: whatever is mounted inside it, which only the script mounts.
  const [realSys] = realTargets;
  const insideSys = (target: string) => target.startsWith(`${realSys}/`);
  const made: { mounts?: SessionMount[] } = {};
  cleanup.push("host reads refused on the session's /sys, /dev, /dev/pts", async () => {
    const left = made.mounts ? await whereMounted(made.mounts, realRoot) : (await Promise.all(realTargets.map(async (target) => ((await isMounted(target)) ? [target] : [])))).flat();
    if (!left.length) return guard.release();
    // Still mounted (a release that failed): refused for good, what is left named now, so no read waits on a
    // mounting that will not finish.
    await guard.refuse(left);
  });
  cleanup.push('session mounts (/sys and what hides parts of it, /dev, /dev/pts, /run)', async () =>
    made.mounts ? unmountSession(run, made.mounts, realRoot) : unmountTargets(run, realRoot, [...(await mountsUnder(realSys)).filter(insideSys).reverse(), ...[...realTargets].reverse()]),
  );
  await run('/bin/sh', ['-c', SESSION_MOUNTS_SCRIPT, 'session-mounts', sys, dev, runDir, String(runBytes), ...DEVICE_NODES.flat().map(String), '--', ...DEVICE_LINKS.flat()], {
    log, purpose: "mounting the guest's /sys, /dev, /dev/pts and /run",
  });
  // By mount id and device, not path: a guest that renames a parent of a mount point (/sys a link to /srv/s, then
  // `mv /srv /srv2`) moves the mount with it, and a release by path would miss it and leave it mounted.
  const table = await mountTable();
  made.mounts = [
    ...realTargets.map((real) => {
      const entry = [...table].reverse().find((mount) => mount.target === real);
      if (!entry) throw new ImageBuilderError('COMMAND_FAILED', `the session's mount at ${real} is not in the mount table after mounting it`, { hint: '`mount | grep imagebuilder` shows what is mounted; `imagebuilder cleanup` releases what a build left' });
      return { id: entry.id, device: entry.device };
    }),
    ...table.filter((mount) => insideSys(mount.target)).map((mount) => ({ id: mount.id, device: mount.device })),
  ];
  await guard.refuse([sys, dev, join(dev, 'pts')]);
  return runDir;
}

/** What a guest command stopped at the session's limit is told: a crafted image's program that never returns, or a slow one. */
const SESSION_TIMEOUT_HINT = 'a guest program that never returns (a crafted or broken image) is stopped there: raise limits.timeout only if it is merely slow (it bounds package installs too)';

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
    cleanup.push(`mount ${target}`, () => unmountTargets(run, root, [target]));
    await run('mount', [...args, target], { log, purpose: `mounting ${guestPath} in the guest` });
    return target;
  };

  let sandbox: BuildSandbox;
  let privateRun: { dir: string; closed: boolean };
  try {
    sandbox = options.sandbox ?? (await openBuildSandbox({ run, log, cleanup, limits: options.limits, hostPorts: options.hostPorts, allowNetworks: options.allowNetworks }));
    // First, before anything is mounted in the guest: a foreign guest (arm64 on amd64) without an emulator
    // fails here, and its registration outlives everything that runs inside.
    await enableEmulation(root, { run, log, cleanup });
    // bwrap mounts /proc per command, of the command's own PID namespace; the directory must exist.
    await mkdir(join(root, await resolveInRoot(root, '/proc')), { recursive: true });
    const runDir = await mountSessionFilesystems(root, { run, log, cleanup, runBytes: sandbox.limits.memoryBytes });
    // Held open while the session lasts and reached through /proc/self/fd: whatever a guest renames on the way
    // to the mount point (a /run that is a link into /var), the host lands on its tmpfs and nowhere else.
    const runHandle = await holdDirectory(runDir);
    const held = { dir: `/proc/self/fd/${runHandle.fd}`, closed: false };
    // Marked first: once closed, its descriptor number may name another directory (a matrix's next build).
    cleanup.push('private /run handle', async () => {
      held.closed = true;
      await runHandle.close();
    });
    privateRun = held;
    for (const bind of options.readOnlyBinds ?? []) await mountIn(bind.guest, ['--bind', '-o', 'ro,nosuid,nodev', bind.host]);

    const files: SessionFile[] = options.readOnly ? [] : [{ path: '/etc/resolv.conf', content: sandbox.resolvConf, mode: 0o644 }, ...(options.sessionFiles ?? [])];
    for (const file of files) {
      // The file itself is replaced, not followed: a symlink stays the same symlink once restored.
      const guestPath = join(await resolveInRoot(root, dirname(file.path)), basename(file.path));
      const restore = await replaceTemporarily(root, guestPath, file.content, file.mode);
      cleanup.push(`restore ${file.path}`, restore);
    }
    // Last pushed, first run on release: nothing may hold the mounts when they are unmounted.
    cleanup.push('processes inside the guest', async () => void (await killAll(() => leftBehind(root, sandbox), log, 'process(es) left running inside the guest')));
  } catch (error) {
    await cleanup.unwind();
    throw error;
  }

  const network = options.network ?? 'sandboxed';
  // The namespace path for a command on `wanted` network, made on first use: none for an offline sandbox.
  const netnsFor = async (wanted: GuestNetwork) => (wanted === 'sandboxed' && !sandbox.offline ? sandbox.networkNamespace() : undefined);
  return {
    root,
    privateRun,
    exec: async (argv, execOptions = {}) => {
      const { network: commandNetwork, readOnlyRoot, needsNoNetwork, ...rest } = execOptions;
      const before = await sandbox.counters();
      const wanted = needsNoNetwork ? 'none' : (commandNetwork ?? network);
      const command = sandboxedCommand(root, argv, sandbox, { network: wanted, netns: await netnsFor(wanted), readOnlyRoot });
      try {
        // The session's limit where the caller sets none, named as the recipe's (a package install's included).
        const limit = rest.timeoutMs === undefined && options.commandTimeout
          ? { timeoutMs: options.commandTimeout.seconds * 1000, timeoutSource: options.commandTimeout.source, timeoutHint: SESSION_TIMEOUT_HINT }
          : {};
        const result = await run(...command, {
          // Messages show what ran in the guest, not the sandbox around it.
          display: displayGuestCommand(root, argv), log, ...rest, ...limit, env: { ...guestEnv(), ...rest.env }, signal: rest.signal ?? options.signal });
        if (result.exitCode !== 0) await throwIfLimitHit(sandbox, before, rest, displayGuestCommand(root, argv));
        // Allowed to fail, but not to take the session's time: the caller set none and reads only exit codes.
        if (result.timedOut && rest.timeoutMs === undefined) {
          throw CommandTimeout.of(displayGuestCommand(root, argv), { ...rest, ...limit }, result.output);
        }
        return result;
      } catch (error) {
        await throwIfLimitHit(sandbox, before, rest, displayGuestCommand(root, argv), error);
        if (!(error instanceof ImageBuilderError) || error instanceof CommandTimeout) throw error;
        // Without a network apt and dnf fail on name resolution; say why there is none.
        if (wanted === 'none' && !needsNoNetwork) {
          throw new ImageBuilderError(error.code, `${error.message} (this step has no network: network: none)`, {
            detail: error.detail, cause: error,
            hint: 'the step runs with network: none (its own, or the recipe\'s): remove that to let it reach package mirrors and downloads',
          });
        }
        // A mirror or proxy on a private network or this host: refused by the sandbox, which the program only calls
        // "Permission denied".
        const refused = wanted === 'sandboxed' && /permission denied/i.test(error.detail ?? '') ? refusedDestination(error.detail!, await hostAddresses(run)) : undefined;
        if (refused) {
          const why = refused.hostOwn
            ? `${refused.address} is this host's own address, which guest commands are refused whatever --allow-network says: a mirror served on this host is reached with --host-port PORT, at 127.0.0.1 in the guest`
            : `${refused.address} is on a private network, which guest commands are refused: if it is your mirror or proxy, --allow-network ${refused.address} (or its network, in CIDR form) lets them reach it`;
          throw new ImageBuilderError(error.code, error.message, { detail: error.detail, cause: error, hint: error.hint ? `${why}; otherwise: ${error.hint}` : why });
        }
        throw error;
      }
    },
    interactive: async (argv, env = {}, signal = options.signal) => {
      // On a terminal, script(1) gives the shell a pty of its own, in a new session, and relays it to the user's
      // terminal: job control works, and TIOCSTI or a new controlling terminal stay on that pty; Ctrl-C goes
      // through the pty to the shell. Without one (a pipe, CI), the command gets our stdio in a new session
      // with no controlling terminal (bwrap --new-session), and its stdout and stderr stay apart.
      // SIGTERM to imagebuilder ends it too, and everything is released.
      const onTerminal = Boolean(process.stdin.isTTY);
      const [file, args] = sandboxedCommand(root, argv, sandbox, { network, netns: await netnsFor(network), interactive: onTerminal });
      log.debug(`$ ${displayGuestCommand(root, argv)}`);
      const [program, programArgs] = onTerminal ? ['script', ['--quiet', '--return', '--command', formatCommand(file, args), '/dev/null']] : [file, args];
      // Not interactive, but printing to a terminal (shell --command … </dev/null): the guest's output is relayed
      // through terminalSafe, never the terminal itself handed over (escape sequences, answer-backs, its modes).
      const relayed = (stream: NodeJS.WriteStream) => !onTerminal && stream.isTTY;
      const child = execa(program, programArgs, {
        stdin: 'inherit',
        stdout: relayed(process.stdout) ? 'pipe' : 'inherit',
        stderr: relayed(process.stderr) ? 'pipe' : 'inherit',
        buffer: false,
        env: { ...guestEnv(), TERM: process.env.TERM ?? 'dumb', SHELL: '/bin/sh', ...env },
        extendEnv: false,
        reject: false,
        cancelSignal: signal,
      });
      for (const [from, to] of [[child.stdout, process.stdout], [child.stderr, process.stderr]] as const) {
        if (!from) continue;
        const relay = terminalRelay((text) => to.write(text));
        from.on('data', relay.push);
        from.on('end', relay.end);
      }
      const result = await child;
      if (signal?.aborted) throw signal.reason;
      return result.exitCode ?? 128 + (osConstants.signals[result.signal as NodeJS.Signals] ?? 15);
    },
    sweep: () => killAll(() => leftBehind(root, sandbox), log, 'process(es) left running inside the guest'),
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
