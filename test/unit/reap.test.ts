import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { spawn } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { reapDeadBuilds } from '../../src/host/reap.js';
import { currentOwner, noteHolding, ownerAlive, processStartTime, registerBuild, writeRecord, type BuildRecord } from '../../src/util/build-record.js';
import { recordingRunner } from '../../src/util/exec.js';
import { createLogger } from '../../src/util/log.js';
import { stillExiting } from '../../src/util/processes.js';
import { withInterrupts } from '../../src/util/signals.js';

const log = createLogger({ write: () => undefined });

describe('signals that stop a build', () => {
  test.each(['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGQUIT'] as const)('%s aborts the build with INTERRUPTED', async (name) => {
    const stopped = withInterrupts(log, (signal) => new Promise((_, reject) => signal.addEventListener('abort', () => reject(new Error('cancelled')))));
    process.emit(name, name);
    await expect(stopped).rejects.toMatchObject({ code: 'INTERRUPTED', message: `interrupted by ${name}` });
    expect(process.listenerCount(name)).toBe(0);
  });

  test('an interactive shell leaves SIGINT and SIGQUIT to the shell (ignored, not fatal) and stops on SIGHUP', async () => {
    let aborted = false;
    let handled: number[] = [];
    const body = withInterrupts(
      log,
      async (signal) => {
        // Handled (by ignoring): a real Ctrl-\ on the terminal must not kill us with its default action either.
        handled = [process.listenerCount('SIGINT'), process.listenerCount('SIGQUIT')];
        process.emit('SIGINT', 'SIGINT');
        process.emit('SIGQUIT', 'SIGQUIT');
        aborted = signal.aborted;
        process.emit('SIGHUP', 'SIGHUP');
        throw new Error('the shell was ended');
      },
      ['SIGTERM', 'SIGHUP'],
    );
    await expect(body).rejects.toMatchObject({ code: 'INTERRUPTED', message: 'interrupted by SIGHUP' });
    expect(aborted).toBe(false);
    expect(handled).toEqual([1, 1]);
    for (const name of ['SIGINT', 'SIGQUIT', 'SIGHUP', 'SIGTERM'] as const) expect(process.listenerCount(name)).toBe(0);
  });
});

