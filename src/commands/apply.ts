import { Args, Flags } from '@oclif/core';
import { createLogger } from '../util/log.js';
import { withInterrupts } from '../util/signals.js';
import { allowNetworkFlag, hostPaths, hostPortFlag, mountBackendFlag, mountBackendOf, workDirFlag } from '../cli/host-flags.js';
import { BaseCommand } from '../cli/base-command.js';
import { accelFlag, bootFlagOptions } from '../cli/boot-flags.js';
import { SUITES, type SuiteName } from '../checks/suites.js';
import { apply, prepareWorkImage, SBOM_FORMATS, type ApplyOptions, type ApplyResult, type SbomFormat, type WorkImageResult } from '../pipeline/apply.js';
import type { BuildEvent } from '../pipeline/events.js';
import { verifyImage, type VerifiedImage } from '../pipeline/verify.js';
import { execRunner } from '../util/exec.js';
import { printResult } from '../cli/print-result.js';
import { terminalProgress } from '../cli/progress.js';
import { ImageBuilderError } from '../util/errors.js';
import { parseAllowedNetworks, parseHostPorts, parseMemorySize } from '../chroot/sandbox.js';
import { applyRepeatably } from '../pipeline/repeatable.js';
import { IMAGE_FORMATS, type ImageFormat } from '../image/qemu-img.js';
import { recipeInputs, recipeVariableFlags } from '../cli/recipe-flags.js';
import { diskImageFlags, diskImageOptions } from '../cli/image-flags.js';
import { artifactFlags, artifactOptions } from '../cli/artifact-flags.js';

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
    'disk-image': Flags.string({ ...diskImageFlags['disk-image'], required: false, exactlyOne: ['disk-image', 'bundle'] }),
    bundle: Flags.string({
      description: 'build offline from an air-gapped bundle (a directory or .tar from `imagebuilder bundle`): its bundle.json is verified first (exit 3 on any missing or altered file); the base image, downloads and packages come from it alone; guest commands have no network',
      helpValue: 'DIR|FILE.tar',
    }),
    ...recipeVariableFlags,
    output: Flags.string({ char: 'o', description: "output image path [default: <image>-<recipe>.<ext> here]" }),
    ...mountBackendFlag,
    ...workDirFlag,
    ...artifactFlags,
    'verify-repeatable': Flags.boolean({ description: 'build a second time and fail if packages, units or written files differ', default: false }),
    phases: Flags.string({
      description: 'phases to run: 0 (verify and cache the image), 0,1 (stop with a work image at --output for `imagebuilder export`), or 0,1,2',
      options: ['0', '0,1', '0,1,2'],
      default: '0,1,2',
    }),
    'no-cache': Flags.boolean({ description: "run every step, neither reusing nor writing the step cache's layers or the package cache, and hash the base image again (--rehash)", default: false, env: 'IMAGEBUILDER_NO_CACHE' }),
    refresh: Flags.string({ description: 'run this step (its number from 1, or its name) and all after it again instead of taking them from the cache', multiple: true, helpValue: 'STEP' }),
    'shell-on-failure': Flags.boolean({ description: 'when a step fails, open a shell inside the guest at that point (everything still mounted); exiting it cleans up', default: false }),
    'memory-limit': Flags.string({ description: "memory (and swap) the build's guest commands may use together, e.g. 4G [default: the recipe's limits.memory, else 4G]", env: 'IMAGEBUILDER_MEMORY_LIMIT', helpValue: 'SIZE' }),
    'pids-limit': Flags.integer({ description: "processes and threads the build's guest commands may have at once [default: the recipe's limits.pids, else 4096]", env: 'IMAGEBUILDER_PIDS_LIMIT', min: 16, helpValue: 'N' }),
    ...hostPortFlag,
    ...allowNetworkFlag,
    'keep-work-dir': Flags.boolean({ description: 'keep the work directory, and the layers of the steps that succeeded, for --resume', default: false, env: 'IMAGEBUILDER_KEEP_WORK_DIR' }),
    resume: Flags.string({ description: 'resume a failed build from the work directory it kept (--keep-work-dir): its good steps are reused (whatever --no-cache says)', helpValue: 'WORK-DIR' }),
    grow: Flags.string({ description: "grow the virtual disk to SIZE (8G), or by it (+2G), before the steps run: the root partition, when it is the last, and its filesystem (ext4, xfs, btrfs) grow into it [default: the recipe's disk.size]", helpValue: 'SIZE' }),
    test: Flags.boolean({ description: "boot the output in QEMU and judge the recipe's checks (and --test-checks, --test-suite) before it takes its name; a failed check is exit 7 and no output. Results and the console log go to <output>.test/, and into the BOM", default: false }),
    'test-checks': Flags.string({ description: 'with --test: also this check file (ours or goss); repeatable', multiple: true, helpValue: 'FILE' }),
    'test-suite': Flags.string({ description: 'with --test: also a built-in suite (hygiene, node); repeatable', options: [...SUITES], multiple: true }),
    ...accelFlag,
    json: Flags.boolean({ description: 'print progress events and the result as JSON lines on stdout (logs stay on stderr)', default: false }),
    verbose: Flags.boolean({ char: 'v', description: 'log every command run', default: false }),
    quiet: Flags.boolean({ char: 'q', description: 'do not echo command output (it is still in errors)', default: false }),
  };

  async run(): Promise<ApplyResult | WorkImageResult | VerifiedImage> {
    const { args, flags } = await this.parse(Apply);
    const paths = hostPaths(flags);
    // On a terminal, a live line under the log shows the running step; --json pipelines get events instead.
    const progress = terminalProgress();
    const log = createLogger({ level: flags.verbose ? 'debug' : 'info', showOutput: !flags.quiet, write: progress.write });
    const onEvent = flags.json ? (event: BuildEvent) => this.log(JSON.stringify(event)) : progress.onEvent;
    // --no-cache trusts no cache: the base image is hashed again too.
    const imageOptions = { ...diskImageOptions(flags), rehash: flags.rehash || flags['no-cache'] };
    // oclif's dependsOn takes --test's default (false) for given: these would be ignored without it.
    const testOnly = (['test-checks', 'test-suite', 'direct-kernel', 'boot-timeout'] as const).filter((name) => flags[name] !== undefined && flags[name] !== false);
    if (testOnly.length && !flags.test) {
      throw new ImageBuilderError('BAD_INPUT', `${testOnly.map((name) => `--${name}`).join(', ')} only ${testOnly.length > 1 ? 'mean' : 'means'} something with --test`, { hint: 'add --test (boot the output and judge its checks before it is written), or drop them' });
    }
    if (flags.test && flags.phases !== '0,1,2') {
      throw new ImageBuilderError('BAD_INPUT', `--test boots the output, which --phases ${flags.phases} does not write`, { hint: 'drop --test, or test the finished image later: imagebuilder test IMAGE --recipe RECIPE' });
    }
    if (flags.bundle && flags.phases !== '0,1,2') {
      throw new ImageBuilderError('BAD_INPUT', `--bundle builds the whole image; --phases ${flags.phases} is not offered with it`, { hint: 'drop --phases' });
    }
    if (flags.phases === '0') {
      const image = await withInterrupts(log, (signal) => verifyImage(execRunner, flags['disk-image']!, log, signal, imageOptions));
      if (flags.json) this.log(JSON.stringify({ event: 'result', image }));
      else this.log(`verified ${image.path} (sha256 ${image.sha256}); phases 1 and 2 not run`);
      return image;
    }
    const options: ApplyOptions = {
      recipe: args.recipe,
      recipeInputs: recipeInputs(flags),
      diskImage: flags['disk-image'] ?? '',
      ...(flags.bundle ? { bundle: flags.bundle } : {}),
      image: imageOptions,
      output: flags.output,
      mountBackend: mountBackendOf(flags),
      cache: !flags['no-cache'],
      refresh: flags.refresh,
      resume: flags.resume,
      shellOnFailure: flags['shell-on-failure'],
      limits: {
        ...(flags['memory-limit'] !== undefined ? { memoryBytes: parseMemorySize(flags['memory-limit']) } : {}),
        ...(flags['pids-limit'] !== undefined ? { pids: flags['pids-limit'] } : {}),
      },
      hostPorts: parseHostPorts(flags['host-port']),
      allowNetworks: parseAllowedNetworks(flags['allow-network']),
      keepWorkDir: flags['keep-work-dir'],
      ...(flags.grow !== undefined ? { grow: flags.grow } : {}),
      ...(flags.test ? { test: { checkFiles: flags['test-checks'], suites: flags['test-suite'] as SuiteName[] | undefined, ...bootFlagOptions(flags), mountBackend: mountBackendOf(flags) } } : {}),
      workDir: paths.workDir,
      cacheDir: paths.cacheDir,
      runDir: paths.runDir,
      log,
      onEvent,
    };
    if (flags.phases === '0,1') {
      const work = await withInterrupts(log, (signal) => prepareWorkImage({ ...options, signal }));
      if (flags.json) this.log(JSON.stringify({ event: 'result', workImage: work.workImage, steps: work.bom.steps }));
      else this.log(`work image: ${work.workImage}\n  finish it with: imagebuilder export ${work.workImage}`);
      return work;
    }
    const build = flags['verify-repeatable'] ? applyRepeatably : apply;
    const result = await withInterrupts(log, (signal) =>
      build({
        ...options,
        ...artifactOptions(flags),
        signal,
      }),
    );
    printResult(this, result, flags.json);
    return result;
  }
}
