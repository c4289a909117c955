import { Flags } from '@oclif/core';
import type { Accel } from '../boot/firmware.js';

/** How an image is booted to check it (`imagebuilder test`, `apply --test`). */
export const accelFlag = {
  accel: Flags.string({
    description: 'how QEMU runs the guest: kvm, tcg (emulation: slower, works everywhere), or auto (KVM when it runs guests here, probed once per kernel)',
    options: ['auto', 'kvm', 'tcg'],
    default: 'auto',
    env: 'IMAGEBUILDER_ACCEL',
  }),
  'direct-kernel': Flags.boolean({
    description: "boot the image's newest kernel and initramfs directly (qemu -kernel, root by UUID), not through its bootloader and firmware: a fallback for images whose boot path cannot run here, which that boot then does not test",
    default: false,
  }),
  'boot-timeout': Flags.integer({
    description: 'seconds a booted guest has, from QEMU\'s start, to report its checks (default: 360 with KVM, 600 with TCG, twice that for another architecture); a guest that has not reported by then fails the test (exit 7)',
    min: 10,
  }),
};

/** The boot options the flags give. */
export const bootFlagOptions = (flags: { accel?: string; 'direct-kernel'?: boolean; 'boot-timeout'?: number }) => ({
  accel: (flags.accel ?? 'auto') as Accel | 'auto',
  ...(flags['direct-kernel'] ? { directKernel: true } : {}),
  ...(flags['boot-timeout'] ? { timeoutMs: flags['boot-timeout'] * 1000 } : {}),
});
