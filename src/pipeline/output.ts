import { join } from 'node:path';
import { convertImage, outputFormatOptions, type ImageFormat } from '../image/qemu-img.js';
import type { GuestMount } from '../mount/layout.js';
import type { Runner } from '../util/exec.js';
import { runWithTcgFallback } from '../util/libguestfs.js';
import type { Logger } from '../util/log.js';

export const SPARSIFY_MODES = ['virt-sparsify', 'fstrim', 'none'] as const;
export type SparsifyMode = (typeof SPARSIFY_MODES)[number];

export const FORMAT_EXTENSIONS: Record<ImageFormat, string> = { qcow2: 'qcow2', raw: 'img', vmdk: 'vmdk', vhdx: 'vhdx', vpc: 'vhd', vdi: 'vdi' };

/** Discards the free blocks of each mounted guest filesystem, so conversion writes only used data. */
export async function trimFilesystems(run: Runner, mounts: GuestMount[], log: Logger): Promise<void> {
  for (const mount of [...mounts].reverse()) {
    const result = await run('fstrim', ['--verbose', mount.hostPath], { allowFailure: true, log });
    if (result.exitCode === 0) log.info(`fstrim ${mount.path}: ${result.stdout.trim().replace(/^.*: /, '')}`);
    else log.warn(`fstrim ${mount.path} failed: ${result.output.trim()}; the output will be larger`);
  }
}

/** Writes the work image, flattened, to `target` in `format`, sparsified as asked. */
export async function writeOutputImage(
  run: Runner,
  workImage: string,
  target: string,
  format: ImageFormat,
  sparsify: SparsifyMode,
  options: { log: Logger; signal?: AbortSignal; workDir: string },
): Promise<void> {
  if (sparsify === 'virt-sparsify') {
    await runWithTcgFallback(
      run,
      'virt-sparsify',
      ['--format', 'qcow2', '--convert', format, ...outputFormatOptions(format), '--check-tmpdir', 'continue', workImage, target],
      // Its temporary overlay goes in our work dir: removed with it, and on the disk the user chose.
      { log: options.log, signal: options.signal, extraEnv: { TMPDIR: join(options.workDir) }, purpose: 'virt-sparsify of the output' },
    );
    return;
  }
  await convertImage(run, workImage, target, format, options);
}
