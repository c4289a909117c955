import { randomBytes } from 'node:crypto';
import { chmod, lstat, mkdir, readdir, realpath, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { BomStep } from '../util/step-record.js';
import { sha256Text } from '../util/digest.js';
import type { InstalledPackage } from '../pkg/types.js';
import type { RecipeStep } from '../recipe/load.js';
import type { RecordedFile, RecordedImage, RecordedUnit, StepCacheInputs } from '../steps/types.js';
import { readRegularFile, writeJsonAtomic } from '../util/fs.js';
import { openFilePaths } from '../util/processes.js';
import { TOOL_VERSION } from '../version.js';

/**
 * The step cache: after each step the work image becomes a read-only qcow2 layer and the next step writes to a
 * new overlay on top. A layer is found again by its key, which hashes everything its content depends on: the
 * base image's sha256, every step so far in its normalized form (after variables; comments, formatting and
 * step names do not count) and what each step reads from the host or the network (see StepType.cacheInputs).
 *
 *   <store>/<key>.json            the layer's record, written last: a layer without one is incomplete
 *   <store>/layer-<random>.qcow2  a layer, backed by its parent's qcow2 (or by the base image); named at random
 *                                 because it is created before the step that fills it has run
 */

/** What the guest was before the first step: the BOM compares against it, so every layer carries it. */
export interface BaseState {
  /** sha256 and path of the base image the first layer's backing file names. */
  sha256: string;
  path: string;
  osRelease: Record<string, string>;
  architecture?: string;
  packages: InstalledPackage[];
}

export interface StepRecords {
  files: RecordedFile[];
  units: RecordedUnit[];
  images: RecordedImage[];
}

export interface LayerRecord {
  layerVersion: 2;
  key: string;
  /** The key of the layer below; absent for the first step's. */
  parent?: string;
  /** This layer's qcow2 in the store; absent when the step changed nothing (skipped by its `when`). */
  image?: string;
  /**
   * The qcow2 this layer's image is backed by (or, for a skipped step, stands for): the nearest image below;
   * absent for the base image. Two builds may commit the same key with different images, so a chain is whole
   * only when each layer sits on the image the record below it names.
   */
  backing?: string;
  createdAt: string;
  toolVersion: string;
  base: BaseState;
  step: BomStep;
  /** Why the step's result may differ when run again (network without a pin): `--refresh` reruns it. */
  unpinned?: string;
  records: StepRecords;
  /** What the build did right after the step, inside its layer (a guest kernel's initramfs rebuilt). */
  after?: BomStep[];
}

export interface StepKey {
  key: string;
  unpinned?: string;
}

/** JSON with object keys sorted, so equal values hash equally whatever order the recipe wrote them in. */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>).filter(([, v]) => v !== undefined).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
  }
  return JSON.stringify(value ?? null);
}

/** The key of each step's layer, in order; each key chains the one before it. */
export async function stepKeys(baseSha256: string, steps: RecipeStep[], variables: Record<string, string>): Promise<StepKey[]> {
  const keys: StepKey[] = [];
  // SOURCE_DATE_EPOCH changes what steps write (clamped mtimes, the guest's environment).
  let parent = sha256Text(canonicalJson({ layers: 2, tool: TOOL_VERSION, base: baseSha256, sourceDateEpoch: process.env.SOURCE_DATE_EPOCH?.trim() || null }));
  for (const step of steps) {
    const inputs: StepCacheInputs = (await step.type.cacheInputs?.(step.spec, { recipeDir: step.dir, hostRoots: step.hostRoots, variables })) ?? {};
    // A step's network (its own or its file's) can change what it does; the default one leaves the key as it was.
    const key = sha256Text(canonicalJson({ parent, type: step.type.key, spec: step.spec, when: step.when, inputs: inputs.digests ?? {}, ...(step.network ? { network: step.network } : {}) }));
    keys.push({ key, ...(inputs.unpinned ? { unpinned: inputs.unpinned } : {}) });
    parent = key;
  }
  return keys;
}

