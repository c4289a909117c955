import { mkdir, mkdtemp, readdir, rm, symlink } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { fixtureImage } from '../helpers/fixtures.js';
import { CLI, expectNothingLeft, hostState, runCli } from '../helpers/host.js';
import { writeRecipe } from '../helpers/recipes.js';

/**
 * The documented exit codes, each from its real cause (2, 3, 4 and 130 are in failures.test.ts and
 * fetch.test.ts; 1 in test/unit/cli-flags.test.ts): a missing host tool is 5, a failing host command is 6.
 */
describe('exit codes', () => {
  let work: string;
  let scratch: string;
  beforeAll(async () => {
    work = await mkdtemp('/var/tmp/ib-exit-');
    scratch = await mkdtemp('/var/tmp/ib-exit-scratch-');
  });
  afterAll(async () => {
    await rm(work, { recursive: true, force: true });
    await rm(scratch, { recursive: true, force: true });
  });

  test('--help of the CLI and of each command lists them', async () => {
    for (const args of [['--help'], ['apply', '--help'], ['matrix', '--help']]) {
      const result = await runCli(args);
      expect(result.exitCode).toBe(0);
      expect(result.stdout).toMatch(/EXIT CODES\n {2}0 +success\n {2}1 +internal error[^]*\n {2}5 +the host lacks a tool[^]*\n {2}130 +interrupted/);
    }
  });

  test('a host without qemu-img: MISSING_TOOL naming the package, exit code 5', async () => {
    // A PATH with node and nothing else, as on a host where qemu-utils was never installed.
    const bin = join(work, 'bin');
    await mkdir(bin);
    await symlink(process.execPath, join(bin, 'node'));
    const recipe = await writeRecipe(work, 'tool', [{ run: 'true' }]);
    const result = await execa(process.execPath, [CLI, 'apply', recipe, '--disk-image', await fixtureImage('gpt-esp')], {
      env: { PATH: bin, IMAGEBUILDER_WORK_DIR: scratch },
      extendEnv: false,
      reject: false,
    });
    expect(result.exitCode).toBe(5);
    expect(result.stderr).toContain('error [MISSING_TOOL]');
    expect(result.stderr).toContain('qemu-img is not installed');
    expect(result.stderr).toContain('hint: install the Debian package qemu-utils');
  });

  test('a host command that fails (the output filesystem is full): COMMAND_FAILED, no output, nothing left, exit code 6', async () => {
    const full = join(work, 'full');
    await mkdir(full);
    await execa('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', full]);
    try {
      const recipe = await writeRecipe(work, 'full', [{ file: { path: '/etc/full', content: 'x\n' } }]);
      const before = await hostState();
      const result = await runCli(['apply', recipe, '--disk-image', await fixtureImage('gpt-esp'), '--output', join(full, 'out.qcow2'), '--sparsify', 'none', '--mount-backend', 'fuse'], {
        env: { IMAGEBUILDER_WORK_DIR: scratch },
      });
      expect(result.exitCode).toBe(6);
      expect(result.stderr).toMatch(/error \[COMMAND_FAILED\]: .*`qemu-img convert /);
      expect(await readdir(full)).toEqual([]);
      expect(await readdir(scratch)).toEqual([]);
      await expectNothingLeft(before);
    } finally {
      await execa('umount', [full]);
    }
  });
});
