import { spawn, type ChildProcess } from 'node:child_process';
import { chmod, lstat, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { acquireLock, cacheDirProblem, removeFreeLocks, checkResultsDir, ensureCacheDir, ensurePrivateDir, kernelIdentity, RESULTS_DIR_HINT, type LockOptions } from '../../src/util/lock.js';
import { createLogger } from '../../src/util/log.js';
import { REPO } from '../helpers/host.js';
import { expectCanaryUntouched, snapshotHost } from '../helpers/hostile.js';

const LOCK_JS = join(REPO, 'dist', 'util', 'lock.js');

/** A second, real process holding the lock (the built module): prints "locked", releases on a line on stdin. */
async function startHolder(path: string, options: LockOptions): Promise<{ child: ChildProcess; release(): Promise<void> }> {
  if (!existsSync(LOCK_JS)) throw new Error(`${LOCK_JS} is missing: run npm run build first`);
  const script = `
    const { acquireLock } = await import(${JSON.stringify(LOCK_JS)});
    const release = await acquireLock(process.argv[1], 'a test holder', JSON.parse(process.argv[2]));
    process.stdout.write('locked\\n');
    process.stdin.once('data', async () => { await release(); process.stdout.write('released\\n'); process.exit(0); });
  `;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script, path, JSON.stringify(options)], { stdio: ['pipe', 'pipe', 'inherit'] });
  let out = '';
  const saw = (word: string) =>
    new Promise<void>((resolve, reject) => {
      const check = () => (out.includes(word) ? resolve() : undefined);
      child.stdout!.on('data', (data: Buffer) => {
        out += data.toString();
        check();
      });
      child.once('exit', (code) => (out.includes(word) ? resolve() : reject(new Error(`the holder exited (${code}) before "${word}"`))));
      check();
    });
  await saw('locked');
  return {
    child,
    release: async () => {
      child.stdin!.write('release\n');
      await saw('released');
    },
  };
}

/** A promise's state without waiting for it. */
function tracked<T>(promise: Promise<T>) {
  const state = { settled: false, value: undefined as T | undefined };
  void promise.then((value) => Object.assign(state, { settled: true, value }));
  return state;
}

const pause = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
/** The state letter in /proc/PID/stat (R, S, T for stopped, Z), or why there is none. */
const processState = (pid: number) => {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
  } catch (error) {
    return `no process: ${(error as Error).message}`;
  }
};
const recordOf = async (path: string) => JSON.parse(await readFile(path, 'utf8'));
const asNobody = (...command: string[]) => execa('setpriv', ['--reuid', '65534', '--regid', '65534', '--clear-groups', ...command]);

