import { rename, writeFile } from 'node:fs/promises';
import { basename, dirname, extname, join, resolve } from 'node:path';
import type { Bom } from '../bom/collect.js';
import { spdxFromBom } from '../bom/spdx.js';
import { sha256File } from '../util/digest.js';
import { renameOver } from '../util/fs.js';
import type { ImageFormat } from '../image/qemu-img.js';
import { writeRootfsTar } from '../image/rootfs-tar.js';
import { ImageBuilderError } from '../util/errors.js';
import { throwIfAborted } from '../util/signals.js';
import type { BuildContext } from './context.js';
import type { OpenedGuest } from './guest.js';
import { isDiskImageFormat, type OutputFormat } from '../image/formats.js';
import { artifactPaths, FORMAT_EXTENSIONS, sparsifyInPlace, sparsifyNatively, trimFilesystems, updateSumsFile, writeImageArtifacts, type SparsifyMode } from './output.js';
import type { Phase1Bom } from './phase1.js';
import { checkOutputDirectory, stagedPath } from './staging.js';

/**
 * Phase 2: the finished guest becomes the artifacts — trimmed, unmounted, converted to each output format
 * (sparsified), with the BOM, its CycloneDX and SPDX renderings and SHA256SUMS beside them. Shared by
 * `apply` and `export`.
 */

