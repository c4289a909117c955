import { createDnf, type RpmManagerCommand } from '../pkg/dnf.js';
import { DBUS_MACHINE_ID, RPM_DB_ENVIRONMENT, type DistroFamily } from './types.js';

/** os-release IDs of the RedHat family: Fedora, RHEL and its rebuilds, CentOS (7 and Stream), Oracle Linux, Amazon Linux. */
export const REDHAT_IDS = ['fedora', 'rhel', 'centos', 'rocky', 'almalinux', 'ol', 'amzn'];

/** os-release IDs whose VERSION_ID follows Enterprise Linux's numbering (7.9, 8.10, 9.4). */
const ENTERPRISE_LINUX = ['rhel', 'centos', 'rocky', 'almalinux', 'ol'];

const major = (versionId: string | undefined) => Number.parseInt(versionId ?? '', 10);

/**
 * yum or dnf, by the guest's own ID and VERSION_ID: Amazon Linux before 2023 (2, and 2018.03) and Enterprise
 * Linux 7 and older (CentOS, RHEL, Oracle Linux …; also a derivative that says ID_LIKE="rhel" or "centos")
 * have yum; Fedora has had dnf since 22; everything newer has dnf. Without a VERSION_ID, dnf.
 */
export function rpmManagerFor(osRelease: Record<string, string>): Exclude<RpmManagerCommand, 'tdnf'> {
  const id = osRelease.ID;
  const version = major(osRelease.VERSION_ID);
  if (Number.isNaN(version)) return 'dnf';
  if (id === 'amzn') return version < 2023 ? 'yum' : 'dnf';
  if (id === 'fedora') return version < 22 ? 'yum' : 'dnf';
  const like = (osRelease.ID_LIKE ?? '').split(/\s+/);
  const enterprise = ENTERPRISE_LINUX.includes(id) || like.includes('rhel') || like.includes('centos');
  return enterprise && version <= 7 ? 'yum' : 'dnf';
}

/**
 * The release version dnf would substitute for $releasever, from os-release, for a guest whose rpm database
 * cannot tell it: Enterprise Linux uses the major version (RHEL 9.4 → 9), Fedora and Amazon Linux the whole
 * VERSION_ID (40, 2, 2023).
 */
export function releaseverFor(osRelease: Record<string, string>): string | undefined {
  const versionId = osRelease.VERSION_ID;
  if (!versionId) return undefined;
  const like = (osRelease.ID_LIKE ?? '').split(/\s+/);
  const enterprise = ENTERPRISE_LINUX.includes(osRelease.ID) || (!['fedora', 'amzn'].includes(osRelease.ID) && (like.includes('rhel') || like.includes('centos')));
  return enterprise ? versionId.split('.')[0] : versionId;
}

/**
 * The RedHat family, for one guest: its package manager depends on its release (yum or dnf) and knows the
 * release version to fall back on. No session files: RPM scriptlets start services through systemctl, which
 * does nothing in a chroot (and SYSTEMD_OFFLINE=1); there is no policy-rc.d to ask.
 */
export function redhatFamily(osRelease: Record<string, string>): DistroFamily {
  return {
    name: 'redhat',
    packageManager: createDnf({ command: rpmManagerFor(osRelease), releasever: releaseverFor(osRelease) }),
    packageDatabase: 'rpm',
    hygiene: {
      // yum 3 (EL 7, Amazon Linux 2) keeps a random id it sends to mirrors (virt-sysprep's yum-uuid).
      machineIdentity: [DBUS_MACHINE_ID, '/var/lib/yum/uuid'],
      packageLeftovers: RPM_DB_ENVIRONMENT,
    },
    sessionFiles: [],
  };
}
