import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { diffImages, diffIsEmpty, renderDiff } from '../../src/bom/diff.js';
import { loadComparable } from '../../src/pipeline/compare.js';
import { silentLogger } from '../../src/util/log.js';

const p = (name: string, version: string, architecture = 'amd64') => ({ name, version, architecture });

describe('diffImages', () => {
  test('packages added, removed and changed; units; files only when both sides have them', () => {
    const a = { label: 'a', packages: [p('a', '1'), p('b', '1'), p('c', '1')], units: [{ unit: 'x.service', state: 'enabled' as const }], files: [{ path: '/etc/f', sha256: 'a'.repeat(64), kind: 'config' as const }] };
    const b = { label: 'b', packages: [p('a', '1'), p('b', '2'), p('d', '1')], units: [{ unit: 'x.service', state: 'masked' as const }], files: [{ path: '/etc/f', sha256: 'b'.repeat(64), kind: 'config' as const }] };
    const diff = diffImages(a, b);
    expect(diff.packages).toEqual({ added: [p('d', '1')], removed: [p('c', '1')], changed: [{ name: 'b', architecture: 'amd64', from: '1', to: '2' }] });
    expect(diff.units.changed).toEqual([{ unit: 'x.service', from: 'enabled', to: 'masked' }]);
    expect(diff.files!.changed).toEqual([{ path: '/etc/f', from: 'a'.repeat(64), to: 'b'.repeat(64) }]);
    expect(diffIsEmpty(diff)).toBe(false);
    expect(renderDiff(diff)).toBe(
      ['--- a', '+++ b', 'packages:', '  + d 1 (amd64)', '  - c 1 (amd64)', '  ~ b 1 → 2 (amd64)', 'units:', '  ~ x.service enabled → masked', 'files:', `  ~ /etc/f ${'a'.repeat(12)} → ${'b'.repeat(12)}`].join('\n'),
    );
    expect(diffImages({ ...a, files: undefined }, b).files).toBeUndefined();
  });

  test('the same package for two architectures is two packages; identical sides say so', () => {
    const a = { label: 'a', packages: [p('libc6', '2', 'amd64')], units: [] };
    const b = { label: 'b', packages: [p('libc6', '2', 'amd64'), p('libc6', '2', 'i386')], units: [] };
    expect(diffImages(a, b).packages.added).toEqual([p('libc6', '2', 'i386')]);
    expect(diffIsEmpty(diffImages(a, a))).toBe(true);
    expect(renderDiff(diffImages(a, a))).toBe('--- a\n+++ a\nno differences in packages, units');
  });

  test("a newline in a guest's unit name is shown as text, not a forged line of the diff", () => {
    const a = { label: 'a', packages: [], units: [] };
    const b = { label: 'b', packages: [], units: [{ unit: 'x.service\n  - ssh.service', state: 'enabled' as const }] };
    expect(renderDiff(diffImages(a, b)).split('\n')).toEqual(['--- a', '+++ b', 'units:', '  + x.service\\u000a  - ssh.service enabled']);
  });
});

describe('a BOM file given to diff (from anywhere)', () => {
  let dir: string;
  beforeAll(async () => void (dir = await mkdtemp(join(tmpdir(), 'ib-diff-bom-'))));
  afterAll(() => rm(dir, { recursive: true, force: true }));
  const bomFile = async (name: string, content: string) => {
    await writeFile(join(dir, name), content);
    return join(dir, name);
  };

  test("is compared when what diff reads of it has apply's shape; refused, saying where, when it does not", async () => {
    // Fields of a newer version (at the top, in a package) are let be.
    const good = await bomFile('good.bom.json', JSON.stringify({ bomVersion: 1, packages: [{ name: 'a', version: '1', architecture: 'amd64', origin: 'base', somethingNewer: 1 }], unitStates: [{ unit: 'x.service', state: 'enabled' }], somethingNewer: true }));
    await expect(loadComparable(good, silentLogger())).resolves.toMatchObject({ packages: [{ name: 'a' }], units: [{ unit: 'x.service' }], files: [] });
    const refused = async (content: string, why: string) => {
      const path = await bomFile('crafted.bom.json', content);
      await expect(loadComparable(path, silentLogger())).rejects.toMatchObject({ code: 'BAD_INPUT', message: `${path} is not an imagebuilder BOM: ${why}` });
    };
    await refused('{"bomVersion":1,"packages":[null]}', '/packages/0 must be object');
    await refused('{"bomVersion":1,"packages":[],"unitStates":"enabled"}', '/unitStates must be array');
    await refused('{"bomVersion":1,"packages":[],"files":[{"path":"/etc/x","sha256":"short","kind":"config"}]}', '/files/0/sha256 must match pattern "^[0-9a-f]{64}$"');
    await refused('{"bomVersion":2,"packages":[]}', '/bomVersion must be equal to constant');
    const broken = await bomFile('broken.bom.json', '{"bomVersion":1,');
    await expect(loadComparable(broken, silentLogger())).rejects.toMatchObject({ code: 'BAD_INPUT', message: expect.stringMatching(/is not an imagebuilder BOM: it is not JSON \(/) });
  });

  test('a FIFO is not waited on', async () => {
    const fifo = join(dir, 'fifo.bom.json');
    await execa('mkfifo', [fifo]);
    await expect(loadComparable(fifo, silentLogger())).rejects.toMatchObject({ code: 'BAD_INPUT', message: `${fifo} is a FIFO, socket or character device, neither a disk image nor a BOM` });
  });
});
