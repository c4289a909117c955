import { rm } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { comparePackages, listKernels, type Bom, type BomStep } from '../bom/collect.js';
import { listUnitStates } from '../bom/inventory.js';
import { openChroot, type ChrootSession } from '../chroot/session.js';
import { DEFAULT_LIMITS, openBuildSandbox, parseMemorySize, type BuildSandbox, type GuestNetwork, type SandboxLimits } from '../chroot/sandbox.js';
import { detectDistro } from '../distro/families.js';
import { watchInitramfs } from '../distro/initramfs.js';
import type { MountBackendName, MountContext } from '../mount/backend.js';
import type { Recipe } from '../recipe/load.js';
import { whenMismatch } from '../steps/when.js';
import { createRecorder } from '../steps/types.js';
import { forgetHolding, noteHolding } from '../util/build-record.js';
import { CleanupStack } from '../util/cleanup.js';
import { errorMessage, ImageBuilderError } from '../util/errors.js';
import type { Runner } from '../util/exec.js';
import type { Logger } from '../util/log.js';
import { throwIfAborted } from '../util/signals.js';
import { TOOL_VERSION } from '../version.js';
import type { EventSink } from './events.js';
import { openGuest, type OpenedGuest } from './guest.js';
import { imageInfo } from '../image/qemu-img.js';
import type { HttpTimeouts } from '../fetch/http.js';
import { LayerStore, stepKeys, type BaseState, type LayerRecord, type StepKey } from './layers.js';
import type { VerifiedImage } from './verify.js';
import { requireFamilyForSteps } from './preflight.js';

/** Everything of the BOM that phase 1 knows: phase 2 adds the artifacts. */
export type Phase1Bom = Omit<Bom, 'output' | 'artifacts'>;

export interface Phase1Options {
  run: Runner;
  log: Logger;
  signal?: AbortSignal;
  workDir: string;
  /** Holds the mounted guest; released by the caller once it has finished with the guest. */
  guest: CleanupStack;
  /** Holds files that must outlive the guest's release (unfinished layers): released after it. */
  files: CleanupStack;
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
  events: EventSink;
  time<T>(stage: string, body: () => Promise<T>): Promise<T>;
}

export interface Phase1Result {
  bom: Phase1Bom;
  /** The guest, still mounted: the caller writes the BOM into it, trims it and releases it. */
  opened: OpenedGuest;
  /** The top of the work image's chain (the overlay the guest writes to now). */
  workImage: string;
}

/** A run step's timeout when neither it nor the recipe's limits.timeout sets one: 30 minutes. */
export const DEFAULT_RUN_TIMEOUT_SECONDS = 1800;

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

/** Flushes the guest's filesystems so a snapshot holds them whole: frozen where the kernel can, else synced. */
async function quiesce(run: Runner, log: Logger, opened: OpenedGuest): Promise<() => Promise<void>> {
  const frozen: string[] = [];
  const thaw = async () => {
    for (const path of frozen.reverse()) await run('fsfreeze', ['--unfreeze', path], { allowFailure: true });
  };
  try {
    for (const mount of opened.layout.mounts) {
      const result = await run('fsfreeze', ['--freeze', mount.hostPath], { allowFailure: true });
      if (result.exitCode === 0) frozen.push(mount.hostPath);
      else {
        log.debug(`fsfreeze ${mount.path}: ${result.output.trim()} (synced only)`);
        await run('sync', ['--file-system', mount.hostPath]);
      }
    }
  } catch (error) {
    // A frozen filesystem cannot be unmounted: never leave one behind.
    await thaw();
    throw error;
  }
  return thaw;
}

/**
 * Phase 1: the recipe's steps, in a chroot, on a work image over the verified input. With a layer store, each
 * step's result becomes a cached layer, and a build starts from the longest prefix of steps already cached.
 */