/** The step cache's layers in a cache directory. */
export const layerStoreDir = (cacheDir: string) => join(cacheDir, 'layers');

/** A layer record: a regular file at its name (a link or FIFO there is not one), below this bound (~250 bytes a copied file). */
const readRecordFile = (path: string) => readRegularFile(path, { follow: false, maxBytes: 64 << 20 });

export class LayerStore {
  constructor(readonly dir: string) {}

  private recordPath = (key: string) => join(this.dir, `${key}.json`);

  async read(key: string): Promise<LayerRecord | undefined> {
    try {
      const record = JSON.parse((await readRecordFile(this.recordPath(key)))?.toString('utf8') ?? 'null') as LayerRecord | null;
      if (record?.layerVersion !== 2 || record.key !== key) return undefined;
      // Only names this store gives its files: a record naming ../x would have prune remove x.
      if ([record.image, record.backing].some((name) => name !== undefined && !LAYER_IMAGE.test(name))) return undefined;
      if (record.image && !(await lstat(join(this.dir, record.image)).catch(() => undefined))?.isFile()) return undefined;
      return record;
    } catch {
      return undefined;
    }
  }

  /**
   * The cached layers of the longest prefix of `keys` whose chain is whole, stopping before the first step
   * to refresh. Each found record is touched, so pruning by age removes the least recently used first.
   */
  async longestPrefix(keys: StepKey[], refresh: (index: number) => boolean): Promise<LayerRecord[]> {
    const found: LayerRecord[] = [];
    let below: string | undefined;
    for (const [index, { key }] of keys.entries()) {
      if (refresh(index)) break;
      const record = await this.read(key);
      if (!record || record.parent !== found.at(-1)?.key || record.backing !== below) break;
      found.push(record);
      below = record.image ?? below;
    }
    const now = new Date();
    for (const record of found) await utimes(this.recordPath(record.key), now, now).catch(() => undefined);
    return found;
  }

  /** A fresh file name in the store for the layer a step is about to write. */
  async newImage(): Promise<string> {
    await mkdir(this.dir, { recursive: true, mode: 0o755 }); // explicit: a umask of 002 would leave it group-writable, which the cache check refuses
    return join(this.dir, `layer-${randomBytes(6).toString('hex')}.qcow2`);
  }

  /**
   * Publishes a finished layer: its image becomes read-only, then its record appears (whole, by rename). The
   * record of a step run again (--refresh) replaces the old one; the old image, named by no record any more, gets
   * a marker beside it (`<image>.replaced`), dated now: removeReplacedLayers takes it a day later.
   */
  async commit(record: LayerRecord): Promise<void> {
    const replaced = (await this.read(record.key))?.image;
    if (record.image) await chmod(join(this.dir, record.image), 0o444);
    await writeJsonAtomic(this.recordPath(record.key), record);
    if (replaced && replaced !== record.image && LAYER_IMAGE.test(replaced)) {
      // Made new (O_EXCL): whatever was at the marker's name, a link included, is removed, never written through.
      const marker = join(this.dir, `${replaced}${REPLACED_SUFFIX}`);
      await rm(marker, { force: true });
      // Another build committing the same key may have made it meanwhile: dated now all the same.
      await writeFile(marker, '', { flag: 'wx' }).catch((error: NodeJS.ErrnoException) => {
        if (error.code !== 'EEXIST') throw error;
      });
    }
  }

