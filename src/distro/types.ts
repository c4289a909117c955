import type { SessionFile } from '../chroot/session.js';
import type { PackageManager } from '../pkg/types.js';

/** The family names, as `when: { family: … }` uses them. */
export const FAMILY_NAMES = ['debian', 'redhat', 'suse', 'photon'] as const;
export type FamilyName = (typeof FAMILY_NAMES)[number];

/** What sysprep removes besides what every Linux guest has (/etc/machine-id, /etc/ssh/ssh_host_*, /var/log). */
export interface Hygiene {
  /**
   * Files that identify one machine besides /etc/machine-id, removed by sysprep's machine-id operation (a
   * symlink stays: Debian links /var/lib/dbus/machine-id to /etc/machine-id). Globs allowed.
   */
  machineIdentity: string[];
  /** What the package database leaves behind that belongs to the build, not the image (sysprep package-cache). Globs allowed. */
  packageLeftovers: string[];
}

/**
 * What differs per distro family: its package manager and package database, what sysprep removes, and the
 * files that keep services from starting in a chroot.
 */
export interface DistroFamily {
  readonly name: FamilyName;
  readonly packageManager: PackageManager;
  /** Which database lists the installed packages (and so the BOM's package type). */
  readonly packageDatabase: 'dpkg' | 'rpm';
  readonly hygiene: Hygiene;
  readonly sessionFiles: SessionFile[];
}

export interface Distro {
  id: string;
  versionId?: string;
  prettyName?: string;
  osRelease: Record<string, string>;
  /** Undefined for a distribution we do not know: `run` and `file` steps still work there. */
  family?: DistroFamily;
}

/** D-Bus keeps its own copy of the machine id on every family (or a link to /etc/machine-id). */
export const DBUS_MACHINE_ID = '/var/lib/dbus/machine-id';

/**
 * rpm's Berkeley DB environment (__db.001 …): the processes that had the database open during the build, not
 * its content (virt-sysprep's rpm-db); sqlite and ndb databases leave none.
 */
export const RPM_DB_ENVIRONMENT = ['/var/lib/rpm/__db.*', '/usr/lib/sysimage/rpm/__db.*'];
