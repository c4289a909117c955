import { lstat, realpath, stat, writeFile } from 'node:fs/promises';
import { basename, dirname, extname, join, resolve } from 'node:path';
import { buildTime, IN_IMAGE_BOM_PATH, WORK_RECORD_PATH, writeBomIntoImage } from '../bom/in-image.js';
import { detectDistro } from '../distro/families.js';
import { readOsRelease } from '../distro/os-release.js';
import { sha256File } from '../util/digest.js';
import { othersMayRename, readRegularFile, renameOver } from '../util/fs.js';
import { convertImage, probeInputImage, type ImageFormat } from '../image/qemu-img.js';
import { isDiskImageFormat } from '../image/formats.js';
import type { MountBackendName } from '../mount/backend.js';
import { loadRecipe, type Recipe, type RecipeInputs } from '../recipe/load.js';
import { errorMessage, ImageBuilderError } from '../util/errors.js';
import { resolveGrow } from '../util/size.js';
import { GUEST_READ_LIMITS, readGuestText, removeGuestFile, writeGuestFileFromHost } from '../util/guest-fs.js';
import { TOOL_VERSION } from '../version.js';
import type { SandboxLimits } from '../chroot/sandbox.js';
import { relabelGuest } from '../distro/selinux.js';
import { packageCacheDir } from '../pkg/package-cache.js';
import { openBundle, pathInBundle, type OpenedBundle } from '../bundle/open.js';
import { BUNDLE_MANIFEST } from '../bundle/manifest.js';
import { mountContext, startBuild, withResources, type BuildContext, type BuildOptions, type BuildStart } from './context.js';
import { mountGuest, type OpenedGuest } from './guest.js';
import { LayerStore, layerStoreDir } from './layers.js';
import { FORMAT_EXTENSIONS } from './output.js';
import { runPhase1, type Phase1Bom } from './phase1.js';
import { readWorkRecord } from './work-record.js';
import { defaultOutputPath, planOutputs, releaseGuest, writeArtifacts, type ApplyResult, type ArtifactOptions, type FinishedGuest } from './phase2.js';
import { checkOutputDirectory, stagedPath } from './staging.js';
import { checkResultsDir } from '../util/lock.js';
import { proveOutput, type OutputTest } from './test.js';
import { verifyForBuild, type DiskImageOptions, type VerifiedImage } from './verify.js';

export { SBOM_FORMATS, defaultOutputPath, type ApplyResult, type Artifact, type ArtifactOptions, type SbomFormat } from './phase2.js';
export type { BuildOptions } from './context.js';

export interface GuestBuildOptions extends BuildOptions {
  mountBackend?: MountBackendName | 'auto';
}

export interface ApplyOptions extends ArtifactOptions, GuestBuildOptions {
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
  /** --allow-network: the private networks guest commands may reach (an internal mirror or proxy); the rest are refused. */
  allowNetworks?: string[];
  /** --grow SIZE (or +SIZE): the virtual disk and the root filesystem grown before the steps; over the recipe's disk.size. */
  grow?: string;
  /** --test: boot the output and judge its checks before it takes its name (results in `<output>.test/` by default). */
  test?: OutputTest;
  /**
   * --bundle: an air-gapped bundle (directory or .tar, from `imagebuilder bundle`). The base image, downloads and
   * packages come from it alone and guest commands have no network; the step and package caches are not used.
   */
  bundle?: string;
}

export interface WorkImageResult {
  /** A standalone qcow2 holding the guest after phase 1, and what `export` needs to finish it. */
  workImage: string;
  bom: Phase1Bom;
}

/** Where a kept work directory says how to resume it. */
const RESUME_FILE = 'resume.json';

/**
 * What a kept work directory says to resume from, believed only of a directory that is ours and no one else's
 * (as a build makes it: 0700, in a parent no one else may swap it in), read without following links, and naming
 * as its layer store only the cache's or a kept work directory's `layers/` (its own, or the one it resumed from)
 * that passes the same checks: layers are replayed into the guest and their store written, so a work directory
 * another user could write, or one pointing elsewhere, would choose both.
 */
