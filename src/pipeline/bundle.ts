import { lstat, mkdir, rename } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { BundleCollector } from '../bundle/collect.js';
import { manifestText, type BundleManifest } from '../bundle/manifest.js';
import { sha256Text } from '../util/digest.js';
import { renameOver, writeFileAtomic } from '../util/fs.js';
import { packBundle } from '../bundle/open.js';
import { loadRecipe } from '../recipe/load.js';
import { ImageBuilderError } from '../util/errors.js';
import { verifyBase, type ApplyOptions } from './apply.js';
import { startBuild, withResources } from './context.js';
import { checkOutputDirectory, stagedPath } from './staging.js';
import { runPhase1 } from './phase1.js';
import { releaseGuest } from './phase2.js';

export const BUNDLE_FORMATS = ['dir', 'tar'] as const;
export type BundleFormat = (typeof BUNDLE_FORMATS)[number];

export interface BundleOptions extends Pick<ApplyOptions, 'recipe' | 'recipeInputs' | 'diskImage' | 'image' | 'mountBackend' | 'limits' | 'hostPorts' | 'allowNetworks' | 'log' | 'run' | 'signal' | 'onEvent' | 'workDir' | 'cacheDir' | 'runDir'> {
  /** The bundle directory to write, or with format tar the archive (its sha256 beside it, `<output>.sha256`). */
  output: string;
  format?: BundleFormat;
}

export interface BundleResult {
  path: string;
  format: BundleFormat;
  /** sha256 of bundle.json: what an offline build's BOM names. */
  manifestSha256: string;
  /** With format tar: the archive's sha256 (also in `<path>.sha256`). */
  archiveSha256?: string;
  manifest: BundleManifest;
}

/**
 * `imagebuilder bundle`: on a connected host, everything a build of this recipe on this base needs, gathered so
 * that `apply --bundle` needs nothing else. The recipe runs for real on a throw-away copy of the verified base (no
 * step cache, no package cache: every package is fetched, as the guest's own manager resolves it step after
 * step); what the steps download and what the package manager fetches is kept as it arrives, then the base
 * image, the repositories of those packages (apt's, or rpm-md) and bundle.json are written. No image is written.
 */
export async function makeBundle(options: BundleOptions): Promise<BundleResult> {
  const start = startBuild(options);
  const format = options.format ?? 'dir';
  const recipe = await loadRecipe(options.recipe, options.recipeInputs);
  const target = resolve(options.output);
  checkOutputDirectory(dirname(target));
  if (await lstat(target).then(() => true, () => false)) {
    throw new ImageBuilderError('BAD_INPUT', `${target} exists`, { hint: 'a bundle is written whole and never over anything: choose another --output or remove it' });
  }
  const input = await verifyBase(start, { ...options, cache: false });
  return withResources(start, options, async (context) => {
    // The bundle is written beside its target, in a staging directory of ours (a build killed meanwhile leaves it
    // to the reaper).
    const partial = await stagedPath(context, target);
    const dir = format === 'dir' ? partial : join(context.workDir, 'bundle');
    await mkdir(dir);
    const collector = new BundleCollector(dir, context.log);
    const origin = input.url ?? input.path;
    const baseName = await context.clock.time('bundle-base', () => collector.addBase({ ...input, origin }, async (from, to) => {
      await context.run('cp', ['--reflink=auto', '--', from, to], { log: context.log, purpose: 'copying the base image into the bundle' });
    }));
    context.events({ event: 'phase-started', phase: 1 });
    await runPhase1(recipe, input, context, {
      mountBackend: options.mountBackend ?? 'auto',
      limits: options.limits,
      hostPorts: options.hostPorts,
      allowNetworks: options.allowNetworks,
      fetchTimeouts: options.image?.timeouts,
      downloads: collector.downloads,
      hostFiles: collector.hostFiles,
      packageBundle: { collect: collector },
    });
    await releaseGuest(context);
    const manifest = await context.clock.time('bundle-manifest', () => collector.finish({ path: resolve(recipe.path), sha256: recipe.sha256 }, recipe.variables, { ...input, origin, name: baseName }));
    const manifestSha256 = sha256Text(manifestText(manifest));
    if (format === 'tar') {
      const archiveSha256 = await context.clock.time('bundle-archive', () => packBundle(dir, manifest, partial));
      // The sums file first: an archive under its name always has its sha256 beside it.
      // Created exclusively under a random name, then renamed: never written through what is at that name.
      await writeFileAtomic(`${target}.sha256`, `${archiveSha256}  ${basename(target)}\n`);
      await renameOver(partial, target);
      context.log.info(`wrote the bundle ${target} (sha256 ${archiveSha256}, in ${basename(target)}.sha256); its bundle.json: sha256 ${manifestSha256}`);
      return { path: target, format, manifestSha256, archiveSha256, manifest };
    }
    context.log.info(`wrote the bundle ${target}: ${manifest.files.length} file(s); its bundle.json: sha256 ${manifestSha256}`);
    await rename(partial, target);
    return { path: target, format, manifestSha256, manifest };
  });
}
