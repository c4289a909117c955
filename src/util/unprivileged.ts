/**
 * Host programs that must parse hostile input (a guest's rpm database, say) run here with no privileges at
 * all: bubblewrap gives them new mount, PID, network, IPC, UTS and cgroup namespaces, a root that holds only
 * the host's /usr (read-only) and the paths named, no network, a new session (no TIOCSTI into our terminal),
 * and they die with us; setpriv then makes them uid/gid 65534 with no capability in any set (bounding set
 * included) and no_new_privs. A parser bug such input exploits gets an empty box, not root on the build host.
 * No user namespace is needed (bwrap runs as root): hosts that forbid them (user.max_user_namespaces=0) and
 * chroot-isolated containers, where the kernel refuses a new one, work the same.
 */
import { ImageBuilderError } from './errors.js';
import { access } from 'node:fs/promises';
import { constants } from 'node:fs';
import { join } from 'node:path';
import { which } from './fs.js';
import { packageHint } from './tools.js';

export interface SandboxBind {
  /** Host directory or file: readable by the uid it runs as (65534 unless given), and writable by it when `writable`. */
  host: string;
  /** Where the sandbox sees it. */
  inside: string;
  writable?: boolean;
}

/**
 * Files of a fresh /proc that root may write by their mode alone, with no capability, and that act on the host's
 * kernel or devices, bound read-only over themselves (as Docker does): bwrap leaves only /proc/bus, /proc/irq and
 * /proc/sys/(...) alone. /proc/sys: a sysctl (kernel.core_pattern runs a program on the host); /proc/sysrq-trigger;
 * /proc/scsi/scsi removes the host's disks (`scsi remove-single-device`); /proc/fs, /proc/acpi and /proc/driver hold
 * filesystems' and drivers' knobs; /proc/latency_stats is cleared by a write. Their contents follow the reader's
 * namespaces. Bound with `--ro-bind-try`: a kernel without one has nothing there.
 */
export const READ_ONLY_PROC_PATHS = ['/proc/sys', '/proc/sysrq-trigger', '/proc/scsi', '/proc/fs', '/proc/acpi', '/proc/driver', '/proc/latency_stats', '/proc/asound', '/proc/mtrr'];

/** The uid and gid sandboxed programs run as (nobody/nogroup). */
export const SANDBOX_ID = 65534;

/** Read-only host paths a dynamically linked program needs; `-try` because not every host has each. */
const SYSTEM_PATHS = ['/usr', '/etc/ld.so.cache', '/etc/ld.so.conf', '/etc/ld.so.conf.d', '/etc/alternatives'];
/** Merged-/usr names: symlinks on Debian 12+, directories on older hosts (then bound as they are). */
const TOP_LEVEL_LINKS = ['lib', 'lib32', 'lib64', 'libx32', 'bin', 'sbin'];

/**
 * Fails as a missing tool does when the host lacks program `name`: run in a box, its absence would show only as
 * bwrap's exec failing, an ordinary non-zero exit.
 */
export async function requireBoxedTool(name: string, neededFor: string, hint = `install ${packageHint(name)} (bin/setup installs everything; \`imagebuilder doctor\` checks the host)`): Promise<void> {
  if (!(await which(name))) throw new ImageBuilderError('MISSING_TOOL', `${name} is not installed on this host: ${neededFor}`, { hint });
  // Where the box looks (its PATH, in the host's /usr): a program elsewhere on the host's PATH is not in the box.
  const inBox = await Promise.all(BOX_PATH.split(':').map((dir) => access(join(dir, name), constants.X_OK).then(() => true, () => false)));
  if (!inBox.includes(true)) throw new ImageBuilderError('MISSING_TOOL', `${name} is not in the host's /usr, the only programs its sandbox sees (${BOX_PATH}): ${neededFor}`, { hint });
}

/** Whether a boxed command's failure is the box's own (bwrap or setpriv could not set it up), not the program's. */
export const boxFailed = (output: string) => /^(bwrap|setpriv): /m.test(output);

/** The PATH inside the boxes. */
const BOX_PATH = '/usr/sbin:/usr/bin:/sbin:/bin';

/** argv (for a Runner) that runs `argv` unprivileged, seeing only `binds` beside the host's programs. */
export function unprivilegedCommand(
  argv: string[],
  options: {
    binds?: SandboxBind[];
    env?: Record<string, string>;
    readOnlyHostPaths?: string[];
    /**
     * Stay uid 0, still with no capability at all: for a file only root may read (a user's 0600 image) that is
     * bound read-only. Without CAP_DAC_OVERRIDE, uid 0 reads what its owner bits allow and nothing else.
     */
    keepRootUid?: boolean;
    /** Host device nodes the program needs (qemu's /dev/kvm), bound at their own paths. */
    deviceNodes?: string[];
    /** Supplementary groups kept (the group that may open one of `deviceNodes`); none otherwise. */
    groups?: number[];
    /** The uid and gid it runs as: one claimed for it alone (util/box-uid.ts); SANDBOX_ID otherwise. */
    uid?: number;
    /**
     * A seccomp filter (chroot/seccomp.ts's bytes) bwrap loads from this file, opened as descriptor `fd`: one the
     * program is not given (qemu's image is its 3).
     */
    seccomp?: { file: string; fd: number };
  } = {},
): [string, string[]] {
  // Only what setpriv needs to become nobody and empty the bounding set; it drops these too.
  const args = boxArgs(['CAP_SETUID', 'CAP_SETGID', 'CAP_SETPCAP'], options);
  for (const node of options.deviceNodes ?? []) args.push('--dev-bind', node, node);
  const id = String(options.uid ?? SANDBOX_ID);
  const user = options.keepRootUid ? [] : ['--reuid', id, '--regid', id];
  const groups = options.groups?.length ? ['--groups', options.groups.join(',')] : ['--clear-groups'];
  const drop = ['setpriv', ...user, ...groups, '--bounding-set', '-all', '--inh-caps', '-all', '--no-new-privs', '--'];
  if (options.seccomp) args.push('--seccomp', String(options.seccomp.fd));
  args.push('--chdir', '/', '--', ...drop, ...argv);
  return options.seccomp ? withFilterFile(options.seccomp.file, options.seccomp.fd, args) : ['bwrap', args];
}