  /**
   * Every image name any record file names, whatever its version (a record another imagebuilder wrote names a
   * layer that is not ours to remove); `complete` false when a record could not be read.
   */
  private async namedImages(): Promise<{ names: Set<string>; complete: boolean }> {
    const names = new Set<string>();
    let complete = true;
    for (const name of (await readdir(this.dir).catch(() => [] as string[])).filter((n) => n.endsWith('.json'))) {
      try {
        const text = await readRecordFile(join(this.dir, name));
        if (!text) continue; // removed meanwhile
        const image = (JSON.parse(text.toString('utf8')) as { image?: unknown }).image;
        if (typeof image === 'string') names.add(image);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'ENOENT') complete = false; // ENOENT: removed meanwhile
      }
    }
    return { names, complete };
  }

  /**
   * Removes layer files that are ours (regular files named layer-<hex>.qcow2) that no record names, read before
   * and again right before removing, older than `graceMs` and open in no process of this host. A file's age is
   * its own or its replacement marker's, the newer (commit marks a layer a step run again replaced). `only`:
   * just the marked ones. A record that cannot be read, or processes whose open files cannot be read, stop it
   * (nothing is taken for unused then); --all takes every unnamed file, whatever runs, keeping any name read.
   */
  private async removeUnnamed(options: { now: number; graceMs: number; only?: 'replaced'; all?: boolean; dryRun?: boolean }): Promise<{ files: number; bytes: number }> {
    const removed = { files: 0, bytes: 0 };
    const names = await readdir(this.dir).catch(() => [] as string[]);
    const marked = new Set(names.filter((n) => n.endsWith(REPLACED_SUFFIX)).map((n) => n.slice(0, -REPLACED_SUFFIX.length)));
    // A marker whose layer is gone (removed by an older prune) goes.
    if (!options.dryRun) for (const image of marked) if (!names.includes(image)) await rm(join(this.dir, `${image}${REPLACED_SUFFIX}`), { force: true });
    const candidates = names.filter((n) => LAYER_IMAGE.test(n) && (options.only !== 'replaced' || marked.has(n)));
    if (!candidates.length) return removed;
    const usable = async () => {
      const named = await this.namedImages();
      return named.complete || options.all ? named.names : undefined;
    };
    const named = await usable();
    if (!named) return removed;
    const due: { image: string; bytes: number }[] = [];
    for (const image of candidates) {
      if (named.has(image)) continue;
      const path = join(this.dir, image);
      const info = await lstat(path).catch(() => undefined);
      if (!info?.isFile()) continue;
      const marker = marked.has(image) ? await lstat(`${path}${REPLACED_SUFFIX}`).catch(() => undefined) : undefined;
      const dated = Math.max(options.only === 'replaced' ? 0 : info.mtimeMs, marker?.mtimeMs ?? 0);
      if (!options.all && options.now - dated < options.graceMs) continue;
      due.push({ image, bytes: info.blocks * 512 });
    }
    if (!due.length) return removed;
    const namedNow = await usable();
    const open = options.all ? new Set<string>() : await openFilePaths().catch(() => undefined);
    if (!namedNow || !open) return removed;
    // The kernel names an open file by its real path: the directory's, links resolved (the files are not links).
    const realDir = await realpath(this.dir);
    for (const { image, bytes } of due) {
      const path = join(this.dir, image);
      if (namedNow.has(image) || open.has(join(realDir, image))) continue;
      if (!options.dryRun) {
        await rm(path, { force: true });
        await rm(`${path}${REPLACED_SUFFIX}`, { force: true });
      }
      removed.files += 1;
      removed.bytes += bytes;
    }
    return removed;
  }

  /**
   * The layers a step run again (--refresh) replaced, a day after: every build with the cache does this beside
   * its work, so each refresh does not leave its step's old layer (~0.2 GB for a package install) until
   * `cache prune`. A day, not minutes: a build of another container sharing the cache may still read one, and
   * its processes are not seen from here.
   */
  removeReplacedLayers(now = Date.now()): Promise<{ files: number; bytes: number }> {
    return this.removeUnnamed({ now, graceMs: REPLACED_GRACE_MS, only: 'replaced' });
  }

  /** For `cache prune`: every layer file no record names (a killed build's, a replaced one) past the grace. */
  removeOrphans(options: { now?: number; all?: boolean; dryRun?: boolean } = {}): Promise<{ files: number; bytes: number }> {
    return this.removeUnnamed({ now: options.now ?? Date.now(), graceMs: ORPHAN_GRACE_MS, all: options.all, dryRun: options.dryRun });
  }

  /** Every complete layer (the files no record names: removeOrphans). */
  async list(): Promise<{ records: ListedLayer[] }> {
    const names = await readdir(this.dir).catch(() => [] as string[]);
    const records = [];
    for (const name of names.filter((n) => n.endsWith('.json'))) {
      const record = await this.read(name.slice(0, -'.json'.length));
      if (!record) continue;
      const info = await lstat(this.recordPath(record.key));
      const image = record.image ? await lstat(join(this.dir, record.image)) : undefined;
      records.push({ ...record, lastUsedAt: info.mtime.toISOString(), diskBytes: (image?.blocks ?? 0) * 512 });
    }
    return { records: records.sort((a, b) => Date.parse(b.lastUsedAt) - Date.parse(a.lastUsedAt)) };
  }

  /** Removes a layer and every layer above it (their backing chains would be broken). */
  async remove(key: string): Promise<string[]> {
    const { records } = await this.list();
    const doomed = new Set([key]);
    for (let grew = true; grew; ) {
      grew = false;
      for (const record of records) {
        if (record.parent && doomed.has(record.parent) && !doomed.has(record.key)) {
          doomed.add(record.key);
          grew = true;
        }
      }
    }
    for (const record of records.filter((r) => doomed.has(r.key))) {
      await rm(this.recordPath(record.key), { force: true });
      if (record.image) await rm(join(this.dir, record.image), { force: true });
    }
    return [...doomed];
  }
}

