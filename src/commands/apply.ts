import { Args, Flags } from '@oclif/core';
import { apply, withInterrupts, createLogger, type ApplyResult } from '../index.js';
import { BaseCommand } from '../cli/base-command.js';
import { SBOM_FORMATS, type SbomFormat } from '../pipeline/apply.js';
import { ImageBuilderError } from '../util/errors.js';
import { applyRepeatably } from '../pipeline/repeatable.js';
import { IMAGE_FORMATS, type ImageFormat } from '../image/qemu-img.js';
import { recipeInputs, recipeVariableFlags } from '../cli/recipe-flags.js';
import { diskImageFlags, diskImageOptions } from '../cli/image-flags.js';
import { exportHostFlags, hostBuildFlags, mountBackendOf, sparsifyOf } from '../cli/host-flags.js';

export default class Apply extends BaseCommand {
  static override summary = "Run a recipe's steps inside a disk image and write the customized image and its BOM";
  static override description =
    'Verifies the image (a local path or an http(s) URL, fetched once into the cache) against the sums file beside it, mounts a copy natively, runs the recipe ' +
    "inside a chroot with the guest's own package manager, and writes a new image in the input's format with a " +
    'bill of materials (<output>.bom.json). The input image is never modified.';
  static override examples = ['<%= config.bin %> apply recipes/examples/k8s-node-containerd.yaml --disk-image debian-12.qcow2'];

  static override args = {
    recipe: Args.string({ description: 'recipe YAML file', required: true }),
  };

  static override flags = {
    ...diskImageFlags,
    ...recipeVariableFlags,
    output: Flags.string({ char: 'o', description: "output image path [default: <image>-<recipe>.<ext> here]" }),
    format: Flags.string({
      description: "output format (repeatable: each written beside the first) [default: the input's format]",
      options: [...IMAGE_FORMATS],
      multiple: true,
    }),
    compress: Flags.boolean({ description: 'compress qcow2 outputs', default: false }),
    sbom: Flags.string({
      description: 'standard SBOMs written beside the BOM (<output>.cdx.json, <output>.spdx.json): a comma-separated list of cyclonedx, spdx, or none',
      default: 'cyclonedx,spdx',
      env: 'IMAGEBUILDER_SBOM',
      parse: async (value) => {
        const formats = value.split(',').map((f) => f.trim()).filter(Boolean);
        const bad = formats.filter((f) => f !== 'none' && !(SBOM_FORMATS as readonly string[]).includes(f));
        if (bad.length) throw new ImageBuilderError('BAD_INPUT', `--sbom: unknown format ${bad.join(', ')}`, { hint: `a comma-separated list of ${SBOM_FORMATS.join(', ')}, or none` });
        return formats.join(',');
      },
    }),
    'verify-repeatable': Flags.boolean({ description: 'build a second time and fail if packages, units or written files differ', default: false }),
    ...hostBuildFlags,
    json: Flags.boolean({ description: 'print the result as JSON on stdout (logs stay on stderr)', default: false }),
    verbose: Flags.boolean({ char: 'v', description: 'log every command run', default: false }),
    quiet: Flags.boolean({ char: 'q', description: 'do not echo command output (it is still in errors)', default: false }),
  };

  async run(): Promise<ApplyResult> {
    const { args, flags } = await this.parse(Apply);
    exportHostFlags(flags);
    const log = createLogger({ level: flags.verbose ? 'debug' : 'info', showOutput: !flags.quiet });
    const build = flags['verify-repeatable'] ? applyRepeatably : apply;
    const result = await withInterrupts(log, (signal) =>
      build({
        recipe: args.recipe,
        recipeInputs: recipeInputs(flags),
        diskImage: flags['disk-image'],
        image: diskImageOptions(flags),
        output: flags.output,
        mountBackend: mountBackendOf(flags),
        sparsify: sparsifyOf(flags),
        formats: flags.format as ImageFormat[] | undefined,
        compress: flags.compress,
        sbom: flags.sbom.split(',').filter((f): f is SbomFormat => f !== 'none' && f !== ''),
        keepWorkDir: flags['keep-work-dir'],
        workDir: flags['work-dir'],
        log,
        signal,
      }),
    );
    if (flags.json) {
      this.log(JSON.stringify({ output: result.output, artifacts: result.artifacts, bom: result.bomPath, sboms: result.sbomPaths, sums: result.sumsPath, durationsMs: result.bom.durationsMs, warnings: result.bom.warnings }, null, 2));
    } else {
      const bom = result.bom;
      const added = bom.packages.filter((p) => p.origin !== 'base');
      for (const artifact of result.artifacts) {
        this.log(`image: ${artifact.path}`);
        this.log(`  format ${artifact.format}, sha256 ${artifact.sha256}`);
      }
      this.log(`sums:  ${result.sumsPath}`);
      this.log(`bom:   ${result.bomPath}`);
      for (const path of result.sbomPaths) this.log(`sbom:  ${path}`);
      this.log(`  ${bom.os.prettyName ?? bom.os.id} ${bom.architecture ?? ''}, kernels: ${bom.kernels.map((k) => k.version).join(', ') || 'none'}`);
      this.log(`  ${bom.packages.length} packages; added or changed by the recipe: ${added.length}`);
      for (const p of added) this.log(`    ${p.name} ${p.version} (${p.architecture})${p.baseVersion ? ` was ${p.baseVersion}` : ''}`);
      for (const p of bom.removedPackages) this.log(`    removed ${p.name} ${p.version}`);
      this.log(`  took ${(bom.durationsMs.total / 1000).toFixed(1)}s (steps ${((bom.durationsMs.steps ?? 0) / 1000).toFixed(1)}s)`);
    }
    return result;
  }
}
