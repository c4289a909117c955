import type { ExecOptions, ExecResult, Runner } from './exec.js';
import { ImageBuilderError } from './errors.js';

/**
 * Runs a libguestfs tool; when its KVM appliance fails to start (nested virtualisation, no usable /dev/kvm),
 * runs it again with TCG, which is slower but works wherever qemu does.
 */
export async function runWithTcgFallback(run: Runner, file: string, args: string[], options: ExecOptions & { purpose: string }): Promise<ExecResult> {
  let result = await run(file, args, { ...options, allowFailure: true });
  const userChoseBackend = process.env.LIBGUESTFS_BACKEND_SETTINGS !== undefined || options.extraEnv?.LIBGUESTFS_BACKEND_SETTINGS !== undefined;
  if (result.exitCode !== 0 && !userChoseBackend) {
    options.log?.warn(`${file} failed with the KVM appliance (${result.output.trim().split('\n').pop()}); retrying with TCG`);
    result = await run(file, args, { ...options, allowFailure: true, extraEnv: { ...options.extraEnv, LIBGUESTFS_BACKEND_SETTINGS: 'force_tcg' } });
  }
  if (result.exitCode !== 0) {
    throw new ImageBuilderError('COMMAND_FAILED', `${options.purpose}: \`${result.command}\` exited with ${result.exitCode}`, {
      detail: result.output.trim().split('\n').slice(-20).join('\n'),
      hint: 'run `libguestfs-test-tool` to see why the libguestfs appliance does not start',
    });
  }
  return result;
}
