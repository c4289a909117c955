import { join } from 'node:path';
import type { BomStep } from '../util/step-record.js';
import type { GuestLayout } from '../mount/layout.js';
import { ImageBuilderError } from '../util/errors.js';
import { tail, type Runner } from '../util/exec.js';
import { resolveInRoot, which } from '../util/fs.js';
import { confinedRootCommand } from '../util/unprivileged.js';
import { hostSeccompArch, seccompBytes } from '../chroot/seccomp.js';
import { GUEST_READ_LIMITS, readGuestDir, readGuestFile, readGuestText, statGuest, writeGuestFileFromHost } from '../util/guest-fs.js';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { mountsUnder } from '../util/mounts.js';
import { tmpdir } from 'node:os';
import type { Logger } from '../util/log.js';
import { parseOsRelease } from './os-release.js';

export interface SelinuxConfig {
  /** SELINUX=: enforcing, permissive or disabled. */
  mode: string;
  /** SELINUXTYPE=: the policy's directory under /etc/selinux. */
  type: string;
}

/** selinux_config(5): KEY=value lines; SELINUXTYPE defaults to "targeted" as libselinux does. */
export function parseSelinuxConfig(text: string): SelinuxConfig | undefined {
  const fields = parseOsRelease(text);
  if (!fields.SELINUX) return undefined;
  return { mode: fields.SELINUX.toLowerCase(), type: fields.SELINUXTYPE || 'targeted' };
}

export async function readSelinuxConfig(root: string): Promise<SelinuxConfig | undefined> {
  const text = await readGuestText(root, '/etc/selinux/config');
  return text === undefined ? undefined : parseSelinuxConfig(text);
}

/** What libselinux reads beside file_contexts as text (selabel_file(5)); the compiled .bin files are left out. */
const FILE_CONTEXTS_TEXT_FILES = ['', '.subs_dist', '.subs', '.local', '.homedirs'];

/** Filesystems that keep security.selinux xattrs; anything else mounted in the guest (an ESP) is left out. */
const LABELLED_TYPES = new Set(['ext2', 'ext3', 'ext4', 'xfs', 'btrfs']);

/**
 * What setfiles needs: security.selinux is written with CAP_SYS_ADMIN, and on a file root does not own (an
 * _apt-owned directory) with CAP_FOWNER too; every guest file is reached whatever its mode (CAP_DAC_OVERRIDE).
 */
export const SETFILES_CAPABILITIES = ['CAP_SYS_ADMIN', 'CAP_DAC_OVERRIDE', 'CAP_FOWNER'];
/** The whole fixture guest takes ~2.5 s; a real one with a large /usr, well under a minute. */
const SETFILES_TIMEOUT_MS = 10 * 60_000;

/** The newest binary policy (policy.33 …) of a policy type, as a guest path, or undefined when none is built. */
async function binaryPolicy(root: string, type: string): Promise<string | undefined> {
  const dir = await resolveInRoot(root, `/etc/selinux/${type}/policy`);
  const versions = ((await readGuestDir(root, dir)) ?? [])
    .map((name) => /^policy\.(\d+)$/.exec(name)?.[1])
    .filter((v): v is string => v !== undefined)
    .map(Number)
    .sort((a, b) => b - a);
  return versions.length ? `${dir}/policy.${versions[0]}` : undefined;
}

export interface RelabelOptions {
  run: Runner;
  log: Logger;
  layout: GuestLayout;
  signal?: AbortSignal;
  /** The index its BOM entry gets (after the recipe's steps). */
  index: number;
}

/**
 * Gives every file of an SELinux guest (SELINUX=enforcing or permissive) the label its own policy wants,
 * as a booted guest's `restorecon` would: files the build wrote carry no security.selinux (the build host
 * does not label them, or labels them with its own policy). Runs the build host's `setfiles` (confined: see
 * below) with `-r <guest root>` over the guest's own file_contexts, checked against the guest's own binary policy
 * (`-c`), as mkosi does: no tool from the guest has to run (nor run under emulation for a foreign architecture), and
 * writing security.* is not left to the confined chroot. The whole guest is relabelled, every mounted guest
 * filesystem that keeps xattrs (not an ESP; a btrfs subvolume only when it is mounted): ctime-based
 * "only what changed" misses a renamed directory's subtree, and the whole fixture guest takes ~2.5 s.
 * Files whose label is already right are not touched. Without -F, customizable types keep their labels.
 *
 * When setfiles cannot run here (not installed, the guest's policy unreadable by this host's libselinux, a
 * filesystem seen through guestmount), the guest is marked with /.autorelabel instead, so it relabels itself
 * at first boot (one extra reboot), and a warning says why. Must run after the chroot session is closed (its
 * /proc, /sys, /dev are not the guest's) and after the last write into the guest.
 * Returns the BOM entry saying what was done, or nothing for a guest without SELinux.
 */
