import type { SessionFile } from '../chroot/session.js';
import { createApt } from '../pkg/apt.js';
import { createDnf, type RpmManagerCommand } from '../pkg/dnf.js';
import type { PackageManager } from '../pkg/types.js';
import { ImageBuilderError } from '../util/errors.js';

/** What differs per distro family: its package manager and how services are kept from starting in a chroot. */
export interface DistroFamily {
  readonly name: string;
  readonly packageManager: PackageManager;
  readonly sessionFiles: SessionFile[];
}

export const debianFamily: DistroFamily = {
  name: 'debian',
  packageManager: createApt(),
  // invoke-rc.d asks policy-rc.d; exit 101 means "action forbidden", so maintainer scripts start nothing.
  sessionFiles: [{ path: '/usr/sbin/policy-rc.d', content: '#!/bin/sh\n# imagebuilder: no services start while building\nexit 101\n', mode: 0o755 }],
};

/** os-release IDs whose VERSION_ID follows Enterprise Linux's numbering (7.9, 8.10, 9.4). */
const ENTERPRISE_LINUX = ['rhel', 'centos', 'rocky', 'almalinux', 'ol'];

const major = (versionId: string | undefined) => Number.parseInt(versionId ?? '', 10);

/**
 * yum or dnf, by the guest's own ID and VERSION_ID: Amazon Linux before 2023 (2, and 2018.03) and Enterprise
 * Linux 7 and older (CentOS, RHEL, Oracle Linux …; also a derivative that says ID_LIKE="rhel" or "centos")
 * have yum; Fedora has had dnf since 22; everything newer has dnf. Without a VERSION_ID, dnf.
 */
export function rpmManagerFor(osRelease: Record<string, string>): RpmManagerCommand {
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
    sessionFiles: [],
  };
}

/** os-release IDs (ID, or one of ID_LIKE) → the family of such a guest. */
const FAMILIES: Record<string, (osRelease: Record<string, string>) => DistroFamily> = {
  debian: () => debianFamily,
  ...Object.fromEntries(['fedora', 'rhel', 'centos', 'rocky', 'almalinux', 'ol', 'amzn'].map((id) => [id, redhatFamily])),
};

/** The family names, as `when: { family: … }` uses them. */
export const FAMILY_NAMES = ['debian', 'redhat'];

export interface Distro {
  id: string;
  versionId?: string;
  prettyName?: string;
  osRelease: Record<string, string>;
  /** Undefined for a distribution we do not know: `run` and `file` steps still work there. */
  family?: DistroFamily;
}

export function requireFamily(distro: Distro, what: string): DistroFamily {
  if (distro.family) return distro.family;
  throw new ImageBuilderError('STEP_FAILED', `${what} is not supported on ${distro.prettyName ?? distro.id}: unknown distribution family (ID=${distro.id ?? '?'} ID_LIKE=${distro.osRelease.ID_LIKE ?? ''})`, {
    hint: `supported families: ${FAMILY_NAMES.join(', ')}; use a \`run\` step with the guest's own tools instead`,
  });
}

/**
 * Picks the family from ID, then ID_LIKE (os-release(5)): Ubuntu says ID_LIKE=debian, Rocky "rhel centos fedora".
 * A RedHat-family guest gets a package manager made for it (yum or dnf, its release version).
 */
export function detectDistro(osRelease: Record<string, string>): Distro {
  const ids = [osRelease.ID, ...(osRelease.ID_LIKE ?? '').split(/\s+/)].filter(Boolean);
  const id = ids.find((candidate) => Object.hasOwn(FAMILIES, candidate));
  const family = id ? FAMILIES[id](osRelease) : undefined;
  return { id: osRelease.ID, versionId: osRelease.VERSION_ID, prettyName: osRelease.PRETTY_NAME, osRelease, family };
}
