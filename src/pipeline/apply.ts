import { rename, rm, writeFile } from 'node:fs/promises';
import { basename, dirname, extname, join, resolve } from 'node:path';
import { comparePackages, listKernels, type Bom, type BomStep } from '../bom/collect.js';
import { openChroot } from '../chroot/session.js';
import { sha256File } from '../fetch/checksums.js';
import type { MountBackendName, MountContext } from '../mount/backend.js';
import { loadRecipe, type RecipeInputs } from '../recipe/load.js';
import { whenMismatch } from '../recipe/when.js';
import { CleanupStack } from '../util/cleanup.js';
import { ImageBuilderError } from '../util/errors.js';
import { execRunner, type Runner } from '../util/exec.js';
import { createLogger, type Logger } from '../util/log.js';
import { throwIfAborted } from '../util/signals.js';
import { TOOL_VERSION } from '../version.js';
import { artifactPaths, FORMAT_EXTENSIONS, trimFilesystems, updateSumsFile, writeOutputImage, type SparsifyMode } from './output.js';
import { convertImage, type ImageFormat } from '../image/qemu-img.js';
import { listUnitStates } from '../bom/inventory.js';
import { buildTime, writeBomIntoImage } from '../bom/in-image.js';
import { verifyImage, type DiskImageOptions, type VerifiedImage } from './verify.js';
import { createRecorder } from '../steps/types.js';
import { createWorkDir } from './workdir.js';
import { cycloneDxFromBom } from '../bom/cyclonedx.js';
import { spdxFromBom } from '../bom/spdx.js';
import { openGuest } from './guest.js';
import { watchInitramfs } from '../distro/initramfs.js';
import { relabelGuest } from '../distro/selinux.js';

