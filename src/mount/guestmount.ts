import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { AttachRequest, MountBackend, MountContext } from './backend.js';
import { runWithTcgFallback } from '../util/libguestfs.js';
import { exists, waitForExit, which } from '../util/fs.js';
import { mountsUnder } from '../util/mounts.js';

/** libguestfs mounts the guest inside its appliance and shows it over FUSE: slow, but no host kernel support needed. */
export const guestmountBackend: MountBackend = {
  name: 'guestmount',

  async unavailable() {
    if (!(await which('guestmount'))) return 'guestmount is not installed (Debian package guestmount or libguestfs-tools)';
    if (!(await exists('/dev/fuse'))) return '/dev/fuse is missing';
    return undefined;
  },

  async attach(context: MountContext, request: AttachRequest) {
    const { run, log, cleanup } = context;
    const root = join(context.workDir, 'guest');
    const pidFile = join(context.workDir, 'guestmount.pid');
    await mkdir(root, { recursive: true });
    const args = [
      `--format=${request.format}`, '--add', request.image,
      '--inspector', request.readOnly ? '--ro' : '--rw',
      '--pid-file', pidFile, root,
    ];
    // Registered before guestmount starts (it daemonizes once the mount is up): interrupted meanwhile, the mount
    // and the daemon are found by their paths in the work directory.
    cleanup.push(`guestmount ${root}`, async () => {
      const pid = Number((await readFile(pidFile, 'utf8').catch(() => '')).trim());
      if ((await mountsUnder(root)).length) await run('guestunmount', [root], { allowFailure: true });
      // Writes reach the image only when guestmount has exited (libguestfs guestmount(1), "race conditions").
      if (pid > 0) await waitForExit(pid, 120000);
    });
    await runWithTcgFallback(run, 'guestmount', args, { log, signal: context.signal, purpose: `guestmount of ${request.image}` });
    return { kind: 'tree' as const, root };
  },
};
