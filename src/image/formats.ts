import { IMAGE_FORMATS, type ImageFormat } from './qemu-img.js';

/**
 * What apply can write: disk images; `tar`, the guest's root filesystem as a tarball (rootfs-tar.ts); `ova`, an
 * OVF 1.0 package with a streamOptimized VMDK (vSphere, VirtualBox); `gce`, a `disk.raw` in a gzip'd GNU tar, as
 * Google Compute Engine imports it (appliance.ts).
 */
export const OUTPUT_FORMATS = [...IMAGE_FORMATS, 'tar', 'ova', 'gce'] as const;
export type OutputFormat = (typeof OUTPUT_FORMATS)[number];

/** A format qemu boots as it is (`apply --test` boots one); tar, ova and gce are archives. */
export function isDiskImageFormat(format: OutputFormat): format is ImageFormat {
  return (IMAGE_FORMATS as readonly string[]).includes(format);
}
