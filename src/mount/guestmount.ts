import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { AttachRequest, MountBackend, MountContext } from './backend.js';
import { startHelper, type Helper } from '../util/daemon.js';
import { isImageBuilderError } from '../util/errors.js';
import { libguestfsEnv, tcgRetryEnv } from '../util/libguestfs.js';
import { exists, which } from '../util/fs.js';
import { mountsUnder } from '../util/mounts.js';

/** An appliance boots in seconds under KVM, in a minute or two under TCG on a busy host. */
const APPLIANCE_TIMEOUT_MS = 300000;

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
    await mkdir(root, { recursive: true });
    const args = [
      `--format=${request.format}`, '--add', request.image,
      '--inspector', request.readOnly ? '--ro' : '--rw',
      // Not daemonized (handed to init, where a SIGKILLed build left it and its appliance running): our child,
      // killed by the kernel when we die; libguestfs's recovery process then ends the appliance.
      '--no-fork', root,
    ];
    let guestmount: Helper | undefined;
    // Registered before guestmount starts: interrupted while the appliance boots, the mount and the process are
    // still found.
    cleanup.push(`guestmount ${root}`, async () => {
      if ((await mountsUnder(root)).length) await run('guestunmount', [root], { allowFailure: true });
      // Writes reach the image only when guestmount has exited (libguestfs guestmount(1), "race conditions").
      await guestmount?.exited(120000);
    });
    const start = (extraEnv: Record<string, string>) =>
      startHelper(
        'guestmount',
        args,
        {
          log, extraEnv, logFile: join(context.workDir, 'guestmount.log'), purpose: `guestmount of ${request.image}`,
          signal: context.signal, timeoutMs: APPLIANCE_TIMEOUT_MS, ready: async () => (await mountsUnder(root)).length > 0,
        },
        (helper) => (guestmount = helper),
      );
    const env = await libguestfsEnv(run, log, context.cacheDir);
    try {
      await start(env);
    } catch (error) {
      const retry = tcgRetryEnv(env);
      if (!retry || context.signal?.aborted || !isImageBuilderError(error)) throw error;
      log.warn(`guestmount failed with the KVM appliance (${error.message}); retrying with TCG`);
      await guestmount?.stop();
      await start(retry);
    }
    return { kind: 'tree' as const, root };
  },
};
