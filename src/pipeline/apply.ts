import { readFile, rename, rm, writeFile } from 'node:fs/promises';
import { basename, dirname, extname, join, resolve } from 'node:path';
import type { Bom } from '../bom/collect.js';
import { cycloneDxFromBom } from '../bom/cyclonedx.js';
import { buildTime, IN_IMAGE_BOM_PATH, WORK_RECORD_PATH, writeBomIntoImage } from '../bom/in-image.js';
import { spdxFromBom } from '../bom/spdx.js';
import { sha256File } from '../util/digest.js';
import { convertImage, probeInputImage, type ImageFormat } from '../image/qemu-img.js';
import type { MountBackendName, MountContext } from '../mount/backend.js';
import { loadRecipe, type RecipeInputs } from '../recipe/load.js';
import { noteHolding } from '../util/build-record.js';
import { CleanupStack } from '../util/cleanup.js';
import { ImageBuilderError } from '../util/errors.js';
import { execRunner, type Runner } from '../util/exec.js';
import { GUEST_READ_LIMITS, readGuestText, removeGuestFile, writeGuestFileFromHost } from '../util/guest-fs.js';
import { createLogger, type Logger } from '../util/log.js';
import { throwIfAborted } from '../util/signals.js';
import { TOOL_VERSION } from '../version.js';
import { ignoreEvents, type EventSink } from './events.js';
import { mountGuest, type OpenedGuest } from './guest.js';
import { defaultLayerStore, LayerStore } from './layers.js';
import { artifactPaths, FORMAT_EXTENSIONS, trimFilesystems, updateSumsFile, writeImageArtifacts, type OutputFormat, type SparsifyMode } from './output.js';
import { writeRootfsTar } from '../image/rootfs-tar.js';
import { sourceDateEpoch } from '../util/time.js';
import { runPhase1, type Phase1Bom } from './phase1.js';
import type { SandboxLimits } from '../chroot/sandbox.js';
import { relabelGuest } from '../distro/selinux.js';
import { verifyImage, type DiskImageOptions, type VerifiedImage } from './verify.js';
import { createWorkDir } from './workdir.js';

/** How phase 2 writes the artifacts: shared by `apply` and `export`. */
export interface ArtifactOptions {
  /** Default: `<image name>-<recipe name>.<ext>` in the current directory. */
  output?: string;
  sparsify?: SparsifyMode;
  /**
   * Output formats, the first at `output` and the rest beside it (default: the input's format). `tar` is the
   * guest's root filesystem as a tarball; with no disk-image format, no image is written.
   */
  formats?: OutputFormat[];
  /** Compress qcow2 outputs. */
  compress?: boolean;
  /** Standard SBOMs written beside the native BOM: `<output>.cdx.json`, `<output>.spdx.json` (default: both). */
  sbom?: SbomFormat[];
}

export interface BuildOptions {
  mountBackend?: MountBackendName | 'auto';
  keepWorkDir?: boolean;
  /** Parent of the work directory (default $IMAGEBUILDER_WORK_DIR or the system temp dir). */
  workDir?: string;
  log?: Logger;
  run?: Runner;
  signal?: AbortSignal;
  /** Machine-readable progress (--json). */
  onEvent?: EventSink;
}

export interface ApplyOptions extends ArtifactOptions, BuildOptions {
  recipe: string;
  /** Variable values: `--vars FILE` and `--set name=value`. */
  recipeInputs?: RecipeInputs;
  /** A local path or an http(s) URL. */
  diskImage: string;
  /** How phase 0 verifies and caches it (--checksum, --keyring, --offline, --insecure-skip-verify). */
  image?: DiskImageOptions;
  /** The step cache (default: on, in the cache directory). */
  cache?: boolean;
  /** Steps (numbers from 1, or names) whose cached results are not reused: they and all after run again. */
  refresh?: string[];
  /** A work directory kept by a failed build (--keep-work-dir): its layers are reused. */
  resume?: string;
  /** On a failed step, an interactive shell inside the guest before everything is released. */
  shellOnFailure?: boolean;
  /** --memory-limit and --pids-limit of the build's guest commands (over the recipe's limits). */
  limits?: Partial<SandboxLimits>;
  /** --host-port: the host loopback ports guest commands may reach (a mirror served on this host). */
  hostPorts?: number[];
}

