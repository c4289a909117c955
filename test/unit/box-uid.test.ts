import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { claimBoxUid, processesRunningAs, rangeMapped } from '../../src/util/box-uid.js';
import { CleanupStack } from '../../src/util/cleanup.js';
import { execRunner, type Runner } from '../../src/util/exec.js';
import { createLogger } from '../../src/util/log.js';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
/** A process running as `uid`, as a box's leftover child would be. */
async function runningAs(uid: number) {
  const child = spawn('setpriv', ['--reuid', String(uid), '--regid', String(uid), '--clear-groups', 'sleep', '60'], { stdio: 'ignore' });
  const exited = new Promise<NodeJS.Signals | null>((resolve) => child.once('exit', (_code, signal) => resolve(signal)));
  for (const until = Date.now() + 10_000; !(await processesRunningAs(uid)).length && Date.now() < until; ) await sleep(50);
  return { pid: child.pid!, exited, kill: () => child.kill('SIGKILL') };
}

// Real getent, real /proc, real locks (in a directory of the test's own); ranges of the test's own too.
describe('claimBoxUid: a uid no one else runs as, for one boxed process', () => {
  let dir: string;
  const logged: string[] = [];
  const log = createLogger({ level: 'debug', write: (text) => void logged.push(text) });
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'box-uid-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });
  const options = (first: number, count: number) => ({ lockDir: join(dir, 'locks'), range: { first, count } });

  test('two claims get two uids of the range; with both held, none is left; a released one is claimed again', async () => {
    const [first, second] = [new CleanupStack(log), new CleanupStack(log)];
    const a = await claimBoxUid(execRunner, first, log, 'test a', options(1_900_100_000, 2));
    const b = await claimBoxUid(execRunner, second, log, 'test b', options(1_900_100_000, 2));
    expect([a, b].sort()).toEqual([1_900_100_000, 1_900_100_001]);
    await expect(claimBoxUid(execRunner, new CleanupStack(log), log, 'test c', options(1_900_100_000, 2))).rejects.toMatchObject({
      code: 'ENVIRONMENT',
      message: 'no free uid for test c among 1900100000…1900100001: each is held by another build, named in the user database, or running a process',
    });
    expect(await first.unwind()).toEqual([]);
    const third = new CleanupStack(log);
    expect(await claimBoxUid(execRunner, third, log, 'test c', options(1_900_100_000, 2))).toBe(a);
    await third.unwind();
    await second.unwind();
  });

  test('a uid the user database names is passed over (nobody, 65534)', async () => {
    logged.length = 0;
    await expect(claimBoxUid(execRunner, new CleanupStack(log), log, 'test', options(65534, 1))).rejects.toMatchObject({ code: 'ENVIRONMENT' });
    expect(logged.join('')).toMatch(/uid 65534 is not free for test: getent passwd 65534 names it: nobody:/);
    const stack = new CleanupStack(log);
    expect(await claimBoxUid(execRunner, stack, log, 'test', options(65534, 2))).toBe(65535);
    await stack.unwind();
  });

  test('a uid a process runs as is passed over (one a dead build left behind), and is claimed once it is gone', async () => {
    const uid = 1_900_200_000;
    const leftover = await runningAs(uid);
    try {
      expect(await processesRunningAs(uid)).toEqual([leftover.pid]);
      logged.length = 0;
      await expect(claimBoxUid(execRunner, new CleanupStack(log), log, 'test', options(uid, 1))).rejects.toMatchObject({ code: 'ENVIRONMENT' });
      expect(logged.join('')).toContain(`uid ${uid} is not free for test: process ${leftover.pid} runs as it`);
    } finally {
      leftover.kill();
    }
    await leftover.exited;
    const stack = new CleanupStack(log);
    expect(await claimBoxUid(execRunner, stack, log, 'test', options(uid, 1))).toBe(uid);
    await stack.unwind();
  });

  test('its release kills what still runs as it (a child no death signal reached), then frees it', async () => {
    const uid = 1_900_250_000;
    const stack = new CleanupStack(log);
    expect(await claimBoxUid(execRunner, stack, log, 'test', options(uid, 1))).toBe(uid);
    const child = await runningAs(uid);
    expect(await stack.unwind()).toEqual([]);
    expect(await child.exited).toBe('SIGTERM');
    expect(await processesRunningAs(uid)).toEqual([]);
    const next = new CleanupStack(log);
    expect(await claimBoxUid(execRunner, next, log, 'next', options(uid, 1))).toBe(uid);
    await next.unwind();
  });

  test('a user database that cannot answer is an error, not a guess; the uid is not kept', async () => {
    const broken: Runner = async (file, args) => ({ command: `${file} ${args.join(' ')}`, exitCode: 1, stdout: '', stderr: 'nss_ldap: server unreachable', output: 'nss_ldap: server unreachable' });
    await expect(claimBoxUid(broken, new CleanupStack(log), log, 'qemu', options(1_900_300_000, 1))).rejects.toMatchObject({
      code: 'ENVIRONMENT',
      message: 'cannot tell whether uid 1900300000 is free: getent passwd 1900300000 exited 1',
      hint: expect.stringContaining('nss_ldap: server unreachable'),
    });
    const stack = new CleanupStack(log);
    expect(await claimBoxUid(execRunner, stack, log, 'qemu', options(1_900_300_000, 1))).toBe(1_900_300_000);
    await stack.unwind();
  });

  test('processesRunningAs reads every uid of a process (real, effective, saved, filesystem)', async () => {
    const proc = join(dir, 'proc');
    for (const [pid, uids] of [['17', '0\t0\t0\t0'], ['42', '1000\t1000\t1900000123\t1000'], ['self', '7\t7\t7\t7']] as const) {
      await mkdir(join(proc, pid), { recursive: true });
      await writeFile(join(proc, pid, 'status'), `Name:\tx\nUid:\t${uids}\nGid:\t0\t0\t0\t0\n`);
    }
    await mkdir(join(proc, '99')); // gone while being read: no status
    expect(await processesRunningAs(1_900_000_123, proc)).toEqual([42]);
    expect(await processesRunningAs(0, proc)).toEqual([17]);
    expect(await processesRunningAs(7, proc)).toEqual([]); // not a process
  });

  test('rangeMapped: the whole range, in both maps, or not at all (a rootless container maps 65536 ids)', async () => {
    const self = join(dir, 'self');
    await mkdir(self, { recursive: true });
    const maps = async (uid: string, gid = uid) => {
      await writeFile(join(self, 'uid_map'), uid);
      await writeFile(join(self, 'gid_map'), gid);
      return rangeMapped(1_900_000_000, 4096, self);
    };
    expect(await maps('         0          0 4294967295\n')).toBe(true);
    expect(await maps('         0     100000      65536\n')).toBe(false);
    expect(await maps('0 0 65536\n1899999000 1899999000 10000\n')).toBe(true);
    expect(await maps('0 0 4294967295\n', '0 0 65536\n')).toBe(false);
    expect(await maps('1900000000 5 4095\n')).toBe(false);
    expect(await rangeMapped(1_900_000_000, 4096)).toBe(true); // this host: no user namespace
  });
});
