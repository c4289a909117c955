import { ImageBuilderError } from '../util/errors.js';
import type { MountBackend, MountBackendName, MountContext } from './backend.js';
import { fuseBackend } from './fuse.js';
import { guestmountBackend } from './guestmount.js';
import { nbdBackend } from './nbd.js';

/** In the order `auto` tries them: fastest and most common first. */
export const MOUNT_BACKENDS: MountBackend[] = [nbdBackend, fuseBackend, guestmountBackend];

export async function selectMountBackend(
  context: MountContext,
  wanted: MountBackendName | 'auto',
  backends: MountBackend[] = MOUNT_BACKENDS,
): Promise<MountBackend> {
  const passedOver: string[] = [];
  for (const backend of backends) {
    if (wanted !== 'auto' && backend.name !== wanted) continue;
    const reason = await backend.unavailable(context);
    if (!reason) {
      const why = passedOver.length ? ` (passed over: ${passedOver.join('; ')})` : '';
      context.log.info(`mount backend: ${backend.name}${why}`);
      return backend;
    }
    passedOver.push(`${backend.name}: ${reason}`);
  }
  throw new ImageBuilderError('ENVIRONMENT', `no usable mount backend: ${passedOver.join('; ')}`, {
    hint:
      wanted === 'auto'
        ? 'install qemu-utils (fuse backend) or libguestfs-tools (guestmount), or load the nbd module'
        : `choose another with --mount-backend, or fix: ${passedOver.join('; ')}`,
  });
}