async function readResumeNote(dir: string, cacheDir: string): Promise<{ store: string; baseSha256: string }> {
  const refuse = (why: string) =>
    new ImageBuilderError('BAD_INPUT', `refusing to resume from ${dir}: ${why}`, { hint: 'resume only from a work directory a failed `imagebuilder apply --keep-work-dir` of this user printed, where it left it; or build without --resume' });
  const problem = await keptWorkDirProblem(dir);
  if (problem) throw refuse(problem);
  let text: Buffer | undefined;
  try {
    text = await readRegularFile(join(dir, RESUME_FILE), { follow: false, maxBytes: 64 << 10 });
  } catch (error) {
    throw refuse(`its ${RESUME_FILE} cannot be read: ${errorMessage(error)}`);
  }
  const note = ((): { store: string; baseSha256: string } | undefined => {
    try {
      const parsed = JSON.parse(text?.toString('utf8') ?? 'null') as { store?: unknown; baseSha256?: unknown } | null;
      return typeof parsed?.store === 'string' && typeof parsed.baseSha256 === 'string' ? { store: parsed.store, baseSha256: parsed.baseSha256 } : undefined;
    } catch {
      return undefined;
    }
  })();
  if (!note) {
    throw new ImageBuilderError('BAD_INPUT', `${dir} is not a work directory kept by a failed build (no ${RESUME_FILE})`, {
      hint: 'a failed `imagebuilder apply --keep-work-dir` prints the directory to resume from',
    });
  }
  // The cache's layers, or a kept work directory's own (this one's, or the one it resumed from in turn).
  const store = await realpath(note.store).catch(() => undefined);
  const cacheLayers = await realpath(layerStoreDir(cacheDir)).catch(() => undefined);
  const keptLayers = async (path: string) =>
    basename(path) === 'layers' && !(await keptWorkDirProblem(dirname(path))) && (await lstat(join(dirname(path), RESUME_FILE)).catch(() => undefined))?.isFile() === true;
  if (!store || (store !== cacheLayers && !(await keptLayers(store)))) throw refuse(`its ${RESUME_FILE} names ${note.store} as its layer store, which is neither a kept work directory's layers/ nor the cache's`);
  return { store, baseSha256: note.baseSha256 };
}

/** Why `dir` is not a work directory of ours alone, as a build makes it, if it is not. */
async function keptWorkDirProblem(dir: string): Promise<string | undefined> {
  const uid = process.geteuid?.() ?? 0;
  const info = await lstat(dir).catch(() => undefined);
  if (!info) return 'it does not exist';
  if (!info.isDirectory()) return info.isSymbolicLink() ? 'it is a symbolic link' : 'it is not a directory';
  if (info.uid !== uid) return `it belongs to uid ${info.uid}, not to this user (uid ${uid})`;
  if ((info.mode & 0o077) !== 0) return `others may enter or write it (mode ${(info.mode & 0o7777).toString(8)}; a build makes it 0700)`;
  const parent = dirname(resolve(dir));
  if (othersMayRename((await stat(parent)).mode)) return `its parent ${parent} is writable by every user without the sticky bit`;
  return undefined;
}

/** Where phase 1's layers live: a resumed work dir's store, the shared cache, or (kept for --resume) the work dir. */
async function layerStoreFor(context: BuildContext, options: ApplyOptions, input: VerifiedImage): Promise<LayerStore | undefined> {
  if (options.resume) {
    const note = await readResumeNote(options.resume, context.cacheDir);
    if (note.baseSha256 !== input.sha256) {
      throw new ImageBuilderError('BAD_INPUT', `${options.resume} was a build of another base image (sha256 ${note.baseSha256.slice(0, 12)}…, this one is ${input.sha256.slice(0, 12)}…)`, {
        hint: 'resume with the same --disk-image, or build without --resume',
      });
    }
    return new LayerStore(note.store);
  }
  if (options.cache !== false && !options.bundle) return new LayerStore(layerStoreDir(context.cacheDir));
  return options.keepWorkDir ? new LayerStore(join(context.workDir, 'layers')) : undefined;
}

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
    ...(bom.components ? { components: bom.components } : {}),
    ...(bom.offline ? { offline: bom.offline } : {}),
    steps: bom.steps.map(({ durationMs: _, cached: __, ...step }) => step),
  };
}

