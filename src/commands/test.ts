import { Args, Flags } from '@oclif/core';
import { BaseCommand } from '../cli/base-command.js';
import { accelFlag, bootFlagOptions } from '../cli/boot-flags.js';
import { hostPaths, mountBackendFlag, mountBackendOf, workDirFlag } from '../cli/host-flags.js';
import { diskImageOptions, imageVerifyFlags } from '../cli/image-flags.js';
import { recipeInputs, recipeVariableFlags } from '../cli/recipe-flags.js';
import { junitXml, resultTable } from '../checks/report.js';
import { SUITES, type SuiteName } from '../checks/suites.js';
import { checksFailed, testImage, type TestResult } from '../pipeline/test.js';
import { createLogger } from '../util/log.js';
import { writeFileAtomic } from '../util/fs.js';
import { withInterrupts } from '../util/signals.js';

// --offline here means "without booting"; the image flags' --offline (the cache alone for a URL) is left out.
const { offline: _cacheOnly, ...verifyFlags } = imageVerifyFlags;

export default class Test extends BaseCommand {
  static override summary = 'Check an image: the checks of a recipe, check files (ours or goss) and built-in suites';
  static override description =
    'The image is mounted read-only through a throw-away overlay (never written) and each check is judged inside it, with no network. ' +
    'Then, unless --offline, the image is booted in QEMU from another throw-away overlay and the checks that need the running system (services active, kernel parameters live, ports, mounts, failed units) are judged there. ' +
    'Exit code 7 when a check fails.';
  static override examples = [
    '<%= config.bin %> test node.qcow2 --recipe recipes/kubernetes-node.yaml --offline',
    '<%= config.bin %> test node.qcow2 --checks goss.yaml --suite hygiene --offline --junit checks.xml',
  ];
  static override args = { image: Args.string({ description: 'disk image: a local path or an http(s):// URL', required: true }) };
  static override flags = {
    checks: Flags.string({ description: 'a check file: `checks:` as in a recipe, or a goss file as `goss render` writes it (repeatable)', multiple: true, helpValue: 'FILE' }),
    recipe: Flags.string({ description: "run this recipe's `checks:` (and tell the node suite which modules and kernel parameters to expect)", helpValue: 'RECIPE' }),
    ...recipeVariableFlags,
    suite: Flags.string({ description: 'a built-in suite (repeatable): hygiene (nothing of one machine left in the image), node (what a Kubernetes node needs at boot)', options: [...SUITES], multiple: true }),
    offline: Flags.boolean({ description: 'judge only what the image itself shows, without booting it; the rest is reported as skipped', default: false }),
    results: Flags.string({ description: "keep the booted guest's serial console log in this directory", helpValue: 'DIR' }),
    base: Flags.string({ description: 'the image this one was made from: units that fail when it boots are not counted as failures (it is booted once, and remembered by its sha256)', helpValue: 'IMAGE' }),
    ...accelFlag,
    json: Flags.boolean({ description: 'print the results as JSON', default: false }),
    junit: Flags.string({ description: 'also write the results as JUnit XML here (for CI test reports)', helpValue: 'FILE' }),
    ...verifyFlags,
    ...mountBackendFlag,
    ...workDirFlag,
  };

  async run(): Promise<TestResult> {
    const { args, flags } = await this.parse(Test);
    const paths = hostPaths(flags);
    const log = createLogger({ level: 'warn' });
    const result = await withInterrupts(log, (signal) =>
      testImage({
        diskImage: args.image,
        image: diskImageOptions({ ...flags, offline: false }),
        mountBackend: mountBackendOf(flags),
        checkFiles: flags.checks,
        recipe: flags.recipe,
        recipeInputs: recipeInputs(flags),
        suites: flags.suite as SuiteName[] | undefined,
        offline: flags.offline,
        resultsDir: flags.results,
        baseImage: flags.base,
        ...bootFlagOptions(flags),
        ...paths,
        log,
        signal,
      }),
    );
    // Created exclusively under a random name, then renamed: never written through a link at that name.
    if (flags.junit) await writeFileAtomic(flags.junit, junitXml(result.results, `imagebuilder test ${args.image}`, result.durationMs));
    if (flags.json) this.log(JSON.stringify(result, null, 2));
    else {
      this.log(resultTable(result.results));
      if (result.boot) {
        const base = result.boot.baseFailures?.length ? `; failed in the base too, so allowed: ${result.boot.baseFailures.join(' ')}` : '';
        this.log(`booted in ${(result.boot.bootMs / 1000).toFixed(1)} s (${result.boot.accel}, ${result.boot.firmware}, checks through ${result.boot.via})${flags.results ? `; console log ${result.boot.consoleLog}` : ''}${base}`);
      }
    }
    const failed = checksFailed(result.results, `on ${args.image}`);
    if (failed) throw failed;
    return result;
  }
}