export const SBOM_FORMATS = ['cyclonedx', 'spdx'] as const;
export type SbomFormat = (typeof SBOM_FORMATS)[number];
const SBOM_SUFFIXES: Record<SbomFormat, string> = { cyclonedx: 'cdx.json', spdx: 'spdx.json' };

export interface Artifact {
  path: string;
  format: string;
  sha256: string;
}

export interface ApplyResult {
  /** The first artifact. */
  output: Artifact;
  artifacts: Artifact[];
  bomPath: string;
  /** The CycloneDX and SPDX renderings of the BOM written beside it (--sbom). */
  sbomPaths: string[];
  /** The SHA256SUMS beside the artifacts, listing them and the BOM. */
  sumsPath: string;
  bom: Bom;
}

export interface WorkImageResult {
  /** A standalone qcow2 holding the guest after phase 1, and what `export` needs to finish it. */
  workImage: string;
  bom: Phase1Bom;
}


/** Where a kept work directory says how to resume it. */
const RESUME_FILE = 'resume.json';

export function defaultOutputPath(input: { name: string; format: ImageFormat }, recipeName: string, suffix = ''): string {
  // Named after the image as published (a URL's image lives in the cache under its sha256).
  const stem = basename(input.name, extname(input.name));
  return resolve(`${stem}-${recipeName}${suffix}.${FORMAT_EXTENSIONS[input.format]}`);
}

/** Measures stages for the BOM: each stage's wall time in milliseconds. */
function stopwatch() {
  const durations: Record<string, number> = {};
  const started = Date.now();
  return {
    durations,
    async time<T>(stage: string, body: () => Promise<T>): Promise<T> {
      const t0 = Date.now();
      try {
        return await body();
      } finally {
        durations[stage] = (durations[stage] ?? 0) + Date.now() - t0;
      }
    },
    total: () => (durations.total = Date.now() - started),
  };
}
type Stopwatch = ReturnType<typeof stopwatch>;

/** The BOM a running node finds inside itself: no host paths, and no output sha256 (it did not exist yet). */
function inImageBom(bom: Phase1Bom) {
  const { path: _inputPath, ...input } = bom.input;
  const { path: _recipePath, ...recipe } = bom.recipe;
  return {
    bomVersion: 1,
    tool: bom.tool,
    createdAt: bom.createdAt,
    note: 'written into the image before its output existed: the output sha256 is in the BOM beside the image',
    input,
    recipe,
    os: { id: bom.os.id, versionId: bom.os.versionId, prettyName: bom.os.prettyName },
    architecture: bom.architecture,
    kernels: bom.kernels,
    packages: bom.packages,
    removedPackages: bom.removedPackages,
    files: bom.files,
    unitStates: bom.unitStates,
    containerImages: bom.containerImages,
    steps: bom.steps.map(({ durationMs: _, cached: __, ...step }) => step),
  };
}

/** Where phase 1's layers live: a resumed work dir's store, the shared cache, or (kept for --resume) the work dir. */
async function layerStoreFor(options: ApplyOptions, workDir: string, input: VerifiedImage): Promise<LayerStore | undefined> {
  if (options.resume) {
    const text = await readFile(join(options.resume, RESUME_FILE), 'utf8').catch(() => 'null');
    const note = ((): { store: string; baseSha256: string } | undefined => {
      try {
        const parsed = JSON.parse(text) as { store?: unknown; baseSha256?: unknown } | null;
        return typeof parsed?.store === 'string' && typeof parsed.baseSha256 === 'string' ? { store: parsed.store, baseSha256: parsed.baseSha256 } : undefined;
      } catch {
        return undefined;
      }
    })();
    if (!note) {
      throw new ImageBuilderError('BAD_INPUT', `${options.resume} is not a work directory kept by a failed build (no ${RESUME_FILE})`, {
        hint: 'a failed `imagebuilder apply --keep-work-dir` prints the directory to resume from',
      });
    }
    if (note.baseSha256 !== input.sha256) {
      throw new ImageBuilderError('BAD_INPUT', `${options.resume} was a build of another base image (sha256 ${note.baseSha256.slice(0, 12)}…, this one is ${input.sha256.slice(0, 12)}…)`, {
        hint: 'resume with the same --disk-image, or build without --resume',
      });
    }
    return new LayerStore(note.store);
  }
  if (options.cache !== false) return new LayerStore(defaultLayerStore());
  return options.keepWorkDir ? new LayerStore(join(workDir, 'layers')) : undefined;
}

