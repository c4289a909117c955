import { comparePackages, type Bom } from '../bom/collect.js';
import type { Logger } from '../util/log.js';
import { listKernels, listUnitStates } from '../bom/inventory.js';
import { readComponents, warmNodeComponents } from '../bom/components.js';
import type { BomStep } from '../util/step-record.js';
import { openChroot, type ChrootOptions, type ChrootSession } from '../chroot/session.js';
import type { StepDownloads } from '../fetch/downloads.js';
import type { PackageBundleUse } from '../pkg/types.js';
import { DEFAULT_LIMITS, openBuildSandbox, parseMemorySize, type BuildSandbox, type GuestNetwork, type GuestTimeout, type SandboxLimits } from '../chroot/sandbox.js';
import { detectDistro, type Distro } from '../distro/families.js';
import { initramfsMayRead, watchInitramfs, type InitramfsTrees } from '../distro/initramfs.js';
import type { HttpTimeouts } from '../fetch/http.js';
import type { MountBackendName } from '../mount/backend.js';
import type { Recipe, RecipeStep } from '../recipe/load.js';
import { whenMismatch } from '../steps/when.js';
import { createRecorder, type StepHostFiles } from '../steps/types.js';
import type { Held } from '../util/cleanup.js';
import { errorMessage, ImageBuilderError } from '../util/errors.js';
import { throwIfAborted } from '../util/signals.js';
import { TOOL_VERSION } from '../version.js';
import { mountContext, type BuildContext } from './context.js';
import { openGuest, type OpenedGuest } from './guest.js';
import { LayerChain } from './layer-chain.js';
import { explainFullDisk } from '../mount/grow.js';
import type { BaseState, LayerRecord, LayerStore } from './layers.js';
import { requireFamilyForSteps } from './preflight.js';
import { checkImage, checksFailed } from './test.js';
import type { VerifiedImage } from './verify.js';

/** Everything of the BOM that phase 1 knows: phase 2 adds the artifacts. */
export type Phase1Bom = Omit<Bom, 'output' | 'artifacts'>;

/** The package managers whose packages a bundle carries (src/pkg/apt-bundle.ts, src/pkg/rpm-bundle.ts). */
const BUNDLE_MANAGERS = ['apt', 'dnf', 'zypper'];

export interface Phase1Options {
  mountBackend: MountBackendName | 'auto';
  /** Where layers are reused from and written to; without one every step writes to one overlay. */
  store?: LayerStore;
  /** Steps (numbers from 1, or names) not to take from the cache: they and every step after run again. */
  refresh?: string[];
  shellOnFailure?: boolean;
  /** The limits of the steps' downloads (--fetch-deadline, --fetch-min-rate). */
  fetchTimeouts?: HttpTimeouts;
  /** --memory-limit and --pids-limit: over the recipe's `limits`. */
  limits?: Partial<SandboxLimits>;
  /** --host-port: the host loopback ports guest commands may reach. */
  hostPorts?: number[];
  /** --allow-network: the private networks guest commands may reach. */
  allowNetworks?: string[];
  /** --grow (or the recipe's disk.size), resolved: the virtual disk's new size in bytes, bigger than the input's. */
  growTo?: number;
  /** The package cache shared by builds (src/pkg/package-cache.ts); none with --no-cache. */
  packageCacheDir?: string;
  /** Where the steps' downloads come from (default: the network). */
  downloads?: StepDownloads;
  /** An air-gapped bundle being made (its collector) or built from (its repository). */
  packageBundle?: PackageBundleUse;
  /** Host files a bundle carries (container archives): kept while one is made, served from it offline. */
  hostFiles?: StepHostFiles;
  /** apply --bundle: no network at all, and the bundle's repository bound read-only into each session. */
  offline?: { readOnlyBinds: NonNullable<ChrootOptions['readOnlyBinds']> };
}

export interface Phase1Result {
  bom: Phase1Bom;
  /** The guest, still mounted: the caller writes the BOM into it, trims it and releases it. */
  opened: OpenedGuest;
  /** The top of the work image's chain (the overlay the guest writes to now). */
  workImage: string;
}

/** A guest command's time (a run step's, when it sets none) when the recipe's limits.timeout sets none: 30 minutes. */
export const DEFAULT_RUN_TIMEOUT_SECONDS = 1800;

