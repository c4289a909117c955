import { chown, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ARCHITECTURE_PROBES, programArchitecture } from '../util/architecture.js';
import { ImageBuilderError } from '../util/errors.js';
import { execRunner, type Runner } from '../util/exec.js';
import { resolveInRoot, which } from '../util/fs.js';
import { GUEST_READ_LIMITS, readGuestDir, readGuestFile, statGuest } from '../util/guest-fs.js';
import { withBoxUid } from '../util/box-uid.js';
import type { Logger } from '../util/log.js';
import { unprivilegedCommand } from '../util/unprivileged.js';
import type { InstalledPackage } from './types.js';

/**
 * Reading an RPM guest's package database from the build host, for the BOM. Nothing here runs inside the guest:
 * the BOM is read before the chroot session opens and after it closes (as apt's reads /var/lib/dpkg/status).
 */

/**
 * Where rpm keeps its database, newest convention first: /usr/lib/sysimage/rpm (Fedora 36+, RHEL 10, openSUSE;
 * /var/lib/rpm is then a symlink to it), /var/lib/rpm (RHEL 7–9, CentOS, Amazon Linux). Guest paths.
 */
export const RPM_DB_PATHS = ['/usr/lib/sysimage/rpm', '/var/lib/rpm'];

/** The database file that says which backend wrote it; the host's rpm is told to read that backend. */
const BACKENDS: { file: string; backend: string }[] = [
  { file: 'rpmdb.sqlite', backend: 'sqlite' }, // rpm 4.16+: Fedora 33+, RHEL 9, Amazon Linux 2023
  { file: 'Packages', backend: 'bdb_ro' }, // Berkeley DB: RHEL/CentOS 7 and 8, Amazon Linux 2 (read-only support in rpm 4.16+)
  { file: 'Packages.db', backend: 'ndb' }, // rpm's own format: openSUSE, SLES 15
];

export interface RpmDatabase {
  /** Guest path of the database directory (symlinks resolved inside the guest). */
  guestPath: string;
  backend: string;
}

/** Finds the guest's rpm database: the first of RPM_DB_PATHS that holds a database file. */
export async function findRpmDatabase(root: string): Promise<RpmDatabase | undefined> {
  for (const candidate of RPM_DB_PATHS) {
    const guestPath = await resolveInRoot(root, candidate);
    for (const { file, backend } of BACKENDS) {
      const info = await statGuest(root, `${guestPath}/${file}`);
      if (info?.isFile()) return { guestPath, backend };
    }
  }
  return undefined;
}

/**
 * One line per package, tab-separated: name, epoch, version, release, arch, vendor, source rpm. Absent tags
 * print as empty fields (rpm would print "(none)").
 */
export const RPM_QUERY_FORMAT =
  ['%{NAME}', '%|EPOCH?{%{EPOCH}}:{}|', '%{VERSION}', '%{RELEASE}', '%|ARCH?{%{ARCH}}:{}|', '%|VENDOR?{%{VENDOR}}:{}|', '%|SOURCERPM?{%{SOURCERPM}}:{}|'].join('\\t') + '\\n';

/** `[epoch:]version-release`, the form rpm and dnf print (epoch only when the package has one). */
export function rpmVersionString(epoch: string | undefined, version: string, release: string): string {
  return `${epoch ? `${epoch}:` : ''}${version}-${release}`;
}

/** The source package's name from a source rpm file name: `kubelet-1.30.1-150500.1.1.src.rpm` → `kubelet`. */
export function sourceRpmName(sourceRpm: string): string | undefined {
  const match = /^(.+)-[^-]+-[^-]+\.(?:no)?src\.rpm$/.exec(sourceRpm);
  return match?.[1];
}

/**
 * Parses the output of `rpm -qa --qf RPM_QUERY_FORMAT`. gpg-pubkey entries are skipped: they are the keys rpm
 * trusts (imported by dnf from a repository's gpgkey), not packages; the key files are in the BOM's files.
 */