/**
 * Phase 1 with its set-up: verify (phase 0), a work dir, the guest mounted over the input (or over the longest
 * cached prefix of the recipe's steps), the steps run, and the BOM written into the guest. `finish` then does
 * what the caller wants with the mounted guest and the work image; everything is released afterwards.
 */
async function build<T>(
  options: ApplyOptions,
  preflight: (input: VerifiedImage, recipeName: string) => void,
  finish: (state: { bom: Phase1Bom; opened: OpenedGuest; workImage: string; input: VerifiedImage; guest: CleanupStack; cleanup: CleanupStack; workDir: string; clock: Stopwatch; log: Logger; run: Runner; recipeName: string }) => Promise<T>,
): Promise<T> {
  const log = options.log ?? createLogger();
  const run = options.run ?? execRunner;
  const { signal } = options;
  const events = options.onEvent ?? ignoreEvents;
  const clock = stopwatch();
  sourceDateEpoch(); // a malformed SOURCE_DATE_EPOCH fails here, before any work

  const recipe = await loadRecipe(options.recipe, options.recipeInputs);
  events({ event: 'phase-started', phase: 0 });
  // Without the step cache (library callers, matrix builds) no cache is trusted: the base is hashed anew too.
  const imageOptions = { ...options.image, rehash: options.image?.rehash || options.cache === false };
  const input = await clock.time('verify', () => verifyImage(run, options.diskImage, log, signal, imageOptions));
  preflight(input, recipe.name);

  const cleanup = new CleanupStack(log);
  try {
    const workDir = await createWorkDir(cleanup, log, { parent: options.workDir, keep: options.keepWorkDir });
    const store = await layerStoreFor(options, workDir, input);
    // Unfinished layers are removed after the guest that writes them is released.
    const files = new CleanupStack(log);
    cleanup.push('unfinished layers', async () => void (await files.unwind()));
    const guest = new CleanupStack(log);
    cleanup.push('guest', async () => void (await guest.unwind()));

    events({ event: 'phase-started', phase: 1 });
    let phase1;
    try {
      phase1 = await runPhase1(recipe, input, {
        run, log, signal, workDir, guest, files, events, time: clock.time,
        mountBackend: options.mountBackend ?? 'auto',
        store,
        refresh: options.refresh,
        shellOnFailure: options.shellOnFailure,
        fetchTimeouts: options.image?.timeouts,
        limits: options.limits,
        hostPorts: options.hostPorts,
      });
    } catch (error) {
      if (options.keepWorkDir && store) {
        await writeFile(join(workDir, RESUME_FILE), `${JSON.stringify({ store: store.dir, baseSha256: input.sha256, recipe: resolve(recipe.path) }, null, 2)}\n`);
        log.info(`the layers of the steps that succeeded are kept; fix the recipe, then: imagebuilder apply ${options.recipe} --disk-image ${options.diskImage} --resume ${workDir}`);
      }
      throw error;
    }
    const createdAt = buildTime();
    const bom: Phase1Bom = { ...phase1.bom, createdAt: createdAt.toISOString(), recipe: { ...phase1.bom.recipe, path: resolve(recipe.path) } };
    // The image carries its own BOM, so a running node can say what it is made of.
    await writeBomIntoImage(phase1.opened.layout.root, inImageBom(bom), createdAt);
    // After the last write into the guest (the BOM above): every file gets its SELinux label.
    bom.steps.push(...(await clock.time('selinux-relabel', () => relabelGuest({ run, log, signal, layout: phase1.opened.layout, index: bom.steps.length }))));
    return await finish({ bom, opened: phase1.opened, workImage: phase1.workImage, input, guest, cleanup, workDir, clock, log, run, recipeName: recipe.name });
  } finally {
    await cleanup.unwind();
  }
}

