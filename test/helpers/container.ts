import { access, mkdir, readFile, rm } from 'node:fs/promises';
import { execa } from 'execa';
import { FIXTURE_CACHE } from './fixtures.js';
import { REPO } from './host.js';

/**
 * The shipped Dockerfile, built and run the way this machine can: no Docker engine and no registry, so buildah
 * (`--isolation chroot`) builds it from a base image made here from Debian's packages.
 *
 * Storage: buildah's own root under /var/cache/buildah-ib-tests, apart from any storage of the host's, kept
 * between runs so a rerun reuses the base image and the cached layers (`bud --layers`: apt and `npm ci` rerun only
 * when the Dockerfile or the lock file change). The overlay driver, not vfs: vfs stores every layer as a full
 * copy (18 GB measured for the two stages here), overlay only each layer's changes. (The path has no
 * "imagebuilder-" in it: the other tests' expectNothingLeft watches mounts with that in their path.)
 */
export const BUILDAH_ROOT = '/var/cache/buildah-ib-tests';
const BUILDAH_GLOBALS = ['--root', `${BUILDAH_ROOT}/storage`, '--runroot', '/run/buildah-ib-tests', '--storage-driver', 'overlay'];
export const IMAGE_TAG = 'localhost/imagebuilder:test';
const BUILD_STAGE_TAG = 'localhost/imagebuilder-build-stage:test';
/** The named volume of the README's `docker run` line: the cache outlives each container, as it would for a user. */
export const CACHE_VOLUME = `${BUILDAH_ROOT}/cache-volume`;

export async function buildah(args: string[], options: { input?: string; timeoutMs?: number } = {}) {
  const result = await execa('buildah', [...BUILDAH_GLOBALS, ...args], { reject: false, all: true, input: options.input, timeout: options.timeoutMs });
  if (result.exitCode !== 0) {
    throw new Error(`buildah ${args.join(' ')} exited with ${result.exitCode}:\n${String(result.all).split('\n').slice(-30).join('\n')}`);
  }
  return { stdout: String(result.stdout), all: String(result.all) };
}

/** The base image every stage of the Dockerfile starts FROM (they must agree: one base is made here). */
export async function dockerfileBase(): Promise<string> {
  const text = await readFile(`${REPO}/Dockerfile`, 'utf8');
  const stages = new Set<string>();
  const bases = new Set<string>();
  for (const match of text.matchAll(/^FROM\s+(\S+)(?:\s+AS\s+(\S+))?/gim)) {
    if (!stages.has(match[1])) bases.add(match[1]);
    if (match[2]) stages.add(match[2]);
  }
  if (bases.size !== 1) throw new Error(`the Dockerfile's stages start from ${[...bases].join(', ')}: the test makes exactly one base image`);
  return [...bases][0];
}

async function imageExists(name: string): Promise<boolean> {
  return (await execa('buildah', [...BUILDAH_GLOBALS, 'inspect', '--type', 'image', name], { reject: false })).exitCode === 0;
}

/**
 * The base image under the Dockerfile's FROM name: `debootstrap --variant=minbase trixie` (what debian:trixie-slim
 * is made from), tarred once into the fixture cache, then `buildah from scratch` + `add` + `commit`.
 */
export async function ensureBaseImage(log: (message: string) => void): Promise<string> {
  const name = await dockerfileBase();
  if (await imageExists(name)) return name;
  const suite = /debian:(\w+)/.exec(name)?.[1];
  if (!suite) throw new Error(`cannot make the base image ${name} here: only debian:<suite> images are made locally`);
  const tarball = `${FIXTURE_CACHE}/container-base-debian-${suite}-minbase.tar.zst`;
  if (!(await access(tarball).then(() => true, () => false))) {
    log(`debootstrap --variant=minbase ${suite} for the container base image (cold cache, about a minute)`);
    const tree = `${FIXTURE_CACHE}/container-base-${process.pid}`;
    await rm(tree, { recursive: true, force: true });
    try {
      await execa('debootstrap', ['--variant=minbase', suite, tree, 'http://deb.debian.org/debian'], { all: true });
      await mkdir(FIXTURE_CACHE, { recursive: true });
      await execa('sh', ['-c', 'tar -C "$1" --numeric-owner -c . | zstd -q -T0 > "$2.partial" && mv "$2.partial" "$2"', 'tar', tree, tarball]);
    } finally {
      await rm(tree, { recursive: true, force: true });
      await rm(`${tarball}.partial`, { force: true });
    }
  }
  const container = (await buildah(['from', 'scratch'])).stdout.trim();
  try {
    await buildah(['add', container, tarball, '/']);
    await buildah(['config', '--cmd', '/bin/bash', container]);
    await buildah(['commit', '--rm', container, name]);
  } catch (error) {
    await buildah(['rm', container]).catch(() => undefined);
    throw error;
  }
  return name;
}