/** Seconds a guest command may take (a run step's default too), and what set them, as a timeout's message says it. */
const guestTimeout = (recipe: Pick<Recipe, 'limits'>): GuestTimeout =>
  recipe.limits?.timeout !== undefined
    ? { seconds: recipe.limits.timeout, source: "the recipe's limits.timeout" }
    : { seconds: DEFAULT_RUN_TIMEOUT_SECONDS, source: "the default, which the recipe's limits.timeout changes" };

/** The build's limits: flags over the recipe's `limits` over the defaults. */
export function buildLimits(recipe: Pick<Recipe, 'limits'>, flags: Partial<SandboxLimits> = {}): SandboxLimits {
  return {
    memoryBytes: flags.memoryBytes ?? (recipe.limits?.memory !== undefined ? parseMemorySize(recipe.limits.memory) : DEFAULT_LIMITS.memoryBytes),
    pids: flags.pids ?? recipe.limits?.pids ?? DEFAULT_LIMITS.pids,
  };
}

/** The session as one step sees it: its guest commands get the step's own network. */
function withNetwork(session: ChrootSession, network: GuestNetwork): ChrootSession {
  return { ...session, exec: (argv, options = {}) => session.exec(argv, { network, ...options }) };
}

/** Which steps --refresh names: step numbers from 1, or step names. */
function refreshMatcher(recipe: Recipe, refresh: string[] = []): (index: number) => boolean {
  const unknown = refresh.filter((r) => !(/^\d+$/.test(r) && Number(r) >= 1 && Number(r) <= recipe.steps.length) && !recipe.steps.some((s) => s.name === r));
  if (unknown.length) {
    throw new ImageBuilderError('BAD_INPUT', `--refresh ${unknown.join(', ')}: no such step`, {
      hint: `name a step by its number (1-${recipe.steps.length}) or its name: ${recipe.steps.map((s) => s.name).filter(Boolean).join(', ') || '(no step has a name)'}`,
    });
  }
  const first = Math.min(...recipe.steps.filter((s) => refresh.includes(String(s.index + 1)) || (s.name !== undefined && refresh.includes(s.name))).map((s) => s.index));
  return (index) => index >= first;
}

/** Turns the records of the cached steps back into what the BOM says of them. */
function replayCached(recipe: Recipe, reused: LayerRecord[], context: BuildContext, into: { steps: BomStep[]; records: ReturnType<typeof createRecorder> }): void {
  for (const [index, record] of reused.entries()) {
    const step = recipe.steps[index];
    const label = `step ${index + 1}/${recipe.steps.length} (${step.name ?? record.step.description})`;
    const unpinned = record.unpinned ? `; depends on the network (${record.unpinned}): --refresh ${index + 1} runs it again` : '';
    context.log.info(`${label}: ${record.step.skipped ? `skipped (${record.step.skipped})` : 'cached'} (layer ${record.key.slice(0, 12)}${unpinned})`);
    context.events({ event: 'step-cached', step: index + 1, layer: record.key, ...(record.unpinned ? { unpinned: record.unpinned } : {}) });
    into.steps.push({ ...record.step, name: step.name, cached: true }, ...(record.after ?? []).map((entry) => ({ ...entry, cached: true })));
    record.records.files.forEach(into.records.recorder.file);
    record.records.units.forEach(into.records.recorder.unit);
    record.records.images.forEach(into.records.recorder.image);
  }
}

/**
 * The chroot session steps run in, opened on first use: one for all steps, or one per step when each step's
 * result becomes a layer (a layer must not hold the session's temporary files: resolv.conf, policy-rc.d). One
 * sandbox (network namespace, cgroups with the build's limits, seccomp program) serves the whole build.
 */
function lazySession(context: BuildContext, opened: OpenedGuest, distro: Distro, recipe: Recipe, options: Phase1Options) {
  const { run, log, signal, guest } = context;
  let session: ChrootSession | undefined;
  let held: Held | undefined;
  let sandbox: BuildSandbox | undefined;
  return {
    async open(): Promise<ChrootSession> {
      if (session) return session;
      sandbox ??= await openBuildSandbox({ run, log, cleanup: guest, limits: buildLimits(recipe, options.limits), hostPorts: options.hostPorts, allowNetworks: options.allowNetworks, offline: Boolean(options.offline) });
      const opening = await openChroot(opened.layout.root, {
        run, log, signal, sessionFiles: distro.family?.sessionFiles, sandbox, network: recipe.network, readOnlyBinds: options.offline?.readOnlyBinds,
        commandTimeout: guestTimeout(recipe),
      });
      session = opening;
      held = guest.push('chroot session', () => opening.close());
      return opening;
    },
    async close(): Promise<void> {
      const closing = held;
      session = undefined;
      held = undefined;
      await closing?.release();
    },
  };
}

