import { lstat, mkdir, mkdtemp, readdir, readFile, readlink, rm, symlink, writeFile, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { execa } from 'execa';
import { replaceTemporarily } from '../../src/chroot/guest-file.js';
import { CleanupStack } from '../../src/util/cleanup.js';
import { NotRegularFile, openRegularFile, renameOver, resolveInRoot, writeFileAtomic, writeJsonAtomic } from '../../src/util/fs.js';
import { ConsoleLog } from '../../src/boot/console.js';
import { createLogger } from '../../src/util/log.js';
import { tail } from '../../src/util/exec.js';
import { promptName } from '../../src/pipeline/shell.js';
import { ImageBuilderError } from '../../src/util/errors.js';
import { readLogTail, startHelper } from '../../src/util/daemon.js';

describe('resolveInRoot', () => {
  let root: string;
  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'root-'));
    await mkdir(join(root, 'etc'), { recursive: true });
    await mkdir(join(root, 'usr/lib'), { recursive: true });
    await symlink('../usr/lib/os-release', join(root, 'etc/os-release'));
    await symlink('/etc', join(root, 'etc-abs'));
    await symlink('../../../../../../tmp', join(root, 'escape'));
    await symlink('/', join(root, 'usr/lib/up'));
  });
  afterAll(() => rm(root, { recursive: true, force: true }));

  test.each([
    ['/etc/os-release', '/usr/lib/os-release'],
    ['/etc-abs/os-release', '/usr/lib/os-release'],
    ['/escape/x', '/tmp/x'],
    ['/usr/lib/up/etc/hosts', '/etc/hosts'],
    ['/../../etc', '/etc'],
    ['/missing/dir/file', '/missing/dir/file'],
  ])('%s resolves to %s inside the root, never above it', async (path, expected) => {
    expect(await resolveInRoot(root, path)).toBe(expected);
  });
});

describe('writeFileAtomic', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'atomic-'));
  });
  afterEach(() => rm(dir, { recursive: true, force: true }));

  test('replaces the file whole, with the mode asked for, and leaves nothing beside it', async () => {
    const path = join(dir, 'record.json');
    await writeFile(path, 'old');
    await writeJsonAtomic(path, { a: 1 }, { mode: 0o600 });
    expect(await readFile(path, 'utf8')).toBe('{\n  "a": 1\n}\n');
    expect((await stat(path)).mode & 0o777).toBe(0o600);
    await writeFileAtomic(path, 'text');
    expect(await readFile(path, 'utf8')).toBe('text');
    expect(await readdir(dir)).toEqual(['record.json']);
  });

  test('a failed rename removes its partial and keeps what was there', async () => {
    const path = join(dir, 'taken');
    await mkdir(path);
    await writeFile(join(path, 'inside'), 'kept');
    await expect(writeFileAtomic(path, 'text')).rejects.toThrow();
    expect(await readdir(dir)).toEqual(['taken']);
    expect(await readFile(join(path, 'inside'), 'utf8')).toBe('kept');
  });
});

describe('renameOver', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rename-over-'));
  });
  afterEach(() => rm(dir, { recursive: true, force: true }));

  test('takes the name whether or not a file or a link holds it; the old one goes, the link\'s target stays; nothing is left beside', async () => {
    const path = join(dir, 'out.qcow2');
    await writeFile(join(dir, 'new'), 'first');
    await renameOver(join(dir, 'new'), path);
    expect(await readFile(path, 'utf8')).toBe('first');
    await writeFile(join(dir, 'new'), 'second');
    await renameOver(join(dir, 'new'), path);
    expect(await readFile(path, 'utf8')).toBe('second');
    await writeFile(join(dir, 'target'), 'kept');
    await rm(path);
    await symlink('target', path);
    await writeFile(join(dir, 'new'), 'third');
    await renameOver(join(dir, 'new'), path);
    expect((await lstat(path)).isFile()).toBe(true);
    expect(await readFile(path, 'utf8')).toBe('third');
    expect(await readFile(join(dir, 'target'), 'utf8')).toBe('kept');
    expect((await readdir(dir)).sort()).toEqual(['out.qcow2', 'target']);
  });

  test('a directory under the name is refused and kept, and the new file stays where it was', async () => {
    const path = join(dir, 'out.qcow2');
    await mkdir(path);
    await writeFile(join(path, 'inside'), 'kept');
    await writeFile(join(dir, 'new'), 'data');
    await expect(renameOver(join(dir, 'new'), path)).rejects.toThrow();
    expect(await readFile(join(path, 'inside'), 'utf8')).toBe('kept');
    expect(await readFile(join(dir, 'new'), 'utf8')).toBe('data');
  });
});

