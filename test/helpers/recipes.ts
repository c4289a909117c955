import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { stringify } from 'yaml';

/** Writes a recipe file for a test and returns its path. */
export async function writeRecipe(dir: string, name: string, steps: unknown[], variables?: Record<string, string>): Promise<string> {
  const path = join(dir, `${name}.yaml`);
  await writeFile(path, stringify({ name, ...(variables ? { variables } : {}), steps }));
  return path;
}
