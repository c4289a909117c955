import { mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { updateSumsFile } from '../../src/pipeline/output.js';
import { createLogger } from '../../src/util/log.js';

// The SHA256SUMS beside the outputs, which earlier builds (or another user) left there.
describe('updateSumsFile', () => {
  const sum = (char: string) => char.repeat(64);
  test('keeps the other builds\' sums lines only, replaces ours', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'sums-'));
    await writeFile(join(dir, 'SHA256SUMS'), `${sum('a')}  other.qcow2\n${sum('b')}  node.qcow2\nroot:$6$secret:19000::::::\n`);
    await updateSumsFile(dir, [{ name: 'node.qcow2', sha256: sum('c') }]);
    expect(await readFile(join(dir, 'SHA256SUMS'), 'utf8')).toBe(`${sum('a')}  other.qcow2\n${sum('c')}  node.qcow2\n`);
    await rm(dir, { recursive: true });
  });

  test('one larger than any sums file is not read: replaced, said so', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'sums-'));
    await writeFile(join(dir, 'SHA256SUMS'), `${sum('a')}  other.qcow2\n`);
    await truncate(join(dir, 'SHA256SUMS'), (4 << 20) + 1);
    const warnings: string[] = [];
    await updateSumsFile(dir, [{ name: 'node.qcow2', sha256: sum('c') }], createLogger({ level: 'warn', write: (text) => void warnings.push(text) }));
    expect(await readFile(join(dir, 'SHA256SUMS'), 'utf8')).toBe(`${sum('c')}  node.qcow2\n`);
    expect(warnings.join('')).toContain(`${join(dir, 'SHA256SUMS')} is ${(4 << 20) + 1} bytes, more than a sums file's ${4 << 20}: replaced by a new sums file holding this build's outputs only`);
    await rm(dir, { recursive: true });
  });
});
