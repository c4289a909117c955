import { mkdir, readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { bootAndRun } from '../boot/boot.js';
import type { Accel } from '../boot/firmware.js';
import { FAILED_UNITS_SCRIPT, failedUnits, failedUnitsCheck } from '../checks/kinds.js';
import type { ImageFormat } from '../image/qemu-img.js';
import { writeFileAtomic, writeJsonAtomic } from '../util/fs.js';
import { openChroot, type ChrootSession } from '../chroot/session.js';
import { runChecks, summarize, type CheckResult } from '../checks/run.js';
import { hygieneSuite, nodeSuite, type NodeExpectations, type SuiteName } from '../checks/suites.js';
import type { Check } from '../checks/types.js';
import type { DiskImageOptions } from '../fetch/image-source.js';
import type { MountBackendName } from '../mount/backend.js';
import { loadCheckFile } from '../recipe/checks.js';
import { loadRecipe, type Recipe, type RecipeInputs } from '../recipe/load.js';
import { ImageBuilderError, errorMessage } from '../util/errors.js';
import { ensurePrivateDir, RESULTS_DIR_HINT } from '../util/lock.js';
import { mountContext, startBuild, withResources, type BuildContext, type BuildOptions } from './context.js';
import { openGuest } from './guest.js';
import type { ProveOutput } from './phase2.js';
import { verifyForBuild } from './verify.js';

/** How the booted pass boots: shared by `imagebuilder test` and `apply --test`. */
export interface BootCheckOptions {
  /** Where the booted guest's serial console log is kept (default: gone with the work directory). */
  resultsDir?: string;
  mountBackend?: MountBackendName | 'auto';
  accel?: Accel | 'auto';
  /** Boot the image's kernel and initramfs directly (qemu -kernel), not through its bootloader: a fallback. */
  directKernel?: boolean;
  /** How long a booted guest has to report (bootAndRun's default otherwise). */
  timeoutMs?: number;
  /** The image this one was made from: units that failed there too are not this image's failures. */
  base?: { path: string; sha256: string };
}

export interface TestOptions extends Omit<BuildOptions, 'keepWorkDir' | 'onEvent'>, BootCheckOptions {
  diskImage: string;
  image?: DiskImageOptions;
  /** Check files: ours (`checks:`) or goss's. */
  checkFiles?: string[];
  /** A recipe whose `checks:` are run, and whose modules and kernel parameters the `node` suite expects. */
  recipe?: string;
  recipeInputs?: RecipeInputs;
  suites?: SuiteName[];
  /** Only what can be judged on the image itself, without booting it. */
  offline?: boolean;
  /** The image the tested one was made from (`--base`): a path or URL, verified as the image is. */
  baseImage?: string;
}

/** The boot, when checks needed one: QEMU start to results, how, and the console log. */
export interface BootRecord {
  bootMs: number;
  accel: string;
  firmware: string;
  via: string;
  consoleLog: string;
  /** The base image's own failed units (allowed to fail here too), when a base was given. */
  baseFailures?: string[];
}

export interface TestResult {
  image: { path: string; format: string; sha256: string };
  results: CheckResult[];
  summary: { passed: number; failed: number; skipped: number };
  durationMs: number;
  boot?: BootRecord;
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
export function declaredChecks(recipe: Recipe | undefined, checkFiles: string[] = [], suites: SuiteName[] = []): Declared[] {
  const checks: Declared[] = [...(recipe?.checks ?? []), ...checkFiles.flatMap((file) => loadCheckFile(file))];
  for (const suite of new Set(suites)) checks.push(...(suite === 'hygiene' ? hygieneSuite() : nodeSuite(nodeExpectations(recipe))));
  return checks;
}

async function gatherChecks(options: TestOptions): Promise<Declared[]> {
  const recipe = options.recipe ? await loadRecipe(options.recipe, options.recipeInputs) : undefined;
  const checks = declaredChecks(recipe, options.checkFiles, options.suites);
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
    const result = await session.exec(['/bin/sh', '-c', script], { allowFailure: true, needsNoNetwork: true, readOnlyRoot: true, timeoutMs: (120 + commandSeconds) * 1000, signal, purpose: 'running the checks' });
    return { exitCode: result.exitCode, stdout: result.stdout };
  });
}

