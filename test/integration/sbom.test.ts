import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { fixtureImage } from '../helpers/fixtures.js';
import { runCli, sha256, jsonResult } from '../helpers/host.js';
import { dpkgVersion, withImageMounted } from '../helpers/inspect.js';
import { writeRecipe } from '../helpers/recipes.js';
import { cycloneDxErrors, spdxErrors } from '../helpers/sbom-schemas.js';

type CdxComponent = { name: string; version?: string; purl?: string; type: string; properties?: { name: string; value: string }[] };
type SpdxPackage = { name: string; versionInfo?: string; externalRefs?: { referenceLocator: string }[]; comment?: string };

/** The CycloneDX and SPDX renderings apply writes beside the BOM, and inspect prints for any image. */
describe('standard SBOMs: apply writes them, inspect prints them', () => {
  let work: string;
  beforeAll(async () => {
    work = await mkdtemp('/var/tmp/ib-sbom-');
  });
  afterAll(() => rm(work, { recursive: true, force: true }));

  test('apply writes <output>.cdx.json and <output>.spdx.json: valid, listing hello with its purl, in SHA256SUMS', async () => {
    const input = await fixtureImage('gpt-esp');
    const recipe = await writeRecipe(work, 'sbom', [{ packages: { install: ['hello'] } }]);
    const output = join(work, 'node.qcow2');
    const result = await runCli(['apply', recipe, '--disk-image', input, '--output', output, '--sparsify', 'none', '--json']);
    if (result.exitCode !== 0) throw new Error(result.all);
    expect(jsonResult(result.stdout).sboms).toEqual([`${output}.cdx.json`, `${output}.spdx.json`]);

    const version = await withImageMounted(output, 'gpt-esp', (root) => dpkgVersion(root, 'hello'));
    expect(version).toBeDefined();
    const purl = `pkg:deb/debian/hello@${encodeURIComponent(version!).replace(/%3A/g, ':')}?arch=amd64&distro=debian-12`;
    const outputSha = await sha256(output);

    const cdx = JSON.parse(await readFile(`${output}.cdx.json`, 'utf8'));
    expect(cycloneDxErrors(cdx)).toEqual([]);
    expect(cdx.metadata.component.hashes).toEqual([{ alg: 'SHA-256', content: outputSha }]);
    const hello = (cdx.components as CdxComponent[]).find((c) => c.name === 'hello');
    expect(hello).toMatchObject({ version, purl });
    expect(hello?.properties).toContainEqual({ name: 'imagebuilder:package:origin', value: 'added' });
    expect((cdx.components as CdxComponent[]).find((c) => c.name === 'base-files')?.properties).toContainEqual({ name: 'imagebuilder:package:origin', value: 'base' });
    expect((cdx.components as CdxComponent[]).find((c) => c.properties?.some((p) => p.name === 'imagebuilder:image:role'))).toMatchObject({ hashes: [{ alg: 'SHA-256', content: await sha256(input) }] });

    const spdx = JSON.parse(await readFile(`${output}.spdx.json`, 'utf8'));
    expect(spdxErrors(spdx)).toEqual([]);
    const helloSpdx = (spdx.packages as SpdxPackage[]).find((p) => p.name === 'hello');
    expect(helloSpdx).toMatchObject({ versionInfo: version, externalRefs: [{ referenceCategory: 'PACKAGE-MANAGER', referenceType: 'purl', referenceLocator: purl }] });
    expect(helloSpdx?.comment).toMatch(/^origin: added/);
    expect(spdx.relationships).toContainEqual(expect.objectContaining({ relationshipType: 'DESCENDANT_OF' }));

    // The BOM and both renderings agree on the packages.
    const bom = JSON.parse(await readFile(`${output}.bom.json`, 'utf8'));
    const names = (bom.packages as { name: string }[]).map((p) => p.name).sort();
    expect((cdx.components as CdxComponent[]).filter((c) => c.type === 'library').map((c) => c.name).sort()).toEqual(names);

    const sums = await readFile(join(work, 'SHA256SUMS'), 'utf8');
    expect(sums.trim().split('\n').map((line) => line.split('  ')[1]).sort()).toEqual(['node.qcow2', 'node.qcow2.bom.json', 'node.qcow2.cdx.json', 'node.qcow2.spdx.json']);
    await execa('sha256sum', ['--check', '--strict', 'SHA256SUMS'], { cwd: work });
  });

  test('inspect --format cyclonedx|spdx of the fixture: valid, exactly the packages dpkg-query lists', async () => {
    const input = await fixtureImage('gpt-esp');
    const env = { ...process.env, SOURCE_DATE_EPOCH: '1700000000' } as Record<string, string>;
    const printed = await runCli(['inspect', input, '--format', 'cyclonedx'], { env });
    if (printed.exitCode !== 0) throw new Error(printed.all);
    const cdx = JSON.parse(printed.stdout);
    expect(cycloneDxErrors(cdx)).toEqual([]);
    expect(cdx.metadata.timestamp).toBe('2023-11-14T22:13:20Z');
    expect(cdx.metadata.component.hashes).toEqual([{ alg: 'SHA-256', content: await sha256(input) }]);

    const listed = await withImageMounted(input, 'gpt-esp', async (root) =>
      (await execa('dpkg-query', [`--admindir=${root}/var/lib/dpkg`, '-W', '-f', '${db:Status-Status} ${Package} ${Version} ${Architecture}\n'])).stdout
        .split('\n')
        .filter((line) => line.startsWith('installed '))
        .map((line) => line.split(' ').slice(1).join(' '))
        .sort(),
    );
    const components = (cdx.components as CdxComponent[]).filter((c) => c.type === 'library');
    const arch = (c: CdxComponent) => c.properties?.find((p) => p.name === 'imagebuilder:package:architecture')?.value;
    expect(components.map((c) => `${c.name} ${c.version} ${arch(c)}`).sort()).toEqual(listed);
    for (const c of components) expect(c.purl).toBe(`pkg:deb/debian/${encodeURIComponent(c.name)}@${encodeURIComponent(c.version!).replace(/%3A/g, ':')}?arch=${arch(c)}&distro=debian-12`);

    const spdxPrinted = await runCli(['inspect', input, '--format', 'spdx'], { env });
    expect(spdxPrinted.exitCode).toBe(0);
    const spdx = JSON.parse(spdxPrinted.stdout);
    expect(spdxErrors(spdx)).toEqual([]);
    expect((spdx.packages as SpdxPackage[]).filter((p) => p.externalRefs).length).toBe(listed.length);
    // Deterministic: a second run prints the same document.
    expect((await runCli(['inspect', input, '--format', 'spdx'], { env })).stdout).toBe(spdxPrinted.stdout);
  });
});