/** How phase 2 writes the artifacts: shared by `apply` and `export`. */
export interface ArtifactOptions {
  /** Default: `<image name>-<recipe name>.<ext>` in the current directory. */
  output?: string;
  sparsify?: SparsifyMode;
  /**
   * Output formats, the first at `output` and the rest beside it (default: the input's format). `tar` is the
   * guest's root filesystem as a tarball; `ova` an OVF package, `gce` GCE's disk.raw tarball.
   */
  formats?: OutputFormat[];
  /** Compress qcow2 outputs. */
  compress?: boolean;
  /** Standard SBOMs written beside the native BOM: `<output>.cdx.json`, `<output>.spdx.json` (default: both). */
  sbom?: SbomFormat[];
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

/** The guest at the end of phase 1 (or read back from a work image): what phase 2 turns into artifacts. */
export interface FinishedGuest {
  bom: Phase1Bom;
  opened: OpenedGuest;
  /** The top of the work image's chain. */
  workImage: string;
}

/** Where the artifacts go when --output does not say, and what they may not overwrite. */
export interface OutputDefaults {
  defaultOutput: string;
  defaultFormat: ImageFormat;
  /** Paths no artifact may take: the input, which is never modified. */
  forbidden: string[];
}

export interface OutputPlan {
  outputPath: string;
  formats: OutputFormat[];
  paths: string[];
}

export function defaultOutputPath(input: { name: string; format: ImageFormat }, recipeName: string, suffix = ''): string {
  // Named after the image as published (a URL's image lives in the cache under its sha256).
  const stem = basename(input.name, extname(input.name));
  return resolve(`${stem}-${recipeName}${suffix}.${FORMAT_EXTENSIONS[input.format]}`);
}

/** Where each artifact goes; made before the build starts, so a bad --output fails before any work. */
export function planOutputs(options: ArtifactOptions, defaults: OutputDefaults): OutputPlan {
  const formats = options.formats?.length ? [...new Set(options.formats)] : [defaults.defaultFormat];
  // The default name takes the first format's extension (node.tar for --format tar).
  const outputPath = options.output ? resolve(options.output) : defaults.defaultOutput.replace(/\.[^./]+$/, `.${FORMAT_EXTENSIONS[formats[0]]}`);
  const paths = artifactPaths(outputPath, formats);
  if (paths.some((path) => defaults.forbidden.includes(path))) {
    throw new ImageBuilderError('BAD_INPUT', 'an output path is the input image', { hint: 'the input is never modified: choose another --output' });
  }
  checkOutputDirectory(dirname(outputPath));
  return { outputPath, formats, paths };
}

/** Unmounts the guest; a filesystem that did not unmount cleanly may hold unwritten data, so nothing is written from it. */
export async function releaseGuest(context: BuildContext): Promise<void> {
  const failures = await context.clock.time('unmount', () => context.guest.unwind());
  if (failures.length) {
    throw new ImageBuilderError('COMMAND_FAILED', `releasing the guest failed: ${failures.join('; ')}`, { hint: 'nothing was written; run the build again' });
  }
}

/**
 * Proves a written output before it takes its name (`apply --test`): the image at `path` (a partial) booted
 * and checked; throws when a check fails, and then no artifact appears.
 */
export type ProveOutput = (context: BuildContext, image: { path: string; format: ImageFormat }) => Promise<NonNullable<Bom['test']>>;

/**
 * Phase 2 on a mounted, finished guest: trim, unmount, then the artifacts (proven by `prove` when given), the
 * BOM, the SBOMs and SHA256SUMS.
 */
export async function writeArtifacts(context: BuildContext, guest: FinishedGuest, plan: OutputPlan, options: ArtifactOptions, prove?: ProveOutput): Promise<ApplyResult> {
  const { clock, log, run, signal, events, workDir } = context;
  const { opened } = guest;
  const { outputPath, formats, paths } = plan;
  const sparsify = options.sparsify ?? 'auto';
  const bomPath = `${outputPath}.bom.json`;
  events({ event: 'phase-started', phase: 2 });
  const sbomFormats = [...new Set(options.sbom ?? SBOM_FORMATS)];

  // auto: natively what can be (fstrim, swap made again); the appliance only for what this host did not mount.
  let forAppliance: string[] = [];
  if (sparsify === 'fstrim' || sparsify === 'auto') {
    if (opened.backend.name === 'guestmount') {
      if (sparsify === 'fstrim') log.warn('fstrim cannot reach the disk through guestmount; the output is converted without it');
      else forAppliance = ['every filesystem (the guestmount backend gives no block device to trim)'];
    } else {
      await clock.time('fstrim', () => trimFilesystems(run, opened.layout.mounts, log));
      if (sparsify === 'auto') forAppliance = await clock.time('sparsify', () => sparsifyNatively(run, opened.layout, log));
    }
  }
  // Artifacts appear under their names only when all are complete.
  const partials: string[] = [];
  for (const path of paths) partials.push(await stagedPath(context, path));
  // The root filesystem tarball, from the guest's filesystems as mounted (the chroot session is closed).
  if (formats.includes('tar')) await clock.time('tar', () => writeRootfsTar(opened.layout.root, partials[formats.indexOf('tar')], { run, log, signal, guestMounts: opened.layout.mounts.map((m) => m.hostPath) }));
  await releaseGuest(context);
  throwIfAborted(signal);

  if (forAppliance.length) {
    log.info(`sparsify: virt-sparsify --in-place for what this host did not mount: ${forAppliance.join(', ')}`);
    await clock.time('virt-sparsify', () => sparsifyInPlace(run, guest.workImage, { log, signal, workDir, cacheDir: context.cacheDir }));
  }
  log.info(`writing ${formats.join(', ')} output (sparsify: ${sparsify})`);
  const outputs = formats.map((format, i) => ({ format, partial: partials[i], path: paths[i] }));
  const about = { os: guest.bom.os, architecture: guest.bom.architecture, createdAt: guest.bom.createdAt ? new Date(guest.bom.createdAt) : new Date() };
  const writing = clock.time('output', () => writeImageArtifacts(run, guest.workImage, outputs, sparsify, { log, signal, workDir, cacheDir: context.cacheDir, compress: options.compress, guest: about }));
  // The CycloneDX library, ~70 ms of compiling on this thread, loads once qemu-img is converting the output
  // (started above): earlier, it held up the guest's release, each of whose commands waits on this thread.
  // Awaited only when the SBOM is written (a failed load fails that, as it would have).
  const cycloneDx = sbomFormats.includes('cyclonedx') ? import('../bom/cyclonedx.js') : undefined;
  cycloneDx?.catch(() => undefined);
  await writing;
  const artifacts: Artifact[] = [];
  await clock.time('hash', async () => {
    for (const [i, path] of paths.entries()) artifacts.push({ path, format: formats[i], sha256: await sha256File(partials[i], signal) });
  });
  // Booted: the first disk image (tar, ova and gce are archives; apply refuses --test without a disk image).
  const diskIndex = formats.findIndex(isDiskImageFormat);
  const test = prove && diskIndex >= 0 ? await clock.time('test', () => prove(context, { path: partials[diskIndex], format: formats[diskIndex] as ImageFormat })) : undefined;
  clock.total();

  const bom: Bom = {
    ...guest.bom,
    output: { ...artifacts[0], sparsify, ...(options.compress ? { compressed: true } : {}) },
    artifacts,
    ...(test ? { test } : {}),
    durationsMs: { ...guest.bom.durationsMs, ...clock.durations },
    warnings: [...guest.bom.warnings, ...log.warnings],
  };
  const bomPartial = `${partials[0]}.bom.json`;
  await writeFile(bomPartial, `${JSON.stringify(orderedBom(bom), null, 2)}\n`);
  const sboms = [];
  for (const format of sbomFormats) {
    const sbom = {
      path: `${outputPath}.${SBOM_SUFFIXES[format]}`,
      partial: `${partials[0]}.${SBOM_SUFFIXES[format]}`,
      document: format === 'cyclonedx' ? (await cycloneDx!).cycloneDxFromBom(bom) : spdxFromBom(bom),
    };
    await writeFile(sbom.partial, `${JSON.stringify(sbom.document, null, 2)}\n`);
    sboms.push(sbom);
  }
  // Every sum from what we wrote, while it is still in our own directory; then the renames.
  const sums = [
    ...artifacts.map((a) => ({ name: basename(a.path), sha256: a.sha256 })),
    { name: basename(bomPath), sha256: await sha256File(bomPartial) },
    ...(await Promise.all(sboms.map(async (sbom) => ({ name: basename(sbom.path), sha256: await sha256File(sbom.partial) })))),
  ];
  throwIfAborted(signal);
  for (const [i, partial] of partials.entries()) await renameOver(partial, paths[i]);
  await rename(bomPartial, bomPath);
  for (const sbom of sboms) await rename(sbom.partial, sbom.path);
  const sumsPath = await updateSumsFile(dirname(outputPath), sums, log);
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