const needsBoot = (checks: Declared[]) => checks.some((check) => !check.imageOnly && check.type.probes(check.spec).some((probe) => probe.boot));

/** How both boots (the base's, the image's) are made. */
const bootHow = (options: BootCheckOptions) => ({
  accel: options.accel,
  mountBackend: options.mountBackend,
  timeoutMs: options.timeoutMs,
  ...(options.directKernel ? { firmware: 'direct-kernel' as const } : {}),
});

/**
 * The units that fail when the base image boots, as this host boots it: booted once per base (its sha256) and
 * accelerator, then remembered in the cache dir. They are the base's, not the build's: `failed_units` allows them.
 */
async function baseFailures(context: BuildContext, base: { path: string; sha256: string }, options: BootCheckOptions): Promise<string[]> {
  const file = join(context.cacheDir, 'boot', `base-failures-${base.sha256}-${options.accel ?? 'auto'}${options.directKernel ? '-direct-kernel' : ''}.json`);
  const remembered = await readFile(file, 'utf8').then((text) => JSON.parse(text) as unknown, () => undefined);
  if (Array.isArray(remembered) && remembered.every((unit) => typeof unit === 'string')) return remembered as string[];
  context.log.info(`boot: booting the base image ${base.path} once, to learn which units fail there already`);
  // Its console goes beside the image's (base/console.log), when those are kept.
  const resultsDir = options.resultsDir ? join(options.resultsDir, 'base') : undefined;
  // The results directory first, then base/ in it (bootAndRun): each ours, so nobody else can swap either.
  if (options.resultsDir) await ensurePrivateDir(options.resultsDir, context.log, { purpose: 'write test results in', readable: true, hint: RESULTS_DIR_HINT });
  const result = await bootAndRun(mountContext(context), base.path, { script: FAILED_UNITS_SCRIPT, resultsDir, ...bootHow(options) });
  const failures = failedUnits(result.output);
  await mkdir(dirname(file), { recursive: true, mode: 0o755 });
  await writeFileAtomic(file, `${JSON.stringify(failures)}\n`);
  return failures;
}

/** With the base's own failures allowed in every failed-units check. */
function allowingBase(checks: Declared[], failures: string[]): Declared[] {
  if (!failures.length) return checks;
  return checks.map((check) => {
    if (check.type.key !== 'failed_units') return check;
    const spec = check.spec as { allowed?: string[] };
    return { ...check, spec: { ...spec, allowed: [...new Set([...(spec.allowed ?? []), ...failures])] } };
  });
}

/**
 * Judges `checks` on an image: first mounted read-only through a throw-away overlay (never written), the checks
 * that read files judged there; then, when some need a running system and `boot` is not false, the image booted
 * in QEMU from another throw-away overlay (src/boot/), those judged in one guest script. Each probe is judged once.
 */
export async function judgeImage(context: BuildContext, image: { path: string; format: ImageFormat }, checks: Declared[], options: BootCheckOptions & { boot?: boolean }): Promise<{ results: CheckResult[]; boot?: BootRecord }> {
  const { layout, distro } = await openGuest(mountContext(context), image, { backend: options.mountBackend ?? 'auto', readOnly: true, overlay: join(context.workDir, 'judged.qcow2') });
  const session = await openChroot(layout.root, { run: context.run, log: context.log, signal: context.signal, readOnly: true, sessionFiles: distro.family?.sessionFiles, network: 'none' });
  context.guest.push('chroot session', () => session.close());
  const onImage = await context.clock.time('image-checks', () => checkImage(session, checks, context.signal));
  // The mounted image is released first: the boot makes its own overlay.
  const failures = await context.guest.unwind();
  if (failures.length) throw new ImageBuilderError('COMMAND_FAILED', `releasing the image failed: ${failures.join('; ')}`);
  if (options.boot === false || !needsBoot(checks)) return { results: onImage };

  // The base is booted (once, then remembered) only for what it is needed for: a failed-units check to judge.
  const judgesUnits = checks.some((check) => check.type.key === 'failed_units');
  const allowed = options.base && judgesUnits ? await context.clock.time('boot-base', () => baseFailures(context, options.base!, options)) : undefined;
  let boot: BootRecord | undefined;
  const booted = await context.clock.time('boot', () =>
    runChecks(allowingBase(checks, allowed ?? []), 'booted', async (script) => {
      const result = await bootAndRun(mountContext(context), image.path, { script, resultsDir: options.resultsDir, ...bootHow(options) });
      boot = { bootMs: result.bootMs, accel: result.accel, firmware: result.firmware, via: result.via, consoleLog: result.consoleLog, ...(allowed ? { baseFailures: allowed } : {}) };
      return { exitCode: result.exitCode, stdout: result.output };
    }),
  );
  // Where the image pass skipped a probe (it needs the running system), the boot's answer.
  return { results: onImage.map((result, index) => (result.status === 'skipped' && booted[index].status !== 'skipped' ? booted[index] : result)), boot };
}