/**
 * One step run in the guest: its records, and what the build did right after it within its layer (initramfs).
 * `trees`: the initramfs inputs as the step before left them, if known; the step returns them as it leaves them.
 */
async function runStep(context: BuildContext, step: RecipeStep, recipe: Recipe, guestRoot: string, openSession: () => Promise<ChrootSession>, distro: Distro, architecture: string | undefined, options: Phase1Options, trees: InitramfsTrees | undefined, packageCacheScope: string | undefined): Promise<{ records: ReturnType<typeof createRecorder>; after: BomStep[]; durationMs: number; trees: InitramfsTrees | undefined }> {
  const { log, signal, events } = context;
  const number = step.index + 1;
  const description = step.type.describe(step.spec);
  const label = `step ${number}/${recipe.steps.length} (${step.name ?? description})`;
  const records = createRecorder();
  log.info(`${label}: ${step.type.key} at ${step.location}`);
  events({ event: 'step-started', step: number, of: recipe.steps.length, type: step.type.key, ...(step.name ? { name: step.name } : {}), description });
  const t0 = Date.now();
  let session: ChrootSession | undefined;
  let watching: ReturnType<typeof watchInitramfs> | undefined;
  try {
    // Resolved before the step writes anything: the paths it names, as the guest's links stand now.
    const writes = step.type.writesOnly?.(step.spec);
    const watched = !writes || (await initramfsMayRead(guestRoot, writes));
    // The initramfs watch's first walk (the guest's module trees, ~0.1 s cold) reads while the session's mounts
    // are made (/sys, /dev, /run): a guest whose trees lead there only gets its own initramfs rebuilt needlessly.
    watching = watched ? watchInitramfs(guestRoot, trees) : undefined;
    watching?.catch(() => undefined);
    // Opened within the step (its time, its failure): the session of the step before may have been closed for its layer.
    session = await openSession();
    const initramfs = await watching;
    const stepSession = step.network ? withNetwork(session, step.network) : session;
    const runTimeout = guestTimeout(recipe);
    await step.type.run({ session: stepSession, distro, log, signal, recipeDir: step.dir, hostRoots: step.hostRoots, variables: recipe.variables, label, record: records.recorder, architecture, fetchTimeouts: options.fetchTimeouts, runTimeout, workDir: context.workDir, packageCacheDir: options.packageCacheDir, ...(packageCacheScope ? { packageCacheScope } : {}), downloads: options.downloads, packageBundle: options.packageBundle, hostFiles: options.hostFiles }, step.spec);
    await session.sweep();
    // A step that changed a kernel or the initramfs configuration gets the guest kernel's initramfs rebuilt
    // within it, so its layer holds the result.
    const after = initramfs ? await initramfs.regenerate(session, { log, signal, index: step.index }) : [];
    const durationMs = Date.now() - t0;
    log.info(`${label} done in ${(durationMs / 1000).toFixed(1)}s`);
    // Unwatched, the step wrote nothing an initramfs is built from: the trees are as the step before left them.
    return { records, after, durationMs, trees: initramfs ? initramfs.settled() : trees };
  } catch (error) {
    // Its walk may still be reading the guest (a session that failed to open): done before anything is released.
    await watching?.catch(() => undefined);
    events({ event: 'step-failed', step: number, durationMs: Date.now() - t0, error: errorMessage(error) });
    if (options.shellOnFailure && !signal?.aborted && session) {
      log.error(`${label} failed: ${errorMessage(error)}`);
      log.info('a shell inside the guest at the failed step, everything still mounted; exit it to clean up');
      // The step's own error is the build's, whatever becomes of the shell (its network may be made now).
      await session.interactive(['/bin/sh', '-c', 'exec "$(command -v bash || echo /bin/sh)"'], { PS1: `[imagebuilder: step ${number} failed] \\w# ` })
        .catch((shellError: unknown) => log.error(`the shell could not be opened: ${errorMessage(shellError)}`));
    }
    throw error;
  }
}

