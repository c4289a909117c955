import { IMAGE_FORMATS } from './qemu-img.js';

/** What apply can write: disk images, and `tar`, the guest's root filesystem as a tarball (rootfs-tar.ts). */
export const OUTPUT_FORMATS = [...IMAGE_FORMATS, 'tar'] as const;
export type OutputFormat = (typeof OUTPUT_FORMATS)[number];
