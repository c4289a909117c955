import { lstat, mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { aptIndexesNamed, aptListsPresent, aptListsWithoutUpdate, APT_RELEASE_FILES_ONLY, APT_UPDATE_PLAN_QUERY, keepAptLists, offerCachedAptLists, parseUpdatePlan, releaseDate, releaseFacts, releaseFileHashes, updateWouldFetchNothing } from '../../src/pkg/apt-lists-cache.js';
import type { ChrootSession } from '../../src/chroot/session.js';
import { keepDownloadedFiles } from '../../src/pkg/package-cache.js';
import { sha256Text } from '../../src/util/digest.js';
import { silentLogger } from '../../src/util/log.js';

const LISTS = 'var/lib/apt/lists';

/** An InRelease as Debian writes it (clearsigned; the signature is apt's business, not the host's). */
function inRelease(entries: Record<string, string>): string {
  const lines = Object.entries(entries).map(([path, content]) => ` ${sha256Text(content)} ${Buffer.byteLength(content)} ${path}`);
  return `-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\nOrigin: Debian\nSuite: stable\nDate: Sat, 29 Jun 2024 09:08:07 UTC\nMD5Sum:\n ${'0'.repeat(32)} 1 main/binary-amd64/Packages\nSHA256:\n${lines.join('\n')}\nAcquire-By-Hash: yes\n-----BEGIN PGP SIGNATURE-----\n\nxyz\n-----END PGP SIGNATURE-----\n`;
}

describe("apt's package lists in the package cache", () => {
  let dir: string;
  let root: string;
  let cache: string;
  const log = silentLogger();
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'apt-lists-'));
    root = join(dir, 'root');
    cache = join(dir, 'cache');
    await mkdir(join(root, LISTS, 'partial'), { recursive: true });
  });
  afterEach(() => rm(dir, { recursive: true, force: true }));

  test('a release file\'s SHA256 section, paths apt names without quoting only', () => {
    const text = inRelease({ 'main/binary-amd64/Packages': 'P', 'main/binary-amd64/Packages.xz': 'X', 'main/i18n/Translation-en': 'T', Packages: 'flat' }) +
      ' ' + 'a'.repeat(64) + ' 1 main/odd_name/Packages\n';
    const hashes = releaseFileHashes(text.replace('SHA256:\n', `SHA256:\n ${'b'.repeat(64)} 1 ../../etc/shadow\n ${'c'.repeat(64)} 1 /abs\n`));
    expect([...hashes.keys()]).toEqual(['main/binary-amd64/Packages', 'main/binary-amd64/Packages.xz', 'main/i18n/Translation-en', 'Packages']);
    expect(hashes.get('Packages')).toBe(sha256Text('flat'));
    // The MD5Sum section is not read: its entries are not sha256.
    expect(releaseFileHashes(inRelease({})).size).toBe(0);
  });

  test('lists present: any file but apt\'s lock, its directories and the release files', async () => {
    await mkdir(join(root, LISTS, 'auxfiles'));
    await writeFile(join(root, LISTS, 'lock'), '');
    await writeFile(join(root, LISTS, 'deb.debian.org_debian_dists_bookworm_InRelease'), inRelease({}));
    await writeFile(join(root, LISTS, 'example.org_dists_x_Release'), '');
    await writeFile(join(root, LISTS, 'example.org_dists_x_Release.gpg'), '');
    expect(await aptListsPresent(root)).toBe(false);
    await writeFile(join(root, LISTS, 'deb.debian.org_debian_dists_bookworm_main_i18n_Translation-en'), '');
    expect(await aptListsPresent(root)).toBe(true);
    await rm(join(root, LISTS), { recursive: true });
    expect(await aptListsPresent(root)).toBe(false);
  });

  describe('leaving the second update out', () => {
    const site = 'deb.debian.org_debian_dists_bookworm_';
    const debianRelease = inRelease({ 'main/binary-amd64/Packages': 'P', 'main/binary-amd64/Packages.xz': 'X', 'main/binary-all/Packages': 'A', 'main/i18n/Translation-en': 'T' })
      .replace('Suite: stable\n', 'Suite: stable\nNo-Support-for-Architecture-all: Packages\nArchitectures: all amd64 arm64\n');
    const target = (key: string, architecture: string, createdBy: string, at = site) => `/${LISTS}/${at}${key.replaceAll('/', '_')} ${key} ${architecture} ${createdBy}`;
    const targets = [target('main/binary-amd64/Packages', 'amd64', 'Packages'), target('main/binary-all/Packages', 'all', 'Packages'), target('main/i18n/Translation-en', '$(ARCHITECTURE)', 'Translations')];
    const answer = (lines: string[], config = 'APT::Architecture "amd64";\n') => `${lines.join('\n')}\n@@imagebuilder-config\n${config}`;
    const present = new Set(['lock', 'partial', `${site}InRelease`, `${site}main_binary-amd64_Packages`, `${site}main_i18n_Translation-en`]);
    const decide = (lines: string[], release = debianRelease, listNames = present, config?: string) =>
      updateWouldFetchNothing(parseUpdatePlan(answer(lines, config))!, listNames, new Map([[`${site}InRelease`, releaseFacts(release)]]));

    test('the guest\'s answer: each target with the release file naming it, and its post-update hooks; anything else is not understood', () => {
      expect(parseUpdatePlan(answer(targets))).toEqual({
        targets: [
          { name: `${site}main_binary-amd64_Packages`, metaKey: 'main/binary-amd64/Packages', architecture: 'amd64', createdBy: 'Packages', release: `${site}InRelease` },
          { name: `${site}main_binary-all_Packages`, metaKey: 'main/binary-all/Packages', architecture: 'all', createdBy: 'Packages', release: `${site}InRelease` },
          { name: `${site}main_i18n_Translation-en`, metaKey: 'main/i18n/Translation-en', architecture: '$(ARCHITECTURE)', createdBy: 'Translations', release: `${site}InRelease` },
        ],
        postUpdateHook: false,
      });
      expect(parseUpdatePlan(answer(targets, 'APT::Update::Post-Invoke-Success "";\nAPT::Update::Post-Invoke-Success:: "/usr/lib/cnf-update-db";\n'))?.postUpdateHook).toBe(true);
      expect(parseUpdatePlan(answer(targets, 'APT::Update::Post-Invoke:: "touch /x";\n'))?.postUpdateHook).toBe(true);
      expect(parseUpdatePlan(answer(targets, 'Binary::apt-get::APT::Update::Post-Invoke:: "touch /x";\n'))?.postUpdateHook).toBe(true);
      expect(parseUpdatePlan(answer(targets, 'APT::Update::Pre-Invoke:: "true";\n'))?.postUpdateHook).toBe(false);
      // No marker (the config dump did not run), no targets, an extra field, a path elsewhere, a name apt quoted.
      expect(parseUpdatePlan(targets.join('\n'))).toBeUndefined();
      expect(parseUpdatePlan(answer([]))).toBeUndefined();
      expect(parseUpdatePlan(answer([`${targets[0]} extra`]))).toBeUndefined();
      expect(parseUpdatePlan(answer([targets[0].replace(`/${LISTS}/`, '/elsewhere/')]))).toBeUndefined();
      expect(parseUpdatePlan(answer([`/${LISTS}/${site}main_odd%5fname_Packages main/odd_name/Packages amd64 Packages`]))).toBeUndefined();
      // A flood: more targets, or more output, than any real apt gives.
      expect(parseUpdatePlan(answer(Array.from({ length: 10_001 }, (_, i) => target(`c${i}/binary-amd64/Packages`, 'amd64', 'Packages'))))).toBeUndefined();
      expect(parseUpdatePlan(answer(targets, 'x'.repeat(5 << 20)))).toBeUndefined();
    });

    test('left out only when apt would fetch no index and no hook waits for the lists', () => {
      // Debian's: binary-all is not fetched (its packages are in binary-amd64's); the rest are there.
      expect(decide(targets)).toBe(true);
      // An index the release offers and the lists lack: apt fetches it.
      expect(decide(targets, debianRelease, new Set([...present].filter((name) => !name.endsWith('Translation-en'))))).toBe(false);
      // binary-all where the release supports it for Packages: fetched; left out again where its architectures lack `all` (Ubuntu's).
      const allSupported = debianRelease.replace('No-Support-for-Architecture-all: Packages\n', '');
      expect(decide(targets, allSupported)).toBe(false);
      expect(decide(targets, allSupported.replace('all amd64', 'amd64'))).toBe(true);
      // An optional index the release does not offer (Translation-de) is left out by apt; a Packages one makes apt fail: it runs, to say so.
      expect(decide([...targets, target('main/i18n/Translation-de', '$(ARCHITECTURE)', 'Translations')])).toBe(true);
      expect(decide([...targets, target('contrib/binary-amd64/Packages', 'amd64', 'Packages')])).toBe(false);
      // Offered under a path the cache does not take (apt quotes none of these), or compressed only: apt fetches it.
      expect(decide([...targets, target('main/i18n/Translation-en(x)', '$(ARCHITECTURE)', 'Translations')], debianRelease.replace('SHA256:\n', `SHA256:\n ${'a'.repeat(64)} 1 main/i18n/Translation-en(x)\n`))).toBe(false);
      expect(decide([...targets, target('main/i18n/Translation-fr', '$(ARCHITECTURE)', 'Translations')], debianRelease.replace('SHA256:\n', `SHA256:\n ${'a'.repeat(64)} 1 main/i18n/Translation-fr.xz\n`))).toBe(false);
      // A source whose release file is not there (it failed, or it has only Release and Release.gpg).
      expect(decide([...targets, target('main/binary-amd64/Packages', 'amd64', 'Packages', 'example.org_dists_x_')])).toBe(false);
      // A hook run after an update, which ran before the lists were there.
      expect(decide(targets, debianRelease, present, 'APT::Update::Post-Invoke-Success:: "/usr/lib/cnf-update-db";\n')).toBe(false);
    });

    test('asked of the guest after a first update that fetched everything; the lists no target owns go when it is left out', async () => {
      const write = (name: string, content: string) => writeFile(join(root, LISTS, name), content);
      await write('lock', '');
      await write(`${site}InRelease`, debianRelease);
      await write(`${site}main_binary-amd64_Packages`, 'P');
      await write(`${site}main_i18n_Translation-en`, 'T');
      // Offered because the release names it, used by no target of this guest's apt (another architecture's).
      await write(`${site}main_binary-arm64_Packages`, 'R');
      const asked: string[][] = [];
      const session = (stdout: string, exitCode = 0) => ({ root, exec: async (argv: string[]) => (asked.push(argv), { command: '', exitCode, stdout, stderr: '', output: stdout }) }) as unknown as ChrootSession;
      const ok = { exitCode: 0, output: 'Get:1 http://deb.debian.org/debian bookworm InRelease [151 kB]\nReading package lists...\n' };
      // A first update that failed, even partly (apt may exit 0 with an old release file kept): apt runs, nothing is asked.
      expect(await aptListsWithoutUpdate(session(answer(targets)), { exitCode: 100, output: '' }, log)).toBe(false);
      expect(await aptListsWithoutUpdate(session(answer(targets)), { exitCode: 0, output: 'Err:1 http://deb.debian.org/debian bookworm InRelease\n  Temporary failure resolving\nW: Failed to fetch http://deb.debian.org/debian/dists/bookworm/InRelease\n' }, log)).toBe(false);
      expect(await aptListsWithoutUpdate(session(answer(targets)), { exitCode: 0, output: 'W: Some index files failed to download. They have been ignored, or old ones used instead.\n' }, log)).toBe(false);
      expect(asked).toEqual([]);
      // An apt without indextargets.
      expect(await aptListsWithoutUpdate(session('E: Invalid operation indextargets\n', 100), ok, log)).toBe(false);
      expect(asked).toEqual([APT_UPDATE_PLAN_QUERY]);
      expect(await readdir(join(root, LISTS))).toContain(`${site}main_binary-arm64_Packages`);
      // A release file larger than any real one is not read: apt runs.
      await write(`${site}InRelease`, debianRelease + ' '.repeat(17 << 20));
      expect(await aptListsWithoutUpdate(session(answer(targets)), ok, log)).toBe(false);
      // A link to a host file that would say yes is resolved inside the guest, where there is none; a FIFO is never opened.
      const hostRelease = join(dir, 'host-release');
      await writeFile(hostRelease, debianRelease);
      await rm(join(root, LISTS, `${site}InRelease`));
      await symlink(hostRelease, join(root, LISTS, `${site}InRelease`));
      expect(await aptListsWithoutUpdate(session(answer(targets)), ok, log)).toBe(false);
      await rm(join(root, LISTS, `${site}InRelease`));
      await execa('mkfifo', [join(root, LISTS, `${site}InRelease`)]);
      expect(await aptListsWithoutUpdate(session(answer(targets)), ok, log)).toBe(false);
      await rm(join(root, LISTS, `${site}InRelease`));
      await write(`${site}InRelease`, debianRelease);
      expect(await aptListsWithoutUpdate(session(answer(targets)), ok, log)).toBe(true);
      expect((await readdir(join(root, LISTS))).sort()).toEqual([`${site}InRelease`, `${site}main_binary-amd64_Packages`, `${site}main_i18n_Translation-en`, 'lock', 'partial']);
    });
  });

  test("a release file's Date, as apt's archives write it; anything else is no date", () => {
    expect(releaseDate(inRelease({}))).toEqual(new Date('2024-06-29T09:08:07Z'));
    expect(releaseDate('Origin: Debian\nDate: Sat, 10 Jun 2023 08:55:01 UTC\n')).toEqual(new Date('2023-06-10T08:55:01Z'));
    expect(releaseDate('Origin: Debian\n')).toBeUndefined();
    expect(releaseDate('Date: soon\n')).toBeUndefined();
    expect(releaseDate('Date: Thu, 01 Jan 1970 00:00:00 UTC\n')).toBeUndefined();
    // Only a field of its own: a Valid-Until is not the Date.
    expect(releaseDate('Valid-Until: Sat, 10 Jun 2023 08:55:01 UTC\n')).toBeUndefined();
  });

  test('a release file dated after its download (a wrong clock, or crafted) gives its lists no time of its own', async () => {
    const prefix = 'deb.debian.org_debian_dists_bookworm_';
    await writeFile(join(root, LISTS, `${prefix}InRelease`), inRelease({ 'main/binary-amd64/Packages': 'P' }).replace('2024', '2150'));
    const { named, released } = await aptIndexesNamed(root);
    expect(named.map((index) => index.time)).toEqual([undefined]);
    expect(released).toEqual([]);
  });

  test('every index target off for the release-files-only update', () => {
    expect(APT_RELEASE_FILES_ONLY).toContain('Acquire::IndexTargets::deb::Packages::DefaultEnabled=false');
    expect(APT_RELEASE_FILES_ONLY).toContain('Acquire::IndexTargets::deb::Translations::DefaultEnabled=false');
    expect(APT_RELEASE_FILES_ONLY).toContain('Acquire::IndexTargets::deb-src::Sources::DefaultEnabled=false');
  });

  test('kept from one guest, offered to the next only where its fresh release file names those bytes; everything else in its lists goes, links replaced, never followed', async () => {
    const packages = 'Package: a\nVersion: 1\n';
    const translation = 'Package: a\nDescription-en: a\n';
    const arm = 'Package: b\nVersion: 1\n';
    const prefix = 'deb.debian.org_debian_dists_bookworm_';
    const release = inRelease({ 'main/binary-amd64/Packages': packages, 'main/i18n/Translation-en': translation, 'main/binary-arm64/Packages': arm });
    await writeFile(join(root, LISTS, `${prefix}InRelease`), release);
    // The release file's own Date: what each list it names gets when offered, and the release file too.
    const released = new Date('2024-06-29T09:08:07Z');
    expect((await aptIndexesNamed(root)).named).toEqual([
      { guestPath: `/${LISTS}/${prefix}main_binary-amd64_Packages`, sha256: sha256Text(packages), time: released },
      { guestPath: `/${LISTS}/${prefix}main_i18n_Translation-en`, sha256: sha256Text(translation), time: released },
      { guestPath: `/${LISTS}/${prefix}main_binary-arm64_Packages`, sha256: sha256Text(arm), time: released },
    ]);
    // The first guest fetched two lists as named, and left other bytes under the third's name: two are kept.
    await writeFile(join(root, LISTS, `${prefix}main_binary-amd64_Packages`), packages);
    await writeFile(join(root, LISTS, `${prefix}main_i18n_Translation-en`), translation);
    await writeFile(join(root, LISTS, `${prefix}main_binary-arm64_Packages`), 'planted');
    expect(await keepAptLists(root, cache, log)).toBe(2);
    expect(await readFile(join(cache, 'apt-list', `${sha256Text(packages)}.apt-list`), 'utf8')).toBe(packages);
    await expect(readFile(join(cache, 'apt-list', `${sha256Text(arm)}.apt-list`))).rejects.toThrow(/ENOENT/);

    // The next guest, after its release-files-only update: a stale Packages, a link where Translation goes, a list
    // kept compressed, one a release file no longer names, apt's own directories and lock.
    await rm(join(root, LISTS), { recursive: true });
    await mkdir(join(root, LISTS, 'partial'), { recursive: true });
    await mkdir(join(root, LISTS, 'auxfiles'));
    await writeFile(join(root, LISTS, 'lock'), '');
    await writeFile(join(root, LISTS, `${prefix}InRelease`), release);
    await writeFile(join(root, LISTS, `${prefix}main_binary-amd64_Packages`), 'Package: old\n');
    const outside = join(dir, 'outside');
    await writeFile(outside, 'host file');
    await symlink(outside, join(root, LISTS, `${prefix}main_i18n_Translation-en`));
    await writeFile(join(root, LISTS, `${prefix}main_binary-amd64_Packages.lz4`), 'compressed');
    await writeFile(join(root, LISTS, 'gone.example_dists_x_main_binary-amd64_Packages'), 'Package: orphan\n');
    expect(await offerCachedAptLists(root, cache, log)).toBe(2);
    expect(await readFile(join(root, LISTS, `${prefix}main_binary-amd64_Packages`), 'utf8')).toBe(packages);
    // Offered with the release file's time, as in every build of that release: apt's srcpkgcache.bin checks it.
    expect((await lstat(join(root, LISTS, `${prefix}main_binary-amd64_Packages`))).mtime).toEqual(released);
    expect((await lstat(join(root, LISTS, `${prefix}InRelease`))).mtime).toEqual(released);
    // The link was replaced by the cached file, never written through.
    expect(await readFile(join(root, LISTS, `${prefix}main_i18n_Translation-en`), 'utf8')).toBe(translation);
    expect((await lstat(join(root, LISTS, `${prefix}main_i18n_Translation-en`))).isFile()).toBe(true);
    expect(await readFile(outside, 'utf8')).toBe('host file');
    expect((await readdir(join(root, LISTS))).sort()).toEqual(['auxfiles', `${prefix}InRelease`, `${prefix}main_binary-amd64_Packages`, `${prefix}main_i18n_Translation-en`, 'lock', 'partial']);

    // A release file that names other bytes: the list that no longer matches goes, nothing is offered for it.
    await writeFile(join(root, LISTS, `${prefix}InRelease`), inRelease({ 'main/binary-amd64/Packages': 'Package: newer\n', 'main/i18n/Translation-en': translation }));
    expect(await offerCachedAptLists(root, cache, log)).toBe(0);
    await expect(readFile(join(root, LISTS, `${prefix}main_binary-amd64_Packages`))).rejects.toThrow(/ENOENT/);
    expect(await readFile(join(root, LISTS, `${prefix}main_i18n_Translation-en`), 'utf8')).toBe(translation);

    // The release file did not come (its source failed): no list of it stays to pass for current.
    await rm(join(root, LISTS, `${prefix}InRelease`));
    expect(await offerCachedAptLists(root, cache, log)).toBe(0);
    expect((await readdir(join(root, LISTS))).sort()).toEqual(['auxfiles', 'lock', 'partial']);
  });

  test('a FIFO or a directory under a list\'s name is never opened: the FIFO goes, the directory stays and nothing is written through it', async () => {
    const prefix = 'deb.debian.org_debian_dists_bookworm_';
    await writeFile(join(root, LISTS, `${prefix}InRelease`), inRelease({ 'main/binary-amd64/Packages': 'P', 'main/i18n/Translation-en': 'T' }));
    await execa('mkfifo', [join(root, LISTS, `${prefix}main_binary-amd64_Packages`)]);
    await mkdir(join(root, LISTS, `${prefix}main_i18n_Translation-en`));
    // A reader of the FIFO would block here for ever; the test's timeout says so.
    expect(await offerCachedAptLists(root, cache, log)).toBe(0);
    expect((await readdir(join(root, LISTS))).sort()).toEqual([`${prefix}InRelease`, `${prefix}main_i18n_Translation-en`, 'partial']);
    expect(await keepAptLists(root, cache, log)).toBe(0);
  });

  test('a guest naming more than a build may keep: kept up to the bound, the rest not', async () => {
    const prefix = 'evil.example_dists_x_';
    const lists: Record<string, string> = {};
    for (let i = 0; i < 3; i++) lists[`main/binary-amd64/Packages${i}`] = String(i).repeat(1000);
    await writeFile(join(root, LISTS, `${prefix}InRelease`), inRelease(lists));
    for (const [path, content] of Object.entries(lists)) await writeFile(join(root, LISTS, `${prefix}${path.replaceAll('/', '_')}`), content);
    const { named } = await aptIndexesNamed(root);
    expect(await keepDownloadedFiles(root, cache, 'apt-list', named, log, { maxFileBytes: 10_000, maxTotalBytes: 2500 })).toBe(2);
    expect(await keepDownloadedFiles(root, join(dir, 'other'), 'apt-list', named, log, { maxFileBytes: 999, maxTotalBytes: 1 << 20 })).toBe(0);
  });
});
