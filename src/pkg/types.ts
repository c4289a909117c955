import type { ChrootSession } from '../chroot/session.js';

export interface PackageSpec {
  name: string;
  /** Exact version to install; absent means the newest the repositories offer. */
  version?: string;
}

export interface InstalledPackage {
  name: string;
  version: string;
  architecture: string;
  /** Source package name, when it differs from or is recorded beside the binary one. */
  source?: string;
}

/** How one package manager does each job inside a chroot session; the distro family picks which. */
export interface PackageManager {
  readonly name: string;
  install(session: ChrootSession, packages: PackageSpec[]): Promise<void>;
  remove(session: ChrootSession, names: string[]): Promise<void>;
  /** Every installed package, read from the guest's package database (feeds the BOM). */
  listInstalled(root: string): Promise<InstalledPackage[]>;
  /** The guest's native architecture name (amd64, arm64, x86_64 …). */
  architecture(root: string): Promise<string | undefined>;
}

/** `name`, `name=version` (apt style) or `name-version` is not guessed: only `=` separates a version. */
export function parsePackageSpec(text: string): PackageSpec {
  const at = text.indexOf('=');
  return at > 0 ? { name: text.slice(0, at), version: text.slice(at + 1) } : { name: text };
}
