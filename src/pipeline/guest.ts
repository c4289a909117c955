import type { MountBackend, MountBackendName, MountContext } from '../mount/backend.js';
import { mountGuestLayout, type GuestLayout } from '../mount/layout.js';
import { selectMountBackend } from '../mount/select.js';

export interface MountedGuest {
  backend: MountBackend;
  layout: GuestLayout;
}

/**
 * Attaches a work image with the chosen backend and mounts the guest as it mounts itself (root, then its
 * fstab). `readOnly` mounts every filesystem read-only (the work image itself stays writable, so a dirty
 * journal can still be replayed into it). Every resource is on context.cleanup.
 */
export async function mountGuest(context: MountContext, backendName: MountBackendName | 'auto', workImage: string, readOnly = false): Promise<MountedGuest> {
  const backend = await selectMountBackend(context, backendName);
  const disk = await backend.attach(context, { image: workImage, format: 'qcow2', readOnly: false });
  const layout: GuestLayout =
    disk.kind === 'block'
      ? await mountGuestLayout(context, disk.device, readOnly)
      : { root: disk.root, mounts: [{ device: workImage, path: '/', type: 'guestmount', hostPath: disk.root }] };
  return { backend, layout };
}
