import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fixtureImage } from '../helpers/fixtures.js';
import { leftoversUnder, NOTHING_LEFT, runCli } from '../helpers/host.js';
import { execa } from 'execa';
import { CANARY_CONTENT, expectHostUntouched, snapshotHost } from '../helpers/hostile.js';
import { withImageMounted } from '../helpers/inspect.js';

/**
 * A recipe reads host files only from its own directory (and those the user allows with --allow-host-path):
 * a recipe from someone else's repository must not copy the build host's secrets into an image. Every kind of
 * host path a recipe names is tried: relative with `..`, absolute, and through a symlink in the recipe's
 * directory that leads out; each is a located error from `validate` and from `apply` (before anything is
 * mounted), and the canary never reaches an output.
 */
describe('recipes read host files only from their own directory', () => {
  let work: string;
  let tmp: string;
  beforeAll(async () => {
    work = await mkdtemp('/var/tmp/ib-confine-');
    tmp = await mkdtemp('/var/tmp/ib-confine-tmp-');
  });
  afterAll(async () => {
    await rm(work, { recursive: true, force: true });
    await rm(tmp, { recursive: true, force: true });
  });

  /** A recipe directory whose recipe names the canary in every way a recipe names host files. */
  async function escapingRecipe(canaryDir: string): Promise<{ dir: string; recipe: string }> {
    const dir = await mkdtemp(join(work, 'recipe-'));
    await symlink(join(canaryDir, 'canary.txt'), join(dir, 'innocent.txt'));
    await symlink(canaryDir, join(dir, 'assets'));
    // A link's `..` is taken after the link is followed: evil leads to the canary, though `x/../canary.txt` as
    // text is a name inside the recipe's directory (where nothing is).
    await symlink(join(canaryDir, 'subdir'), join(dir, 'x'));
    await symlink('x/../canary.txt', join(dir, 'evil'));
    await symlink('nowhere', join(dir, 'dangling'));
    const up = join('..', '..', '..', '..', '..', canaryDir);
    const recipe = join(dir, 'recipe.yaml');
    await writeFile(
      recipe,
      [
        'name: escaping',
        'steps:',
        `  - file: { path: /etc/a, source: ${up}/canary.txt }`,
        '  - file: { path: /etc/b, template: innocent.txt }',
        `  - copy: { src: ${canaryDir}/subdir, dest: /opt/c }`,
        `  - run: { file: ${canaryDir}/canary.txt }`,
        '  - container-images: { archives: [assets/canary.txt] }',
        `  - include: ${up}/subdir/inner.txt`,
        '  - file: { path: /etc/d, source: evil }',
        '  - file: { path: /etc/e, source: dangling }',
        '',
      ].join('\n'),
    );
    return { dir, recipe };
  }

  const ESCAPES = [
    ['3:35', 'canary.txt'],
    ['4:37', 'innocent.txt'],
    ['5:18', 'subdir'],
    ['6:18', 'canary.txt'],
    ['7:36', 'assets/canary.txt'],
    ['9:35', 'evil'],
  ];

  test('validate: each escape is a located BAD_RECIPE (exit 2); --allow-host-path DIR (or its variable) lets them in', async () => {
    const host = await snapshotHost();
    const { recipe } = await escapingRecipe(host.canaryDir);
    const refused = await runCli(['validate', recipe]);
    expect(refused.exitCode).toBe(2);
    for (const [location, name] of ESCAPES) {
      expect(refused.stderr).toMatch(new RegExp(`recipe\\.yaml:${location}: \\S*${name.replace('.', '\\.')} is outside the recipe's directory \\S+ \\(it is ${host.canaryDir}/`));
    }
    expect(refused.stderr).toMatch(/recipe\.yaml:8:14: cannot include \S+inner\.txt is outside the recipe's directory/);
    expect(refused.stderr).toMatch(/recipe\.yaml:10:35: dangling is a symlink that leads nowhere/);
    expect(refused.stderr).toContain('or allow its directory with --allow-host-path DIR');
    expect(refused.all).not.toContain(CANARY_CONTENT.trim());

    // Allowed, the only problem left is that the included "recipe" is not one (it is the canary's text).
    const allowed = await runCli(['validate', recipe, '--allow-host-path', host.canaryDir]);
    expect(allowed.stderr).not.toContain('outside the recipe');
    const viaEnv = await runCli(['validate', recipe], { env: { IMAGEBUILDER_ALLOW_HOST_PATH: `/nonexistent:${host.canaryDir}` } });
    expect(viaEnv.stderr).not.toContain('outside the recipe');
    await expectHostUntouched(host);
  });

  test('apply: an escaping recipe stops before anything is mounted; allowed, the host file goes in and the BOM says where from', async () => {
    const host = await snapshotHost();
    const input = await fixtureImage('whole-disk');
    const dir = await mkdtemp(join(work, 'apply-'));
    await symlink(host.canaryDir, join(dir, 'assets'));
    await mkdir(join(dir, 'files'));
    await writeFile(join(dir, 'files', 'own.txt'), 'the recipe own file\n');
    const recipe = join(dir, 'recipe.yaml');
    await writeFile(recipe, ['name: confined', 'steps:', '  - file: { path: /etc/own, source: files/own.txt }', '  - file: { path: /etc/stolen, source: assets/canary.txt }', ''].join('\n'));
    const output = join(work, 'confined-out.qcow2');
    const env = { IMAGEBUILDER_WORK_DIR: tmp };

    const refused = await runCli(['apply', recipe, '--disk-image', input, '--output', output, '--sparsify', 'none'], { env });
    expect(refused.exitCode).toBe(2);
    expect(refused.stderr).toMatch(/recipe\.yaml:4:40: assets\/canary\.txt is outside the recipe's directory/);
    expect(refused.stderr).not.toContain('mount backend');
    await expect(readFile(output)).rejects.toThrow();

    const allowed = await runCli(['apply', recipe, '--disk-image', input, '--output', output, '--sparsify', 'none', '--sbom', 'none', '--allow-host-path', host.canaryDir], { env });
    if (allowed.exitCode !== 0) throw new Error(allowed.all);
    await withImageMounted(output, 'whole-disk', async (root) => {
      expect(await readFile(join(root, 'etc/stolen'), 'utf8')).toBe(CANARY_CONTENT);
      expect(await readFile(join(root, 'etc/own'), 'utf8')).toBe('the recipe own file\n');
    });
    const bom = JSON.parse(await readFile(`${output}.bom.json`, 'utf8')) as { files: { path: string; source?: string }[] };
    expect(bom.files.find((f) => f.path === '/etc/stolen')?.source).toBe(host.canaryFile);
    await expectHostUntouched(host);
  });
  test('special files in the recipe\'s directory (a FIFO, a device node) are refused, never opened: by validate at once, by apply before reading', async () => {
    const dir = await mkdtemp(join(work, 'special-'));
    await execa('mkfifo', [join(dir, 'pipe')]);
    await execa('mknod', [join(dir, 'zero'), 'c', '1', '5']);
    const recipe = join(dir, 'recipe.yaml');
    await writeFile(recipe, ['name: special', 'steps:', '  - file: { path: /etc/a, source: pipe }', '  - file: { path: /etc/b, template: zero }', '  - run: { file: pipe }', ''].join('\n'));
    // Before, validate opened the FIFO synchronously and never returned, whatever signal it was sent.
    const validated = await runCli(['validate', recipe]);
    expect(validated.exitCode).toBe(2);
    expect(validated.stderr).toContain(`recipe.yaml:3:5: source ${join(dir, 'pipe')} is not a regular file (a directory, FIFO, socket or device): name a file`);
    expect(validated.stderr).toContain(`recipe.yaml:4:5: template ${join(dir, 'zero')} is not a regular file`);
    expect(validated.stderr).toContain(`recipe.yaml:5:5: cannot read script file ${join(dir, 'pipe')}`);

    const images = join(dir, 'images.yaml');
    await writeFile(images, 'name: images\nsteps:\n  - container-images: { archives: [pipe] }\n');
    const output = join(work, 'special-out.qcow2');
    const applied = await runCli(['apply', images, '--disk-image', await fixtureImage('whole-disk'), '--output', output, '--sparsify', 'none'], { env: { IMAGEBUILDER_WORK_DIR: tmp } });
    expect(applied.exitCode).toBe(2);
    expect(applied.stderr).toContain(`container image archive ${join(dir, 'pipe')} is not a regular file (a directory, FIFO, socket or device)`);
    await expect(readFile(output)).rejects.toThrow(/ENOENT/);
    expect(await leftoversUnder(tmp)).toEqual(NOTHING_LEFT);
  });
});
