import type { SessionFile } from '../chroot/session.js';
import { createApt } from '../pkg/apt.js';
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

const FAMILIES: Record<string, DistroFamily> = { debian: debianFamily };

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
    hint: `supported families: ${Object.keys(FAMILIES).join(', ')}; use a \`run\` step with the guest's own tools instead`,
  });
}

/** Picks the family from ID, then ID_LIKE (os-release(5)): Ubuntu says ID_LIKE=debian. */
export function detectDistro(osRelease: Record<string, string>): Distro {
  const ids = [osRelease.ID, ...(osRelease.ID_LIKE ?? '').split(/\s+/)].filter(Boolean);
  const family = ids.map((id) => FAMILIES[id]).find(Boolean);
  return { id: osRelease.ID, versionId: osRelease.VERSION_ID, prettyName: osRelease.PRETTY_NAME, osRelease, family };
}
