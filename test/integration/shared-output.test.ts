import { chmod, lstat, mkdir, mkdtemp, readdir, readFile, rm, symlink } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { fixtureImage } from '../helpers/fixtures.js';
import { CANARY_CONTENT, expectHostUntouched, snapshotHost } from '../helpers/hostile.js';
import { leftoversUnder, NOTHING_LEFT, runCli } from '../helpers/host.js';
import { writeRecipe } from '../helpers/recipes.js';

/**
 * Outputs often go to a directory other users may write (/tmp, a shared CI workspace). What another user plants
 * there at a name the build will use (the sums file, the `--test` results directory and its console log) is
 * never written through or published, whatever the kernel's protected_symlinks says (off on these machines);
 * partial outputs are written only inside a directory of the build's own; and a directory every user may write
 * without the sticky bit (where ours could be swapped away) is refused before the build starts.
 */
describe('an output directory other users may write', () => {
  let work: string;
  let tmp: string;
  let input: string;
  let recipe: string;
  beforeAll(async () => {
    work = await mkdtemp('/var/tmp/ib-shared-out-');
    await chmod(work, 0o755); // another user reaches the shared directories in it
    tmp = await mkdtemp('/var/tmp/ib-shared-out-tmp-');
    input = await fixtureImage('whole-disk');
    recipe = await writeRecipe(work, 'shared', [{ file: { path: '/etc/motd', content: 'built into a shared directory\n' } }]);
  });
  afterAll(async () => {
    await rm(work, { recursive: true, force: true });
    await rm(tmp, { recursive: true, force: true });
  });
  const env = () => ({ IMAGEBUILDER_WORK_DIR: tmp });
  const asNobody = (...command: string[]) => execa('setpriv', ['--reuid', '65534', '--regid', '65534', '--clear-groups', ...command]);

  test('sticky (as /tmp): a sums file and a results directory planted by another user are not followed; nothing is left', async () => {
    const host = await snapshotHost();
    const shared = join(work, 'sticky');
    await mkdir(shared);
    await chmod(shared, 0o1777);
    const output = join(shared, 'node.qcow2');
    // Another user's: SHA256SUMS leading to a secret (it would be published, line by line, in the new sums file),
    // and the --test results directory with its console log leading to root's authorized_keys (the guest writes it).
    await asNobody('ln', '-s', host.canaryFile, join(shared, 'SHA256SUMS'));
    await asNobody('mkdir', `${output}.test`);
    await asNobody('ln', '-s', host.canaryFile, join(`${output}.test`, 'console.log'));

    const tested = await runCli(['apply', recipe, '--disk-image', input, '--output', output, '--sparsify', 'none', '--test'], { env: env() });
    expect(tested.exitCode).toBe(5);
    expect(tested.stderr).toContain(`refusing to write test results in ${output}.test: it belongs to uid 65534, not to this user (uid 0)`);
    expect((await readdir(shared)).sort()).toEqual(['SHA256SUMS', 'node.qcow2.test']);

    const built = await runCli(['apply', recipe, '--disk-image', input, '--output', output, '--sparsify', 'none'], { env: env() });
    if (built.exitCode !== 0) throw new Error(built.all);
    expect(built.stderr).toContain(`${join(shared, 'SHA256SUMS')} is not a regular file (a link, FIFO, socket, device or directory): replaced by a new sums file holding this build's outputs only`);
    const sums = await readFile(join(shared, 'SHA256SUMS'), 'utf8');
    expect((await lstat(join(shared, 'SHA256SUMS'))).isFile()).toBe(true);
    expect(sums).not.toContain(CANARY_CONTENT.trim());
    expect(sums.trim().split('\n').map((line) => line.replace(/^[0-9a-f]{64} {2}/, '')).sort()).toEqual(['node.qcow2', 'node.qcow2.bom.json', 'node.qcow2.cdx.json', 'node.qcow2.spdx.json']);
    // The staging directory is gone with the build: only the outputs and what the other user made are there.
    expect((await readdir(shared)).sort()).toEqual(['SHA256SUMS', 'node.qcow2', 'node.qcow2.bom.json', 'node.qcow2.cdx.json', 'node.qcow2.spdx.json', 'node.qcow2.test']);
    expect(await leftoversUnder(tmp)).toEqual(NOTHING_LEFT);
    await expectHostUntouched(host);
  }, 300_000);

  test('a sums file that is a FIFO is not waited on', async () => {
    const shared = join(work, 'fifo');
    await mkdir(shared);
    await execa('mkfifo', [join(shared, 'SHA256SUMS')]);
    const built = await runCli(['apply', recipe, '--disk-image', input, '--output', join(shared, 'node.qcow2'), '--sparsify', 'none', '--sbom', 'none'], { env: env() });
    if (built.exitCode !== 0) throw new Error(built.all);
    expect((await lstat(join(shared, 'SHA256SUMS'))).isFile()).toBe(true);
  }, 300_000);

  test("a cache directory another user made, or holding their entries, is refused by every command before anything in it is read", async () => {
    const shared = join(work, 'caches');
    await mkdir(shared);
    await chmod(shared, 0o1777);
    // Another user's cache where ours was going to be, with a FIFO among its records (cache list would hang on it).
    const theirs = join(shared, 'cache');
    await asNobody('mkdir', '-p', join(theirs, 'urls'));
    await asNobody('mkfifo', join(theirs, 'urls', `${'0'.repeat(64)}.json`));
    const refusal = `refusing to use the cache directory ${theirs}: ${theirs} belongs to uid 65534, not to this user (uid 0)`;
    const listed = await runCli(['cache', 'list'], { env: { ...env(), IMAGEBUILDER_CACHE: theirs } });
    expect(listed.exitCode).toBe(5);
    expect(listed.stderr).toContain(refusal);
    const output = join(work, 'cached.qcow2');
    const applied = await runCli(['apply', recipe, '--disk-image', input, '--output', output, '--sparsify', 'none'], { env: { ...env(), IMAGEBUILDER_CACHE: theirs, IMAGEBUILDER_NO_CACHE: '' } });
    expect(applied.exitCode).toBe(5);
    expect(applied.stderr).toContain(refusal);
    expect(applied.stderr).not.toContain('mount backend');
    expect(await readdir(work)).not.toContain('cached.qcow2');
    // Ours, but with a layer store another user put in it while it was open to them.
    const ours = join(shared, 'ours');
    await mkdir(ours, { mode: 0o700 });
    await asNobody('mkdir', join(shared, 'their-layers'));
    await asNobody('touch', join(shared, 'their-layers', 'layer-0123456789ab.qcow2'));
    await execa('mv', [join(shared, 'their-layers'), join(ours, 'layers')]);
    const planted = await runCli(['cache', 'prune', '--all'], { env: { ...env(), IMAGEBUILDER_CACHE: ours } });
    expect(planted.exitCode).toBe(5);
    expect(planted.stderr).toContain(`refusing to use the cache directory ${ours}: ${join(ours, 'layers')} belongs to uid 65534, not to this user (uid 0)`);
    // prune --all removed nothing of what it was refused.
    expect(await readdir(join(ours, 'layers'))).toEqual(['layer-0123456789ab.qcow2']);
    // A cache directory that does not exist yet is made, ours alone.
    const fresh = join(shared, 'fresh');
    expect((await runCli(['cache', 'list'], { env: { ...env(), IMAGEBUILDER_CACHE: fresh } })).exitCode).toBe(0);
    expect((await lstat(fresh)).mode & 0o7777).toBe(0o700);
    expect(await leftoversUnder(tmp)).toEqual(NOTHING_LEFT);
  }, 120_000);

  test('every user may write it and it has no sticky bit (the output directory or the work directory): refused before anything is mounted', async () => {
    const open = join(work, 'open');
    await mkdir(open);
    await chmod(open, 0o777);
    const refused = await runCli(['apply', recipe, '--disk-image', input, '--output', join(open, 'node.qcow2'), '--sparsify', 'none'], { env: env() });
    expect(refused.exitCode).toBe(2);
    expect(refused.stderr).toContain(`refusing to write into ${open}: every user may write it and it has no sticky bit, so another could replace what is written there`);
    expect(refused.stderr).not.toContain('mount backend');
    expect(await readdir(open)).toEqual([]);
    const missing = await runCli(['apply', recipe, '--disk-image', input, '--output', join(work, 'no-such-dir', 'node.qcow2')], { env: env() });
    expect(missing.exitCode).toBe(2);
    expect(missing.stderr).toContain(`the output's directory ${join(work, 'no-such-dir')} does not exist`);
    // The same for where the work directory goes: everything a build writes by path is in it.
    const openWork = join(work, 'open-work');
    await mkdir(openWork);
    await chmod(openWork, 0o777);
    const refusedWork = await runCli(['apply', recipe, '--disk-image', input, '--output', join(work, 'from-open-work.qcow2'), '--sparsify', 'none'], { env: { IMAGEBUILDER_WORK_DIR: openWork } });
    expect(refusedWork.exitCode).toBe(2);
    expect(refusedWork.stderr).toContain(`refusing to make a work directory in ${openWork}: every user may write it and it has no sticky bit, so another could replace the work directory`);
    expect(await readdir(openWork)).toEqual([]);
    expect(await readdir(work)).not.toContain('from-open-work.qcow2');
    expect(await leftoversUnder(tmp)).toEqual(NOTHING_LEFT);
  }, 120_000);
});