describe('build records and the reaper', () => {
  let dir: string;
  // The registry of this test's own: the library is passed it, as the CLI passes IMAGEBUILDER_RUN_DIR.
  let runDir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'reap-unit-'));
    runDir = join(dir, 'run');
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('a build is alive only while the same process runs: a reused pid has another start time', () => {
    const me = currentOwner();
    expect(me.startTime).toBe(processStartTime(process.pid));
    expect(ownerAlive(me)).toBe(true);
    expect(ownerAlive({ pid: process.pid, startTime: me.startTime + 1 })).toBe(false);
    expect(ownerAlive({ pid: 2 ** 22 + 1, startTime: me.startTime })).toBe(false);
    // A pid of another PID namespace means nothing here: never judged dead.
    expect(ownerAlive({ pid: 2 ** 22 + 1, startTime: me.startTime, pidNamespace: 'pid:[1]' })).toBe(true);
    expect(ownerAlive({ pid: 2 ** 22 + 1, startTime: me.startTime, pidNamespace: me.pidNamespace })).toBe(false);
  });

  const record = (workDir: string, id: string, owner = { pid: 2 ** 22 + 1, startTime: 5 }): BuildRecord => ({
    id, workDir, ...owner, command: `apply ${id}`, createdAt: '2026-12-04T00:00:00Z', keep: false, holdings: [],
  });

  test('holdings noted at once are all kept; a work directory without a record notes nothing', async () => {
    const workDir = join(dir, 'imagebuilder-0000000000000001');
    await mkdir(workDir);
    await writeRecord(record(workDir, '0000000000000001'));
    await Promise.all(['a', 'b', 'c'].map((name) => noteHolding(workDir, { kind: 'file', path: join(dir, name) })));
    const written = JSON.parse(await readFile(join(workDir, 'build.json'), 'utf8')) as BuildRecord;
    expect(written.holdings.map((h) => (h.kind === 'file' ? h.path : '')).sort()).toEqual(['a', 'b', 'c'].map((name) => join(dir, name)));
    await noteHolding(join(dir, 'elsewhere'), { kind: 'file', path: '/x' });
    expect(await readdir(dir)).toEqual(['imagebuilder-0000000000000001']);
  });

  test('a dead build is released (work directory, partial output, registration); a live one, registered or found by its directory, is not', async () => {
    const parent = join(dir, 'work');
    await mkdir(parent);
    const dead = join(parent, 'imagebuilder-00000000000000de');
    const live = join(parent, 'imagebuilder-00000000000000a1');
    const unregistered = join(parent, 'imagebuilder-00000000000000b0');
    const partial = join(dir, '.out.qcow2.partial-1');
    for (const workDir of [dead, live, unregistered]) await mkdir(workDir);
    await writeFile(partial, 'half');
    await writeRecord({ ...record(dead, '00000000000000de'), holdings: [{ kind: 'file', path: partial }] });
    await registerBuild({ id: '00000000000000de', workDir: dead, pid: 2 ** 22 + 1, startTime: 5 }, runDir);
    await writeRecord(record(live, '00000000000000a1', currentOwner()));
    await registerBuild({ id: '00000000000000a1', workDir: live, ...currentOwner() }, runDir);
    // Registry lost (a reboot emptied /run): found by its record alone.
    await writeRecord(record(unregistered, '00000000000000b0'));
    const run = recordingRunner();

    const dry = await reapDeadBuilds({ run, log, workDirParents: [parent], runDir, dryRun: true });
    expect(dry.dead.map((b) => [b.workDir, b.leftovers.files, b.leftovers.workDir])).toEqual([[dead, [partial], true], [unregistered, [], true]]);
    expect(dry.live.map((b) => b.workDir)).toEqual([live]);
    expect((await readdir(parent)).sort()).toEqual([live, dead, unregistered].map((d) => d.slice(parent.length + 1)).sort());

    const report = await reapDeadBuilds({ run, log, workDirParents: [parent], runDir });
    expect(report.dead.map((b) => [b.workDir, b.failures])).toEqual([[dead, []], [unregistered, []]]);
    expect(await readdir(parent)).toEqual(['imagebuilder-00000000000000a1']);
    expect(await readdir(dir)).not.toContain('.out.qcow2.partial-1');
    expect(await readdir(join(dir, 'run', 'builds'))).toEqual(['00000000000000a1.json']);
    // Nothing on this host named those directories: no command was needed.
    expect(run.calls).toEqual([]);
    expect((await reapDeadBuilds({ run, log, workDirParents: [parent], runDir })).dead).toEqual([]);
  });

  test('a record planted by another user in a shared work directory parent is not trusted', async () => {
    const parent = join(dir, 'shared');
    await mkdir(parent, { mode: 0o1777 });
    const planted = join(parent, 'imagebuilder-00000000000000f1');
    const victim = join(dir, 'victim');
    await writeFile(victim, 'precious\n');
    await mkdir(planted);
    await writeRecord({ ...record(planted, '00000000000000f1'), holdings: [{ kind: 'file', path: victim }] });
    await execa('chown', ['-R', '65534:65534', planted]);
    const report = await reapDeadBuilds({ run: recordingRunner(), log, workDirParents: [parent], runDir });
    expect(report.dead).toEqual([]);
    expect(await readFile(victim, 'utf8')).toBe('precious\n');
    // The same directory made by us is taken.
    await execa('chown', ['-R', '0:0', planted]);
    expect((await reapDeadBuilds({ run: recordingRunner(), log, workDirParents: [parent], runDir })).dead.map((b) => b.workDir)).toEqual([planted]);
  });

  test('at a name a dead build noted, a directory of another user (or one others may write) is left whole; its own staging directory is removed', async () => {
    const parent = join(dir, 'noted');
    await mkdir(parent);
    const shared = join(dir, 'shared-out');
    await mkdir(shared, { mode: 0o1777 });
    // A dead build noted a partial it never made; another user then put a tree of their own at that name.
    const planted = join(shared, '.out.qcow2.partial-7');
    await mkdir(join(planted, 'deep', 'deeper'), { recursive: true });
    await writeFile(join(planted, 'deep', 'theirs'), 'theirs\n');
    await execa('chown', ['-R', '65534:65534', planted]);
    // Root's, but writable by others: not one a build makes (mkdtemp: 0700).
    const loose = join(shared, '.imagebuilder-7-loose');
    await mkdir(join(loose, 'sub'), { recursive: true });
    await execa('chmod', ['0777', loose]);
    const staging = join(shared, '.imagebuilder-7-abc123');
    await mkdir(join(staging, 'out.qcow2.bundle'), { recursive: true, mode: 0o700 });
    await writeFile(join(staging, 'out.qcow2'), 'half');
    const link = join(shared, '.link-7');
    await execa('ln', ['-s', planted, link]);
    const dead = join(parent, 'imagebuilder-00000000000000d7');
    await mkdir(dead);
    await writeRecord({ ...record(dead, '00000000000000d7'), holdings: [planted, loose, staging, link].map((path) => ({ kind: 'file' as const, path })) });
    const report = await reapDeadBuilds({ run: recordingRunner(), log, workDirParents: [parent], runDir });
    expect(report.dead.map((b) => b.failures)).toEqual([[
      `file ${planted}: ${planted} is a directory of uid 65534, mode 755: not one this build made, so not removed`,
      `file ${loose}: ${loose} is a directory of uid 0, mode 777: not one this build made, so not removed`,
    ]]);
    expect(await readFile(join(planted, 'deep', 'theirs'), 'utf8')).toBe('theirs\n');
    expect((await readdir(shared)).sort()).toEqual(['.imagebuilder-7-loose', '.out.qcow2.partial-7']);
  });

  test("an export's FUSE connection counts as stuck only while its daemon is part-way through exiting", async () => {
    const me = currentOwner();
    expect(stillExiting(me)).toBe(false); // running
    expect(stillExiting({ pid: process.pid, startTime: me.startTime + 1 })).toBe(false); // a reused pid
    expect(stillExiting({ pid: 2 ** 22 + 1, startTime: me.startTime })).toBe(false); // gone
    // A dead build's exports whose daemons (here: a live process, a gone one) are not exiting: nothing is aborted,
    // though both connections are there (a control directory of the test's own).
    const daemon = spawn('sleep', ['30'], { stdio: 'ignore' });
    try {
      await new Promise((resolve) => daemon.once('spawn', resolve));
      const server = { pid: daemon.pid!, startTime: processStartTime(daemon.pid!)! };
      const control = join(dir, 'fusectl');
      for (const connection of ['4000', '4001']) {
        await mkdir(join(control, connection), { recursive: true });
        await writeFile(join(control, connection, 'abort'), '');
      }
      const workDir = join(dir, 'imagebuilder-00000000000000e1');
      await mkdir(workDir);
      await writeRecord({ ...record(workDir, '00000000000000e1'), holdings: [{ kind: 'fuse-export', connection: 4000, server }, { kind: 'fuse-export', connection: 4001, server: { pid: 2 ** 22 + 1, startTime: 1 } }] });
      await registerBuild({ id: '00000000000000e1', workDir, pid: 2 ** 22 + 1, startTime: 5 }, runDir);
      const report = await reapDeadBuilds({ run: recordingRunner(), log, runDir, fuseControl: control });
      expect(report.dead.map((b) => [b.workDir, b.leftovers.stuckExports, b.failures])).toEqual([[workDir, [], []]]);
      for (const connection of ['4000', '4001']) expect(await readFile(join(control, connection, 'abort'), 'utf8')).toBe('');
    } finally {
      daemon.kill('SIGKILL');
    }
  });
});
