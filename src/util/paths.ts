import { homedir } from 'node:os';
import { join } from 'node:path';

/** Where imagebuilder keeps what outlives one build: $IMAGEBUILDER_CACHE, else ~/.cache/imagebuilder. */
export function cacheDir(): string {
  return process.env.IMAGEBUILDER_CACHE ?? join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'imagebuilder');
}
