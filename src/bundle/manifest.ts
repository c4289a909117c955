/**
 * bundle.json: the manifest of an air-gapped bundle (issue #20). Every file of the bundle with its sha256 and
 * the URL it came from, and the recipe variables the bundle was made for. `apply --bundle` verifies it before
 * anything runs: a missing or altered file, or a path that leaves the bundle, is VERIFY_FAILED (exit 3).
 */
import { constants } from 'node:fs';
import { writeFile, lstat, type FileHandle } from 'node:fs/promises';
import { isAbsolute, join, normalize, sep } from 'node:path';
import { errorMessage, ImageBuilderError } from '../util/errors.js';
import { hashOpenFile, sha256File, sha256Text } from '../util/digest.js';
import { FileTooLarge, readRegularFile } from '../util/fs.js';
import { openBeneath } from '../util/guest-fs.js';
import { TOOL_VERSION } from '../version.js';
import { IMAGE_FORMATS } from '../image/qemu-img.js';

export const BUNDLE_MANIFEST = 'bundle.json';
export const BUNDLE_MANIFEST_VERSION = 1;

export type BundleFileKind = 'base-image' | 'base-sums' | 'download' | 'container-archive' | 'repository-key' | 'package' | 'repository-index' | 'bundle-key';

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
  tool: { name: 'imagebuilder'; version: string };
  /** The base image: its place in the bundle, its sha256 and format, and where it came from. */
  base: { path: string; sha256: string; format: string; origin: string };
  /** The recipe it was made for (its path on the connected side) and the variables it was resolved with. */
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

/** bundle.json's text: its sha256 is the bundle's identity. */
export const manifestText = (manifest: BundleManifest) => `${JSON.stringify(manifest, null, 2)}\n`;

/** Hash `entries` (files already in `dir`) and write bundle.json; returns the manifest. */
export async function writeBundleManifest(
  dir: string,
  recipe: { path: string; sha256: string },
  variables: Record<string, string>,
  entries: Omit<BundleFile, 'sha256' | 'size'>[],
  extra: Pick<BundleManifest, 'base'>,
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
    tool: { name: 'imagebuilder', version: TOOL_VERSION },
    base: extra.base,
    recipe: { path: recipe.path, sha256: recipe.sha256 },
    variables: Object.fromEntries(Object.entries(variables).sort(([a], [b]) => a.localeCompare(b))),
    files,
  };
  await writeFile(join(dir, BUNDLE_MANIFEST), manifestText(manifest));
  return manifest;
}

const SHA256 = /^[0-9a-f]{64}$/;
/** bundle.json lists a few hundred files in a real bundle (~100 KiB): read whole only below this. */
export const MAX_MANIFEST_BYTES = 64 << 20;

/** A real bundle lists a few hundred files: its archive holds at most 100,000 entries. */
export const MAX_BUNDLE_FILES = 100_000;

/** The manifest as read: every field this tool uses is of its type (a hostile bundle.json may say anything). */
export function checkManifest(value: unknown): BundleManifest {
  const manifest = value as BundleManifest;
  const bad = (what: string) => new ImageBuilderError('VERIFY_FAILED', `${BUNDLE_MANIFEST} is not a bundle manifest this version reads: ${what}`, { hint: 'make the bundle again with this version: imagebuilder bundle' });
  if (manifest?.version !== BUNDLE_MANIFEST_VERSION) throw bad(`version ${JSON.stringify(manifest?.version)}, not ${BUNDLE_MANIFEST_VERSION}`);
  if (!Array.isArray(manifest.files)) throw bad('no file list');
  if (manifest.files.length > MAX_BUNDLE_FILES) throw bad(`${manifest.files.length} files, more than any bundle's (${MAX_BUNDLE_FILES})`);
  // Each path once: a path listed over and over would be hashed as often.
  const paths = new Set<string>();
  for (const file of manifest.files) {
    if (paths.has(file?.path)) throw bad(`${JSON.stringify(file.path).slice(0, 200)} is listed twice`);
    paths.add(file?.path);
    if (typeof file?.path !== 'string' || typeof file.sha256 !== 'string' || !SHA256.test(file.sha256) || !Number.isSafeInteger(file.size) || file.size < 0 || typeof file.kind !== 'string' || (file.origin !== undefined && typeof file.origin !== 'string')) {
      throw bad(`a file entry is malformed: ${JSON.stringify(file).slice(0, 200)}`);
    }
    checkBundlePath(file.path);
  }
  const base = manifest.base;
  if (typeof base?.path !== 'string' || typeof base.sha256 !== 'string' || !SHA256.test(base.sha256) || !(IMAGE_FORMATS as readonly string[]).includes(base.format) || !manifest.files.some((file) => file.path === base.path && file.kind === 'base-image')) throw bad('no base image');
  if (typeof manifest.recipe?.sha256 !== 'string' || typeof manifest.variables !== 'object' || manifest.variables === null) throw bad('no recipe');
  return manifest;
}

