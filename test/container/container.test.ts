import { copyFile, mkdir, mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { buildImage, CACHE_VOLUME, containersLeft, ensureBaseImage, imageConfig, IMAGE_TAG, runInContainer } from '../helpers/container.js';
import { NO_CGROUP_LIMITS_WARNING } from '../../src/chroot/sandbox.js';
import { fixtureImage } from '../helpers/fixtures.js';
import { expectNothingLeft, hostState, jsonResult, REPO, sha256 } from '../helpers/host.js';
import { dpkgVersion, withImageMounted } from '../helpers/inspect.js';
import { writeRecipe } from '../helpers/recipes.js';
import { expectValidBom } from '../helpers/bom-schema.js';
import { HOST_TOOLS } from '../../src/util/tools.js';

/**
 * The container we ship, for real: the Dockerfile built with buildah from a base image made here, then
 * `imagebuilder doctor` and `imagebuilder apply` run inside it on a real Debian image, with only what the
 * README's `docker run` line gives a container (all privileges, the host's /dev, /work, the cache volume).
 */
/** A cold build (debootstrap, both stages' apt, npm ci) takes 5–10 minutes here, more on a busy machine. */
const COLD_BUILD_MS = 45 * 60 * 1000;

describe('the container (Dockerfile built by buildah, commands run inside it)', () => {
  const log = (message: string) => process.stderr.write(`[container test] ${message}\n`);
  let version: string;
  let revision: string;
  let work: string;

  beforeAll(async () => {
    version = (JSON.parse(await readFile(`${REPO}/package.json`, 'utf8')) as { version: string }).version;
    revision = (await execa('git', ['-C', REPO, 'rev-parse', 'HEAD'])).stdout.trim();
    let started = Date.now();
    await ensureBaseImage(log);
    log(`base image ready in ${((Date.now() - started) / 1000).toFixed(0)} s`);
    started = Date.now();
    await buildImage({ version, revision, source: 'file://' + REPO });
    log(`${IMAGE_TAG} built in ${((Date.now() - started) / 1000).toFixed(0)} s`);
    await mkdir(CACHE_VOLUME, { recursive: true });
    work = await mkdtemp('/var/tmp/ib-container-');
  }, COLD_BUILD_MS);
  afterAll(async () => {
    if (work) await rm(work, { recursive: true, force: true });
  });

  test('the image: entrypoint, work dir, cache volume, OCI labels and BUILD-INFO from the build args', async () => {
    const { config } = await imageConfig();
    expect(config.Entrypoint).toEqual(['imagebuilder']);
    expect(config.WorkingDir).toBe('/work');
    expect(Object.keys(config.Volumes ?? {})).toEqual(['/var/cache/imagebuilder']);
    expect(config.Env).toEqual(expect.arrayContaining(['IMAGEBUILDER_CACHE=/var/cache/imagebuilder']));
    expect(config.Labels).toMatchObject({
      'org.opencontainers.image.title': 'imagebuilder',
      'org.opencontainers.image.version': version,
      'org.opencontainers.image.revision': revision,
      'org.opencontainers.image.source': `file://${REPO}`,
    });
    // The same values inside: podman/buildah rebuild the labels when an argument changes only because of this RUN.
    const info = await runInContainer(['cat', '/opt/imagebuilder/BUILD-INFO'], {});
    expect(info.stdout).toBe(`version=${version}\nrevision=${revision}\nsource=file://${REPO}`);
  });

  test('imagebuilder doctor inside: every host tool is in the image, and the host gaps show through', async () => {
    // (The KVM verdict there is whatever the cache volume remembers; the apply below probes it once.)
    const result = await runInContainer(['imagebuilder', 'doctor', '--json'], { [work]: '/work', [CACHE_VOLUME]: '/var/cache/imagebuilder' });
    expect(result.stderr).toBe('');
    const report = JSON.parse(result.stdout) as { ready: boolean; checks: { id: string; status: string; found: string }[] };
    const status = (id: string) => report.checks.find((c) => c.id === id)?.status;
    const missingTools = report.checks.filter((c) => c.id.startsWith('tool:') && c.status !== 'ok').map((c) => c.id);
    expect(missingTools).toEqual([]);
    expect(report.checks.filter((c) => c.id.startsWith('tool:'))).toHaveLength(Object.keys(HOST_TOOLS).length);
    expect(status('root')).toBe('ok');
    expect(status('dev-fuse')).toBe('ok');
    expect(status('loop')).toBe('ok');
    expect(status('dev-nodes')).toBe('ok'); // the host's devtmpfs, bound in
    expect(status('nbd')).toBe('missing'); // this machine's kernel has no nbd module
    expect(status('binfmt')).toBe('ok'); // the image's static qemu-user emulators, for foreign guests
    expect(report.ready).toBe(true);
    expect(result.exitCode).toBe(0);
  });

  test('imagebuilder apply inside: a real package into a real image, output and BOM checked, input untouched', async () => {
    // btrfs subvolumes for / and /home, /boot on its own ext4: several partitions, found through fstab by UUID.
    const fixture = await fixtureImage('btrfs-subvol');
    const input = join(work, 'debian.qcow2');
    await copyFile(fixture, input);
    const inputSha = await sha256(input);
    const recipe = await writeRecipe(work, 'in-container', [
      { name: 'tools', packages: { install: ['socat'] } },
      { file: { path: '/etc/imagebuilder/built-in.txt', content: 'container\n' } },
      { file: { path: '/boot/imagebuilder.txt', content: 'on the boot filesystem\n' } },
    ]);
    const before = await hostState();

    // Paths as the user gives them inside the container: relative to /work.
    const result = await runInContainer(
      // virt-sparsify asked for: libguestfs's appliance must work in the image (auto, the default, needs it only for
      // what the host cannot mount, and this fixture has none of that).
      // --refresh 1: the cache volume outlives the container (its step layers too); every step runs here again.
      ['imagebuilder', 'apply', 'in-container.yaml', '--disk-image', 'debian.qcow2', '--output', 'node.qcow2', '--sparsify', 'virt-sparsify', '--refresh', '1', '--json'],
      { [work]: '/work', [CACHE_VOLUME]: '/var/cache/imagebuilder' },
      { SOURCE_DATE_EPOCH: '1700000000' },
    );
    if (result.exitCode !== 0) log(result.stderr);
    expect(result.exitCode).toBe(0);
    const printed = jsonResult<{ output: { path: string; sha256: string }; bom: string }>(result.stdout);
    expect(printed.output.path).toBe('/work/node.qcow2');
    const output = join(work, 'node.qcow2');
    expect(printed.output.sha256).toBe(await sha256(output));
    expect(await sha256(input)).toBe(inputSha);

    const info = JSON.parse((await execa('qemu-img', ['info', '--output=json', output])).stdout) as { format: string; 'virtual-size': number };
    expect(info.format).toBe('qcow2');
    await execa('qemu-img', ['check', output]);

    expect(printed.bom).toBe('/work/node.qcow2.bom.json');
    const bom = JSON.parse(await readFile(join(work, 'node.qcow2.bom.json'), 'utf8'));
    expectValidBom(bom);
    expect(bom.recipe.name).toBe('in-container');
    expect(bom.recipe.sha256).toBe(await sha256(recipe));
    expect(bom.mountBackend).toBe('fuse'); // auto: no nbd module here
    expect(bom.tool).toMatchObject({ name: 'imagebuilder', version });
    expect(bom.packages).toContainEqual(expect.objectContaining({ name: 'socat', architecture: 'amd64', origin: 'added' }));
    expect(bom.steps.map((s: { type: string }) => s.type)).toEqual(['packages', 'file', 'file']);
    expect(bom.steps.filter((s: { cached?: boolean }) => s.cached)).toEqual([]);
    expect(bom.output.sparsify).toBe('virt-sparsify'); // libguestfs's appliance works in the image
    // Every fstab entry mounted (/, /boot, /home): no warning of those. The one warning there may be is the
    // sandbox's, when this container cannot write /sys/fs/cgroup (buildah's chroot isolation on some hosts mounts
    // it read-only whatever the capabilities): asked of the container itself, not assumed.
    const cgroupProbe = await runInContainer(['sh', '-c', 'd=/sys/fs/cgroup/memory; [ -e /sys/fs/cgroup/cgroup.controllers ] && d=/sys/fs/cgroup; mkdir "$d/ib-probe-$$" && rmdir "$d/ib-probe-$$"'], {});
    const cgroupsReadOnly = cgroupProbe.exitCode !== 0 && cgroupProbe.stderr.includes('Read-only file system');
    log(`cgroups in the container: ${cgroupsReadOnly ? 'read-only' : 'writable'}`);
    expect(bom.warnings).toEqual(cgroupsReadOnly ? [NO_CGROUP_LIMITS_WARNING] : []);
    // The cache volume outlives the container: this build's step layers are in it, and so is the KVM verdict of the
    // first build here, where the host has a /dev/kvm to probe (without one, libguestfs uses TCG unprobed and
    // remembers nothing: this machine's kind has had both).
    const cached = await readdir(CACHE_VOLUME);
    expect(cached).toContain('layers');
    expect(cached.filter((name) => name.startsWith('libguestfs-kvm-'))).toHaveLength(existsSync('/dev/kvm') ? 1 : 0);
    await withImageMounted(output, 'btrfs-subvol', async (root) => {
      expect(await readFile(join(root, 'etc/imagebuilder/built-in.txt'), 'utf8')).toBe('container\n');
      expect(await dpkgVersion(root, 'socat')).toMatch(/\d/);
    });
    // /boot was the guest's own /boot filesystem, not a directory on the root.
    await withImageMounted(output, 'btrfs-subvol', async (root) => {
      await expect(readFile(join(root, 'boot/imagebuilder.txt'), 'utf8')).rejects.toThrow();
    }, { boot: false });
    await withImageMounted(output, 'btrfs-subvol', async (root) => {
      expect(await readFile(join(root, 'boot/imagebuilder.txt'), 'utf8')).toBe('on the boot filesystem\n');
    });
    await expectNothingLeft(before);
  });

  test('no container is left behind', async () => {
    expect(await containersLeft()).toEqual([]);
  });
});