/** The BOM of phase 1: the guest's packages compared with the base's, and what the steps recorded. */
async function phase1Bom(recipe: Recipe, input: VerifiedImage, opened: OpenedGuest, distro: Distro, base: BaseState, steps: BomStep[], records: ReturnType<typeof createRecorder>, log: Logger): Promise<Phase1Bom> {
  const manager = opened.distro.family?.packageManager;
  const packagesAfter = manager ? await manager.listInstalled(opened.layout.root, log) : [];
  const { packages, removed } = comparePackages(base.packages, packagesAfter);
  return {
    bomVersion: 1,
    tool: { name: 'imagebuilder', version: TOOL_VERSION },
    createdAt: '',
    input: {
      ...(input.url ? { url: input.url } : {}),
      path: input.path,
      format: input.format,
      sha256: input.sha256,
      ...(input.published ? { published: input.published } : {}),
      ...(input.checksumSource ? { checksumSource: input.checksumSource } : {}),
      verified: input.verified,
      ...(input.signature ? { signature: input.signature } : {}),
    },
    recipe: { path: recipe.path, name: recipe.name, sha256: recipe.sha256, variables: recipe.variables, includes: recipe.includes },
    os: { id: distro.id, versionId: distro.versionId, prettyName: distro.prettyName, osRelease: distro.osRelease },
    architecture: base.architecture,
    kernels: await listKernels(opened.layout.root),
    packages,
    removedPackages: removed,
    files: records.files,
    units: records.units,
    unitStates: await listUnitStates(opened.layout.root),
    containerImages: records.images,
    steps,
    mountBackend: opened.backend.name,
    durationsMs: {},
    warnings: [],
  };
}

/**
 * Phase 1: the recipe's steps, in a chroot, on a work image over the verified input. With a layer store, each
 * step's result becomes a cached layer, and a build starts from the longest prefix of steps already cached.
 */
