import { chmod, mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { execa } from 'execa';
import { expectCanaryUntouched, snapshotHost } from '../helpers/hostile.js';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createNbdBackend } from '../../src/mount/nbd.js';
import { selectMountBackend } from '../../src/mount/select.js';
import type { MountBackend, MountContext } from '../../src/mount/backend.js';
import { CleanupStack } from '../../src/util/cleanup.js';
import { recordingRunner } from '../../src/util/exec.js';
import { createLogger } from '../../src/util/log.js';
import { deviceNumbers } from '../../src/mount/block.js';
import { acquireLock, kernelIdentity } from '../../src/util/lock.js';
import { hostname } from 'node:os';

/** The nbd backend cannot run here (no nbd module): these prove the exact commands it would run. */
describe('nbd backend', () => {
  let dir: string;
  let sysBlock: string;
  let lockDir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'nbd-unit-'));
    sysBlock = join(dir, 'sys-block');
    lockDir = join(dir, 'lock');
    await mkdir(lockDir, { recursive: true });
    await mkdir(sysBlock, { recursive: true });
  });
  afterEach(() => rm(dir, { recursive: true, force: true }));

  const context = (run = recordingRunner()): MountContext & { run: ReturnType<typeof recordingRunner> } => {
    const log = createLogger({ write: () => undefined });
    return { run, log, cleanup: new CleanupStack(log), workDir: dir, cacheDir: join(dir, 'cache') };
  };

  test('without the module it says how to load it', async () => {
    const reason = await createNbdBackend({ sysBlock, lockDir }).unavailable(context());
    // qemu-nbd may be missing on a developer's machine too; either way the reason names the fix.
    expect(reason).toMatch(/modprobe nbd max_part=16|qemu-utils/);
  });

  test('skips a connected device and one locked by a live build, reclaims a stale lock, and undoes it all', async () => {
    for (const name of ['nbd0', 'nbd1', 'nbd2', 'nbd10']) await mkdir(join(sysBlock, name));
    await writeFile(join(sysBlock, 'nbd0', 'pid'), '1234'); // connected by someone
    const live = await acquireLock(join(lockDir, 'imagebuilder-nbd1.lock'), '/dev/nbd1'); // another live build
    // A build that died: its record names this kernel, and nobody holds its flock any more.
    await writeFile(join(lockDir, 'imagebuilder-nbd2.lock'), JSON.stringify({ pid: 999999999, host: hostname(), boot: kernelIdentity().boot, since: '', what: '/dev/nbd2' }));
    // The disk has a partition table the kernel did not scan: partx adds its partitions, and deletes them on release.
    const ctx = context(recordingRunner((call) => (call.args[0] === '--show' ? { stdout: ' 1  2048 2048' } : undefined)));
    const attached = await createNbdBackend({ sysBlock, lockDir }).attach(ctx, { image: '/w/work.qcow2', format: 'qcow2', readOnly: false });
    expect(attached).toEqual({ kind: 'block', device: '/dev/nbd2' });
    expect(await readdir(lockDir)).toEqual(['imagebuilder-nbd1.lock', 'imagebuilder-nbd2.lock']);
    await ctx.cleanup.unwind();
    expect(ctx.run.calls.map((c) => [c.file, ...c.args])).toEqual([
      ['qemu-nbd', '--connect=/dev/nbd2', '--format=qcow2', '--discard=unmap', '/w/work.qcow2'],
      ['partx', '--show', '--noheadings', '-o', 'NR,START,SECTORS', '/dev/nbd2'],
      ['partx', '-a', '/dev/nbd2'],
      ['blockdev', '--flushbufs', '/dev/nbd2'],
      ['partx', '-d', '/dev/nbd2'],
      ['qemu-nbd', '--disconnect', '/dev/nbd2'],
    ]);
    expect(await readdir(lockDir)).toEqual(['imagebuilder-nbd1.lock']);
    await live();
  });

  test('a lock directory planted by another user (a symlink, or a directory of theirs with a symlink lock) is refused; nothing is written through it', async () => {
    // Like /run/lock: every user may create entries in it.
    const runLock = join(dir, 'run-lock');
    await chmod(dir, 0o755);
    await mkdir(runLock);
    await chmod(runLock, 0o1777);
    await mkdir(join(sysBlock, 'nbd0'));
    const asNobody = (...command: string[]) => execa('setpriv', ['--reuid', '65534', '--regid', '65534', '--clear-groups', ...command]);
    const host = await snapshotHost();
    try {
      await asNobody('ln', '-s', host.canaryDir, join(runLock, 'imagebuilder'));
      const ctx = context();
      await expect(createNbdBackend({ sysBlock, lockDir: join(runLock, 'imagebuilder') }).attach(ctx, { image: '/w/x', format: 'raw', readOnly: true })).rejects.toMatchObject({
        code: 'ENVIRONMENT',
        message: `refusing to keep locks in ${join(runLock, 'imagebuilder')}: it is a symbolic link (to ${host.canaryDir})`,
      });
      await rm(join(runLock, 'imagebuilder'));
      await asNobody('mkdir', '-m', '0777', join(runLock, 'imagebuilder'));
      await asNobody('ln', '-s', host.canaryFile, join(runLock, 'imagebuilder', 'imagebuilder-nbd0.lock'));
      await expect(createNbdBackend({ sysBlock, lockDir: join(runLock, 'imagebuilder') }).attach(ctx, { image: '/w/x', format: 'raw', readOnly: true })).rejects.toMatchObject({
        code: 'ENVIRONMENT',
        message: `refusing to keep locks in ${join(runLock, 'imagebuilder')}: it belongs to uid 65534, not to this user (uid 0)`,
      });
      expect(ctx.run.calls).toEqual([]);
    } finally {
      await expectCanaryUntouched(host);
    }
  });

  test('read-only attach, and a clear error when every device is taken', async () => {
    await mkdir(join(sysBlock, 'nbd0'));
    const ctx = context();
    await createNbdBackend({ sysBlock, lockDir }).attach(ctx, { image: '/w/base.raw', format: 'raw', readOnly: true });
    expect(ctx.run.calls[0].args).toEqual(['--connect=/dev/nbd0', '--format=raw', '--read-only', '/w/base.raw']);
    await expect(createNbdBackend({ sysBlock, lockDir }).attach(context(), { image: '/w/x', format: 'raw', readOnly: true })).rejects.toMatchObject({
      code: 'ENVIRONMENT',
      message: 'every /dev/nbd device is in use',
    });
    await ctx.cleanup.unwind();
  });
});