describe('locks held by the kernel and by a lease', () => {
  let dir: string;
  let lines: string[];
  const log = () => createLogger({ write: (text) => void lines.push(text) });
  beforeEach(async () => {
    dir = await mkdtemp('/var/tmp/ib-lock-');
    lines = [];
  });
  afterEach(() => rm(dir, { recursive: true, force: true }));
  /** The holder lets go: only then the waiter has the lock, which it never called stale. */
  const releaseThenGot = async (holder: { release(): Promise<void> }, waiter: ReturnType<typeof tracked<() => Promise<void>>>) => {
    await holder.release();
    while (!waiter.settled) await pause(20);
    expect((await recordOf(join(dir, 'x.lock'))).pid).toBe(process.pid);
    expect(lines.join('')).not.toContain('stale');
    await waiter.value!();
  };

  test('a live holder whose heartbeat stopped (SIGSTOP) keeps its lock: the kernel says it lives; the waiter gets it after release', async () => {
    const path = join(dir, 'x.lock');
    const holder = await startHolder(path, { leaseMs: 300 });
    try {
      holder.child.kill('SIGSTOP');
      const waiter = tracked(acquireLock(path, 'the waiter', { leaseMs: 300, pollMs: 20, log: log() }));
      // Many leases pass without a renewal: a lease alone would call it dead.
      await pause(2000);
      // One failure seen (not reproduced): should it come again, say whether the holder was still there, stopped
      // ('T'), and how the waiter got the lock (its log says "its process is gone" or "lease expired" when it
      // broke the lock; nothing when it found no lock file at all).
      expect({ waiterGotIt: waiter.settled, holderState: processState(holder.child.pid!), waiterLog: lines.join('') }).toEqual({
        waiterGotIt: false,
        holderState: 'T',
        waiterLog: expect.not.stringContaining('stale'),
      });
      expect((await recordOf(path)).pid).toBe(holder.child.pid);
      holder.child.kill('SIGCONT');
      await releaseThenGot(holder, waiter);
    } finally {
      holder.child.kill('SIGKILL');
    }
  }, 30000);

  test('a live holder on another kernel (no flock reaches us) keeps its lock by renewing its lease: never broken, waited for', async () => {
    const path = join(dir, 'x.lock');
    const remote = { identity: { host: 'node-b', boot: 'boot-of-node-b' }, kernelLock: false };
    const holder = await startHolder(path, { ...remote, leaseMs: 300, heartbeatMs: 50 });
    try {
      const waiter = tracked(acquireLock(path, 'the waiter', { leaseMs: 300, pollMs: 20, log: log() }));
      await pause(2000);
      expect(waiter.settled).toBe(false);
      const record = await recordOf(path);
      expect(record).toMatchObject({ pid: holder.child.pid, host: 'node-b' });
      expect(record.beat).toBeGreaterThan(5);
      expect(lines.join('')).toContain(`waiting for process ${holder.child.pid} on node-b, which is fetching a test holder`);
      await releaseThenGot(holder, waiter);
    } finally {
      holder.child.kill('SIGKILL');
    }
  }, 30000);

  test('a holder killed with SIGKILL is released by the kernel at once, long before its lease ends', async () => {
    const path = join(dir, 'x.lock');
    const holder = await startHolder(path, { leaseMs: 600000 });
    const waiter = tracked(acquireLock(path, 'the waiter', { leaseMs: 600000, pollMs: 20, log: log() }));
    await pause(300);
    expect(waiter.settled).toBe(false);
    holder.child.kill('SIGKILL');
    while (!waiter.settled) await pause(20);
    expect(lines.join('')).toMatch(new RegExp(`removing the stale lock ${path} \\(process ${holder.child.pid} on [^,]+, a test holder\\): its process is gone`));
    expect(await recordOf(path)).toMatchObject({ pid: process.pid, boot: kernelIdentity().boot });
    await waiter.value!();
  }, 20000);

  test('cleanup removes the claim files killed holders left, through the lock protocol: never a held one, never another name', async () => {
    const held = join(dir, 'box-uid-1900000001.lock');
    const killed = join(dir, 'box-uid-1900000002.lock');
    const killedNbd = join(dir, 'imagebuilder-nbd3.lock');
    const other = join(dir, 'not-a-claim.lock');
    const live = await startHolder(held, {});
    for (const path of [killed, killedNbd, other]) {
      const holder = await startHolder(path, {});
      holder.child.kill('SIGKILL');
      await new Promise((resolve) => holder.child.once('exit', resolve));
    }
    const claims = /^imagebuilder-nbd\d+\.lock$|^box-uid-\d+\.lock$/;
    expect(await removeFreeLocks(dir, claims, { dryRun: true })).toEqual(['box-uid-1900000002.lock', 'imagebuilder-nbd3.lock']);
    expect((await readdir(dir)).sort()).toEqual(['box-uid-1900000001.lock', 'box-uid-1900000002.lock', 'imagebuilder-nbd3.lock', 'not-a-claim.lock']);
    expect(await removeFreeLocks(dir, claims, { log: log() })).toEqual(['box-uid-1900000002.lock', 'imagebuilder-nbd3.lock']);
    expect((await readdir(dir)).sort()).toEqual(['box-uid-1900000001.lock', 'not-a-claim.lock']);
    // The live holder's claim is still its own.
    expect(await recordOf(held)).toMatchObject({ pid: live.child.pid });
    await live.release();
    expect(await readdir(dir)).toEqual(['not-a-claim.lock']);
  }, 30000);

  test('the lock of a builder that crashed on another host (another boot, a lease not renewed) is taken over after the lease, not before', async () => {
    const path = join(dir, 'x.lock');
    await writeFile(path, JSON.stringify({ pid: 4242, host: 'node-b', boot: 'boot-of-node-b', since: '', what: 'http://h/image.qcow2', token: 't', beat: 3, renewedAt: '' }), { mode: 0o600 });
    const waiter = tracked(acquireLock(path, 'the waiter', { leaseMs: 1000, pollMs: 20, log: log() }));
    await pause(300);
    expect(waiter.settled).toBe(false);
    while (!waiter.settled) await pause(20);
    expect(lines.join('')).toContain(`removing the stale lock ${path} (process 4242 on node-b, http://h/image.qcow2): unchanged for 1.0s, its lease expired`);
    expect(await recordOf(path)).toMatchObject({ pid: process.pid, host: kernelIdentity().host });
    await waiter.value!();
  }, 20000);

  test('of two processes racing to take over one stale lock, one takes it and the other waits on its renewed lease', async () => {
    const path = join(dir, 'x.lock');
    await writeFile(path, JSON.stringify({ pid: 4242, host: 'node-b', boot: 'boot-of-node-b', since: '', what: 'x', token: 't', beat: 0, renewedAt: '' }), { mode: 0o600 });
    // Both as if on other kernels without a shared flock: only the breaker and the re-check keep them apart.
    const options = { leaseMs: 300, heartbeatMs: 50, kernelLock: false };
    const first = tracked(startHolder(path, { ...options, identity: { host: 'node-c', boot: 'c' } }));
    const second = tracked(startHolder(path, { ...options, identity: { host: 'node-d', boot: 'd' } }));
    while (!first.settled && !second.settled) await pause(20);
    await pause(1500);
    // The one that lost waits on the winner's renewed lease.
    expect(first.settled !== second.settled).toBe(true);
    const winner = (first.value ?? second.value)!;
    const loser = first.value ? second : first;
    expect((await recordOf(path)).pid).toBe(winner.child.pid);
    await winner.release();
    while (!loser.settled) await pause(20);
    expect((await recordOf(path)).pid).toBe(loser.value!.child.pid);
    await loser.value!.release();
  }, 30000);
});