export function parseRpmQuery(text: string): InstalledPackage[] {
  const packages: InstalledPackage[] = [];
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    const [name, epoch, version, release, arch, vendor, sourceRpm] = line.split('\t');
    if (name === 'gpg-pubkey' || version === undefined || release === undefined) continue;
    const source = sourceRpm ? sourceRpmName(sourceRpm) : undefined;
    packages.push({
      name,
      version: rpmVersionString(epoch, version, release),
      architecture: arch || 'noarch',
      ...(source ? { source } : {}),
      ...(epoch ? { epoch: Number(epoch) } : {}),
      ...(vendor ? { vendor } : {}),
      ...(sourceRpm ? { sourceRpm } : {}),
    });
  }
  return packages.sort((a, b) => a.name.localeCompare(b.name) || a.architecture.localeCompare(b.architecture) || a.version.localeCompare(b.version));
}

/**
 * The files of an rpm database, by name: sqlite's database and its write-ahead log (committed data not yet
 * checkpointed), Berkeley DB's Packages and its indexes (capitalized names: Name, Basenames, Providename …),
 * ndb's Packages.db and Index.db. Nothing else is copied: a `.rpmmacros` or `macros` file planted beside the
 * database would be configuration, and rpm expands `%(…)` in macros by running a shell command.
 */
const DATABASE_FILE = /^(rpmdb\.sqlite(-wal)?|Packages(\.db)?|Index\.db|[A-Z][A-Za-z0-9]*)$/;

/**
 * What of a guest's database is copied at most: a Berkeley DB one has its Packages and a dozen indexes, sqlite's
 * and ndb's two files, each well under a GiB even for thousands of packages. A crafted database of a thousand
 * (sparse) files would otherwise be read into memory and written into the host's temp directory whole.
 */
export const RPM_DATABASE_BOUNDS = { files: 64, bytes: 2 * GUEST_READ_LIMITS.packageDatabase };
/** The sandboxed rpm's query: seconds for a real database; a crafted sqlite one (a view that never ends) would never return. */
const RPM_QUERY_TIMEOUT_MS = 5 * 60_000;

/**
 * Every installed package in the guest's rpm database, read by the host's rpm from a private copy of the
 * database files: the guest is never written (a query on a live sqlite database would create its -shm file),
 * and a read-only mount (`imagebuilder inspect`) works too. The host's rpm must know the guest's backend
 * (Debian's rpm 4.18 reads sqlite and Berkeley DB).
 * The guest's database is hostile input to the host's rpm and its database libraries: the copy holds only
 * database files (DATABASE_FILE), each copied as a regular file through guest-fs, and rpm runs without any
 * privilege in a bubblewrap sandbox (util/unprivileged.ts) that sees only that copy, with an empty HOME and no
 * macro path from the guest; its configuration is the host's own.
 */