export async function runPhase1(recipe: Recipe, input: VerifiedImage, options: Phase1Options): Promise<Phase1Result> {
  const { run, log, signal, events, guest } = options;
  const refresh = refreshMatcher(recipe, options.refresh);
  let store = options.store;
  const keys: StepKey[] = store ? await stepKeys(input.sha256, recipe.steps, recipe.variables) : [];
  const reused: LayerRecord[] = store ? await store.longestPrefix(keys, refresh) : [];
  const top = reused.filter((r) => r.image).at(-1);
  const allCached = reused.length === recipe.steps.length;

  // The overlay steps write to: a new layer in the store, or (nothing left to run, or no store) the work dir.
  const finalOverlay = join(options.workDir, 'work.qcow2');
  const newLayer = async () => {
    const file = await store!.newImage();
    // A layer without its record is never reused (--resume takes the committed ones): it goes, whatever happened,
    // even if the build is killed (the record lets a reaper remove it; forgotten before the layer is committed).
    await noteHolding(options.workDir, { kind: 'file', path: file });
    options.files.push(`unfinished layer ${file}`, async () => {
      if (!committed.has(file)) await rm(file, { force: true });
    });
    return file;
  };
  const committed = new Set<string>();
  let active = store && !allCached ? await newLayer() : finalOverlay;
  const bottom = reused.find((r) => r.image);
  if (bottom) {
    // The cache names the base by content; it may live at another path now: point the bottom layer there.
    const bottomImage = join(store!.dir, bottom.image!);
    if ((await imageInfo(run, bottomImage, log)).backingFile !== input.path) {
      await run('qemu-img', ['rebase', '-u', '-F', input.format, '-b', input.path, bottomImage], { log, purpose: 'pointing the cached layers at the base image' });
    }
  }

  const context: MountContext = { run, log, cleanup: guest, signal, workDir: options.workDir };
  const opened = await options.time('mount', () =>
    openGuest(context, input, {
      backend: options.mountBackend,
      base: top ? { path: join(store!.dir, top.image!), format: 'qcow2' } : undefined,
      overlay: active,
      preferLiveSnapshot: store !== undefined,
    }),
  );
  throwIfAborted(signal);
  if (store && !opened.snapshot) {
    log.info(`step cache: off (the ${opened.backend.name} backend cannot snapshot a mounted image; the fuse backend can)`);
    store = undefined;
  }

  // What the guest was before the first step: from the cache when steps are reused, else read now.
  const manager = opened.distro.family?.packageManager;
  const base: BaseState = reused[0]?.base ?? {
    sha256: input.sha256,
    path: input.path,
    osRelease: opened.distro.osRelease,
    architecture: manager ? await manager.architecture(opened.layout.root) : undefined,
    packages: manager ? await manager.listInstalled(opened.layout.root) : [],
  };
  const distro = reused.length ? detectDistro(base.osRelease) : opened.distro;
  const { architecture } = base;
  log.info(`guest: ${distro.prettyName ?? distro.id} (family ${distro.family?.name ?? 'unknown'})`);
  // An unknown distribution fails here, before any step changes the guest, when a step needs its package manager.
  requireFamilyForSteps(recipe.steps, distro, architecture);

  const steps: BomStep[] = [];
  const records = createRecorder();
  for (const [index, record] of reused.entries()) {
    const step = recipe.steps[index];
    const label = `step ${index + 1}/${recipe.steps.length} (${step.name ?? record.step.description})`;
    const unpinned = record.unpinned ? `; depends on the network (${record.unpinned}): --refresh ${index + 1} runs it again` : '';
    log.info(`${label}: ${record.step.skipped ? `skipped (${record.step.skipped})` : 'cached'} (layer ${record.key.slice(0, 12)}${unpinned})`);
    events({ event: 'step-cached', step: index + 1, layer: record.key, ...(record.unpinned ? { unpinned: record.unpinned } : {}) });
    steps.push({ ...record.step, name: step.name, cached: true }, ...(record.after ?? []).map((entry) => ({ ...entry, cached: true })));
    record.records.files.forEach(records.recorder.file);
    record.records.units.forEach(records.recorder.unit);
    record.records.images.forEach(records.recorder.image);
  }

  // One chroot session for all steps, or one per step when each step's result becomes a layer: a layer must
  // not hold the session's temporary files (resolv.conf, policy-rc.d).
  let session: ChrootSession | undefined;
  // One sandbox (network namespace, cgroups with the build's limits, seccomp program) for the whole build.
  let sandbox: BuildSandbox | undefined;
  const openSession = async () => {
    if (session) return session;
    sandbox ??= await openBuildSandbox({ run, log, cleanup: guest, limits: buildLimits(recipe, options.limits), hostPorts: options.hostPorts });
    session = await openChroot(opened.layout.root, { run, log, signal, sessionFiles: distro.family?.sessionFiles, sandbox, network: recipe.network });
    guest.push('chroot session', async () => {
      await session?.close();
      session = undefined;
    });
    return session;
  };
  const closeSession = () => guest.releaseNow('chroot session');

  await options.time('steps', async () => {
    let parent = reused.at(-1)?.key;
    let below = top?.image;
    for (const step of recipe.steps.slice(reused.length)) {
      throwIfAborted(signal);
      const number = step.index + 1;
      const description = step.type.describe(step.spec);
      const label = `step ${number}/${recipe.steps.length} (${step.name ?? description})`;
      const key = keys[step.index];
      const stepRecords = createRecorder();
      let bomStep: BomStep;
      const after: BomStep[] = [];
      const skipped = whenMismatch(step.when, distro, architecture);
      if (skipped) {
        log.info(`${label}: skipped (${skipped})`);
        events({ event: 'step-skipped', step: number, reason: skipped });
        bomStep = { index: step.index, name: step.name, type: step.type.key, description, durationMs: 0, skipped };
      } else {
        log.info(`${label}: ${step.type.key} at ${step.location}`);
        events({ event: 'step-started', step: number, of: recipe.steps.length, type: step.type.key, ...(step.name ? { name: step.name } : {}), description });
        const t0 = Date.now();
        const current = await openSession();
        const initramfs = await watchInitramfs(opened.layout.root);
        try {
          const stepSession = step.network ? withNetwork(current, step.network) : current;
          const runTimeoutSeconds = recipe.limits?.timeout ?? DEFAULT_RUN_TIMEOUT_SECONDS;
          await step.type.run({ session: stepSession, distro, log, signal, recipeDir: step.dir, hostRoots: step.hostRoots, variables: recipe.variables, label, record: stepRecords.recorder, architecture, fetchTimeouts: options.fetchTimeouts, runTimeoutSeconds }, step.spec);
          await current.sweep();
          // A step that changed a kernel or the initramfs configuration gets the guest kernel's initramfs rebuilt
          // within it, so its layer holds the result.
          after.push(...(await initramfs.regenerate(current, { log, signal, index: step.index })));
        } catch (error) {
          events({ event: 'step-failed', step: number, durationMs: Date.now() - t0, error: errorMessage(error) });
          if (options.shellOnFailure && !signal?.aborted) {
            log.error(`${label} failed: ${errorMessage(error)}`);
            log.info('a shell inside the guest at the failed step, everything still mounted; exit it to clean up');
            await current.interactive(['/bin/sh', '-c', 'exec "$(command -v bash || echo /bin/sh)"'], { PS1: `[imagebuilder: step ${number} failed] \\w# ` });
          }
          throw error;
        }
        bomStep = { index: step.index, name: step.name, type: step.type.key, description, durationMs: Date.now() - t0 };
        log.info(`${label} done in ${(bomStep.durationMs / 1000).toFixed(1)}s`);
      }
      stepRecords.files.forEach(records.recorder.file);
      stepRecords.units.forEach(records.recorder.unit);
      stepRecords.images.forEach(records.recorder.image);

      let layerImage: string | undefined;
      if (store && opened.snapshot && !skipped) {
        // The step's result becomes a read-only layer; what follows writes to a new overlay on top of it.
        await closeSession();
        const next = step.index === recipe.steps.length - 1 ? finalOverlay : await newLayer();
        const thaw = await quiesce(run, log, opened);
        try {
          await opened.snapshot(next);
        } finally {
          await thaw();
        }
        layerImage = active;
        await forgetHolding(options.workDir, { kind: 'file', path: active });
        committed.add(active);
        active = next;
      }
      if (store) {
        // A skipped step's layer is its parent's image: nothing changed.
        const image = layerImage ? basename(layerImage) : undefined;
        await store.commit({
          layerVersion: 2, key: key.key, ...(parent ? { parent } : {}), ...(image ? { image } : {}), ...(below ? { backing: below } : {}),
          createdAt: new Date().toISOString(), toolVersion: TOOL_VERSION, base, step: bomStep, ...(key.unpinned ? { unpinned: key.unpinned } : {}),
          records: { files: stepRecords.files, units: stepRecords.units, images: stepRecords.images },
          ...(after.length ? { after } : {}),
        });
        parent = key.key;
        below = image ?? below;
      }
      steps.push(bomStep, ...after);
      events({ event: 'step-finished', step: number, durationMs: bomStep.durationMs, ...(store ? { layer: key.key } : {}) });
    }
    // The last step may have been skipped: the final overlay still has to exist above the last layer.
    if (store && active !== finalOverlay && opened.snapshot) {
      await closeSession();
      const thaw = await quiesce(run, log, opened);
      try {
        await opened.snapshot(finalOverlay);
      } finally {
        await thaw();
      }
      active = finalOverlay;
    }
  });
  await closeSession();

  const packagesAfter = manager ? await manager.listInstalled(opened.layout.root) : [];
  const { packages, removed } = comparePackages(base.packages, packagesAfter);
  const bom: Phase1Bom = {
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
    architecture,
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
  return { bom, opened, workImage: active };
}