/** bwrap reads a filter from an open descriptor: a shell opens the file as `fd`, then becomes bwrap. */
const withFilterFile = (file: string, fd: number, bwrapArgs: string[]): [string, string[]] => ['/bin/sh', ['-c', `exec "$@" ${fd}<"$0"`, file, 'bwrap', ...bwrapArgs]];

/**
 * argv (for a Runner) for a host program that must act as root on hostile data: the host's setfiles, which writes
 * security.selinux on a guest's files (CAP_SYS_ADMIN, and CAP_FOWNER for files root does not own) whatever their
 * mode (CAP_DAC_OVERRIDE), parsing the guest's binary policy and regular expressions on the way. The box of
 * unprivilegedCommand, but uid 0 with only `capabilities` (every set, the bounding set included), no_new_privs,
 * and the guest commands' seccomp filter read from `seccompFile` (no mount or new mount API, no bpf or perf, no
 * kernel keyring, no open_by_handle_at, no fanotify, no syslog, no setns or new user namespace, no io_uring): a
 * parser bug it is exploited through gets those capabilities over `binds` and the host's read-only /usr, no
 * network, no other process, no way to remount what it sees. Pass the filter's `host-tool` profile: it allows no
 * ioctl but a terminal's, so no filesystem ioctl (FIFREEZE, XFS handles) on that /usr.
 */
export function confinedRootCommand(argv: string[], options: { binds: SandboxBind[]; capabilities: string[]; seccompFile: string; readOnlyHostPaths?: string[] }): [string, string[]] {
  // bwrap keeps the bounding set whole for root: setpriv (with CAP_SETPCAP, which it drops too) empties it of
  // everything else, so that the program, exec'd as root, holds `capabilities` and nothing more.
  // No /dev (its nodes are the host's devtmpfs'); /proc, which libselinux sets labels through (/proc/self/fd), with
  // the host's kernel log (/proc/kmsg, which CAP_SYS_ADMIN reads) covered by /dev/null, as Docker does.
  const args = boxArgs([...options.capabilities, 'CAP_SETPCAP'], { ...options, devices: false });
  args.push('--ro-bind', '/dev/null', '/proc/kmsg');
  const kept = options.capabilities.map((capability) => `+${capability.replace(/^CAP_/, '').toLowerCase()}`);
  const drop = ['setpriv', '--bounding-set', ['-all', ...kept].join(','), '--inh-caps', '-all', '--no-new-privs', '--'];
  args.push('--seccomp', '3', '--chdir', '/', '--', ...drop, ...argv);
  return withFilterFile(options.seccompFile, 3, args);
}

/** bwrap's arguments up to the command: the namespaces, `capabilities` kept, the host's /usr and `binds`. */
function boxArgs(capabilities: string[], options: { binds?: SandboxBind[]; env?: Record<string, string>; readOnlyHostPaths?: string[]; devices?: boolean }): string[] {
  const args = ['--unshare-net', '--unshare-pid', '--unshare-ipc', '--unshare-uts', '--unshare-cgroup-try', '--die-with-parent', '--new-session', '--clearenv'];
  args.push('--cap-drop', 'ALL', ...capabilities.flatMap((capability) => ['--cap-add', capability]));
  for (const path of [...SYSTEM_PATHS, ...(options.readOnlyHostPaths ?? [])]) args.push('--ro-bind-try', path, path);
  for (const name of TOP_LEVEL_LINKS) args.push('--ro-bind-try', `/${name}`, `/${name}`);
  if (options.devices !== false) args.push('--dev', '/dev');
  args.push('--proc', '/proc', ...READ_ONLY_PROC_PATHS.flatMap((path) => ['--ro-bind-try', path, path]));
  args.push('--tmpfs', '/tmp', '--perms', '0755', '--dir', '/tmp/home');
  for (const bind of options.binds ?? []) args.push(bind.writable ? '--bind' : '--ro-bind', bind.host, bind.inside);
  const env = { PATH: BOX_PATH, HOME: '/tmp/home', LC_ALL: 'C', ...options.env };
  for (const [name, value] of Object.entries(env)) args.push('--setenv', name, value);
  return args;
}
