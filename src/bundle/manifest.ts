/**
 * bundle.json: the manifest of an air-gapped bundle (issue #20). Every file of the bundle with its sha256 and
 * the URL it came from, and the recipe variables the bundle was made for. `apply --bundle` verifies it before
 * anything runs: a missing or altered file, or a path that leaves the bundle, is VERIFY_FAILED (exit 3).
 */
import { readFile, writeFile, lstat } from 'node:fs/promises';
import { isAbsolute, join, normalize, sep } from 'node:path';
import { ImageBuilderError } from '../util/errors.js';
import { sha256File, sha256Text } from '../util/digest.js';

export const BUNDLE_MANIFEST = 'bundle.json';
export const BUNDLE_MANIFEST_VERSION = 1;

export type BundleFileKind = 'base-image' | 'base-sums' | 'download' | 'repository-key' | 'package' | 'repository-index' | 'bundle-key';

export interface BundleFile {
  /** Relative to the bundle directory, '/'-separated, never leaving it. */
  path: string;
  sha256: string;
  size: number;
  kind: BundleFileKind;
  /** Where it came from (a URL, or the local path of the base image); absent for files the bundle made. */
  origin?: string;
}

export interface BundleManifest {
  version: number;
  recipe: { path: string; sha256: string };
  variables: Record<string, string>;
  files: BundleFile[];
}

/** A path inside the bundle: relative, no `..`, no absolute path. */
export function checkBundlePath(path: string): string {
  const normalized = normalize(path);
  if (!path || isAbsolute(path) || normalized.startsWith('..') || normalized.split(sep).includes('..') || normalized !== path) {
    throw new ImageBuilderError('VERIFY_FAILED', `bundle manifest names a path outside the bundle: ${JSON.stringify(path)}`);
  }
  return normalized;
}

/** Hash `entries` (files already in `dir`) and write bundle.json; returns the manifest. */
export async function writeBundleManifest(
  dir: string,
  recipe: { path: string; text: string },
  variables: Record<string, string>,
  entries: Omit<BundleFile, 'sha256' | 'size'>[],
): Promise<BundleManifest> {
  const files: BundleFile[] = [];
  for (const entry of [...entries].sort((a, b) => a.path.localeCompare(b.path))) {
    const full = join(dir, checkBundlePath(entry.path));
    const info = await lstat(full);
    if (!info.isFile()) throw new ImageBuilderError('INTERNAL', `bundle file is not a regular file: ${entry.path}`);
    files.push({ ...entry, sha256: await sha256File(full), size: info.size });
  }
  const manifest: BundleManifest = {
    version: BUNDLE_MANIFEST_VERSION,
    recipe: { path: recipe.path, sha256: sha256Text(recipe.text) },
    variables: Object.fromEntries(Object.entries(variables).sort(([a], [b]) => a.localeCompare(b))),
    files,
  };
  await writeFile(join(dir, BUNDLE_MANIFEST), `${JSON.stringify(manifest, null, 2)}\n`);
  return manifest;
}

/**
 * Read bundle.json and check every file it lists: present, a regular file, its size and sha256 as recorded.
 * Every problem is reported at once (VERIFY_FAILED, exit 3). Returns the manifest and its own sha256.
 */
export async function verifyBundle(dir: string): Promise<{ manifest: BundleManifest; sha256: string }> {
  let text: string;
  try {
    text = await readFile(join(dir, BUNDLE_MANIFEST), 'utf8');
  } catch (error) {
    throw new ImageBuilderError('VERIFY_FAILED', `${join(dir, BUNDLE_MANIFEST)} cannot be read: ${(error as Error).message}`, { hint: 're-run `imagebuilder bundle`' });
  }
  let manifest: BundleManifest;
  try {
    manifest = JSON.parse(text) as BundleManifest;
  } catch (error) {
    throw new ImageBuilderError('VERIFY_FAILED', `${BUNDLE_MANIFEST} is not JSON: ${(error as Error).message}`);
  }
  if (manifest?.version !== BUNDLE_MANIFEST_VERSION || !Array.isArray(manifest.files)) {
    throw new ImageBuilderError('VERIFY_FAILED', `${BUNDLE_MANIFEST} is not a version ${BUNDLE_MANIFEST_VERSION} bundle manifest`);
  }
  const problems: string[] = [];
  for (const file of manifest.files) {
    const path = checkBundlePath(file.path);
    const full = join(dir, path);
    try {
      const info = await lstat(full);
      if (!info.isFile()) { problems.push(`${path}: not a regular file`); continue; }
      if (info.size !== file.size) { problems.push(`${path}: size ${info.size}, manifest says ${file.size}`); continue; }
      const actual = await sha256File(full);
      if (actual !== file.sha256) problems.push(`${path}: sha256 ${actual}, manifest says ${file.sha256}`);
    } catch {
      problems.push(`${path}: missing`);
    }
  }
  if (problems.length > 0) {
    throw new ImageBuilderError('VERIFY_FAILED', `bundle ${dir} does not match its ${BUNDLE_MANIFEST} (${problems.length} file(s))`, {
      detail: problems.join('\n'),
      hint: 're-run `imagebuilder bundle` on the connected side and carry the bundle across again',
    });
  }
  return { manifest, sha256: sha256Text(text) };
}
