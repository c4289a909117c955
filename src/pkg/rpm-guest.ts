import type { ChrootSession } from '../chroot/session.js';
import { writeGuestFile } from '../chroot/guest-write.js';
import { ImageBuilderError } from '../util/errors.js';
import type { PackageRepository, WrittenFile } from './types.js';

/**
 * What every RPM package manager (dnf, yum, tdnf, zypper) does the same way inside the guest: key files,
 * repository files, asking the guest for its release version, emptying cache directories. How each one
 * installs, holds and refreshes is in its own file.
 */

/**
 * What dnf asks the rpm database for to find $releasever, in its order (dnf's const.DISTROVERPKG; yum's
 * distroverpkg asks the first and redhat-release; tdnf's distroverpkg is system-release; libzypp asks for
 * the base product, then these): a release package providing one of these names.
 */
export const DISTROVERPKG = ['system-release(releasever)', 'system-release', 'distribution-release(releasever)', 'distribution-release', 'redhat-release', 'suse-release'];

/**
 * Exits 0 when the guest can tell its own release version the way its package manager finds it: an argument
 * that is a path names a file that settles it when it is not empty (Amazon Linux 2023 pins its release in
 * /etc/dnf/vars/releasever; openSUSE and SLES name their base product in /etc/products.d/baseproduct); any
 * other argument is a capability an installed release package may provide (fedora-release-common,
 * redhat-release, photon-release …). Every real guest has one; an image without (a stripped or synthetic
 * one) gets --releasever from its os-release VERSION_ID instead.
 */
export const RELEASEVER_PROBE =
  'for arg in "$@"; do case $arg in ' +
  '/*) if [ -s "$arg" ]; then exit 0; fi ;; ' +
  '*) if rpm -q --quiet --whatprovides "$arg" 2>/dev/null; then exit 0; fi ;; ' +
  'esac; done; exit 1';

/** The probe's command line for a manager whose release files are `files`. */
export function releaseverProbe(files: readonly string[]): string[] {
  return ['/bin/sh', '-c', RELEASEVER_PROBE, 'releasever-probe', ...files, ...DISTROVERPKG];
}

/**
 * The release version option for one guest, probed once per session: `[]` when the guest tells its own (or
 * os-release gave no VERSION_ID), else the manager's option for VERSION_ID.
 */
export function releaseverOption(options: { releasever?: string; files: readonly string[]; render: (version: string) => string[] }) {
  const probed = new WeakMap<ChrootSession, string[]>();
  return async (session: ChrootSession): Promise<string[]> => {
    const known = probed.get(session);
    if (known) return known;
    let result: string[] = [];
    if (options.releasever !== undefined) {
      const probe = await session.exec(releaseverProbe(options.files), { allowFailure: true, purpose: 'asking the guest for its release version' });
      if (probe.exitCode !== 0) result = options.render(options.releasever);
    }
    probed.set(session, result);
    return result;
  };
}

/** Empties the cache directories named as arguments, keeping the directories (the manager's package owns them). */
export const EMPTY_CACHE_DIRS = 'set -e; for dir in "$@"; do if [ -d "$dir" ]; then find "$dir" -xdev -mindepth 1 -delete; fi; done';

export async function emptyCacheDirs(session: ChrootSession, dirs: readonly string[]): Promise<void> {
  await session.exec(['/bin/sh', '-c', EMPTY_CACHE_DIRS, 'empty-cache', ...dirs], { purpose: `emptying ${dirs.join(' ')}`, errorCode: 'STEP_FAILED' });
}

/** Reads a guest file, printing nothing when it does not exist. */
const READ_IF_PRESENT = 'if [ -e "$1" ]; then cat -- "$1"; fi';

export async function readGuestConfig(session: ChrootSession, path: string): Promise<string> {
  return (await session.exec(['/bin/sh', '-c', READ_IF_PRESENT, 'read-config', path], { purpose: `reading ${path}`, errorCode: 'STEP_FAILED' })).stdout;
}

const ARMORED_PUBLIC_KEY = '-----BEGIN PGP PUBLIC KEY BLOCK-----';

/** CRC-24 of OpenPGP ASCII armor (RFC 4880, 6.1). */
function crc24(data: Buffer): number {
  let crc = 0xb704ce;
  for (const byte of data) {
    crc ^= byte << 16;
    for (let i = 0; i < 8; i++) {
      crc <<= 1;
      if (crc & 0x1000000) crc ^= 0x1864cfb;
    }
  }
  return crc & 0xffffff;
}

/**
 * The key as RPM-GPG-KEY files hold it: ASCII-armored. An armored key is kept byte for byte; a binary one is
 * armored here (RFC 4880: base64 in 64-column lines and a CRC-24 checksum), since rpm imports armored keys.
 */
export function armoredPublicKey(key: Buffer): Buffer {
  if (key.toString('latin1').includes(ARMORED_PUBLIC_KEY)) return key;
  const body = key.toString('base64').replace(/(.{64})/g, '$1\n').replace(/\n$/, '');
  const crc = Buffer.from([(crc24(key) >> 16) & 0xff, (crc24(key) >> 8) & 0xff, crc24(key) & 0xff]).toString('base64');
  return Buffer.from(`${ARMORED_PUBLIC_KEY}\n\n${body}\n=${crc}\n-----END PGP PUBLIC KEY BLOCK-----\n`);
}

/** Where a repository's key goes: /etc/pki/rpm-gpg, where Fedora, RHEL and Photon keep theirs. */
export function rpmKeyPath(name: string): string {
  return `/etc/pki/rpm-gpg/RPM-GPG-KEY-${name}`;
}

/** A .repo section (INI, as dnf.conf(5), yum.conf(5), tdnf and zypper read it) for a repository. */
export function repoSection(name: string, options: [string, string][]): string {
  return [`[${name}]`, ...options.map(([key, value]) => `${key}=${value}`), ''].join('\n');
}

/** suite and components describe apt repositories: an RPM repository is its URL alone. */
export function refuseAptFields(repository: PackageRepository, manager: string): void {
  if ((repository.suite !== undefined && repository.suite !== '/') || repository.components?.length) {
    throw new ImageBuilderError('STEP_FAILED', `repository ${repository.name}: suite and components describe apt repositories; a ${manager} repository is its URL alone`, {
      hint: `drop suite and components (or give this step \`when: { family: debian }\` and write another for the ${manager} repository)`,
    });
  }
}

/**
 * Writes the repository's key (armored) and then its .repo file into the guest, the key first so that a .repo
 * file never names a key that is not there yet. `importKey` runs between the two (zypper trusts keys from the
 * rpm database). Returns both files for the BOM, key first.
 */
export async function writeRpmRepository(
  session: ChrootSession,
  repository: PackageRepository,
  repoPath: string,
  repoFile: (keyPath: string) => string,
  importKey?: (keyPath: string) => Promise<void>,
): Promise<WrittenFile[]> {
  const keyPath = rpmKeyPath(repository.name);
  const keySha = await writeGuestFile(session, { path: keyPath, content: armoredPublicKey(repository.key), mode: '0644' }, `writing the key of repository ${repository.name}`);
  await importKey?.(keyPath);
  const repoSha = await writeGuestFile(session, { path: repoPath, content: repoFile(keyPath), mode: '0644' }, `writing ${repoPath}`);
  return [
    { path: keyPath, sha256: keySha, ...(repository.keySource ? { source: repository.keySource } : {}) },
    { path: repoPath, sha256: repoSha },
  ];
}