/** Unmounts the guest; a filesystem that did not unmount cleanly may hold unwritten data, so nothing is written from it. */
async function releaseGuest(guest: CleanupStack, clock: Stopwatch): Promise<void> {
  const failures = await clock.time('unmount', () => guest.unwind());
  if (failures.length) {
    throw new ImageBuilderError('COMMAND_FAILED', `releasing the guest failed: ${failures.join('; ')}`, { hint: 'nothing was written; run the build again' });
  }
}

interface OutputPlan {
  defaultOutput: string;
  defaultFormat: ImageFormat;
  /** Paths no artifact may take: the input, which is never modified. */
  forbidden: string[];
}

/** Where each artifact goes; checked before the build starts, so a bad --output fails before any work. */
function planOutputs(options: ArtifactOptions & OutputPlan) {
  const formats = options.formats?.length ? [...new Set(options.formats)] : [options.defaultFormat];
  // The default name takes the first format's extension (node.tar for --format tar).
  const outputPath = options.output ? resolve(options.output) : options.defaultOutput.replace(/\.[^./]+$/, `.${FORMAT_EXTENSIONS[formats[0]]}`);
  const paths = artifactPaths(outputPath, formats);
  if (paths.some((path) => options.forbidden.includes(path))) {
    throw new ImageBuilderError('BAD_INPUT', 'an output path is the input image', { hint: 'the input is never modified: choose another --output' });
  }
  return { outputPath, formats, paths };
}

/** Phase 2 on a mounted, finished guest: trim, unmount, then the artifacts, the BOM, the SBOMs and SHA256SUMS. */
async function writeArtifacts(
  state: { bom: Phase1Bom; opened: OpenedGuest; workImage: string; guest: CleanupStack; cleanup: CleanupStack; workDir: string; clock: Stopwatch; log: Logger; run: Runner },
  options: ArtifactOptions & OutputPlan & { signal?: AbortSignal; onEvent?: EventSink },
): Promise<ApplyResult> {
  const { opened, clock, log, run, cleanup, workDir } = state;
  const { signal } = options;
  const events = options.onEvent ?? ignoreEvents;
  const sparsify = options.sparsify ?? 'virt-sparsify';
  const { outputPath, formats, paths } = planOutputs(options);
  const bomPath = `${outputPath}.bom.json`;
  events({ event: 'phase-started', phase: 2 });

  if (sparsify === 'fstrim') {
    if (opened.backend.name === 'guestmount') log.warn('fstrim cannot reach the disk through guestmount; the output is converted without it');
    else await clock.time('fstrim', () => trimFilesystems(run, opened.layout.mounts, log));
  }
  // Artifacts appear under their names only when all are complete.
  const partials = paths.map((path) => join(dirname(path), `.${basename(path)}.partial-${process.pid}`));
  for (const partial of partials) {
    // Outside the work directory: noted in the build's record, so a build killed while writing leaves no partial.
    await noteHolding(workDir, { kind: 'file', path: partial });
    cleanup.push(`partial output ${partial}`, () => rm(partial, { force: true }));
  }
  // The root filesystem tarball, from the guest's filesystems as mounted (the chroot session is closed).
  if (formats.includes('tar')) await clock.time('tar', () => writeRootfsTar(opened.layout.root, partials[formats.indexOf('tar')], { run, log, signal, guestMounts: opened.layout.mounts.map((m) => m.hostPath) }));
  await releaseGuest(state.guest, clock);
  throwIfAborted(signal);

  log.info(`writing ${formats.join(', ')} output (sparsify: ${sparsify})`);
  const outputs = formats.map((format, i) => ({ format, partial: partials[i] }));
  await clock.time('output', () => writeImageArtifacts(run, state.workImage, outputs, sparsify, { log, signal, workDir, compress: options.compress }));
  const artifacts: Artifact[] = [];
  for (const [i, path] of paths.entries()) artifacts.push({ path, format: formats[i], sha256: await sha256File(partials[i], signal) });
  clock.total();

  const bom: Bom = {
    ...state.bom,
    output: { ...artifacts[0], sparsify, ...(options.compress ? { compressed: true } : {}) },
    artifacts,
    durationsMs: { ...state.bom.durationsMs, ...clock.durations },
    warnings: [...state.bom.warnings, ...log.warnings],
  };
  const bomPartial = `${partials[0]}.bom.json`;
  await noteHolding(workDir, { kind: 'file', path: bomPartial });
  cleanup.push(`partial BOM ${bomPartial}`, () => rm(bomPartial, { force: true }));
  await writeFile(bomPartial, `${JSON.stringify(orderedBom(bom), null, 2)}\n`);
  const sboms = [...new Set(options.sbom ?? SBOM_FORMATS)].map((format) => ({
    path: `${outputPath}.${SBOM_SUFFIXES[format]}`,
    partial: `${partials[0]}.${SBOM_SUFFIXES[format]}`,
    document: format === 'cyclonedx' ? cycloneDxFromBom(bom) : spdxFromBom(bom),
  }));
  for (const sbom of sboms) {
    await noteHolding(workDir, { kind: 'file', path: sbom.partial });
    cleanup.push(`partial SBOM ${sbom.partial}`, () => rm(sbom.partial, { force: true }));
    await writeFile(sbom.partial, `${JSON.stringify(sbom.document, null, 2)}\n`);
  }
  throwIfAborted(signal);
  for (const [i, partial] of partials.entries()) await rename(partial, paths[i]);
  await rename(bomPartial, bomPath);
  for (const sbom of sboms) await rename(sbom.partial, sbom.path);
  const sumsPath = await updateSumsFile(dirname(outputPath), [
    ...artifacts.map((a) => ({ name: basename(a.path), sha256: a.sha256 })),
    { name: basename(bomPath), sha256: await sha256File(bomPath) },
    ...(await Promise.all(sboms.map(async (sbom) => ({ name: basename(sbom.path), sha256: await sha256File(sbom.path) })))),
  ]);
  for (const artifact of artifacts) {
    log.info(`wrote ${artifact.path} (${artifact.format}, sha256 ${artifact.sha256})`);
    events({ event: 'artifact-written', ...artifact });
  }
  log.info(`wrote ${[bomPath, ...sboms.map((s) => s.path)].join(', ')} and ${sumsPath}`);
  return { output: artifacts[0], artifacts, bomPath, sbomPaths: sboms.map((s) => s.path), sumsPath, bom };
}

