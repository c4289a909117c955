import { chown, lstat, readFile, readlink, rm, symlink, writeFile, chmod, lchown } from 'node:fs/promises';
import { execa } from 'execa';
import { basename, dirname, join } from 'node:path';
import { resolveInRoot } from '../util/fs.js';

/**
 * Puts a file in the guest for the length of a session and then puts back exactly what was there:
 * a regular file (content, mode, owner, times), a symlink (same target, even dangling), or nothing.
 * Returns the restore function.
 */
export async function replaceTemporarily(root: string, guestPath: string, content: string, mode = 0o644): Promise<() => Promise<void>> {
  const hostPath = join(root, guestPath);
  const stat = await lstat(hostPath, { bigint: true }).catch(() => undefined);
  const saved = !stat
    ? ({ kind: 'absent' } as const)
    : stat.isSymbolicLink()
      ? ({ kind: 'symlink', target: await readlink(hostPath), uid: Number(stat.uid), gid: Number(stat.gid) } as const)
      : ({
          kind: 'file',
          content: await readFile(hostPath),
          mode: Number(stat.mode) & 0o7777,
          uid: Number(stat.uid),
          gid: Number(stat.gid),
          atimeNs: stat.atimeNs,
          mtimeNs: stat.mtimeNs,
        } as const);
  await rm(hostPath, { force: true });
  await writeFile(hostPath, content, { mode });
  await chmod(hostPath, mode);
  return async () => {
    // Resolved again: a step may have replaced a parent directory with a symlink, which must not lead out.
    const hostPath = join(root, await resolveInRoot(root, dirname(guestPath)), basename(guestPath));
    await rm(hostPath, { force: true });
    if (saved.kind === 'symlink') {
      await symlink(saved.target, hostPath);
      await lchown(hostPath, saved.uid, saved.gid);
    } else if (saved.kind === 'file') {
      await writeFile(hostPath, saved.content, { mode: saved.mode });
      await chmod(hostPath, saved.mode);
      await chown(hostPath, saved.uid, saved.gid);
      // touch sets nanoseconds exactly; Node's utimes goes through a double and libuv keeps only microseconds.
      const at = (ns: bigint) => `@${ns / 1_000_000_000n}.${String(ns % 1_000_000_000n).padStart(9, '0')}`;
      await execa('touch', ['-a', '-d', at(saved.atimeNs), '--', hostPath]);
      await execa('touch', ['-m', '-d', at(saved.mtimeNs), '--', hostPath]);
    }
  };
}
