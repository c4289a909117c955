import { bootAndRun } from '../boot/boot.js';
import { openChroot, type ChrootSession } from '../chroot/session.js';
import { runChecks, summarize, type CheckResult } from '../checks/run.js';
import { hygieneSuite, nodeSuite, type NodeExpectations, type SuiteName } from '../checks/suites.js';
import type { Check } from '../checks/types.js';
import type { DiskImageOptions } from '../fetch/image-source.js';
import type { MountBackendName } from '../mount/backend.js';
import { loadCheckFile } from '../recipe/checks.js';
import { loadRecipe, type Recipe, type RecipeInputs } from '../recipe/load.js';
import { ImageBuilderError } from '../util/errors.js';
import { mountContext, startBuild, withResources, type BuildOptions } from './context.js';
import { openGuest } from './guest.js';
import { verifyForBuild } from './verify.js';

export interface TestOptions extends Omit<BuildOptions, 'keepWorkDir' | 'onEvent'> {
  diskImage: string;
  image?: DiskImageOptions;
  mountBackend?: MountBackendName | 'auto';
  /** Check files: ours (`checks:`) or goss's. */
  checkFiles?: string[];
  /** A recipe whose `checks:` are run, and whose modules and kernel parameters the `node` suite expects. */
  recipe?: string;
  recipeInputs?: RecipeInputs;
  suites?: SuiteName[];
  /** Only what can be judged on the image itself, without booting it. */
  offline?: boolean;
  /** Where the booted guest's serial console log is kept (default: gone with the work directory). */
  resultsDir?: string;
}

export interface TestResult {
  image: { path: string; format: string; sha256: string };
  results: CheckResult[];
  summary: { passed: number; failed: number; skipped: number };
  durationMs: number;
  /** The boot, when checks needed one: QEMU start to results, how, and the console log. */
  boot?: { bootMs: number; accel: string; firmware: string; via: string; consoleLog: string };
}

type Declared = Check & { name?: string; imageOnly?: boolean };

/** What the recipe set up that a booted node shows: the modules its kernel-modules steps load, its sysctl settings. */
export function nodeExpectations(recipe?: Recipe): NodeExpectations {
  const steps = recipe?.steps ?? [];
  return {
    modules: steps.filter((step) => step.type.key === 'kernel-modules').flatMap((step) => (step.spec as { load?: string[] }).load ?? []),
    sysctls: Object.assign({}, ...steps.filter((step) => step.type.key === 'sysctl').map((step) => (step.spec as { settings: Record<string, string | number> }).settings)),
  };
}

/** Every check asked for: the recipe's, the files', the suites'. */
async function gatherChecks(options: TestOptions): Promise<Declared[]> {
  const recipe = options.recipe ? await loadRecipe(options.recipe, options.recipeInputs) : undefined;
  const checks: Declared[] = [...(recipe?.checks ?? []), ...(options.checkFiles ?? []).flatMap((file) => loadCheckFile(file))];
  for (const suite of new Set(options.suites ?? [])) checks.push(...(suite === 'hygiene' ? hygieneSuite() : nodeSuite(nodeExpectations(recipe))));
  if (!checks.length) {
    throw new ImageBuilderError('BAD_INPUT', 'no checks to run', { hint: 'give --checks FILE (ours or a goss file), --suite hygiene|node, or --recipe RECIPE with `checks:`' });
  }
  return checks;
}

/**
 * Runs the probes of `checks` that read only files in the guest behind `session`: one guest command, with no
 * network and the guest's root read-only (a check never changes the image), within the sum of the commands'
 * own timeouts and two minutes.
 */
export function checkImage(session: ChrootSession, checks: Declared[], signal?: AbortSignal): Promise<CheckResult[]> {
  const commandSeconds = checks.filter((check) => check.type.key === 'command').reduce((sum, check) => sum + ((check.spec as { timeout?: number }).timeout ?? 60), 0);
  return runChecks(checks, 'image', async (script) => {
    const result = await session.exec(['/bin/sh', '-c', script], { allowFailure: true, network: 'none', readOnlyRoot: true, timeoutMs: (120 + commandSeconds) * 1000, signal, purpose: 'running the checks' });
    return { exitCode: result.exitCode, stdout: result.stdout };
  });
}

/**
 * `imagebuilder test`: first the image mounted read-only through a throw-away overlay (never written), the
 * checks that read files judged on it; then, unless --offline, the image booted in QEMU from another throw-away
 * overlay (src/boot/) and the checks that need a running system judged there, all in one guest script.
 */
export async function testImage(options: TestOptions): Promise<TestResult> {
  const start = startBuild(options);
  const checks = await gatherChecks(options);
  const needsBoot = !options.offline && checks.some((check) => !check.imageOnly && check.type.probes(check.spec).some((probe) => probe.boot));
  const image = await verifyForBuild(start, options.diskImage, options.image);
  return withResources(start, options, async (context) => {
    const { layout, distro } = await openGuest(mountContext(context), image, { backend: options.mountBackend ?? 'auto', readOnly: true });
    const session = await openChroot(layout.root, { run: context.run, log: context.log, signal: context.signal, readOnly: true, sessionFiles: distro.family?.sessionFiles, network: 'none' });
    context.guest.push('chroot session', () => session.close());
    const onImage = await context.clock.time('checks', () => checkImage(session, checks, context.signal));
    let results = onImage;
    let boot: TestResult['boot'];
    if (needsBoot) {
      // The mounted image is released first: the boot makes its own overlay.
      const failures = await context.guest.unwind();
      if (failures.length) throw new ImageBuilderError('COMMAND_FAILED', `releasing the image failed: ${failures.join('; ')}`);
      const booted = await context.clock.time('boot', () =>
        runChecks(checks, 'booted', async (script) => {
          const result = await bootAndRun(mountContext(context), image.path, { script, resultsDir: options.resultsDir, mountBackend: options.mountBackend });
          boot = { bootMs: result.bootMs, accel: result.accel, firmware: result.firmware, via: result.via, consoleLog: result.consoleLog };
          return { exitCode: result.exitCode, stdout: result.output };
        }),
      );
      // Each probe once: where the image pass skipped it (it needs the running system), the boot's answer.
      results = onImage.map((result, index) => (result.status === 'skipped' && booted[index].status !== 'skipped' ? booted[index] : result));
    }
    return { image: { path: image.path, format: image.format, sha256: image.sha256 }, results, summary: summarize(results), durationMs: context.clock.total(), ...(boot ? { boot } : {}) };
  });
}

/** The error for failed checks: exit code 7, each failure with where the check was declared. */
export function checksFailed(results: CheckResult[], what: string): ImageBuilderError | undefined {
  const failed = results.filter((result) => result.status === 'failed');
  if (!failed.length) return undefined;
  return new ImageBuilderError('CHECK_FAILED', `${failed.length} of ${results.length} check(s) failed ${what}`, {
    detail: failed.map((r) => `${r.location}: ${r.check}: ${r.attribute}: found ${r.observed}, expected ${r.expected}`).join('\n'),
    hint: 'fix what the recipe does (or the check, if it asks for the wrong thing)',
  });
}
