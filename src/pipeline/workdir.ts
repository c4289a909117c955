import { randomBytes } from 'node:crypto';
import { mkdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { reapDeadBuilds, WORK_DIR_PREFIX } from '../host/reap.js';
import { currentOwner, RECORD_FILE, registerBuild, unregisterBuild, writeRecord } from '../util/build-record.js';
import type { CleanupStack } from '../util/cleanup.js';
import { errorMessage, ImageBuilderError } from '../util/errors.js';
import { execRunner, type Runner } from '../util/exec.js';
import { othersMayRename } from '../util/fs.js';
import type { Logger } from '../util/log.js';
import { mountsUnder } from '../util/mounts.js';
import { defaultWorkDir } from '../util/paths.js';
import { killAll, processesMentioning } from '../util/processes.js';

/**
 * A private work directory for one build (overlay, export file, mount points). Removed on release unless
 * kept — and never while anything is still mounted inside it, which would delete the guest's files.
 *
 * First, what builds killed with SIGKILL left behind is released (never what a live build holds). Then the
 * directory is registered before it exists, and carries the build's record (pid, start time, holdings), so that
 * if this build is killed the same way, the next one (or `imagebuilder cleanup`) releases what it held.
 */
export async function createWorkDir(cleanup: CleanupStack, log: Logger, options: { parent?: string; keep?: boolean; run?: Runner; runDir?: string } = {}): Promise<string> {
  const parent = options.parent ?? defaultWorkDir();
  const { runDir } = options;
  // Everything a build writes by path goes in its work directory: in a parent every user may write without the
  // sticky bit, another could rename it away and put a tree of links in its place.
  const parentInfo = await stat(parent).catch(() => undefined);
  if (parentInfo && othersMayRename(parentInfo.mode)) {
    throw new ImageBuilderError('BAD_INPUT', `refusing to make a work directory in ${parent}: every user may write it and it has no sticky bit, so another could replace the work directory`, {
      hint: `give a directory only this user may write with --work-dir or IMAGEBUILDER_WORK_DIR, or chmod +t ${parent}`,
    });
  }
  await reapDeadBuilds({ run: options.run ?? execRunner, log, workDirParents: [parent], runDir }).catch((error: unknown) => {
    log.warn(`could not look for builds killed earlier: ${errorMessage(error)} (imagebuilder cleanup tries again)`);
  });
  const id = randomBytes(8).toString('hex');
  const dir = join(parent, `${WORK_DIR_PREFIX}${id}`);
  const owner = currentOwner();
  await registerBuild({ id, workDir: dir, ...owner }, runDir).catch((error: unknown) => {
    // Not root (a library caller's tests): the build runs; its record alone lets `cleanup --work-dir` find it.
    log.debug(`not registered for reaping: ${errorMessage(error)}`);
  });
  await mkdir(dir, { mode: 0o700 }).catch(async (error: unknown) => {
    await unregisterBuild(id, runDir);
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') {
      throw new ImageBuilderError('BAD_INPUT', `the work directory's parent ${parent} is not a directory (${code === 'ENOENT' ? 'it does not exist' : 'a part of its path is a file'})`, {
        hint: code === 'ENOENT' ? `create it first (mkdir -p ${parent}), or give another with --work-dir or IMAGEBUILDER_WORK_DIR` : 'give a directory with --work-dir or IMAGEBUILDER_WORK_DIR',
      });
    }
    throw error;
  });
  cleanup.push(`work directory ${dir}`, async () => {
    if (options.keep) {
      log.info(`work directory kept: ${dir}`);
      // Kept on purpose: no reaper may take it for a dead build's.
      await rm(join(dir, RECORD_FILE), { force: true });
      await unregisterBuild(id, runDir);
      return;
    }
    // Safety net for helpers that outlived their parent (a libguestfs appliance whose guestmount was killed).
    await killAll(() => processesMentioning(dir), log, 'helper process(es) still using the work directory');
    const busy = await mountsUnder(dir);
    if (busy.length) {
      // Still registered: `imagebuilder cleanup` retries once this process is gone.
      log.error(`not removing ${dir}: still mounted there: ${busy.join(' ')} (imagebuilder cleanup retries when this build has exited)`);
      return;
    }
    await rm(dir, { recursive: true, force: true });
    await unregisterBuild(id, runDir);
  });
  const command = process.argv.slice(1).join(' ');
  await writeRecord({ id, workDir: dir, ...owner, command, createdAt: new Date().toISOString(), keep: !!options.keep, holdings: [] });
  return dir;
}
