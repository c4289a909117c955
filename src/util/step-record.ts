/** A step as a build records it (the BOM's steps): the recipe's steps and what ran after them (initramfs, SELinux relabel). */
export interface BomStep {
  index: number;
  name?: string;
  type: string;
  description: string;
  durationMs: number;
  /** Why the step did not run here (its `when` did not match the guest). */
  skipped?: string;
  /** Its result was taken from the step cache (its duration is the one measured when it ran). */
  cached?: boolean;
}
