import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { stringify } from 'yaml';

/** Writes a recipe file for a test and returns its path. */
export async function writeRecipe(dir: string, name: string, steps: unknown[], variables?: Record<string, string>): Promise<string> {
  const path = join(dir, `${name}.yaml`);
  await writeFile(path, stringify({ name, ...(variables ? { variables } : {}), steps }));
  return path;
}

/**
 * The --set flags that point the shipped recipes/kubernetes-node.yaml, pinned to 1.30.1, at stand-ins: `packages`
 * serves pkgs.k8s.io's repository (the local mirror, or the RPM one) signed by its key, `github` the release
 * files. Nothing else differs from a build against pkgs.k8s.io and GitHub.
 */
export function nodeRecipeSets(packages: { url: string; keyFingerprint: string }, github: { url: string } = packages): string[] {
  return [
    '--set', 'kubernetes_version=1.30.1',
    '--set', `kubernetes_repo_base=${packages.url}/core:/stable:/v1.30`,
    '--set', `kubernetes_repo_fingerprint=${packages.keyFingerprint}`,
    '--set', `github_mirror=${github.url}`,
  ];
}
