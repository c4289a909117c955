/**
 * Host programs that must parse hostile input (a guest's rpm database, say) run here with no privileges at
 * all: bubblewrap puts them in new user, mount, PID, network, IPC, UTS and cgroup namespaces as uid 65534
 * with every capability dropped (bounding set included) and no_new_privs, a new session (no TIOCSTI into our
 * terminal), a root that holds only the host's /usr (read-only) and the directories named, no network, and
 * they die with us. A parser bug such input exploits gets an empty box, not root on the build host.
 */
export interface SandboxBind {
  /** Host directory or file. */
  host: string;
  /** Where the sandbox sees it. */
  inside: string;
  writable?: boolean;
}

/** Read-only host paths a dynamically linked program needs; `-try` because not every host has each. */
const SYSTEM_PATHS = ['/usr', '/etc/ld.so.cache', '/etc/ld.so.conf', '/etc/ld.so.conf.d', '/etc/alternatives'];
/** Merged-/usr names: symlinks on Debian 12+, directories on older hosts (then bound as they are). */
const TOP_LEVEL_LINKS = ['lib', 'lib32', 'lib64', 'libx32', 'bin', 'sbin'];

/** argv (for a Runner) that runs `argv` unprivileged, seeing only `binds` beside the host's programs. */
export function unprivilegedCommand(argv: string[], options: { binds?: SandboxBind[]; env?: Record<string, string>; readOnlyHostPaths?: string[] } = {}): [string, string[]] {
  const args = ['--unshare-all', '--unshare-user', '--uid', '65534', '--gid', '65534', '--cap-drop', 'ALL', '--die-with-parent', '--new-session', '--clearenv'];
  for (const path of [...SYSTEM_PATHS, ...(options.readOnlyHostPaths ?? [])]) args.push('--ro-bind-try', path, path);
  for (const name of TOP_LEVEL_LINKS) args.push('--ro-bind-try', `/${name}`, `/${name}`);
  args.push('--dev', '/dev', '--proc', '/proc', '--tmpfs', '/tmp', '--dir', '/home/sandbox');
  for (const bind of options.binds ?? []) args.push(bind.writable ? '--bind' : '--ro-bind', bind.host, bind.inside);
  const env = { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', HOME: '/home/sandbox', LC_ALL: 'C', ...options.env };
  for (const [name, value] of Object.entries(env)) args.push('--setenv', name, value);
  args.push('--chdir', '/', '--', ...argv);
  return ['bwrap', args];
}
