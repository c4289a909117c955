import type { Logger } from '../util/log.js';
import type { ChrootSession } from '../chroot/session.js';

export interface PackageSpec {
  name: string;
  /** Exact version to install; absent means the newest the repositories offer. */
  version?: string;
}

export interface InstalledPackage {
  name: string;
  /** As the package manager prints it: dpkg's Version; rpm's `[epoch:]version-release`. */
  version: string;
  architecture: string;
  /** Source package name, when it differs from or is recorded beside the binary one. */
  source?: string;
  /** rpm: the epoch, when the package has one (it is also the `epoch:` prefix of `version`). */
  epoch?: number;
  /** rpm: the vendor tag, when the package has one. */
  vendor?: string;
  /** rpm: the source rpm the package was built from (`kubelet-1.30.2-150500.1.1.src.rpm`). */
  sourceRpm?: string;
}

/**
 * A package source to add to the guest, described independently of the manager: apt renders it as a deb822
 * `.sources` file, a dnf writer would render a `.repo` file. The key has been verified by the caller.
 */
export interface PackageRepository {
  /** A file-name-safe identifier: the base name of the files written. */
  name: string;
  /** The source's URI (apt: URIs; dnf: baseurl). */
  url: string;
  /** apt: the suite, or an exact path ending in "/" for a flat repository (then no components). */
  suite?: string;
  /** apt: the components of a non-flat repository. */
  components?: string[];
  /** The OpenPGP public key that signs the repository, as fetched or given: armored text or binary. */
  key: Buffer;
  /** Where the key came from (its URL), recorded with the key file; absent for a key given inline. */
  keySource?: string;
  /** dnf/yum: packages of this repository hidden unless an install disables its excludes (`exclude=` in the .repo). */
  exclude?: string[];
}

export interface InstallOptions {
  /** dnf/yum: `--disableexcludes=NAME`, for packages a repository's `exclude=` hides (pkgs.k8s.io's instructions). */
  disableExcludes?: string;
  /** The package cache shared by builds (package-cache.ts): apt is offered what it holds, and what apt downloads is kept. */
  packageCache?: PackageCacheUse;
  /** An air-gapped bundle: being made (what the manager fetched is kept), or served (the only repository it sees). */
  bundle?: PackageBundleUse;
}

/** An air-gapped bundle as a package manager sees it (src/bundle/). */
export interface PackageBundleUse {
  /** `imagebuilder bundle`: every package file a transaction fetched, with its signed index's entry, is kept. */
  collect?: PackageCollector;
  /** `apply --bundle`: the bundle's repository, instead of the guest's configured ones. */
  serve?: ServedRepository;
}

export interface PackageCollector {
  log: Logger;
  /** A .deb whose bytes hash to the sha256 the guest's signed lists name, and the lists' stanza for it. */
  addDeb(content: Buffer, sha256: string, stanza: string, origin: string): Promise<void>;
  /**
   * apt ran a transaction (whether it fetched anything or not): the bundle then carries an apt repository, even an
   * empty one, so that apt has its source offline where everything asked for was already installed.
   */
  aptTransaction(): void;
  /**
   * An .rpm whose bytes hash to the sha256 its repository's cached metadata names, with that metadata's `<package>`
   * entry, kept under the repository (dnf id, zypper alias) it came from.
   */
  addRpm(content: Buffer, sha256: string, repository: string, entry: string, origin: string): Promise<void>;
  /** dnf or zypper ran a transaction reading these repositories: each is served offline, even with nothing in it. */
  rpmRepositories(ids: string[]): void;
}

export interface ServedRepository {
  /** apt: guest directory of the bundle's flat repository (read-only: bundle.list, Packages, Release, the .deb files). */
  aptDir?: string;
  /**
   * dnf, zypper: guest directory holding one rpm-md repository (repodata/, packages/) per repository of the guest
   * the bundle's packages came from, named by its id; zypper's .repo files for them in .repos.d/.
   */
  rpm?: { dir: string; repositories: string[] };
  /** What the repository holds: package name → its versions. */
  packages: Map<string, Set<string>>;
}

export interface PackageCacheUse {
  dir: string;
  log: Logger;
  /**
   * The step's cache key (the base image and the recipe's steps up to this one): what a manager keeps of this step
   * for later builds (apt's srcpkgcache.bin) is shared within it, never beyond. None: nothing of that kind is kept.
   */
  scope?: string;
}

/** A file a package manager wrote into the guest, with the sha256 of its content (for the BOM). */
export interface WrittenFile {
  path: string;
  sha256: string;
  /** Where the content came from, when it was not made here. */
  source?: string;
}

/** How one package manager does each job inside a chroot session; the distro family picks which. */
export interface PackageManager {
  readonly name: string;
  install(session: ChrootSession, packages: PackageSpec[], options?: InstallOptions): Promise<void>;
  /** `options.bundle`: offline, a manager that reads its repositories to remove reads the bundle's. */
  remove(session: ChrootSession, names: string[], options?: InstallOptions): Promise<void>;
  /**
   * Empties the package cache and the downloaded package lists, so the image carries no stale indexes (sysprep).
   * A later install in the same session fetches the lists again.
   */
  cleanCache(session: ChrootSession): Promise<void>;
  /** Upgrades the named installed packages (never installs new ones), or everything with 'all'. */
  upgrade(session: ChrootSession, names: string[] | 'all', options?: InstallOptions): Promise<void>;
  /** Keeps the named packages at their installed versions (apt-mark hold, dnf versionlock, zypper addlock). */
  hold(session: ChrootSession, names: string[], options?: InstallOptions): Promise<void>;
  /** At the end of a packages step, in its session: what the manager keeps for the build's next step (apt: its srcpkgcache.bin). */
  finishStep?(session: ChrootSession, options?: InstallOptions): Promise<void>;
  /**
   * Writes the repository's key and source definition into the guest; the next install or upgrade in this
   * session refreshes the package lists first. Returns the files written (key first).
   */
  addRepository(session: ChrootSession, repository: PackageRepository): Promise<WrittenFile[]>;
  /** Every installed package, read from the guest's package database (feeds the BOM). */
  listInstalled(root: string, log?: Logger): Promise<InstalledPackage[]>;
  /** The guest's native architecture name (amd64, arm64, x86_64 …). */
  architecture(root: string, log?: Logger): Promise<string | undefined>;
}

/** `name`, `name=version` (apt style) or `name-version` is not guessed: only `=` separates a version. */
export function parsePackageSpec(text: string): PackageSpec {
  const at = text.indexOf('=');
  return at > 0 ? { name: text.slice(0, at), version: text.slice(at + 1) } : { name: text };
}
