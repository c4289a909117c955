import { writeGuestFileFromHost } from '../util/guest-fs.js';
import { IN_IMAGE_BOM_PATH } from '../util/paths.js';

export { IN_IMAGE_BOM_PATH };

/** Inside a work image (`apply --phases 0,1`): what phase 1 did, for `export` (which removes it) and `inspect`. */
export const WORK_RECORD_PATH = '/usr/share/imagebuilder/work.json';

export { buildTime } from '../util/time.js';

/**
 * Writes the BOM into the mounted guest (0644, dated at the build time). It is written before the output
 * image exists, so it cannot hold the output's sha256: that is in the BOM beside the image.
 */
export async function writeBomIntoImage(root: string, bom: object, time: Date): Promise<void> {
  await writeGuestFileFromHost(root, IN_IMAGE_BOM_PATH, `${JSON.stringify(bom, null, 2)}\n`, { mode: 0o644, uid: 0, gid: 0, time });
}
