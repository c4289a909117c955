import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { claimBoxUid, processRunningAs } from '../../src/util/box-uid.js';
import { CleanupStack } from '../../src/util/cleanup.js';
import { execRunner } from '../../src/util/exec.js';
import { createLogger } from '../../src/util/log.js';

// Real getent, real /proc, real locks (in a directory of the test's own); a range of the test's own too.
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

  test('two claims get two uids; a released one is claimed again', async () => {
    const first = new CleanupStack(log);
    const second = new CleanupStack(log);
    const a = await claimBoxUid(execRunner, first, log, 'test a', options(1_900_100_000, 4));
    const b = await claimBoxUid(execRunner, second, log, 'test b', options(1_900_100_000, 4));
    expect([a, b]).toEqual([1_900_100_000, 1_900_100_001]);
    expect(await first.unwind()).toEqual([]);
    const third = new CleanupStack(log);
    expect(await claimBoxUid(execRunner, third, log, 'test c', options(1_900_100_000, 4))).toBe(1_900_100_000);
    await third.unwind();
    await second.unwind();
  });

  test('a uid the user database names is passed over (nobody, 65534)', async () => {
    const stack = new CleanupStack(log);
    logged.length = 0;
    expect(await claimBoxUid(execRunner, stack, log, 'test', options(65534, 2))).toBe(65535);
    expect(logged.join('')).toMatch(/uid 65534 is not free for test: getent passwd 65534 exited 0: nobody:/);
    await stack.unwind();
  });

  test('a uid a process runs as is passed over (one a dead build left behind)', async () => {
    const uid = 1_900_200_000;
    const sleeper = spawn('setpriv', ['--reuid', String(uid), '--regid', String(uid), '--clear-groups', 'sleep', '60'], { stdio: 'ignore' });
    try {
      for (const until = Date.now() + 10_000; !(await processRunningAs(uid)) && Date.now() < until; ) await new Promise((resolve) => setTimeout(resolve, 50));
      expect(await processRunningAs(uid)).toBe(`process ${sleeper.pid} runs as it`);
      const stack = new CleanupStack(log);
      expect(await claimBoxUid(execRunner, stack, log, 'test', options(uid, 2))).toBe(uid + 1);
      await stack.unwind();
    } finally {
      sleeper.kill('SIGKILL');
    }
  });

  test('none free: refused, saying which and why', async () => {
    const holder = new CleanupStack(log);
    await claimBoxUid(execRunner, holder, log, 'the holder', options(1_900_300_000, 1));
    const stack = new CleanupStack(log);
    await expect(claimBoxUid(execRunner, stack, log, 'qemu', options(1_900_300_000, 1))).rejects.toMatchObject({
      code: 'ENVIRONMENT',
      message: 'no free uid for qemu among 1900300000…1900300000: each is held by another build, named in the user database, or running a process',
    });
    await holder.unwind();
  });

  test('processRunningAs reads every uid of a process (real, effective, saved, filesystem)', async () => {
    const proc = join(dir, 'proc');
    for (const [pid, uids] of [['17', '0\t0\t0\t0'], ['42', '1000\t1000\t1900000123\t1000'], ['self', '7\t7\t7\t7']] as const) {
      await mkdir(join(proc, pid), { recursive: true });
      await writeFile(join(proc, pid, 'status'), `Name:\tx\nUid:\t${uids}\nGid:\t0\t0\t0\t0\n`);
    }
    await mkdir(join(proc, '99')); // gone while being read: no status
    expect(await processRunningAs(1_900_000_123, proc)).toBe('process 42 runs as it');
    expect(await processRunningAs(1000, proc)).toBe('process 42 runs as it');
    expect(await processRunningAs(7, proc)).toBeUndefined(); // not a process
    expect(await processRunningAs(5, proc)).toBeUndefined();
  });
});
