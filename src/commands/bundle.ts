import { Args, Flags } from '@oclif/core';
import { BaseCommand } from '../cli/base-command.js';
import { allowNetworkFlag, hostPaths, hostPortFlag, mountBackendFlag, mountBackendOf, workDirFlag } from '../cli/host-flags.js';
import { diskImageFlags, diskImageOptions } from '../cli/image-flags.js';
import { recipeInputs, recipeVariableFlags } from '../cli/recipe-flags.js';
import { parseAllowedNetworks, parseHostPorts } from '../chroot/sandbox.js';
import { BUNDLE_FORMATS, makeBundle, type BundleFormat, type BundleResult } from '../pipeline/bundle.js';
import { execRunner } from '../util/exec.js';
import { createLogger } from '../util/log.js';
import { withInterrupts } from '../util/signals.js';

export default class Bundle extends BaseCommand {
  static override summary = 'Gather everything a build of a recipe needs, for `apply --bundle` on a host without network';
  static override description =
    'On a connected host: verifies the base image, then runs the recipe for real on a throw-away copy of it (no step or ' +
    "package cache) and keeps everything the build fetched: the base image with a SHA256SUMS naming it, every download " +
    "step's file and checksum file and every repository step's key (by URL), every container archive beside the recipe " +
    "(by its name in the recipe), and every package the guest's own manager " +
    '(apt, dnf, zypper) fetched, as it resolved them step after step: .deb files as a flat apt repository whose index is the ' +
    "stanzas of the guest's signed package lists, .rpm files as one rpm-md repository per repository of the guest they came " +
    "from, whose metadata is that repository's own entries. bundle.json lists every file with its sha256, its origin and the " +
    'recipe variables it was made for. `--format tar` writes one archive with its sha256 beside it. yum and tdnf guests: not yet.';
  static override examples = [
    '<%= config.bin %> bundle recipes/kubernetes-node.yaml --disk-image debian-12.qcow2 --output node-bundle',
    '<%= config.bin %> bundle recipes/kubernetes-node.yaml --disk-image debian-12.qcow2 --output node-bundle.tar --format tar',
  ];

  static override args = { recipe: Args.string({ description: 'recipe YAML file', required: true }) };
  static override flags = {
    ...diskImageFlags,
    ...recipeVariableFlags,
    output: Flags.string({ char: 'o', description: 'the bundle directory to write (with --format tar, the archive); must not exist', required: true }),
    format: Flags.string({ description: 'dir: a directory; tar: one archive, its sha256 in <output>.sha256', options: [...BUNDLE_FORMATS], default: 'dir' }),
    ...mountBackendFlag,
    ...workDirFlag,
    ...hostPortFlag,
    ...allowNetworkFlag,
    json: Flags.boolean({ description: 'print the result as JSON on stdout', default: false }),
    verbose: Flags.boolean({ char: 'v', description: 'log every command run', default: false }),
  };

  async run(): Promise<BundleResult> {
    const { args, flags } = await this.parse(Bundle);
    const paths = hostPaths(flags);
    const log = createLogger({ level: flags.verbose ? 'debug' : 'info' });
    const result = await withInterrupts(log, (signal) =>
      makeBundle({
        recipe: args.recipe,
        recipeInputs: recipeInputs(flags),
        diskImage: flags['disk-image'],
        image: diskImageOptions(flags),
        output: flags.output,
        format: flags.format as BundleFormat,
        mountBackend: mountBackendOf(flags),
        hostPorts: parseHostPorts(flags['host-port']),
        allowNetworks: parseAllowedNetworks(flags['allow-network']),
        workDir: paths.workDir,
        cacheDir: paths.cacheDir,
        runDir: paths.runDir,
        run: execRunner,
        log,
        signal,
      }),
    );
    if (flags.json) this.log(JSON.stringify({ path: result.path, format: result.format, manifestSha256: result.manifestSha256, archiveSha256: result.archiveSha256, files: result.manifest.files.length }));
    else this.log(`${result.path}\nbundle.json sha256 ${result.manifestSha256}${result.archiveSha256 ? `\narchive sha256 ${result.archiveSha256}` : ''}`);
    return result;
  }
}
