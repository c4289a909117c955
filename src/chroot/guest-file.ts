import { moveAsideInGuest, removeGuestFile, writeGuestFileFromHost } from '../util/guest-fs.js';

/**
 * Puts a file in the guest for the length of a session and then puts back exactly what was there. What was
 * there is moved aside within its own directory (renamed, never opened: a FIFO, a device node or a symlink
 * planted at that name is neither read nor followed, and a regular file keeps its inode, owner, times, extended
 * attributes and SELinux label) and renamed back on restore. Returns the restore function.
 */
export async function replaceTemporarily(root: string, guestPath: string, content: string, mode = 0o644): Promise<() => Promise<void>> {
  const saved = await moveAsideInGuest(root, guestPath);
  try {
    await writeGuestFileFromHost(root, guestPath, content, { mode, uid: 0, gid: 0 });
  } catch (error) {
    await saved?.restore();
    throw error;
  }
  return async () => {
    if (saved) await saved.restore();
    // Nothing was there before the session: what is there now goes.
    else await removeGuestFile(root, guestPath);
  };
}
