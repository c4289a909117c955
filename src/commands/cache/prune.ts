import { Flags } from '@oclif/core';
import { BaseCommand } from '../../cli/base-command.js';
import { cacheFlag, hostPaths } from '../../cli/host-flags.js';
import { cacheLayout, listCache, parseDuration, parseSize, pruneCache, type PruneResult } from '../../fetch/cache.js';
import { formatBytes } from '../../fetch/progress.js';
import { layerStoreDir, LayerStore, pruneLayers } from '../../pipeline/layers.js';
import { packageCacheDir, pruneCachedPackages } from '../../pkg/package-cache.js';

export default class CachePrune extends BaseCommand {
  static override summary = 'Remove cached base images, step layers and packages: all, the unused, or the least recently used beyond a size';
  static override description =
    '--older-than removes images, layers and packages not used for that long; --max-size then removes the least recently used packages, ' +
    'then layers, then images, until the rest fits (a layer goes with the layers above it); --all empties the cache. Interrupted downloads ' +
    'are removed too (--all, --older-than), never one in progress.';
  static override examples = ['<%= config.bin %> cache prune --older-than 30d', '<%= config.bin %> cache prune --max-size 20G', '<%= config.bin %> cache prune --all'];
  static override flags = {
    ...cacheFlag,
    all: Flags.boolean({ description: 'remove every cached image and step layer', default: false, exclusive: ['older-than', 'max-size'] }),
    'older-than': Flags.string({ description: 'remove images not used for this long: 45s, 90m, 12h, 30d, 2w', helpValue: 'DURATION' }),
    'max-size': Flags.string({ description: 'then remove the least recently used until the cache takes at most this: 500M, 20G', helpValue: 'SIZE' }),
    'dry-run': Flags.boolean({ description: 'only say what would be removed', default: false }),
    json: Flags.boolean({ description: 'print the result as JSON', default: false }),
  };

  async run(): Promise<PruneResult & { layers: Awaited<ReturnType<typeof pruneLayers>>; packages: Awaited<ReturnType<typeof pruneCachedPackages>> }> {
    const { flags } = await this.parse(CachePrune);
    const { cacheDir } = hostPaths(flags);
    const options = {
      all: flags.all,
      olderThanMs: flags['older-than'] === undefined ? undefined : parseDuration(flags['older-than']),
      maxSizeBytes: flags['max-size'] === undefined ? undefined : parseSize(flags['max-size']),
      dryRun: flags['dry-run'],
    };
    const images = await listCache(cacheLayout(cacheDir));
    const imageBytes = images.reduce((sum, e) => sum + e.diskBytes, 0);
    // Packages first (the cheapest to fetch again): under --max-size they get what images and layers leave.
    const layerTotal = (await new LayerStore(layerStoreDir(cacheDir)).list()).records.reduce((sum, l) => sum + l.diskBytes, 0);
    const packages = await pruneCachedPackages(packageCacheDir(cacheDir), { ...options, maxBytes: options.maxSizeBytes === undefined ? undefined : Math.max(0, options.maxSizeBytes - imageBytes - layerTotal) });
    // Layers first: under --max-size they get what the images leave, so images go only when layers alone cannot make room.
    const layers = await pruneLayers(new LayerStore(layerStoreDir(cacheDir)), { ...options, maxSizeBytes: options.maxSizeBytes === undefined ? undefined : Math.max(0, options.maxSizeBytes - imageBytes) });
    const layerBytes = layers.kept.reduce((sum, l) => sum + l.diskBytes, 0);
    const result = { ...(await pruneCache(cacheLayout(cacheDir), { ...options, maxSizeBytes: options.maxSizeBytes === undefined ? undefined : Math.max(0, options.maxSizeBytes - layerBytes) })), layers, packages };
    if (flags.json) {
      this.log(JSON.stringify(result, null, 2));
      return result;
    }
    const verb = flags['dry-run'] ? 'would remove' : 'removed';
    for (const layer of layers.removed) this.log(`${verb} layer ${layer.key.slice(0, 12)}  ${formatBytes(layer.diskBytes)}  step ${layer.step.index + 1} ${layer.step.description}`);
    for (const entry of result.removed) this.log(`${verb} ${entry.sha256.slice(0, 12)}  ${formatBytes(entry.diskBytes)}  ${entry.record?.origin.url ?? entry.record?.origin.path ?? ''}`);
    this.log(`${verb} ${result.removed.length} image(s), ${formatBytes(result.freedBytes + result.partialsBytes)}; ${result.kept.length} kept`);
    if (layers.removed.length || layers.kept.length) this.log(`${verb} ${layers.removed.length} layer(s), ${formatBytes(layers.freedBytes)}; ${layers.kept.length} kept`);
    if (layers.orphans.files) this.log(`${verb} ${layers.orphans.files} layer file(s) no record names (left by killed builds or replaced by --refresh), ${formatBytes(layers.orphans.bytes)}`);
    if (packages.removed.length || packages.kept.length) this.log(`${verb} ${packages.removed.length} file(s) of the package cache (packages, apt lists and caches), ${formatBytes(packages.freedBytes)}; ${packages.kept.length} kept`);
    if (result.digestsRemoved) this.log(`${verb} ${result.digestsRemoved} remembered sum(s) of files gone or changed${flags.all ? ' (--all: every one)' : ''}`);
    return result;
  }
}
