import { mkdir, mkdtemp, readdir, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { aptArchiveName, aptListedHashes, listCachedPackages, offerCachedDebs, pruneCachedPackages, rememberedAptListedHashes } from '../../src/pkg/package-cache.js';
import { silentLogger } from '../../src/util/log.js';
import { sha256Text } from '../../src/util/digest.js';

describe('package cache: the store and the guest lists', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'package-cache-'));
  });
  afterEach(() => rm(dir, { recursive: true, force: true }));

  test("the guest's Packages lists, read as data: apt's archive name (from name, version, architecture; not the pool file's name, which has no epoch) -> sha256; stanzas without all four are skipped", async () => {
    const root = join(dir, 'root');
    await mkdir(join(root, 'var/lib/apt/lists'), { recursive: true });
    const a = 'a'.repeat(64);
    const b = 'b'.repeat(64);
    const c = 'c'.repeat(64);
    await writeFile(
      join(root, 'var/lib/apt/lists/mirror_dists_bookworm_main_binary-amd64_Packages'),
      `Package: conntrack\nSource: conntrack-tools\nVersion: 1:1.4.7-1+b2\nArchitecture: amd64\nDescription: a tool\n Package: not-a-field\nFilename: pool/main/c/conntrack-tools/conntrack_1.4.7-1+b2_amd64.deb\nSHA256: ${a}\n\n` +
        `Package: odd\nVersion: 1\nArchitecture: amd64\nFilename: pool/o/odd_1_amd64.deb\n\n` +
        `Package: cri-tools\nSHA256: ${b}\nArchitecture: amd64\nVersion: 1.36.0-1.1\nFilename: amd64/cri-tools_1.36.0-1.1_amd64.deb\n\n` +
        `Package: under_score\nVersion: 2~rc_1\nArchitecture: all\nSHA256: ${c}\n`,
    );
    await writeFile(join(root, 'var/lib/apt/lists/lock'), '');
    expect([...(await aptListedHashes(root))]).toEqual([
      ['conntrack_1%3a1.4.7-1+b2_amd64.deb', a],
      ['cri-tools_1.36.0-1.1_amd64.deb', b],
      ['under%5fscore_2~rc%5f1_all.deb', c],
    ]);
    expect(aptArchiveName('libc6', '2.36-9+deb12u9', 'amd64')).toBe('libc6_2.36-9+deb12u9_amd64.deb');
  });

  test('the lists are read again only when one changed (its ctime, which a guest cannot set back), even to the same size and mtime', async () => {
    const root = join(dir, 'root');
    const list = join(root, 'var/lib/apt/lists/mirror_dists_bookworm_main_binary-amd64_Packages');
    await mkdir(join(root, 'var/lib/apt/lists'), { recursive: true });
    const stanza = (sha: string) => `Package: socat\nVersion: 1\nArchitecture: amd64\nSHA256: ${sha}\n`;
    await writeFile(list, stanza('a'.repeat(64)));
    const first = await rememberedAptListedHashes(root);
    expect(await rememberedAptListedHashes(root)).toBe(first);
    await new Promise((resolve) => setTimeout(resolve, 20));
    await writeFile(list, stanza('b'.repeat(64)));
    await utimes(list, new Date(0), new Date(0));
    const second = await rememberedAptListedHashes(root);
    expect(second).not.toBe(first);
    expect([...second]).toEqual([['socat_1_amd64.deb', 'b'.repeat(64)]]);
  });

  test('offered: the cached .debs the lists name, but not those installed at that version already', async () => {
    const root = join(dir, 'root');
    await mkdir(join(root, 'var/cache/apt/archives'), { recursive: true });
    const cache = join(dir, 'cache');
    await mkdir(join(cache, 'deb'), { recursive: true });
    const debs = { 'socat_1.7.4.4-2_amd64.deb': 'socat bytes', 'runc_1.1.5_amd64.deb': 'runc bytes', 'other_1_amd64.deb': 'not cached' };
    const listed = new Map(Object.entries(debs).map(([name, content]) => [name, sha256Text(content)]));
    for (const name of ['socat_1.7.4.4-2_amd64.deb', 'runc_1.1.5_amd64.deb']) await writeFile(join(cache, 'deb', `${listed.get(name)}.deb`), debs[name as keyof typeof debs]);
    const offered = await offerCachedDebs(root, cache, listed, silentLogger(), new Set(['runc_1.1.5_amd64.deb']));
    expect(offered.paths).toEqual(['/var/cache/apt/archives/socat_1.7.4.4-2_amd64.deb']);
    expect(await readdir(join(root, 'var/cache/apt/archives'))).toEqual(['socat_1.7.4.4-2_amd64.deb']);
  });

  test('prune: --older-than by last use, then --max-size removes the least recently used first; --dry-run removes nothing', async () => {
    const store = join(dir, 'deb');
    await mkdir(store);
    const day = 86_400_000;
    const made: string[] = [];
    for (const [i, ageDays] of [5, 1, 2].entries()) {
      const content = Buffer.alloc(1000 * (i + 1), i);
      const name = `${sha256Text(content)}.deb`;
      await writeFile(join(store, name), content);
      const when = new Date(Date.now() - ageDays * day);
      await utimes(join(store, name), when, when);
      made.push(name);
    }
    await writeFile(join(store, 'not-a-package.txt'), 'x');
    expect((await listCachedPackages(dir)).map((p) => `${p.sha256}.deb`)).toEqual([made[1], made[2], made[0]]);
    const dry = await pruneCachedPackages(dir, { olderThanMs: 3 * day, dryRun: true });
    expect(dry.removed.map((p) => `${p.sha256}.deb`)).toEqual([made[0]]);
    expect((await readdir(store)).length).toBe(4);
    // 5 days old goes by age; then 3000 + 2000 bytes left against 2500: the older of the two (2 days) goes too.
    const pruned = await pruneCachedPackages(dir, { olderThanMs: 3 * day, maxBytes: 2500 });
    expect(pruned.removed.map((p) => `${p.sha256}.deb`)).toEqual([made[0], made[2]]);
    expect(pruned.kept.map((p) => `${p.sha256}.deb`)).toEqual([made[1]]);
    expect((await readdir(store)).sort()).toEqual([made[1], 'not-a-package.txt'].sort());
  });
});