/** The BOM's keys in the documented order (output and artifacts after the input), whatever order it was built in. */
function orderedBom(bom: Bom): Bom {
  const { bomVersion, tool, createdAt, input, output, artifacts, ...rest } = bom;
  return { bomVersion, tool, createdAt, input, output, artifacts, ...rest } as Bom;
}

/**
 * The whole build, phases 0 → 1 → 2, as one flat pipeline: verify, overlay (over cached layers when the recipe's
 * first steps were built before), mount, run the steps in a chroot, unmount, write the output and its BOM.
 * Every resource is released on success, failure and interruption.
 */
export async function apply(options: ApplyOptions): Promise<ApplyResult> {
  const plan = (input: VerifiedImage, recipeName: string): OutputPlan => ({ defaultOutput: defaultOutputPath(input, recipeName), defaultFormat: input.format, forbidden: [input.path] });
  return build(
    options,
    (input, recipeName) => void planOutputs({ ...options, ...plan(input, recipeName) }),
    (state) => writeArtifacts(state, { ...options, ...plan(state.input, state.recipeName) }),
  );
}

/**
 * Phases 0 and 1 only (`apply --phases 0,1`): the guest after the recipe, as a standalone qcow2 work image that
 * records inside itself what phase 1 did, so `export` can finish it later (or elsewhere).
 */
