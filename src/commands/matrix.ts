import { Args, Flags } from '@oclif/core';
import { imageVerifyFlags } from '../cli/image-flags.js';
import { BaseCommand } from '../cli/base-command.js';
import { allowNetworkFlag, hostBuildFlags, hostPaths, mountBackendOf } from '../cli/host-flags.js';
import { sparsifyFlag } from '../cli/artifact-flags.js';
import type { SparsifyMode } from '../pipeline/output.js';
import { DEFAULT_CONTAINER_IMAGE, emitArgo, emitJobs, manifestsYaml } from '../matrix/emit.js';
import { loadMatrix } from '../matrix/load.js';
import { matrixOutcome, runMatrix, selectBuilds, type MatrixResult } from '../matrix/run.js';
import { formatSummary, formatTable } from '../matrix/summary.js';
import { withInterrupts } from '../util/signals.js';
import { createLogger } from '../util/log.js';
import { parseAllowedNetworks } from '../chroot/sandbox.js';

export default class Matrix extends BaseCommand {
  static override summary = 'Build every combination of a matrix (recipes × base images × variables) here, or emit them for Kubernetes';
  static override description =
    'Expands MATRIX.yaml — recipe(s), base images, variable axes, include/exclude as in GitHub Actions — into builds. ' +
    'By default runs them on this machine, --jobs at a time, each base verified once into the shared cache, each build ' +
    'into <output dir>/<build>/ with its BOM and full log, and prints one summary; a failed build does not stop the others ' +
    '(unless --fail-fast) but makes the exit code non-zero (the first failed build\'s code). --list shows the builds; ' +
    '--emit argo|jobs prints an Argo Workflow or Kubernetes Jobs (with the ConfigMap holding the matrix and recipes) that ' +
    'run the same builds on a cluster. See docs/scale.md.';
  static override examples = [
    '<%= config.bin %> matrix matrix.yaml --jobs 2',
    '<%= config.bin %> matrix matrix.yaml --list',
    '<%= config.bin %> matrix matrix.yaml --emit argo --cache-claim imagebuilder-cache --artifacts-claim images | kubectl create -f -',
  ];

  static override args = { matrix: Args.string({ description: 'matrix YAML file', required: true }) };

  static override flags = {
    jobs: Flags.integer({ char: 'j', description: 'builds at once (each is I/O- and CPU-heavy: more than the cores rarely helps)', default: 2, min: 1, env: 'IMAGEBUILDER_JOBS' }),
    'fail-fast': Flags.boolean({ description: 'stop the other builds at the first failure', default: false }),
    only: Flags.string({ description: 'run only this build (repeatable)', multiple: true, helpValue: 'BUILD' }),
    'output-dir': Flags.string({ description: "instead of the matrix file's output.dir: each build writes DIR/<build>/", helpValue: 'DIR' }),
    list: Flags.boolean({ description: 'print the builds and exit', default: false }),
    json: Flags.boolean({ description: 'print the results (or with --list the builds) as JSON on stdout; logs stay on stderr', default: false }),
    ...hostBuildFlags,
    ...sparsifyFlag,
    'no-cache': Flags.boolean({ description: "run every step, neither reusing nor writing the step cache's layers or the package cache, and hash the base images again (--rehash)", default: false, env: 'IMAGEBUILDER_NO_CACHE' }),
    rehash: imageVerifyFlags.rehash,
    'keep-work-dir': Flags.boolean({ description: 'keep each build\'s work directory for debugging', default: false, env: 'IMAGEBUILDER_KEEP_WORK_DIR' }),
    offline: Flags.boolean({ description: 'use the cache alone: every URL base must have been fetched before', default: false, env: 'IMAGEBUILDER_OFFLINE' }),
    ...allowNetworkFlag,
    verbose: Flags.boolean({ char: 'v', description: 'log every command run', default: false }),
    quiet: Flags.boolean({ char: 'q', description: 'only warnings and errors on the console (each build\'s log file has everything)', default: false }),
    emit: Flags.string({ description: 'print Kubernetes manifests instead of building: an Argo Workflow, or batch/v1 Jobs', options: ['argo', 'jobs'] }),
    image: Flags.string({ description: 'with --emit: the imagebuilder container image', default: DEFAULT_CONTAINER_IMAGE, helpGroup: 'EMIT' }),
    'cache-claim': Flags.string({ description: 'with --emit: the PersistentVolumeClaim (ReadWriteMany) shared as the base-image cache', default: 'imagebuilder-cache', helpGroup: 'EMIT' }),
    'artifacts-claim': Flags.string({ description: 'with --emit: the PersistentVolumeClaim the builds write their outputs to', default: 'imagebuilder-artifacts', helpGroup: 'EMIT' }),
    namespace: Flags.string({ description: 'with --emit: the namespace of every object', helpGroup: 'EMIT' }),
    'service-account': Flags.string({ description: 'with --emit: the pods\' service account', helpGroup: 'EMIT' }),
    cpu: Flags.string({ description: 'with --emit: CPU request of each build pod', default: '2', helpGroup: 'EMIT' }),
    memory: Flags.string({ description: 'with --emit: memory request of each build pod', default: '4Gi', helpGroup: 'EMIT' }),
  };

