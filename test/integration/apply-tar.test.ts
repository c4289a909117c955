import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { bomDifferences } from '../../src/bom/repeatable.js';
import { expectValidBom } from '../helpers/bom-schema.js';
import { fixtureImage } from '../helpers/fixtures.js';
import { expectNothingLeft, hostState, jsonResult, runCli, sha256 } from '../helpers/host.js';
import { withImageMounted } from '../helpers/inspect.js';
import { writeRecipe } from '../helpers/recipes.js';
import { cycloneDxErrors, spdxErrors } from '../helpers/sbom-schemas.js';
import { describeTree, gnuExtract, type TreeEntry } from '../helpers/tree.js';

const EPOCH = 1_700_000_000;
const env = { SOURCE_DATE_EPOCH: String(EPOCH) };
type Printed = { output: { path: string; format: string; sha256: string }; artifacts: { path: string; format: string; sha256: string }[]; sums: string; bom: string };

/** apply --format tar: the guest's root filesystem as a tarball, beside a disk image or alone. */
describe('imagebuilder apply --format tar', () => {
  let work: string;
  beforeAll(async () => {
    work = await mkdtemp('/var/tmp/ib-apply-tar-');
  });
  afterAll(() => rm(work, { recursive: true, force: true }));

  test('--format qcow2,tar: the tar holds exactly the output image\'s tree (/boot included): owners, modes, links, fifo, capabilities, xattrs', async () => {
    const input = await fixtureImage('separate-boot');
    const dir = join(work, 'both');
    await mkdir(dir);
    const recipe = await writeRecipe(dir, 'tar', [
      // iputils-ping's postinst gives /bin/ping cap_net_raw with setcap: a security.capability attribute.
      { packages: { install: ['iputils-ping', 'attr'] } },
      { file: { path: '/etc/marker', content: 'tar\n', mode: '0640', owner: 'root', group: 'adm' } },
      {
        run: [
          'ln /etc/marker /etc/marker-hardlink',
          'mkfifo -m 0620 /var/lib/test-fifo',
          'install -m 4755 /bin/true /usr/local/bin/setuid-true',
          'mkdir -m 1777 /srv/drop',
          'setfattr -n user.imagebuilder.test -v hello /etc/marker',
          'ln -s ../marker /etc/default/marker-link',
        ].join('\n'),
      },
    ]);
    const output = join(dir, 'node.qcow2');
    const before = await hostState();
    const result = await runCli(['apply', recipe, '--disk-image', input, '--output', output, '--sparsify', 'none', '--format', 'qcow2,tar', '--json'], { env });
    if (result.exitCode !== 0) throw new Error(result.all);
    const printed = jsonResult<Printed>(result.stdout);
    const tarPath = join(dir, 'node.tar');
    expect(printed.artifacts).toEqual([
      { path: output, format: 'qcow2', sha256: await sha256(output) },
      { path: tarPath, format: 'tar', sha256: await sha256(tarPath) },
    ]);

    // Listed everywhere an artifact is: SHA256SUMS (which coreutils accepts), the BOM, the SBOMs.
    const sums = await readFile(printed.sums, 'utf8');
    expect(sums).toContain(`${await sha256(tarPath)}  node.tar\n`);
    await execa('sha256sum', ['--check', '--strict', 'SHA256SUMS'], { cwd: dir });
    const bom = JSON.parse(await readFile(printed.bom, 'utf8'));
    expectValidBom(bom);
    expect(bom.artifacts).toEqual(printed.artifacts);
    expect(bom.durationsMs.tar).toBeGreaterThan(0);
    const cdx = JSON.parse(await readFile(`${output}.cdx.json`, 'utf8'));
    expect(cycloneDxErrors(cdx)).toEqual([]);
    expect(JSON.stringify(cdx)).toContain(`node.tar tar sha256:${await sha256(tarPath)}`);
    expect(spdxErrors(JSON.parse(await readFile(`${output}.spdx.json`, 'utf8')))).toEqual([]);
    expect(await readdir(dir)).toEqual(expect.arrayContaining(['node.qcow2', 'node.tar']));
    expect((await readdir(dir)).filter((name) => name.includes('partial'))).toEqual([]);

    // The tar, unpacked by GNU tar, against the output image mounted read-only by the test's own helper.
    const unpacked = join(work, 'unpacked');
    await mkdir(unpacked);
    await gnuExtract(tarPath, unpacked);
    const fromTar = await describeTree(unpacked);
    const fromImage = await withImageMounted(output, 'separate-boot', (root) => describeTree(root));
    // With SOURCE_DATE_EPOCH the tar clamps every later mtime to it (tar --clamp-mtime).
    for (const entry of fromImage.values()) if (entry.mtime !== undefined) entry.mtime = Math.min(entry.mtime, EPOCH);
    expect([...fromTar.keys()]).toEqual([...fromImage.keys()]);
    expect(fromTar).toEqual(fromImage);
    expect(fromTar.size).toBeGreaterThan(5000);

    // What that comparison covers, named.
    const get = (name: string) => fromTar.get(name) as TreeEntry;
    expect(get('./boot/').type).toBe('directory');
    expect([...fromTar.keys()].some((name) => /^\.\/boot\/vmlinuz-/.test(name))).toBe(true);
    expect(get('./etc/marker')).toMatchObject({ type: 'file', mode: 0o640, uid: 0, gid: 4, mtime: EPOCH, xattrs: { 'user.imagebuilder.test': Buffer.from('hello').toString('hex') } });
    expect(get('./etc/marker-hardlink')).toMatchObject({ type: 'link', linkname: './etc/marker' });
    expect(get('./var/lib/test-fifo')).toMatchObject({ type: 'fifo', mode: 0o620 });
    expect(get('./usr/local/bin/setuid-true').mode).toBe(0o4755);
    expect(get('./srv/drop/').mode).toBe(0o1777);
    expect(get('./etc/default/marker-link')).toMatchObject({ type: 'symlink', linkname: '../marker' });
    const ping = get('./usr/bin/ping') ?? get('./bin/ping');
    expect(Object.keys(ping.xattrs ?? {})).toContain('security.capability');
    expect((await execa('getcap', [join(unpacked, 'usr/bin/ping')])).stdout).toMatch(/cap_net_raw[=+]e?p/);
    // The chroot session was closed: no API filesystem in the tar, only the device nodes debootstrap put on disk.
    expect([...fromTar.keys()].filter((name) => /^\.\/(proc|sys)\/./.test(name))).toEqual([]);
    expect(get('./dev/null')).toMatchObject({ type: 'character-device', mode: 0o666, device: String((1 << 8) | 3) });
    expect(get('./dev/pts/').type).toBe('directory');
    expect([...fromTar.keys()].filter((name) => name.startsWith('./dev/pts/') && name !== './dev/pts/')).toEqual([]);
    // The guest's own names for owners.
    const listing = (await execa('tar', ['-tvf', tarPath, './etc/marker'])).stdout;
    expect(listing).toMatch(/^-rw-r----- root\/adm /);
    await rm(unpacked, { recursive: true, force: true });
    await expectNothingLeft(before);
  });

  test('--format tar alone: a tarball, no disk image; the overlay is discarded; the input untouched', async () => {
    const input = await fixtureImage('whole-disk');
    const inputSha = await sha256(input);
    const dir = join(work, 'alone');
    await mkdir(dir);
    const recipe = await writeRecipe(dir, 'rootfs', [{ run: 'echo rootfs > /etc/marker' }]);
    const before = await hostState();
    const workDir = join(work, 'workdirs');
    await mkdir(workDir);
    const result = await runCli(['apply', recipe, '--disk-image', input, '--format', 'tar', '--json'], { cwd: dir, env: { IMAGEBUILDER_WORK_DIR: workDir } });
    if (result.exitCode !== 0) throw new Error(result.all);
    const printed = jsonResult<Printed>(result.stdout);
    // Named after the input and the recipe, with the tar's extension.
    const tarPath = join(dir, `${(input.split('/').pop() as string).replace(/\.qcow2$/, '')}-rootfs.tar`);
    expect(printed.artifacts).toEqual([{ path: tarPath, format: 'tar', sha256: await sha256(tarPath) }]);
    expect((await readdir(dir)).sort()).toEqual(['SHA256SUMS', 'rootfs.yaml', ...['', '.bom.json', '.cdx.json', '.spdx.json'].map((suffix) => `${tarPath.split('/').pop()}${suffix}`)].sort());
    expect((await execa('tar', ['-xOf', tarPath, './etc/marker'])).stdout).toBe('rootfs');
    expect(await readdir(workDir)).toEqual([]);
    expect(await sha256(input)).toBe(inputSha);
    const bom = JSON.parse(await readFile(printed.bom, 'utf8'));
    expectValidBom(bom);
    expect(bom.output).toMatchObject({ path: tarPath, format: 'tar' });
    await expectNothingLeft(before);
  });

  test('with SOURCE_DATE_EPOCH, two builds give equal BOMs but for the named build-own fields, and the same tar byte for byte', async () => {
    const input = await fixtureImage('whole-disk');
    // Both built from scratch (--no-cache): a build from the step cache would repeat trivially.
    const recipeDir = join(work, 'repeat');
    await mkdir(join(recipeDir, 'files'), { recursive: true });
    await writeFile(join(recipeDir, 'files/app.conf'), 'copied\n');
    const recipe = await writeRecipe(recipeDir, 'repeat', [
      { file: { path: '/etc/repeat.conf', content: 'written\n' } },
      { copy: { src: 'files/app.conf', dest: '/etc/app/app.conf' } },
      { run: 'mkdir -p /opt/made && echo run > /opt/made/by-run && touch -d @1800000000 /opt/made/later && echo "$SOURCE_DATE_EPOCH" > /opt/made/epoch' },
    ]);
    const builds: Printed[] = [];
    for (const name of ['one', 'two']) {
      const dir = join(work, `repeat-${name}`);
      await mkdir(dir);
      const result = await runCli(['apply', recipe, '--disk-image', input, '--output', join(dir, 'node.qcow2'), '--sparsify', 'none', '--format', 'qcow2', '--format', 'tar', '--no-cache', '--json'], { env });
      if (result.exitCode !== 0) throw new Error(result.all);
      builds.push(jsonResult<Printed>(result.stdout));
    }
    const [one, two] = await Promise.all(builds.map(async (b) => JSON.parse(await readFile(b.bom, 'utf8'))));
    expect(bomDifferences(one, two, { sourceDateEpoch: true })).toEqual([]);
    expect(one.createdAt).toBe(new Date(EPOCH * 1000).toISOString());
    expect(two.createdAt).toBe(one.createdAt);
    // The guest's commands see SOURCE_DATE_EPOCH (their own tools honour it).
    expect((await execa('tar', ['-xOf', builds[0].artifacts[1].path, './opt/made/epoch'])).stdout).toBe(String(EPOCH));
    // Every file the build wrote is dated at SOURCE_DATE_EPOCH in the tar, so both tars are the same bytes.
    expect(builds[1].artifacts[1].sha256).toBe(builds[0].artifacts[1].sha256);
    const listing = (await execa('tar', ['--full-time', '-tvf', builds[0].artifacts[1].path, './etc/repeat.conf', './etc/app/app.conf', './opt/made/later'], { env: { TZ: 'UTC' } })).stdout;
    expect(listing.split('\n').map((line) => line.split(/ +/).slice(3, 5).join(' '))).toEqual(Array(3).fill('2023-11-14 22:13:20'));
  });
});