describe('mount backend selection', () => {
  const fake = (name: MountBackend['name'], reason?: string): MountBackend => ({
    name,
    unavailable: async () => reason,
    attach: async () => ({ kind: 'tree', root: '/' }),
  });

  test('auto takes the first usable one and logs why the others were passed over', async () => {
    const lines: string[] = [];
    const log = createLogger({ write: (text) => void lines.push(text) });
    const ctx: MountContext = { run: recordingRunner(), log, cleanup: new CleanupStack(log), workDir: '/w', cacheDir: '/c' };
    const chosen = await selectMountBackend(ctx, 'auto', [fake('nbd', 'no module'), fake('fuse'), fake('guestmount')]);
    expect(chosen.name).toBe('fuse');
    expect(lines.join('')).toContain('mount backend: fuse (passed over: nbd: no module)');
  });

  test('a backend asked for by name that cannot work is an error saying why', async () => {
    const log = createLogger({ write: () => undefined });
    const ctx: MountContext = { run: recordingRunner(), log, cleanup: new CleanupStack(log), workDir: '/w', cacheDir: '/c' };
    await expect(selectMountBackend(ctx, 'nbd', [fake('nbd', 'no module'), fake('fuse')])).rejects.toMatchObject({
      code: 'ENVIRONMENT',
      message: 'no usable mount backend: nbd: no module',
    });
  });
});

test('device numbers from stat().rdev, as sysfs writes them (a stale partition node is told apart by them)', () => {
  expect(deviceNumbers(66309)).toEqual({ major: 259, minor: 5 }); // /dev/loop2p2 = 259:5
  expect(deviceNumbers((7 << 8) | 3)).toEqual({ major: 7, minor: 3 });
  // Minors above 255 are split around the major.
  expect(deviceNumbers((259 << 8) | 0x34 | (0x12 << 12 << 8))).toEqual({ major: 259, minor: 0x1234 });
});
