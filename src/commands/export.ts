import { Args, Flags } from '@oclif/core';
import { artifactFlags, artifactOptions } from '../cli/artifact-flags.js';
import { BaseCommand } from '../cli/base-command.js';
import { printResult } from '../cli/print-result.js';
import { cacheFlag, hostPaths, mountBackendFlag, mountBackendOf, workDirFlag } from '../cli/host-flags.js';
import { exportWorkImage, type ApplyResult } from '../pipeline/apply.js';
import type { BuildEvent } from '../pipeline/events.js';
import { createLogger } from '../util/log.js';
import { withInterrupts } from '../util/signals.js';

export default class Export extends BaseCommand {
  static override summary = 'Phase 2 alone: turn a work image from `apply --phases 0,1` into the final artifacts and their BOM';
  static override description =
    'Reads what phase 1 recorded inside the work image, removes that record (in an overlay: the work image is only read), ' +
    'trims or sparsifies, and writes the image in the base image\'s format (or --format), the BOM, the SBOMs and SHA256SUMS, ' +
    'exactly as one `apply` would have.';
  static override examples = [
    '<%= config.bin %> apply recipe.yaml --disk-image debian-12.qcow2 --phases 0,1 --output node.work.qcow2',
    '<%= config.bin %> export node.work.qcow2 --format vmdk --format qcow2',
  ];

  static override args = { 'work-image': Args.string({ description: 'a work image written by apply --phases 0,1', required: true }) };
  static override flags = {
    output: Flags.string({ char: 'o', description: 'output image path [default: the work image name without .work, here]' }),
    ...artifactFlags,
    ...mountBackendFlag,
    ...workDirFlag,
    ...cacheFlag,
    'keep-work-dir': Flags.boolean({ description: 'keep the work directory for debugging', default: false, env: 'IMAGEBUILDER_KEEP_WORK_DIR' }),
    json: Flags.boolean({ description: 'print progress events and the result as JSON lines on stdout (logs stay on stderr)', default: false }),
    verbose: Flags.boolean({ char: 'v', description: 'log every command run', default: false }),
  };

  async run(): Promise<ApplyResult> {
    const { args, flags } = await this.parse(Export);
    const paths = hostPaths(flags);
    const log = createLogger({ level: flags.verbose ? 'debug' : 'info' });
    const result = await withInterrupts(log, (signal) =>
      exportWorkImage({
        workImage: args['work-image'],
        output: flags.output,
        ...artifactOptions(flags),
        mountBackend: mountBackendOf(flags),
        workDir: paths.workDir,
        cacheDir: paths.cacheDir,
        runDir: paths.runDir,
        keepWorkDir: flags['keep-work-dir'],
        log,
        signal,
        onEvent: flags.json ? (event: BuildEvent) => this.log(JSON.stringify(event)) : undefined,
      }),
    );
    printResult(this, result, flags.json);
    return result;
  }
}