/** Phase 0: the base image verified (and cached, for a URL). Without the step cache no cache is trusted: the base is hashed anew too. */
export async function verifyBase(start: BuildStart, options: ApplyOptions): Promise<VerifiedImage> {
  start.events({ event: 'phase-started', phase: 0 });
  const imageOptions = { ...options.image, rehash: options.image?.rehash || options.cache === false };
  return start.clock.time('verify', () => verifyForBuild(start, options.diskImage, imageOptions));
}

/** The disk size to grow to (--grow over the recipe's disk.size), or undefined: the input's size is kept. */
function growTarget(recipe: Recipe, input: VerifiedImage, options: ApplyOptions): number | undefined {
  if (options.grow !== undefined) return resolveGrow(options.grow, input.virtualSize);
  const size = recipe.disk?.size;
  return size === undefined ? undefined : resolveGrow(size, input.virtualSize, `${recipe.path}: disk.size`);
}

/** Phase 1: the guest mounted over the input (or over the longest cached prefix of the steps), the steps run. */
async function runSteps(context: BuildContext, recipe: Recipe, input: VerifiedImage, options: ApplyOptions, bundle?: OpenedBundle): Promise<FinishedGuest> {
  const store = await layerStoreFor(context, options, input);
  context.events({ event: 'phase-started', phase: 1 });
  try {
    const { bom, opened, workImage } = await runPhase1(recipe, input, context, {
      mountBackend: options.mountBackend ?? 'auto',
      store,
      refresh: options.refresh,
      shellOnFailure: options.shellOnFailure,
      fetchTimeouts: options.image?.timeouts,
      limits: options.limits,
      hostPorts: options.hostPorts,
      allowNetworks: options.allowNetworks,
      growTo: growTarget(recipe, input, options),
      // Shared by builds, like the step cache, and bypassed with it (--no-cache) or by a bundle (which is the cache).
      ...(options.cache !== false && !bundle ? { packageCacheDir: packageCacheDir(context.cacheDir) } : {}),
      ...(bundle ? offlineFrom(bundle) : {}),
    });
    if (!bundle) return { bom: { ...bom, recipe: { ...bom.recipe, path: resolve(recipe.path) } }, opened, workImage };
    // The base as the bundle holds it (an archive is unpacked into this build's work directory, which goes away).
    const bundledInput = { ...bom.input, path: pathInBundle(bundle, bundle.manifest.base.path), checksumSource: bundleBaseSumSource(bundle) };
    const offline = { bundle: bundle.sha256, network: 'none' as const, trust: bundle.packages?.repository.rpm ? BUNDLE_TRUST_RPM : BUNDLE_TRUST_APT };
    return { bom: { ...bom, input: bundledInput, recipe: { ...bom.recipe, path: resolve(recipe.path) }, offline }, opened, workImage };
  } catch (error) {
    if (options.keepWorkDir && store) {
      await writeFile(join(context.workDir, RESUME_FILE), `${JSON.stringify({ store: store.dir, baseSha256: input.sha256, recipe: resolve(recipe.path) }, null, 2)}\n`);
      context.log.info(`the layers of the steps that succeeded are kept; fix the recipe, then: imagebuilder apply ${options.recipe} --disk-image ${options.diskImage} --resume ${context.workDir}`);
    }
    throw error;
  }
}

/** What the BOM says of how an offline build trusted its packages. */
const BUNDLE_TRUST_APT = "the bundle's bundle.json verified (every file's sha256); apt read the bundle's repository as [trusted=yes], its only source, checking each .deb against the index the bundle carries (copied from the guest's signed lists when the bundle was made)";
const BUNDLE_TRUST_RPM =
  "the bundle's bundle.json verified (every file's sha256); the package manager read the bundle's rpm-md repositories (their metadata unsigned, repo_gpgcheck=0) " +
  "instead of the guest's, checking each .rpm against the metadata entry the bundle carries (copied from the guest's repository metadata when the bundle was made) " +
  'and its signature against the keys the guest trusts (dnf: gpgcheck as the guest configured each repository; zypper: pkg_gpgcheck=1)';

