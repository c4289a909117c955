import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildTime, IN_IMAGE_BOM_PATH, writeBomIntoImage } from '../../src/bom/in-image.js';
import type { Bom } from '../../src/bom/collect.js';
import { cycloneDxFromBom, renderCycloneDx } from '../../src/bom/cyclonedx.js';
import { formatPurl, modelFromBom, modelFromInventory, ociPurl, packagePurl, parseImageReference, sbomTimestamp } from '../../src/bom/purl.js';
import { renderSpdx, spdxFromBom } from '../../src/bom/spdx.js';
import { cycloneDxErrors, spdxErrors } from '../helpers/sbom-schemas.js';

const DEBIAN = { type: 'deb' as const, id: 'debian', versionId: '12' };
const FEDORA = { type: 'rpm' as const, id: 'fedora', versionId: '40' };
const sha = (c: string) => c.repeat(64);

/** A realistic BOM of a Debian 12 node build: base, added and changed packages, files, a container image. */
function debianBom(): Bom {
  return {
    bomVersion: 1,
    tool: { name: 'imagebuilder', version: '0.1.0' },
    createdAt: '2024-05-01T12:34:56.789Z',
    input: {
      url: 'https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2',
      path: '/root/.cache/imagebuilder/images/sha256/' + sha('a'),
      format: 'qcow2',
      sha256: sha('a'),
      checksumSource: 'https://cloud.debian.org/images/cloud/bookworm/latest/SHA512SUMS',
      verified: true,
    },
    output: { path: '/var/tmp/out/node.qcow2', format: 'qcow2', sha256: sha('b'), sparsify: 'none' },
    artifacts: [
      { path: '/var/tmp/out/node.qcow2', format: 'qcow2', sha256: sha('b') },
      { path: '/var/tmp/out/node.img', format: 'raw', sha256: sha('c') },
    ],
    recipe: { path: '/work/recipe.yaml', name: 'k8s-node', sha256: sha('d'), variables: { version: '1.30' }, includes: [] },
    os: { id: 'debian', versionId: '12', prettyName: 'Debian GNU/Linux 12 (bookworm)', osRelease: { ID: 'debian', VERSION_ID: '12' } },
    architecture: 'amd64',
    kernels: [{ version: '6.1.0-21-cloud-amd64', image: '/boot/vmlinuz-6.1.0-21-cloud-amd64' }],
    packages: [
      { name: 'util-linux', version: '2.38.1-5+deb12u1', architecture: 'amd64', origin: 'base' },
      { name: 'libstdc++6', version: '12.2.0-14', architecture: 'amd64', source: 'gcc-12', origin: 'base' },
      { name: 'containerd', version: '1.6.20~ds1-1+b1', architecture: 'amd64', origin: 'added' },
      { name: 'bsdutils', version: '1:2.38.1-5+deb12u1', architecture: 'amd64', source: 'util-linux (2.38.1-5+deb12u1)', origin: 'changed', baseVersion: '1:2.38.1-5' },
      { name: 'hello', version: '2.10-3', architecture: 'amd64', origin: 'added' },
    ],
    removedPackages: [{ name: 'nano', version: '7.2-1', architecture: 'amd64' }],
    files: [
      { path: '/usr/local/bin/runc', sha256: sha('e'), kind: 'download', source: 'https://github.com/opencontainers/runc/releases/download/v1.1.13/runc.amd64' },
      { path: '/etc/containerd/config.toml', sha256: sha('f'), kind: 'config' },
      { path: '/etc/containerd/config.toml', sha256: sha('1'), kind: 'config' },
      { path: '/opt/tool', sha256: sha('2'), kind: 'copy', source: '/home/me/tool' },
    ],
    units: [{ unit: 'containerd.service', state: 'enabled' }],
    unitStates: [{ unit: 'ssh.service', state: 'enabled' }, { unit: 'containerd.service', state: 'enabled' }],
    containerImages: [{ reference: 'registry.k8s.io/pause:3.9', digest: `sha256:${sha('3')}` }],
    steps: [{ index: 0, type: 'packages', description: 'install containerd', durationMs: 1234 }],
    mountBackend: 'fuse',
    durationsMs: { total: 4567 },
    warnings: [],
  };
}

