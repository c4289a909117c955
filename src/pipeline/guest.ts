import { join } from 'node:path';
import { detectDistro, type Distro } from '../distro/families.js';
import { readOsRelease } from '../distro/os-release.js';
import { createOverlay, probeInputImage, type ImageFormat } from '../image/qemu-img.js';
import type { LiveSnapshot, MountBackend, MountBackendName, MountContext } from '../mount/backend.js';
import { mountGuestLayout, type GuestLayout } from '../mount/layout.js';
import { MOUNT_BACKENDS, selectMountBackend } from '../mount/select.js';
import { rootGrower } from '../mount/grow.js';
import { ImageBuilderError } from '../util/errors.js';
import type { VerifiedImage } from './verify.js';

export interface MountedGuest {
  backend: MountBackend;
  layout: GuestLayout;
  /** Present when the backend can turn the written image into a layer while mounted (the step cache). */
  snapshot?: LiveSnapshot;
}

export interface OpenedGuest extends MountedGuest {
  /** The qcow2 overlay over the untouched input that all writes go to. */
  overlay: string;
  distro: Distro;
}

/**
 * Attaches a work image with the chosen backend and mounts the guest as it mounts itself (root, then its
 * fstab). `readOnly` mounts every filesystem read-only; for block backends the work image itself stays
 * writable, so a dirty journal can still be replayed into it. Every resource is on context.cleanup.
 */
export async function mountGuest(
  context: MountContext,
  backendName: MountBackendName | 'auto',
  workImage: string,
  readOnly = false,
  preferLiveSnapshot = false,
  beforeRootMount?: (root: { device: string; type: string }) => Promise<void>,
): Promise<MountedGuest> {
  // The step cache needs live snapshots, which only the fuse backend (qemu-storage-daemon's monitor) takes.
  const order = preferLiveSnapshot ? [...MOUNT_BACKENDS].sort((a, b) => Number(b.name === 'fuse') - Number(a.name === 'fuse')) : MOUNT_BACKENDS;
  const backend = await selectMountBackend(context, backendName, order);
  const disk = await backend.attach(context, { image: workImage, format: 'qcow2', readOnly: backend.name === 'guestmount' && readOnly });
  const layout: GuestLayout =
    disk.kind === 'block'
      ? await mountGuestLayout(context, disk.device, readOnly, beforeRootMount)
      : { root: disk.root, mounts: [{ device: workImage, path: '/', type: 'guestmount', hostPath: disk.root }] };
  return { backend, layout, ...(disk.kind === 'block' && disk.snapshot ? { snapshot: disk.snapshot } : {}) };
}

/**
 * What apply, shell and inspect all start with: a qcow2 overlay over the verified input in the work dir
 * (the input is only ever read), the guest mounted, and its distribution identified.
 */
export async function openGuest(
  context: MountContext,
  input: Pick<VerifiedImage, 'path' | 'format'>,
  options: {
    backend: MountBackendName | 'auto';
    readOnly?: boolean;
    /** What the overlay goes over (default: the input): a cached layer whose chain ends at the input. */
    base?: { path: string; format: ImageFormat };
    /** Where the overlay is created (default: work.qcow2 in the work dir). */
    overlay?: string;
    /** Under `auto`, try a backend that can snapshot the mounted image first (for the step cache). */
    preferLiveSnapshot?: boolean;
    /** The overlay's virtual disk size, bigger than the base's (--grow): the guest's root partition and filesystem grow into it. */
    size?: number;
  },
): Promise<OpenedGuest> {
  // Checked again right before it is opened (a cached record may predate the check, a file may have changed):
  // a backing file, data file or extent would bring whatever it names on this host into the guest and the output.
  const probed = await probeInputImage(context.run, input.path, context.log);
  if (probed.format !== input.format) {
    throw new ImageBuilderError('BAD_INPUT', `${input.path} now reads as ${probed.format}, not the ${input.format} it was verified as`, { hint: 'the file changed since it was verified: run the build again' });
  }
  const overlay = options.overlay ?? join(context.workDir, 'work.qcow2');
  const base = options.base ?? input;
  await createOverlay(context.run, base.path, base.format, overlay, context.log, options.size);
  // A bigger disk: the root's partition and (ext*, offline) filesystem grow before it is mounted, xfs and btrfs after.
  const grow = options.size === undefined ? undefined : rootGrower(context);
  const { backend, layout, snapshot } = await mountGuest(context, options.backend, overlay, options.readOnly, options.preferLiveSnapshot, grow?.beforeMount);
  if (grow) await grow.afterMount(layout);
  const osRelease = await readOsRelease(layout.root);
  if (!osRelease) throw new ImageBuilderError('BAD_INPUT', `${input.path} has no /etc/os-release`, { hint: 'is this a Linux OS disk image?' });
  return { backend, layout, overlay, distro: detectDistro(osRelease), ...(snapshot ? { snapshot } : {}) };
}