/** Phase 1's options for a build from a bundle: its downloads, its repository bound into each session, no network. */
function offlineFrom(bundle: OpenedBundle) {
  return {
    downloads: bundle.downloads,
    hostFiles: bundle.hostFiles,
    packageBundle: bundle.packages ? { serve: bundle.packages.repository } : undefined,
    offline: { readOnlyBinds: bundle.packages ? [{ host: bundle.packages.hostDir, guest: bundle.packages.guestDir }] : [] },
  };
}

/** The last writes into the guest: its own BOM (so a running node can say what it is made of), then SELinux labels for every file. */
async function finishGuest(context: BuildContext, guest: FinishedGuest): Promise<FinishedGuest> {
  const createdAt = buildTime();
  const bom: Phase1Bom = { ...guest.bom, createdAt: createdAt.toISOString() };
  await writeBomIntoImage(guest.opened.layout.root, inImageBom(bom), createdAt);
  bom.steps.push(...(await context.clock.time('selinux-relabel', () => relabelGuest({ run: context.run, log: context.log, signal: context.signal, layout: guest.opened.layout, index: bom.steps.length }))));
  return { ...guest, bom };
}

/** The outputs that are archives, not disk images qemu boots, as --test's refusal names them. */
const ARCHIVES = { tar: 'a root filesystem tarball', ova: 'an OVA package', gce: 'a GCE image tarball' };

/**
 * The whole build, phases 0 → 1 → 2 (mkosi's build_image): load the recipe, verify the base, plan the outputs
 * (a bad --output fails before any work), run the steps on the mounted guest, finish the guest, write the
 * artifacts. Every resource is released on success, failure and interruption.
 */
export async function apply(options: ApplyOptions): Promise<ApplyResult> {
  const start = startBuild(options);
  const recipe = await loadRecipe(options.recipe, options.recipeInputs);
  const planFor = (input: VerifiedImage) => {
    const plan = planOutputs(options, { defaultOutput: defaultOutputPath(input, recipe.name), defaultFormat: input.format, forbidden: [input.path] });
    if (options.test && !plan.formats.some(isDiskImageFormat)) {
      const archives = plan.formats.map((format) => ARCHIVES[format as keyof typeof ARCHIVES]);
      throw new ImageBuilderError('BAD_INPUT', `--test boots the output, and ${archives.join(' and ')} alone ${archives.length > 1 ? 'do' : 'does'} not boot`, { hint: `add a disk image format to boot (--format qcow2,${plan.formats.join(',')})` });
    }
    const resultsDir = options.test ? resolve(options.test.resultsDir ?? `${plan.outputPath}.test`) : undefined;
    if (resultsDir) checkResultsDir(resultsDir);
    const prove = options.test ? proveOutput(recipe, input, { ...options.test, resultsDir: resultsDir! }) : undefined;
    return { plan, prove };
  };
  const build = async (context: BuildContext, input: VerifiedImage, planned: ReturnType<typeof planFor>, bundle?: OpenedBundle) => {
    const built = await runSteps(context, recipe, input, options, bundle);
    const finished = await finishGuest(context, built);
    return writeArtifacts(context, finished, planned.plan, options, planned.prove);
  };
  if (options.bundle) {
    // The bundle is opened (an archive unpacked) inside the build's work directory, and verified before phase 0.
    const bundlePath = options.bundle;
    return withResources(start, options, async (context) => {
      const bundle = await openBundle(bundlePath, context.workDir, context.log);
      if (bundle.manifest.recipe.sha256 !== recipe.sha256) {
        context.log.warn(`the recipe is not the one the bundle was made for (${bundle.manifest.recipe.path}, sha256 ${bundle.manifest.recipe.sha256.slice(0, 12)}…): what it needs beyond the bundle will fail, named`);
      }
      // Verified against the sum bundle.json records, which the bundle's check covered: nothing beside it is read.
      const expected = { algorithm: 'sha256' as const, hash: bundle.manifest.base.sha256, source: bundleBaseSumSource(bundle) };
      const input = await verifyBase(start, { ...options, diskImage: bundle.baseImage, image: { ...options.image, expected } });
      return build(context, input, planFor(input), bundle);
    });
  }
  const input = await verifyBase(start, options);
  const planned = planFor(input);
  return withResources(start, options, (context) => build(context, input, planned));
}