const ORPHAN_GRACE_MS = 15 * 60 * 1000;
const REPLACED_GRACE_MS = 24 * 3600 * 1000;
/** What newImage names a layer file: only those are ever removed as unnamed. */
const LAYER_IMAGE = /^layer-[0-9a-f]{12}\.qcow2$/;
const REPLACED_SUFFIX = '.replaced';

export type ListedLayer = LayerRecord & { lastUsedAt: string; diskBytes: number };

/**
 * Removes layers, least recently used first: all, those unused for `olderThanMs`, then until the rest takes at
 * most `maxSizeBytes`. A layer goes with every layer above it. Layer files no record names (left by a build that
 * was killed, or replaced by a step run again) go too: all with --all, else those past the grace that no
 * process has open (removeOrphans).
 */
export async function pruneLayers(
  store: LayerStore,
  options: { all?: boolean; olderThanMs?: number; maxSizeBytes?: number; dryRun?: boolean; now?: number },
): Promise<{ removed: ListedLayer[]; kept: ListedLayer[]; freedBytes: number; orphans: { files: number; bytes: number } }> {
  const now = options.now ?? Date.now();
  const { records } = await store.list();
  const doomed = new Set<string>();
  const above = (key: string): string[] => [key, ...records.filter((r) => r.parent === key).flatMap((r) => above(r.key))];
  for (const record of records) {
    if (options.all || (options.olderThanMs !== undefined && now - Date.parse(record.lastUsedAt) > options.olderThanMs)) above(record.key).forEach((k) => doomed.add(k));
  }
  if (options.maxSizeBytes !== undefined) {
    const size = () => records.filter((r) => !doomed.has(r.key)).reduce((sum, r) => sum + r.diskBytes, 0);
    for (const record of [...records].reverse()) {
      if (size() <= options.maxSizeBytes) break;
      above(record.key).forEach((k) => doomed.add(k));
    }
  }
  const removed = records.filter((r) => doomed.has(r.key));
  if (!options.dryRun) for (const record of removed) await store.remove(record.key);
  const orphans = await store.removeOrphans({ now, all: options.all, dryRun: options.dryRun });
  return { removed, kept: records.filter((r) => !doomed.has(r.key)), freedBytes: removed.reduce((sum, r) => sum + r.diskBytes, 0), orphans };
}
