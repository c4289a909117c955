import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { AttachRequest, MountBackend, MountContext } from './backend.js';
import { ensurePartitions } from './block.js';
import { noteHolding } from '../util/build-record.js';
import { ImageBuilderError } from '../util/errors.js';
import { exists, which } from '../util/fs.js';
import { HOST_LOCK_DIR, tryAcquireLock } from '../util/lock.js';
import type { Logger } from '../util/log.js';

export interface NbdPaths {
  sysBlock: string;
  lockDir: string;
}

/**
 * The nbd locks live in a directory of their own, private to root: /run/lock itself is writable by every user
 * (1777), who could pre-create a lock file (holding a device forever) or plant a symlink there.
 */
const DEFAULT_PATHS: NbdPaths = { sysBlock: '/sys/block', lockDir: HOST_LOCK_DIR };
/** A device's claim file, and the pattern cleanup finds them by. */
export const nbdLockName = (index: number) => `imagebuilder-nbd${index}.lock`;
export const NBD_LOCK = /^imagebuilder-nbd\d+\.lock$/;

/**
 * Connected nbd devices have /sys/block/nbdN/pid; a lock of ours (src/util/lock.ts: released by the kernel when
 * its build dies, in any pid namespace) keeps two builds off one device between choosing and connecting it.
 */
async function claimDevice(paths: NbdPaths, index: number, log: Logger): Promise<(() => Promise<void>) | undefined> {
  if (await exists(join(paths.sysBlock, `nbd${index}`, 'pid'))) return undefined;
  return tryAcquireLock(join(paths.lockDir, nbdLockName(index)), `/dev/nbd${index}`, { log });
}

export function createNbdBackend(paths: NbdPaths = DEFAULT_PATHS): MountBackend {
  const devices = async () =>
    (await readdir(paths.sysBlock).catch(() => [] as string[]))
      .filter((name) => /^nbd\d+$/.test(name))
      .map((name) => Number(name.slice(3)))
      .sort((a, b) => a - b);

  return {
    name: 'nbd',

    async unavailable() {
      if (!(await which('qemu-nbd'))) return 'qemu-nbd is not installed (Debian package qemu-utils)';
      if ((await devices()).length === 0) {
        return 'the nbd kernel module is not loaded (on the host: modprobe nbd max_part=16)';
      }
      return undefined;
    },

    async attach(context: MountContext, request: AttachRequest) {
      const { run, log, cleanup } = context;
      for (const index of await devices()) {
        const unlock = await claimDevice(paths, index, log);
        if (!unlock) continue;
        cleanup.push(`nbd lock ${index}`, unlock);
        const device = `/dev/nbd${index}`;
        // Noted and registered before connecting: a build killed or interrupted meanwhile leaves nothing unknown.
        // Only a connect that failed by itself (the device taken by someone else meanwhile) is not ours to undo.
        await noteHolding(context.workDir, { kind: 'nbd', device });
        let refused = false;
        cleanup.push(`nbd connection ${device}`, async () => {
          if (!refused) await run('qemu-nbd', ['--disconnect', device], { allowFailure: true });
        });
        await run(
          'qemu-nbd',
          [
            `--connect=${device}`,
            `--format=${request.format}`,
            ...(request.readOnly ? ['--read-only'] : ['--discard=unmap']),
            request.image,
          ],
          { log, purpose: `connecting ${device}` },
        ).catch((error: unknown) => {
          refused = !context.signal?.aborted;
          throw error;
        });
        await ensurePartitions(context, device);
        return { kind: 'block' as const, device };
      }
      throw new ImageBuilderError('ENVIRONMENT', 'every /dev/nbd device is in use', {
        hint: 'wait for other builds to finish, or load the module with more devices: modprobe nbd nbds_max=32 max_part=16',
      });
    },
  };
}

export const nbdBackend = createNbdBackend();
