import { openChroot } from '../chroot/session.js';
import type { MountBackendName } from '../mount/backend.js';
import { mountContext, startBuild, withResources, type BuildOptions } from './context.js';
import { openGuest } from './guest.js';
import { verifyForBuild } from './verify.js';
import type { DiskImageOptions } from '../fetch/image-source.js';

export interface ShellOptions extends Omit<BuildOptions, 'keepWorkDir' | 'onEvent'> {
  diskImage: string;
  /** How a URL or a local image is verified and cached (phase 0). */
  image?: DiskImageOptions;
  /** Run this with /bin/sh -c instead of an interactive shell. */
  command?: string;
  /** Mount the guest writable; changes go to a throw-away overlay and are discarded at exit. */
  writable?: boolean;
  mountBackend?: MountBackendName | 'auto';
  /** Ports of the host's loopback the shell's commands may reach (--host-port). */
  hostPorts?: number[];
  /** Private networks the shell's commands may reach (--allow-network). */
  allowNetworks?: string[];
}

/**
 * Phase 0's "running shell inside the root filesystem": the image mounted as the guest mounts itself, a chroot
 * session, and a shell (or one command) on the user's terminal. The input is never written: the guest is
 * mounted read-only by default, and even --writable writes only to a throw-away overlay. Returns the exit code.
 */
export async function shell(options: ShellOptions): Promise<number> {
  const start = startBuild(options);
  const { run, log } = start;
  const input = await verifyForBuild(start, options.diskImage, options.image);
  return withResources(start, options, async (context) => {
    const { layout, distro } = await openGuest(mountContext(context), input, { backend: options.mountBackend ?? 'auto', readOnly: !options.writable });
    const session = await openChroot(layout.root, { run, log, signal: options.signal, readOnly: !options.writable, sessionFiles: distro.family?.sessionFiles, hostPorts: options.hostPorts, allowNetworks: options.allowNetworks });
    context.guest.push('chroot session', () => session.close());
    log.info(`${distro.prettyName ?? distro.id}, mounted ${options.writable ? 'writable (changes are discarded at exit)' : 'read-only'}`);
    if (options.command !== undefined) return await session.interactive(['/bin/sh', '-c', options.command]);
    log.info('exit the shell to release the image');
    return await session.interactive(['/bin/sh', '-c', 'exec "$(command -v bash || echo /bin/sh)" -l'], { PS1: `[imagebuilder ${promptName(distro.id)}] \\w# ` });
  });
}

/**
 * The guest's os-release ID as the prompt shows it: only what the ID's own syntax allows (a-z, 0-9, `._-`). A
 * crafted one would put a NUL into the environment (the shell never started, and the command exited with no
 * word) or `$(…)` and escape sequences into a prompt the shell expands and prints.
 */
export function promptName(id: string): string {
  return id.replace(/[^A-Za-z0-9._-]/g, '').slice(0, 64) || 'linux';
}
