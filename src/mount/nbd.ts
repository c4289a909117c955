import { randomUUID } from 'node:crypto';
import { link, mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { AttachRequest, MountBackend, MountContext } from './backend.js';
import { ensurePartitions } from './block.js';
import { noteHolding } from '../util/build-record.js';
import { ImageBuilderError } from '../util/errors.js';
import { exists, processAlive, which } from '../util/fs.js';

export interface NbdPaths {
  sysBlock: string;
  lockDir: string;
}

const DEFAULT_PATHS: NbdPaths = { sysBlock: '/sys/block', lockDir: '/run/lock' };

/** Connected nbd devices have /sys/block/nbdN/pid; a lock file of ours keeps two builds off one device. */
async function claimDevice(paths: NbdPaths, index: number): Promise<(() => Promise<void>) | undefined> {
  if (await exists(join(paths.sysBlock, `nbd${index}`, 'pid'))) return undefined;
  const lockPath = join(paths.lockDir, `imagebuilder-nbd${index}.lock`);
  await mkdir(paths.lockDir, { recursive: true });
  // The lock appears complete or not at all: written under a private name, then hard-linked into place.
  const mine = `${lockPath}.${process.pid}.${randomUUID()}`;
  await writeFile(mine, String(process.pid));
  try {
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        await link(mine, lockPath);
        return () => rm(lockPath, { force: true });
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
        const owner = Number((await readFile(lockPath, 'utf8').catch(() => '')).trim());
        if (owner && processAlive(owner)) return undefined;
        // Stale (its build died): moved aside atomically, so of two builds finding it only one takes it over.
        const aside = `${lockPath}.stale.${randomUUID()}`;
        if (await rename(lockPath, aside).then(() => true, () => false)) await rm(aside, { force: true });
      }
    }
    return undefined;
  } finally {
    await rm(mine, { force: true });
  }
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
        const unlock = await claimDevice(paths, index);
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