/**
 * A listed file of a directory bundle, opened one name at a time from the bundle's directory, none followed (a
 * directory on the way swapped for a link to /dev is not stepped into), never a FIFO or device (looked at before
 * it is opened): its descriptor while it is a regular file of the manifest's size, else undefined (closed). A
 * bundle on a share may change under us; its users read the manifest's size and no more.
 */
export async function openListedFile(dir: string, file: BundleFile): Promise<FileHandle | undefined> {
  const handle = await openBeneath(dir, file.path, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY);
  const info = await handle.stat().catch(() => undefined);
  if (info?.isFile() && info.size === file.size) return handle;
  await handle.close();
  return undefined;
}

/** lstat of `path` inside `dir`, refusing a symlink anywhere on the way (a bundle's directory names a file by it). */
async function lstatInside(dir: string, path: string) {
  const parts = path.split('/');
  for (let i = 1; i < parts.length; i++) {
    const info = await lstat(join(dir, ...parts.slice(0, i)));
    if (!info.isDirectory()) throw new Error(`${parts.slice(0, i).join('/')} is not a directory`);
  }
  return lstat(join(dir, path));
}

/**
 * Read bundle.json and check every file it lists: present, a regular file reached through directories only, its
 * size and sha256 as recorded. Every problem is reported at once (VERIFY_FAILED, exit 3). `sizeOnly` kinds are
 * checked by size here because another check hashes them anyway (the base image: phase 0, against the bundle's
 * SHA256SUMS, which is hashed here). Returns the manifest and its own sha256, the bundle's identity.
 */
export async function verifyBundle(dir: string, options: { sizeOnly?: BundleFileKind[] } = {}): Promise<{ manifest: BundleManifest; sha256: string }> {
  let text: string;
  try {
    // Opened once, not followed, never a FIFO: what was checked is what is read.
    const bytes = await readRegularFile(join(dir, BUNDLE_MANIFEST), { follow: false, maxBytes: MAX_MANIFEST_BYTES });
    if (!bytes) throw new Error('no such file');
    text = bytes.toString('utf8');
  } catch (error) {
    const why = error instanceof FileTooLarge ? `${error.size} bytes, more than any bundle's (${MAX_MANIFEST_BYTES})` : (error as Error).message;
    throw new ImageBuilderError('VERIFY_FAILED', `${join(dir, BUNDLE_MANIFEST)} cannot be read: ${why}`, { hint: 'give --bundle the directory (or .tar) `imagebuilder bundle` wrote' });
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw new ImageBuilderError('VERIFY_FAILED', `${BUNDLE_MANIFEST} is not JSON: ${(error as Error).message}`);
  }
  const manifest = checkManifest(parsed);
  const problems: string[] = [];
  for (const file of manifest.files) {
    const path = file.path;
    try {
      const info = await lstatInside(dir, path);
      if (!info.isFile()) { problems.push(`${path}: not a regular file`); continue; }
      if (info.size !== file.size) { problems.push(`${path}: size ${info.size}, manifest says ${file.size}`); continue; }
      if (options.sizeOnly?.includes(file.kind)) continue;
      // Hashed through a descriptor opened one name at a time from the bundle's directory, none followed, and
      // looked at before it is opened: a name swapped since the lstat for a link or a FIFO is refused, not waited on.
      // null: the open failed, and says why; undefined: what is there now is not the file listed.
      const handle = await openListedFile(dir, file).catch((error: NodeJS.ErrnoException) => {
        problems.push(`${path}: ${['ELOOP', 'ENOENT', 'ENOTDIR'].includes(error.code ?? '') || error instanceof ImageBuilderError ? 'replaced while it was being verified' : errorMessage(error)}`);
        return null;
      });
      if (handle === null) continue;
      if (!handle) { problems.push(`${path}: replaced while it was being verified`); continue; }
      const actual = (await hashOpenFile(handle, ['sha256']).finally(() => handle.close())).sha256!;
      if (actual !== file.sha256) problems.push(`${path}: sha256 ${actual}, manifest says ${file.sha256}`);
    } catch (error) {
      problems.push(`${path}: missing${(error as NodeJS.ErrnoException).code === 'ENOENT' ? '' : ` (${(error as Error).message})`}`);
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
