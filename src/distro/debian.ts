import { createApt } from '../pkg/apt.js';
import { DBUS_MACHINE_ID, type DistroFamily } from './types.js';

/**
 * Debian and the distributions that say ID_LIKE=debian (Ubuntu): apt over dpkg. invoke-rc.d asks policy-rc.d
 * before a maintainer script starts a service; exit 101 means "action forbidden", so nothing starts.
 */
export function debianFamily(): DistroFamily {
  return {
    name: 'debian',
    packageManager: createApt(),
    packageDatabase: 'dpkg',
    hygiene: {
      machineIdentity: [DBUS_MACHINE_ID],
      // dpkg's database has no per-process leftovers; apt's caches are the package manager's (cleanCache).
      packageLeftovers: [],
    },
    sessionFiles: [{ path: '/usr/sbin/policy-rc.d', content: '#!/bin/sh\n# imagebuilder: no services start while building\nexit 101\n', mode: 0o755 }],
  };
}
