import type { ChrootSession } from '../chroot/session.js';
import { guestTreeState, readGuestDir } from '../util/guest-fs.js';

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
  // The manager's configuration in the guest: every entry under configPaths, by name, type, size and ctime.
  const configuration = async (root: string) => (await guestTreeState(root, configPaths)).digest;
  const bySession = new WeakMap<ChrootSession, string>();
  const byGuest = new Map<string, string>();
  return {
    async upToDate(session: ChrootSession, perSession = false): Promise<boolean> {
      if (perSession) return bySession.has(session);
      const now = await configuration(session.root);
      if (bySession.get(session) === now) return true;
      return byGuest.get(session.root) === now && (await stillThere(session.root));
    },
    async fetched(session: ChrootSession, perSession = false): Promise<void> {
      const now = perSession ? '' : await configuration(session.root);
      bySession.set(session, now);
      if (!perSession) byGuest.set(session.root, now);
    },
    forget(session: ChrootSession): void {
      byGuest.delete(session.root);
      bySession.delete(session);
    },
  };
}
