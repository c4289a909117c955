import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import {
  parseChecksumFlag,
  parseChecksums,
  parseImageChecksumFile,
  parseSumsFile,
  selectChecksum,
  stripPgpArmor,
  verifySum,
} from '../../src/fetch/checksums.js';
import { hashFile } from '../../src/util/digest.js';
import { ImageBuilderError } from '../../src/util/errors.js';

const a64 = 'a'.repeat(64);
const b64 = 'b'.repeat(64);
const c128 = 'c'.repeat(128);
const d128 = 'd'.repeat(128);

/** Fedora publishes its CHECKSUM files like this: clearsigned, BSD lines, size comments. */
const FEDORA_CHECKSUM = `-----BEGIN PGP SIGNED MESSAGE-----
Hash: SHA256

# Fedora-Cloud-Base-Generic-41-1.4.x86_64.qcow2: 491716608 bytes
SHA256 (Fedora-Cloud-Base-Generic-41-1.4.x86_64.qcow2) = ${a64}
# Fedora-Cloud-Base-Generic-41-1.4.x86_64.raw.xz: 417470564 bytes
SHA256 (Fedora-Cloud-Base-Generic-41-1.4.x86_64.raw.xz) = ${b64}
- -----a dash-escaped line-----
-----BEGIN PGP SIGNATURE-----

iQIzBAEBCAAdFiEE8X+Ztx0pxVI3EMPGoKCw9m52GwUFAmc4o5EACgkQoKCw9m52
=abcd
-----END PGP SIGNATURE-----
`;

describe('sums files', () => {
  test('GNU text mode (two spaces), as Debian SHA512SUMS and Ubuntu SHA256SUMS list them', () => {
    expect(parseChecksums(`${c128}  debian-12-genericcloud-amd64.qcow2\n${d128}  debian-12-genericcloud-amd64.raw\n`)).toEqual([
      { name: 'debian-12-genericcloud-amd64.qcow2', algorithm: 'sha512', hash: c128 },
      { name: 'debian-12-genericcloud-amd64.raw', algorithm: 'sha512', hash: d128 },
    ]);
  });

  test('GNU binary mode (*name), paths, CRLF, upper case, escaped names', () => {
    expect(parseChecksums(`${'A'.repeat(64)} *noble-server-cloudimg-amd64.img\r\n${b64}  ./sub/dir/image.raw\n\\${a64}  we\\\\ird\\nname\n`)).toEqual([
      { name: 'noble-server-cloudimg-amd64.img', algorithm: 'sha256', hash: a64 },
      { name: 'image.raw', algorithm: 'sha256', hash: b64 },
      { name: 'we\\ird\nname', algorithm: 'sha256', hash: a64 },
    ]);
  });

  test('BSD form for SHA256 and SHA512 (coreutils --tag, Fedora), a wrong length is not an entry', () => {
    expect(parseChecksums(`SHA256 (one.qcow2) = ${a64}\nSHA512 (two.qcow2) = ${c128}\nSHA256 (bad.qcow2) = ${c128}\nMD5 (x) = 0123\n`)).toEqual([
      { name: 'one.qcow2', algorithm: 'sha256', hash: a64 },
      { name: 'two.qcow2', algorithm: 'sha512', hash: c128 },
    ]);
  });

  test('a clearsigned Fedora CHECKSUM: armor stripped, comments skipped, dash-escaping undone', () => {
    const stripped = stripPgpArmor(FEDORA_CHECKSUM);
    expect(stripped.clearsigned).toBe(true);
    expect(stripped.text).toContain('-----a dash-escaped line-----');
    expect(stripped.text).not.toContain('Hash: SHA256');
    expect(stripped.text).not.toContain('iQIzBAEBCAAdFiEE');
    expect(parseChecksums(FEDORA_CHECKSUM)).toEqual([
      { name: 'Fedora-Cloud-Base-Generic-41-1.4.x86_64.qcow2', algorithm: 'sha256', hash: a64 },
      { name: 'Fedora-Cloud-Base-Generic-41-1.4.x86_64.raw.xz', algorithm: 'sha256', hash: b64 },
    ]);
    expect(stripPgpArmor('plain text').clearsigned).toBe(false);
  });

  test('a bare <image>.sha256 (just the hash), or one with a name; the suffix must fit the length', () => {
    expect(parseImageChecksumFile(`${a64}\n`, 'x.qcow2', 'sha256')).toEqual({ name: 'x.qcow2', algorithm: 'sha256', hash: a64 });
    expect(parseImageChecksumFile(`${c128}`, 'x.qcow2', 'sha512')).toEqual({ name: 'x.qcow2', algorithm: 'sha512', hash: c128 });
    expect(parseImageChecksumFile(`${c128}`, 'x.qcow2', 'sha256')).toBeUndefined();
    expect(parseImageChecksumFile(`${a64}  x.qcow2\n`, 'x.qcow2', 'sha256')?.hash).toBe(a64);
    expect(parseImageChecksumFile(`${a64}  other.qcow2\n`, 'x.qcow2', 'sha256')).toBeUndefined();
  });

  test('the entry for exactly this file name: not a prefix, not a longer name', () => {
    const entries = parseChecksums(`${a64}  image.qcow2.xz\n${b64}  image.qcow2\n${a64}  my-image.qcow2\n`);
    expect(selectChecksum(entries, 'image.qcow2')?.hash).toBe(b64);
    expect(selectChecksum(entries, 'image.qcow2.xz')?.hash).toBe(a64);
    expect(selectChecksum(entries, 'image')).toBeUndefined();
    expect(selectChecksum(entries, 'image.QCOW2')).toBeUndefined();
  });

  test('sha512 wins over sha256 for the same name; two different sums for one name are refused', () => {
    expect(selectChecksum(parseChecksums(`${a64}  x.img\nSHA512 (x.img) = ${c128}\n`), 'x.img')).toEqual({ name: 'x.img', algorithm: 'sha512', hash: c128 });
    expect(() => selectChecksum(parseChecksums(`${a64}  x.img\n${b64}  x.img\n`), 'x.img')).toThrow(expect.objectContaining({ code: 'VERIFY_FAILED' }));
  });

  test('parseSumsFile (the download step) keeps only sha256 lines', () => {
    expect([...parseSumsFile(`${a64}  a.img\n${c128}  b.img\nSHA256 (c.img) = ${b64}\n`)]).toEqual([
      ['a.img', a64],
      ['c.img', b64],
    ]);
  });
});