export async function runPhase1(recipe: Recipe, input: VerifiedImage, context: BuildContext, options: Phase1Options): Promise<Phase1Result> {
  const { log, signal, events, clock } = context;
  const chain = await LayerChain.open(context, options.store, recipe, input, refreshMatcher(recipe, options.refresh), options.growTo);
  // Grown once, right over the input: a cached layer above it holds the grown disk already.
  const growTo = chain.base ? undefined : options.growTo;
  const opened = await clock.time('mount', () =>
    openGuest(mountContext(context), input, { backend: options.mountBackend, base: chain.base, overlay: chain.active, preferLiveSnapshot: chain.caching, size: growTo }),
  );
  throwIfAborted(signal);
  if (chain.caching && !opened.snapshot) {
    log.info(`step cache: off (the ${opened.backend.name} backend cannot snapshot a mounted image; the fuse backend can)`);
    chain.stopCaching();
  }

  // What the guest was before the first step: from the cache when steps are reused, else read now.
  const manager = opened.distro.family?.packageManager;
  const base: BaseState = chain.reused[0]?.base ?? {
    sha256: input.sha256,
    path: input.path,
    osRelease: opened.distro.osRelease,
    architecture: manager ? await manager.architecture(opened.layout.root, log) : undefined,
    packages: manager ? await manager.listInstalled(opened.layout.root, log) : [],
  };
  const distro = chain.reused.length ? detectDistro(base.osRelease) : opened.distro;
  const { architecture } = base;
  log.info(`guest: ${distro.prettyName ?? distro.id} (family ${distro.family?.name ?? 'unknown'})`);
  // An unknown distribution fails here, before any step changes the guest, when a step needs its package manager.
  requireFamilyForSteps(recipe.steps, distro, architecture);
  if (options.packageBundle && manager && !BUNDLE_MANAGERS.includes(manager.name) && recipe.steps.some((step) => step.type.needsPackageManager?.(step.spec))) {
    throw new ImageBuilderError('BAD_INPUT', `air-gapped bundles carry the packages of ${BUNDLE_MANAGERS.join(', ')} so far, and this guest's package manager is ${manager.name}`, {
      hint: 'bundle and apply --bundle work for Debian, Ubuntu, Fedora/RHEL-like (dnf) and openSUSE/SLES guests today; build this one online',
    });
  }

  const steps: BomStep[] = [];
  const records = createRecorder();
  replayCached(recipe, chain.reused, context, { steps, records });
  const session = lazySession(context, opened, distro, recipe, options);
  // The recipe's checks that read only files, and the node components' versions, on the finished guest (a
  // check's failure writes no output). Both read only (read-only root): with the step cache they run in the last
  // step's session before it closes for the final layer's snapshot, not in a session opened again (~0.2 s).
  // The components' binaries are read ahead while the last step runs, awaited before their probe, and before
  // anything is released when a step fails (a file still open would keep the guest mounted).
  let warming: Promise<void> | undefined;
  const warmComponents = () => (warming ??= warmNodeComponents(opened.layout.root, signal));
  let finished: Promise<{ checks: Awaited<ReturnType<typeof checkImage>>; components: Awaited<ReturnType<typeof readComponents>> }> | undefined;
  const judgeFinished = () =>
    (finished ??= (async () => ({
      checks: recipe.checks.length ? await clock.time('checks', async () => checkImage(await session.open(), recipe.checks, signal)) : [],
      components: await clock.time('components', async () => {
        await warmComponents();
        return readComponents(opened.layout.root, () => session.open(), manager ? await manager.listInstalled(opened.layout.root, log) : [], signal);
      }),
    }))());
  // Before the final snapshot. A failure is the build's after the layer is committed (thrown again below), as before.
  const judgeThenClose = async () => {
    await judgeFinished().catch(() => undefined);
    await session.close();
  };

  await clock.time('steps', async () => {
    // Read by the first step that runs; each step after starts from what the one before read when it was done.
    let trees: InitramfsTrees | undefined;
    for (const step of recipe.steps.slice(chain.reused.length)) {
      throwIfAborted(signal);
      if (step.index === recipe.steps.length - 1) void warmComponents();
      const number = step.index + 1;
      const description = step.type.describe(step.spec);
      const skipped = whenMismatch(step.when, distro, architecture);
      const bomStep: BomStep = { index: step.index, name: step.name, type: step.type.key, description, durationMs: 0, ...(skipped ? { skipped } : {}) };
      let ran = { records: createRecorder(), after: [] as BomStep[], durationMs: 0, trees };
      if (skipped) {
        log.info(`step ${number}/${recipe.steps.length} (${step.name ?? description}): skipped (${skipped})`);
        events({ event: 'step-skipped', step: number, reason: skipped });
      } else {
        // The step's cache key: what a package manager keeps of this step for later builds is shared as its layer is.
        const packageCacheScope = options.packageCacheDir ? chain.keys[step.index]?.key : undefined;
        ran = await runStep(context, step, recipe, opened.layout.root, () => session.open(), distro, architecture, options, trees, packageCacheScope).catch(async (error: unknown) => {
          throw await explainFullDisk(error, opened.layout);
        });
        bomStep.durationMs = ran.durationMs;
        trees = ran.trees;
      }
      ran.records.files.forEach(records.recorder.file);
      ran.records.units.forEach(records.recorder.unit);
      ran.records.images.forEach(records.recorder.image);
      const last = step.index === recipe.steps.length - 1;
      const layer = await chain.commitStep(opened, base, {
        index: step.index, bomStep, after: ran.after, skipped: Boolean(skipped),
        records: { files: ran.records.files, units: ran.records.units, images: ran.records.images },
      }, last ? judgeThenClose : () => session.close());
      steps.push(bomStep, ...ran.after);
      events({ event: 'step-finished', step: number, durationMs: bomStep.durationMs, ...(layer ? { layer } : {}) });
    }
    await chain.close(opened, judgeThenClose);
  }).catch(async (error: unknown) => {
    await warming;
    throw error;
  });
  const { checks, components } = await judgeFinished();
  await session.close();
  const failed = checksFailed(checks, 'on the image at the end of phase 1');
  if (failed) throw failed;
  if (checks.length) log.info(`checks on the image: ${checks.filter((c) => c.status === 'passed').length} passed, ${checks.filter((c) => c.status === 'skipped').length} need the booted image (imagebuilder test)`);

  const bom = { ...(await phase1Bom(recipe, input, opened, distro, base, steps, records, log)), ...(components.length ? { components } : {}) };
  return { bom: checks.length ? { ...bom, checks } : bom, opened, workImage: chain.active };
}
