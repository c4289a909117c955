import { access, mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { expectNothingLeft, hostState, runCli, sha256 } from '../helpers/host.js';
import { withImageMounted } from '../helpers/inspect.js';
import { writeRecipe } from '../helpers/recipes.js';
import { UNKNOWN_OS_RELEASE, unknownDistroImage } from '../helpers/unknown-distro.js';

/**
 * An image of a distribution imagebuilder does not know (SYNTHETIC: the whole-disk Debian fixture with an
 * os-release naming no known ID or ID_LIKE). A recipe that needs a package manager fails before any step runs;
 * a recipe of run and file steps works.
 */
describe('apply on an image of an unknown distribution (synthetic: Debian fixture, foreign os-release)', () => {
  let work: string;
  let tmp: string;
  beforeAll(async () => {
    work = await mkdtemp('/var/tmp/ib-unknown-');
    tmp = await mkdtemp('/var/tmp/ib-unknown-tmp-');
  });
  afterAll(async () => {
    await rm(work, { recursive: true, force: true });
    await rm(tmp, { recursive: true, force: true });
  });

  test('a recipe with packages and repository steps fails before the first step, naming ID, ID_LIKE, VERSION_ID; exit 2, nothing written', async () => {
    const input = await unknownDistroImage();
    const inputSha = await sha256(input);
    const recipe = await writeRecipe(work, 'needs-packages', [
      { name: 'marker', run: 'touch /root/step-one-ran' },
      { name: 'tools', packages: { install: ['socat'] } },
      { name: 'only on debian', when: { family: 'debian' }, packages: { install: ['conntrack'] } },
    ]);
    const output = join(work, 'needs-packages.qcow2');
    const before = await hostState();

    const result = await runCli(['apply', recipe, '--disk-image', input, '--output', output, '--mount-backend', 'fuse', '--sparsify', 'none'], { env: { IMAGEBUILDER_WORK_DIR: tmp } });

    expect(result.exitCode).toBe(2);
    expect(result.stderr).toContain('family unknown');
    expect(result.stderr).toContain(
      `error [BAD_INPUT]: the image's distribution is unknown to imagebuilder: ${UNKNOWN_OS_RELEASE.PRETTY_NAME} ` +
        `(ID=${UNKNOWN_OS_RELEASE.ID} ID_LIKE="${UNKNOWN_OS_RELEASE.ID_LIKE}" VERSION_ID=${UNKNOWN_OS_RELEASE.VERSION_ID}); a step needs its package manager, so nothing was run`,
    );
    // The step skipped by `when` on this guest is not listed; the one that would run is, with where it is written.
    expect(result.stderr).toMatch(/\| step 2 \(tools\) at \S+needs-packages\.yaml:\d+:\d+\n/);
    expect(result.stderr).not.toContain('only on debian) at');
    expect(result.stderr).toMatch(/hint: supported families: debian, redhat, suse, photon .*use a `run` step/);
    // Not even the first step ran.
    expect(result.stderr).not.toMatch(/step 1\/3 \(marker\): run/);
    await expect(access(output)).rejects.toThrow();
    await expect(access(`${output}.bom.json`)).rejects.toThrow();
    expect(await readdir(tmp)).toEqual([]);
    expect(await sha256(input)).toBe(inputSha);
    await expectNothingLeft(before);
  });

  test('a recipe of run and file steps (and a sysprep without operations) works: the BOM has no packages', async () => {
    const input = await unknownDistroImage();
    const recipe = await writeRecipe(work, 'no-packages', [
      { run: 'echo built-by-run > /etc/from-run' },
      { file: { path: '/etc/from-file', content: 'written\n' } },
      { sysprep: {} },
    ]);
    const output = join(work, 'no-packages.qcow2');
    const before = await hostState();

    const result = await runCli(['apply', recipe, '--disk-image', input, '--output', output, '--mount-backend', 'fuse', '--sparsify', 'fstrim'], { env: { IMAGEBUILDER_WORK_DIR: tmp } });

    if (result.exitCode !== 0) throw new Error(result.all);
    expect(result.stderr).toContain('family unknown');
    expect(result.stderr).toContain('package-cache skipped: unknown distribution family');
    await withImageMounted(output, 'whole-disk', async (root) => {
      expect(await readFile(join(root, 'etc/from-run'), 'utf8')).toBe('built-by-run\n');
      expect(await readFile(join(root, 'etc/from-file'), 'utf8')).toBe('written\n');
      expect(await readFile(join(root, 'etc/os-release'), 'utf8')).toContain(`ID="${UNKNOWN_OS_RELEASE.ID}"`);
    });
    const bom = JSON.parse(await readFile(`${output}.bom.json`, 'utf8'));
    expect(bom.os).toMatchObject({ id: UNKNOWN_OS_RELEASE.ID, versionId: UNKNOWN_OS_RELEASE.VERSION_ID });
    expect(bom.packages).toEqual([]);
    await expectNothingLeft(before);
  });
});
