import { statSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { noteHolding } from '../util/build-record.js';
import { othersMayRename } from '../util/fs.js';
import { ImageBuilderError } from '../util/errors.js';
import type { BuildContext } from './context.js';

/**
 * Where an output is written before it takes its name: a directory of our own (mkdtemp: 0700, a random name) in
 * the output's directory, so the rename is within one filesystem. Outputs often go to a shared directory (/tmp,
 * a CI workspace): a name of ours there that others can predict (`.out.qcow2.partial-<pid>`, the pid in `ps`)
 * could be a link they planted to /etc/shadow or root's authorized_keys before we write it, which qemu-img, tar
 * and writeFile would have followed, and the kernel's protected_symlinks is not on everywhere (it is off on these
 * machines). Inside our own directory nobody else can plant anything, and in a directory others may write only
 * with the sticky bit, nobody else can move ours away. A directory every user may write without it is refused.
 */
const staging = new WeakMap<BuildContext, Map<string, Promise<string>>>();

/**
 * Refuses, before a build starts, an output directory that is missing, not a directory, or writable by every user
 * without the sticky bit (checked again when the staging directory is made).
 */
export function checkOutputDirectory(outputDir: string): void {
  const info = statSync(outputDir, { throwIfNoEntry: false });
  if (!info?.isDirectory()) {
    throw new ImageBuilderError('BAD_INPUT', `the output's directory ${outputDir} ${info ? 'is not a directory' : 'does not exist'}`, { hint: 'create it, or name an output in an existing directory (--output)' });
  }
  if (othersMayRename(info.mode)) {
    throw new ImageBuilderError('BAD_INPUT', `refusing to write into ${outputDir}: every user may write it and it has no sticky bit, so another could replace what is written there`, {
      hint: `write the output elsewhere, or chmod +t ${outputDir}`,
    });
  }
}

/** The staging directory of `outputDir` for this build: made once, noted for the reaper, removed at the end. */
function stagingDir(context: BuildContext, outputDir: string): Promise<string> {
  const dirs = staging.get(context) ?? new Map<string, Promise<string>>();
  staging.set(context, dirs);
  let made = dirs.get(outputDir);
  if (!made) {
    made = (async () => {
      checkOutputDirectory(outputDir);
      const dir = await mkdtemp(join(outputDir, `.imagebuilder-${process.pid}-`));
      context.cleanup.push(`staging directory ${dir}`, () => rm(dir, { recursive: true, force: true }));
      // Outside the work directory: noted in the build's record, so a build killed meanwhile leaves nothing.
      await noteHolding(context.workDir, { kind: 'file', path: dir });
      return dir;
    })();
    dirs.set(outputDir, made);
  }
  return made;
}

/** Where `path` is written before it takes its name (renamed there): in the staging directory beside it. */
export async function stagedPath(context: BuildContext, path: string): Promise<string> {
  return join(await stagingDir(context, dirname(path)), basename(path));
}
