import { constants } from 'node:fs';
import { open, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { formatBytes } from '../util/size.js';
import type { BomStep } from '../util/step-record.js';
import { imageInfo } from '../image/qemu-img.js';
import { forgetHolding, noteHolding } from '../util/build-record.js';
import { ensurePrivateDir, flockDescriptor, waitForFlock } from '../util/lock.js';
import { cacheLayout } from '../fetch/cache.js';
import { sleep } from '../util/fs.js';
import { throwIfAborted } from '../util/signals.js';
import type { Logger } from '../util/log.js';
import type { Runner } from '../util/exec.js';
import { TOOL_VERSION } from '../version.js';
import type { BuildContext } from './context.js';
import type { OpenedGuest } from './guest.js';
import { stepKeys, type BaseState, type LayerRecord, type LayerStore, type StepKey, type StepRecords } from './layers.js';
import type { Recipe } from '../recipe/load.js';
import type { VerifiedImage } from './verify.js';

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

/** What one step left for its layer's record. */
export interface FinishedStep {
  index: number;
  bomStep: BomStep;
  records: StepRecords;
  after: BomStep[];
  /** Skipped by its `when`: it changed nothing, so its layer is its parent's image. */
  skipped: boolean;
}

/**
 * The cache names the base by content and the bottom layer's header names it by path, which may differ between
 * builds (two workspaces, two containers): the layer is pointed at this build's base. Builds over the same layer
 * would point it back and forth under each other, and one's output would be read from the other's file (which its
 * owner may change after its own check), or fail when that file goes. So each build holds a shared flock on the
 * layer's lock file (in the cache's private locks/, read-write: NFS emulates flock with POSIX locks, whose
 * exclusive kind needs it) for as long as it uses the chain (released with the build), and re-pointing takes it
 * alone: a build over another path waits for those before it.
 */
async function pointBottomLayerAt(context: BuildContext, storeDir: string, bottomImage: string, input: VerifiedImage): Promise<void> {
  const locks = cacheLayout(dirname(storeDir)).locks;
  await ensurePrivateDir(locks, context.log);
  const held = await open(join(locks, `${basename(bottomImage)}.lock`), constants.O_RDWR | constants.O_CREAT | constants.O_NOFOLLOW | constants.O_NONBLOCK, 0o600);
  context.files.push(`shared lock on ${bottomImage}`, () => held.close());
  const pointsAt = async () => (await imageInfo(context.run, bottomImage, context.log)).backingFile;
  let told = false;
  for (;;) {
    await waitForFlock(held, 'shared', context.signal);
    if ((await pointsAt()) === input.path) return;
    // flock converts by dropping the lock first: alone, re-pointed, then shared again and checked once more. Not
    // alone: shared again and checked again (a build over this same path may have pointed it here meanwhile).
    if (await flockDescriptor(held, 'exclusive')) {
      if ((await pointsAt()) !== input.path) {
        await context.run('qemu-img', ['rebase', '-u', '-F', input.format, '-b', input.path, bottomImage], { log: context.log, purpose: 'pointing the cached layers at the base image' });
      }
      continue;
    }
    if (!told) context.log.info(`step cache: waiting for the builds using ${basename(bottomImage)} over another copy of the base to finish`);
    told = true;
    await sleep(500);
    throwIfAborted(context.signal);
  }
}

/**
 * The step cache's bookkeeping for one build: which layers are reused, the overlay the guest writes to, and,
 * after each step, its result made a read-only layer (a live snapshot) and its record committed. Without a
 * store (or a backend that cannot snapshot) every step writes to the one overlay in the work directory.
 */
export class LayerChain {
  /** The overlay the guest writes to now: a new layer in the store, or the work directory's final overlay. */
  active: string;
  private parent: string | undefined;
  private below: string | undefined;
  private readonly committed = new Set<string>();
  private readonly finalOverlay: string;

  private constructor(
    private readonly context: BuildContext,
    private store: LayerStore | undefined,
    readonly keys: StepKey[],
    /** The records of the longest cached prefix of the recipe's steps. */
    readonly reused: LayerRecord[],
    private readonly stepCount: number,
  ) {
    this.finalOverlay = join(context.workDir, 'work.qcow2');
    this.active = this.finalOverlay;
    this.parent = reused.at(-1)?.key;
    this.below = this.top?.image;
  }

  /** Finds the cached prefix (stopping before the first step to refresh) and makes the overlay the first step writes to. */
  static async open(context: BuildContext, store: LayerStore | undefined, recipe: Recipe, input: VerifiedImage, refresh: (index: number) => boolean, growTo?: number): Promise<LayerChain> {
    // A grown disk is another base: its layers are not an ungrown build's.
    const base = growTo === undefined ? input.sha256 : `${input.sha256} grown to ${growTo}`;
    const keys = store ? await stepKeys(base, recipe.steps, recipe.variables) : [];
    const reused = store ? await store.longestPrefix(keys, refresh) : [];
    if (store) {
      // Housekeeping beside the build: the layers steps run again (--refresh) replaced a day ago or more.
      const sweeping = store.removeReplacedLayers().then(({ files, bytes }) => {
        if (files) context.log.info(`step cache: removed ${files} layer(s) replaced a day ago or more by steps run again (${formatBytes(bytes)})`);
      }, (error: unknown) => context.log.debug(`step cache: layer files no record names not removed: ${String(error)}`));
      context.files.push('step cache housekeeping', () => sweeping);
    }
    const chain = new LayerChain(context, store, keys, reused, recipe.steps.length);
    if (store && reused.length < recipe.steps.length) chain.active = await chain.newLayer();
    const bottom = reused.find((record) => record.image);
    if (bottom) await pointBottomLayerAt(context, store!.dir, join(store!.dir, bottom.image!), input);
    return chain;
  }

  private get top(): LayerRecord | undefined {
    return this.reused.filter((record) => record.image).at(-1);
  }

  /** What the first overlay goes over: the top cached layer, or (undefined) the input itself. */
  get base(): { path: string; format: 'qcow2' } | undefined {
    const top = this.top;
    return top && this.store ? { path: join(this.store.dir, top.image!), format: 'qcow2' } : undefined;
  }

  get caching(): boolean {
    return this.store !== undefined;
  }

  /** The backend cannot snapshot a mounted image: steps run, nothing is cached. */
  stopCaching(): void {
    this.store = undefined;
  }

  private async newLayer(): Promise<string> {
    const file = await this.store!.newImage();
    // A layer without its record is never reused (--resume takes the committed ones): it goes, whatever happened,
    // even if the build is killed (the record lets a reaper remove it; forgotten before the layer is committed).
    await noteHolding(this.context.workDir, { kind: 'file', path: file });
    this.context.files.push(`unfinished layer ${file}`, async () => {
      if (!this.committed.has(file)) await rm(file, { force: true });
    });
    return file;
  }

  /** The active overlay becomes read-only as it is now; the guest writes to `next` from here on. */
  private async snapshotTo(opened: OpenedGuest, next: string): Promise<void> {
    const thaw = await quiesce(this.context.run, this.context.log, opened);
    try {
      await opened.snapshot!(next);
    } finally {
      await thaw();
    }
  }

  /**
   * After a step: its result becomes a layer (`beforeSnapshot` closes what must not be in it: the chroot
   * session's temporary files) and its record is committed. Returns the step's key when cached.
   */
  async commitStep(opened: OpenedGuest, base: BaseState, step: FinishedStep, beforeSnapshot: () => Promise<void>): Promise<string | undefined> {
    if (!this.store) return undefined;
    const key = this.keys[step.index];
    let layerImage: string | undefined;
    if (opened.snapshot && !step.skipped) {
      await beforeSnapshot();
      const next = step.index === this.stepCount - 1 ? this.finalOverlay : await this.newLayer();
      await this.snapshotTo(opened, next);
      layerImage = this.active;
      await forgetHolding(this.context.workDir, { kind: 'file', path: this.active });
      this.committed.add(this.active);
      this.active = next;
    }
    // A skipped step's layer is its parent's image: nothing changed.
    const image = layerImage ? basename(layerImage) : undefined;
    await this.store.commit({
      layerVersion: 2, key: key.key, ...(this.parent ? { parent: this.parent } : {}), ...(image ? { image } : {}), ...(this.below ? { backing: this.below } : {}),
      createdAt: new Date().toISOString(), toolVersion: TOOL_VERSION, base, step: step.bomStep, ...(key.unpinned ? { unpinned: key.unpinned } : {}),
      records: step.records,
      ...(step.after.length ? { after: step.after } : {}),
    });
    this.parent = key.key;
    this.below = image ?? this.below;
    return key.key;
  }

  /** The last step may have been skipped: the final overlay still has to exist above the last layer. */
  async close(opened: OpenedGuest, beforeSnapshot: () => Promise<void>): Promise<void> {
    if (!this.store || this.active === this.finalOverlay || !opened.snapshot) return;
    await beforeSnapshot();
    await this.snapshotTo(opened, this.finalOverlay);
    this.active = this.finalOverlay;
  }
}
