import { Flags } from '@oclif/core';
import { BaseCommand } from '../../cli/base-command.js';
import { cacheFlag, hostPaths } from '../../cli/host-flags.js';
import { cacheLayout, listCache, type CacheEntry } from '../../fetch/cache.js';
import { formatBytes } from '../../fetch/progress.js';
import { layerStoreDir, LayerStore, type ListedLayer } from '../../pipeline/layers.js';
import { listCachedPackages, packageCacheDir, type CachedPackage } from '../../pkg/package-cache.js';

export default class CacheList extends BaseCommand {
  static override summary = 'List the cached base images, step layers and packages';
  static override description =
    'Each image in $IMAGEBUILDER_CACHE: its sha256, size, format, when it was last used, and where it came from; then each layer of the ' +
    'step cache: its key, the step it holds, its size, and whether that step depends on the network without a pin; then how many ' +
    'downloaded packages (.deb) builds share, and their size.';
  static override examples = ['<%= config.bin %> cache list', '<%= config.bin %> cache list --json'];
  static override flags = { ...cacheFlag, json: Flags.boolean({ description: 'print the entries (with their records) as JSON', default: false }) };

  async run(): Promise<{ images: CacheEntry[]; layers: ListedLayer[]; packages: CachedPackage[] }> {
    const { flags } = await this.parse(CacheList);
    const { cacheDir } = hostPaths(flags);
    const layout = cacheLayout(cacheDir);
    const entries = await listCache(layout);
    const { records: layers } = await new LayerStore(layerStoreDir(cacheDir)).list();
    const packages = await listCachedPackages(packageCacheDir(cacheDir));
    if (flags.json) {
      this.log(JSON.stringify({ images: entries, layers, packages }, null, 2));
      return { images: entries, layers, packages };
    }
    const kinds = [...new Set(packages.map((p) => p.kind))].map((kind) => `${packages.filter((p) => p.kind === kind).length} .${kind}`).join(', ');
    if (packages.length) this.log(`${packages.length} file(s) of the package cache (${kinds}), ${formatBytes(packages.reduce((sum, p) => sum + p.bytes, 0))} in ${packageCacheDir(cacheDir)}, last used ${packages[0].lastUsedAt.slice(0, 16).replace('T', ' ')} UTC`);
    if (layers.length) {
      this.table(
        ['LAYER', 'STEP', 'ON DISK', 'LAST USED (UTC)', 'NETWORK UNPINNED'],
        layers.map((l) => [l.key.slice(0, 12), `${l.step.index + 1} ${l.step.description}`, formatBytes(l.diskBytes), l.lastUsedAt.slice(0, 16).replace('T', ' '), l.unpinned ?? '']),
      );
      this.log(`${layers.length} layer(s), ${formatBytes(layers.reduce((sum, l) => sum + l.diskBytes, 0))} on disk in ${layerStoreDir(cacheDir)}`);
    }
    if (!entries.length) {
      this.log(`no cached images in ${layout.root}`);
      return { images: entries, layers, packages };
    }
    const rows = entries.map((e) => [
      e.sha256.slice(0, 12),
      formatBytes(e.size),
      formatBytes(e.diskBytes),
      e.record?.format ?? '?',
      e.lastUsedAt.slice(0, 16).replace('T', ' '),
      e.record?.origin.verified === false ? 'no' : e.record ? 'yes' : '?',
      e.record?.origin.url ?? e.record?.origin.path ?? '(no record)',
    ]);
    this.table(['SHA256', 'SIZE', 'ON DISK', 'FORMAT', 'LAST USED (UTC)', 'VERIFIED', 'SOURCE'], rows);
    this.log(`${entries.length} image(s), ${formatBytes(entries.reduce((sum, e) => sum + e.diskBytes, 0))} on disk in ${layout.root}`);
    return { images: entries, layers, packages };
  }

  private table(header: string[], rows: string[][]): void {
    const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
    for (const row of [header, ...rows]) this.log(row.map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i]))).join('  '));
  }
}
