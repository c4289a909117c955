import { sha256Text } from '../util/digest.js';
import { readGuestDir, readGuestFile, readGuestText, removeGuestFile } from '../util/guest-fs.js';
import { MAX_PACKAGE_BYTES } from './package-cache.js';
import { cachedPackageFiles, cachedRepositories, MAX_WALK_ENTRIES, type RpmCacheLayout } from './rpm-package-cache.js';
import { MAX_ENTRY_BYTES, readRepositoryPackages } from './rpm-metadata.js';
import { ImageBuilderError } from '../util/errors.js';
import { repoSection } from './rpm-guest.js';
import type { PackageCollector, ServedRepository } from './types.js';

/**
 * dnf, zypper and an air-gapped bundle (src/bundle/). Making one, every .rpm a transaction fetched is kept with
 * the `<package>` entry its repository's metadata gives it (checked: its bytes hash to that entry's sha256),
 * under the repository it came from. Served, each such repository is an rpm-md repository of its own in a
 * read-only directory of the session: dnf keeps the guest's own repository definitions (keys, gpgcheck,
 * excludes) and is told, by options, to read each one from the bundle and every other one not at all; zypper is
 * given a repos.d of the bundle's repositories instead of the guest's. Neither touches the guest's files.
 */

/** Where a session of `apply --bundle` sees the bundle's rpm-md repositories (a read-only bind under its private /run). */
export const RPM_BUNDLE_GUEST_DIR = '/run/imagebuilder-bundle/rpm';
/** The metadata the manager caches from them: in the session's private /run, never in the image. */
const BUNDLE_CACHE = '/run/imagebuilder-bundle-cache';

/** Where dnf 4 and dnf 5 read repository definitions (dnf 5 on Fedora 41+ also the distribution's own directories). */
const DNF_REPOS_DIRS = ['/etc/yum.repos.d', '/etc/distro.repos.d', '/usr/share/dnf5/repos.d'];
/** The most .repo files read from one of them (a real guest has a handful). */
const MAX_REPO_FILES = 1000;

/**
 * The repository ids the guest defines now: the section names of its .repo files, read as data (regular files
 * only, bounded, no guest link followed). dnf 5 refuses a setopt for a repository it does not know, and a
 * repository a later step adds is not defined yet.
 */
export async function definedDnfRepositories(root: string): Promise<Set<string>> {
  const ids = new Set<string>();
  for (const dir of DNF_REPOS_DIRS) {
    const names = ((await readGuestDir(root, dir)) ?? []).filter((name) => name.endsWith('.repo')).slice(0, MAX_REPO_FILES);
    for (const name of names) {
      const text = await readGuestText(root, `${dir}/${name}`).catch(() => undefined);
      for (const match of text?.matchAll(/^[ \t]*\[([^\]\r\n]+)\][ \t\r]*$/gm) ?? []) if (match[1] !== 'main') ids.add(match[1].trim());
    }
  }
  return ids;
}

/**
 * dnf's options that serve each of the bundle's repositories the guest defines now from the bundle and turn every
 * other one off. By --setopt only, never --enablerepo (which enables a repository the guest had off); dnf applies
 * a repository's setopts in the order given (the `*` one first), so the bundle's ones end up enabled. No module
 * metadata is carried: module_hotfixes lets EL 8's modular packages install from the bundle all the same.
 */
export function dnfBundleOptions(served: ServedRepository, defined: ReadonlySet<string>): string[] {
  const { dir, repositories } = served.rpm!;
  return [
    ...(defined.size ? ['--setopt=*.enabled=0'] : []),
    ...repositories.filter((id) => defined.has(id)).flatMap((id) => [
      `--setopt=${id}.enabled=1`,
      `--setopt=${id}.baseurl=file://${dir}/${id}/`,
      `--setopt=${id}.metalink=`,
      `--setopt=${id}.mirrorlist=`,
      // The bundle's metadata is unsigned (bundle.json, verified, names its sha256); packages are checked as the guest says.
      `--setopt=${id}.repo_gpgcheck=0`,
      `--setopt=${id}.module_hotfixes=1`,
    ]),
    `--setopt=cachedir=${BUNDLE_CACHE}`,
  ];
}

/** zypper's repos.d among the repositories: a name no repository id can have (ids begin with a letter or digit). */
export const ZYPPER_REPOS_DIR = '.repos.d';

/** zypper's global options that make the bundle's repositories its only ones, with their caches outside the image. */
export function zypperBundleOptions(served: ServedRepository): string[] {
  return ['--reposd-dir', `${served.rpm!.dir}/${ZYPPER_REPOS_DIR}`, '--cache-dir', BUNDLE_CACHE];
}

