import { Flags } from '@oclif/core';
import { BaseCommand } from '../../cli/base-command.js';
import { cacheFlag } from '../../cli/host-flags.js';
import { cacheLayout, listCache, type CacheEntry } from '../../fetch/cache.js';
import { formatBytes } from '../../fetch/progress.js';

export default class CacheList extends BaseCommand {
  static override summary = 'List the cached base images';
  static override description = 'Each image in $IMAGEBUILDER_CACHE: its sha256, size, format, when it was last used, and where it came from.';
  static override examples = ['<%= config.bin %> cache list', '<%= config.bin %> cache list --json'];
  static override flags = { ...cacheFlag, json: Flags.boolean({ description: 'print the entries (with their records) as JSON', default: false }) };

  async run(): Promise<CacheEntry[]> {
    const { flags } = await this.parse(CacheList);
    const layout = cacheLayout(flags.cache);
    const entries = await listCache(layout);
    if (flags.json) {
      this.log(JSON.stringify(entries, null, 2));
      return entries;
    }
    if (!entries.length) {
      this.log(`no cached images in ${layout.root}`);
      return entries;
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
    const header = ['SHA256', 'SIZE', 'ON DISK', 'FORMAT', 'LAST USED (UTC)', 'VERIFIED', 'SOURCE'];
    const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
    for (const row of [header, ...rows]) this.log(row.map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i]))).join('  '));
    this.log(`${entries.length} image(s), ${formatBytes(entries.reduce((sum, e) => sum + e.diskBytes, 0))} on disk in ${layout.root}`);
    return entries;
  }
}