export async function prepareWorkImage(options: ApplyOptions): Promise<WorkImageResult> {
  const targetFor = (input: VerifiedImage, recipeName: string) => {
    const target = options.output ? resolve(options.output) : defaultOutputPath({ name: input.name, format: 'qcow2' }, recipeName, '.work');
    if (target === input.path) throw new ImageBuilderError('BAD_INPUT', 'the work image path is the input image', { hint: 'the input is never modified: choose another --output' });
    return target;
  };
  return build(options, (input, recipeName) => void targetFor(input, recipeName), async ({ bom, opened, workImage, input, guest, cleanup, workDir, clock, log, run, recipeName }) => {
    const target = targetFor(input, recipeName);
    const record = { ...bom, durationsMs: clock.durations, warnings: [...log.warnings] };
    await writeGuestFileFromHost(opened.layout.root, WORK_RECORD_PATH, `${JSON.stringify(record, null, 2)}\n`, { mode: 0o644 });
    await releaseGuest(guest, clock);
    const partial = join(dirname(target), `.${basename(target)}.partial-${process.pid}`);
    await noteHolding(workDir, { kind: 'file', path: partial });
    cleanup.push(`partial work image ${partial}`, () => rm(partial, { force: true }));
    await clock.time('output', () => convertImage(run, workImage, partial, 'qcow2', { log, signal: options.signal }));
    await rename(partial, target);
    log.info(`wrote the work image ${target}: finish it with imagebuilder export ${target}`);
    options.onEvent?.({ event: 'artifact-written', path: target, format: 'qcow2', sha256: await sha256File(target) });
    return { workImage: target, bom: record };
  });
}

export interface ExportOptions extends ArtifactOptions, BuildOptions {
  /** A work image written by `apply --phases 0,1`. */
  workImage: string;
}

/**
 * Phase 2 alone: a work image from `apply --phases 0,1` becomes the final artifacts, exactly as `apply` would have
 * written them. The work image is only read (its record is removed in an overlay over it).
 */
export async function exportWorkImage(options: ExportOptions): Promise<ApplyResult> {
  const log = options.log ?? createLogger();
  const run = options.run ?? execRunner;
  const clock = stopwatch();
  const workImage = resolve(options.workImage);
  // Before any work: the work image is a standalone qcow2 (a missing file or another format is said plainly).
  const info = await probeInputImage(run, workImage, log);
  if (info.format !== 'qcow2') {
    throw new ImageBuilderError('BAD_INPUT', `${workImage} is not a work image: a ${info.format} image`, {
      hint: 'make one with imagebuilder apply RECIPE --disk-image IMAGE --phases 0,1 (a standalone qcow2)',
    });
  }
  const cleanup = new CleanupStack(log);
  try {
    const workDir = await createWorkDir(cleanup, log, { parent: options.workDir, keep: options.keepWorkDir });
    const guest = new CleanupStack(log);
    cleanup.push('guest', async () => void (await guest.unwind()));
    const overlay = join(workDir, 'work.qcow2');
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', workImage, '-F', 'qcow2', overlay], { log, purpose: 'creating the export overlay' });
    const context: MountContext = { run, log, cleanup: guest, signal: options.signal, workDir };
    const mounted = await clock.time('mount', () => mountGuest(context, options.mountBackend ?? 'auto', overlay));
    const text = await readGuestText(mounted.layout.root, WORK_RECORD_PATH, GUEST_READ_LIMITS.packageStatus);
    if (!text) {
      throw new ImageBuilderError('BAD_INPUT', `${workImage} is not a work image: it has no ${WORK_RECORD_PATH}`, {
        hint: 'make one with imagebuilder apply RECIPE --disk-image IMAGE --phases 0,1',
      });
    }
    const bom = JSON.parse(text) as Phase1Bom;
    if (bom.bomVersion !== 1) throw new ImageBuilderError('BAD_INPUT', `${workImage}: unknown work record version ${String(bom.bomVersion)}`);
    await removeGuestFile(mounted.layout.root, WORK_RECORD_PATH);
    const opened: OpenedGuest = { ...mounted, overlay, distro: { id: bom.os.id ?? '', osRelease: bom.os.osRelease } };
    const inputFormat = bom.input.format as ImageFormat;
    const stem = basename(workImage, extname(workImage)).replace(/\.work$/, '');
    return await writeArtifacts(
      { bom: { ...bom, tool: { name: 'imagebuilder', version: TOOL_VERSION } }, opened, workImage: overlay, guest, cleanup, workDir, clock, log, run },
      { ...options, defaultOutput: resolve(`${stem}.${FORMAT_EXTENSIONS[inputFormat]}`), defaultFormat: inputFormat, forbidden: [workImage, bom.input.path] },
    );
  } finally {
    await cleanup.unwind();
  }
}

export { IN_IMAGE_BOM_PATH, WORK_RECORD_PATH };
