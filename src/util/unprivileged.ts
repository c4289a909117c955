/**
 * Host programs that must parse hostile input (a guest's rpm database, say) run here with no privileges at
 * all: bubblewrap gives them new mount, PID, network, IPC, UTS and cgroup namespaces, a root that holds only
 * the host's /usr (read-only) and the paths named, no network, a new session (no TIOCSTI into our terminal),
 * and they die with us; setpriv then makes them uid/gid 65534 with no capability in any set (bounding set
 * included) and no_new_privs. A parser bug such input exploits gets an empty box, not root on the build host.
 * No user namespace is needed (bwrap runs as root): hosts that forbid them (user.max_user_namespaces=0) and
 * chroot-isolated containers, where the kernel refuses a new one, work the same.
 */
export interface SandboxBind {
  /** Host directory or file: readable by uid 65534, and writable by it when `writable`. */
  host: string;
  /** Where the sandbox sees it. */
  inside: string;
  writable?: boolean;
}

/** The uid and gid sandboxed programs run as (nobody/nogroup). */
export const SANDBOX_ID = 65534;

/** Read-only host paths a dynamically linked program needs; `-try` because not every host has each. */
const SYSTEM_PATHS = ['/usr', '/etc/ld.so.cache', '/etc/ld.so.conf', '/etc/ld.so.conf.d', '/etc/alternatives'];
/** Merged-/usr names: symlinks on Debian 12+, directories on older hosts (then bound as they are). */
const TOP_LEVEL_LINKS = ['lib', 'lib32', 'lib64', 'libx32', 'bin', 'sbin'];

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
  } = {},
): [string, string[]] {
  const args = ['--unshare-net', '--unshare-pid', '--unshare-ipc', '--unshare-uts', '--unshare-cgroup-try', '--die-with-parent', '--new-session', '--clearenv'];
  // Only what setpriv needs to become nobody and empty the bounding set; it drops these too.
  args.push('--cap-drop', 'ALL', '--cap-add', 'CAP_SETUID', '--cap-add', 'CAP_SETGID', '--cap-add', 'CAP_SETPCAP');
  for (const path of [...SYSTEM_PATHS, ...(options.readOnlyHostPaths ?? [])]) args.push('--ro-bind-try', path, path);
  for (const name of TOP_LEVEL_LINKS) args.push('--ro-bind-try', `/${name}`, `/${name}`);
  args.push('--dev', '/dev', '--proc', '/proc', '--tmpfs', '/tmp', '--perms', '0755', '--dir', '/tmp/home');
  for (const bind of options.binds ?? []) args.push(bind.writable ? '--bind' : '--ro-bind', bind.host, bind.inside);
  const env = { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', HOME: '/tmp/home', LC_ALL: 'C', ...options.env };
  for (const [name, value] of Object.entries(env)) args.push('--setenv', name, value);
  const user = options.keepRootUid ? [] : ['--reuid', String(SANDBOX_ID), '--regid', String(SANDBOX_ID)];
  const drop = ['setpriv', ...user, '--clear-groups', '--bounding-set', '-all', '--inh-caps', '-all', '--no-new-privs', '--'];
  args.push('--chdir', '/', '--', ...drop, ...argv);
  return ['bwrap', args];
}
