import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { lstat, mkdir, open, rm, writeFile, type FileHandle } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { finished, pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import { detectCompression, isTarArchive } from '../fetch/decompress.js';
import type { StepDownloads } from '../fetch/downloads.js';
import type { StepHostFiles } from '../steps/types.js';
import { APT_BUNDLE_GUEST_DIR, aptBundleSourceList, bundlePackages } from '../pkg/apt-bundle.js';
import { RPM_BUNDLE_GUEST_DIR, rpmBundlePackages, ZYPPER_REPOS_DIR, zypperBundleRepoFile } from '../pkg/rpm-bundle.js';
import type { ServedRepository } from '../pkg/types.js';
import { sha256File, sha256Text } from '../util/digest.js';
import { ImageBuilderError } from '../util/errors.js';
import type { Logger } from '../util/log.js';
import { packFile } from '../util/tar-pack.js';
import { BUNDLE_LAYOUT } from './collect.js';
import { BUNDLE_MANIFEST, checkBundlePath, checkManifest, MAX_MANIFEST_BYTES, openListedFile, verifyBundle, type BundleFile, type BundleManifest } from './manifest.js';

/** A bundle verified and ready to build from, offline. */
export interface OpenedBundle {
  /** What --bundle named (absolute): the BOM names the base image inside it, not the work directory it was unpacked to. */
  source: string;
  dir: string;
  manifest: BundleManifest;
  /** sha256 of its bundle.json: the bundle's identity, in the BOM. */
  sha256: string;
  /** The base image inside it (phase 0 verifies it against the bundle's SHA256SUMS). */
  baseImage: string;
  /** The steps' downloads, served by URL from the bundle. */
  downloads: StepDownloads;
  /** The container archives the recipe names, served by that name from the bundle. */
  hostFiles: StepHostFiles;
  /**
   * The package repositories (apt's, or dnf's/zypper's), copied into the build's work directory, where the guest
   * sees them (a read-only bind) and what they hold; none when the recipe installs nothing.
   */
  packages?: { hostDir: string; guestDir: `/run/${string}`; repository: ServedRepository };
}

/** At most this many entries in a bundle archive (a real one has a few hundred). */
const MAX_ARCHIVE_ENTRIES = 100_000;

/**
 * Unpacks a bundle archive into `into` (a fresh directory of the build): regular files and directories only, at
 * names that stay inside it, each written once (a name twice is refused); nothing else of the archive (links,
 * devices) is ever made. One pass: the base image is written once, and verified by phase 0 where it lands.
 */
export async function unpackBundle(archive: string, into: string): Promise<void> {
  const extract = tar.extract();
  let entries = 0;
  const refuse = (message: string) => new ImageBuilderError('VERIFY_FAILED', `${archive} is not a bundle archive: ${message}`, { hint: 'give --bundle the .tar `imagebuilder bundle --format tar` wrote, or its directory' });
  const done = pipeline(createReadStream(archive), extract);
  try {
    for await (const entry of extract) {
      const { header } = entry;
      if (++entries > MAX_ARCHIVE_ENTRIES) throw refuse(`more than ${MAX_ARCHIVE_ENTRIES} entries`);
      const name = header.name.replace(/^\.\//, '').replace(/\/$/, '');
      if (header.type === 'directory') {
        if (name) await mkdir(join(into, checkArchiveName(name, refuse)), { recursive: true });
        entry.resume();
        continue;
      }
      if (header.type !== 'file') throw refuse(`${JSON.stringify(header.name)} is a ${header.type}, and a bundle holds regular files only`);
      const path = join(into, checkArchiveName(name, refuse));
      await mkdir(dirname(path), { recursive: true });
      // 'wx': never over a file already unpacked (a name twice), never through anything but our own directories.
      const handle = await open(path, 'wx', 0o644).catch((error: NodeJS.ErrnoException) => {
        throw refuse(`${name}: ${error.code === 'EEXIST' ? 'the archive holds it twice' : error.message}`);
      });
      await pipeline(entry, handle.createWriteStream());
    }
    await done;
  } catch (error) {
    extract.destroy();
    await done.catch(() => undefined);
    throw error instanceof ImageBuilderError ? error : refuse((error as Error).message);
  }
}

function checkArchiveName(name: string, refuse: (message: string) => Error): string {
  try {
    return checkBundlePath(name);
  } catch {
    throw refuse(`${JSON.stringify(name)} leaves the bundle`);
  }
}

/**
 * Writes the bundle directory `dir` as one archive at `partial` (the caller renames it and writes its sha256
 * beside it), for carrying across the gap: bundle.json first, then its files in its order, owned by root, dated
 * 1970. Returns the archive's sha256, hashed as it is written.
 */
export async function packBundle(dir: string, manifest: BundleManifest, partial: string): Promise<string> {
  const pack = tar.pack();
  const hash = createHash('sha256');
  const written = pipeline(pack, async function* (source) {
    for await (const chunk of source) {
      hash.update(chunk as Buffer);
      yield chunk;
    }
  }, createWriteStream(partial, { mode: 0o644 }));
  try {
    const paths = [BUNDLE_MANIFEST, ...new Set(manifest.files.map((file) => file.path))];
    for (const path of paths) {
      const info = await lstat(join(dir, path));
      await packFile(pack, { name: path, size: info.size, mode: 0o644, mtime: new Date(0), uid: 0, gid: 0 }, join(dir, path));
    }
    pack.finalize();
    await written;
    return hash.digest('hex');
  } catch (error) {
    pack.destroy();
    await written.catch(() => undefined);
    await rm(partial, { force: true });
    throw error;
  }
}

const changed = (file: BundleFile) => new ImageBuilderError('VERIFY_FAILED', `bundle file ${file.path} changed after the bundle was verified`);

/** A file of the bundle opened again where it is used, as verification opened it (openListedFile); else it changed. */
async function openBundleFile(dir: string, file: BundleFile): Promise<FileHandle> {
  const handle = await openListedFile(dir, file).catch(() => undefined);
  if (!handle) throw changed(file);
  return handle;
}

/** A file of the bundle, read again (its manifest size, no more) and checked against the manifest at the moment it is used. */
async function readChecked(dir: string, file: BundleFile): Promise<Buffer> {
  const handle = await openBundleFile(dir, file);
  const bytes = Buffer.alloc(file.size);
  try {
    for (let at = 0; at < file.size; ) {
      const { bytesRead } = await handle.read(bytes, at, file.size - at, at);
      if (bytesRead === 0) throw changed(file);
      at += bytesRead;
    }
  } finally {
    await handle.close();
  }
  if (sha256Text(bytes) !== file.sha256) throw changed(file);
  return bytes;
}

/** A file of the bundle copied to `to` (never over anything when `exclusive`) from the descriptor openBundleFile checked, its manifest size and no more, then hashed there. */
async function copyBundleFile(dir: string, file: BundleFile, to: string, exclusive: boolean): Promise<void> {
  const handle = await openBundleFile(dir, file);
  const target = createWriteStream(to, { flags: exclusive ? 'wx' : 'w', mode: 0o644 });
  if (file.size === 0) {
    await handle.close();
    target.end();
    await finished(target);
  } else {
    await pipeline(handle.createReadStream({ start: 0, end: file.size - 1 }), target);
  }
  if ((await sha256File(to)) !== file.sha256) throw changed(file);
}

/** The largest repository index read into memory (a real one of a bundle is a few MiB). */
const MAX_INDEX_BYTES = 64 << 20;

/**
 * A repository file of the bundle copied to `to` (never over anything), checked there against the manifest: a
 * package is never held in memory, and an index no larger than MAX_INDEX_BYTES is returned for reading.
 */
async function copyChecked(dir: string, file: BundleFile, to: string): Promise<Buffer | undefined> {
  await mkdir(dirname(to), { recursive: true });
  if (file.kind === 'repository-index') {
    if (file.size > MAX_INDEX_BYTES) throw new ImageBuilderError('VERIFY_FAILED', `bundle file ${file.path} is ${file.size} bytes, more than a repository index may be (${MAX_INDEX_BYTES})`);
    const bytes = await readChecked(dir, file);
    await writeFile(to, bytes, { flag: 'wx', mode: 0o644 });
    return bytes;
  }
  await copyBundleFile(dir, file, to, true);
  return undefined;
}

function missing(url: string): ImageBuilderError {
  return new ImageBuilderError('COMMAND_FAILED', `the bundle has no ${url}`, {
    hint: 'the bundle was made for another recipe or other variables: run `imagebuilder bundle` again with this recipe on the connected side',
  });
}

/** The steps' downloads served from the bundle by URL: no network is ever reached. */
function bundledDownloads(dir: string, manifest: BundleManifest): StepDownloads {
  const byUrl = new Map(manifest.files.filter((file) => file.kind === 'download' && file.origin).map((file) => [file.origin!, file]));
  return {
    async bytes(url, options) {
      const file = byUrl.get(url);
      if (!file) throw missing(url);
      const cap = options.cap;
      if (cap && file.size > cap.bytes) throw new ImageBuilderError('COMMAND_FAILED', `${url}: the bundle's ${cap.what} is ${file.size} bytes, more than ${cap.bytes}`);
      options.log?.info(`from the bundle: ${url} (${file.size} bytes, sha256 ${file.sha256})`);
      return readChecked(dir, file);
    },
    async toFile(url, path, options) {
      const file = byUrl.get(url);
      if (!file) throw missing(url);
      await copyBundleFile(dir, file, path, false);
      options.log?.info(`from the bundle: ${url}`);
      return { sha256: file.sha256, size: file.size };
    },
  };
}

/**
 * The container archives the recipe names, served by that name from the bundle: each copied into the build's work
 * directory and checked there, so what the step reads is what was checked.
 */
function bundledHostFiles(dir: string, manifest: BundleManifest, workDir: string): StepHostFiles {
  const byName = new Map(manifest.files.filter((file) => file.kind === 'container-archive' && file.origin).map((file) => [file.origin!, file]));
  const copied = new Map<string, string>();
  return {
    async path(named, _hostPath, what) {
      const file = byName.get(named);
      if (!file) {
        throw new ImageBuilderError('STEP_FAILED', `the bundle has no ${what} ${named}`, {
          hint: 'the bundle was made for another recipe: run `imagebuilder bundle` again with this recipe on the connected side',
        });
      }
      if (!copied.has(file.sha256)) {
        const copy = join(workDir, 'bundle-host-files', file.sha256);
        await copyChecked(dir, file, copy);
        copied.set(file.sha256, copy);
      }
      return copied.get(file.sha256)!;
    },
  };
}

/**
 * The bundle's apt repository copied into the build's work directory (each file checked against the manifest as
 * it is copied), with the one source list apt is given (written here, never taken from the bundle).
 */
async function serveApt(dir: string, manifest: BundleManifest, workDir: string): Promise<OpenedBundle['packages']> {
  const files = repositoryFiles(manifest, BUNDLE_LAYOUT.apt);
  if (!files.length) return undefined;
  const hostDir = join(workDir, 'bundle-apt');
  await mkdir(join(hostDir, 'packages'), { recursive: true });
  await mkdir(join(hostDir, 'sources.list.d'));
  let index = '';
  for (const file of files) {
    const relative = file.path.slice(BUNDLE_LAYOUT.apt.length + 1);
    if (relative !== 'Packages' && relative !== 'Release' && !/^packages\/[0-9a-f]{64}\.deb$/.test(relative)) continue;
    const bytes = await copyChecked(dir, file, join(hostDir, relative));
    if (relative === 'Packages' && bytes) index = bytes.toString('latin1');
  }
  await writeFile(join(hostDir, 'bundle.list'), aptBundleSourceList(APT_BUNDLE_GUEST_DIR));
  return { hostDir, guestDir: APT_BUNDLE_GUEST_DIR, repository: { aptDir: APT_BUNDLE_GUEST_DIR, packages: bundlePackages(index) } };
}

/** A file of one of the bundle's rpm-md repositories: REPOSITORY/packages/SHA256.rpm or REPOSITORY/repodata/{primary,repomd}.xml. */
const RPM_REPOSITORY_FILE = /^([A-Za-z0-9][A-Za-z0-9_.:-]{0,99})\/(packages\/[0-9a-f]{64}\.rpm|repodata\/(primary|repomd)\.xml)$/;

/**
 * The bundle's rpm-md repositories copied into the build's work directory (each file checked against the manifest
 * as it is copied), with the .repo files zypper is given for them (written here, never taken from the bundle).
 */
async function serveRpm(dir: string, manifest: BundleManifest, workDir: string): Promise<OpenedBundle['packages']> {
  const files = repositoryFiles(manifest, BUNDLE_LAYOUT.rpm);
  if (!files.length) return undefined;
  const hostDir = join(workDir, 'bundle-rpm');
  await mkdir(join(hostDir, ZYPPER_REPOS_DIR), { recursive: true });
  const packages = new Map<string, Set<string>>();
  const repositories = new Set<string>();
  for (const file of files) {
    const match = RPM_REPOSITORY_FILE.exec(file.path.slice(BUNDLE_LAYOUT.rpm.length + 1));
    if (!match) continue;
    const [relative, repository] = match;
    const bytes = await copyChecked(dir, file, join(hostDir, relative));
    if (relative.endsWith('/primary.xml') && bytes) rpmBundlePackages(bytes.toString('utf8'), packages);
    repositories.add(repository);
  }
  for (const repository of repositories) await writeFile(join(hostDir, ZYPPER_REPOS_DIR, `${repository}.repo`), zypperBundleRepoFile(repository, RPM_BUNDLE_GUEST_DIR));
  return { hostDir, guestDir: RPM_BUNDLE_GUEST_DIR, repository: { rpm: { dir: RPM_BUNDLE_GUEST_DIR, repositories: [...repositories].sort() }, packages } };
}

/** The files of one kind of package repository in the bundle. */
const repositoryFiles = (manifest: BundleManifest, top: string) =>
  manifest.files.filter((file) => file.path.startsWith(`${top}/`) && (file.kind === 'package' || file.kind === 'repository-index'));

/** A file of an opened bundle as the user knows it: in the directory given, or `ARCHIVE!/path` for an archive. */
export function pathInBundle(bundle: Pick<OpenedBundle, 'source' | 'dir'>, path: string): string {
  return bundle.source === bundle.dir ? join(bundle.dir, path) : `${bundle.source}!/${path}`;
}

/**
 * Opens `--bundle`: a directory, or an archive unpacked into the work directory first. bundle.json is verified
 * before anything else (exit 3 for a missing or altered file); the base image's sha256 is phase 0's to check,
 * against the one bundle.json records (the caller passes it as phase 0's `expected`).
 */
export async function openBundle(source: string, workDir: string, log: Logger): Promise<OpenedBundle> {
  const info = await lstat(source).catch(() => undefined);
  if (!info) throw new ImageBuilderError('BAD_INPUT', `--bundle ${source}: no such file or directory`, { hint: 'give the directory or .tar that `imagebuilder bundle` wrote' });
  let dir = source;
  if (info.isFile()) {
    dir = join(workDir, 'bundle');
    await mkdir(dir);
    log.info(`unpacking the bundle ${source}`);
    await unpackBundle(source, dir);
  } else if (!info.isDirectory()) {
    throw new ImageBuilderError('BAD_INPUT', `--bundle ${source} is neither a directory nor a file`);
  }
  const { manifest, sha256 } = await verifyBundle(dir, { sizeOnly: ['base-image'] });
  log.info(`bundle ${source}: ${manifest.files.length} file(s) match its bundle.json (sha256 ${sha256})`);
  // `bundle` keeps the base as the disk image it used: a compressed one or an archive would be unpacked on the host.
  const baseFile = manifest.files.find((file) => file.path === manifest.base.path && file.kind === 'base-image')!;
  const head = await openBundleFile(dir, baseFile).then(async (handle) => {
    try {
      const { buffer, bytesRead } = await handle.read(Buffer.alloc(512), 0, 512, 0);
      return buffer.subarray(0, bytesRead);
    } finally {
      await handle.close();
    }
  });
  const packed = detectCompression(head) ?? (isTarArchive(head) ? 'tar' : undefined);
  if (packed) throw new ImageBuilderError('VERIFY_FAILED', `bundle ${source}: its base image ${manifest.base.path} is ${packed === 'tar' ? 'a tar archive' : `${packed}-compressed`}, which no bundle holds`, { hint: 're-run `imagebuilder bundle` on the connected side' });
  return {
    source: resolve(source),
    dir,
    manifest,
    sha256,
    baseImage: join(dir, manifest.base.path),
    downloads: bundledDownloads(dir, manifest),
    hostFiles: bundledHostFiles(dir, manifest, workDir),
    packages: (await serveApt(dir, manifest, workDir)) ?? (await serveRpm(dir, manifest, workDir)),
  };
}

/**
 * A bundle's manifest without unpacking it (a matrix reads it once per base before its builds): a directory's
 * verified as `apply --bundle` verifies it; an archive's read from its first entry, bundle.json (each build
 * then verifies the whole archive as it unpacks it).
 */
export async function peekBundle(source: string): Promise<BundleManifest> {
  const info = await lstat(source).catch(() => undefined);
  if (info?.isDirectory()) return (await verifyBundle(source, { sizeOnly: ['base-image'] })).manifest;
  if (!info?.isFile()) throw new ImageBuilderError('BAD_INPUT', `bundle ${source}: no such file or directory`, { hint: 'name the directory or .tar that `imagebuilder bundle` wrote' });
  const extract = tar.extract();
  const reading = pipeline(createReadStream(source), extract).catch(() => undefined);
  try {
    for await (const entry of extract) {
      if (entry.header.name !== BUNDLE_MANIFEST || entry.header.type !== 'file' || (entry.header.size ?? 0) > MAX_MANIFEST_BYTES) break;
      const chunks: Buffer[] = [];
      for await (const chunk of entry) chunks.push(chunk as Buffer);
      try {
        return checkManifest(JSON.parse(Buffer.concat(chunks).toString('utf8')));
      } catch (error) {
        throw error instanceof ImageBuilderError ? error : new ImageBuilderError('VERIFY_FAILED', `${source}: its ${BUNDLE_MANIFEST} is not JSON: ${(error as Error).message}`);
      }
    }
    throw new ImageBuilderError('VERIFY_FAILED', `${source} is not a bundle archive: its first entry is not ${BUNDLE_MANIFEST}`, { hint: 'give the .tar `imagebuilder bundle --format tar` wrote' });
  } finally {
    extract.destroy();
    await reading;
  }
}