describe('--checksum', () => {
  test.each([
    [`sha256:${a64}`, 'sha256', a64],
    [`SHA512:${'C'.repeat(128)}`, 'sha512', c128],
    [a64, 'sha256', a64],
  ])('%s', (value, algorithm, hash) => {
    expect(parseChecksumFlag(value)).toEqual({ algorithm, hash, source: '--checksum' });
  });

  test.each([`sha256:${c128}`, 'md5:abc', 'sha256:xyz', `sha512:${a64}`])('%s is refused as BAD_INPUT', (value) => {
    expect(() => parseChecksumFlag(value)).toThrow(expect.objectContaining({ code: 'BAD_INPUT' }));
  });
});

describe('verification', () => {
  let dir: string;
  beforeAll(async () => (dir = await mkdtemp(join(tmpdir(), 'sums-'))));
  afterAll(() => rm(dir, { recursive: true, force: true }));

  test('hashFile computes several digests in one read', async () => {
    const path = join(dir, 'data');
    await writeFile(path, 'hello\n');
    expect(await hashFile(path, ['sha256', 'sha512'])).toEqual({
      sha256: createHash('sha256').update('hello\n').digest('hex'),
      sha512: createHash('sha512').update('hello\n').digest('hex'),
    });
  });

  test('a mismatch names both sums and the sums file', () => {
    let error: ImageBuilderError | undefined;
    try {
      verifySum('http://x/image.qcow2', { sha256: b64, sha512: d128 }, { algorithm: 'sha512', hash: c128, source: 'http://x/SHA512SUMS' });
    } catch (e) {
      error = e as ImageBuilderError;
    }
    expect(error?.code).toBe('VERIFY_FAILED');
    expect(error?.render()).toContain(`expected sha512 ${c128} (from http://x/SHA512SUMS)`);
    expect(error?.render()).toContain(`actual   sha512 ${d128}`);
    expect(() => verifySum('x', { sha256: a64 }, { algorithm: 'sha256', hash: a64, source: 's' })).not.toThrow();
  });
});
