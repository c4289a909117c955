import type { CleanupStack } from '../util/cleanup.js';
import type { Runner } from '../util/exec.js';
import type { Logger } from '../util/log.js';
import type { ImageFormat } from '../image/qemu-img.js';

export const MOUNT_BACKEND_NAMES = ['nbd', 'fuse', 'guestmount'] as const;
export type MountBackendName = (typeof MOUNT_BACKEND_NAMES)[number];

export interface MountContext {
  run: Runner;
  log: Logger;
  cleanup: CleanupStack;
  signal?: AbortSignal;
  /** Private directory for this build's export files and mount points. */
  workDir: string;
  /** The cache directory (the libguestfs KVM verdict is remembered there). */
  cacheDir: string;
}

export interface AttachRequest {
  image: string;
  format: ImageFormat;
  readOnly: boolean;
}

/**
 * What a backend hands back: either a block device holding the whole disk (nbd, fuse) whose filesystems
 * we mount ourselves, or a guest tree already mounted by libguestfs (guestmount).
 */
export type AttachedDisk = { kind: 'block'; device: string; snapshot?: LiveSnapshot } | { kind: 'tree'; root: string };

/**
 * Turns the image being written into a read-only layer while it stays attached: every later write goes to
 * `overlay`, a new qcow2 file whose backing is that layer. The caller quiesces the guest's filesystems first
 * (fsfreeze); the backend flushes what lies between them and the image.
 */
export type LiveSnapshot = (overlay: string) => Promise<void>;

export interface MountBackend {
  readonly name: MountBackendName;
  /** Why this backend cannot work on this host, or undefined when it can. */
  unavailable(context: MountContext): Promise<string | undefined>;
  /** Attaches the image; every resource it takes is pushed on context.cleanup as it is taken. */
  attach(context: MountContext, request: AttachRequest): Promise<AttachedDisk>;
}
