import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { fixtureImage } from '../helpers/fixtures.js';
import { leftoversUnder, NOTHING_LEFT, runCli } from '../helpers/host.js';
import { dpkgVersion, withImageMounted } from '../helpers/inspect.js';
import { APT_PATH, startLocalMirror, type LocalMirror } from '../helpers/local-mirror.js';
import { writeRecipe } from '../helpers/recipes.js';
import { sha256Text } from '../../src/util/digest.js';

/**
 * The package cache shared by builds (src/pkg/package-cache.ts), for apt: real builds of a GPT image installing
 * from the signed local mirror, which logs every request, so "downloaded nothing" is the server's word.
 */
describe('package cache (apt)', () => {
  let work: string;
  let mirror: LocalMirror;
  let cache: string;
  let recipe: string;
  let env: Record<string, string>;
  let disk: string;
  const debRequests = () => mirror.requests.filter((path) => path.endsWith('.deb'));
  // The repository's index files (Packages, Packages.gz): what apt-get update downloads beyond the InRelease.
  const indexRequests = () => mirror.requests.filter((path) => /\/Packages(\.\w+)?$/.test(path));
  const releaseRequests = () => mirror.requests.filter((path) => /\/(InRelease|Release|Release\.gpg)$/.test(path));
  /** A guest's package lists, by name and sha256 (the lock and partial/ aside). */
  const listsOf = async (root: string) => {
    const lists = join(root, 'var/lib/apt/lists');
    const names = (await readdir(lists, { withFileTypes: true })).filter((entry) => entry.isFile() && entry.name !== 'lock').map((entry) => entry.name).sort();
    return Promise.all(names.map(async (name) => [name, sha256Text(await readFile(join(lists, name)))]));
  };

  beforeAll(async () => {
    work = await mkdtemp('/var/tmp/ib-package-cache-');
    mirror = await startLocalMirror();
    cache = join(work, 'cache');
    env = { IMAGEBUILDER_NO_CACHE: '', IMAGEBUILDER_CACHE: cache, IMAGEBUILDER_WORK_DIR: join(work, 'tmp') };
    await mkdir(env.IMAGEBUILDER_WORK_DIR);
    disk = await fixtureImage('gpt-esp');
    const [pinned] = mirror.versions.kubectl;
    recipe = await writeRecipe(work, 'tools', [
      { repository: { name: 'kubernetes', url: mirror.aptUrl, key_url: mirror.keyUrl, fingerprint: mirror.keyFingerprint } },
      { name: 'tools', packages: { install: [`kubectl=${pinned}`, 'cri-tools'] } },
    ]);
  });
  afterAll(async () => {
    await mirror?.close();
    await rm(work, { recursive: true, force: true });
  });

  const build = (output: string, extra: string[] = []) =>
    runCli(['apply', recipe, '--disk-image', disk, '--output', join(work, output), '--mount-backend', 'fuse', '--sparsify', 'none', ...extra], { env });

  test('the second build downloads no package the first did; nothing of the cache is left in the image; list and prune see it', async () => {
    const first = await build('first.qcow2');
    if (first.exitCode !== 0) throw new Error(first.all);
    const downloaded = debRequests();
    expect(downloaded.map((path) => path.slice(APT_PATH.length)).sort()).toEqual([`amd64/cri-tools_${mirror.versions['cri-tools'][0]}_amd64.deb`, `amd64/kubectl_${mirror.versions.kubectl[0]}_amd64.deb`]);
    expect(first.stderr).toContain('package cache: kept 2 downloaded .deb file(s)');
    // The lists apt-get update fetched (Debian's and the local repository's), kept under their sha256.
    const fetchedIndexes = indexRequests();
    expect(fetchedIndexes.length).toBeGreaterThan(0);
    expect(first.stderr).toMatch(/package cache: kept \d+ downloaded \.apt-list file\(s\)/);
    const storedLists = await readdir(join(cache, 'packages/apt-list'));
    expect(storedLists.length).toBeGreaterThanOrEqual(2);
    for (const name of storedLists) expect(`${sha256Text(await readFile(join(cache, 'packages/apt-list', name)))}.apt-list`).toBe(name);
    // Content-addressed: each file under the sha256 of its bytes.
    const stored = (await readdir(join(cache, 'packages/deb'))).sort();
    expect(stored).toHaveLength(2);
    for (const name of stored) expect(`${sha256Text(await readFile(join(cache, 'packages/deb', name)))}.deb`).toBe(name);

    // The step cache would replay the install: --refresh runs it again, so apt does the work and the cache is used.
    const releaseRequestsBefore = releaseRequests().length;
    const second = await build('second.qcow2', ['--refresh', '2']);
    if (second.exitCode !== 0) throw new Error(second.all);
    expect(debRequests()).toEqual(downloaded);
    expect(second.stderr).toContain('package cache: 2 .deb file(s)');
    // apt's own word: nothing to fetch.
    expect(second.stderr).toMatch(/Need to get 0 B/);
    // apt-get update fetched the release files only: every list came from the cache, as apt's verified InRelease names it.
    expect(indexRequests()).toEqual(fetchedIndexes);
    expect(second.stderr).toMatch(/package cache: \d+ \.apt-list file\(s\), [\d.]+ MiB, offered to apt-get update/);
    expect(second.stderr).not.toMatch(/Get:\d+ \S+ .*(Packages|Translation-)/);
    // Every list apt's update would fetch was there: the release files were fetched once, by the first update.
    expect(second.stderr).toContain('the lists hold every index apt-get update would fetch, each what its release file names: apt-get update is not run again');
    expect(releaseRequests().slice(releaseRequestsBefore)).toEqual([expect.stringMatching(/\/InRelease$/)]);
    const lists: string[][][] = [];
    for (const output of ['first.qcow2', 'second.qcow2']) {
      await withImageMounted(join(work, output), 'gpt-esp', async (root) => {
        expect(await dpkgVersion(root, 'kubectl')).toBe(mirror.versions.kubectl[0]);
        expect((await readdir(join(root, 'var/cache/apt/archives'))).filter((name) => name.endsWith('.deb'))).toEqual([]);
        lists.push(await listsOf(root));
      });
    }
    // The image holds the same lists, byte for byte, whether apt fetched them or the cache gave them.
    expect(lists[0].some(([name]) => name.endsWith('_Packages'))).toBe(true);
    expect(lists[1]).toEqual(lists[0]);
    // The same packages make the same BOM packages, cache or not.
    const bomPackages = async (output: string) => JSON.parse(await readFile(join(work, `${output}.bom.json`), 'utf8')).packages;
    expect(await bomPackages('second.qcow2')).toEqual(await bomPackages('first.qcow2'));

    const list = await runCli(['cache', 'list', '--json'], { env });
    const listed = JSON.parse(list.stdout).packages as { kind: string; sha256: string }[];
    expect(listed.filter((p) => p.kind === 'deb').map((p) => `${p.sha256}.deb`).sort()).toEqual(stored);
    expect(listed.filter((p) => p.kind === 'apt-list').map((p) => `${p.sha256}.apt-list`).sort()).toEqual([...(await readdir(join(cache, 'packages/apt-list')))].sort());
    const dry = await runCli(['cache', 'prune', '--all', '--dry-run'], { env });
    expect(dry.stdout).toContain(`would remove ${listed.length} file(s) of the package cache`);
    expect((await readdir(join(cache, 'packages/deb'))).sort()).toEqual(stored);
    expect(await leftoversUnder(env.IMAGEBUILDER_WORK_DIR)).toEqual(NOTHING_LEFT);
  });

  test('a guest whose apt runs a hook after each update has its update run again once the cached lists are there', async () => {
    const [pinned] = mirror.versions.kubectl;
    const hooked = await writeRecipe(work, 'hooked', [
      { repository: { name: 'kubernetes', url: mirror.aptUrl, key_url: mirror.keyUrl, fingerprint: mirror.keyFingerprint } },
      { file: { path: '/etc/apt/apt.conf.d/99lists-hook', content: 'APT::Update::Post-Invoke-Success { "ls /var/lib/apt/lists > /var/lib/lists-the-hook-saw"; };\n' } },
      { packages: { install: [`kubectl=${pinned}`] } },
    ]);
    const result = await runCli(['apply', hooked, '--disk-image', disk, '--output', join(work, 'hooked.qcow2'), '--mount-backend', 'fuse', '--sparsify', 'none'], { env });
    if (result.exitCode !== 0) throw new Error(result.all);
    expect(result.stderr).toMatch(/package cache: \d+ \.apt-list file\(s\), [\d.]+ MiB, offered to apt-get update/);
    expect(result.stderr).not.toContain('apt-get update is not run again');
    await withImageMounted(join(work, 'hooked.qcow2'), 'gpt-esp', async (root) => {
      expect(await dpkgVersion(root, 'kubectl')).toBe(pinned);
      // Its last run saw the lists the cache gave.
      expect(await readFile(join(root, 'var/lib/lists-the-hook-saw'), 'utf8')).toMatch(/_Packages$/m);
    });
  });

  test("apt's binary caches are built on the session's /run, by apt and by the apt programs its hooks run, not in the guest's /var/cache/apt", async () => {
    // Directories where apt keeps its caches by default: apt could not write them there ("Problem renaming the
    // file … Is a directory", then "The package cache file is corrupted" and the install failed). The hook runs
    // apt-cache as debconf's dpkg-preconfigure runs apt-extracttemplates: it reads apt's configuration files, not
    // apt-get's command line, and fails the install if it cannot build its cache.
    const [pinned] = mirror.versions.kubectl;
    const blocked = await writeRecipe(work, 'blocked-bin', [
      { repository: { name: 'kubernetes', url: mirror.aptUrl, key_url: mirror.keyUrl, fingerprint: mirror.keyFingerprint } },
      { run: 'mkdir /var/cache/apt/pkgcache.bin /var/cache/apt/srcpkgcache.bin' },
      { file: { path: '/etc/apt/apt.conf.d/99cache-hook', content: 'DPkg::Pre-Invoke { "apt-cache policy kubectl > /var/lib/policy-the-hook-saw"; };\n' } },
      { packages: { install: [`kubectl=${pinned}`] } },
    ]);
    const result = await runCli(['apply', blocked, '--disk-image', disk, '--output', join(work, 'blocked-bin.qcow2'), '--mount-backend', 'fuse', '--sparsify', 'none'], { env });
    if (result.exitCode !== 0) throw new Error(result.all);
    expect(result.all).not.toContain('Problem renaming');
    await withImageMounted(join(work, 'blocked-bin.qcow2'), 'gpt-esp', async (root) => {
      expect(await dpkgVersion(root, 'kubectl')).toBe(pinned);
      expect(await readFile(join(root, 'var/lib/policy-the-hook-saw'), 'utf8')).toContain(pinned);
      // Untouched, and nothing of apt's caches beside them.
      expect((await readdir(join(root, 'var/cache/apt'))).sort()).toEqual(['archives', 'pkgcache.bin', 'srcpkgcache.bin']);
      expect(await readdir(join(root, 'var/cache/apt/pkgcache.bin'))).toEqual([]);
      expect(await readdir(join(root, 'var/cache/apt/srcpkgcache.bin'))).toEqual([]);
    });
  });

  test("a build's next packages step reuses the srcpkgcache.bin apt built in the one before, though each has a session (and a /run) of its own", async () => {
    // apt's own account of its caches (Debug::pkgCacheGen), step by step; the step cache is on, so each step has a session.
    const [pinned] = mirror.versions.kubectl;
    const twoSteps = await writeRecipe(work, 'two-steps', [
      { repository: { name: 'kubernetes', url: mirror.aptUrl, key_url: mirror.keyUrl, fingerprint: mirror.keyFingerprint } },
      { file: { path: '/etc/apt/apt.conf.d/99cachegen-debug', content: 'Debug::pkgCacheGen "true";\n' } },
      { packages: { install: [`kubectl=${pinned}`] } },
      { packages: { install: ['cri-tools'] } },
    ]);
    const result = await runCli(['apply', twoSteps, '--disk-image', disk, '--output', join(work, 'two-steps.qcow2'), '--mount-backend', 'fuse', '--sparsify', 'none'], { env });
    if (result.exitCode !== 0) throw new Error(result.all);
    // The fourth step's session: a fresh /run, so no pkgcache.bin (apt's output comes in pieces: any spacing).
    const fourth = result.stderr.slice(result.stderr.indexOf('step 4/4'));
    expect(fourth).toMatch(/CacheFile\s+\/run\/imagebuilder-apt-pkgcache\.bin\s+doesn't exist/);
    expect(fourth).toMatch(/srcpkgcache\.bin\s+is valid - it can be reused/);
    expect(fourth).not.toContain('NOT valid');
    await withImageMounted(join(work, 'two-steps.qcow2'), 'gpt-esp', async (root) => {
      expect(await dpkgVersion(root, 'kubectl')).toBe(pinned);
      expect(await dpkgVersion(root, 'cri-tools')).toBe(mirror.versions['cri-tools'][0]);
      expect(await readdir(join(root, 'var/cache/apt'))).toEqual(['archives']);
    });
  });

  test("the same step of a later build has apt start from the srcpkgcache.bin the last one's left; a build of another base is offered none", async () => {
    const [pinned] = mirror.versions.kubectl;
    const debugged = await writeRecipe(work, 'srcpkgcache-across-builds', [
      { repository: { name: 'kubernetes', url: mirror.aptUrl, key_url: mirror.keyUrl, fingerprint: mirror.keyFingerprint } },
      { file: { path: '/etc/apt/apt.conf.d/99cachegen-debug', content: 'Debug::pkgCacheGen "true";\n' } },
      { packages: { install: [`kubectl=${pinned}`] } },
    ]);
    // --refresh 1: every step runs again, with the same step keys (as after a pruned layer).
    const apply = async (image: string, output: string) => {
      const result = await runCli(['apply', debugged, '--disk-image', image, '--output', join(work, output), '--mount-backend', 'fuse', '--sparsify', 'none', '--refresh', '1'], { env });
      if (result.exitCode !== 0) throw new Error(result.all);
      return result.stderr.slice(result.stderr.indexOf('step 3/3'));
    };
    const offered = "package cache: apt's srcpkgcache.bin from an earlier build of this step, base and lists offered";
    const used = 'package cache: apt used the srcpkgcache.bin offered, as it was';
    const stored = async () => (await readdir(join(cache, 'packages/apt-srcpkgcache')).catch(() => [] as string[])).filter((name) => name.endsWith('.apt-srcpkgcache'));
    // Two builds: the first may fetch its lists (then it keeps no srcpkgcache.bin: lists at the server's times), the
    // second has them from the cache, bearing their release file's date as every later build will, and keeps one.
    await apply(disk, 'srcpkgcache-1.qcow2');
    await apply(disk, 'srcpkgcache-2.qcow2');
    const keys = await stored();
    expect(keys.length).toBeGreaterThanOrEqual(1);
    // The next: offered before any apt command builds one, and apt kept it as it was (its file untouched at the
    // step's end: apt replaces a stale one with a new file, as the damaged one below shows).
    const third = await apply(disk, 'srcpkgcache-3.qcow2');
    expect(third).toContain(offered);
    expect(third).toContain(used);
    expect(third).not.toContain('apt built its own srcpkgcache.bin');
    expect(await stored()).toEqual(keys);
    // The same guest in another image file (other bytes, another sha256): another base, so another step key,
    // offered nothing; it keeps its own.
    const other = join(work, 'other-base.qcow2');
    await execa('qemu-img', ['convert', '-O', 'qcow2', '-o', 'cluster_size=131072', disk, other]);
    const fourth = await apply(other, 'srcpkgcache-4.qcow2');
    expect(fourth).not.toContain(offered);
    expect((await stored()).length).toBe(keys.length + 1);
    // A damaged one in the store (its header overwritten): offered all the same, apt sees it does not match and
    // builds its own, the build goes on, and the log says so.
    for (const name of keys) {
      const path = join(cache, 'packages/apt-srcpkgcache', name);
      await writeFile(path, (await readFile(path)).fill(7, 0, 4096));
    }
    const fifth = await apply(disk, 'srcpkgcache-5.qcow2');
    expect(fifth).toContain(offered);
    expect(fifth).toContain('package cache: apt built its own srcpkgcache.bin: the one offered did not match its lists or configuration');
    expect(fifth).not.toContain(used);
    await withImageMounted(join(work, 'srcpkgcache-3.qcow2'), 'gpt-esp', async (root) => {
      expect(await dpkgVersion(root, 'kubectl')).toBe(pinned);
      // Nothing of apt's caches in the image.
      expect(await readdir(join(root, 'var/cache/apt'))).toEqual(['archives']);
    });
  });

  test('a cached file whose bytes are not what its name says is removed and never offered; apt fetches the real one', async () => {
    const stored = (await readdir(join(cache, 'packages/deb'))).sort();
    // Poison: every cached file replaced by another package's bytes under the same name.
    const bogus = Buffer.from('!<arch>\nnot the package the name says\n');
    for (const name of stored) await writeFile(join(cache, 'packages/deb', name), bogus);
    const before = debRequests().length;
    const result = await build('poisoned.qcow2', ['--refresh', '2']);
    if (result.exitCode !== 0) throw new Error(result.all);
    expect(result.stderr).toContain('does not hold what its name says; removed, not offered');
    expect(debRequests().length).toBe(before + 2);
    await withImageMounted(join(work, 'poisoned.qcow2'), 'gpt-esp', async (root) => {
      expect(await dpkgVersion(root, 'kubectl')).toBe(mirror.versions.kubectl[0]);
    });
    // The genuine files are back under their names.
    for (const name of await readdir(join(cache, 'packages/deb'))) expect(`${sha256Text(await readFile(join(cache, 'packages/deb', name)))}.deb`).toBe(name);
  });

  test('a guest that leaves other bytes, or links, under the downloaded files\' names in its archives gives the cache nothing', async () => {
    const fresh = join(work, 'hostile-cache');
    const hostile = await writeRecipe(work, 'hostile', [
      { repository: { name: 'kubernetes', url: mirror.aptUrl, key_url: mirror.keyUrl, fingerprint: mirror.keyFingerprint } },
      // The guest's own dpkg hook, after every dpkg run: the real downloads replaced by other bytes and by links
      // to files elsewhere in the guest (the host's /etc/shadow is never where such a link leads).
      { file: { path: '/etc/apt/apt.conf.d/99-plant', content: 'DPkg::Post-Invoke { "cd /var/cache/apt/archives; for f in cri-tools_*.deb; do cp /bin/sh $f; done; for f in kubectl_*.deb; do ln -sf /etc/shadow $f; done; true"; };\n' } },
      { name: 'tools', packages: { install: [`kubectl=${mirror.versions.kubectl[0]}`, 'cri-tools'] } },
    ]);
    const result = await runCli(['apply', hostile, '--disk-image', disk, '--output', join(work, 'hostile.qcow2'), '--mount-backend', 'fuse', '--sparsify', 'none'], { env: { ...env, IMAGEBUILDER_CACHE: fresh } });
    if (result.exitCode !== 0) throw new Error(result.all);
    expect(result.stderr).not.toMatch(/package cache: kept \d+ downloaded \.deb/);
    expect(await readdir(join(fresh, 'packages/deb')).catch(() => [])).toEqual([]);
  });

  test("an image whose apt keeps its archives elsewhere keeps none of what the cache offered: the host removes it, as apt-get clean empties only apt's own", async () => {
    const moved = await writeRecipe(work, 'moved-archives', [
      { repository: { name: 'kubernetes', url: mirror.aptUrl, key_url: mirror.keyUrl, fingerprint: mirror.keyFingerprint } },
      { run: 'mkdir -p /var/cache/elsewhere/partial' },
      { file: { path: '/etc/apt/apt.conf.d/99-archives', content: 'Dir::Cache::archives "/var/cache/elsewhere/";\n' } },
      { name: 'tools', packages: { install: [`kubectl=${mirror.versions.kubectl[0]}`, 'cri-tools'] } },
    ]);
    const result = await runCli(['apply', moved, '--disk-image', disk, '--output', join(work, 'moved.qcow2'), '--mount-backend', 'fuse', '--sparsify', 'none'], { env });
    if (result.exitCode !== 0) throw new Error(result.all);
    // Offered where apt does not look (it downloads them again into its own archives, and cleans those).
    expect(result.stderr).toMatch(/package cache: 2 \.deb file\(s\), [\d.]+ MiB, offered to apt/);
    await withImageMounted(join(work, 'moved.qcow2'), 'gpt-esp', async (root) => {
      expect(await dpkgVersion(root, 'kubectl')).toBe(mirror.versions.kubectl[0]);
      expect((await readdir(join(root, 'var/cache/apt/archives'))).filter((name) => name.endsWith('.deb'))).toEqual([]);
      expect((await readdir(join(root, 'var/cache/elsewhere'))).filter((name) => name.endsWith('.deb'))).toEqual([]);
    });
  });

  test('two builds at once share the cache; --no-cache leaves it alone; prune --all empties it', async () => {
    const [a, b] = await Promise.all([build('a.qcow2', ['--refresh', '2']), build('b.qcow2', ['--refresh', '2'])]);
    for (const result of [a, b]) if (result.exitCode !== 0) throw new Error(result.all);
    const before = (await readdir(join(cache, 'packages/deb'))).sort();
    const listsBefore = (await readdir(join(cache, 'packages/apt-list'))).sort();
    // apt's srcpkgcache.bin of this recipe's packages step, left by the builds before (their lists from the cache).
    // Stored per step key and lists: the two concurrent builds store under the same key; earlier tests' recipes under theirs.
    const sourceCachesBefore = (await readdir(join(cache, 'packages/apt-srcpkgcache'))).sort();
    expect(sourceCachesBefore.length).toBeGreaterThan(0);
    const requests = debRequests().length;
    const bypass = await build('nocache.qcow2', ['--no-cache']);
    if (bypass.exitCode !== 0) throw new Error(bypass.all);
    expect(bypass.stderr).not.toContain('package cache:');
    expect(debRequests().length).toBe(requests + 2);
    expect((await readdir(join(cache, 'packages/deb'))).sort()).toEqual(before);
    expect((await readdir(join(cache, 'packages/apt-list'))).sort()).toEqual(listsBefore);
    expect((await readdir(join(cache, 'packages/apt-srcpkgcache'))).sort()).toEqual(sourceCachesBefore);
    const pruned = await runCli(['cache', 'prune', '--all'], { env });
    expect(pruned.stdout).toContain(`removed ${before.length + listsBefore.length + sourceCachesBefore.length} file(s) of the package cache`);
    expect(await readdir(join(cache, 'packages/deb'))).toEqual([]);
    expect(await readdir(join(cache, 'packages/apt-list'))).toEqual([]);
    expect(await readdir(join(cache, 'packages/apt-srcpkgcache'))).toEqual([]);
  });
});
