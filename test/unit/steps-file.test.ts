import { createHash } from 'node:crypto';
import { mkdtemp, rm, truncate, writeFile, mkdir } from 'node:fs/promises';
import { execa } from 'execa';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileStep } from '../../src/steps/file.js';
import { parseRecipe } from '../../src/recipe/load.js';
import { withSourceDateEpoch } from '../helpers/env.js';
import { fakeSession, fakeStepContext } from '../helpers/fake-session.js';

const WRITE = 'set -e; dir=${1%/*}; [ -z "$dir" ] || [ -d "$dir" ] || mkdir -p -- "$dir"; tmp="$1.imagebuilder-new"; cat > "$tmp"; chown -- "$2:$3" "$tmp"; chmod -- "$4" "$tmp"; [ -z "$5" ] || touch -m -d "$5" -- "$tmp"; mv -f -- "$tmp" "$1"';

describe('file step', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'file-step-'));
    await mkdir(join(dir, 'files'));
    await writeFile(join(dir, 'files/kubelet.env'), 'KUBELET_EXTRA_ARGS=--node-labels=tier={{ tier }}\nVERSION={{ version | major_minor }}\n');
    await writeFile(join(dir, 'files/blob.bin'), Buffer.from([0, 1, 2, 255]));
    await writeFile(join(dir, 'files/bad.tmpl'), 'ok\nX={{ nope }}\n');
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  test('inline content: the guest writes it atomically with mode and owners, and the BOM records its sha256', async () => {
    const { session, calls } = fakeSession();
    const { context, records } = fakeStepContext(session);
    await fileStep.run(context, { path: '/etc/x.conf', content: 'a=1\n', mode: '0640', owner: 'root', group: 'adm' });
    expect(calls).toEqual([{ argv: ['/bin/sh', '-c', WRITE, 'write-file', '/etc/x.conf', 'root', 'adm', '0640'], input: 'a=1\n', env: undefined }]);
    expect(records.files).toEqual([{ path: '/etc/x.conf', sha256: createHash('sha256').update('a=1\n').digest('hex'), kind: 'config' }]);
  });

  test('with SOURCE_DATE_EPOCH in the past, the written file is dated at it (clamped); unset or in the future, not touched', async () => {
    const argv = (epoch: string | undefined) =>
      withSourceDateEpoch(epoch, async () => {
        const { session, calls } = fakeSession();
        await fileStep.run(fakeStepContext(session).context, { path: '/etc/x.conf', content: 'a=1\n' });
        return calls[0].argv;
      });
    expect(await argv('1700000000')).toEqual(['/bin/sh', '-c', WRITE, 'write-file', '/etc/x.conf', 'root', 'root', '0644', '@1700000000']);
    expect(await argv(undefined)).toEqual(['/bin/sh', '-c', WRITE, 'write-file', '/etc/x.conf', 'root', 'root', '0644']);
    expect(await argv(String(Math.floor(Date.now() / 1000) + 3600))).toHaveLength(8);
    await expect(argv('yesterday')).rejects.toMatchObject({ code: 'BAD_INPUT', message: expect.stringContaining('SOURCE_DATE_EPOCH="yesterday"') });
  });

  test('a template is filled with the recipe variables, relative to the recipe; a source is copied byte for byte', async () => {
    const { session, calls } = fakeSession();
    const { context, records } = fakeStepContext(session, { recipeDir: dir, variables: { tier: 'worker', version: '1.30.2' } });
    await fileStep.run(context, { path: '/etc/default/kubelet', template: 'files/kubelet.env' });
    await fileStep.run(context, { path: '/opt/blob.bin', source: 'files/blob.bin', mode: '0600' });
    expect(calls[0].input).toBe('KUBELET_EXTRA_ARGS=--node-labels=tier=worker\nVERSION=1.30\n');
    expect(calls[1].input).toBe(Buffer.from([0, 1, 2, 255]).toString('latin1'));
    expect(calls[1].argv.slice(-4)).toEqual(['/opt/blob.bin', 'root', 'root', '0600']);
    expect(records.files.map((f) => [f.path, f.kind, f.source])).toEqual([
      ['/etc/default/kubelet', 'config', join(dir, 'files/kubelet.env')],
      ['/opt/blob.bin', 'copy', join(dir, 'files/blob.bin')],
    ]);
  });

  test('validate finds an undefined template variable (file:line) and a missing source, without an image', async () => {
    const path = join(dir, 'recipe.yaml');
    const problems = (steps: string) => parseRecipe(`name: f\nvariables:\n  tier: x\nsteps:\n${steps}`, path).problems.map((p) => `${p.location}: ${p.message}`);
    expect(problems('  - file: {path: /a, template: files/bad.tmpl}\n')).toEqual([
      `${path}:5:5: ${join(dir, 'files/bad.tmpl')}:2: undefined variable "nope": define it under \`variables:\` or pass --set nope=VALUE`,
    ]);
    expect(problems('  - file: {path: /a, source: files/none}\n')[0]).toBe(`${path}:5:5: cannot read source ${join(dir, 'files/none')}: ENOENT; host paths are relative to the recipe`);
    expect(problems('  - file: {path: /a, content: x, source: files/blob.bin}\n')).not.toEqual([]);
    // A FIFO in the recipe's directory (from a recipe repository or tarball): refused at once, never opened; a
    // synchronous open of it blocked the whole process, validate included, with no signal handled.
    await execa('mkfifo', [join(dir, 'files/fifo')]);
    await execa('mknod', [join(dir, 'files/zero'), 'c', '1', '5']);
    const started = Date.now();
    expect(problems('  - file: {path: /a, source: files/fifo}\n')).toEqual([`${path}:5:5: source ${join(dir, 'files/fifo')} is not a regular file (a directory, FIFO, socket or device): name a file`]);
    expect(problems('  - file: {path: /a, template: files/zero}\n')).toEqual([`${path}:5:5: template ${join(dir, 'files/zero')} is not a regular file (a directory, FIFO, socket or device): name a file`]);
    expect(problems('  - file: {path: /a, source: files}\n')).toEqual([`${path}:5:5: source ${join(dir, 'files')} is not a regular file (a directory, FIFO, socket or device): name a file`]);
    expect(Date.now() - started).toBeLessThan(5000);
    // Read into memory (three times): past 64 MiB, a copy step is the way.
    await writeFile(join(dir, 'files/huge.bin'), '');
    await truncate(join(dir, 'files/huge.bin'), 64 * 2 ** 20 + 1);
    expect(problems('  - file: {path: /a, source: files/huge.bin}\n')).toEqual([`${path}:5:5: source ${join(dir, 'files/huge.bin')} is larger than a file step takes (64 MiB, read into memory): use a copy step for it`]);
    expect(problems('  - file: {path: /a}\n')).not.toEqual([]);
  });
});

describe('host files that run and copy steps name are checked by validate', () => {
  test('a missing script file or copy source is a located problem; a directory copy with mode is refused', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'checks-'));
    await mkdir(join(dir, 'tree'));
    const path = join(dir, 'r.yaml');
    const problems = (steps: string) => parseRecipe(`name: c\nsteps:\n${steps}`, path).problems.map((p) => `${p.location}: ${p.message}`);
    expect(problems('  - run: {file: scripts/setup.sh}\n')).toEqual([`${path}:3:5: cannot read script file ${join(dir, 'scripts/setup.sh')}; host paths are relative to the recipe`]);
    expect(problems('  - copy: {src: nope, dest: /opt}\n')).toEqual([`${path}:3:5: cannot copy ${join(dir, 'nope')}: no such file or directory; host paths are relative to the recipe`]);
    expect(problems('  - copy: {src: tree, dest: /opt, mode: "0600"}\n')).toEqual([`${path}:3:5: mode applies to a single file, and ${join(dir, 'tree')} is a directory`]);
    expect(problems('  - copy: {src: tree, dest: /opt}\n')).toEqual([]);
    await rm(dir, { recursive: true });
  });
});
