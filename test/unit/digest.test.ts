import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { hashFile, sha256File } from '../../src/util/digest.js';

const CHUNK = 4 << 20;

describe('hashFile: digests of a file read in reused chunks', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ib-digest-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  // Sizes around the chunk's edges: empty, a byte, one chunk exactly, one byte past it, several chunks and a tail.
  it.each([0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 12_345])('a file of %i bytes hashes as its bytes do', async (size) => {
    const bytes = randomBytes(size);
    const path = join(dir, `file-${size}`);
    await writeFile(path, bytes);
    const expected = { sha256: createHash('sha256').update(bytes).digest('hex'), sha512: createHash('sha512').update(bytes).digest('hex') };
    expect(await hashFile(path, ['sha256', 'sha512'])).toEqual(expected);
    expect(await sha256File(path)).toBe(expected.sha256);
  });

  it('stops when the build is interrupted, with the signal\'s reason', async () => {
    const path = join(dir, 'interrupted');
    await writeFile(path, randomBytes(3 * CHUNK));
    const controller = new AbortController();
    const reason = new Error('interrupted');
    controller.abort(reason);
    await expect(hashFile(path, ['sha256'], controller.signal)).rejects.toBe(reason);
  });

  it('says which file is missing', async () => {
    await expect(sha256File(join(dir, 'absent'))).rejects.toThrow(/ENOENT.*absent/);
  });
});
