import { createHash } from 'node:crypto';
import type { ChrootSession } from '../chroot/session.js';
import { readGuestDir, walkGuestTree } from '../util/guest-fs.js';

/** A package manager's configuration in the guest: every entry under `guestPaths`, by name, type, size and ctime. */
export async function guestConfigSignature(root: string, guestPaths: readonly string[]): Promise<string> {
  const hash = createHash('sha256');
  for (const top of guestPaths) {
    await walkGuestTree(root, top, (guestPath, stat) => hash.update(`${guestPath}\0${stat.mode}\0${stat.size}\0${stat.ctimeNs}\n`));
  }
  return hash.digest('hex');
}

/** Whether any of a manager's cache directories holds anything (a step may have emptied them). */
export const anyEntryIn = (guestDirs: readonly string[]) => async (root: string): Promise<boolean> =>
  (await Promise.all(guestDirs.map((dir) => readGuestDir(root, dir)))).some((names) => Boolean(names?.length));

/**
 * When a package manager's repository metadata was last fetched (apt-get update, dnf --refresh, zypper refresh):
 * once per build, before its first transaction, and again when the manager's configuration changed since (a run
 * or file step adding a repository or a key, a package shipping configuration). By the guest's root (one per
 * build): with the step cache each step has a session of its own and finds the metadata an earlier one fetched.
 * A bundle's metadata lives in the session's /run: once per session. A repository step or a cleaned cache
 * forgets it; `stillThere` says whether what was fetched is still in the guest (a step may have removed it).
 */
export function metadataFreshness(configPaths: readonly string[], stillThere: (root: string) => Promise<boolean> = async () => true) {
  const bySession = new WeakMap<ChrootSession, string>();
  const byGuest = new Map<string, string>();
  return {
    async upToDate(session: ChrootSession, perSession = false): Promise<boolean> {
      if (perSession) return bySession.has(session);
      const configuration = await guestConfigSignature(session.root, configPaths);
      if (bySession.get(session) === configuration) return true;
      return byGuest.get(session.root) === configuration && (await stillThere(session.root));
    },
    async fetched(session: ChrootSession, perSession = false): Promise<void> {
      const configuration = perSession ? '' : await guestConfigSignature(session.root, configPaths);
      bySession.set(session, configuration);
      if (!perSession) byGuest.set(session.root, configuration);
    },
    forget(session: ChrootSession): void {
      byGuest.delete(session.root);
      bySession.delete(session);
    },
  };
}
