import { mkdtemp, readFile, rm, writeFile, unlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeBundleManifest, verifyBundle, checkBundlePath, MAX_BUNDLE_FILES } from '../../src/bundle/manifest.js';

describe('bundle manifest', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'bundle-'));
    await writeFile(join(dir, 'base.qcow2'), 'image');
    await writeFile(join(dir, 'a.deb'), 'deb');
    await writeBundleManifest(dir, { path: 'r.yaml', sha256: 'a'.repeat(64) }, { b: '2', a: '1' }, [
      { path: 'base.qcow2', kind: 'base-image', origin: 'https://example.org/base.qcow2' },
      { path: 'a.deb', kind: 'package', origin: 'http://deb.example/a.deb' },
    ], { base: { path: 'base.qcow2', sha256: 'b'.repeat(64), format: 'qcow2', origin: 'https://example.org/base.qcow2' } });
  });
  afterEach(() => rm(dir, { recursive: true, force: true }));

  it('verifies an untouched bundle', async () => {
    const { manifest, sha256 } = await verifyBundle(dir);
    expect(manifest.files.map((f) => f.path)).toEqual(['a.deb', 'base.qcow2']);
    expect(Object.keys(manifest.variables)).toEqual(['a', 'b']);
    expect(sha256).toMatch(/^[0-9a-f]{64}$/);
  });

  it('an altered file is VERIFY_FAILED (exit 3)', async () => {
    await writeFile(join(dir, 'a.deb'), 'dex');
    await expect(verifyBundle(dir)).rejects.toMatchObject({ code: 'VERIFY_FAILED', exitCode: 3 });
  });

  it('a missing file is VERIFY_FAILED', async () => {
    await unlink(join(dir, 'base.qcow2'));
    await expect(verifyBundle(dir)).rejects.toMatchObject({ code: 'VERIFY_FAILED', detail: expect.stringContaining('base.qcow2: missing') });
  });

  it('a path listed twice, or more files than any bundle holds, is refused before anything is hashed', async () => {
    const manifest = JSON.parse(await readFile(join(dir, 'bundle.json'), 'utf8'));
    const deb = manifest.files.find((file: { path: string }) => file.path === 'a.deb');
    await writeFile(join(dir, 'bundle.json'), JSON.stringify({ ...manifest, files: [...manifest.files, ...Array(1000).fill(deb)] }));
    await expect(verifyBundle(dir)).rejects.toMatchObject({ code: 'VERIFY_FAILED', message: expect.stringContaining('"a.deb" is listed twice') });
    const many = Array.from({ length: MAX_BUNDLE_FILES + 1 }, (_, index) => ({ ...deb, path: `p/${index}.deb` }));
    await writeFile(join(dir, 'bundle.json'), JSON.stringify({ ...manifest, files: many }));
    await expect(verifyBundle(dir)).rejects.toMatchObject({ code: 'VERIFY_FAILED', message: expect.stringContaining(`${MAX_BUNDLE_FILES + 1} files, more than any bundle's`) });
  });

  it('refuses paths leaving the bundle', () => {
    for (const bad of ['../x', '/etc/passwd', 'a/../../x', '']) expect(() => checkBundlePath(bad)).toThrow(/outside the bundle/);
    expect(checkBundlePath('pool/a.deb')).toBe('pool/a.deb');
  });
});
