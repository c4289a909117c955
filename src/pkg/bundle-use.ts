import { ImageBuilderError } from '../util/errors.js';
import type { InstalledPackage, PackageSpec, ServedRepository } from './types.js';

/** What every package manager does the same way with a bundle it is served from (apply --bundle). */

/** The requested packages the bundle cannot give (`name` or `name=version`), unless already installed so. */
export function missingFromBundle(served: ServedRepository, requested: PackageSpec[], installed: Map<string, string>): string[] {
  return requested
    .filter(({ name, version }) => {
      const versions = served.packages.get(name);
      if (version === undefined) return !versions?.size && !installed.has(name);
      return !versions?.has(version) && installed.get(name) !== version;
    })
    .map(({ name, version }) => (version === undefined ? name : `${name}=${version}`));
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