  async run(): Promise<MatrixResult | undefined> {
    const { args, flags } = await this.parse(Matrix);
    const paths = hostPaths(flags);
    const matrix = loadMatrix(args.matrix);
    const builds = selectBuilds(matrix, flags.only);
    const allowNetworks = parseAllowedNetworks(flags['allow-network']);

    if (flags.emit) {
      const options = {
        image: flags.image,
        cacheClaim: flags['cache-claim'],
        artifactsClaim: flags['artifacts-claim'],
        namespace: flags.namespace,
        serviceAccount: flags['service-account'],
        cpu: flags.cpu,
        memory: flags.memory,
        jobs: flags.jobs,
        failFast: flags['fail-fast'],
        mountBackend: flags['mount-backend'],
        sparsify: flags.sparsify,
        allowNetworks,
      };
      this.log(manifestsYaml(flags.emit === 'argo' ? emitArgo(matrix, builds, options) : emitJobs(matrix, builds, options)).trimEnd());
      return undefined;
    }

    if (flags.list) {
      const listed = builds.map((b) => ({ name: b.name, recipe: b.recipe.name, base: b.base.name, image: b.base.image, variables: b.variables }));
      if (flags.json) this.log(JSON.stringify(listed, null, 2));
      else this.log(formatTable(['BUILD', 'RECIPE', 'BASE', 'VARIABLES'], listed.map((b) => [b.name, b.recipe, b.base, Object.entries(b.variables).map(([k, v]) => `${k}=${v}`).join(' ') || '-'])));
      return undefined;
    }

    const level = flags.verbose ? 'debug' : flags.quiet ? 'warn' : 'info';
    let interrupted: AbortSignal | undefined;
    const result = await withInterrupts(createLogger(), (signal) => {
      interrupted = signal;
      return runMatrix(matrix, builds, {
        jobs: flags.jobs,
        failFast: flags['fail-fast'],
        outputDir: flags['output-dir'],
        host: {
          mountBackend: mountBackendOf(flags),
          sparsify: flags.sparsify as SparsifyMode,
          keepWorkDir: flags['keep-work-dir'],
          cache: !flags['no-cache'],
          allowNetworks,
          workDir: paths.workDir,
          cacheDir: paths.cacheDir,
          runDir: paths.runDir,
          offline: flags.offline,
          rehash: flags.rehash || flags['no-cache'],
        },
        level,
        signal,
      });
    });
    if (flags.json) this.log(JSON.stringify(result, null, 2));
    else this.log(formatSummary(result));
    const outcome = matrixOutcome(result, interrupted);
    if (outcome) throw outcome;
    return result;
  }
}