/** `imagebuilder test`: the image (and --base) verified, then judgeImage; --offline never boots. */
export async function testImage(options: TestOptions): Promise<TestResult> {
  const start = startBuild(options);
  const checks = await gatherChecks(options);
  const image = await verifyForBuild(start, options.diskImage, options.image);
  // The base is verified by its own sums file: a --checksum given for the image is the image's.
  const base = options.baseImage && !options.offline ? await verifyForBuild(start, options.baseImage, { ...options.image, checksum: undefined }) : undefined;
  return withResources(start, options, async (context) => {
    const { results, boot } = await judgeImage(context, image, checks, { ...options, base, boot: !options.offline });
    return { image: { path: image.path, format: image.format, sha256: image.sha256 }, results, summary: summarize(results), durationMs: context.clock.total(), ...(boot ? { boot } : {}) };
  });
}

/** What `apply --test` asks of the output beyond the recipe's own checks, and how it boots it. */
export interface OutputTest extends Omit<BootCheckOptions, 'base'> {
  checkFiles?: string[];
  suites?: SuiteName[];
}

/**
 * `apply --test`: the output, before it takes its name, judged as `imagebuilder test --base INPUT` would judge
 * it, against the recipe's checks, the check files and the suites; always booted (with nothing that needs a
 * running system declared, "no unit failed beyond the base's" is the proof). The results go to
 * `test.resultsDir` (results.json, console.log) whatever the outcome; a failed check fails the build.
 */
export function proveOutput(recipe: Recipe, base: { path: string; sha256: string }, test: OutputTest & { resultsDir: string }): ProveOutput {
  return async (context, image) => {
    const checks = declaredChecks(recipe, test.checkFiles, test.suites);
    if (!needsBoot(checks)) checks.push({ type: failedUnitsCheck, spec: {}, location: 'apply --test', name: 'no unit failed beyond the base image\'s' });
    await ensurePrivateDir(test.resultsDir, context.log, { purpose: 'write test results in', readable: true, hint: RESULTS_DIR_HINT });
    const resultsFile = join(test.resultsDir, 'results.json');
    let judged: Awaited<ReturnType<typeof judgeImage>>;
    try {
      judged = await judgeImage(context, image, checks, { ...test, base });
    } catch (error) {
      // A boot that never reported leaves its reason where the results would have been, beside the console log.
      const { code, message, detail } = error instanceof ImageBuilderError ? error : { code: 'INTERNAL', message: errorMessage(error), detail: undefined };
      await writeJsonAtomic(resultsFile, { error: { code, message, ...(detail ? { detail } : {}) } }).catch(() => undefined);
      throw error;
    }
    const { results, boot } = judged;
    const record = { results, summary: summarize(results), ...(boot ? { boot } : {}) };
    await writeJsonAtomic(resultsFile, record);
    const failed = checksFailed(results, `on the output (results in ${test.resultsDir})`);
    if (failed) throw failed;
    context.log.info(`apply --test: ${record.summary.passed} check(s) passed${boot ? `, booted in ${(boot.bootMs / 1000).toFixed(1)} s (${boot.accel}, ${boot.firmware})` : ''}`);
    return record;
  };
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
