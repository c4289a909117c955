import { ImageBuilderError } from '../util/errors.js';
import type { InstalledPackage, PackageSpec, ServedRepository } from './types.js';

/** What every package manager does the same way with a bundle it is served from (apply --bundle). */

/** The requested packages the bundle cannot give (`name` or `name=version`), unless already installed so. */
export function missingFromBundle(served: ServedRepository, requested: PackageSpec[], installed: Map<string, string>): string[] {
  return requested
    .filter(({ name, version }) => {
      const versions = served.packages.get(name);
      if (version === undefined) return !versions?.size && !installed.has(name);
      const present = installed.get(name);
      return !versions?.has(version) && !(present !== undefined && installedAs(present, version));
    })
    .map(({ name, version }) => (version === undefined ? name : `${name}=${version}`));
}

/**
 * Whether an installed version is the one a recipe pins: exactly, or (rpm) the pin without the release or epoch
 * that rpm prints (`kubectl=1.36.2` is installed as `1.36.2-150500.1.1`, `ethtool=6.7-1.fc40` as `2:6.7-1.fc40`).
 */
export function installedAs(installed: string, pinned: string): boolean {
  const withoutEpoch = installed.replace(/^\d+:/, '');
  return [installed, withoutEpoch].some((version) => version === pinned || version.startsWith(`${pinned}-`));
}

/** apply --bundle: what the bundle lacks fails here, naming it, before the package manager runs. */
export async function requireInBundle(root: string, served: ServedRepository, packages: PackageSpec[], listInstalled: (root: string) => Promise<InstalledPackage[]>): Promise<void> {
  const installed = new Map((await listInstalled(root)).map((p) => [p.name, p.version]));
  const missing = missingFromBundle(served, packages, installed);
  if (missing.length) {
    throw new ImageBuilderError('STEP_FAILED', `the bundle has no package ${missing.join(', ')}`, {
      hint: 'the bundle was made for another recipe or other variables: run `imagebuilder bundle` again with this recipe on the connected side',
    });
  }
}