describe('purl', () => {
  test('deb: vendor namespace, dpkg version with its epoch, + percent-encoded, ~ kept, qualifiers sorted', () => {
    expect(packagePurl({ name: 'hello', version: '2.10-3', architecture: 'amd64' }, DEBIAN)).toBe('pkg:deb/debian/hello@2.10-3?arch=amd64&distro=debian-12');
    expect(packagePurl({ name: 'bsdutils', version: '1:2.38.1-5+deb12u1', architecture: 'amd64' }, DEBIAN)).toBe('pkg:deb/debian/bsdutils@1:2.38.1-5%2Bdeb12u1?arch=amd64&distro=debian-12');
    expect(packagePurl({ name: 'containerd', version: '1.6.20~ds1-1+b1', architecture: 'arm64' }, DEBIAN)).toBe('pkg:deb/debian/containerd@1.6.20~ds1-1%2Bb1?arch=arm64&distro=debian-12');
    expect(packagePurl({ name: 'libstdc++6', version: '12.2.0-14', architecture: 'amd64' }, DEBIAN)).toBe('pkg:deb/debian/libstdc%2B%2B6@12.2.0-14?arch=amd64&distro=debian-12');
    expect(packagePurl({ name: 'tzdata', version: '2024a-0ubuntu0.22.04', architecture: 'all' }, { type: 'deb', id: 'ubuntu', versionId: '22.04' })).toBe(
      'pkg:deb/ubuntu/tzdata@2024a-0ubuntu0.22.04?arch=all&distro=ubuntu-22.04',
    );
  });

  test('rpm: VERSION-RELEASE, the epoch in its own qualifier (only when not 0), names keep their case', () => {
    expect(packagePurl({ name: 'bash', version: '5.2.26-3.fc40', architecture: 'x86_64' }, FEDORA)).toBe('pkg:rpm/fedora/bash@5.2.26-3.fc40?arch=x86_64&distro=fedora-40');
    expect(packagePurl({ name: 'NetworkManager', version: '1:1.46.0-1.fc40', epoch: 1, architecture: 'x86_64' }, FEDORA)).toBe(
      'pkg:rpm/fedora/NetworkManager@1.46.0-1.fc40?arch=x86_64&distro=fedora-40&epoch=1',
    );
    // An epoch only in the version string is found there too; epoch 0 is no epoch.
    expect(packagePurl({ name: 'perl-Carp', version: '2:1.54-502.fc40', architecture: 'noarch' }, FEDORA)).toBe('pkg:rpm/fedora/perl-Carp@1.54-502.fc40?arch=noarch&distro=fedora-40&epoch=2');
    expect(packagePurl({ name: 'zlib', version: '0:1.3-1.fc40', epoch: 0, architecture: 'x86_64' }, FEDORA)).toBe('pkg:rpm/fedora/zlib@1.3-1.fc40?arch=x86_64&distro=fedora-40');
    expect(packagePurl({ name: 'gcc-c++', version: '14.0.1-0.15.fc40', architecture: 'x86_64' }, FEDORA)).toBe('pkg:rpm/fedora/gcc-c%2B%2B@14.0.1-0.15.fc40?arch=x86_64&distro=fedora-40');
    expect(packagePurl({ name: 'x', version: '1', architecture: 'x86_64' }, { id: 'fedora' })).toBeUndefined();
  });

  test('oci: the image name, its digest as version, repository_url and tag qualifiers', () => {
    const digest = `sha256:${sha('3')}`;
    expect(ociPurl({ reference: 'registry.k8s.io/pause:3.9', digest })).toBe(`pkg:oci/pause@sha256:${sha('3')}?repository_url=registry.k8s.io/pause&tag=3.9`);
    expect(ociPurl({ reference: 'nginx:1.25', digest })).toBe(`pkg:oci/nginx@sha256:${sha('3')}?repository_url=docker.io/library/nginx&tag=1.25`);
    expect(ociPurl({ reference: 'localhost:5000/team/App@' + digest, digest })).toBe(`pkg:oci/app@sha256:${sha('3')}?repository_url=localhost:5000/team/App`);
    expect(parseImageReference('ghcr.io/org/img:v1@sha256:abc')).toEqual({ registry: 'ghcr.io', repository: 'org/img', tag: 'v1', digest: 'sha256:abc' });
    expect(parseImageReference('org/img')).toEqual({ registry: 'docker.io', repository: 'org/img', tag: undefined, digest: undefined });
  });

  test('formatPurl encodes reserved characters in every part and drops empty qualifiers', () => {
    expect(formatPurl({ type: 'DEB', namespace: 'debian', name: 'a b', version: '1.0#x', qualifiers: { z: 'v w', a: '', arch: 'amd64' } })).toBe('pkg:deb/debian/a%20b@1.0%23x?arch=amd64&z=v%20w');
  });
});

