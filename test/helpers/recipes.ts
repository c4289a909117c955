import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { DEFAULT_SERIES, pinnedRelease } from './local-mirror.js';

/** Writes a recipe file for a test and returns its path. */
export async function writeRecipe(dir: string, name: string, steps: unknown[], variables?: Record<string, string>): Promise<string> {
  const path = join(dir, `${name}.yaml`);
  await writeFile(path, stringify({ name, ...(variables ? { variables } : {}), steps }));
  return path;
}

/**
 * The --set flags that point the shipped recipes/kubernetes-node.yaml at stand-ins, for one series of its table
 * (default: the recipe's own), pinned to the patch before the newest (which the stand-ins serve too): `packages`
 * serves pkgs.k8s.io's repository (the local mirror, or the RPM one) signed by its key, `github` the release
 * files. Nothing else differs from a build against pkgs.k8s.io and GitHub.
 */
export function nodeRecipeSets(packages: { url: string; keyFingerprint: string }, github: { url: string } = packages, series = DEFAULT_SERIES): string[] {
  return [
    '--set', `kubernetes_version=${pinnedRelease(series)}`,
    '--set', `kubernetes_repo_base=${packages.url}/core:/stable:/v${series}`,
    '--set', `kubernetes_repo_fingerprint=${packages.keyFingerprint}`,
    '--set', `github_mirror=${github.url}`,
  ];
}
