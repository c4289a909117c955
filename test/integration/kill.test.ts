import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, readlink, rm, rmdir, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { fixtureImage } from '../helpers/fixtures.js';
import { CLI, leftoversUnder, NOTHING_LEFT, runCli } from '../helpers/host.js';
import { writeRecipe } from '../helpers/recipes.js';
import { processStartTime, type BuildRecord } from '../../src/util/build-record.js';
import { abortFuseConnection, FUSE_CONTROL } from '../../src/util/fuse-connections.js';
import { stillExiting } from '../../src/util/processes.js';

/**
 * A build killed with SIGKILL (the OOM killer, a CI timeout, a preempted pod) at each stage: what the kernel
 * can end with it ends at once (its helper daemon, its step's processes), and the next build or
 * `imagebuilder cleanup` releases the rest. SIGHUP and SIGQUIT release everything like SIGINT. A live build is
 * never touched by a cleanup. Every check looks only at this test's own work directories (IMAGEBUILDER_WORK_DIR)
 * and registry (IMAGEBUILDER_RUN_DIR): other builds on the machine are not ours to judge.
 */

/** The step's sleep: a duration of this run's own, so no other process's sleep is mistaken for it. */
const LONG_SLEEP = `sleep 301.${process.pid}`;

/** Loop devices whose backing file the kernel names "/": their export's mount died with its namespace. */
const loopsNamingRoot = async () => (await execa('losetup', ['--list', '--noheadings', '--output', 'NAME,BACK-FILE'])).stdout.split('\n').map((line) => line.trim().split(/\s+/)).filter(([, back]) => back === '/').map(([name]) => name);

const sleepAlive = async () => (await execa('pgrep', ['-f', LONG_SLEEP], { reject: false })).stdout !== '';

async function until<T>(what: string, probe: () => Promise<T | undefined | false>, timeoutMs = 120000, intervalMs = 25): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}

