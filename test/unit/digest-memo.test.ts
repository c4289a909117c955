import { createHash } from 'node:crypto';
import { mkdtemp, readdir, readFile, rename, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { hashFileRemembered, pruneDigests } from '../../src/fetch/digest-memo.js';

const sha = (algorithm: string, text: string) => createHash(algorithm).update(text).digest('hex');
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Real files on a real filesystem: identity is what stat says, so nothing here is simulated. */
describe('sums remembered by file identity (digest-memo)', () => {
  let dir: string;
  let memo: string;
  const file = (name: string) => join(dir, name);

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ib-digest-memo-'));
    memo = join(dir, 'digests');
    for (const name of ['a', 'b', 'c', 'd', 'e', 'f', 'g']) await writeFile(file(name), `content of ${name}\n`);
    // Files changed less than 2 s before they are hashed are not remembered: let these settle once.
    await sleep(2100);
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('the first hash reads the file; the second, of the unchanged file, is remembered and equal', async () => {
    const first = await hashFileRemembered(file('a'), ['sha256'], { dir: memo });
    expect(first).toEqual({ sums: { sha256: sha('sha256', 'content of a\n') }, remembered: false });
    const second = await hashFileRemembered(file('a'), ['sha256'], { dir: memo });
    expect(second).toEqual({ sums: { sha256: sha('sha256', 'content of a\n') }, remembered: true });
  });

  test('a write of the same size, its mtime then set back, is still seen (ctime moved) and hashed again', async () => {
    await hashFileRemembered(file('b'), ['sha256'], { dir: memo });
    const before = await stat(file('b'));
    await writeFile(file('b'), 'CONTENT OF b\n');
    await utimes(file('b'), before.atime, before.mtime);
    const after = await hashFileRemembered(file('b'), ['sha256'], { dir: memo });
    expect(after).toEqual({ sums: { sha256: sha('sha256', 'CONTENT OF b\n') }, remembered: false });
  });

  test('a file replaced by another (a rename over it) is hashed again', async () => {
    await hashFileRemembered(file('c'), ['sha256'], { dir: memo });
    await rename(file('d'), file('c'));
    const after = await hashFileRemembered(file('c'), ['sha256'], { dir: memo });
    expect(after).toEqual({ sums: { sha256: sha('sha256', 'content of d\n') }, remembered: false });
  });

  test('an algorithm not hashed before is hashed, and then both are remembered', async () => {
    await hashFileRemembered(file('e'), ['sha256'], { dir: memo });
    expect((await hashFileRemembered(file('e'), ['sha256', 'sha512'], { dir: memo })).remembered).toBe(false);
    const both = await hashFileRemembered(file('e'), ['sha512', 'sha256'], { dir: memo });
    expect(both).toEqual({ sums: { sha256: sha('sha256', 'content of e\n'), sha512: sha('sha512', 'content of e\n') }, remembered: true });
  });

  test('a file changed moments ago is not remembered (a second write in the same tick would go unseen)', async () => {
    await writeFile(file('fresh'), 'just written\n');
    await hashFileRemembered(file('fresh'), ['sha256'], { dir: memo });
    expect((await hashFileRemembered(file('fresh'), ['sha256'], { dir: memo })).remembered).toBe(false);
  });

  test('without a memo directory (--rehash, --no-cache) every call hashes', async () => {
    await hashFileRemembered(file('f'), ['sha256'], { dir: memo });
    expect((await hashFileRemembered(file('f'), ['sha256'], { dir: memo })).remembered).toBe(true);
    expect(await hashFileRemembered(file('f'), ['sha256'], {})).toEqual({ sums: { sha256: sha('sha256', 'content of f\n') }, remembered: false });
  });

  test('a damaged record is ignored: the file is hashed again and the record rewritten', async () => {
    await hashFileRemembered(file('g'), ['sha256'], { dir: memo });
    const records = await readdir(memo);
    for (const name of records) {
      const text = await readFile(join(memo, name), 'utf8');
      if (text.includes(`"${file('g')}"`)) await writeFile(join(memo, name), '{ not json');
    }
    expect((await hashFileRemembered(file('g'), ['sha256'], { dir: memo })).remembered).toBe(false);
    expect((await hashFileRemembered(file('g'), ['sha256'], { dir: memo })).remembered).toBe(true);
  });

  test('prune drops the records of files gone or changed, keeps the rest; --all drops every one', async () => {
    const pruneDir = join(dir, 'prune-digests');
    for (const name of ['kept', 'changed', 'gone']) await writeFile(file(name), `${name}\n`);
    await sleep(2100);
    for (const name of ['kept', 'changed', 'gone']) await hashFileRemembered(file(name), ['sha256'], { dir: pruneDir });
    expect(await readdir(pruneDir)).toHaveLength(3);
    await writeFile(file('changed'), 'other\n');
    await rm(file('gone'));
    expect(await pruneDigests(pruneDir, { dryRun: true })).toBe(2);
    expect(await readdir(pruneDir)).toHaveLength(3);
    expect(await pruneDigests(pruneDir)).toBe(2);
    expect((await hashFileRemembered(file('kept'), ['sha256'], { dir: pruneDir })).remembered).toBe(true);
    expect(await pruneDigests(pruneDir, { all: true })).toBe(1);
    expect(await readdir(pruneDir)).toEqual([]);
  });
});