/** What vouches for a bundle's base: the sum its bundle.json records (which the bundle's check covered). */
const bundleBaseSumSource = (bundle: OpenedBundle) => `${pathInBundle(bundle, BUNDLE_MANIFEST)} (${bundle.manifest.base.path})`;

/** Where `apply --phases 0,1` writes its work image; never over the input. */
function workImageTarget(options: ApplyOptions, input: VerifiedImage, recipe: Recipe): string {
  const target = options.output ? resolve(options.output) : defaultOutputPath({ name: input.name, format: 'qcow2' }, recipe.name, '.work');
  if (target === input.path) throw new ImageBuilderError('BAD_INPUT', 'the work image path is the input image', { hint: 'the input is never modified: choose another --output' });
  checkOutputDirectory(dirname(target));
  return target;
}

/** The finished guest as a standalone qcow2 that records inside itself what phase 1 did. */
async function writeWorkImage(context: BuildContext, guest: FinishedGuest, target: string): Promise<WorkImageResult> {
  const { clock, log, run } = context;
  const record = { ...guest.bom, durationsMs: clock.durations, warnings: [...log.warnings] };
  await writeGuestFileFromHost(guest.opened.layout.root, WORK_RECORD_PATH, `${JSON.stringify(record, null, 2)}\n`, { mode: 0o644 });
  await releaseGuest(context);
  const partial = await stagedPath(context, target);
  await clock.time('output', () => convertImage(run, guest.workImage, partial, 'qcow2', { log, signal: context.signal }));
  await renameOver(partial, target);
  log.info(`wrote the work image ${target}: finish it with imagebuilder export ${target}`);
  context.events({ event: 'artifact-written', path: target, format: 'qcow2', sha256: await sha256File(target) });
  return { workImage: target, bom: record };
}

/**
 * Phases 0 and 1 only (`apply --phases 0,1`): the guest after the recipe, as a standalone qcow2 work image that
 * records inside itself what phase 1 did, so `export` can finish it later (or elsewhere).
 */
export async function prepareWorkImage(options: ApplyOptions): Promise<WorkImageResult> {
  const start = startBuild(options);
  const recipe = await loadRecipe(options.recipe, options.recipeInputs);
  const input = await verifyBase(start, options);
  const target = workImageTarget(options, input, recipe);
  return withResources(start, options, async (context) => {
    const built = await runSteps(context, recipe, input, options);
    const finished = await finishGuest(context, built);
    return writeWorkImage(context, finished, target);
  });
}

export interface ExportOptions extends ArtifactOptions, GuestBuildOptions {
  /** A work image written by `apply --phases 0,1`. */
  workImage: string;
}

/** Before any work: the work image is a standalone qcow2 (a missing file or another format is said plainly). */
async function checkWorkImage(start: BuildStart, path: string): Promise<string> {
  const workImage = resolve(path);
  const info = await probeInputImage(start.run, workImage, start.log);
  if (info.format !== 'qcow2') {
    throw new ImageBuilderError('BAD_INPUT', `${workImage} is not a work image: a ${info.format} image`, {
      hint: 'make one with imagebuilder apply RECIPE --disk-image IMAGE --phases 0,1 (a standalone qcow2)',
    });
  }
  return workImage;
}

