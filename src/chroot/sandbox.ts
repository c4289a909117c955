import { statSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, rmdir, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { isIPv4, isIPv6 } from 'node:net';
import { parseByteSize } from '../util/size.js';
import { BLOCKED_DESTINATIONS, isBlockedDestination, isPrivateDestination, PRIVATE_DESTINATIONS, withNat64Forms } from '../util/blocked-destinations.js';
import { ImageBuilderError } from '../util/errors.js';
import { formatCommand, type Runner } from '../util/exec.js';
import type { CleanupStack } from '../util/cleanup.js';
import type { Logger } from '../util/log.js';
import type { JsonSchema } from '../util/json-schema.js';
import { killAll } from '../util/processes.js';
import { READ_ONLY_PROC_PATHS } from '../util/unprivileged.js';
import { isMounted } from '../util/mounts.js';
import { forwardDns, GUEST_DNS_FORWARD } from './dns-forward.js';
import { hostSeccompArch, seccompBytes } from './seccomp.js';

export { GUEST_DNS_FORWARD };

/**
 * THE way a guest command runs (sandboxedCommand): every step, package manager, maintainer script and shell.
 *
 *   sh (joins the build's cgroups, opens the seccomp program as fd 3)
 *   → nsenter --net (the build's own network namespace; pasta NATs it to the outside)   [network: none: bwrap --unshare-net]
 *   → capsh (bounding set emptied but for the allowlist; bwrap's own setup caps passed as inheritable only)
 *   → bwrap (the guest root as /, its own /proc, PID/IPC/UTS/cgroup namespaces, --cap-drop ALL + the allowlist
 *            in every set, no_new_privs, the seccomp filter, --new-session, --die-with-parent)
 *   → the command
 *
 * The network namespace, pasta, the cgroups and the seccomp file are made once per build (openBuildSandbox)
 * so a command pays only for the exec chain.
 */

/**
 * What package managers and maintainer scripts need, and nothing more; every other capability is gone from
 * all sets, the bounding set included (so no setuid binary or file capability brings one back).
 */
export const GUEST_CAPABILITIES: Record<string, string> = {
  CAP_CHOWN: 'dpkg, rpm and tar give installed files their owners',
  CAP_DAC_OVERRIDE: 'root writes files whatever their mode (/etc/shadow is 0640 or 0000)',
  CAP_FOWNER: 'chmod, utime and xattrs on files root does not own (package payloads, unpacked archives)',
  CAP_FSETID: 'setuid/setgid bits kept on installed binaries (passwd, su)',
  CAP_KILL: 'maintainer scripts stop the daemons they start, which may run as another user',
  CAP_SETUID: 'apt drops to _apt for downloads; su, runuser and useradd switch users',
  CAP_SETGID: 'the same, for groups (and setgroups)',
  CAP_SETFCAP: 'postinst scripts give binaries file capabilities (setcap cap_net_raw+ep /bin/ping)',
  CAP_AUDIT_WRITE: 'useradd, passwd and PAM write an audit record and fail without it on audit-enabled hosts',
};

/**
 * Capabilities bwrap itself needs to build the sandbox (mounts, pivot_root, chroot, loopback, switching
 * ids); passed to it as inheritable only: it drops them before the command runs and they are not in the
 * bounding set the command inherits.
 */
const BWRAP_SETUP_CAPABILITIES = ['CAP_SYS_ADMIN', 'CAP_SYS_CHROOT', 'CAP_NET_ADMIN', 'CAP_SETPCAP', 'CAP_SETUID', 'CAP_SETGID'];

/** Capability numbers (linux/capability.h) of the allowlist: capsh drops every other number from the bounding set. */
const CAPABILITY_NUMBERS: Record<string, number> = {
  CAP_CHOWN: 0, CAP_DAC_OVERRIDE: 1, CAP_FOWNER: 3, CAP_FSETID: 4, CAP_KILL: 5, CAP_SETGID: 6, CAP_SETUID: 7, CAP_AUDIT_WRITE: 29, CAP_SETFCAP: 31,
};

export { BLOCKED_DESTINATIONS };



export type GuestNetwork = 'sandboxed' | 'none';

/** How long a guest command may run when it sets no time of its own, and what set that, as messages name it. */
export interface GuestTimeout {
  seconds: number;
  source: string;
}
export const GUEST_NETWORKS: readonly GuestNetwork[] = ['sandboxed', 'none'];

/** The recipe's and a step's `network:`. */
export const NETWORK_SCHEMA: JsonSchema = {
  enum: [...GUEST_NETWORKS],
  description: "Guest commands' network: `sandboxed` (default) reaches the outside through NAT, never this host's own or link-local addresses; `none` has no network at all.",
};

export interface SandboxLimits {
  /** Bytes of memory (and swap) the build's guest commands may use together. */
  memoryBytes: number;
  /** Processes and threads the build's guest commands may have at once. */
  pids: number;
}

export const DEFAULT_LIMITS: SandboxLimits = { memoryBytes: 4 * 1024 ** 3, pids: 4096 };

/** `4G`, `512M`, `1073741824` → bytes. */
export function parseMemorySize(text: string | number): number {
  return parseByteSize(text, 'memory limit');
}

/** `8080,9000` (--host-port, IMAGEBUILDER_HOST_PORTS) → ports. */
/** A multiple flag's values, each comma-separated list split (oclif hands its environment variable over as one string). */
const flagValues = (values: string | string[]) => [values].flat().flatMap((value) => value.split(','));

export function parseHostPorts(values: string | string[] = []): number[] {
  return flagValues(values).filter(Boolean).map((text) => {
    const port = Number(text.trim());
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw new ImageBuilderError('BAD_INPUT', `--host-port ${text}: not a TCP port`, { hint: 'give port numbers, e.g. --host-port 8080' });
    return port;
  });
}

export function formatBytes(bytes: number): string {
  for (const [unit, size] of [['GiB', 1024 ** 3], ['MiB', 1024 ** 2], ['KiB', 1024]] as const) if (bytes >= size && bytes % size === 0) return `${bytes / size} ${unit}`;
  return `${bytes} bytes`;
}

export interface Cgroup {
  /** The directory in its hierarchy. */
  dir: string;
  /** Reads the counters that tell a limit was hit. */
  counters(): Promise<{ oomKills: number; pidsRefused: number }>;
}

export interface BuildSandbox {
  /** The guest's /etc/resolv.conf for the build: the host's resolvers, reachable from the sandbox. */
  readonly resolvConf: string;
  /**
   * The network namespace of guest commands with the sandboxed network: pasta's NAT to the outside, nothing of
   * this host. Made by the first command that needs it (~50 ms), then shared: writing a file or reading a
   * version needs none.
   */
  networkNamespace(): Promise<string>;
  /** No network namespace was made: every guest command gets `network: none`. */
  readonly offline?: boolean;
  readonly limits: SandboxLimits;
  /** The cgroup.procs files a guest command joins (memory and pids); empty where none could be made. */
  readonly cgroupProcs: string[];
  /** The seccomp program's file, opened as fd 3 for bwrap; undefined on a host architecture without a table. */
  readonly seccompFile?: string;
  /** Absolute path of bwrap (capsh execs it by path). */
  readonly bwrap: string;
  /** The kernel's highest capability number: capsh drops every number up to it but the allowlist's. */
  readonly lastCapability: number;
  /** Snapshot of the limit counters, to compare after a failed command. */
  counters(): Promise<{ oomKills: number; pidsRefused: number }>;
  /** Every process in the build's cgroups (what guest commands left behind). */
  processes(): Promise<number[]>;
}

export interface OpenSandboxOptions {
  run: Runner;
  log: Logger;
  /** Where its release goes; pushed as each part is made. */
  cleanup: CleanupStack;
  limits?: Partial<SandboxLimits>;
  /**
   * Ports of the host's loopback the guest may reach at its own 127.0.0.1 (pasta -T): an explicit opt-in
   * (--host-port) for a mirror served on this host; nothing else of the host's loopback is reachable.
   */
  hostPorts?: number[];
  /** Private networks guest commands may reach (--allow-network: an internal mirror or proxy); the rest are refused. */
  allowNetworks?: string[];
  /**
   * No network at all (apply --bundle): no network namespace with pasta is made, and every guest command runs
   * with `network: none` whatever its step says.
   */
  offline?: boolean;
}

/** The guest's /etc/resolv.conf in an offline build: nothing to resolve with. */
export const OFFLINE_RESOLV_CONF = '# imagebuilder: an offline build (apply --bundle) has no network\n';

function whichSync(name: string): string {
  const found = (process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin').split(delimiter).map((dir) => join(dir, name)).find((path) => statSync(path, { throwIfNoEntry: false })?.isFile());
  return found ?? `/usr/bin/${name}`;
}

async function readNumbers(file: string, key: string): Promise<number> {
  const text = await readFile(file, 'utf8').catch(() => '');
  const match = new RegExp(`^${key}\\s+(\\d+)`, 'm').exec(text);
  return match ? Number(match[1]) : 0;
}

export async function cgroupMembers(dirs: string[]): Promise<number[]> {
  const pids: number[] = [];
  for (const dir of dirs) {
    const text = await readFile(join(dir, 'cgroup.procs'), 'utf8').catch(() => '');
    for (const line of text.split('\n')) if (/^\d+$/.test(line) && !pids.includes(Number(line))) pids.push(Number(line));
  }
  return pids;
}

/** The cgroup v2 leaf a container's own processes are moved to (see enableControllers). */
export const CONTAINER_LEAF_CGROUP = 'imagebuilder-container';

/**
 * Lets child cgroups of `root` use `controllers`. In a container with a cgroup namespace of its own (docker
 * --privileged on a cgroup v2 host), `root` is the container's cgroup: it holds the container's processes, and
 * cgroup v2 refuses (EBUSY) to give controllers to the children of a cgroup that has processes. As docker's own
 * docker-in-docker entrypoint does, those processes are moved to a leaf of their own first, once.
 */
async function enableControllers(root: string, controllers: string[], log: Logger): Promise<void> {
  const control = join(root, 'cgroup.subtree_control');
  const missing = () => readFile(control, 'utf8').then((text) => controllers.filter((c) => !text.split(/\s+/).includes(c)), () => controllers);
  const enable = async () => {
    for (const controller of await missing()) await writeFile(control, `+${controller}`);
  };
  try {
    await enable();
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EBUSY') throw error;
    const leaf = join(root, CONTAINER_LEAF_CGROUP);
    await mkdir(leaf, { recursive: true });
    // For good: the container's processes stay in the leaf (as under docker's dind), which is never removed.
    log.info(`cgroup v2: moving the processes of ${root} to ${leaf} for good, so the build's limits can be set below it (no internal processes)`);
    // Processes fork meanwhile: move until none is left, a few rounds at most.
    for (let round = 0; ; round++) {
      const pids = (await readFile(join(root, 'cgroup.procs'), 'utf8')).split('\n').filter((line) => /^\d+$/.test(line));
      for (const pid of pids) {
        // A process that ended meanwhile is fine (ESRCH); kernel threads cannot move (EINVAL) and stay.
        await writeFile(join(leaf, 'cgroup.procs'), pid).catch((move: NodeJS.ErrnoException) => {
          if (move.code !== 'ESRCH' && move.code !== 'EINVAL') throw move;
        });
      }
      try {
        await enable();
        return;
      } catch (again) {
        if ((again as NodeJS.ErrnoException).code !== 'EBUSY' || round === 4) throw again;
      }
    }
  }
}

/**
 * One cgroup per build with the memory and pids limits: cgroup v2 where the host has it, v1 (memory and pids
 * hierarchies) otherwise. Released (its processes killed, then removed) by the cleanup stack.
 */
export async function makeCgroups(name: string, limits: SandboxLimits, cleanup: CleanupStack, log: Logger): Promise<Cgroup[]> {
  const root = '/sys/fs/cgroup';
  const v2 = await stat(join(root, 'cgroup.controllers')).then(() => true, () => false);
  const made: Cgroup[] = [];
  const create = async (dir: string, settings: [string, string][], counters: Cgroup['counters']) => {
    await mkdir(dir);
    cleanup.push(`cgroup ${dir}`, async () => {
      await killAll(() => cgroupMembers([dir]), log, `process(es) left in ${dir}`);
      await rmdir(dir);
    });
    for (const [file, value] of settings) {
      const path = join(dir, file);
      if (await stat(path).then(() => true, () => false)) await writeFile(path, value);
    }
    made.push({ dir, counters });
  };
  if (v2) {
    await enableControllers(root, ['memory', 'pids'], log);
    const dir = join(root, name);
    await create(dir, [['memory.max', String(limits.memoryBytes)], ['memory.swap.max', '0'], ['pids.max', String(limits.pids)]], async () => ({
      oomKills: await readNumbers(join(dir, 'memory.events'), 'oom_kill'),
      pidsRefused: await readNumbers(join(dir, 'pids.events'), 'max'),
    }));
  } else {
    const memory = join(root, 'memory', name);
    // memsw after the memory limit: the kernel refuses a memory+swap limit below the memory one.
    await create(memory, [['memory.limit_in_bytes', String(limits.memoryBytes)], ['memory.memsw.limit_in_bytes', String(limits.memoryBytes)]], async () => ({
      oomKills: await readNumbers(join(memory, 'memory.oom_control'), 'oom_kill'),
      pidsRefused: 0,
    }));
    const pids = join(root, 'pids', name);
    await create(pids, [['pids.max', String(limits.pids)]], async () => ({ oomKills: 0, pidsRefused: await readNumbers(join(pids, 'pids.events'), 'max') }));
  }
  return made;
}

/** The host's own addresses, on every interface: the sandbox gets a route to none of them. */
export async function hostAddresses(run: Runner): Promise<string[]> {
  const result = await run('ip', ['-j', 'address', 'show'], { allowFailure: true });
  if (result.exitCode !== 0) return [];
  const interfaces = JSON.parse(result.stdout) as { ifname: string; addr_info?: { family: string; local: string; scope: string }[] }[];
  // Loopback's own addresses (127/8, ::1) are the namespace's own too; any other address, even one on lo
  // (anycast, a service address), is the host's.
  return interfaces
    .flatMap((entry) => entry.addr_info ?? [])
    .filter((address) => address.scope !== 'link' && address.scope !== 'host' && !address.local.startsWith('127.') && address.local !== '::1')
    .map((address) => `${address.local}/${address.family === 'inet' ? 32 : 128}`);
}

export interface GuestDns {
  /** The guest's /etc/resolv.conf. */
  resolvConf: string;
  /** The resolver on the host's loopback that queries to GUEST_DNS_FORWARD go to (dns-forward.ts), if one is needed. */
  forwardTo?: string;
  /** Why the guest may be left without DNS, to warn about. */
  warning?: string;
}

const isLoopback = (address: string) => address.startsWith('127.') || address === '::1';

/**
 * A nameserver guest commands cannot reach themselves: on the host's loopback, or at an address the sandbox
 * refuses because a metadata service lives there and serves DNS too (Azure's 168.63.129.16, AWS's
 * 169.254.169.253). The relay reaches it for them, passing DNS alone.
 */
const unreachableFromSandbox = (address: string) => isLoopback(address) || isBlockedDestination(address);

/**
 * The host's DNS configuration made to work from the sandbox: systemd-resolved's stub is replaced by the
 * upstreams it uses; another resolver on the host's loopback is reached through our forwarder at
 * GUEST_DNS_FORWARD; other nameservers are reached through the NAT as they are.
 */
export function guestDns(hostResolvConf: string, resolvedUpstream?: string): GuestDns {
  const nameserver = /^\s*nameserver\s+(\S+)/;
  const lines = hostResolvConf.split('\n');
  const servers = lines.map((line) => nameserver.exec(line)?.[1]).filter((server): server is string => Boolean(server));
  // systemd-resolved's stub: the upstreams it uses, made reachable in turn (Azure's is its metadata service).
  if (servers[0]?.startsWith('127.0.0.53') && resolvedUpstream) return guestDns(resolvedUpstream);
  if (!servers.some(unreachableFromSandbox)) return { resolvConf: hostResolvConf };
  // One resolver is forwarded to: the host's first IPv4 one the sandbox cannot reach (the guest's own loopback has none).
  const forwarded = servers.find((server) => unreachableFromSandbox(server) && isIPv4(server));
  let placed = false;
  const kept = lines.flatMap((line) => {
    const server = nameserver.exec(line)?.[1];
    if (!server || !unreachableFromSandbox(server)) return [line];
    if (server !== forwarded || placed) return [];
    placed = true;
    return [`nameserver ${GUEST_DNS_FORWARD}`];
  });
  const reachable = servers.filter((server) => !unreachableFromSandbox(server)).length + (forwarded ? 1 : 0);
  return {
    resolvConf: kept.join('\n'),
    ...(forwarded ? { forwardTo: forwarded } : {}),
    warning: reachable ? undefined : `the host's only nameservers (${servers.join(', ')}) are IPv6 addresses the sandbox cannot reach (loopback, link-local or a metadata service's) and does not forward to: guest commands have no DNS`,
  };
}

/** The host's resolv.conf and, behind systemd-resolved's stub, the upstreams it uses. */
async function readHostDns(): Promise<GuestDns> {
  const text = await readFile('/etc/resolv.conf', 'utf8').catch(() => '');
  const upstream = /^\s*nameserver\s+127\.0\.0\.53/m.test(text) ? await readFile('/run/systemd/resolve/resolv.conf', 'utf8').catch(() => undefined) : undefined;
  return guestDns(text, upstream);
}

/**
 * Policy rules (`ip -batch` lines for one address family) of the sandbox: `refused` first, whatever else allows
 * them; then `allowed` through the main table, and DNS alone (port 53, UDP and TCP) of `nameservers`; then every
 * private network refused. Each rule once: ip adds rules exclusively, and a repeat would stop the batch. The local
 * table (rule 0) still comes first: the namespace's own addresses, GUEST_DNS_FORWARD among them, stay its own.
 */
export function networkRules(refused: string[], allowed: string[], family: 4 | 6, nameservers: string[] = []): string[] {
  const ofFamily = (destinations: string[]) => [...new Set(destinations.filter((destination) => destination.includes(':') === (family === 6)))];
  return [
    ...ofFamily(refused).map((destination) => `rule add to ${destination} prohibit pref 100`),
    ...ofFamily(allowed).map((destination) => `rule add to ${destination} lookup main pref 150`),
    ...ofFamily(nameservers).flatMap((server) => ['udp', 'tcp'].map((protocol) => `rule add to ${server} ipproto ${protocol} dport 53 lookup main pref 150`)),
    ...ofFamily(PRIVATE_DESTINATIONS).map((destination) => `rule add to ${destination} prohibit pref 200`),
  ];
}

/**
 * The address a failed guest command's output says it was refused, on a line with "Permission denied" (apt's
 * "Could not connect to 10.1.2.3:80 (10.1.2.3). - connect (13: Permission denied)", curl's, wget's, dnf's), that
 * a flag would open: one of this host's own (`--host-port`), or a private one (`--allow-network`); undefined
 * for anything else (a metadata service, a public address, a file's permissions).
 */
export function refusedDestination(output: string, hostAddresses: readonly string[]): { address: string; hostOwn: boolean } | undefined {
  const own = new Set(hostAddresses.map((cidr) => cidr.split('/')[0]));
  for (const line of output.split('\n')) {
    if (!/permission denied/i.test(line)) continue;
    // The last a line names: apt writes "fd12::1:80 (fd12::1)", the address and port run together, then the address.
    for (const token of line.split(/[^0-9A-Fa-f:.]+/).reverse()) {
      const address = addressIn(token);
      if (!address) continue;
      if (own.has(address)) return { address, hostOwn: true };
      if (isPrivateDestination(address) && !isBlockedDestination(address)) return { address, hostOwn: false };
    }
  }
  return undefined;
}

/** The address a word of a message is, maybe with a port or a full stop after it: "10.1.2.3:80", "10.1.2.3.", "fd12::1". */
function addressIn(token: string): string | undefined {
  // Part of a longer dotted word (libfoo.so.10.0.0.1), not an address.
  if (token.startsWith('.')) return undefined;
  for (const candidate of [token, token.replace(/[.:]+$/, '')]) if (isIPv4(candidate) || isIPv6(candidate)) return candidate;
  const withPort = /^(\d{1,3}(?:\.\d{1,3}){3}):\d+\.*$/.exec(token);
  return withPort && isIPv4(withPort[1]) ? withPort[1] : undefined;
}

/** --allow-network values as networks (an address alone is itself): a clear error for anything else. */
export function parseAllowedNetworks(values: string | string[] = []): string[] {
  return flagValues(values).map((text) => text.trim()).filter(Boolean).map((text) => {
    const [address, length, extra] = text.split('/');
    const bits = isIPv4(address) ? 32 : isIPv6(address) ? 128 : 0;
    const prefix = length === undefined ? bits : /^\d+$/.test(length) ? Number(length) : -1;
    if (!bits || extra !== undefined || prefix < 0 || prefix > bits) {
      throw new ImageBuilderError('BAD_INPUT', `--allow-network ${text}: not an address or a network`, { hint: 'give an address or a network in CIDR form, e.g. --allow-network 10.20.0.0/16 (an internal mirror\'s)' });
    }
    // As ip and withNat64Forms write it: a network given twice in two spellings is one rule (ip would refuse the second).
    return `${isIPv6(address) ? new URL(`http://[${address}]/`).hostname.slice(1, -1) : address}/${prefix}`;
  });
}

/** The nameservers of the guest's resolv.conf that guest commands reach themselves (the relay's address is the namespace's own). */
function guestNameservers(resolvConf: string): string[] {
  return resolvConf.split('\n').map((line) => /^\s*nameserver\s+(\S+)/.exec(line)?.[1]).filter((server): server is string => Boolean(server) && server !== GUEST_DNS_FORWARD);
}

/** The build's network namespace with pasta attached, its refusal rules and its DNS relay: pushed on cleanup as made. */
async function openSandboxNetwork(options: OpenSandboxOptions, state: string, dns: GuestDns): Promise<string> {
  const { run, log, cleanup } = options;
  // The namespace is kept alive by a bind mount on a file of our own (unshare --net=FILE), not by `ip netns add`:
  // that one mounts /run/netns itself on first use and nothing ever unmounts it. Released before it is made:
  // interrupted while unshare runs, the mount may or may not be there.
  const netns = join(state, 'netns');
  await writeFile(netns, '');
  cleanup.push(`network namespace ${netns}`, async () => {
    // --lazy, as `ip netns delete` does: pasta may still hold the namespace file open while it exits.
    if (await isMounted(netns)) await run('umount', ['--lazy', netns], { log });
  });
  await run('unshare', [`--net=${netns}`, 'true'], { log, purpose: 'making the build\'s network namespace' });
  const pidFile = join(state, 'pasta.pid');
  // -T/-U none (or only the ports --host-port names): by default pasta forwards every port the host listens on
  // at its loopback into the namespace's loopback (the guest would reach the host's 127.0.0.1 services);
  // -t/-u none: nothing comes in either.
  await run('pasta', ['--runas', '0', '--config-net', '--no-map-gw', '-T', options.hostPorts?.length ? options.hostPorts.join(',') : 'none', '-U', 'none', '-t', 'none', '-u', 'none', '--quiet', '--pid', pidFile, '--netns', netns], {
    log,
    purpose: 'giving the build\'s network namespace its own network (pasta)',
    hint: 'pasta comes with the Debian package passt',
  });
  const pastaPid = Number((await readFile(pidFile, 'utf8')).trim());
  cleanup.push('pasta', async () => {
    try {
      process.kill(pastaPid, 'SIGTERM');
    } catch {
      // already gone (it ends with its namespace)
    }
  });
  // Rules only root in that namespace could change, and guest commands have no CAP_NET_ADMIN.
  const blocked = [...BLOCKED_DESTINATIONS, ...withNat64Forms(await hostAddresses(run))];
  // Private networks are refused but for those the user allows and DNS to the host's nameservers there (a cluster's
  // DNS service, a LAN resolver), which guest commands query themselves: port 53 of them, not their other services.
  const nameservers = guestNameservers(dns.resolvConf).filter((server) => isIPv4(server) || isIPv6(server)).map((server) => `${server}/${isIPv4(server) ? 32 : 128}`);
  // An allowed IPv4 network is allowed under NAT64 too, as it is refused there.
  const allowed = withNat64Forms(options.allowNetworks ?? []);
  const families: (4 | 6)[] = (await stat('/proc/sys/net/ipv6').then(() => true, () => false)) ? [4, 6] : [4];
  for (const family of families) {
    const batch = networkRules(blocked, allowed, family, nameservers);
    await run('nsenter', [`--net=${netns}`, '--', 'ip', `-${family}`, '-batch', '-'], { input: `${batch.join('\n')}\n`, log, purpose: 'refusing the host\'s addresses and link-local ones inside the sandbox' });
  }

  if (dns.forwardTo) {
    // A directory of its own (found by the reaper by the same prefix): the relay's user may enter it, and
    // nothing else of the sandbox's state is there.
    const dnsDir = await mkdtemp(join(tmpdir(), `${SANDBOX_STATE_PREFIX}${process.pid}-dns-`));
    cleanup.push(`DNS forwarding directory ${dnsDir}`, () => rm(dnsDir, { recursive: true, force: true }));
    await forwardDns({ run, log, cleanup, netns, dir: dnsDir, resolver: dns.forwardTo });
  }
  log.debug(`sandbox network ready: netns ${netns}`);
  return netns;
}

/** The start of a build sandbox's state directory in the temp dir: its pid follows (host/reap.ts finds it so). */
export const SANDBOX_STATE_PREFIX = 'imagebuilder-sandbox-';

/**
 * The build's sandbox: its network namespace with pasta attached (NAT to the outside; `--no-map-gw` so the
 * gateway address is not the host's loopback, no port forwarded from the host's loopback; routes that refuse
 * link-local and every host address; none at all when offline), its cgroups, its seccomp program. Everything
 * is pushed on `cleanup` the moment it exists.
 */
export async function openBuildSandbox(options: OpenSandboxOptions): Promise<BuildSandbox> {
  const { run, log, cleanup } = options;
  const limits = { ...DEFAULT_LIMITS, ...options.limits };
  const name = `imagebuilder-${process.pid}-${randomBytes(4).toString('hex')}`;
  const started = Date.now();

  // Named after this process, so a reaper finds what a build killed by SIGKILL left here (host/reap.ts).
  const state = await mkdtemp(join(tmpdir(), `${SANDBOX_STATE_PREFIX}${process.pid}-`));
  cleanup.push(`sandbox state ${state}`, () => rm(state, { recursive: true, force: true }));
  const arch = hostSeccompArch();
  let seccompFile: string | undefined;
  if (arch) {
    seccompFile = join(state, 'seccomp.bpf');
    await writeFile(seccompFile, seccompBytes(arch), { mode: 0o600 });
  } else log.warn(`no seccomp filter for guest commands: no syscall table for this host's architecture (${process.arch})`);

  const dns = options.offline ? { resolvConf: OFFLINE_RESOLV_CONF } : await readHostDns();
  if (dns.warning) log.warn(dns.warning);
  // Released where it would have been had it been made now (after the cgroups and what the sessions push),
  // whenever the first command that needs it makes it.
  const networkCleanup = options.offline ? undefined : cleanup.child('sandbox network');
  // Released just before the child: no network is made from then on, and one being made is finished first, so
  // everything it pushes is on the child when the child is released.
  let released = false;
  let network: Promise<string> | undefined;
  if (networkCleanup) {
    cleanup.push('sandbox network: no more', async () => {
      released = true;
      await network?.catch(() => undefined);
    });
  }
  const networkNamespace = () => {
    if (!networkCleanup) return Promise.reject(new Error('an offline build has no network namespace'));
    if (released) return Promise.reject(new Error('the build\'s sandbox is released: no network namespace is made any more'));
    return (network ??= openSandboxNetwork({ ...options, cleanup: networkCleanup }, state, dns));
  };

  let cgroups: Cgroup[] = [];
  try {
    cgroups = await makeCgroups(name, limits, cleanup, log);
  } catch (error) {
    // A container that was given no cgroup of its own to write (buildah's chroot isolation, docker without
    // --privileged) mounts /sys/fs/cgroup read-only: the build still runs, every guest command still in its own
    // PID namespace (nothing outlives it), but without the memory and pids limits, which is said.
    if ((error as NodeJS.ErrnoException).code === 'EROFS') {
      log.warn(NO_CGROUP_LIMITS_WARNING);
      cgroups = [];
    } else throw new ImageBuilderError('COMMAND_FAILED', `cannot make the build's cgroup for its memory and pids limits: ${(error as Error).message}`, {
      hint: 'imagebuilder runs as root on a host with the memory and pids cgroup controllers (cgroup v2, or v1 memory and pids hierarchies)',
    });
  }
  log.debug(`sandbox ready in ${Date.now() - started} ms: ${options.offline ? 'no network' : 'network on first use'}, limits ${formatBytes(limits.memoryBytes)} memory, ${limits.pids} pids`);

  return {
    resolvConf: dns.resolvConf,
    networkNamespace,
    ...(options.offline ? { offline: true } : {}),
    limits,
    cgroupProcs: cgroups.map((cgroup) => join(cgroup.dir, 'cgroup.procs')),
    seccompFile,
    bwrap: whichSync('bwrap'),
    lastCapability: Number((await readFile('/proc/sys/kernel/cap_last_cap', 'utf8').catch(() => '40')).trim()),
    counters: async () => {
      const all = await Promise.all(cgroups.map((cgroup) => cgroup.counters()));
      return { oomKills: all.reduce((sum, c) => sum + c.oomKills, 0), pidsRefused: all.reduce((sum, c) => sum + c.pidsRefused, 0) };
    },
    processes: () => cgroupMembers(cgroups.map((cgroup) => cgroup.dir)),
  };
}

/** Said (and in the BOM's warnings) when /sys/fs/cgroup cannot be written: the build runs without its limits. */
export const NO_CGROUP_LIMITS_WARNING =
  "the build's guest commands run WITHOUT memory and pids limits: /sys/fs/cgroup is read-only here (a container that was given no cgroup to write: docker run --privileged gives one)";

/** argv that joins `cgroups` (made by makeCgroups) and then becomes `command`: what it starts is counted there too. */
export function inCgroups(cgroups: Cgroup[], [file, args]: [string, string[]]): [string, string[]] {
  if (!cgroups.length) return [file, args];
  return ['/bin/sh', ['-c', JOIN_CGROUPS, 'join-cgroups', ...cgroups.map((cgroup) => join(cgroup.dir, 'cgroup.procs')), '--', file, ...args]];
}
// A cgroup not joined is said (on the program's stderr) and nothing runs: never the program without its limits.
const JOIN_CGROUPS = ['while [ "$1" != -- ]; do echo $$ > "$1" || { echo "imagebuilder: could not join the cgroup $1" >&2; exit 125; }; shift; done; shift', 'exec "$@"'].join('\n');

/** Joins the cgroups named before `--`, opens the seccomp program (first argument) as fd 3, execs the rest. */
const ENTER_SANDBOX = ['seccomp=$1; shift', 'while [ "$1" != -- ]; do echo $$ > "$1"; shift; done; shift', 'if [ -n "$seccomp" ]; then exec "$@" 3<"$seccomp"; fi', 'exec "$@"'].join('\n');

/** A guest's /dev, with its /dev/shm: Docker's 64 MiB (the session's tmpfs, and a read-only command's /dev/shm). */
export const SESSION_DEV_BYTES = 64 * 2 ** 20;

export interface SandboxedCommandOptions {
  /** `sandboxed` (the default) needs `netns`, the sandbox's networkNamespace(). */
  network?: GuestNetwork;
  netns?: string;
  /** A shell for the user: keeps the terminal session bwrap would otherwise leave (the caller gives it a pty of its own). */
  interactive?: boolean;
  /** The guest's root read-only, but for a minimal read-only /dev with a fresh /dev/shm, and a fresh /tmp: both sized. */
  readOnlyRoot?: boolean;
}

/** argv (host side) that runs `argv` inside the guest at `root`, in the build's sandbox. */
export function sandboxedCommand(root: string, argv: string[], sandbox: BuildSandbox, options: SandboxedCommandOptions = {}): [string, string[]] {
  const network = sandbox.offline ? 'none' : (options.network ?? 'sandboxed');
  if (network === 'sandboxed' && !options.netns) throw new Error('a guest command with the sandboxed network needs the sandbox\'s network namespace');
  const keep = new Set(Object.keys(GUEST_CAPABILITIES).map((name) => CAPABILITY_NUMBERS[name]));
  const drop = Array.from({ length: sandbox.lastCapability + 1 }, (_, n) => n).filter((n) => !keep.has(n));
  const bwrapArgs = [
    // --dev-bind: our own /dev holds the devices; the guest's own filesystems keep their nodev.
    // Read-only: bwrap's own minimal /dev (never a path inside the guest, which could be a link), a fresh /tmp.
    // Sized as the session's are (bwrap's own would be half the host's memory where the build has no cgroup), and
    // that /dev read-only but for its /dev/shm.
    ...(options.readOnlyRoot
      ? ['--ro-bind', root, '/', '--dev', '/dev', '--size', String(SESSION_DEV_BYTES), '--tmpfs', '/dev/shm', '--remount-ro', '/dev', '--size', String(sandbox.limits.memoryBytes), '--tmpfs', '/tmp']
      : ['--dev-bind', root, '/']),
    '--proc', '/proc',
    ...READ_ONLY_PROC_PATHS.flatMap((path) => ['--ro-bind-try', path, path]),
    '--unshare-pid', '--unshare-ipc', '--unshare-uts', '--unshare-cgroup-try',
    ...(network === 'none' ? ['--unshare-net'] : []),
    '--die-with-parent',
    ...(options.interactive ? [] : ['--new-session']),
    '--cap-drop', 'ALL', ...Object.keys(GUEST_CAPABILITIES).flatMap((cap) => ['--cap-add', cap]),
    ...(sandbox.seccompFile ? ['--seccomp', '3'] : []),
    '--chdir', '/',
    '--', ...argv,
  ];
  const capsh = [
    'capsh',
    `--inh=${[...new Set([...BWRAP_SETUP_CAPABILITIES, ...Object.keys(GUEST_CAPABILITIES)])].map((cap) => cap.toLowerCase()).join(',')}`,
    `--drop=${drop.join(',')}`,
    `--shell=${sandbox.bwrap}`, '--', ...bwrapArgs,
  ];
  const enterNetwork = network === 'none' ? [] : ['nsenter', `--net=${options.netns}`, '--'];
  return ['/bin/sh', ['-c', ENTER_SANDBOX, 'enter-sandbox', sandbox.seccompFile ?? '', ...sandbox.cgroupProcs, '--', ...enterNetwork, ...capsh]];
}

/** The sandboxed command shown in logs the way a user thinks of it. */
export function displayGuestCommand(root: string, argv: string[]): string {
  return formatCommand('chroot', [root, ...argv]);
}
