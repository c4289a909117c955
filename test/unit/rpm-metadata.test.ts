import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { execa } from 'execa';
import { primaryLocation, PrimaryReader, readRepositoryPackages } from '../../src/pkg/rpm-metadata.js';

const A = 'a'.repeat(64);
const B = 'b'.repeat(64);

/** Two entries as createrepo_c writes them (a `<packager>` inside each), one with a sha1 checksum only. */
const PRIMARY = `<?xml version="1.0" encoding="UTF-8"?>
<metadata xmlns="http://linux.duke.edu/metadata/common" xmlns:rpm="http://linux.duke.edu/metadata/rpm" packages="3">
<package type="rpm">
  <name>kubelet</name>
  <checksum type="sha256" pkgid="YES">${A}</checksum>
  <packager>imagebuilder &lt;test&gt;</packager>
  <location href="x86_64/kubelet-1.36.2-150500.1.1.x86_64.rpm"/>
</package>
<package type="rpm">
  <name>old</name>
  <checksum type="sha" pkgid="YES">${'c'.repeat(40)}</checksum>
  <location href="x86_64/old-1-1.x86_64.rpm"/>
</package>
<package type="rpm">
  <name>a&amp;b</name>
  <checksum type="sha256" pkgid="YES">${B}</checksum>
  <location xml:base="http://elsewhere.invalid/" href="Packages/a/a&amp;b-1-1.noarch.rpm"/>
</package>
</metadata>
`;

const repomd = (href: string) =>
  `<?xml version="1.0"?><repomd xmlns="http://linux.duke.edu/metadata/repo"><data type="filelists"><location href="repodata/x-filelists.xml.gz"/></data><data type="primary"><checksum type="sha256">${A}</checksum><location href="${href}"/></data></repomd>`;

describe('rpm-md metadata read on the host, as data', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rpm-metadata-'));
  });
  afterEach(() => rm(dir, { recursive: true, force: true }));

  test('repomd.xml: the primary file, only as a plain name inside repodata/', () => {
    expect(primaryLocation(repomd('repodata/123-primary.xml.zst'))).toBe('123-primary.xml.zst');
    expect(primaryLocation(repomd('repodata/../../../etc/shadow'))).toBeUndefined();
    expect(primaryLocation(repomd('/etc/shadow'))).toBeUndefined();
    expect(primaryLocation('<repomd></repomd>')).toBeUndefined();
  });

  test('primary.xml: location -> sha256, whatever the chunking; other checksum types left out; entities decoded', () => {
    for (const size of [1, 7, 100, PRIMARY.length]) {
      const reader = new PrimaryReader();
      for (let at = 0; at < PRIMARY.length; at += size) reader.push(PRIMARY.slice(at, at + size));
      expect([...reader.packages]).toEqual([
        ['x86_64/kubelet-1.36.2-150500.1.1.x86_64.rpm', A],
        ['Packages/a/a&b-1-1.noarch.rpm', B],
      ]);
    }
    // A run of text with no end of entry is not a primary.xml: refused before it fills the memory.
    const reader = new PrimaryReader();
    expect(() => reader.push('<package type="rpm">'.padEnd(17 << 20, 'x'))).toThrow('longer than 16 MiB');
  });

  const repository = async (name: string, content: Buffer) => {
    await mkdir(join(dir, 'cache/repodata'), { recursive: true });
    await writeFile(join(dir, 'cache/repodata/repomd.xml'), repomd(`repodata/${name}`));
    await writeFile(join(dir, `cache/repodata/${name}`), content);
    return readRepositoryPackages(dir, '/cache/repodata');
  };
  const expected = { packages: new Map([['x86_64/kubelet-1.36.2-150500.1.1.x86_64.rpm', A], ['Packages/a/a&b-1-1.noarch.rpm', B]]), entries: new Map() };

  test('gzip and zstd primary files (zstd as Fedora and openSUSE compress theirs, made by the real zstd)', async () => {
    expect(await repository('1-primary.xml.gz', gzipSync(PRIMARY))).toEqual(expected);
    const zst = (await execa('zstd', ['-q', '-c'], { input: PRIMARY, encoding: 'buffer' })).stdout as unknown as Buffer;
    expect(await repository('2-primary.xml.zst', Buffer.from(zst))).toEqual(expected);
  });

  test('what cannot be read as metadata is skipped with its reason, never fatal and never a huge allocation', async () => {
    expect(await repository('3-primary.xml.bz2', Buffer.from('BZh9'))).toEqual({ skipped: expect.stringContaining('is not one imagebuilder reads') });
    expect(await repository('4-primary.xml.gz', Buffer.from('not gzip'))).toEqual({ skipped: expect.any(String) });
    // A zstd frame declaring a 2 TiB window (a crafted guest): refused from its header, before fzstd allocates.
    const frame = Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0x00, 0xf8, 0, 0, 0, 0]);
    expect(await repository('5-primary.xml.zst', frame)).toEqual({ skipped: expect.stringContaining('a zstd frame of') });
    // A declared content size of 2^40 bytes (single segment, 8-byte size): refused likewise.
    const declared = Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0xe0, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
    expect(await repository('6-primary.xml.zst', declared)).toEqual({ skipped: expect.stringContaining('a zstd frame of') });
    // A gzip bomb (64 MiB of zeros in 64 KiB): stopped as soon as it is no metadata, not read to its end.
    expect(await repository('7-primary.xml.gz', gzipSync(Buffer.alloc(64 << 20)))).toEqual({ skipped: expect.stringContaining('longer than 16 MiB') });
    // Uncompressed is read too.
    expect(await repository('8-primary.xml', Buffer.from(PRIMARY))).toEqual(expected);
  });
});
