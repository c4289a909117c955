import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { aptIndexesNamed, APT_RELEASE_FILES_ONLY, keepAptLists, offerCachedAptLists, releaseFileHashes } from '../../src/pkg/apt-lists-cache.js';
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

  test('every index target off for the release-files-only update', () => {
    expect(APT_RELEASE_FILES_ONLY).toContain('Acquire::IndexTargets::deb::Packages::DefaultEnabled=false');
    expect(APT_RELEASE_FILES_ONLY).toContain('Acquire::IndexTargets::deb::Translations::DefaultEnabled=false');
    expect(APT_RELEASE_FILES_ONLY).toContain('Acquire::IndexTargets::deb-src::Sources::DefaultEnabled=false');
  });

  test('kept from one guest, offered to the next only where its fresh release file names those bytes; a stale list is removed, a link never followed', async () => {
    const packages = 'Package: a\nVersion: 1\n';
    const translation = 'Package: a\nDescription-en: a\n';
    const prefix = 'deb.debian.org_debian_dists_bookworm_';
    await writeFile(join(root, LISTS, `${prefix}InRelease`), inRelease({ 'main/binary-amd64/Packages': packages, 'main/i18n/Translation-en': translation }));
    expect((await aptIndexesNamed(root)).named).toEqual([
      { guestPath: `/${LISTS}/${prefix}main_binary-amd64_Packages`, sha256: sha256Text(packages) },
      { guestPath: `/${LISTS}/${prefix}main_i18n_Translation-en`, sha256: sha256Text(translation) },
    ]);
    // The first guest fetched Packages as named, and left other bytes under Translation's name: only Packages is kept.
    await writeFile(join(root, LISTS, `${prefix}main_binary-amd64_Packages`), packages);
    await writeFile(join(root, LISTS, `${prefix}main_i18n_Translation-en`), 'planted');
    expect(await keepAptLists(root, cache, log)).toBe(1);
    expect(await readFile(join(cache, 'apt-list', `${sha256Text(packages)}.apt-list`), 'utf8')).toBe(packages);

    // The next guest: its lists hold a stale Packages and a link where Translation goes; its fresh release file
    // names the cached Packages. The stale file is replaced by the cached one, the link removed, not followed.
    await rm(join(root, LISTS), { recursive: true });
    await mkdir(join(root, LISTS), { recursive: true });
    await writeFile(join(root, LISTS, `${prefix}InRelease`), inRelease({ 'main/binary-amd64/Packages': packages, 'main/i18n/Translation-en': translation }));
    await writeFile(join(root, LISTS, `${prefix}main_binary-amd64_Packages`), 'Package: old\n');
    const outside = join(dir, 'outside');
    await writeFile(outside, 'host file');
    await symlink(outside, join(root, LISTS, `${prefix}main_i18n_Translation-en`));
    expect(await offerCachedAptLists(root, cache, log)).toBe(1);
    expect(await readFile(join(root, LISTS, `${prefix}main_binary-amd64_Packages`), 'utf8')).toBe(packages);
    await expect(readFile(join(root, LISTS, `${prefix}main_i18n_Translation-en`))).rejects.toThrow(/ENOENT/);
    expect(await readFile(outside, 'utf8')).toBe('host file');

    // A release file naming other bytes: nothing offered, the list that does not match removed.
    await writeFile(join(root, LISTS, `${prefix}InRelease`), inRelease({ 'main/binary-amd64/Packages': 'Package: newer\n' }));
    expect(await offerCachedAptLists(root, cache, log)).toBe(0);
    await expect(readFile(join(root, LISTS, `${prefix}main_binary-amd64_Packages`))).rejects.toThrow(/ENOENT/);
  });
});
