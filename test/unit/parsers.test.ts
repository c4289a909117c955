import { parseSumsFile } from '../../src/fetch/checksums.js';
import { parseFstab, resolveSpec } from '../../src/mount/layout.js';
import { parseBlkidExport } from '../../src/mount/block.js';
import { parseDpkgStatus, aptInstallArgs } from '../../src/pkg/apt.js';
import { parseOsRelease } from '../../src/distro/os-release.js';
import { detectDistro } from '../../src/distro/families.js';
import { comparePackages } from '../../src/bom/collect.js';
import { parsePackageSpec } from '../../src/pkg/types.js';
import { posixAclText, standIn } from '../../src/image/rootfs-tar.js';

describe('sums files', () => {
  test('GNU text and binary forms, BSD form, paths and comments', () => {
    const a = 'a'.repeat(64);
    const b = 'B'.repeat(64);
    const c = 'c'.repeat(64);
    const sums = parseSumsFile(`# comment\n${a}  debian-12-genericcloud-amd64.qcow2\n${b} *./sub/image.raw\r\nSHA256 (Fedora-Cloud.qcow2) = ${c}\n\nnot a line\n`);
    expect([...sums]).toEqual([
      ['debian-12-genericcloud-amd64.qcow2', a],
      ['image.raw', 'b'.repeat(64)],
      ['Fedora-Cloud.qcow2', c],
    ]);
  });
});

describe('fstab', () => {
  const filesystems = [
    parseBlkidExport('/dev/loop0p1', 'DEVNAME=/dev/loop0p1\nUUID=C0FF-EE01\nTYPE=vfat\nPART_ENTRY_NAME=EFI\\ System\nPART_ENTRY_UUID=7E5A2C10-0001\n'),
    parseBlkidExport('/dev/loop0p2', 'UUID=6a0f3e1c-5d2b\nLABEL=root fs\nTYPE=ext4\nPART_ENTRY_NAME=root\nPART_ENTRY_UUID=abcd-02\n'),
  ];

  test('parses entries with line numbers, escapes and defaults', () => {
    expect(parseFstab('# c\nUUID=x / ext4 errors=remount-ro 0 1\n\nLABEL=a\\040b /mnt/my\\040disk xfs\nproc /proc proc\n')).toEqual([
      { line: 2, spec: 'UUID=x', path: '/', type: 'ext4', options: ['errors=remount-ro'] },
      { line: 4, spec: 'LABEL=a b', path: '/mnt/my disk', type: 'xfs', options: ['defaults'] },
      { line: 5, spec: 'proc', path: '/proc', type: 'proc', options: ['defaults'] },
    ]);
  });

  test.each([
    ['UUID=c0ff-ee01', '/dev/loop0p1'],
    ['UUID="6a0f3e1c-5d2b"', '/dev/loop0p2'],
    ['LABEL=root fs', '/dev/loop0p2'],
    ['/dev/disk/by-label/root\\x20fs', '/dev/loop0p2'],
    ['PARTUUID=abcd-02', '/dev/loop0p2'],
    ['/dev/disk/by-partuuid/7e5a2c10-0001', '/dev/loop0p1'],
    ['PARTLABEL=EFI System', '/dev/loop0p1'],
    ['/dev/disk/by-partlabel/root', '/dev/loop0p2'],
    ['/dev/disk/by-uuid/6a0f3e1c-5d2b', '/dev/loop0p2'],
  ])('%s resolves to %s', (spec, device) => {
    expect(resolveSpec(spec, filesystems)?.device).toBe(device);
  });

  test('names that are not on this disk do not resolve', () => {
    expect(resolveSpec('/dev/sda1', filesystems)).toBeUndefined();
    expect(resolveSpec('UUID=nope', filesystems)).toBeUndefined();
    expect(resolveSpec('LABEL=ROOT FS', filesystems)).toBeUndefined(); // labels are case-sensitive
  });
});

