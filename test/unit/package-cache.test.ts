import { mkdir, mkdtemp, readdir, rm, symlink, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AptPackagesIndex, aptArchiveName, aptPackagesIndex, keepDownloadedDebs, listCachedPackages, offerCachedDebs, pruneCachedPackages, rememberedAptPackagesIndex } from '../../src/pkg/package-cache.js';
import { silentLogger } from '../../src/util/log.js';
import { sha256Text } from '../../src/util/digest.js';
import { execa } from 'execa';

describe('package cache: the store and the guest lists', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'package-cache-'));
  });
  afterEach(() => rm(dir, { recursive: true, force: true }));

  test("the guest's Packages lists, read as data and indexed by sha256: apt's archive name (from name, version, architecture; not the pool file's name, which has no epoch); stanzas without all four have none", async () => {
    const root = join(dir, 'root');
    await mkdir(join(root, 'var/lib/apt/lists'), { recursive: true });
    const [a, b, c, d, e] = ['a', 'b', 'c', 'd', 'e'].map((x) => x.repeat(64));
    await writeFile(
      join(root, 'var/lib/apt/lists/mirror_dists_bookworm_main_binary-amd64_Packages'),
      `Package: conntrack\nSource: conntrack-tools\nVersion: 1:1.4.7-1+b2\nArchitecture: amd64\nDescription: a tool\n Package: not-a-field\n SHA256: ${e}\nFilename: pool/main/c/conntrack-tools/conntrack_1.4.7-1+b2_amd64.deb\nSHA256: ${a}\n\n` +
        `Package: odd\nVersion: 1\nFilename: pool/o/odd_1_amd64.deb\nSHA256:\t${d}\r\n\n` +
        `Package: cri-tools\nSHA256: ${b}\nArchitecture: amd64\nVersion: 1.36.0-1.1\nFilename: amd64/cri-tools_1.36.0-1.1_amd64.deb\n\n` +
        `Package: under_score\nVersion: 2~rc_1\nArchitecture: all\nSHA256: ${c}\n\n` +
        `Package: second\nVersion: 1\nArchitecture: all\nSHA256: ${c}\n\n` +
        `Package: short\nVersion: 1\nArchitecture: all\nSHA256: ${'f'.repeat(63)}\n`,
    );
    await writeFile(join(root, 'var/lib/apt/lists/lock'), '');
    await writeFile(join(root, 'var/lib/apt/lists/mirror_dists_bookworm_main_i18n_Translation-en'), `Package: x\nSHA256: ${e}\n`);
    const index = await aptPackagesIndex(root);
    expect(index.archiveName(a)).toBe('conntrack_1%3a1.4.7-1+b2_amd64.deb');
    expect(index.archiveName(b)).toBe('cri-tools_1.36.0-1.1_amd64.deb');
    // The first stanza naming a sha256 wins.
    expect(index.archiveName(c)).toBe('under%5fscore_2~rc%5f1_all.deb');
    // Found, but it has no architecture: no archive name.
    expect(index.stanza(d)?.stanza).toMatch(/^Package: odd\n/);
    expect(index.archiveName(d)).toBeUndefined();
    // A description's continuation line, a list that is not a Packages list, a hash of 63 digits: none is a stanza's SHA256.
    expect(index.stanza(e)).toBeUndefined();
    expect(index.stanza('f'.repeat(63))).toBeUndefined();
    expect(aptArchiveName('libc6', '2.36-9+deb12u9', 'amd64')).toBe('libc6_2.36-9+deb12u9_amd64.deb');
  });

  test('a crafted list: a stanza naming two sha256s, one over 1 MiB, a list without blank lines: none indexed, lookups bounded; the stanza after them is found', () => {
    const [a, b, c, d] = ['a', 'b', 'c', 'd'].map((x) => x.repeat(64));
    const index = new AptPackagesIndex();
    index.add(
      '/var/lib/apt/lists/m_Packages',
      Buffer.from(
        `Package: two\nVersion: 1\nArchitecture: all\nSHA256: ${a}\nSHA256: ${b}\n\n` +
          `Package: big\nVersion: 1\nArchitecture: all\nDescription: x\n${' y\n'.repeat(400_000)}SHA256: ${c}\n\n` +
          `Package: fine\nVersion: 1\nArchitecture: all\nSHA256: ${d}\n`,
        'latin1',
      ),
    );
    expect([a, b, c].map((hash) => index.stanza(hash))).toEqual([undefined, undefined, undefined]);
    expect(index.archiveName(d)).toBe('fine_1_all.deb');
    expect(index.stanza(d)).toEqual({ stanza: `Package: fine\nVersion: 1\nArchitecture: all\nSHA256: ${d}`, list: '/var/lib/apt/lists/m_Packages' });
    const flat = new AptPackagesIndex();
    const hashes = Array.from({ length: 1000 }, (_, i) => sha256Text(String(i)));
    flat.add('/var/lib/apt/lists/m_Packages', Buffer.from(hashes.map((hash, i) => `Package: p${i}\r\nVersion: 1\r\nArchitecture: all\r\nSHA256: ${hash}\r\n`).join('\r\n')));
    expect(hashes.filter((hash) => flat.archiveName(hash))).toEqual([]);
  });

  test('the lists are read again only when one changed (its ctime, which a guest cannot set back), even to the same size and mtime', async () => {
    const root = join(dir, 'root');
    const list = join(root, 'var/lib/apt/lists/mirror_dists_bookworm_main_binary-amd64_Packages');
    await mkdir(join(root, 'var/lib/apt/lists'), { recursive: true });
    const stanza = (sha: string) => `Package: socat\nVersion: 1\nArchitecture: amd64\nSHA256: ${sha}\n`;
    await writeFile(list, stanza('a'.repeat(64)));
    const first = await rememberedAptPackagesIndex(root);
    expect(await rememberedAptPackagesIndex(root)).toBe(first);
    await new Promise((resolve) => setTimeout(resolve, 20));
    await writeFile(list, stanza('b'.repeat(64)));
    await utimes(list, new Date(0), new Date(0));
    const second = await rememberedAptPackagesIndex(root);
    expect(second).not.toBe(first);
    expect(second.archiveName('b'.repeat(64))).toBe('socat_1_amd64.deb');
    expect(second.archiveName('a'.repeat(64))).toBeUndefined();
  });

  const listOf = (debs: Record<string, string>) =>
    Object.entries(debs).map(([name, content]) => {
      const [pkg, version, arch] = name.slice(0, -4).split('_');
      return `Package: ${pkg}\nVersion: ${version}\nArchitecture: ${arch}\nSHA256: ${sha256Text(content)}\n`;
    }).join('\n');

  test('offered: the cached .debs the lists name, but not those installed at that version already', async () => {
    const root = join(dir, 'root');
    await mkdir(join(root, 'var/cache/apt/archives'), { recursive: true });
    const cache = join(dir, 'cache');
    await mkdir(join(cache, 'deb'), { recursive: true });
    const debs = { 'socat_1.7.4.4-2_amd64.deb': 'socat bytes', 'runc_1.1.5_amd64.deb': 'runc bytes', 'other_1_amd64.deb': 'not cached' };
    const index = new AptPackagesIndex();
    index.add('/var/lib/apt/lists/m_Packages', Buffer.from(listOf(debs)));
    for (const name of ['socat_1.7.4.4-2_amd64.deb', 'runc_1.1.5_amd64.deb'] as const) await writeFile(join(cache, 'deb', `${sha256Text(debs[name])}.deb`), debs[name]);
    // Cached, but no list names it.
    await writeFile(join(cache, 'deb', `${sha256Text('unlisted')}.deb`), 'unlisted');
    const offered = await offerCachedDebs(root, cache, async () => ({ index, installed: new Set(['runc_1.1.5_amd64.deb']) }), silentLogger());
    expect(offered.paths).toEqual(['/var/cache/apt/archives/socat_1.7.4.4-2_amd64.deb']);
    expect(await readdir(join(root, 'var/cache/apt/archives'))).toEqual(['socat_1.7.4.4-2_amd64.deb']);
  });

  test("at most half the guest's free space is offered: a store many builds filled does not fill the guest's disk", async () => {
    // The guest's root: a 2 MiB filesystem of its own (tmpfs), three cached .debs of 600 KiB its lists name.
    const root = join(dir, 'small-root');
    await mkdir(root);
    await execa('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', root]);
    try {
      await mkdir(join(root, 'var/cache/apt/archives'), { recursive: true });
      const cache = join(dir, 'cache');
      await mkdir(join(cache, 'deb'), { recursive: true });
      const debs = Object.fromEntries(['a', 'b', 'c'].map((name) => [`${name}_1_all.deb`, name.repeat(600 * 1024)]));
      const index = new AptPackagesIndex();
      index.add('/var/lib/apt/lists/m_Packages', Buffer.from(listOf(debs)));
      for (const content of Object.values(debs)) await writeFile(join(cache, 'deb', `${sha256Text(content)}.deb`), content);
      const offered = await offerCachedDebs(root, cache, async () => ({ index, installed: new Set<string>() }), silentLogger());
      // 2 MiB free: one 600 KiB file fits in half of it, a second would not.
      expect(offered.files).toBe(1);
      expect((await readdir(join(root, 'var/cache/apt/archives'))).length).toBe(1);
    } finally {
      await execa('umount', [root]);
    }
  });

  test("an empty store offers nothing and never asks for the guest's lists (a runner's first build reads them while its install runs)", async () => {
    const cache = join(dir, 'cache');
    let asked = false;
    const offered = await offerCachedDebs(join(dir, 'root'), cache, async () => {
      asked = true;
      return { index: new AptPackagesIndex(), installed: new Set<string>() };
    }, silentLogger());
    expect(offered).toEqual({ files: 0, bytes: 0, paths: [] });
    expect(asked).toBe(false);
  });

  test('kept: a .deb whose bytes the lists name under its file name; not one under another name, not other bytes, not what the cache offered, not a link', async () => {
    const root = join(dir, 'root');
    const archives = join(root, 'var/cache/apt/archives');
    await mkdir(archives, { recursive: true });
    const cache = join(dir, 'cache');
    const debs = { 'socat_1_amd64.deb': 'socat bytes', 'runc_1_amd64.deb': 'runc bytes', 'offered_1_all.deb': 'offered bytes', 'iptables_1_amd64.deb': 'iptables bytes' };
    const index = new AptPackagesIndex();
    index.add('/var/lib/apt/lists/m_Packages', Buffer.from(listOf(debs)));
    await writeFile(join(archives, 'socat_1_amd64.deb'), debs['socat_1_amd64.deb']);
    await writeFile(join(archives, 'runc_1_amd64.deb'), 'runc bytes, changed');
    await writeFile(join(archives, 'renamed_1_amd64.deb'), debs['socat_1_amd64.deb']);
    await writeFile(join(archives, 'offered_1_all.deb'), debs['offered_1_all.deb']);
    await writeFile(join(dir, 'host-file'), debs['iptables_1_amd64.deb']);
    await symlink(join(dir, 'host-file'), join(archives, 'iptables_1_amd64.deb'));
    expect(await keepDownloadedDebs(root, cache, index, silentLogger(), new Set(['/var/cache/apt/archives/offered_1_all.deb']))).toBe(1);
    expect(await readdir(join(cache, 'deb'))).toEqual([`${sha256Text(debs['socat_1_amd64.deb'])}.deb`]);
    // A second keeping finds socat stored, and keeps what was offered before (no longer said offered).
    expect(await keepDownloadedDebs(root, cache, index, silentLogger())).toBe(1);
    expect((await readdir(join(cache, 'deb'))).sort()).toEqual([sha256Text(debs['socat_1_amd64.deb']), sha256Text(debs['offered_1_all.deb'])].map((h) => `${h}.deb`).sort());
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
    // A killed build's temporary file goes once it is a day old; a live build's (seconds old) stays.
    const abandoned = `.${'a'.repeat(64)}.4242-0badc0de.partial`;
    const live = `.${'b'.repeat(64)}.4243-0badc0de.partial`;
    for (const name of [abandoned, live]) await writeFile(join(store, name), 'part');
    await utimes(join(store, abandoned), new Date(Date.now() - 2 * day), new Date(Date.now() - 2 * day));
    await pruneCachedPackages(dir, { olderThanMs: 3 * day });
    expect((await readdir(store)).sort()).toEqual([made[1], 'not-a-package.txt', live].sort());
  });
});
