import { aptBundleIndex, aptBundleOptions, bundlePackages } from '../../src/pkg/apt-bundle.js';
import { AptPackagesIndex } from '../../src/pkg/package-cache.js';
import { missingFromBundle } from '../../src/pkg/bundle-use.js';
import { sha256Text } from '../../src/util/digest.js';

const A = 'a'.repeat(64);
const B = 'b'.repeat(64);
const LIST = [
  'Package: conntrack\nVersion: 1:1.4.7-1+b2\nArchitecture: amd64\nDepends: libc6 (>= 2.34)\nDescription: Program to modify the conntrack tables\n multi-line, kept as it is\nFilename: pool/main/c/conntrack-tools/conntrack_1.4.7-1+b2_amd64.deb\nSize: 35000\nSHA256: ' + A,
  'Package: socat\nVersion: 1.7.4.4-2\nArchitecture: amd64\nFilename: pool/main/s/socat/socat_1.7.4.4-2_amd64.deb\nSHA256: ' + B + '\nSize: 360000',
  'Package: other\nVersion: 1\nArchitecture: all\nSHA256: ' + 'c'.repeat(64),
].join('\n\n') + '\n';

describe('apt and bundles', () => {
  test('the stanzas of the wanted sha256s, whole, wherever the SHA256 field is in them', () => {
    const index = new AptPackagesIndex();
    index.add('/var/lib/apt/lists/mirror_Packages', Buffer.from(LIST, 'latin1'));
    expect(index.stanza('d'.repeat(64))).toBeUndefined();
    expect(index.stanza(A)).toEqual({ stanza: expect.stringMatching(/^Package: conntrack\n/), list: '/var/lib/apt/lists/mirror_Packages' });
    expect(index.stanza(A)!.stanza).toContain(' multi-line, kept as it is');
    expect(index.stanza(B)!.stanza).toMatch(/^Package: socat\n[\s\S]*Size: 360000$/);
    expect(index.stanza('c'.repeat(64))!.stanza).toBe(`Package: other\nVersion: 1\nArchitecture: all\nSHA256: ${'c'.repeat(64)}`);
  });

  test('the index: stanzas sorted, Filename the bundle\'s, a Release naming the index\'s sha256 and size', () => {
    const index = new AptPackagesIndex();
    index.add('/var/lib/apt/lists/mirror_Packages', Buffer.from(LIST, 'latin1'));
    const found = new Map([A, B].map((sha) => [sha, index.stanza(sha)!.stanza]));
    const { packages, release } = aptBundleIndex([
      { sha256: B, stanza: found.get(B)!, filename: `packages/${B}.deb` },
      { sha256: A, stanza: found.get(A)!, filename: `packages/${A}.deb` },
    ]);
    expect(packages.indexOf('Package: conntrack')).toBeLessThan(packages.indexOf('Package: socat'));
    expect(packages).toContain(`Filename: packages/${A}.deb`);
    expect(packages).not.toContain('pool/main');
    // A crafted stanza with a second Filename still gets exactly one: the bundle's.
    const crafted = aptBundleIndex([{ sha256: A, stanza: `${found.get(A)!}\nFilename: ../../etc/shadow`, filename: `packages/${A}.deb` }]).packages;
    expect(crafted.match(/^Filename:.*$/gm)).toEqual([`Filename: packages/${A}.deb`]);
    expect(release).toContain(` ${sha256Text(Buffer.from(packages, 'latin1'))} ${Buffer.byteLength(packages, 'latin1')} Packages`);
    expect(bundlePackages(packages)).toEqual(new Map([['conntrack', new Set(['1:1.4.7-1+b2'])], ['socat', new Set(['1.7.4.4-2'])]]));
    // A hostile index of long blank runs reads in linear time (a regular expression took hours on a few MB).
    const blanks = ' '.repeat(4 << 20);
    expect(bundlePackages(`Package:${blanks}x${blanks}y\t \r\nVersion: \t1.0${blanks}\n`)).toEqual(new Map([[`x${blanks}y`, new Set(['1.0'])]]));
  });

  test('what a bundle lacks: names and name=version, unless installed so', () => {
    const served = { aptDir: '/run/imagebuilder-bundle/apt', packages: new Map([['socat', new Set(['1.7.4.4-2'])]]) };
    const installed = new Map([['bash', '5.2.15-2+b2']]);
    expect(missingFromBundle(served, [{ name: 'socat' }, { name: 'bash' }, { name: 'socat', version: '1.7.4.4-2' }], installed)).toEqual([]);
    expect(missingFromBundle(served, [{ name: 'jq' }, { name: 'socat', version: '9' }, { name: 'bash', version: '1' }], installed)).toEqual(['jq', 'socat=9', 'bash=1']);
  });

  test("apt is pointed at the bundle alone, its lists and caches outside the image", () => {
    const options = aptBundleOptions({ aptDir: '/run/imagebuilder-bundle/apt', packages: new Map() }).join(' ');
    expect(options).toContain('Dir::Etc::SourceList=/run/imagebuilder-bundle/apt/bundle.list');
    expect(options).toContain('Dir::Etc::SourceParts=/run/imagebuilder-bundle/apt/sources.list.d');
    expect(options).toMatch(/Dir::State::Lists=\/run\//);
    expect(options).toContain('Dir::Cache::pkgcache=');
  });
});