describe('lock files another user cannot plant', () => {
  let sticky: string;
  beforeEach(async () => {
    // Like /run/lock: every user may create entries (1777), only in their own name.
    sticky = await mkdtemp('/var/tmp/ib-runlock-');
    await chmod(sticky, 0o1777);
  });
  afterEach(() => rm(sticky, { recursive: true, force: true }));

  test('a results directory (readable): made 0755; an existing one of ours used as it is, /tmp-like ones included; one another user made, or others may write without the sticky bit, refused', async () => {
    const made = join(sticky, 'results');
    await ensurePrivateDir(made, undefined, { purpose: 'write test results in', readable: true, hint: RESULTS_DIR_HINT });
    expect((await lstat(made)).mode & 0o7777).toBe(0o755);
    // The parent itself (ours, 1777, as /tmp is root's): neither refused nor made private.
    await ensurePrivateDir(sticky, undefined, { purpose: 'write test results in', readable: true });
    expect((await lstat(sticky)).mode & 0o7777).toBe(0o1777);
    const open = join(sticky, 'open');
    await mkdir(open);
    await chmod(open, 0o777);
    await expect(ensurePrivateDir(open, undefined, { purpose: 'write test results in', readable: true, hint: RESULTS_DIR_HINT })).rejects.toMatchObject({
      code: 'ENVIRONMENT',
      message: `refusing to write test results in ${open}: others may write it (mode 777, no sticky bit) and swap what is written there`,
      hint: RESULTS_DIR_HINT,
    });
    expect((await lstat(open)).mode & 0o7777).toBe(0o777);
    const theirs = join(sticky, 'node.qcow2.test');
    await asNobody('mkdir', theirs);
    expect(() => checkResultsDir(theirs)).toThrow(`refusing to write test results in ${theirs}: it belongs to uid 65534, not to this user (uid 0)`);
    expect(() => checkResultsDir(open)).toThrow('others may write it');
    await asNobody('ln', '-s', '/root', join(sticky, 'linked.test'));
    expect(() => checkResultsDir(join(sticky, 'linked.test'))).toThrow('it is a symbolic link');
    expect(() => checkResultsDir(join(sticky, 'not-yet.test'))).not.toThrow();
    expect(() => checkResultsDir(made)).not.toThrow();
    // Inside a directory every user may write without the sticky bit: refused before the build, as at its end.
    expect(() => checkResultsDir(join(open, 'results'))).toThrow(`refusing to write test results in ${join(open, 'results')}: its parent ${open} is writable by every user (mode 777, no sticky bit)`);
  });

  test("the cache directory: made private; ours used as it is; another user's, one others may write, or one holding another user's entry refused, never chmod-ed", async () => {
    const made = join(sticky, 'new-cache');
    ensureCacheDir(made);
    expect((await lstat(made)).mode & 0o7777).toBe(0o700);
    await mkdir(join(made, 'layers'));
    await writeFile(join(made, 'libguestfs-kvm-6.1'), 'works');
    expect(() => ensureCacheDir(made)).not.toThrow();
    const refusal = (dir: string, why: string) => `refusing to use the cache directory ${dir}: ${why}`;

    // An entry at its top that another user owns (planted while the directory was open to them): the images,
    // layers or tmp/ it holds are theirs to fake.
    await execa('chown', ['65534', join(made, 'layers')]);
    expect(() => ensureCacheDir(made)).toThrow(refusal(made, `${join(made, 'layers')} belongs to uid 65534, not to this user (uid 0)`));
    await execa('chown', ['0', join(made, 'layers')]);
    await chmod(join(made, 'layers'), 0o777);
    expect(() => ensureCacheDir(made)).toThrow(`${join(made, 'layers')} may be written by its group or others (mode 777)`);
    await chmod(join(made, 'layers'), 0o755);
    await execa('chown', ['65534', join(made, 'libguestfs-kvm-6.1')]);
    expect(() => ensureCacheDir(made)).toThrow('belongs to uid 65534');
    await execa('chown', ['0', join(made, 'libguestfs-kvm-6.1')]);

    // Open to the group: refused with the fix, and left as it was (it may be shared on purpose).
    await chmod(made, 0o775);
    const error = (() => {
      try {
        ensureCacheDir(made);
      } catch (e) {
        return e;
      }
    })();
    expect(error).toMatchObject({ code: 'ENVIRONMENT', message: refusal(made, `${made} may be written by its group or others (mode 775)`) });
    expect((error as { hint: string }).hint).toMatch(/chmod go-w/);
    expect((await lstat(made)).mode & 0o7777).toBe(0o775);
    await chmod(made, 0o755);

    // Another user's directory, made first where the cache goes (a sticky /tmp): refused, nothing made in it.
    const theirs = join(sticky, 'their-cache');
    await asNobody('mkdir', '-m', '0755', theirs);
    expect(() => ensureCacheDir(theirs)).toThrow(refusal(theirs, `${theirs} belongs to uid 65534, not to this user (uid 0)`));
    // Their symlink to a directory of ours (root-owned /etc, say): refused, not followed.
    await asNobody('ln', '-s', made, join(sticky, 'linked-cache'));
    expect(() => ensureCacheDir(join(sticky, 'linked-cache'))).toThrow(`it is a symbolic link (to ${made}) that uid 65534 made, not this user`);
    // Our own link (a cache on a bigger disk) is followed; where it leads must not be swappable by others.
    await execa('ln', ['-s', made, join(sticky, 'our-link')]);
    expect(() => ensureCacheDir(join(sticky, 'our-link'))).not.toThrow();
    const open = join(sticky, 'open');
    await mkdir(join(open, 'cache'), { recursive: true, mode: 0o700 });
    await chmod(open, 0o777);
    const swappable = `its parent ${open} may be written by its group or others (mode 777, no sticky bit), who could swap it for another`;
    expect(() => ensureCacheDir(join(open, 'cache'))).toThrow(swappable);
    await execa('ln', ['-s', join(open, 'cache'), join(sticky, 'link-to-open')]);
    expect(cacheDirProblem(join(sticky, 'link-to-open'))).toBe(swappable);
    // Not made yet: where it would be made counts already (doctor says so before the first build).
    expect(cacheDirProblem(join(open, 'not-yet'))).toBe(swappable);
    // A parent of another user's (XDG_CACHE_HOME kept by sudo -E): they could rename ours away and put theirs there.
    const home = join(sticky, 'home');
    await asNobody('mkdir', '-m', '0755', home);
    await execa('mkdir', [join(home, 'cache')]);
    expect(cacheDirProblem(join(home, 'cache'))).toBe(`its parent ${home} belongs to uid 65534, who could swap it for another`);
    // Further up, and before anything is made there: ~/.cache would have been made root's, in a home of theirs.
    expect(() => ensureCacheDir(join(home, '.cache', 'imagebuilder'))).toThrow(`a directory above it, ${home} belongs to uid 65534, who could swap it for another`);
    expect((await readdir(home)).sort()).toEqual(['cache']);
    // A symlink of ours that leads nowhere is no cache.
    await execa('ln', ['-s', join(sticky, 'gone'), join(sticky, 'dangling')]);
    expect(cacheDirProblem(join(sticky, 'dangling'))).toMatch(/^it does not lead to a directory \(ENOENT/);
    await writeFile(join(sticky, 'a-file'), '');
    expect(cacheDirProblem(join(sticky, 'a-file'))).toBe('it is not a directory');
    expect(cacheDirProblem(join(sticky, 'not-yet'))).toBeUndefined();
  });

  test("a cache reached through the user's own symlink (~/.cache on another disk) is fine: only who may write where it leads counts", async () => {
    await mkdir(join(sticky, 'real'), { mode: 0o700 });
    await execa('ln', ['-s', join(sticky, 'real'), join(sticky, 'cache')]);
    const release = await acquireLock(join(sticky, 'cache', 'locks', 'x.lock'), 'x');
    expect((await lstat(join(sticky, 'real', 'locks', 'x.lock'))).isFile()).toBe(true);
    await release();
  });

  test('a symlink planted where the lock directory goes is refused, and its target is never written', async () => {
    const host = await snapshotHost();
    await asNobody('ln', '-s', host.canaryDir, join(sticky, 'imagebuilder'));
    await expect(acquireLock(join(sticky, 'imagebuilder', 'x.lock'), 'x')).rejects.toMatchObject({
      code: 'ENVIRONMENT',
      message: `refusing to keep locks in ${join(sticky, 'imagebuilder')}: it is a symbolic link (to ${host.canaryDir})`,
    });
    await expectCanaryUntouched(host);
  });

  test("a lock directory another user made first is refused: its lock files are theirs to fake", async () => {
    await asNobody('mkdir', '-m', '0777', join(sticky, 'imagebuilder'));
    await expect(acquireLock(join(sticky, 'imagebuilder', 'x.lock'), 'x')).rejects.toMatchObject({
      code: 'ENVIRONMENT',
      message: `refusing to keep locks in ${join(sticky, 'imagebuilder')}: it belongs to uid 65534, not to this user (uid 0)`,
      hint: expect.stringContaining('remove it'),
    });
    expect(await readdir(join(sticky, 'imagebuilder'))).toEqual([]);
  });

  test('in a lock directory of ours that others could write, a planted symlink lock is removed, never followed; the directory is made private', async () => {
    const host = await snapshotHost();
    const locks = join(sticky, 'locks');
    await mkdir(locks, { mode: 0o777 });
    await chmod(locks, 0o777);
    await asNobody('ln', '-s', host.canaryFile, join(locks, 'x.lock'));
    const lines: string[] = [];
    const release = await acquireLock(join(locks, 'x.lock'), 'x', { log: createLogger({ write: (text) => void lines.push(text) }) });
    expect((await lstat(locks)).mode & 0o777).toBe(0o700);
    const lock = await lstat(join(locks, 'x.lock'));
    expect(lock.isFile()).toBe(true);
    expect(lock.uid).toBe(0);
    expect(lines.join('')).toContain(`${locks} was mode 777, open to other users: made it private (0700)`);
    expect(lines.join('')).toContain(`${join(locks, 'x.lock')} is a symbolic link, not a lock file of imagebuilder: removing it`);
    await release();
    await expectCanaryUntouched(host);
  });

  test('a lock file planted by another user (claiming a live holder on this kernel) is not trusted: removed and taken', async () => {
    const locks = join(sticky, 'locks');
    await mkdir(locks);
    await chmod(locks, 0o777);
    const fake = JSON.stringify({ pid: 1, host: kernelIdentity().host, boot: kernelIdentity().boot, since: '', what: 'forever', token: 'x', beat: 0, renewedAt: '' });
    await asNobody('sh', '-c', `printf '%s' '${fake}' > ${join(locks, 'x.lock')}`);
    expect((await lstat(join(locks, 'x.lock'))).uid).toBe(65534);
    const release = await acquireLock(join(locks, 'x.lock'), 'x', { leaseMs: 600000 });
    expect(await recordOf(join(locks, 'x.lock'))).toMatchObject({ pid: process.pid, what: 'x' });
    expect((await lstat(join(locks, 'x.lock'))).uid).toBe(0);
    await release();
  });
});
