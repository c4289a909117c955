import { ImageBuilderError } from '../util/errors.js';
import { debianFamily } from './debian.js';
import { photonFamily } from './photon.js';
import { REDHAT_IDS, redhatFamily } from './redhat.js';
import { SUSE_IDS, suseFamily } from './suse.js';
import { FAMILY_NAMES, type Distro, type DistroFamily } from './types.js';

export type { Distro, DistroFamily, FamilyName, Hygiene } from './types.js';
export { FAMILY_NAMES } from './types.js';
export { releaseverFor, rpmManagerFor } from './redhat.js';

type FamilyFactory = (osRelease: Record<string, string>) => DistroFamily;

/** os-release IDs (ID, or one of ID_LIKE) → the family of such a guest. Ubuntu is found by ID_LIKE=debian too. */
const FAMILIES: Record<string, FamilyFactory> = {
  debian: debianFamily,
  ubuntu: debianFamily,
  ...Object.fromEntries(REDHAT_IDS.map((id) => [id, redhatFamily])),
  ...Object.fromEntries(SUSE_IDS.map((id) => [id, suseFamily])),
  photon: photonFamily,
};

/** What a guest's os-release says about itself, for messages about a distribution we do not know. */
export function describeOsRelease(distro: Pick<Distro, 'osRelease'>): string {
  const { ID, ID_LIKE, VERSION_ID } = distro.osRelease;
  return `ID=${ID ?? '(none)'} ID_LIKE=${ID_LIKE ? JSON.stringify(ID_LIKE) : '(none)'} VERSION_ID=${VERSION_ID ?? '(none)'}`;
}

/** The hint every "unknown distribution" error ends with. */
export function unknownDistroHint(): string {
  return `supported families: ${FAMILY_NAMES.join(', ')} (ID or ID_LIKE in /etc/os-release: ${Object.keys(FAMILIES).join(', ')}); on another distribution use a \`run\` step with the guest's own tools instead`;
}

export function requireFamily(distro: Distro, what: string): DistroFamily {
  if (distro.family) return distro.family;
  throw new ImageBuilderError('STEP_FAILED', `${what} is not supported on ${distro.prettyName ?? distro.id}: unknown distribution family (${describeOsRelease(distro)})`, {
    hint: unknownDistroHint(),
  });
}

/**
 * Picks the family from ID, then ID_LIKE (os-release(5)): Ubuntu says ID_LIKE=debian, Rocky "rhel centos fedora",
 * openSUSE Leap "suse opensuse". Each guest gets a package manager made for it (yum or dnf, its release version).
 */
export function detectDistro(osRelease: Record<string, string>): Distro {
  const ids = [osRelease.ID, ...(osRelease.ID_LIKE ?? '').split(/\s+/)].filter(Boolean);
  const id = ids.find((candidate) => Object.hasOwn(FAMILIES, candidate));
  const family = id ? FAMILIES[id](osRelease) : undefined;
  return { id: osRelease.ID, versionId: osRelease.VERSION_ID, prettyName: osRelease.PRETTY_NAME, osRelease, family };
}
