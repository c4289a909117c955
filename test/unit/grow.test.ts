import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { growPartition, spaceAptWanted } from '../../src/mount/grow.js';
import { execRunner } from '../../src/util/exec.js';
import { createLogger } from '../../src/util/log.js';
import { CleanupStack } from '../../src/util/cleanup.js';
import { ImageBuilderError } from '../../src/util/errors.js';
import { formatBytes, parseByteSize, resolveGrow } from '../../src/util/size.js';

const GiB = 2 ** 30;

describe('--grow sizes', () => {
  test('SIZE is the new size, +SIZE what to add; rounded up to a MiB', () => {
    expect(resolveGrow('8G', 2 * GiB)).toBe(8 * GiB);
    expect(resolveGrow('+1.5G', 2 * GiB)).toBe(3.5 * GiB);
    expect(resolveGrow('3GiB', 2 * GiB)).toBe(3 * GiB);
    expect(resolveGrow(3 * GiB + 1, 2 * GiB)).toBe(3 * GiB + 2 ** 20);
    expect(resolveGrow('+100', 2 * GiB)).toBe(2 * GiB + 2 ** 20);
  });
  test('the same size is nothing to do; smaller is refused, saying the size now', () => {
    expect(resolveGrow('2G', 2 * GiB)).toBeUndefined();
    expect(() => resolveGrow('1G', 2 * GiB)).toThrow(new ImageBuilderError('BAD_INPUT', '--grow 1G: the disk is 2 GiB already, and disks are only grown'));
    expect(() => resolveGrow('lots', 2 * GiB)).toThrow(/--grow "lots": not a size/);
    expect(() => resolveGrow('-1G', 2 * GiB)).toThrow(/not a size/);
  });
  test('sizes for people', () => {
    expect(formatBytes(2 * GiB)).toBe('2 GiB');
    expect(formatBytes(2.5 * GiB)).toBe('2.50 GiB');
    expect(formatBytes(300 * 2 ** 20)).toBe('300 MiB');
    expect(parseByteSize('512M', 'x')).toBe(512 * 2 ** 20);
  });
  test("apt's own figure for what a transaction needs", () => {
    expect(spaceAptWanted('Need to get 80.1 MB of archives.\nAfter this operation, 412 MB of additional disk space will be used.\n')).toBe(412e6);
    expect(spaceAptWanted('After this operation, 1,024 kB of additional disk space will be used.')).toBe(1024e3);
    expect(spaceAptWanted('After this operation, 2.5 GB of additional disk space will be used.')).toBe(2.5e9);
    expect(spaceAptWanted('After this operation, 12 MB disk space will be freed.')).toBeUndefined();
  });
});

describe('--grow: which partitions grow', () => {
  // A real partition table (sfdisk on a file): the root's partition is followed by another.
  test('a root partition that another follows is refused, naming it, and the table is left as it was', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ib-grow-'));
    try {
      const disk = join(dir, 'disk.raw');
      await execa('truncate', ['-s', '64M', disk]);
      await execa('sfdisk', ['--quiet', disk], { input: 'label: gpt\n,16M\n,16M\n' });
      const before = (await execa('sfdisk', ['--dump', disk])).stdout;
      const log = createLogger({ level: 'error' });
      const context = { run: execRunner, log, cleanup: new CleanupStack(log), workDir: dir, cacheDir: dir };
      await expect(growPartition(context as never, `${disk}1`, disk, 1)).rejects.toThrow("--grow: the root filesystem's partition (1) is not the last on the disk: partition 2 follows it");
      expect((await execa('sfdisk', ['--dump', disk])).stdout).toBe(before);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
