import { createZypper } from '../pkg/zypper.js';
import { DBUS_MACHINE_ID, RPM_DB_ENVIRONMENT, type DistroFamily } from './types.js';

/** os-release IDs of the SUSE family (ID_LIKE of all of them says "suse"). */
export const SUSE_IDS = ['suse', 'opensuse', 'opensuse-leap', 'opensuse-tumbleweed', 'opensuse-slowroll', 'sles', 'sled', 'sle-micro'];

/** Rolling releases: Tumbleweed, Slowroll, and any that says it is like Tumbleweed. */
const isRolling = (osRelease: Record<string, string>) =>
  [osRelease.ID, ...(osRelease.ID_LIKE ?? '').split(/\s+/)].some((id) => id === 'opensuse-tumbleweed' || id === 'opensuse-slowroll');

/**
 * openSUSE and SLES: zypper over rpm. $releasever is the whole VERSION_ID (Leap 15.6 → 15.6), passed only
 * when the guest has no base product to tell it. No session files: scriptlets start services through
 * systemctl, which does nothing in a chroot.
 */
export function suseFamily(osRelease: Record<string, string>): DistroFamily {
  return {
    name: 'suse',
    packageManager: createZypper({ releasever: osRelease.VERSION_ID || undefined, rolling: isRolling(osRelease) }),
    packageDatabase: 'rpm',
    hygiene: {
      // libzypp's per-machine id, sent to SUSE's servers with every refresh.
      machineIdentity: [DBUS_MACHINE_ID, '/var/lib/zypp/AnonymousUniqueId'],
      packageLeftovers: RPM_DB_ENVIRONMENT,
    },
    sessionFiles: [],
  };
}
