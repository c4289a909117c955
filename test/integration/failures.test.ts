import { mkdtemp, readdir, rm, writeFile, copyFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { execa } from 'execa';
import { fixtureImage } from '../helpers/fixtures.js';
import { CLI, expectNothingLeft, hostState, runCli, sha256 } from '../helpers/host.js';
import { writeRecipe } from '../helpers/recipes.js';

/** Every failure gives its clear error and exit code, and leaves no output, mount, device or process behind. */

/** The step that is interrupted: its duration is this run's own, so pgrep finds no other process's sleep. */
const LONG_SLEEP = `sleep 300.${process.pid}`;
describe('imagebuilder apply failures', () => {
  let work: string;
  let tmp: string;
  let input: string;
  beforeAll(async () => {
    work = await mkdtemp('/var/tmp/ib-fail-');
    // A private temp dir shows that the work directory is removed, whatever happens.
    tmp = await mkdtemp('/var/tmp/ib-fail-tmp-');
    input = await fixtureImage('gpt-esp');
  });
  afterAll(async () => {
    await rm(work, { recursive: true, force: true });
    await rm(tmp, { recursive: true, force: true });
  });

  const env = () => ({ IMAGEBUILDER_WORK_DIR: tmp });
  const outputsIn = async (dir: string) => (await readdir(dir)).filter((name) => name.includes('-out.'));

  test('a failing run step names the step, the command and its output, exit code 4', async () => {
    const recipe = await writeRecipe(work, 'failing', [
      { file: { path: '/etc/first', content: 'x' } },
      { name: 'broken script', run: 'echo about to fail\necho "the reason" >&2\nexit 3' },
    ]);
    const before = await hostState();
    const result = await runCli(['apply', recipe, '--disk-image', input, '--output', join(work, 'failing-out.qcow2'), '--sparsify', 'none'], { env: env() });
    expect(result.exitCode).toBe(4);
    expect(result.stderr).toContain('error [STEP_FAILED]: step 2/2 (broken script) failed');
    expect(result.stderr).toMatch(/`chroot \S+ \/bin\/sh -e -s` exited with 3/);
    expect(result.stderr).toContain('| the reason');
    expect(await outputsIn(work)).toEqual([]);
    expect(await readdir(tmp)).toEqual([]);
    await expectNothingLeft(before);
  });

  test('a run step past its timeout is killed with everything it started, exit code 4', async () => {
    const recipe = await writeRecipe(work, 'timeout', [{ name: 'too slow', run: { script: 'sleep 200 &\nsleep 100', timeout: 2 } }]);
    const before = await hostState();
    const result = await runCli(['apply', recipe, '--disk-image', input, '--output', join(work, 'timeout-out.qcow2'), '--sparsify', 'none'], { env: env() });
    expect(result.exitCode).toBe(4);
    expect(result.stderr).toContain('error [STEP_FAILED]: step 1/1 (too slow) failed');
    expect(result.stderr).toContain("did not finish within 2 s (the step's timeout)");
    expect((await execa('pgrep', ['-f', 'sleep [12]00'], { reject: false })).stdout).toBe('');
    expect(await outputsIn(work)).toEqual([]);
    await expectNothingLeft(before);
  });

  test('a checksum mismatch stops the build before anything is mounted, exit code 3', async () => {
    const dir = await mkdtemp(join(work, 'sums-'));
    const image = join(dir, 'base.qcow2');
    await copyFile(input, image);
    await writeFile(join(dir, 'SHA256SUMS'), `${'0'.repeat(64)}  other.qcow2\n${'a'.repeat(64)} *base.qcow2\n`);
    const recipe = await writeRecipe(work, 'sums', [{ run: 'true' }]);
    const before = await hostState();
    const result = await runCli(['apply', recipe, '--disk-image', image, '--output', join(dir, 'sums-out.qcow2')], { env: env() });
    expect(result.exitCode).toBe(3);
    expect(result.stderr).toContain(`error [VERIFY_FAILED]: checksum mismatch for ${image}`);
    expect(result.stderr).toContain(`expected sha256 ${'a'.repeat(64)} (from ${join(dir, 'SHA256SUMS')})`);
    expect(result.stderr).not.toContain('mount backend');
    expect(await outputsIn(dir)).toEqual([]);
    await expectNothingLeft(before);

    // The right sum in sha256sum.txt lets it through.
    await rm(join(dir, 'SHA256SUMS'));
    await writeFile(join(dir, 'sha256sum.txt'), `${await sha256(image)}  ${basename(image)}\n`);
    const ok = await runCli(['apply', recipe, '--disk-image', image, '--output', join(dir, 'sums-out.qcow2'), '--sparsify', 'none'], { env: env() });
    expect(ok.exitCode).toBe(0);
    expect(ok.stderr).toContain(`verified ${image} (qcow2) against ${join(dir, 'sha256sum.txt')}`);
  });

  test('a work directory whose parent does not exist is refused with what to do, exit code 2, nothing left', async () => {
    const recipe = await writeRecipe(work, 'nowork', [{ run: 'true' }]);
    const missing = join(work, 'no-such-parent');
    const before = await hostState();
    const result = await runCli(['apply', recipe, '--disk-image', input, '--output', join(work, 'nowork-out.qcow2')], { env: { IMAGEBUILDER_WORK_DIR: missing } });
    expect(result.stderr).toContain(`error [BAD_INPUT]: the work directory's parent ${missing} is not a directory (it does not exist)`);
    expect(result.stderr).toContain(`hint: create it first (mkdir -p ${missing})`);
    expect(result.stderr).not.toContain('this is a bug');
    expect(result.exitCode).toBe(2);
    expect(await outputsIn(work)).toEqual([]);
    await expectNothingLeft(before);
  });

  test('a malformed recipe is refused with file:line:column before the image is touched, exit code 2', async () => {
    const recipe = join(work, 'bad.yaml');
    await writeFile(recipe, 'name: bad\nsteps:\n  - packages:\n      instal: [socat]\n');
    const result = await runCli(['apply', recipe, '--disk-image', input], { env: env() });
    expect(result.exitCode).toBe(2);
    expect(result.stderr).toContain(`error [BAD_RECIPE]: ${recipe}:4:7: steps[0].packages: unknown key "instal" (did you mean "install"?)`);
  });

  test('SIGINT in the middle of a step kills it, releases everything, leaves no output, exit code 130', async () => {
    const recipe = await writeRecipe(work, 'slow', [{ name: 'long sleep', run: `echo sleeping\n${LONG_SLEEP}` }]);
    const output = join(work, 'slow-out.qcow2');
    const before = await hostState();
    const child = execa('node', [CLI, 'apply', recipe, '--disk-image', input, '--output', output, '--sparsify', 'none'], { env: env(), reject: false, all: true });
    let seen = '';
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`step never started:\n${seen}`)), 120000);
      child.all!.on('data', (chunk: Buffer) => {
        seen += chunk.toString();
        if (seen.includes('sleeping')) {
          clearTimeout(timer);
          resolve();
        }
      });
    });
    child.kill('SIGINT');
    const result = await child;
    expect(result.exitCode).toBe(130);
    expect(String(result.all)).toContain('SIGINT received');
    expect(String(result.all)).toContain('error [INTERRUPTED]');
    expect((await execa('pgrep', ['-f', LONG_SLEEP], { reject: false })).stdout).toBe('');
    expect(await outputsIn(work)).toEqual([]);
    expect(await readdir(tmp)).toEqual([]);
    await expectNothingLeft(before);
  });
});
