import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { abortFuseConnection } from '../../src/util/fuse-connections.js';

describe('aborting a FUSE connection', () => {
  let control: string;
  beforeEach(async () => {
    control = await mkdtemp(join(tmpdir(), 'fusectl-unit-'));
    await mkdir(join(control, '41'));
    await writeFile(join(control, '41', 'abort'), '');
  });
  afterEach(() => rm(control, { recursive: true, force: true }));
  const written = () => readFile(join(control, '41', 'abort'), 'utf8');

  test('the noted connection, while its daemon is still exiting: aborted', async () => {
    const { ino } = await stat(join(control, '41', 'abort'));
    expect(await abortFuseConnection(control, { connection: 41, abortInode: ino }, () => true)).toBe('aborted');
    expect(await written()).toBe('1');
  });

  test('a number that names another connection now (another inode) is not aborted', async () => {
    const { ino } = await stat(join(control, '41', 'abort'));
    expect(await abortFuseConnection(control, { connection: 41, abortInode: ino + 1 }, () => true)).toBe('not ours');
    expect(await written()).toBe('');
  });

  test('a daemon that finished exiting meanwhile, or a connection gone: nothing written', async () => {
    expect(await abortFuseConnection(control, { connection: 41 }, () => false)).toBe('gone');
    expect(await written()).toBe('');
    expect(await abortFuseConnection(control, { connection: 42 }, () => true)).toBe('gone');
  });
});
