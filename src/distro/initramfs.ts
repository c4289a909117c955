import { lstat } from 'node:fs/promises';
import { guestTreeState, isInside, readGuestDir, statGuest, type GuestTreeState } from '../util/guest-fs.js';
import { join, posix } from 'node:path';
import type { BomStep } from '../util/step-record.js';
import type { ChrootSession } from '../chroot/session.js';
import { exists, resolveInRoot } from '../util/fs.js';
import type { Logger } from '../util/log.js';

/**
 * Inputs of the initramfs besides a kernel's own modules: the generators' configuration and their modules or
 * hooks (a package upgrade of dracut changes what it puts in).
 */
const DRACUT_INPUTS = ['/etc/dracut.conf', '/etc/dracut.conf.d', '/usr/lib/dracut/dracut.conf.d', '/usr/lib/dracut/modules.d'];
const INITRAMFS_TOOLS_INPUTS = ['/etc/initramfs-tools', '/usr/share/initramfs-tools'];

/** Every guest tree the watch reads: the kernels' modules and images, and both generators' inputs. */
const WATCHED_TREES = ['/lib/modules', '/boot', ...DRACUT_INPUTS, ...INITRAMFS_TOOLS_INPUTS];

/**
 * Whether writing these guest paths may change what an initramfs is built from: a path is in a tree the watch
 * reads, or holds one. Each is taken both as the guest resolves it whole and with its last part unresolved (a
 * rename replaces a final link; `mv` into a linked directory follows it), its links followed inside the root.
 */
export async function initramfsMayRead(root: string, guestPaths: readonly string[]): Promise<boolean> {
  const watched = await Promise.all(WATCHED_TREES.map((path) => resolveInRoot(root, path)));
  for (const path of guestPaths) {
    // `..` after a link is resolved by the guest's tools from where the link led, not lexically: watched.
    if (path.split('/').includes('..')) return true;
    const forms = [await resolveInRoot(root, path), posix.join(await resolveInRoot(root, posix.dirname(path)), posix.basename(path))];
    if (forms.some((form) => watched.some((top) => isInside(top, form) || isInside(form, top)))) return true;
  }
  return false;
}

/** Where the initramfs of kernel `version` lives: Fedora/RHEL, Debian/Ubuntu, the BLS layout dracut also uses, SUSE. */
const initramfsPaths = (version: string) => [`/boot/initramfs-${version}.img`, `/boot/initrd.img-${version}`, `/lib/modules/${version}/initrd`, `/boot/initrd-${version}`];

/** What the watch read of the guest's initramfs inputs; passed on to the next step's watch while nothing changed them. */
export interface InitramfsTrees {
  /** Per kernel version: its /lib/modules/<version> tree and /boot/vmlinuz-<version>. */
  kernels: Map<string, GuestTreeState>;
  dracut: GuestTreeState;
  initramfsTools: GuestTreeState;
}

async function kernelVersions(root: string): Promise<string[]> {
  const modules = await resolveInRoot(root, '/lib/modules');
  const versions: string[] = [];
  for (const name of (await readGuestDir(root, modules)) ?? []) if ((await statGuest(root, `${modules}/${name}`))?.isDirectory()) versions.push(name);
  return versions;
}

async function snapshot(root: string): Promise<InitramfsTrees> {
  const kernels = new Map<string, GuestTreeState>();
  for (const version of await kernelVersions(root)) {
    // The initramfs may live in the modules directory (BLS): an output, not an input.
    const initrd = await resolveInRoot(root, `/lib/modules/${version}/initrd`);
    kernels.set(version, await guestTreeState(root, [`/lib/modules/${version}`, `/boot/vmlinuz-${version}`], (path) => path === initrd));
  }
  return { kernels, dracut: await guestTreeState(root, DRACUT_INPUTS), initramfsTools: await guestTreeState(root, INITRAMFS_TOOLS_INPUTS) };
}

/** The newest ctime among the kernel's initramfs files, or undefined when it has none. */
async function initramfsCtime(root: string, version: string): Promise<bigint | undefined> {
  let newest: bigint | undefined;
  for (const path of initramfsPaths(version)) {
    const stat = await lstat(join(root, await resolveInRoot(root, path)), { bigint: true }).catch(() => undefined);
    if (stat?.isFile() && (newest === undefined || stat.ctimeNs > newest)) newest = stat.ctimeNs;
  }
  return newest;
}