describe('dpkg and apt', () => {
  test('only installed packages, with source names', () => {
    const status = [
      'Package: socat\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.7.4.4-2\n',
      'Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nSource: glibc (2.36-9)\nVersion: 2.36-9+deb12u4\nDescription: x\n more\n',
      'Package: gone\nStatus: deinstall ok config-files\nArchitecture: amd64\nVersion: 1\n',
    ].join('\n');
    expect(parseDpkgStatus(status)).toEqual([
      { name: 'libc6', version: '2.36-9+deb12u4', architecture: 'amd64', source: 'glibc' },
      { name: 'socat', version: '1.7.4.4-2', architecture: 'amd64', source: 'socat' },
    ]);
  });

  test('apt-get install argv: non-interactive, keeps config files, its binary caches on /run, exact versions', () => {
    expect(aptInstallArgs([parsePackageSpec('socat'), parsePackageSpec('hello=2.10-3')])).toEqual([
      'apt-get', 'install', '-y', '-q', '-o', 'Dpkg::Options::=--force-confdef', '-o', 'Dpkg::Options::=--force-confold',
      '-o', 'Dpkg::Use-Pty=0', '-o', 'Dir::Cache::pkgcache=/run/imagebuilder-apt-pkgcache.bin', '-o', 'Dir::Cache::srcpkgcache=/run/imagebuilder-apt-srcpkgcache.bin',
      '--no-install-recommends', 'socat', 'hello=2.10-3',
    ]);
  });
});

describe('os-release and distro family', () => {
  test('quoted values and escapes', () => {
    expect(parseOsRelease('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\nX=\'a \\"b\\"\'\n# c\n')).toEqual({
      PRETTY_NAME: 'Debian GNU/Linux 12 (bookworm)', ID: 'debian', VERSION_ID: '12', X: 'a "b"',
    });
  });

  test('Ubuntu is found through ID_LIKE; an unknown distro has no family', () => {
    expect(detectDistro({ ID: 'ubuntu', ID_LIKE: 'debian', VERSION_ID: '24.04' }).family?.name).toBe('debian');
    expect(detectDistro({ ID: 'plan9' }).family).toBeUndefined();
  });
});

describe('BOM package origins', () => {
  test('base, added, changed and removed', () => {
    const p = (name: string, version: string) => ({ name, version, architecture: 'amd64', source: name });
    const { packages, removed } = comparePackages([p('a', '1'), p('b', '1'), p('c', '1')], [p('a', '1'), p('b', '2'), p('d', '1')]);
    expect(packages.map((x) => [x.name, x.origin, x.baseVersion])).toEqual([
      ['a', 'base', undefined],
      ['b', 'changed', '1'],
      ['d', 'added', undefined],
    ]);
    expect(removed.map((x) => x.name)).toEqual(['c']);
  });
});

describe('posixAclText (the kernel xattr of a POSIX ACL, as tar keeps it)', () => {
  /** linux/posix_acl_xattr.h: u32 version 2, then (u16 tag, u16 perm, u32 id) per entry, little-endian. */
  const xattr = (entries: [number, number, number][], version = 2) => {
    const value = Buffer.alloc(4 + entries.length * 8);
    value.writeUInt32LE(version, 0);
    entries.forEach(([tag, perm, id], i) => {
      value.writeUInt16LE(tag, 4 + i * 8);
      value.writeUInt16LE(perm, 6 + i * 8);
      value.writeUInt32LE(id, 8 + i * 8);
    });
    return value;
  };
  const UNDEFINED_ID = 0xffffffff;

  test('every tag, in acl_to_text long form with numeric ids; owner, group, mask and other have none', () => {
    const value = xattr([[0x01, 6, UNDEFINED_ID], [0x02, 5, 1000], [0x04, 4, UNDEFINED_ID], [0x08, 7, 4294967294], [0x10, 7, UNDEFINED_ID], [0x20, 0, UNDEFINED_ID]]);
    expect(posixAclText(value)).toBe('user::rw-\nuser:1000:r-x\ngroup::r--\ngroup:4294967294:rwx\nmask::rwx\nother::---\n');
  });

  test('anything else is not read as an ACL', () => {
    expect(posixAclText(xattr([[0x01, 6, 0]], 1))).toBeUndefined(); // another version
    expect(posixAclText(xattr([[0x40, 6, 0]]))).toBeUndefined(); // an unknown tag
    expect(posixAclText(Buffer.concat([xattr([[0x01, 6, 0]]), Buffer.from([0])]))).toBeUndefined(); // a torn entry
    expect(posixAclText(Buffer.alloc(2))).toBeUndefined();
  });
});

describe('the ustar stand-in for a name only the pax header holds', () => {
  test('its end, in ASCII, never absolute and never climbing (what a pax-unaware reader would extract)', () => {
    expect(standIn('usr/share/d\u00e9j\u00e0', 100)).toBe('usr/share/d_j_');
    expect(standIn(`\u00fc/etc/cron.d/${'x'.repeat(88)}`, 100)).toBe(`etc/cron.d/${'x'.repeat(88)}`);
    expect(standIn(`${'a'.repeat(50)}/x../../y/${'b'.repeat(90)}`, 100).split('/')).not.toContain('..');
    expect(standIn('x../y', 4)).toBe('__/y');
  });
});
