import { join, resolve } from 'node:path';
import { Flags } from '@oclif/core';
import { MOUNT_BACKEND_NAMES, type MountBackendName } from '../mount/backend.js';
import { ImageBuilderError } from '../util/errors.js';
import { ensureCacheDir } from '../util/lock.js';
import { DEFAULT_RUN_DIR, defaultCacheDir, defaultWorkDir, type HostPaths } from '../util/paths.js';

/**
 * Flags about this host rather than the build — where the cache and scratch space are, how to mount — each
 * with the environment variable a CI system would rather set (oclif shows it in --help). The flag wins.
 */
export const cacheFlag = {
  cache: Flags.string({
    description: 'the cache of verified base images [default: ~/.cache/imagebuilder]',
    helpValue: 'DIR',
    env: 'IMAGEBUILDER_CACHE',
  }),
};

export const workDirFlag = {
  'work-dir': Flags.string({
    description: 'where work directories (overlays, mount points, downloads) go; needs room for what a build changes [default: the system temp dir]',
    helpValue: 'DIR',
    env: 'IMAGEBUILDER_WORK_DIR',
  }),
};

export const mountBackendFlag = {
  'mount-backend': Flags.string({ description: 'how to mount the image', options: ['auto', ...MOUNT_BACKEND_NAMES], default: 'auto', env: 'IMAGEBUILDER_MOUNT_BACKEND' }),
  untrusted: Flags.boolean({
    description: "the image comes from a source you do not trust: its filesystems are parsed inside libguestfs's appliance, not by this host's kernel (the guestmount backend: slower, see README Security)",
    env: 'IMAGEBUILDER_UNTRUSTED',
  }),
};

/** Where a build runs on this host: apply and matrix take these. */
export const hostBuildFlags = { ...cacheFlag, ...workDirFlag, ...mountBackendFlag };

/** --host-port: ports of this host's loopback guest commands may reach (parsed by parseHostPorts). */
export const hostPortFlag = {
  'host-port': Flags.string({ description: "a port of this host's loopback that guest commands may reach at their own 127.0.0.1 (a mirror served here); comma-separated or repeated. Nothing else of this host is reachable", env: 'IMAGEBUILDER_HOST_PORTS', multiple: true, helpValue: 'PORT' }),
};

/** --allow-network: the private networks guest commands may reach (parsed by parseAllowedNetworks). */
export const allowNetworkFlag = {
  'allow-network': Flags.string({
    description: 'a private network (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10, fc00::/7) guest commands may reach, as an address or CIDR (an internal mirror or proxy); comma-separated or repeated. The others are refused, but for the host\'s nameservers',
    env: 'IMAGEBUILDER_ALLOW_NETWORKS',
    multiple: true,
    helpValue: 'CIDR',
  }),
};

/** The backend the flags ask for: --untrusted means guestmount, and no other backend may be asked for beside it. */
export function mountBackendOf(flags: { 'mount-backend': string; untrusted?: boolean }): MountBackendName | 'auto' {
  const backend = flags['mount-backend'] as MountBackendName | 'auto';
  if (!flags.untrusted) return backend;
  if (backend !== 'auto' && backend !== 'guestmount') {
    throw new ImageBuilderError('BAD_INPUT', `--untrusted mounts the image through guestmount, and --mount-backend asks for ${backend}`, {
      hint: `drop --mount-backend ${backend} (or IMAGEBUILDER_MOUNT_BACKEND), or drop --untrusted for an image you trust`,
    });
  }
  return 'guestmount';
}

/**
 * Where this host keeps things, read once here: the flags (oclif has already read IMAGEBUILDER_CACHE and
 * IMAGEBUILDER_WORK_DIR into them), then XDG_CACHE_HOME and IMAGEBUILDER_RUN_DIR, which have no flag. The
 * library is only ever passed these; it reads no environment for them. The cache directory is made, or refused
 * when another user may have written it (ensureCacheDir), before anything in it is used.
 */
export function hostPaths(flags: { cache?: string; 'work-dir'?: string }, env: NodeJS.ProcessEnv = process.env): HostPaths {
  const paths = locateHostPaths(flags, env);
  ensureCacheDir(paths.cacheDir);
  return paths;
}

/** hostPaths without making or checking the cache directory: doctor reports what is wrong with it instead. */
export function locateHostPaths(flags: { cache?: string; 'work-dir'?: string }, env: NodeJS.ProcessEnv = process.env): HostPaths {
  return {
    // Absolute: the cache's check walks up from it; mount points and the release of what is mounted there compare
    // the work directory with the kernel's absolute paths.
    cacheDir: resolve(flags.cache ?? (env.XDG_CACHE_HOME ? join(env.XDG_CACHE_HOME, 'imagebuilder') : defaultCacheDir())),
    workDir: resolve(flags['work-dir'] ?? defaultWorkDir()),
    runDir: env.IMAGEBUILDER_RUN_DIR ?? DEFAULT_RUN_DIR,
  };
}