describe('CycloneDX and SPDX renderings', () => {
  test('CycloneDX 1.6 of a realistic BOM validates against the published schema and says what the BOM says', () => {
    const doc = cycloneDxFromBom(debianBom(), { env: {} });
    expect(cycloneDxErrors(doc)).toEqual([]);
    expect(doc.metadata.timestamp).toBe('2024-05-01T12:34:56Z');
    expect(doc.metadata.tools.components).toEqual([{ type: 'application', name: 'imagebuilder', version: '0.1.0' }]);
    expect(doc.metadata.component).toMatchObject({ name: 'node.qcow2', hashes: [{ alg: 'SHA-256', content: sha('b') }] });
    expect(doc.serialNumber).toMatch(/^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    const bsdutils = doc.components.find((c) => c.name === 'bsdutils')!;
    expect(bsdutils).toMatchObject({ type: 'library', version: '1:2.38.1-5+deb12u1', purl: 'pkg:deb/debian/bsdutils@1:2.38.1-5%2Bdeb12u1?arch=amd64&distro=debian-12' });
    expect(bsdutils.properties).toEqual(
      expect.arrayContaining([
        { name: 'imagebuilder:package:origin', value: 'changed' },
        { name: 'imagebuilder:package:baseVersion', value: '1:2.38.1-5' },
        { name: 'imagebuilder:package:source', value: 'util-linux (2.38.1-5+deb12u1)' },
      ]),
    );
    expect(doc.components.find((c) => c.name === 'hello')!.properties).toContainEqual({ name: 'imagebuilder:package:origin', value: 'added' });
    const base = doc.components.find((c) => c['bom-ref'].startsWith('base-image:'))!;
    expect(base).toMatchObject({ name: 'debian-12-genericcloud-amd64.qcow2', hashes: [{ alg: 'SHA-256', content: sha('a') }], externalReferences: [{ type: 'distribution', url: debianBom().input.url }] });
    expect(doc.dependencies[0]).toMatchObject({ ref: 'image:node.qcow2' });
    expect(doc.dependencies[0].dependsOn).toContain(base['bom-ref']);
    expect(doc.components.find((c) => c.name === '/usr/local/bin/runc')).toMatchObject({ type: 'file', hashes: [{ alg: 'SHA-256', content: sha('e') }], externalReferences: [{ type: 'distribution' }] });
    // The file written twice holds its last content.
    expect(doc.components.filter((c) => c.name === '/etc/containerd/config.toml').map((c) => c.hashes)).toEqual([[{ alg: 'SHA-256', content: sha('1') }]]);
    expect(doc.components.find((c) => c.type === 'container')).toMatchObject({ name: 'registry.k8s.io/pause', version: '3.9', purl: ociPurl(debianBom().containerImages[0]) });
    expect(doc.metadata.properties).toContainEqual({ name: 'imagebuilder:package:removed', value: 'pkg:deb/debian/nano@7.2-1?arch=amd64&distro=debian-12' });
    // Packages are sorted by name.
    const names = doc.components.filter((c) => c.type === 'library').map((c) => c.name);
    expect(names).toEqual([...names].sort());
  });

  test('SPDX 2.3 of a realistic BOM passes the structural checks and relates the image to its base and contents', () => {
    const doc = spdxFromBom(debianBom(), { env: {} });
    expect(spdxErrors(doc)).toEqual([]);
    expect(doc.creationInfo).toEqual({ created: '2024-05-01T12:34:56Z', creators: ['Tool: imagebuilder-0.1.0'] });
    const image = doc.packages[0];
    expect(image).toMatchObject({ SPDXID: 'SPDXRef-Image-node.qcow2', name: 'node.qcow2', checksums: [{ algorithm: 'SHA256', checksumValue: sha('b') }] });
    expect(doc.relationships).toContainEqual({ spdxElementId: 'SPDXRef-DOCUMENT', relationshipType: 'DESCRIBES', relatedSpdxElement: image.SPDXID });
    const base = doc.packages.find((p) => p.SPDXID.startsWith('SPDXRef-BaseImage-'))!;
    expect(base.downloadLocation).toBe(debianBom().input.url);
    expect(doc.relationships).toContainEqual({ spdxElementId: image.SPDXID, relationshipType: 'DESCENDANT_OF', relatedSpdxElement: base.SPDXID });
    const lib = doc.packages.find((p) => p.name === 'libstdc++6')!;
    expect(lib).toMatchObject({ SPDXID: 'SPDXRef-Package-deb-libstdc-6-amd64', versionInfo: '12.2.0-14', sourceInfo: 'built from the source package gcc-12', comment: 'origin: base (in the base image)' });
    expect(lib.externalRefs).toEqual([{ referenceCategory: 'PACKAGE-MANAGER', referenceType: 'purl', referenceLocator: 'pkg:deb/debian/libstdc%2B%2B6@12.2.0-14?arch=amd64&distro=debian-12' }]);
    expect(doc.relationships).toContainEqual({ spdxElementId: image.SPDXID, relationshipType: 'CONTAINS', relatedSpdxElement: lib.SPDXID });
    expect(doc.packages.find((p) => p.name === '/usr/local/bin/runc')).toMatchObject({ downloadLocation: debianBom().files[0].source, checksums: [{ algorithm: 'SHA256', checksumValue: sha('e') }] });
    expect(doc.files?.map((f) => f.fileName)).toEqual(['/etc/containerd/config.toml', '/opt/tool']);
    expect(doc.packages.find((p) => p.primaryPackagePurpose === 'CONTAINER')?.externalRefs?.[0].referenceLocator).toBe(ociPurl(debianBom().containerImages[0]));
  });

  test('SPDXIDs that sanitize alike stay unique', () => {
    const bom = debianBom();
    bom.packages.push({ name: 'libstdc--6', version: '1', architecture: 'amd64', origin: 'added' });
    const doc = spdxFromBom(bom, { env: {} });
    expect(spdxErrors(doc)).toEqual([]);
    expect(new Set(doc.packages.map((p) => p.SPDXID)).size).toBe(doc.packages.length);
  });

  test('a package listed 20,000 times (a crafted status file) gets unique SPDXIDs in linear time', () => {
    const bom = debianBom();
    for (let i = 0; i < 20_000; i++) bom.packages.push({ name: 'a', version: '1', architecture: 'amd64', origin: 'base' });
    const doc = spdxFromBom(bom, { env: {} });
    expect(new Set(doc.packages.map((p) => p.SPDXID)).size).toBe(doc.packages.length);
    expect(doc.packages.filter((p) => p.name === 'a')).toHaveLength(20_000);
  });

  test('deterministic: the same BOM in another order gives byte-identical documents; SOURCE_DATE_EPOCH sets the time', () => {
    const a = debianBom();
    const b = debianBom();
    b.packages.reverse();
    b.files = [b.files[3], b.files[0], b.files[1], b.files[2]];
    b.unitStates.reverse();
    expect(JSON.stringify(cycloneDxFromBom(a, { env: {} }))).toBe(JSON.stringify(cycloneDxFromBom(b, { env: {} })));
    expect(JSON.stringify(spdxFromBom(a, { env: {} }))).toBe(JSON.stringify(spdxFromBom(b, { env: {} })));
    const env = { SOURCE_DATE_EPOCH: '1700000000' };
    expect(cycloneDxFromBom(a, { env }).metadata.timestamp).toBe('2023-11-14T22:13:20Z');
    expect(spdxFromBom(a, { env }).creationInfo.created).toBe('2023-11-14T22:13:20Z');
    expect(sbomTimestamp('2024-05-01T12:34:56.789Z', {})).toBe('2024-05-01T12:34:56Z');
    // Another build (another output) is another document.
    const c = debianBom();
    c.output.sha256 = sha('9');
    expect(spdxFromBom(c, { env: {} }).documentNamespace).not.toBe(spdxFromBom(a, { env: {} }).documentNamespace);
    expect(cycloneDxFromBom(c, { env: {} }).serialNumber).not.toBe(cycloneDxFromBom(a, { env: {} }).serialNumber);
  });

  test('with SOURCE_DATE_EPOCH, every timestamp the BOM, its renderings and the in-image copy carry is that time', async () => {
    const env = { SOURCE_DATE_EPOCH: '1700000000' };
    const bom = { ...debianBom(), createdAt: buildTime(env).toISOString() };
    const documents = [bom, cycloneDxFromBom(bom, { env }), spdxFromBom(bom, { env })];
    // Every date-time string anywhere in the three documents.
    const stamps = documents.flatMap((doc) => JSON.stringify(doc).match(/\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z/g) ?? []);
    expect(stamps.length).toBeGreaterThanOrEqual(3);
    expect(new Set(stamps.map((stamp) => Date.parse(stamp)))).toEqual(new Set([1_700_000_000_000]));
    const root = await mkdtemp(join(tmpdir(), 'bom-in-image-'));
    try {
      await writeBomIntoImage(root, bom, buildTime(env));
      const written = await stat(join(root, IN_IMAGE_BOM_PATH));
      expect(written.mtimeMs).toBe(1_700_000_000_000);
      expect(JSON.parse(await readFile(join(root, IN_IMAGE_BOM_PATH), 'utf8')).createdAt).toBe('2023-11-14T22:13:20.000Z');
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });

  test('an inventory of any image (inspect), rpm family: valid in both formats, rpm purls with epochs', () => {
    const model = modelFromInventory(
      { path: '/images/fedora-40.qcow2', format: 'qcow2', sha256: sha('7') },
      {
        os: { id: 'fedora', versionId: '40', prettyName: 'Fedora Linux 40 (Cloud Edition)', osRelease: { ID: 'fedora' } },
        family: 'redhat',
        architecture: 'x86_64',
        kernels: [{ version: '6.8.5-301.fc40.x86_64' }],
        packages: [
          { name: 'NetworkManager', version: '1:1.46.0-1.fc40', epoch: 1, architecture: 'x86_64', vendor: 'Fedora Project', sourceRpm: 'NetworkManager-1.46.0-1.fc40.src.rpm', source: 'NetworkManager' },
          { name: 'bash', version: '5.2.26-3.fc40', architecture: 'x86_64', vendor: 'Fedora Project', sourceRpm: 'bash-5.2.26-3.fc40.src.rpm' },
        ],
        units: [{ unit: 'sshd.service', state: 'enabled' }],
      },
      { name: 'imagebuilder', version: '0.1.0' },
      { env: { SOURCE_DATE_EPOCH: '0' } },
    );
    const cdx = renderCycloneDx(model);
    expect(cycloneDxErrors(cdx)).toEqual([]);
    expect(cdx.components.map((c) => c.purl)).toEqual([
      'pkg:rpm/fedora/NetworkManager@1.46.0-1.fc40?arch=x86_64&distro=fedora-40&epoch=1',
      'pkg:rpm/fedora/bash@5.2.26-3.fc40?arch=x86_64&distro=fedora-40',
    ]);
    expect(cdx.components[0]).toMatchObject({ publisher: 'Fedora Project' });
    expect(cdx.metadata.timestamp).toBe('1970-01-01T00:00:00Z');
    const spdx = renderSpdx(model);
    expect(spdxErrors(spdx)).toEqual([]);
    expect(spdx.packages.find((p) => p.name === 'bash')).toMatchObject({ supplier: 'Organization: Fedora Project', sourceInfo: 'built from the source package bash-5.2.26-3.fc40.src.rpm' });
    expect(spdx.relationships.some((r) => r.relationshipType === 'DESCENDANT_OF')).toBe(false);
    expect(modelFromBom(debianBom(), { env: {} }).packageType).toBe('deb');
  });

  test('the validators do reject broken documents', () => {
    const cdx = cycloneDxFromBom(debianBom(), { env: {} }) as unknown as Record<string, unknown>;
    expect(cycloneDxErrors({ ...cdx, specVersion: 1.6 })).not.toEqual([]);
    expect(cycloneDxErrors({ ...cdx, components: [{ type: 'not-a-type', name: 'x' }] })).not.toEqual([]);
    const spdx = spdxFromBom(debianBom(), { env: {} });
    expect(spdxErrors({ ...spdx, dataLicense: 'MIT' })).not.toEqual([]);
    expect(spdxErrors({ ...spdx, packages: [{ ...spdx.packages[0], SPDXID: 'SPDXRef-has space' }, ...spdx.packages.slice(1)] })).not.toEqual([]);
    expect(spdxErrors({ ...spdx, relationships: [...spdx.relationships, { spdxElementId: 'SPDXRef-Image-node.qcow2', relationshipType: 'CONTAINS', relatedSpdxElement: 'SPDXRef-nothing' }] })).toEqual([
      'relationship to unknown element SPDXRef-nothing',
    ]);
    expect(spdxErrors({ ...spdx, creationInfo: { created: '2024-05-01T12:34:56.789Z', creators: ['Tool: x'] } })).not.toEqual([]);
  });
});