/**
 * Builds the Dockerfile into IMAGE_TAG. The host's CA bundle goes in as the Dockerfile's optional
 * `ca-certificates` secret, so `npm ci` trusts what the host's own npm trusts. Afterwards, images the previous
 * builds left dangling (an older tag, stale cache layers) are pruned: the storage does not grow run after run.
 * `--force-rm`: a failed step's container goes too.
 */
export async function buildImage(labels: { version: string; revision: string; source: string }): Promise<void> {
  const secret = (await access('/etc/ssl/certs/ca-certificates.crt').then(() => true, () => false))
    ? ['--secret', 'id=ca-certificates,src=/etc/ssl/certs/ca-certificates.crt']
    : [];
  // This storage is the container test's alone: containers an interrupted earlier run left are removed first.
  await buildah(['rm', '--all']);
  const bud = ['bud', '--isolation', 'chroot', '--layers', '--force-rm', '--pull-never', ...secret];
  // The build stage gets a tag of its own: untagged, its cached layers would be dangling and pruned below.
  await buildah([...bud, '--target', 'build', '--tag', BUILD_STAGE_TAG, REPO]);
  await buildah([
    ...bud,
    '--build-arg', `VERSION=${labels.version}`, '--build-arg', `REVISION=${labels.revision}`, '--build-arg', `SOURCE=${labels.source}`,
    '--tag', IMAGE_TAG, REPO,
  ]);
  await buildah(['rmi', '--prune']).catch(() => undefined);
}

export interface ImageConfig {
  config: { Entrypoint?: string[]; WorkingDir?: string; Env?: string[]; Volumes?: Record<string, unknown>; Labels?: Record<string, string> };
}

export async function imageConfig(): Promise<ImageConfig> {
  const inspected = JSON.parse((await buildah(['inspect', '--type', 'image', IMAGE_TAG])).stdout) as { OCIv1: ImageConfig };
  return inspected.OCIv1;
}

/** Every capability this process holds, by name: what `docker run --privileged` gives a container. */
async function ourCapabilities(): Promise<string[]> {
  const mask = /^CapBnd:\s+([0-9a-f]+)$/m.exec(await readFile('/proc/self/status', 'utf8'))?.[1];
  if (!mask) throw new Error('no CapBnd in /proc/self/status');
  const decoded = (await execa('capsh', [`--decode=${mask}`])).stdout; // 0x…=cap_chown,cap_dac_override,…
  return decoded.slice(decoded.indexOf('=') + 1).split(',').map((cap) => cap.toUpperCase());
}

/**
 * Runs one command in a fresh container of IMAGE_TAG, as privileged as this process, with the given host
 * directories bound in, then removes the container (also when the command fails). `buildah run` does not apply
 * the image's ENTRYPOINT: the command names `imagebuilder` itself.
 *
 * /dev: `--isolation chroot` already binds the host's devtmpfs there (what `-v /dev:/dev` gives a Docker
 * container: nodes appear as the kernel adds them); binding it again with --volume makes buildah 1.28 put an
 * anonymous volume over the cache bind instead. What differs from `docker run --privileged`: buildah masks
 * /sys/dev/block, which libblkid needs to read a partition's GPT entry (PARTLABEL=, PARTUUID= in fstab), so the
 * fixture used here names its filesystems by UUID.
 */
export async function runInContainer(command: string[], volumes: Record<string, string>, env: Record<string, string> = {}) {
  const name = `ib-ctr-test-${process.pid}-${Date.now()}`;
  await buildah(['from', '--pull-never', '--name', name, IMAGE_TAG]);
  try {
    // buildah 1.28 mounts an anonymous volume for each of the image's VOLUMEs, over a --volume bound to the
    // same path (most of the time): this container forgets the declaration, so the bind is what is there.
    for (const inside of Object.values(volumes)) {
      if ((await imageConfig()).config.Volumes?.[inside]) await buildah(['config', '--volume', `${inside}-`, name]);
    }
    const caps = (await ourCapabilities()).flatMap((cap) => ['--cap-add', cap]);
    const binds = Object.entries(volumes).flatMap(([host, inside]) => ['--volume', `${host}:${inside}`]);
    const envs = Object.entries(env).flatMap(([key, value]) => ['--env', `${key}=${value}`]);
    const result = await execa('buildah', [...BUILDAH_GLOBALS, 'run', '--isolation', 'chroot', ...caps, ...binds, ...envs, name, '--', ...command], { reject: false });
    return { exitCode: result.exitCode, stdout: String(result.stdout), stderr: String(result.stderr) };
  } finally {
    await buildah(['rm', name]);
  }
}

/** Containers of this storage still present: a test that leaves one behind fails. */
export async function containersLeft(): Promise<string[]> {
  return (await buildah(['containers', '--noheading', '--format', '{{.ContainerName}}'])).stdout.split('\n').filter(Boolean);
}