describe('replaceTemporarily', () => {
  let root: string;
  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'guest-'));
    await mkdir(join(root, 'etc'));
  });
  afterEach(() => rm(root, { recursive: true, force: true }));

  test('a dangling symlink comes back as the same symlink', async () => {
    await symlink('../run/systemd/resolve/stub-resolv.conf', join(root, 'etc/resolv.conf'));
    const restore = await replaceTemporarily(root, '/etc/resolv.conf', 'nameserver 10.0.0.1\n');
    expect(await readFile(join(root, 'etc/resolv.conf'), 'utf8')).toBe('nameserver 10.0.0.1\n');
    await restore();
    expect(await readlink(join(root, 'etc/resolv.conf'))).toBe('../run/systemd/resolve/stub-resolv.conf');
  });

  test('a regular file comes back with its content, mode and times', async () => {
    await writeFile(join(root, 'etc/resolv.conf'), 'nameserver 192.0.2.53\n', { mode: 0o600 });
    const before = await stat(join(root, 'etc/resolv.conf'), { bigint: true });
    const restore = await replaceTemporarily(root, '/etc/resolv.conf', 'x');
    await restore();
    const after = await stat(join(root, 'etc/resolv.conf'), { bigint: true });
    expect(await readFile(join(root, 'etc/resolv.conf'), 'utf8')).toBe('nameserver 192.0.2.53\n');
    expect(Number(after.mode) & 0o7777).toBe(0o600);
    expect(after.mtimeNs).toBe(before.mtimeNs);
    expect(after.atimeNs).toBe(before.atimeNs);
  });

  test('a FIFO or a symlink planted at the name is moved aside and back, never opened or followed', async () => {
    await execa('mkfifo', [join(root, 'etc/resolv.conf')]);
    const restore = await replaceTemporarily(root, '/etc/resolv.conf', 'nameserver 10.0.0.1\n');
    expect(await readFile(join(root, 'etc/resolv.conf'), 'utf8')).toBe('nameserver 10.0.0.1\n');
    await restore();
    expect((await lstat(join(root, 'etc/resolv.conf'))).isFIFO()).toBe(true);
    const outside = join(root, '..', `${basename(root)}-outside`);
    await writeFile(outside, 'host file\n');
    try {
      await symlink(outside, join(root, 'etc/hosts'));
      await (await replaceTemporarily(root, '/etc/hosts', 'written\n'))();
      expect(await readFile(outside, 'utf8')).toBe('host file\n');
      expect(await readlink(join(root, 'etc/hosts'))).toBe(outside);
    } finally {
      await rm(outside, { force: true });
    }
  });

  test('an absent file is absent again', async () => {
    const restore = await replaceTemporarily(root, '/etc/policy', '#!/bin/sh\nexit 101\n', 0o755);
    expect((await stat(join(root, 'etc/policy'))).mode & 0o777).toBe(0o755);
    await restore();
    await expect(lstat(join(root, 'etc/policy'))).rejects.toThrow();
  });
});

