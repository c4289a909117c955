import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';

/** Where imagebuilder keeps what outlives one build: $IMAGEBUILDER_CACHE, else ~/.cache/imagebuilder. */
export function cacheDir(): string {
  return process.env.IMAGEBUILDER_CACHE ?? join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'imagebuilder');
}

/** Where builds make their private work directories: $IMAGEBUILDER_WORK_DIR, else the system temp dir. */
export function workDirParent(): string {
  return process.env.IMAGEBUILDER_WORK_DIR ?? tmpdir();
}

/** Where running builds register themselves (root-only, on tmpfs: gone with the processes at reboot): $IMAGEBUILDER_RUN_DIR, else /run/imagebuilder. */
export function runDir(): string {
  return process.env.IMAGEBUILDER_RUN_DIR ?? '/run/imagebuilder';
}
