import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { AttachRequest, MountBackend, MountContext } from './backend.js';
import { runWithTcgFallback } from '../util/libguestfs.js';
import { exists, waitForExit, which } from '../util/fs.js';

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
    await runWithTcgFallback(run, 'guestmount', args, { log, signal: context.signal, purpose: `guestmount of ${request.image}` });
    const pid = Number((await readFile(pidFile, 'utf8').catch(() => '')).trim());
    cleanup.push(`guestmount ${root} (pid ${pid || 'unknown'})`, async () => {
      await run('guestunmount', [root], { allowFailure: true });
      // Writes reach the image only when guestmount has exited (libguestfs guestmount(1), "race conditions").
      if (pid > 0) await waitForExit(pid, 120000);
    });
    return { kind: 'tree' as const, root };
  },
};
