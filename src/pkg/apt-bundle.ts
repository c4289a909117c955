import { sha256Text } from '../util/digest.js';
import { readGuestDir } from '../util/guest-fs.js';
import type { Logger } from '../util/log.js';
import { APT_ARCHIVES, aptPackagesIndex, archivedDebs, DEB_NAME, stanzaField as field } from './package-cache.js';
import type { PackageCollector, ServedRepository } from './types.js';

/**
 * apt and an air-gapped bundle (src/bundle/). Making one, every .deb a transaction fetched is kept with the
 * stanza the guest's signed package lists give it (checked: its bytes hash to that stanza's SHA256). Served,
 * those stanzas are the index of a flat repository (`Packages`, `Release`) that apt reads from a read-only
 * directory of the session, as the only source it sees: the guest's own sources and lists are never touched
 * (apt is pointed elsewhere with -o), so its configuration is what it was.
 */

/** Where a session of `apply --bundle` sees the bundle's apt repository (a read-only bind under its private /run). */
export const APT_BUNDLE_GUEST_DIR = '/run/imagebuilder-bundle/apt';
/** The lists apt makes from it: in the session's private /run, never in the image. */
const BUNDLE_LISTS = '/run/imagebuilder-bundle-lists';

/** The one source apt sees: the bundle's flat repository, trusted because the bundle's manifest was verified. */
export const aptBundleSourceList = (dir: string) => `deb [trusted=yes] file:${dir} ./\n`;

/** apt's options that make the bundle its only source, with lists and caches outside the image. */
export function aptBundleOptions(served: ServedRepository): string[] {
  return [
    '-o', `Dir::Etc::SourceList=${served.aptDir!}/bundle.list`,
    '-o', `Dir::Etc::SourceParts=${served.aptDir!}/sources.list.d`,
    '-o', `Dir::State::Lists=${BUNDLE_LISTS}`,
    '-o', 'Dir::Cache::pkgcache=',
    '-o', 'Dir::Cache::srcpkgcache=',
  ];
}

/** Prepares the lists directory apt-get update writes to (the session's /run is fresh each session). */
export const APT_BUNDLE_LISTS_SETUP = ['mkdir', '-p', `${BUNDLE_LISTS}/partial`];

/**
 * Keeps, for a bundle, every .deb apt left in its archives after a transaction whose bytes hash to the sha256
 * the guest's signed lists name for its file name, with its stanza. Files read through guest-fs (regular,
 * bounded, no guest link followed). Returns how many were kept.
 */
export async function collectDownloadedDebs(root: string, collector: PackageCollector, log: Logger): Promise<number> {
  collector.aptTransaction();
  // No lists read when apt fetched nothing.
  if (!((await readGuestDir(root, APT_ARCHIVES)) ?? []).some((name) => DEB_NAME.test(name))) return 0;
  const index = await aptPackagesIndex(root);
  let kept = 0;
  for await (const deb of archivedDebs(root, index)) {
    // Bytes no list names (a base image's leftover) are not apt's download: left out, as before, unsaid.
    const listed = deb.listedAs === deb.name ? index.stanza(deb.sha256) : undefined;
    if (!listed) {
      if (deb.listedAs) log.warn(`bundle: ${APT_ARCHIVES}/${deb.name} holds what the guest's package lists name ${deb.listedAs}; not kept`);
      continue;
    }
    // With the stanza and the list that named it (the list's file name says its source: host, path, suite).
    await collector.addDeb(deb.content, deb.sha256, listed.stanza, `${listed.list}: ${deb.name}`);
    kept++;
  }
  log.info(`bundle: kept ${kept} .deb file(s) apt fetched`);
  return kept;
}

/**
 * The flat repository's index made from the kept stanzas: each stanza as the signed list gave it, its Filename
 * now the bundle's file. Sorted by name, version and sha256, so one set of packages always makes one index.
 */
export function aptBundleIndex(entries: { sha256: string; stanza: string; filename: string }[], date = new Date()): { packages: string; release: string } {
  const stanzas = [...entries]
    .sort((a, b) => (field(a.stanza, 'Package') ?? '').localeCompare(field(b.stanza, 'Package') ?? '') || (field(a.stanza, 'Version') ?? '').localeCompare(field(b.stanza, 'Version') ?? '') || a.sha256.localeCompare(b.sha256))
    // Every Filename line goes (a crafted list could give two): the one apt reads is the bundle's file.
    .map(({ stanza, filename }) => `${stanza.replace(/^Filename:.*(\n|$)/gm, '').replace(/\n$/, '')}\nFilename: ${filename}`);
  const packages = stanzas.length ? `${stanzas.join('\n\n')}\n` : '';
  const bytes = Buffer.from(packages, 'latin1');
  // Unsigned: apt trusts it as [trusted=yes], because the bundle's manifest (which names this file's sha256) was verified.
  const release = ['Origin: imagebuilder bundle', 'Label: imagebuilder bundle', `Date: ${date.toUTCString()}`, 'SHA256:', ` ${sha256Text(bytes)} ${bytes.length} Packages`, ''].join('\n');
  return { packages, release };
}

/** Package name → versions, from a bundle's Packages index. */
export function bundlePackages(index: string): Map<string, Set<string>> {
  const packages = new Map<string, Set<string>>();
  for (const stanza of index.split(/\n\s*\n/)) {
    const name = field(stanza, 'Package');
    const version = field(stanza, 'Version');
    if (!name || !version) continue;
    if (!packages.has(name)) packages.set(name, new Set());
    packages.get(name)!.add(version);
  }
  return packages;
}