describe('builds killed with SIGKILL, SIGHUP or SIGQUIT leave nothing behind', () => {
  let work: string;
  let tmp: string;
  let runDir: string;
  let cache: string;
  let input: string;
  const running: ResultPromise[] = [];
  beforeAll(async () => {
    work = await mkdtemp('/var/tmp/ib-kill-');
    tmp = await mkdtemp('/var/tmp/ib-kill-tmp-');
    runDir = await mkdtemp('/var/tmp/ib-kill-run-');
    cache = join(work, 'cache');
    input = await fixtureImage('gpt-esp');
  });
  afterAll(async () => {
    for (const child of running) child.kill('SIGKILL');
    await runCli(['cleanup'], { env: env() });
    await rm(work, { recursive: true, force: true });
    await rm(tmp, { recursive: true, force: true });
    await rm(runDir, { recursive: true, force: true });
  });

  const env = () => ({ IMAGEBUILDER_WORK_DIR: tmp, IMAGEBUILDER_RUN_DIR: runDir, IMAGEBUILDER_CACHE: cache });
  const startApply = (recipe: string, output: string, extra: string[] = ['--no-cache', '--sparsify', 'none'], extraEnv: Record<string, string> = {}) => {
    const child = execa('node', [CLI, 'apply', recipe, '--disk-image', input, '--output', output, ...extra], { env: { ...env(), ...extraEnv }, reject: false, all: true });
    running.push(child);
    return child;
  };
  /** A build in a mount namespace of its own (as in a container): unshare execs it, so its pid is the build's own. */
  const startInNamespace = (recipe: string, output: string) => {
    const child = execa('unshare', ['--mount', '--propagation', 'private', 'node', CLI, 'apply', recipe, '--disk-image', input, '--output', output, '--no-cache', '--sparsify', 'none', '--mount-backend', 'fuse'], { env: env(), reject: false, all: true });
    running.push(child);
    return child;
  };
  const outputSeen = (child: ResultPromise, text: string) =>
    new Promise<void>((resolve, reject) => {
      let seen = '';
      const timer = setTimeout(() => reject(new Error(`never printed ${text}:\n${seen}`)), 120000);
      child.all!.on('data', (chunk: Buffer) => {
        seen += chunk.toString();
        if (seen.includes(text)) {
          clearTimeout(timer);
          resolve();
        }
      });
    });
  const kill9 = async (child: ResultPromise) => {
    child.kill('SIGKILL');
    const result = await child;
    expect(result.signal).toBe('SIGKILL');
    return result;
  };
  /** SIGKILL, then what the kernel ends with the build (`what`, while `running()`) must be gone within seconds. */
  const killAndWatch = async (child: ResultPromise, what: string, running: () => Promise<boolean>) => {
    await kill9(child);
    await until(`${what} to die with its build`, async () => !(await running()), 5000);
    return leftoversUnder(tmp);
  };
  /** A quick build after the killed one: it must succeed and report what it released. */
  const secondBuild = async (name: string) => {
    const recipe = await writeRecipe(work, `${name}-next`, [{ file: { path: '/etc/next', content: 'ok\n' } }]);
    const result = await runCli(['apply', recipe, '--disk-image', input, '--output', join(work, `${name}-next.qcow2`), '--no-cache', '--sparsify', 'none'], { env: env() });
    expect(result.all).not.toContain('error [');
    expect(result.exitCode).toBe(0);
    return result;
  };
  const loopUnderTmp = async () => (await leftoversUnder(tmp)).loops.length > 0;
  const helperAlive = async () => (await leftoversUnder(tmp)).processes.some((p) => p.includes('qemu-storage-daemon'));

  test('killed while mounting: its qemu-storage-daemon dies with it; the next build releases the mounts and loop device and succeeds', async () => {
    const recipe = await writeRecipe(work, 'mounting', [{ run: 'true' }]);
    const child = startApply(recipe, join(work, 'mounting-out.qcow2'));
    await until('the loop device of the build', loopUnderTmp);
    // By construction: the daemon was our child under --pdeathsig, not a daemon handed to init.
    const left = await killAndWatch(child, 'qemu-storage-daemon', helperAlive);
    expect(left.loops.length).toBe(1);
    expect(left.workDirs.length).toBe(1);
    expect(await readdir(join(runDir, 'builds'))).toEqual([`${left.workDirs[0].replace('imagebuilder-', '')}.json`]);

    const next = await secondBuild('mounting');
    expect(next.stderr).toMatch(new RegExp(`build [0-9a-f]{16} \\(pid ${child.pid}: .*apply .*mounting\\.yaml.*\\) is gone; releasing what it left: .*${left.loops[0]}.*its work directory`));
    expect(await leftoversUnder(tmp)).toEqual(NOTHING_LEFT);
    expect(await readdir(join(runDir, 'builds'))).toEqual([]);
    expect((await readdir(work)).filter((name) => name.startsWith('mounting-out'))).toEqual([]);
  });

  test('killed during a step: the step dies with it; doctor reports the dead build, cleanup releases it (and its unfinished step-cache layer)', async () => {
    const recipe = await writeRecipe(work, 'step', [{ name: 'long sleep', run: `echo sleeping\n${LONG_SLEEP}` }]);
    // With the step cache (private to this test, which test/setup-env.ts turns off): the layer being written lies
    // outside the work directory.
    const child = startApply(recipe, join(work, 'step-out.qcow2'), ['--sparsify', 'none'], { IMAGEBUILDER_NO_CACHE: '' });
    await outputSeen(child, 'sleeping');
    await until('the step to be running', sleepAlive);
    // By construction: the step's PID namespace went with the build (setpriv --pdeathsig on its unshare).
    const left = await killAndWatch(child, 'the step', sleepAlive);
    expect(left.mounts.length).toBeGreaterThan(0);
    expect(left.loops.length).toBe(1);
    const layers = async () => (await readdir(join(cache, 'layers')).catch(() => [] as string[])).filter((name) => name.endsWith('.qcow2'));
    expect((await layers()).length).toBe(1);
    // The guest-command sandbox's network namespace (a bind mount in its state directory, with its pasta) is named
    // after the build's pid.
    const sandboxLeft = async () => (await readFile('/proc/self/mounts', 'utf8')).split('\n').filter((line) => line.includes(`/imagebuilder-sandbox-${child.pid}-`));
    const pastaLeft = async () => (await execa('pgrep', ['-f', `pasta .*imagebuilder-sandbox-${child.pid}-`], { reject: false })).stdout;
    expect((await sandboxLeft()).length).toBe(1);

    const doctor = await runCli(['doctor', '--json'], { env: env() });
    const check = (JSON.parse(doctor.stdout) as { checks: { id: string; status: string; found: string }[] }).checks.find((c) => c.id === 'dead-builds');
    expect(check).toMatchObject({ status: 'degraded' });
    expect(check!.found).toContain(join(tmp, left.workDirs[0]));
    // doctor only looks.
    expect(await leftoversUnder(tmp)).toEqual(left);

    const dry = await runCli(['cleanup', '--dry-run', '--json'], { env: env() });
    expect(dry.exitCode).toBe(0);
    expect(JSON.parse(dry.stdout)).toMatchObject({ dryRun: true, dead: [{ pid: child.pid, workDir: join(tmp, left.workDirs[0]), leftovers: { loops: left.loops, workDir: true } }], live: [] });
    expect(await leftoversUnder(tmp)).toEqual(left);

    // Another user plants names like the sandbox's for this dead pid in the shared temp directory: a symlink to
    // a directory of theirs, and a directory of their own whose netns is a link to a file. Not ours: left alone.
    const canary = await mkdtemp('/var/tmp/ib-reap-canary-');
    await writeFile(join(canary, 'keep'), 'precious\n');
    const plantedLink = join(tmpdir(), `imagebuilder-sandbox-${child.pid}-planted`);
    const plantedDir = join(tmpdir(), `imagebuilder-sandbox-${child.pid}-theirs`);
    await symlink(canary, plantedLink);
    await mkdir(plantedDir);
    await symlink(join(canary, 'keep'), join(plantedDir, 'netns'));
    await execa('chown', ['-h', '65534:65534', plantedLink, plantedDir, join(plantedDir, 'netns')]);

    const cleanup = await runCli(['cleanup', '--json'], { env: env() });
    expect(cleanup.stderr).toBe('');
    expect(await readFile(join(canary, 'keep'), 'utf8')).toBe('precious\n');
    expect(await readlink(plantedLink)).toBe(canary);
    expect(await readlink(join(plantedDir, 'netns'))).toBe(join(canary, 'keep'));
    await rm(plantedLink);
    await rm(plantedDir, { recursive: true });
    await rm(canary, { recursive: true });
    expect(cleanup.exitCode).toBe(0);
    const report = JSON.parse(cleanup.stdout) as { dead: { pid: number; leftovers: { mounts: string[] }; failures: string[] }[] };
    expect(report.dead).toMatchObject([{ pid: child.pid, failures: [] }]);
    expect(report.dead[0].leftovers.mounts.sort()).toEqual([...left.mounts].sort());
    expect(await leftoversUnder(tmp)).toEqual(NOTHING_LEFT);
    expect(await layers()).toEqual([]);
    expect(await sandboxLeft()).toEqual([]);
    expect(await pastaLeft()).toBe('');
    expect(await readdir(join(runDir, 'builds'))).toEqual([]);
    // Nothing left to do the second time.
    expect((await runCli(['cleanup'], { env: env() })).stdout).toContain('no dead builds');
    await secondBuild('step');
    expect(await leftoversUnder(tmp)).toEqual(NOTHING_LEFT);
  });

  test('killed in a mount namespace of its own (a container, unshare -m): its loop device, whose export died with the namespace, is released too', async () => {
    const recipe = await writeRecipe(work, 'namespace', [{ name: 'long sleep', run: `echo sleeping\n${LONG_SLEEP}` }]);
    const before = await loopsNamingRoot();
    const child = startInNamespace(recipe, join(work, 'namespace-out.qcow2'));
    await outputSeen(child, 'sleeping');
    await kill9(child);
    await until('the step to die with its build', async () => !(await sleepAlive()), 5000);
    // The namespace, its mounts and the export are gone; the kernel's loop device is not, and names its file as "/".
    const orphans = await until('the loop device to outlive its namespace', async () => {
      const now = (await loopsNamingRoot()).filter((name) => !before.includes(name));
      return now.length ? now : undefined;
    }, 10000);
    expect(orphans).toHaveLength(1);
    const cleanup = await runCli(['cleanup', '--json'], { env: env() });
    expect(cleanup.exitCode).toBe(0);
    const report = JSON.parse(cleanup.stdout) as { dead: { pid: number; leftovers: { loops: string[] }; failures: string[] }[] };
    expect(report.dead).toMatchObject([{ pid: child.pid, leftovers: { loops: orphans }, failures: [] }]);
    expect(await loopsNamingRoot()).toEqual(before);
    expect(await leftoversUnder(tmp)).toEqual(NOTHING_LEFT);
  });

  test('killed in a mount namespace of its own whose last process is its export daemon: that daemon is stuck exiting; cleanup aborts its FUSE connection and releases the rest', async () => {
    const recipe = await writeRecipe(work, 'last-daemon', [{ name: 'long sleep', run: `echo sleeping\n${LONG_SLEEP}` }]);
    const before = await loopsNamingRoot();
    // The host's FUSE control filesystem, mounted as systemd mounts it at boot (a fresh VM here has none until a
    // cleanup mounts one): its abort files' inodes last only while some mount of it does, and the build notes one.
    if ((await execa('mountpoint', ['-q', FUSE_CONTROL], { reject: false })).exitCode !== 0) await execa('mount', ['-t', 'fusectl', 'fusectl', FUSE_CONTROL]);
    const child = startInNamespace(recipe, join(work, 'last-daemon-out.qcow2'));
    await outputSeen(child, 'sleeping');
    // The build noted its export: the connection and the daemon serving it.
    const { workDirs } = await leftoversUnder(tmp);
    expect(workDirs).toHaveLength(1);
    const record = JSON.parse(await readFile(join(tmp, workDirs[0], 'build.json'), 'utf8')) as BuildRecord;
    const exported = record.holdings.find((h) => h.kind === 'fuse-export');
    if (exported?.kind !== 'fuse-export') throw new Error(`the build noted no export: ${JSON.stringify(record.holdings)}`);
    const { connection, server } = exported;
    // Noted with its abort file's inode, so that a later connection given the same number is never taken for it.
    expect(exported.abortInode).toBeGreaterThan(0);
    expect((await readFile(`/proc/${server.pid}/cmdline`, 'utf8')).split('\0')[0]).toMatch(/qemu-storage-daemon$/);

    // The kill, ordered so that the daemon is the namespace's last process. A container's processes die in any
    // order; a build's daemon dies with the build's main thread (--pdeathsig), usually before the build's other
    // threads let go of the namespace. Here the daemon is frozen (the v1 freezer holds even SIGKILL back), the
    // build killed and reaped, and the daemon thawed into its death.
    const freezer = `/sys/fs/cgroup/freezer/ib-kill-test-${process.pid}`;
    if (!existsSync('/sys/fs/cgroup/freezer')) throw new Error('this test needs the cgroup v1 freezer mounted at /sys/fs/cgroup/freezer (it holds the daemon back from its death)');
    await mkdir(freezer);
    try {
      await writeFile(join(freezer, 'cgroup.procs'), String(server.pid));
      await writeFile(join(freezer, 'freezer.state'), 'FROZEN');
      await until('the daemon to be frozen', async () => (await readFile(join(freezer, 'freezer.state'), 'utf8')).trim() === 'FROZEN', 10000);
      await kill9(child);
      // The step's sandbox (its own copy of the namespace) dies with the build too, a moment later.
      await until('the step to die with its build', async () => !(await sleepAlive()), 5000);
      await writeFile(join(freezer, 'freezer.state'), 'THAWED');
      // The kernel's deadlock, reproduced: the daemon's exit is unmounting the guest through its own export.
      await until('the daemon to be stuck exiting', async () => stillExiting(server), 10000);
      await new Promise((resolve) => setTimeout(resolve, 2000));
      expect(stillExiting(server)).toBe(true);
      const orphans = (await loopsNamingRoot()).filter((name) => !before.includes(name));
      expect(orphans).toHaveLength(1);

      // Before the fix, cleanup hung in partx on the loop device: given 90 s here, then released below. Run as in a
      // container, whose /sys has no FUSE control filesystem: it mounts it for the abort.
      const cleanup = await execa('unshare', ['--mount', '--propagation', 'private', 'sh', '-c', `umount ${FUSE_CONTROL} && exec node "$0" cleanup --json`, CLI], { env: env(), reject: false, timeout: 90000 });
      expect(cleanup.timedOut).toBe(false);
      if (cleanup.exitCode !== 0) throw new Error(`cleanup exited with ${cleanup.exitCode}: ${String(cleanup.stderr)}`);
      const report = JSON.parse(String(cleanup.stdout)) as { dead: { pid: number; leftovers: { loops: string[]; stuckExports: number[] }; failures: string[] }[] };
      expect(report.dead).toMatchObject([{ pid: child.pid, leftovers: { loops: orphans, stuckExports: [connection] }, failures: [] }]);
      expect(stillExiting(server)).toBe(false);
      expect(await loopsNamingRoot()).toEqual(before);
      expect(await leftoversUnder(tmp)).toEqual(NOTHING_LEFT);
    } finally {
      // Never leave this machine wedged, nor the daemon frozen: a cleanup that hung (or failed) is released here.
      await writeFile(join(freezer, 'freezer.state'), 'THAWED').catch(() => undefined);
      if (stillExiting(server)) await abortFuseConnection(FUSE_CONTROL, exported, () => true).catch(() => undefined);
      else if (processStartTime(server.pid) === server.startTime) process.kill(server.pid, 'SIGKILL');
      await until('the freezer cgroup to be removed', async () => rmdir(freezer).then(() => true, () => false), 30000, 200).catch((error: unknown) => console.error(error));
    }
  });

  test('killed while writing the output: the converter and the partial output go at the next build', async () => {
    const recipe = await writeRecipe(work, 'writing', [{ file: { path: '/etc/writing', content: 'x\n' } }]);
    const output = join(work, 'writing-out.qcow2');
    // A compressed qcow2 takes seconds to write: a real moment, seen when the partial output appears.
    const child = startApply(recipe, output, ['--no-cache', '--sparsify', 'none', '--compress']);
    // Written in a staging directory of the build's own beside the output, until it takes its name.
    const partial = await until('the partial output', async () => {
      for (const name of (await readdir(work)).filter((entry) => entry.startsWith('.imagebuilder-'))) {
        if ((await readdir(join(work, name)).catch(() => [] as string[])).includes('writing-out.qcow2')) return name;
      }
      return undefined;
    });
    await kill9(child);
    const left = await leftoversUnder(tmp);
    expect(left.processes.some((p) => p.includes('qemu-img convert'))).toBe(true);
    expect(left.workDirs.length).toBe(1);
    expect(await readdir(work)).toContain(partial);

    const next = await secondBuild('writing');
    expect(next.stderr).toContain(join(work, partial));
    expect(await leftoversUnder(tmp)).toEqual(NOTHING_LEFT);
    expect((await readdir(work)).filter((name) => name.startsWith('.imagebuilder-') || name.startsWith('writing-out'))).toEqual([]);
  });

  test('killed while mounted through guestmount: guestmount and its appliance die with it; cleanup releases the rest', async () => {
    const recipe = await writeRecipe(work, 'guestmount', [{ name: 'long sleep', run: `echo sleeping\n${LONG_SLEEP}` }]);
    const child = startApply(recipe, join(work, 'guestmount-out.qcow2'), ['--no-cache', '--sparsify', 'none', '--mount-backend', 'guestmount']);
    await outputSeen(child, 'sleeping');
    const appliance = async () => (await leftoversUnder(tmp)).processes.some((p) => /guestmount|qemu-system/.test(p));
    expect(await appliance()).toBe(true);
    // By construction: guestmount --no-fork is our child under --pdeathsig; libguestfs's recovery process ends qemu.
    const left = await killAndWatch(child, 'guestmount and its appliance', async () => (await appliance()) || (await sleepAlive()));
    expect(left.mounts.length).toBeGreaterThan(0);

    const cleanup = await runCli(['cleanup'], { env: env() });
    expect(cleanup.exitCode).toBe(0);
    expect(cleanup.stdout).toContain(`(pid ${child.pid}: `);
    expect(await leftoversUnder(tmp)).toEqual(NOTHING_LEFT);
  });

  test.each(['SIGHUP', 'SIGQUIT'] as const)('%s during a step stops the build like SIGINT: exit code 130, everything released', async (signal) => {
    const recipe = await writeRecipe(work, `signal-${signal.toLowerCase()}`, [{ name: 'long sleep', run: `echo sleeping\n${LONG_SLEEP}` }]);
    const child = startApply(recipe, join(work, `${signal}-out.qcow2`));
    await outputSeen(child, 'sleeping');
    child.kill(signal);
    const result = await child;
    expect(result.exitCode).toBe(130);
    expect(String(result.all)).toContain(`${signal} received`);
    expect(String(result.all)).toContain('error [INTERRUPTED]');
    expect(await sleepAlive()).toBe(false);
    expect((await readdir(work)).filter((name) => name.includes(`${signal}-out`))).toEqual([]);
    expect(await leftoversUnder(tmp)).toEqual(NOTHING_LEFT);
    expect(await readdir(join(runDir, 'builds'))).toEqual([]);
  });

  test('a cleanup while a build runs leaves it alone (and takes a dead record whose pid was reused)', async () => {
    const shortSleep = `sleep 6.${process.pid}`;
    const recipe = await writeRecipe(work, 'live', [{ name: 'short sleep', run: `echo sleeping\n${shortSleep}` }]);
    const output = join(work, 'live-out.qcow2');
    const child = startApply(recipe, output);
    await outputSeen(child, 'sleeping');
    await until('the step to be running', async () => (await execa('pgrep', ['-f', shortSleep], { reject: false })).stdout !== '');
    const during = await leftoversUnder(tmp);
    expect(during.mounts.length).toBeGreaterThan(0);
    // A record of a build long gone whose pid is now this live build's: the start time tells them apart.
    const stale = join(tmp, 'imagebuilder-00000000000000aa');
    await mkdir(stale);
    await writeFile(join(stale, 'build.json'), JSON.stringify({ id: '00000000000000aa', workDir: stale, pid: child.pid, startTime: 1, command: 'gone', createdAt: '2026-01-01T00:00:00Z', keep: false, holdings: [] }));

    const cleanup = await runCli(['cleanup', '--json'], { env: env() });
    expect(cleanup.exitCode).toBe(0);
    const report = JSON.parse(cleanup.stdout) as { dead: { workDir: string }[]; live: { pid: number; workDir: string }[] };
    expect(report.live).toMatchObject([{ pid: child.pid, workDir: join(tmp, during.workDirs[0]) }]);
    expect(report.dead.map((b) => b.workDir)).toEqual([stale]);
    expect(await leftoversUnder(tmp)).toEqual(during);

    const result = await child;
    expect(result.all).not.toContain('error [');
    expect(result.exitCode).toBe(0);
    expect(await readdir(work)).toContain('live-out.qcow2');
    expect(await leftoversUnder(tmp)).toEqual(NOTHING_LEFT);
  });
});