export interface ApplyOptions {
  recipe: string;
  /** Variable values: `--vars FILE` and `--set name=value`. */
  recipeInputs?: RecipeInputs;
  /** A local path or an http(s) URL. */
  diskImage: string;
  /** How phase 0 verifies and caches it (--checksum, --keyring, --offline, --insecure-skip-verify). */
  image?: DiskImageOptions;
  /** Default: `<image name>-<recipe name>.<ext>` in the current directory. */
  output?: string;
  mountBackend?: MountBackendName | 'auto';
  sparsify?: SparsifyMode;
  /** Output formats, the first at `output` and the rest beside it (default: the input's format). */
  formats?: ImageFormat[];
  /** Compress qcow2 outputs. */
  compress?: boolean;
  /** Standard SBOMs written beside the native BOM: `<output>.cdx.json`, `<output>.spdx.json` (default: both). */
  sbom?: SbomFormat[];
  keepWorkDir?: boolean;
  /** Parent of the work directory (default $IMAGEBUILDER_WORK_DIR or the system temp dir). */
  workDir?: string;
  log?: Logger;
  run?: Runner;
  signal?: AbortSignal;
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

export function defaultOutputPath(input: VerifiedImage, recipeName: string): string {
  // Named after the image as published (a URL's image lives in the cache under its sha256).
  const stem = basename(input.name, extname(input.name));
  return resolve(`${stem}-${recipeName}.${FORMAT_EXTENSIONS[input.format]}`);
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

/**
 * The whole build, phases 0 → 1 → 2, as one flat pipeline: verify, overlay, mount, run the steps in a chroot,
 * unmount, write the output and its BOM. Every resource is released on success, failure and interruption.
 */
export async function apply(options: ApplyOptions): Promise<ApplyResult> {
  const log = options.log ?? createLogger();
  const run = options.run ?? execRunner;
  const { signal } = options;
  const sparsify = options.sparsify ?? 'virt-sparsify';
  const clock = stopwatch();

  const recipe = await loadRecipe(options.recipe, options.recipeInputs);
  const input = await clock.time('verify', () => verifyImage(run, options.diskImage, log, signal, options.image));
  const outputPath = options.output ? resolve(options.output) : defaultOutputPath(input, recipe.name);
  if (outputPath === input.path) {
    throw new ImageBuilderError('BAD_INPUT', 'the output path is the input image', { hint: 'the input is never modified: choose another --output' });
  }
  const formats = options.formats?.length ? [...new Set(options.formats)] : [input.format];
  const artifactPathsList = artifactPaths(outputPath, formats);
  if (artifactPathsList.includes(input.path)) {
    throw new ImageBuilderError('BAD_INPUT', 'an output path is the input image', { hint: 'the input is never modified: choose another --output' });
  }
  const bomPath = `${outputPath}.bom.json`;

  const cleanup = new CleanupStack(log);
  try {
    const workDir = await createWorkDir(cleanup, log, { parent: options.workDir, keep: options.keepWorkDir });

    // Everything inside the guest lives on its own stack, released before the output is written.
    const guest = new CleanupStack(log);
    cleanup.push('guest', async () => void (await guest.unwind()));
    const mountContext: MountContext = { run, log, cleanup: guest, signal, workDir };
    const { backend, layout, overlay, distro } = await clock.time('mount', () => openGuest(mountContext, input, { backend: options.mountBackend ?? 'auto' }));
    throwIfAborted(signal);

    log.info(`guest: ${distro.prettyName ?? distro.id} (family ${distro.family?.name ?? 'unknown'})`);
    const manager = distro.family?.packageManager;
    const packagesBefore = manager ? await manager.listInstalled(layout.root) : [];
    const architecture = manager ? await manager.architecture(layout.root) : undefined;

    const initramfs = await watchInitramfs(layout.root);
    const session = await openChroot(layout.root, { run, log, signal, sessionFiles: distro.family?.sessionFiles });
    guest.push('chroot session', () => session.close());

    const steps: BomStep[] = [];
    const records = createRecorder();
    await clock.time('steps', async () => {
      for (const step of recipe.steps) {
        throwIfAborted(signal);
        const description = step.type.describe(step.spec);
        const label = `step ${step.index + 1}/${recipe.steps.length} (${step.name ?? description})`;
        const skipped = whenMismatch(step.when, distro, architecture);
        if (skipped) {
          log.info(`${label}: skipped (${skipped})`);
          steps.push({ index: step.index, name: step.name, type: step.type.key, description, durationMs: 0, skipped });
          continue;
        }
        log.info(`${label}: ${step.type.key} at ${step.location}`);
        const t0 = Date.now();
        await step.type.run({ session, distro, log, signal, recipeDir: step.dir, variables: recipe.variables, label, record: records.recorder, architecture }, step.spec);
        await session.sweep();
        const durationMs = Date.now() - t0;
        steps.push({ index: step.index, name: step.name, type: step.type.key, description, durationMs });
        log.info(`${label} done in ${(durationMs / 1000).toFixed(1)}s`);
      }
    });
    steps.push(...(await clock.time('initramfs', () => initramfs.regenerate(session, { log, signal, index: steps.length }))));
    await guest.releaseNow('chroot session');

    const packagesAfter = manager ? await manager.listInstalled(layout.root) : [];
    const { packages, removed } = comparePackages(packagesBefore, packagesAfter);
    const kernels = await listKernels(layout.root);
    const unitStates = await listUnitStates(layout.root);
    const createdAt = buildTime();
    // The image carries its own BOM, so a running node can say what it is made of.
    await writeBomIntoImage(layout.root, {
      bomVersion: 1,
      tool: { name: 'imagebuilder', version: TOOL_VERSION },
      createdAt: createdAt.toISOString(),
      note: 'written into the image before its output existed: the output sha256 is in the BOM beside the image',
      input: { ...(input.url ? { url: input.url } : {}), name: input.name, format: input.format, sha256: input.sha256, verified: input.verified },
      recipe: { name: recipe.name, sha256: recipe.sha256, variables: recipe.variables, includes: recipe.includes },
      os: { id: distro.id, versionId: distro.versionId, prettyName: distro.prettyName },
      architecture,
      kernels,
      packages,
      removedPackages: removed,
      files: records.files,
      unitStates,
      containerImages: records.images,
      steps: steps.map(({ durationMs: _, ...step }) => step),
    }, createdAt);
    // After the last write into the guest (the BOM above): every file gets its SELinux label.
    steps.push(...(await clock.time('selinux-relabel', () => relabelGuest({ run, log, signal, layout, index: steps.length }))));

    if (sparsify === 'fstrim') {
      if (backend.name === 'guestmount') log.warn('fstrim cannot reach the disk through guestmount; the output is converted without it');
      else await clock.time('fstrim', () => trimFilesystems(run, layout.mounts, log));
    }
    const releaseFailures = await clock.time('unmount', () => guest.unwind());
    if (releaseFailures.length) {
      // A filesystem that did not unmount cleanly may hold unwritten data: no output from it.
      throw new ImageBuilderError('COMMAND_FAILED', `releasing the guest failed: ${releaseFailures.join('; ')}`, { hint: 'nothing was written; run the build again' });
    }
    throwIfAborted(signal);

    // Artifacts appear under their names only when all are complete.
    const partials = artifactPathsList.map((path) => join(dirname(path), `.${basename(path)}.partial-${process.pid}`));
    for (const partial of partials) cleanup.push(`partial output ${partial}`, () => rm(partial, { force: true }));
    log.info(`writing ${formats.join(', ')} output (sparsify: ${sparsify})`);
    await clock.time('output', async () => {
      await writeOutputImage(run, overlay, partials[0], formats[0], sparsify, { log, signal, workDir, compress: options.compress });
      // The others from the first: already flattened and sparse.
      for (let i = 1; i < formats.length; i++) await convertImage(run, partials[0], partials[i], formats[i], { log, signal, compress: options.compress });
    });
    const artifacts: Artifact[] = [];
    for (const [i, path] of artifactPathsList.entries()) artifacts.push({ path, format: formats[i], sha256: await sha256File(partials[i], signal) });
    clock.total();

    const bom: Bom = {
      bomVersion: 1,
      tool: { name: 'imagebuilder', version: TOOL_VERSION },
      createdAt: createdAt.toISOString(),
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
      output: { ...artifacts[0], sparsify, ...(options.compress ? { compressed: true } : {}) },
      artifacts,
      recipe: { path: resolve(recipe.path), name: recipe.name, sha256: recipe.sha256, variables: recipe.variables, includes: recipe.includes },
      os: { id: distro.id, versionId: distro.versionId, prettyName: distro.prettyName, osRelease: distro.osRelease },
      architecture,
      kernels,
      packages,
      removedPackages: removed,
      files: records.files,
      units: records.units,
      unitStates,
      containerImages: records.images,
      steps,
      mountBackend: backend.name,
      durationsMs: clock.durations,
      warnings: [...log.warnings],
    };
    const bomPartial = `${partials[0]}.bom.json`;
    cleanup.push(`partial BOM ${bomPartial}`, () => rm(bomPartial, { force: true }));
    await writeFile(bomPartial, `${JSON.stringify(bom, null, 2)}\n`);
    const sboms = [...new Set(options.sbom ?? SBOM_FORMATS)].map((format) => ({
      path: `${outputPath}.${SBOM_SUFFIXES[format]}`,
      partial: `${partials[0]}.${SBOM_SUFFIXES[format]}`,
      document: format === 'cyclonedx' ? cycloneDxFromBom(bom) : spdxFromBom(bom),
    }));
    for (const sbom of sboms) {
      cleanup.push(`partial SBOM ${sbom.partial}`, () => rm(sbom.partial, { force: true }));
      await writeFile(sbom.partial, `${JSON.stringify(sbom.document, null, 2)}\n`);
    }
    throwIfAborted(signal);
    for (const [i, partial] of partials.entries()) await rename(partial, artifactPathsList[i]);
    await rename(bomPartial, bomPath);
    for (const sbom of sboms) await rename(sbom.partial, sbom.path);
    const sumsPath = await updateSumsFile(dirname(outputPath), [
      ...artifacts.map((a) => ({ name: basename(a.path), sha256: a.sha256 })),
      { name: basename(bomPath), sha256: await sha256File(bomPath) },
      ...(await Promise.all(sboms.map(async (sbom) => ({ name: basename(sbom.path), sha256: await sha256File(sbom.path) })))),
    ]);
    for (const artifact of artifacts) log.info(`wrote ${artifact.path} (${artifact.format}, sha256 ${artifact.sha256})`);
    log.info(`wrote ${[bomPath, ...sboms.map((s) => s.path)].join(', ')} and ${sumsPath}`);
    return { output: artifacts[0], artifacts, bomPath, sbomPaths: sboms.map((s) => s.path), sumsPath, bom };
  } finally {
    await cleanup.unwind();
  }
}
