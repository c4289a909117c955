import { createHash } from 'node:crypto';
import { mkdtemp, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { hashFileRemembered, pruneDigests } from '../../src/fetch/digest-memo.js';

const sha = (algorithm: string, text: string) => createHash(algorithm).update(text).digest('hex');
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Real files on a real filesystem: identity is what stat says, so nothing here is simulated. */
describe('sums remembered by file identity (digest-memo)', () => {
  let dir: string;
  let memo: string;
  const file = (name: string) => join(dir, name);
  /** The names of the records kept for this file. */
  const recordsOf = async (path: string) => {
    const names: string[] = [];
    for (const name of await readdir(memo)) if ((await readFile(join(memo, name), 'utf8')).includes(`"path": ${JSON.stringify(path)}`)) names.push(name);
    return names;
  };

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

  test('a write of the same size, its mtime then set back to the nanosecond, is still seen (ctime moved) and hashed again', async () => {
    await hashFileRemembered(file('b'), ['sha256'], { dir: memo });
    const before = await stat(file('b'), { bigint: true });
    await execa('touch', ['-r', file('b'), file('b.times')]); // keeps the exact times, which a Date would round
    await writeFile(file('b'), 'CONTENT OF b\n');
    await execa('touch', ['-r', file('b.times'), file('b')]);
    const restored = await stat(file('b'), { bigint: true });
    expect([restored.size, restored.mtimeNs]).toEqual([before.size, before.mtimeNs]);
    expect(restored.ctimeNs).not.toBe(before.ctimeNs);
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

  test('rehash reads the file even when it is unchanged, and what it finds replaces what was remembered', async () => {
    await hashFileRemembered(file('f'), ['sha256'], { dir: memo });
    expect((await hashFileRemembered(file('f'), ['sha256'], { dir: memo })).remembered).toBe(true);
    // A record that no longer tells the truth about the file (damage that moved no timestamp, say).
    const [name] = await recordsOf(file('f'));
    const record = JSON.parse(await readFile(join(memo, name), 'utf8'));
    await writeFile(join(memo, name), JSON.stringify({ ...record, sums: { sha256: 'e'.repeat(64) } }));
    expect(await hashFileRemembered(file('f'), ['sha256'], { dir: memo })).toEqual({ sums: { sha256: 'e'.repeat(64) }, remembered: true });
    const truth = { sums: { sha256: sha('sha256', 'content of f\n') } };
    expect(await hashFileRemembered(file('f'), ['sha256'], { dir: memo, rehash: true })).toEqual({ ...truth, remembered: false });
    expect(await hashFileRemembered(file('f'), ['sha256'], { dir: memo })).toEqual({ ...truth, remembered: true });
    // Without a directory nothing is read or kept.
    expect(await hashFileRemembered(file('f'), ['sha256'], {})).toEqual({ ...truth, remembered: false });
  });

  test('the directory is private and holds no half-written record', async () => {
    expect((await stat(memo)).mode & 0o777).toBe(0o700);
    expect((await readdir(memo)).filter((name) => !name.endsWith('.json'))).toEqual([]);
  });

  test('a damaged record is ignored: the file is hashed again and the record rewritten', async () => {
    await hashFileRemembered(file('g'), ['sha256'], { dir: memo });
    const records = await recordsOf(file('g'));
    expect(records).toHaveLength(1);
    for (const name of records) await writeFile(join(memo, name), '{ not json');
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
    // A half-written record of a process that died: removed once it is an hour old.
    await writeFile(join(pruneDir, 'x.json.1234-abcd.partial'), '{');
    await pruneDigests(pruneDir, { now: Date.now() + 30 * 60 * 1000 });
    expect(await readdir(pruneDir)).toContain('x.json.1234-abcd.partial');
    await pruneDigests(pruneDir, { now: Date.now() + 2 * 60 * 60 * 1000 });
    expect(await readdir(pruneDir)).not.toContain('x.json.1234-abcd.partial');
    expect(await pruneDigests(pruneDir, { all: true })).toBe(1);
    expect(await readdir(pruneDir)).toEqual([]);
  });
});
