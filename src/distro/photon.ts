import { createDnf } from '../pkg/dnf.js';
import { DBUS_MACHINE_ID, RPM_DB_ENVIRONMENT, type DistroFamily } from './types.js';

/**
 * VMware Photon OS: tdnf over rpm (dnf's command line, a C implementation). $releasever is the whole VERSION_ID
 * (5.0), passed only when no release package (photon-release provides system-release) tells it. No session
 * files: scriptlets start services through systemctl, which does nothing in a chroot.
 */
export function photonFamily(osRelease: Record<string, string>): DistroFamily {
  return {
    name: 'photon',
    packageManager: createDnf({ command: 'tdnf', releasever: osRelease.VERSION_ID || undefined }),
    packageDatabase: 'rpm',
    hygiene: { machineIdentity: [DBUS_MACHINE_ID], packageLeftovers: RPM_DB_ENVIRONMENT },
    sessionFiles: [],
  };
}
