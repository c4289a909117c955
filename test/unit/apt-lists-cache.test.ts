import { lstat, mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { aptIndexesNamed, aptListsPresent, APT_RELEASE_FILES_ONLY, keepAptLists, offerCachedAptLists, releaseFileHashes, updateWouldFetchNothing } from '../../src/pkg/apt-lists-cache.js';
import { keepDownloadedFiles } from '../../src/pkg/package-cache.js';
import { sha256Text } from '../../src/util/digest.js';
import { silentLogger } from '../../src/util/log.js';

const LISTS = 'var/lib/apt/lists';

/** An InRelease as Debian writes it (clearsigned; the signature is apt's business, not the host's). */
function inRelease(entries: Record<string, string>): string {
  const lines = Object.entries(entries).map(([path, content]) => ` ${sha256Text(content)} ${Buffer.byteLength(content)} ${path}`);
  return `-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\nOrigin: Debian\nSuite: stable\nMD5Sum:\n ${'0'.repeat(32)} 1 main/binary-amd64/Packages\nSHA256:\n${lines.join('\n')}\nAcquire-By-Hash: yes\n-----BEGIN PGP SIGNATURE-----\n\nxyz\n-----END PGP SIGNATURE-----\n`;
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

  test('the second update is left out only when apt would fetch no index and no hook waits for the lists', () => {
    const site = 'deb.debian.org_debian_dists_bookworm_';
    const release = inRelease({ 'main/binary-amd64/Packages': 'P', 'main/binary-amd64/Packages.xz': 'X', 'main/binary-all/Packages': 'A', 'main/i18n/Translation-en': 'T' })
      .replace('Suite: stable\n', 'Suite: stable\nNo-Support-for-Architecture-all: Packages\nArchitectures: all amd64 arm64\n');
    const releases = new Map([[`${site}InRelease`, release]]);
    const target = (key: string, architecture: string, createdBy: string) => `/${LISTS}/${site}${key.replaceAll('/', '_')} ${key} ${architecture} ${createdBy}`;
    const targets = [target('main/binary-amd64/Packages', 'amd64', 'Packages'), target('main/binary-all/Packages', 'all', 'Packages'), target('main/i18n/Translation-en', '$(ARCHITECTURE)', 'Translations')];
    const plan = (lines: string[], hooks = '') => ({ exitCode: 0, stdout: `${lines.join('\n')}\n@@imagebuilder-hooks\n${hooks}` });
    const ok = { exitCode: 0, output: 'Get:1 http://deb.debian.org/debian bookworm InRelease [151 kB]\nReading package lists...\n' };
    const present = new Set(['lock', 'partial', `${site}InRelease`, `${site}main_binary-amd64_Packages`, `${site}main_i18n_Translation-en`]);
    // Debian's: binary-all is not fetched (its Packages are in binary-amd64's); the rest are there.
    expect(updateWouldFetchNothing(ok, plan(targets), present, releases)).toBe(true);
    // An index the release offers and the lists lack: apt fetches it.
    expect(updateWouldFetchNothing(ok, plan(targets), new Set([...present].filter((name) => !name.endsWith('Translation-en'))), releases)).toBe(false);
    // binary-all where the release supports it for Packages: fetched.
    const allSupported = new Map([[`${site}InRelease`, release.replace('No-Support-for-Architecture-all: Packages\n', '')]]);
    expect(updateWouldFetchNothing(ok, plan(targets), present, allSupported)).toBe(false);
    // ... and left out again where the release's architectures lack `all` (Ubuntu's).
    const noAll = new Map([[`${site}InRelease`, release.replace('No-Support-for-Architecture-all: Packages\n', '').replace('all amd64', 'amd64')]]);
    expect(updateWouldFetchNothing(ok, plan(targets), present, noAll)).toBe(true);
    // An optional index the release does not offer (Translation-de) is left out by apt; a Packages one makes apt fail: it runs, to say so.
    expect(updateWouldFetchNothing(ok, plan([...targets, target('main/i18n/Translation-de', '$(ARCHITECTURE)', 'Translations')]), present, releases)).toBe(true);
    expect(updateWouldFetchNothing(ok, plan([...targets, target('contrib/binary-amd64/Packages', 'amd64', 'Packages')]), present, releases)).toBe(false);
    // A source whose release file is not in the lists (it failed, or it has only Release and Release.gpg).
    expect(updateWouldFetchNothing(ok, plan([...targets, `/${LISTS}/example.org_dists_x_main_binary-amd64_Packages main/binary-amd64/Packages amd64 Packages`]), present, releases)).toBe(false);
    // A hook run after an update, which ran before the lists were there.
    expect(updateWouldFetchNothing(ok, plan(targets, 'APT::Update::Post-Invoke-Success "";\nAPT::Update::Post-Invoke-Success:: "/usr/lib/cnf-update-db";\n'), present, releases)).toBe(false);
    expect(updateWouldFetchNothing(ok, plan(targets, 'APT::Update::Post-Invoke:: "touch /x";\n'), present, releases)).toBe(false);
    // The first update failed, even partly (apt may exit 0 with old release files kept), or said nothing understood.
    expect(updateWouldFetchNothing({ exitCode: 100, output: '' }, plan(targets), present, releases)).toBe(false);
    expect(updateWouldFetchNothing({ exitCode: 0, output: 'Err:1 http://deb.debian.org/debian bookworm InRelease\n  Temporary failure resolving\nW: Failed to fetch http://deb.debian.org/debian/dists/bookworm/InRelease\n' }, plan(targets), present, releases)).toBe(false);
    expect(updateWouldFetchNothing({ exitCode: 0, output: 'W: Some index files failed to download. They have been ignored, or old ones used instead.\n' }, plan(targets), present, releases)).toBe(false);
    expect(updateWouldFetchNothing(ok, { exitCode: 1, stdout: 'E: Invalid operation indextargets' }, present, releases)).toBe(false);
    expect(updateWouldFetchNothing(ok, plan([]), present, releases)).toBe(false);
    expect(updateWouldFetchNothing(ok, { exitCode: 0, stdout: targets.join('\n') }, present, releases)).toBe(false);
    expect(updateWouldFetchNothing(ok, plan([`${targets[0]} extra`]), present, releases)).toBe(false);
    expect(updateWouldFetchNothing(ok, plan([targets[0].replace(`/${LISTS}/`, '/elsewhere/')]), present, releases)).toBe(false);
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
    expect((await aptIndexesNamed(root)).named).toEqual([
      { guestPath: `/${LISTS}/${prefix}main_binary-amd64_Packages`, sha256: sha256Text(packages) },
      { guestPath: `/${LISTS}/${prefix}main_i18n_Translation-en`, sha256: sha256Text(translation) },
      { guestPath: `/${LISTS}/${prefix}main_binary-arm64_Packages`, sha256: sha256Text(arm) },
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
