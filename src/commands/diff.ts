import { Args, Flags } from '@oclif/core';
import { BaseCommand } from '../cli/base-command.js';
import { diffIsEmpty, renderDiff } from '../bom/diff.js';
import { createLogger } from '../util/log.js';
import { withInterrupts } from '../util/signals.js';
import { compareImages } from '../pipeline/compare.js';
import { hostPaths, mountBackendFlag, mountBackendOf, workDirFlag } from '../cli/host-flags.js';
import { diskImageOptions, imageVerifyFlags } from '../cli/image-flags.js';

const { checksum: _checksum, ...verifyFlags } = imageVerifyFlags;

export default class Diff extends BaseCommand {
  static override summary = 'What changed between two images (or their BOMs): packages, units, files';
  static override description = 'Each side is a disk image (inspected read-only) or a .bom.json written by apply; files are compared only between BOMs. Exit code 0 either way; use --json for pipelines.';
  static override examples = ['<%= config.bin %> diff debian-12.qcow2 node.qcow2', '<%= config.bin %> diff old.qcow2.bom.json new.qcow2.bom.json --json'];
  static override args = {
    a: Args.string({ description: 'image or BOM before', required: true }),
    b: Args.string({ description: 'image or BOM after', required: true }),
  };
  static override flags = {
    json: Flags.boolean({ description: 'print the diff as JSON', default: false }),
    // Each image side is inspected as `inspect` does: verified, and mounted as --untrusted / --mount-backend say
    // (not --checksum: one sum cannot vouch for two images).
    ...verifyFlags,
    ...mountBackendFlag,
    ...workDirFlag,
  };

  async run(): Promise<void> {
    const { args, flags } = await this.parse(Diff);
    const log = createLogger({ level: 'warn' });
    const sides = { image: diskImageOptions(flags), mountBackend: mountBackendOf(flags), ...hostPaths(flags) };
    const diff = await withInterrupts(log, (signal) => compareImages(args.a, args.b, log, signal, sides));
    this.log(flags.json ? JSON.stringify({ ...diff, identical: diffIsEmpty(diff) }, null, 2) : renderDiff(diff));
  }
}