export async function queryRpmDatabase(root: string, options: { run?: Runner; log?: Logger } = {}): Promise<InstalledPackage[]> {
  const run = options.run ?? execRunner;
  const database = await findRpmDatabase(root);
  if (!database) {
    throw new ImageBuilderError('BAD_INPUT', `the guest has no rpm database (looked in ${RPM_DB_PATHS.join(' and ')})`, {
      hint: 'an image of the RedHat family keeps its package database there; is /etc/os-release right about this image?',
    });
  }
  // rpm runs inside the sandbox, where "not installed" would come back as bwrap's failure: ask first.
  if (!(await which('rpm'))) {
    throw new ImageBuilderError('MISSING_TOOL', "rpm is not installed on this host: the BOM of an RPM-family guest is read from its rpm database with the host's rpm", {
      hint: 'install it (Debian and Ubuntu: apt-get install rpm)',
    });
  }
  const copy = await mkdtemp(join(tmpdir(), 'imagebuilder-rpmdb-'));
  try {
    // Not the lock file, nor Berkeley DB's environment regions (__db.00N) or sqlite's shared-memory index:
    // they describe the processes that had the database open, not its content; nor anything not a database file.
    const entries = ((await readGuestDir(root, database.guestPath)) ?? []).filter((entry) => DATABASE_FILE.test(entry));
    const sizes = await Promise.all(entries.map(async (entry) => (await statGuest(root, `${database.guestPath}/${entry}`))?.size ?? 0));
    const total = sizes.reduce((sum, size) => sum + size, 0);
    if (entries.length > RPM_DATABASE_BOUNDS.files || total > RPM_DATABASE_BOUNDS.bytes) {
      throw new ImageBuilderError('BAD_INPUT', `the guest's rpm database (${database.guestPath}) has ${entries.length} database files of ${total} bytes in all: more than the ${RPM_DATABASE_BOUNDS.files} files and ${RPM_DATABASE_BOUNDS.bytes} bytes a real one holds`, {
        hint: 'the image is damaged or crafted: rebuild its rpm database (rpm --rebuilddb) or build from a trusted base image',
      });
    }
    let copied = 0;
    for (const entry of entries) {
      const content = await readGuestFile(root, `${database.guestPath}/${entry}`, GUEST_READ_LIMITS.packageDatabase);
      if (content === undefined) continue;
      // Counted again as read: a file that grew after its stat does not take the copy past the bound.
      copied += content.length;
      if (copied > RPM_DATABASE_BOUNDS.bytes) throw new ImageBuilderError('BAD_INPUT', `the guest's rpm database (${database.guestPath}) grew past ${RPM_DATABASE_BOUNDS.bytes} bytes while it was read`);
      await writeFile(join(copy, entry), content, { mode: 0o600 });
    }
    // The sandboxed rpm runs as a uid of its own (not nobody, whose other processes on the host it could reach),
    // and sqlite writes its -shm beside the database.
    const result = await withBoxUid('rpm', async (uid) => {
      for (const entry of ['', ...(await readdir(copy))]) await chown(join(copy, entry), uid, uid);
      const [sandbox, args] = unprivilegedCommand(['rpm', '--dbpath', '/rpmdb', '--define', `_db_backend ${database.backend}`, '-qa', '--queryformat', RPM_QUERY_FORMAT], {
        uid,
        // rpm's own configuration is the host's (/usr/lib/rpm, /etc/rpm); sqlite wants to write its -shm beside the copy.
        binds: [{ host: copy, inside: '/rpmdb', writable: true }],
        readOnlyHostPaths: ['/etc/rpm'],
      });
      return run(sandbox, args, {
        timeoutMs: RPM_QUERY_TIMEOUT_MS,
        display: `rpm --dbpath ${copy} -qa (unprivileged, in bwrap)`,
        purpose: `reading the guest's rpm database (${database.guestPath}, ${database.backend})`,
        hint: database.backend === 'ndb' ? "this host's rpm may not read ndb databases (openSUSE's): use a host with rpm built with ndb" : undefined,
      });
    }, { log: options.log });
    return parseRpmQuery(result.stdout);
  } finally {
    await rm(copy, { recursive: true, force: true });
  }
}

/** Guest programs whose ELF header names the guest's architecture: rpm's own binary first. */
const RPM_ARCHITECTURE_PROBES = ['/usr/bin/rpm', ...ARCHITECTURE_PROBES];

/**
 * The guest's architecture as its rpm names it: the arch of the installed `rpm` package, or, when the database
 * does not list one, the ELF machine of the guest's rpm binary (or shell). `rpm --eval %_arch` would have to run
 * the guest's rpm, and this is asked from the host, outside the chroot session.
 */
export async function rpmArchitecture(root: string, installed: InstalledPackage[]): Promise<string | undefined> {
  const rpm = installed.find((p) => p.name === 'rpm' && p.architecture !== 'noarch');
  if (rpm) return rpm.architecture;
  return (await programArchitecture(root, RPM_ARCHITECTURE_PROBES))?.architecture?.rpm;
}
