import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * Where imagebuilder keeps things on this host. The CLI fills these in once, from its flags and the
 * environment (cli/host-flags.ts hostPaths); the library only ever gets them passed, and falls back to these
 * defaults, never to the environment.
 */
export interface HostPaths {
  /** What outlives one build: verified base images, the step cache's layers, the KVM verdict. */
  cacheDir: string;
  /** Where builds make their private work directories. */
  workDir: string;
  /** Where running builds register themselves (root-only, on tmpfs: gone with the processes at reboot). */
  runDir: string;
}

export const DEFAULT_RUN_DIR = '/run/imagebuilder';

export function defaultCacheDir(): string {
  return join(homedir(), '.cache', 'imagebuilder');
}

export function defaultWorkDir(): string {
  return tmpdir();
}

/** Where a built image says what it is made of (its BOM, written by apply); read by the node suite's checks too. */
export const IN_IMAGE_BOM_PATH = '/usr/share/imagebuilder/bom.json';
