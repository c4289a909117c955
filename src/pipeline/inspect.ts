import type { BomStep } from '../util/step-record.js';
import { WORK_RECORD_PATH } from '../bom/in-image.js';
import { collectInventory, type Inventory } from '../bom/inventory.js';
import { GUEST_READ_LIMITS, readGuestText } from '../util/guest-fs.js';
import type { Phase1Bom } from './phase1.js';
import type { MountBackendName } from '../mount/backend.js';
import { mountContext, startBuild, withResources, type BuildOptions } from './context.js';
import { openGuest } from './guest.js';
import { verifyForBuild, type VerifiedImage } from './verify.js';
import type { DiskImageOptions } from '../fetch/image-source.js';
import { readWorkRecord } from './work-record.js';
import type { Logger } from '../util/log.js';

export interface InspectOptions extends Omit<BuildOptions, 'keepWorkDir' | 'onEvent'> {
  diskImage: string;
  image?: DiskImageOptions;
  mountBackend?: MountBackendName | 'auto';
}

export interface InspectResult {
  image: Pick<VerifiedImage, 'path' | 'format' | 'sha256'>;
  inventory: Inventory;
  /** A work image (`apply --phases 0,1`) says what it was made from and which steps it holds. */
  work?: { input: { sha256: string; url?: string; path: string }; recipe: { name: string; sha256: string; variables: Record<string, string> }; steps: BomStep[] };
}

/** The inventory of any image, built here or not: mounted read-only (through a throw-away overlay), never written. */
export async function inspect(options: InspectOptions): Promise<InspectResult> {
  const start = startBuild(options);
  const image = await verifyForBuild(start, options.diskImage, options.image);
  return withResources(start, options, async (context) => {
    const { layout, distro } = await openGuest(mountContext(context), image, { backend: options.mountBackend ?? 'auto', readOnly: true });
    const inventory = await collectInventory(layout.root, distro, context.log);
    const recordText = await readGuestText(layout.root, WORK_RECORD_PATH, GUEST_READ_LIMITS.packageStatus);
    const record = recordText === undefined ? undefined : workRecordOf(recordText, context.log);
    const work = record && { input: { sha256: record.input.sha256, path: record.input.path, ...(record.input.url ? { url: record.input.url } : {}) }, recipe: { name: record.recipe.name, sha256: record.recipe.sha256, variables: record.recipe.variables }, steps: record.steps };
    return { image: { path: image.path, format: image.format, sha256: image.sha256 }, inventory, ...(work ? { work } : {}) };
  });
}

/** A work record as the guest holds it (hostile data): shown only when it is one imagebuilder writes, else said and left out. */
function workRecordOf(text: string, log: Logger): Phase1Bom | undefined {
  const read = readWorkRecord(text);
  if ('record' in read) return read.record;
  log.warn(`${WORK_RECORD_PATH} ${read.problem}: not shown`);
  return undefined;
}
