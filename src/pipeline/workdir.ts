import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { CleanupStack } from '../util/cleanup.js';
import type { Logger } from '../util/log.js';
import { mountsUnder } from '../util/mounts.js';
import { workDirParent } from '../util/paths.js';
import { killAll, processesMentioning } from '../util/processes.js';

/**
 * A private work directory for one build (overlay, export file, mount points). Removed on release unless
 * kept — and never while anything is still mounted inside it, which would delete the guest's files.
 */
export async function createWorkDir(cleanup: CleanupStack, log: Logger, options: { parent?: string; keep?: boolean } = {}): Promise<string> {
  const parent = options.parent ?? workDirParent();
  const dir = await mkdtemp(join(parent, 'imagebuilder-'));
  cleanup.push(`work directory ${dir}`, async () => {
    if (options.keep) {
      log.info(`work directory kept: ${dir}`);
      return;
    }
    // Safety net for helpers that outlived their parent (a libguestfs appliance whose guestmount was killed).
    await killAll(() => processesMentioning(dir), log, 'helper process(es) still using the work directory');
    const busy = await mountsUnder(dir);
    if (busy.length) {
      log.error(`not removing ${dir}: still mounted there: ${busy.join(' ')}`);
      return;
    }
    await rm(dir, { recursive: true, force: true });
  });
  return dir;
}