/**
 * The .repo file zypper reads for one of the bundle's repositories (alias as the guest named it): packages must
 * still be signed by a key in the guest's rpm database (pkg_gpgcheck=1), as they were when the bundle was made.
 */
export function zypperBundleRepoFile(alias: string, dir: string): string {
  return repoSection(alias, [
    ['name', `${alias} (imagebuilder bundle)`],
    ['enabled', '1'],
    ['autorefresh', '1'],
    ['baseurl', `dir:${dir}/${alias}`],
    ['type', 'rpm-md'],
    ['gpgcheck', '1'],
    ['repo_gpgcheck', '0'],
    ['pkg_gpgcheck', '1'],
    ['keeppackages', '0'],
  ]);
}

/**
 * Runs a dnf or zypper transaction making a bundle: `download` must leave what it fetched in the guest's package
 * cache (dnf keepcache; zypper --download-only), then every package file there whose bytes hash to what its
 * repository's metadata names is kept, with that metadata's entry; `install`, when given, is the transaction
 * itself after that. A fetched file that cannot be kept so fails the step (the bundle would be incomplete). Every
 * package file that was not in the cache before is removed afterwards, so the throw-away guest is as it would be
 * without the bundle. Files are read through guest-fs (regular, bounded, no guest link followed).
 */
export async function collectRpmDownloads(root: string, layout: RpmCacheLayout, collector: PackageCollector, download: () => Promise<unknown>, install?: () => Promise<unknown>): Promise<number> {
  const walk = async () => {
    const found = await cachedPackageFiles(root, await cachedRepositories(root, layout));
    if (!found) throw new Error(`the guest's package cache holds more than ${MAX_WALK_ENTRIES} entries`);
    return found;
  };
  // What the base image's cache held already is neither kept nor removed: only what this transaction fetched.
  const before = new Set([...(await walk()).values()].flat());
  const incomplete = (message: string) =>
    new ImageBuilderError('STEP_FAILED', `bundle: ${message}; the bundle would lack packages this step needs`, { hint: 'the guest\'s package cache is not as dnf or zypper leaves it: build this image online, or report it' });
  let kept = 0;
  try {
    await download();
    const walked = await walk();
    const repositories = await cachedRepositories(root, layout);
    // Every repository the manager read is served offline, even one it fetched nothing from (then empty), so that
    // apply --bundle never turns to the network for it.
    collector.rpmRepositories(repositories.flatMap((repository) => (repository.id ? [repository.id] : [])));
    for (const repository of repositories) {
      const files = (walked.get(repository.repodata) ?? []).filter((path) => !before.has(path));
      if (!files.length) continue;
      if (!repository.id) throw incomplete(`the packages fetched into ${repository.packages} have no repository name imagebuilder can use`);
      // Hashed one at a time (packages can be large), then kept with their entries from one read of the metadata.
      const hashes = new Map<string, string>();
      for (const path of files) {
        const content = await readGuestFile(root, path, MAX_PACKAGE_BYTES).catch(() => undefined);
        if (!content) throw incomplete(`${path} is not a regular file of at most ${MAX_PACKAGE_BYTES} bytes`);
        hashes.set(path, sha256Text(content));
      }
      const read = await readRepositoryPackages(root, repository.repodata, new Set(hashes.values()));
      if ('skipped' in read) throw incomplete(`the metadata of repository ${repository.id} (${repository.repodata}) cannot be read: ${read.skipped}`);
      for (const [href, sha256] of read.packages) {
        const path = repository.pathOf(href);
        if (!path || hashes.get(path) !== sha256) continue;
        const entry = read.entries.get(sha256);
        const content = await readGuestFile(root, path, MAX_PACKAGE_BYTES);
        if (!entry || !content || sha256Text(content) !== sha256) continue;
        await collector.addRpm(content, sha256, repository.id, entry, `${repository.repodata}: ${href}`);
        hashes.delete(path);
        kept++;
      }
      const unmatched = [...hashes.keys()];
      if (unmatched.length) throw incomplete(`${unmatched.join(', ')}: not what repository ${repository.id}'s metadata names (or its entry is larger than ${MAX_ENTRY_BYTES} bytes)`);
    }
    collector.log.info(`bundle: kept ${kept} .rpm file(s) the package manager fetched`);
    await install?.();
  } finally {
    for (const path of [...(await walk()).values()].flat()) if (!before.has(path)) await removeGuestFile(root, path);
  }
  return kept;
}