/** A work image mounted through an overlay (it is only read), its record read and removed from the guest. */
async function openWorkImage(context: BuildContext, workImage: string, options: ExportOptions): Promise<FinishedGuest> {
  const overlay = join(context.workDir, 'work.qcow2');
  await context.run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', workImage, '-F', 'qcow2', overlay], { log: context.log, purpose: 'creating the export overlay' });
  const mounted = await context.clock.time('mount', () => mountGuest(mountContext(context), options.mountBackend ?? 'auto', overlay));
  const text = await readGuestText(mounted.layout.root, WORK_RECORD_PATH, GUEST_READ_LIMITS.packageStatus);
  if (!text) {
    throw new ImageBuilderError('BAD_INPUT', `${workImage} is not a work image: it has no ${WORK_RECORD_PATH}`, {
      hint: 'make one with imagebuilder apply RECIPE --disk-image IMAGE --phases 0,1',
    });
  }
  const bom = parseWorkRecord(workImage, text);
  // The record and the image must agree: the packages the guest's own database lists are those the record lists
  // (a work image changed after phase 1, or given another's record, would pass its claims on to the BOM).
  const osRelease = await readOsRelease(mounted.layout.root);
  const manager = osRelease ? detectDistro(osRelease).family?.packageManager : undefined;
  if (manager) {
    const key = (p: { name: string; version: string; architecture: string }) => `${p.name} ${p.version} ${p.architecture}`;
    const installed = new Set((await manager.listInstalled(mounted.layout.root, context.log)).map(key));
    const recorded = new Set(bom.packages.map(key));
    const differ = [...[...installed].filter((p) => !recorded.has(p)).map((p) => `${p} (installed, not recorded)`), ...[...recorded].filter((p) => !installed.has(p)).map((p) => `${p} (recorded, not installed)`)];
    if (differ.length) {
      throw new ImageBuilderError('BAD_INPUT', `${workImage}: its work record does not describe it: ${differ.length} package(s) differ, ${differ.slice(0, 5).join(', ')}${differ.length > 5 ? ' …' : ''}`, {
        hint: 'the work image was changed after `apply --phases 0,1` wrote it, or its record is another\'s: make it again',
      });
    }
  }
  await removeGuestFile(mounted.layout.root, WORK_RECORD_PATH);
  const opened: OpenedGuest = { ...mounted, overlay, distro: { id: bom.os.id ?? '', osRelease: bom.os.osRelease } };
  return { bom: { ...bom, tool: { name: 'imagebuilder', version: TOOL_VERSION } }, opened, workImage: overlay };
}

/** A work image's record, read as the hostile data it may be: JSON of the shape apply --phases 0,1 writes, or a clear refusal. */
function parseWorkRecord(workImage: string, text: string): Phase1Bom {
  const read = readWorkRecord(text);
  if ('record' in read) return read.record;
  throw new ImageBuilderError('BAD_INPUT', `${workImage}: its work record (${WORK_RECORD_PATH}) ${read.problem}`, {
    hint: 'the work image is damaged, or not one imagebuilder wrote: make it again with imagebuilder apply RECIPE --disk-image IMAGE --phases 0,1',
  });
}

/**
 * Phase 2 alone: a work image from `apply --phases 0,1` becomes the final artifacts, exactly as `apply` would have
 * written them. The work image is only read (its record is removed in an overlay over it).
 */
export async function exportWorkImage(options: ExportOptions): Promise<ApplyResult> {
  const start = startBuild(options);
  const workImage = await checkWorkImage(start, options.workImage);
  return withResources(start, options, async (context) => {
    const guest = await openWorkImage(context, workImage, options);
    const inputFormat = guest.bom.input.format as ImageFormat;
    const stem = basename(workImage, extname(workImage)).replace(/\.work$/, '');
    const plan = planOutputs(options, { defaultOutput: resolve(`${stem}.${FORMAT_EXTENSIONS[inputFormat]}`), defaultFormat: inputFormat, forbidden: [workImage, guest.bom.input.path] });
    return writeArtifacts(context, guest, plan, options);
  });
}

export { IN_IMAGE_BOM_PATH, WORK_RECORD_PATH };