describe('CleanupStack', () => {
  test('releases newest first, keeps going past a failure, reports it', async () => {
    const order: string[] = [];
    const stack = new CleanupStack(createLogger({ write: () => undefined }));
    stack.push('a', () => void order.push('a'));
    stack.push('b', () => {
      throw new Error('stuck');
    });
    stack.push('c', async () => void order.push('c'));
    expect(await stack.unwind()).toEqual(['could not release b: stuck']);
    expect(order).toEqual(['c', 'a']);
    expect(stack.size).toBe(0);
  });

  test('the handle push returns releases that very entry early, and only once', async () => {
    const order: string[] = [];
    const stack = new CleanupStack(createLogger({ write: () => undefined }));
    // Two entries with the same label: the handle, not the label, says which.
    const first = stack.push('mounts', () => void order.push('mounts 1'));
    stack.push('mounts', () => void order.push('mounts 2'));
    stack.push('session', () => void order.push('session'));
    await first.release();
    await first.release();
    await stack.unwind();
    expect(order).toEqual(['mounts 1', 'session', 'mounts 2']);
  });

  test('a child stack unwinds as one entry, where it was made', async () => {
    const order: string[] = [];
    const stack = new CleanupStack(createLogger({ write: () => undefined }));
    stack.push('work dir', () => void order.push('work dir'));
    const files = stack.child('files');
    const guest = stack.child('guest');
    files.push('layer', () => void order.push('layer'));
    guest.push('mount', () => void order.push('mount'));
    guest.push('session', () => void order.push('session'));
    await guest.unwind();
    guest.push('late', () => void order.push('late'));
    await stack.unwind();
    expect(order).toEqual(['session', 'mount', 'late', 'layer', 'work dir']);
  });
});

describe('ImageBuilderError', () => {
  test('renders what failed, the command output and the fix; exit code by code', () => {
    const error = new ImageBuilderError('STEP_FAILED', 'step 1 failed', { detail: 'line 1\nline 2', hint: 'fix it' });
    expect(error.render()).toBe('error [STEP_FAILED]: step 1 failed\n  | line 1\n  | line 2\nhint: fix it');
    expect(error.exitCode).toBe(4);
  });
});

describe('stopwatch', () => {
  test("a stage timed within another counts once: the outer stage gets only its own time, and both add up", async () => {
    const { stopwatch } = await import('../../src/pipeline/context.js');
    const clock = stopwatch();
    const wait = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
    await clock.time('steps', async () => {
      await wait(30);
      await clock.time('components', () => wait(300));
    });
    await clock.time('components', () => wait(20));
    expect(clock.durations.components).toBeGreaterThanOrEqual(315);
    expect(clock.durations.steps).toBeGreaterThanOrEqual(25);
    // Without the nesting taken out, steps would be >= 330.
    expect(clock.durations.steps).toBeLessThan(300);
  });
});