const escapeXml = (text: string) => text.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&apos;' })[c]!);
const element = (entry: string, name: string) => new RegExp(`<${name}>([^<]*)</${name}>`).exec(entry)?.[1];
/** Where `open` first occurs and the text up to the next `close` after it (indexOf: a hostile entry of many opens stays linear). */
const between = (text: string, open: string, close: string): string | undefined => {
  const start = text.indexOf(open);
  if (start < 0) return undefined;
  const end = text.indexOf(close, start + open.length);
  return end < 0 ? undefined : text.slice(start + open.length, end);
};
const versionOf = (entry: string) => {
  const tag = between(entry, '<version ', '>') ?? '';
  const attribute = (name: string) => new RegExp(`\\b${name}="([^"]*)"`).exec(tag)?.[1];
  return { epoch: attribute('epoch'), ver: attribute('ver'), rel: attribute('rel') };
};

/**
 * One repository's metadata made from the kept entries: each entry as its repository's metadata gave it, its
 * location now the bundle's file (every other location dropped: a crafted entry could give two). Sorted by name,
 * version and sha256, so one set of packages always makes one index. Uncompressed: dnf and zypper read a plain
 * primary.xml; repomd.xml names its sha256.
 */
export function rpmBundleIndex(entries: { sha256: string; entry: string; filename: string }[], date = new Date()): { primary: string; repomd: string } {
  const key = ({ entry }: { entry: string }) => `${element(entry, 'name') ?? ''}\u0000${JSON.stringify(versionOf(entry))}`;
  const packages = [...entries]
    .sort((a, b) => key(a).localeCompare(key(b)) || a.sha256.localeCompare(b.sha256))
    .map(({ entry, filename }) => {
      const location = `<location href="${escapeXml(filename)}"/>`;
      let placed = false;
      const text = entry.replace(/<location\b[^>]*\/>/g, () => (placed ? '' : ((placed = true), location)));
      return placed ? text : text.replace(/<\/package>$/, `${location}</package>`);
    });
  const primary = [
    '<?xml version="1.0" encoding="UTF-8"?>',
    `<metadata xmlns="http://linux.duke.edu/metadata/common" xmlns:rpm="http://linux.duke.edu/metadata/rpm" packages="${packages.length}">`,
    ...packages,
    '</metadata>',
    '',
  ].join('\n');
  const sha256 = sha256Text(primary);
  const size = Buffer.byteLength(primary);
  const seconds = Math.floor(date.getTime() / 1000);
  const repomd = [
    '<?xml version="1.0" encoding="UTF-8"?>',
    '<repomd xmlns="http://linux.duke.edu/metadata/repo" xmlns:rpm="http://linux.duke.edu/metadata/rpm">',
    `  <revision>${seconds}</revision>`,
    '  <data type="primary">',
    `    <checksum type="sha256">${sha256}</checksum>`,
    `    <open-checksum type="sha256">${sha256}</open-checksum>`,
    '    <location href="repodata/primary.xml"/>',
    `    <timestamp>${seconds}</timestamp>`,
    `    <size>${size}</size>`,
    `    <open-size>${size}</open-size>`,
    '  </data>',
    '</repomd>',
    '',
  ].join('\n');
  return { primary, repomd };
}

/**
 * Package name (and name.arch, and every name it provides) → versions, from a bundle's primary.xml, in every form
 * a recipe may pin one: `ver`, `ver-rel`, and with its epoch `epoch:ver-rel`, `epoch:ver`.
 */
export function rpmBundlePackages(primary: string, into = new Map<string, Set<string>>()): Map<string, Set<string>> {
  for (const part of primary.split('</package>')) {
    const start = part.indexOf('<package ');
    if (start < 0) continue;
    const entry = part.slice(start);
    const name = element(entry, 'name');
    const { epoch, ver, rel } = versionOf(entry);
    if (!name || !ver) continue;
    const forms = [ver, ...(rel ? [`${ver}-${rel}`] : [])].flatMap((form) => (epoch && epoch !== '0' ? [form, `${epoch}:${form}`] : [form]));
    // What the package provides too (iptables by iptables-nft …), and name.arch: dnf and zypper install by either.
    const arch = element(entry, 'arch');
    const provides = between(entry, '<rpm:provides>', '</rpm:provides>') ?? '';
    const names = new Set([name, ...(arch ? [`${name}.${arch}`] : []), ...[...provides.matchAll(/<rpm:entry\s+name="([^"]+)"/g)].map((match) => match[1])]);
    for (const provided of names) {
      if (!into.has(provided)) into.set(provided, new Set());
      for (const form of forms) into.get(provided)!.add(form);
    }
  }
  return into;
}