export async function relabelGuest(options: RelabelOptions): Promise<BomStep[]> {
  const { run, log, layout, signal, index } = options;
  const root = layout.root;
  const config = await readSelinuxConfig(root);
  if (!config || !['enforcing', 'permissive'].includes(config.mode)) return [];
  const started = Date.now();
  const fileContexts = await resolveInRoot(root, `/etc/selinux/${config.type}/contexts/files/file_contexts`);
  const entry = (description: string): BomStep[] => [{ index, type: 'selinux-relabel', description, durationMs: Date.now() - started }];

  const fallback = async (why: string): Promise<BomStep[]> => {
    // Replaced, not written through: a /.autorelabel symlink in the image must not make this write land anywhere.
    await writeGuestFileFromHost(root, '/.autorelabel', '', { mode: 0o644 });
    log.warn(`SELinux is ${config.mode} in the guest but its files could not be relabelled here: ${why}; created /.autorelabel, so the guest relabels itself at first boot (with one extra reboot)`);
    return entry(`/.autorelabel: the guest relabels itself at first boot (${why})`);
  };

  const rootMount = layout.mounts.find((mount) => mount.path === '/');
  if (!rootMount || !LABELLED_TYPES.has(rootMount.type)) return fallback(`the guest root is mounted through ${rootMount?.type ?? 'an unknown backend'}, which cannot set security.selinux`);
  if (!(await statGuest(root, fileContexts))?.isFile()) return fallback(`the guest has no ${fileContexts} (SELINUXTYPE=${config.type} in /etc/selinux/config)`);
  const policy = await binaryPolicy(root, config.type);
  // setfiles stays on one filesystem per pathname: each guest filesystem that keeps labels is named.
  const labelled = layout.mounts.filter((mount) => LABELLED_TYPES.has(mount.type));
  // The host's setfiles reads guest data as root, so it gets only copies of data it parses as data: the
  // file_contexts text files (regular expressions, matched, never executed) and the binary policy (checked by
  // libsepol), copied through guest-fs (no symlink, FIFO or device followed, sizes capped). Never the guest's
  // file_contexts.bin: it is precompiled PCRE2 bytecode that libselinux would load unchecked, so it stays
  // behind and setfiles compiles the text. It walks the guest tree itself without following symlinks (fts
  // FTS_PHYSICAL) and stays on each named filesystem.
  // The guest's filesystems alone are under the root (the chroot session is closed): the box binds the root writable.
  const guestMounts = layout.mounts.map((mount) => mount.hostPath);
  const foreign = (await mountsUnder(root)).filter((mount) => !guestMounts.includes(mount));
  if (foreign.length) throw new ImageBuilderError('INTERNAL', `cannot relabel the guest: ${foreign.join(', ')} mounted inside it`, { hint: 'the chroot session must be closed before the relabel; this is a bug in imagebuilder' });
  const setfiles = await which('setfiles');
  if (!setfiles) return fallback('setfiles is not installed on the build host (Debian package policycoreutils)');
  const arch = hostSeccompArch();
  if (!arch) return fallback(`setfiles runs confined by a seccomp filter, which has no syscall table for this host's architecture (${process.arch})`);
  const copies = await mkdtemp(join(tmpdir(), 'imagebuilder-selinux-'));
  try {
    const contextsCopy = join(copies, 'file_contexts');
    for (const suffix of FILE_CONTEXTS_TEXT_FILES) {
      const content = await readGuestFile(root, `${fileContexts}${suffix}`, GUEST_READ_LIMITS.policy);
      if (content !== undefined) await writeFile(`${contextsCopy}${suffix}`, content, { mode: 0o600 });
    }
    const policyCopy = join(copies, 'policy');
    const policyContent = policy ? await readGuestFile(root, policy, GUEST_READ_LIMITS.policy) : undefined;
    if (policyContent) await writeFile(policyCopy, policyContent, { mode: 0o600 });
    const args = [
      '-m', // no /proc/mounts lookup: this host's mounts say nothing about the guest's seclabel support
      '-r', root,
      ...(policyContent ? ['-c', policyCopy] : []),
      contextsCopy,
      ...labelled.map((mount) => mount.hostPath),
    ];
    // Confined all the same (libsepol and PCRE2 parse what the guest wrote): root with only the capabilities
    // labelling needs, in a box holding the host's /usr, these copies (read-only) and the guest's filesystems, no
    // network, the guest commands' seccomp filter with no ioctl but a terminal's (setfiles makes none); and a time
    // limit (a file_contexts of pathological regular expressions would otherwise take the build with it).
    const seccompFile = join(copies, 'seccomp.bpf');
    await writeFile(seccompFile, seccompBytes(arch, 'host-tool'), { mode: 0o600 });
    const [command, confined] = confinedRootCommand([setfiles, ...args], {
      // A build host that runs SELinux itself refuses a label its own policy does not know without CAP_MAC_ADMIN.
      capabilities: existsSync('/sys/fs/selinux/enforce') ? [...SETFILES_CAPABILITIES, 'CAP_MAC_ADMIN'] : SETFILES_CAPABILITIES,
      seccompFile,
      binds: [
        { host: copies, inside: copies },
        { host: root, inside: root, writable: true },
      ],
    });
    const result = await run(command, confined, { log, signal, allowFailure: true, timeoutMs: SETFILES_TIMEOUT_MS, display: `setfiles ${args.join(' ')} (confined)`, purpose: 'relabelling the guest for SELinux' });
    if (result.exitCode !== 0) return fallback(`setfiles exited with ${result.exitCode}: ${tail(result.output, 3).replace(/\s*\n\s*/g, ' | ')}`);
  } finally {
    await rm(copies, { recursive: true, force: true });
  }
  const over = labelled.map((mount) => mount.path);
  log.info(`SELinux: relabelled ${over.join(', ')} with the guest's ${config.type} policy (setfiles, ${((Date.now() - started) / 1000).toFixed(1)}s)`);
  return entry(`setfiles with /etc/selinux/${config.type}/contexts/files/file_contexts over ${over.join(', ')}`);
}