describe('openRegularFile', () => {
  test('a regular file opens (through a link only when following); a FIFO, a directory, a device or a link where none is followed does not, and nothing waits', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'regular-'));
    try {
      await writeFile(join(dir, 'file'), 'twelve bytes');
      await symlink('file', join(dir, 'link'));
      await symlink('/dev/null', join(dir, 'device'));
      await execa('mkfifo', [join(dir, 'fifo')]);
      for (const follow of [true, false]) {
        const opened = await openRegularFile(join(dir, 'file'), { follow });
        expect(opened?.size).toBe(12);
        await opened?.handle.close();
        expect(await openRegularFile(join(dir, 'missing'), { follow })).toBeUndefined();
        expect(await openRegularFile(join(dir, 'missing', 'below'), { follow })).toBeUndefined();
        for (const name of ['fifo', 'device', 'sub']) {
          if (name === 'sub') await mkdir(join(dir, 'sub'), { recursive: true });
          await expect(openRegularFile(join(dir, name), { follow })).rejects.toMatchObject({ constructor: NotRegularFile, isDirectory: name === 'sub' });
        }
      }
      const throughLink = await openRegularFile(join(dir, 'link'), { follow: true });
      expect(throughLink?.size).toBe(12);
      await throughLink?.handle.close();
      await expect(openRegularFile(join(dir, 'link'), { follow: false })).rejects.toBeInstanceOf(NotRegularFile);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('startHelper', () => {
  test('output through a bounded sink (qemu\'s log): its beginning and end kept, all of it read before it is said to be gone, with its exit status', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'helper-'));
    try {
      const logFile = join(dir, 'helper.log');
      const flood = "echo 'the first words'; head -c 20000000 /dev/zero | tr '\\0' x; echo; echo 'the last words' >&2; exit 3";
      let helper: Awaited<ReturnType<typeof startHelper>> | undefined;
      const start = startHelper('sh', ['-c', flood], { log: createLogger({ write: () => undefined }), logFile, logSink: new ConsoleLog(logFile, { maxBytes: 64 << 10 }), purpose: 'a flooding helper', ready: async () => true }, (h) => (helper = h));
      await start;
      expect(await helper!.gone).toEqual({ code: 3, signal: null });
      const text = await readFile(logFile, 'utf8');
      expect(text.length).toBeLessThan(70 << 10);
      expect(text.startsWith('the first words\n')).toBe(true);
      expect(text.trimEnd().endsWith('the last words')).toBe(true);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test("a helper that fails after a flood of output: the error quotes the end of its log, read from the end alone", async () => {
    const dir = await mkdtemp(join(tmpdir(), 'helper-'));
    try {
      const logFile = join(dir, 'helper.log');
      const flood = "head -c 20000000 /dev/zero | tr '\\0' x; echo; echo 'the last words'; exit 3";
      const failure = startHelper('sh', ['-c', flood], { log: createLogger({ write: () => undefined }), logFile, purpose: 'a flooding helper', ready: async () => false, timeoutMs: 30_000 }, () => undefined);
      await expect(failure).rejects.toMatchObject({ code: 'COMMAND_FAILED', detail: expect.stringContaining('the last words') });
      expect((await stat(logFile)).size).toBeGreaterThan(20_000_000);
      const end = await readLogTail(logFile);
      expect(end.length).toBe(64 * 1024);
      expect(end.endsWith('the last words\n')).toBe(true);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('tail', () => {
  test('the last lines of an output, found from its end: millions of lines are never split, one endless line is cut to its end', () => {
    expect(tail('a\nb\nc\n\n', 2)).toBe('b\nc');
    expect(tail('a\nb\nc', 5)).toBe('a\nb\nc');
    expect(tail('\nonly', 1)).toBe('only');
    expect(tail('', 3)).toBe('');
    // What a guest program can print into execa's buffers (here 64 MB of "x\n"): 20 lines back, not 32 million.
    const flood = 'x\n'.repeat(32 * 1024 * 1024);
    expect(flood.indexOf('z')).toBe(-1); // flattened now (a search does), not within what is measured
    const before = process.memoryUsage().heapUsed;
    expect(tail(flood)).toBe(Array(20).fill('x').join('\n'));
    expect(process.memoryUsage().heapUsed - before).toBeLessThan(16 * 1024 * 1024);
    const line = `${'y'.repeat(1 << 20)}END`;
    const quoted = tail(`first\n${line}`);
    expect(quoted.length).toBe(16 * 1024 + 1);
    expect(quoted.startsWith('…')).toBe(true);
    expect(quoted.endsWith('yEND')).toBe(true);
  });
});

describe('promptName', () => {
  test("the shell's prompt names the guest by its os-release ID, cut to what an ID may hold: no NUL, no $(…), no escape", () => {
    expect(promptName('ubuntu')).toBe('ubuntu');
    expect(promptName('opensuse-leap')).toBe('opensuse-leap');
    expect(promptName('a\0b$(touch /x)\x1b[31m')).toBe('abtouchx31m');
    expect(promptName('\0\n')).toBe('linux');
    expect(promptName('x'.repeat(1000))).toHaveLength(64);
  });
});