type Generator = { name: 'dracut' | 'initramfs-tools'; inputs: keyof Pick<InitramfsTrees, 'dracut' | 'initramfsTools'> };

/** The guest's initramfs generator: dracut (Fedora, RHEL, SUSE, Debian with dracut) or initramfs-tools. */
async function guestGenerator(root: string): Promise<Generator | undefined> {
  const present = async (paths: string[]) => {
    for (const path of paths) if (await exists(join(root, await resolveInRoot(root, path)))) return true;
    return false;
  };
  if (await present(['/usr/bin/dracut', '/usr/sbin/dracut'])) return { name: 'dracut', inputs: 'dracut' };
  if (await present(['/usr/sbin/update-initramfs'])) return { name: 'initramfs-tools', inputs: 'initramfsTools' };
  return undefined;
}

export interface InitramfsWatch {
  /**
   * Regenerates, inside the guest, the initramfs of every guest kernel whose inputs the steps changed, unless
   * it was already rebuilt after the change. Returns one BOM entry per kernel regenerated.
   */
  regenerate(session: ChrootSession, options: { log: Logger; signal?: AbortSignal; index: number }): Promise<BomStep[]>;
  /**
   * The trees as regenerate read them after the step, when it built nothing: the next step's watch starts from
   * them instead of walking them again (a kernel's modules are thousands of entries, ~15 ms a walk here).
   * Undefined before regenerate, when the guest has no generator (nothing read), or when a generator ran.
   */
  settled(): InitramfsTrees | undefined;
}

/**
 * Notes the guest's kernels and initramfs inputs before the steps run, to tell afterwards which kernels'
 * initramfs a step made stale: a kernel installed or upgraded (its /lib/modules/<version> added or changed), or
 * the generator's configuration written (/etc/dracut.conf.d/…, /etc/initramfs-tools/…). The initramfs is then
 * built for the GUEST kernel version (`dracut --kver`, `update-initramfs -k`): without it, dracut in a chroot
 * builds for the running (host) kernel, `uname -r`. A kernel package's own hooks (Debian's postinst, Fedora's
 * kernel-install) already build it with the right version; an initramfs newer (by ctime) than every changed
 * input is not built twice. `from`: the trees as the step before left them (its watch's settled()), read then.
 */
export async function watchInitramfs(root: string, from?: InitramfsTrees): Promise<InitramfsWatch> {
  const before = from ?? (await snapshot(root));
  let settled: InitramfsTrees | undefined;
  return {
    settled: () => settled,
    async regenerate(session, { log, signal, index }) {
      const generator = await guestGenerator(root);
      if (!generator) return [];
      const after = await snapshot(root);
      const inputs = after[generator.inputs];
      const configChanged = inputs.digest !== before[generator.inputs].digest;
      const entries: BomStep[] = [];
      for (const [version, state] of after.kernels) {
        const previous = before.kernels.get(version);
        const kernelChanged = previous?.digest !== state.digest;
        if (!kernelChanged && !configChanged) continue;
        const why = [kernelChanged ? `${previous ? 'changed' : 'new'} kernel ${version}` : '', configChanged ? `${generator.name} configuration changed` : ''].filter(Boolean).join(', ');
        const changedAt = [kernelChanged ? state.newestCtimeNs : 0n, configChanged ? inputs.newestCtimeNs : 0n].reduce((a, b) => (a > b ? a : b));
        const built = await initramfsCtime(root, version);
        if (built !== undefined && built > changedAt) {
          log.info(`initramfs of kernel ${version}: up to date (${why}, rebuilt since by the guest's own hooks)`);
          continue;
        }
        const argv =
          generator.name === 'dracut'
            ? // --no-hostonly: host-only would size the initramfs to the hardware dracut sees, the build host's.
              ['dracut', '--force', '--no-hostonly', '--kver', version]
            : ['update-initramfs', built === undefined ? '-c' : '-u', '-k', version];
        log.info(`initramfs of kernel ${version}: ${why}; regenerating with ${generator.name}`);
        const started = Date.now();
        await session.exec(argv, {
          signal,
          streamOutput: true,
          errorCode: 'STEP_FAILED',
          purpose: `regenerating the initramfs of guest kernel ${version}`,
          hint: `the guest's ${generator.name} failed after the steps changed ${why}; its output above says why`,
        });
        entries.push({ index: index + entries.length, type: 'initramfs', description: `${argv.join(' ')} (${why})`, durationMs: Date.now() - started });
      }
      if (!entries.length) settled = after;
      return entries;
    },
  };
}
