import { chmod, mkdir, rename, utimes, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { resolveInRoot } from '../util/fs.js';

/** Where a running node finds what it is made of. */
export const IN_IMAGE_BOM_PATH = '/usr/share/imagebuilder/bom.json';

/** Inside a work image (`apply --phases 0,1`): what phase 1 did, for `export` (which removes it) and `inspect`. */
export const WORK_RECORD_PATH = '/usr/share/imagebuilder/work.json';

export { buildTime } from '../util/time.js';

/**
 * Writes the BOM into the mounted guest (0644, dated at the build time). It is written before the output
 * image exists, so it cannot hold the output's sha256: that is in the BOM beside the image.
 */
export async function writeBomIntoImage(root: string, bom: object, time: Date): Promise<void> {
  const parent = join(root, await resolveInRoot(root, dirname(IN_IMAGE_BOM_PATH)));
  await mkdir(parent, { recursive: true, mode: 0o755 });
  const target = join(parent, 'bom.json');
  const partial = `${target}.imagebuilder-new`;
  await writeFile(partial, `${JSON.stringify(bom, null, 2)}\n`);
  await chmod(partial, 0o644);
  await utimes(partial, time, time);
  await rename(partial, target);
}
