import { readdir, rm, stat } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { probeInputImage, type ImageFormat } from '../image/qemu-img.js';
import { hashFile, type HashAlgorithm } from '../util/digest.js';
import { FileTooLarge, NotRegularFile, readRegularFile } from '../util/fs.js';
import { ImageBuilderError } from '../util/errors.js';
import type { Runner } from '../util/exec.js';
import type { Logger } from '../util/log.js';
import {
  acquireLock,
  cacheLayout,
  ensureCacheLayout,
  findByPublishedSum,
  imagePath,
  lockPath,
  readImageRecord,
  readUrlRecord,
  removeImage,
  sourceKey,
  storeImage,
  writeImageRecord,
  writeUrlRecord,
  type CacheLayout,
  type ImageOrigin,
  type ImageRecord,
} from './cache.js';
import {
  parseChecksumFlag,
  parseChecksums,
  parseImageChecksumFile,
  perImageSumsNames,
  selectChecksum,
  SIGNATURE_SUFFIXES,
  stripPgpArmor,
  SUMS_FILE_NAMES,
  verifySum,
  type ExpectedSum,
} from './checksums.js';
import { decompressFile, detectCompression, isTarArchive, readHead, stripCompressionSuffix, type Compression } from './decompress.js';
import { hashFileRemembered } from './digest-memo.js';
import {
  createDispatcher,
  downloadFile,
  fetchOptional,
  isDiscardableFetchFailure,
  MAX_INDEX_BYTES,
  MAX_SIGNATURE_BYTES,
  MAX_SUMS_BYTES,
  parseImageUrl,
  urlFileNameOf,
  type HttpTimeouts,
} from './http.js';
import { createProgress } from './progress.js';
import type { RetryHooks, RetryPolicy } from './retry.js';
import { verifySignature } from './signature.js';

/** How phase 0 treats a disk image: the `--checksum`, `--keyring`, `--offline` … flags. */
export interface DiskImageOptions {
  /** `sha256:HEX` or `sha512:HEX`: the expected sum, instead of a sums file. */
  checksum?: string;
  /** The expected sum as a caller vouches for it (a bundle's manifest): no sums file beside the image is read. */
  expected?: ExpectedSum;
  /** A remote image no sums file names is used anyway (the BOM records `verified: false`). */
  insecureSkipVerify?: boolean;
  /** Verify the sums file's OpenPGP signature with gpgv against this keyring. */
  keyring?: string;
  /** Use the cache alone: a URL must have been fetched before. */
  offline?: boolean;
  /** Default: ~/.cache/imagebuilder (the CLI passes --cache / $IMAGEBUILDER_CACHE). */
  cacheDir?: string;
  /** Hash every image anew, not trusting sums remembered for an unchanged file (digest-memo.ts). */
  rehash?: boolean;
  /** A progress bar when stderr is a terminal (default), else log lines; false: log lines only. */
  progress?: boolean;
  retry?: RetryPolicy;
  retryHooks?: Pick<RetryHooks, 'sleep' | 'now' | 'random'>;
  timeouts?: HttpTimeouts;
}

export interface ObtainedImage {
  /** The file to use: the local image, or the verified one in the cache. */
  path: string;
  /** Its name as published, without a compression suffix: what outputs are named after. */
  name: string;
  sha256: string;
  format: ImageFormat;
  virtualSize: number;
  url?: string;
  /** The sum that vouched for it when it is not the sha256 of `path` (a compressed download, or sha512). */
  published?: { name: string; compression?: Compression; algorithm: HashAlgorithm; hash: string };
  checksumSource?: string;
  verified: boolean;
  signature?: { keyring: string; signature: string };
  /** Where it came from this time. */
  source: 'local' | 'cache' | 'download';
}

interface Context {
  run: Runner;
  log: Logger;
  signal?: AbortSignal;
  options: DiskImageOptions;
}

/**
 * Phase 0: a disk image given as a local path or an http(s) URL, verified and (for URLs and compressed files)
 * cached. A local uncompressed image is used where it is; everything else ends up in the cache.
 */
export async function obtainImage(run: Runner, image: string, log: Logger, signal: AbortSignal | undefined, options: DiskImageOptions = {}): Promise<ObtainedImage> {
  const context: Context = { run, log, signal, options };
  const url = parseImageUrl(image);
  if (url) return options.offline ? obtainOffline(url, context) : obtainRemote(url, context);
  return obtainLocal(resolve(image), context);
}

// ---------------------------------------------------------------------------------------------------------
// Where the sums files are: beside a URL or a local file.

interface SumsLocation {
  /** The URL or path of a file beside the image. */
  describe(name: string): string;
  /** Its content, or undefined when there is no such file. */
  read(name: string): Promise<Buffer | undefined>;
  /** Names of Fedora-style `*CHECKSUM` files beside the image, where the directory can be listed. */
  listChecksumFiles(): Promise<string[]>;
}

function remoteLocation(url: URL, context: Context, dispatcher: Awaited<ReturnType<typeof createDispatcher>>): SumsLocation {
  const beside = (name: string) => new URL(encodeURIComponent(name), url).href;
  const fetchOptions = { signal: context.signal, dispatcher, log: context.log, retry: context.options.retry, retryHooks: context.options.retryHooks, timeouts: context.options.timeouts };
  return {
    describe: beside,
    read: (name) =>
      fetchOptional(beside(name), {
        ...fetchOptions,
        cap: SIGNATURE_SUFFIXES.some((suffix) => name.endsWith(suffix)) ? { bytes: MAX_SIGNATURE_BYTES, what: 'signature' } : { bytes: MAX_SUMS_BYTES, what: 'sums file' },
      }),
    async listChecksumFiles() {
      // A mirror's directory index (Fedora's CHECKSUM files are named after the release).
      const index = await fetchOptional(new URL('./', url).href, { ...fetchOptions, cap: { bytes: MAX_INDEX_BYTES, what: 'directory index' } }).catch(() => undefined);
      const names = [...(index?.toString('utf8') ?? '').matchAll(/href="([^"/?#]*CHECKSUM)"/g)].map((m) => decodeURIComponent(m[1]));
      return [...new Set(names)].slice(0, 5);
    },
  };
}

function localLocation(imageFile: string): SumsLocation {
  const dir = dirname(imageFile);
  return {
    describe: (name) => join(dir, name),
    // Capped as a download is, and only a regular file (a FIFO there would hang the build, a device be read).
    read: (name) => readSumsFile(join(dir, name), SIGNATURE_SUFFIXES.some((suffix) => name.endsWith(suffix)) ? MAX_SIGNATURE_BYTES : MAX_SUMS_BYTES),
    listChecksumFiles: async () => (await readdir(dir).catch(() => [] as string[])).filter((n) => n.endsWith('CHECKSUM') && n !== 'CHECKSUM').slice(0, 5),
  };
}

/** A sums or signature file beside a local image: undefined when absent; refused when not a regular file or larger than `maxBytes`. */
async function readSumsFile(path: string, maxBytes: number): Promise<Buffer | undefined> {
  const hint = 'remove it, or give the sum with --checksum sha256:HEX';
  try {
    // A link to a file is followed: users keep their images and sums so.
    return await readRegularFile(path, { follow: true, maxBytes });
  } catch (error) {
    if (error instanceof NotRegularFile) {
      if (error.isDirectory) return undefined;
      throw new ImageBuilderError('BAD_INPUT', `${path} is not a regular file (a FIFO, socket or device), so it is not read as a sums file`, { hint });
    }
    if (error instanceof FileTooLarge) throw new ImageBuilderError('BAD_INPUT', `${path} is ${error.size} bytes, more than a sums or signature file's ${maxBytes}`, { hint });
    throw error;
  }
}

/**
 * The expected sum of `fileName`: `--checksum`, else the first sums file beside it that names it exactly
 * (SHA256SUMS, sha256sum.txt, SHA512SUMS, sha512sum.txt, CHECKSUM, `<image>.sha256`, `<image>.sha512`, then any
 * `*CHECKSUM` a directory listing shows). With a keyring, that sums file's signature must verify (detached
 * `.gpg`/`.sign`/`.sig`/`.asc` beside it, or clearsigned), and the sum is read from the verified text.
 * Undefined when nothing names the file; the caller decides whether that is an error.
 */
async function expectedSum(location: SumsLocation, fileName: string, context: Context): Promise<{ expected?: ExpectedSum; looked: string[] }> {
  const { options, log } = context;
  if (options.expected) return { expected: options.expected, looked: [] };
  if (options.checksum) {
    if (options.keyring) log.warn('--keyring is not used: --checksum gives the sum directly');
    return { expected: parseChecksumFlag(options.checksum), looked: [] };
  }
  const looked: string[] = [];
  const tryFile = async (name: string, perImage?: HashAlgorithm): Promise<ExpectedSum | undefined> => {
    const data = await location.read(name);
    if (!data) return undefined;
    const source = location.describe(name);
    const pick = (text: string) => (perImage ? parseImageChecksumFile(text, fileName, perImage) : selectChecksum(parseChecksums(text), fileName));
    let entry = pick(data.toString('utf8'));
    if (!entry) {
      const names = parseChecksums(data.toString('utf8')).map((e) => e.name);
      looked.push(`${source}${names.length ? ` (lists ${names.slice(0, 8).join(', ')}${names.length > 8 ? ', …' : ''})` : ' (no entries)'}`);
      return undefined;
    }
    let signedWith: ExpectedSum['signedWith'];
    if (options.keyring) {
      const signed = await checkSumsSignature(location, name, data, context);
      signedWith = { keyring: options.keyring, signature: signed.signature };
      // Only what the signature covers counts.
      entry = pick(signed.text);
      if (!entry) throw new ImageBuilderError('VERIFY_FAILED', `the signed part of ${source} does not name ${fileName}`, { hint: 'text outside the signature is never trusted' });
    }
    log.info(`${fileName}: ${entry.algorithm} ${entry.hash} according to ${source}`);
    return { algorithm: entry.algorithm, hash: entry.hash, source, sumsText: data.toString('utf8'), signedWith };
  };
  for (const name of SUMS_FILE_NAMES) {
    const expected = await tryFile(name);
    if (expected) return { expected, looked };
  }
  for (const [i, name] of perImageSumsNames(fileName).entries()) {
    const expected = await tryFile(name, (['sha256', 'sha512'] as const)[i]);
    if (expected) return { expected, looked };
  }
  for (const name of await location.listChecksumFiles()) {
    if (SUMS_FILE_NAMES.includes(name)) continue;
    const expected = await tryFile(name);
    if (expected) return { expected, looked };
  }
  return { expected: undefined, looked };
}

async function checkSumsSignature(location: SumsLocation, name: string, data: Buffer, context: Context): Promise<{ text: string; signature: string }> {
  const source = location.describe(name);
  const common = { keyring: context.options.keyring!, data, dataSource: source, run: context.run, log: context.log, signal: context.signal };
  if (stripPgpArmor(data.toString('utf8')).clearsigned) {
    return { text: await verifySignature({ ...common, signatureSource: `${source} (clearsigned)` }), signature: source };
  }
  for (const suffix of SIGNATURE_SUFFIXES) {
    const signature = await location.read(`${name}${suffix}`);
    if (!signature) continue;
    const signatureSource = location.describe(`${name}${suffix}`);
    return { text: await verifySignature({ ...common, signature, signatureSource }), signature: signatureSource };
  }
  throw new ImageBuilderError('VERIFY_FAILED', `--keyring: ${source} is not signed`, {
    detail: `no clearsigned text and no detached signature ${SIGNATURE_SUFFIXES.map((s) => `${name}${s}`).join(', ')} beside it`,
    hint: 'without --keyring the sums file is used unsigned',
  });
}

// ---------------------------------------------------------------------------------------------------------
// The cache.

const now = () => new Date().toISOString();

function describeVerification(record: ImageRecord): string {
  return record.origin.verified ? `verified against ${record.origin.checksumSource}` : 'unverified';
}

/** What phase 0 returns for a cached image, and its record touched (last used now). */
async function useCached(layout: CacheLayout, record: ImageRecord, context: Context, origin?: Partial<ImageOrigin>, expected?: ExpectedSum): Promise<ObtainedImage> {
  // fetchedAt stays the time of the download; the sums file and URL are this use's.
  const updated: ImageRecord = { ...record, origin: origin ? { ...record.origin, ...origin, fetchedAt: record.origin.fetchedAt } : record.origin, lastUsedAt: now() };
  await writeImageRecord(layout, updated);
  if (updated.origin.url) await writeUrlRecord(layout, { url: updated.origin.url, sha256: record.sha256, fetchedAt: updated.origin.fetchedAt });
  const path = imagePath(layout, record.sha256);
  context.log.info(`using the cached ${record.published.name} (${path}, sha256 ${record.sha256}), ${describeVerification(updated)}`);
  return resultOf(path, updated, 'cache', expected);
}

function resultOf(path: string, record: ImageRecord, source: ObtainedImage['source'], expected?: ExpectedSum): ObtainedImage {
  // The sum the published file was checked by (or, unverified, its sha256) when it is not the file's sha256.
  const verifiedBy = expected ?? publishedSumOf(record);
  const differs = verifiedBy && (verifiedBy.algorithm !== 'sha256' || verifiedBy.hash !== record.sha256);
  return {
    path,
    name: stripCompressionSuffix(record.published.name),
    sha256: record.sha256,
    format: record.format as ImageFormat,
    virtualSize: record.virtualSize ?? 0,
    url: record.origin.url,
    published: differs ? { name: record.published.name, compression: record.published.compression, algorithm: verifiedBy.algorithm, hash: verifiedBy.hash } : undefined,
    checksumSource: record.origin.checksumSource,
    verified: record.origin.verified,
    signature: record.origin.signature,
    source,
  };
}

/** The strongest sum recorded of the published file (for a verified one, the sums file's). */
function publishedSumOf(record: ImageRecord): { algorithm: HashAlgorithm; hash: string } | undefined {
  for (const algorithm of ['sha512', 'sha256'] as const) {
    const hash = record.published.sums[algorithm];
    if (hash) return { algorithm, hash };
  }
  return undefined;
}

/** Where sums of unchanged files are remembered: the cache's digests/ (--rehash reads the file anyway, and remembers what it found). */
const memoOptions = (context: Context) => ({ dir: cacheLayout(context.options.cacheDir).digests, rehash: context.options.rehash, signal: context.signal });

/**
 * Whether a cached image is intact: its content is hashed again whenever the file changed since it was last
 * hashed (every use with --no-cache), and a damaged one is removed so it is fetched again.
 */
async function intact(layout: CacheLayout, record: ImageRecord, context: Context): Promise<boolean> {
  const path = imagePath(layout, record.sha256);
  if (!(await stat(path).catch(() => undefined))?.isFile()) return false;
  const { sums } = await hashFileRemembered(path, ['sha256'], memoOptions(context));
  if (sums.sha256 === record.sha256) return true;
  context.log.warn(`the cached image ${path} is corrupted (its sha256 is now ${sums.sha256}): removing it and fetching it again`);
  await removeImage(layout, record.sha256);
  return false;
}

/** A cached image whose published file had the expected sum, intact. */
async function findCached(layout: CacheLayout, expected: ExpectedSum, context: Context): Promise<ImageRecord | undefined> {
  for (const record of await findByPublishedSum(layout, expected.algorithm, expected.hash)) {
    if (!record.format) continue;
    if (await intact(layout, record, context)) return record;
  }
  return undefined;
}

/**
 * Moves a verified download (or a local compressed file) into the store: decompressed if it is compressed
 * (whatever its name says), checked to be a disk image qemu-img can read, then renamed to its sha256.
 */
async function commitToCache(
  layout: CacheLayout,
  key: string,
  file: { path: string; name: string; sums: Partial<Record<HashAlgorithm, string>>; size: number },
  origin: ImageOrigin,
  context: Context,
): Promise<ImageRecord> {
  const compression = detectCompression(await readHead(file.path));
  let payload = file.path;
  let sha256 = file.sums.sha256!;
  let size = file.size;
  const unpacked = join(layout.tmp, `${key}.unpack-${process.pid}`);
  try {
    if (compression) {
      context.log.info(`decompressing ${file.name} (${compression})`);
      const t0 = Date.now();
      ({ sha256, size } = await decompressFile(file.path, unpacked, compression, context.signal));
      context.log.info(`decompressed ${file.name}: ${size} bytes, sha256 ${sha256} (${((Date.now() - t0) / 1000).toFixed(1)}s)`);
      payload = unpacked;
    }
    if (isTarArchive(await readHead(payload))) {
      throw new ImageBuilderError('BAD_INPUT', `${file.name} is a tar archive, not a disk image`, { hint: 'unpack it and give the disk image inside (e.g. disk.raw) with --disk-image' });
    }
    const info = await probeInputImage(context.run, payload, context.log);
    const record: ImageRecord = {
      version: 1,
      sha256,
      size,
      format: info.format,
      virtualSize: info.virtualSize,
      published: { name: file.name, compression, size: file.size, sums: file.sums },
      origin,
      lastUsedAt: now(),
    };
    await storeImage(layout, payload, record);
    if (origin.url) await writeUrlRecord(layout, { url: origin.url, sha256, fetchedAt: origin.fetchedAt });
    return record;
  } finally {
    await rm(unpacked, { force: true });
  }
}

// ---------------------------------------------------------------------------------------------------------
// The three ways in.

async function obtainRemote(url: URL, context: Context): Promise<ObtainedImage> {
  const { options, log, signal } = context;
  const layout = cacheLayout(options.cacheDir);
  await ensureCacheLayout(layout, log);
  const fileName = urlFileNameOf(url);
  const key = sourceKey(url.href);
  const dispatcher = await createDispatcher(options.timeouts);
  // One process per URL: a second waits here, then finds the image in the cache.
  const release = await acquireLock(lockPath(layout, key), url.href, { signal, log });
  try {
    const { expected, looked } = await expectedSum(remoteLocation(url, context, dispatcher), fileName, context);
    if (!expected && !options.insecureSkipVerify) {
      throw new ImageBuilderError('VERIFY_FAILED', `no checksum found for ${url.href}`, {
        detail: `looked beside it for ${[...SUMS_FILE_NAMES, ...perImageSumsNames(fileName)].join(', ')}${looked.length ? `\nfound, without an entry for ${fileName}:\n  ${looked.join('\n  ')}` : ''}`,
        hint: 'give the sum with --checksum sha256:HEX, or accept an unverified image with --insecure-skip-verify (the BOM records it)',
      });
    }
    if (!expected) log.warn(`no sums file names ${fileName}: using it UNVERIFIED (--insecure-skip-verify)`);
    const fetchedAt = now();
    const origin: ImageOrigin = {
      url: url.href,
      checksumSource: expected?.source,
      sumsText: expected?.sumsText,
      signature: expected?.signedWith,
      verified: expected !== undefined,
      fetchedAt,
    };

    // Cached already? By the published sum when there is one; else by URL, if the server says it is unchanged.
    let unverifiedCandidate: ImageRecord | undefined;
    if (expected) {
      const hit = await findCached(layout, expected, context);
      if (hit) return await useCached(layout, hit, context, { ...origin, etag: hit.origin.etag, lastModified: hit.origin.lastModified }, expected);
    } else {
      const pointer = await readUrlRecord(layout, url.href);
      const record = pointer && (await readImageRecord(layout, pointer.sha256));
      if (record && (record.origin.etag || record.origin.lastModified) && (await intact(layout, record, context))) unverifiedCandidate = record;
    }

    const partial = join(layout.tmp, `${key}.partial`);
    const progress = createProgress(fileName, log, { enabled: options.progress !== false });
    const download = await downloadFile(url.href, partial, {
      signal,
      dispatcher,
      log,
      retry: options.retry,
      retryHooks: options.retryHooks,
      timeouts: options.timeouts,
      ifNotModified: unverifiedCandidate ? { etag: unverifiedCandidate.origin.etag, lastModified: unverifiedCandidate.origin.lastModified } : undefined,
      onStart: (state) => progress.start(state),
      onProgress: (state) => progress.update(state),
      beforeLog: () => progress.clear(),
    })
      .catch(async (error) => {
        // Too slow or more than announced: the server is suspect, so nothing of it stays to resume from.
        if (isDiscardableFetchFailure(error)) {
          await rm(partial, { force: true });
          await rm(`${partial}.json`, { force: true });
        }
        throw error;
      })
      .finally(() => progress.clear());
    if (download.notModified && unverifiedCandidate) {
      log.info(`${url.href} is unchanged since it was cached (HTTP 304)`);
      return await useCached(layout, unverifiedCandidate, context, { ...origin, etag: unverifiedCandidate.origin.etag, lastModified: unverifiedCandidate.origin.lastModified });
    }
    progress.done({ received: download.size });
    if (download.resumes) log.info(`${fileName}: resumed ${download.resumes} time${download.resumes === 1 ? '' : 's'} with a Range request`);

    const sums = await hashFile(partial, ['sha256', ...(expected ? [expected.algorithm] : [])], signal);
    if (expected) {
      try {
        verifySum(url.href, sums, expected);
      } catch (error) {
        // A file that does not match is never kept, not even to resume from.
        await rm(partial, { force: true });
        await rm(`${partial}.json`, { force: true });
        throw error;
      }
      log.info(`verified ${fileName} (${expected.algorithm}) against ${expected.source}`);
    }
    const record = await commitToCache(
      layout,
      key,
      { path: partial, name: fileName, sums, size: download.size },
      { ...origin, etag: download.etag, lastModified: download.lastModified },
      context,
    );
    await rm(partial, { force: true });
    await rm(`${partial}.json`, { force: true });
    log.info(`cached ${fileName} as ${imagePath(layout, record.sha256)}`);
    return resultOf(imagePath(layout, record.sha256), record, 'download', expected);
  } finally {
    await release();
    await dispatcher.close().catch(() => undefined);
  }
}

/** `--offline`: the image this URL gave last time, from the cache alone, still intact. */
async function obtainOffline(url: URL, context: Context): Promise<ObtainedImage> {
  const layout = cacheLayout(context.options.cacheDir);
  const pointer = await readUrlRecord(layout, url.href);
  const record = pointer && (await readImageRecord(layout, pointer.sha256));
  if (!record || !(await stat(imagePath(layout, record.sha256)).catch(() => undefined))) {
    throw new ImageBuilderError('BAD_INPUT', `--offline: ${url.href} is not in the cache (${layout.root})`, {
      hint: `fetch it once while online: imagebuilder fetch ${url.href}`,
    });
  }
  let expected: ExpectedSum | undefined;
  if (context.options.checksum) {
    expected = parseChecksumFlag(context.options.checksum);
    const had = record.published.sums[expected.algorithm];
    if (had !== expected.hash) {
      throw new ImageBuilderError('VERIFY_FAILED', `--offline: the cached ${record.published.name} does not have the --checksum given`, {
        detail: `expected ${expected.algorithm} ${expected.hash} (from --checksum)\ncached   ${expected.algorithm} ${had ?? '(not recorded)'} (${url.href}, fetched ${record.origin.fetchedAt})`,
        hint: 'fetch the image online, or check the sum',
      });
    }
  }
  if (!(await intact(layout, record, context))) {
    throw new ImageBuilderError('VERIFY_FAILED', `--offline: the cached image of ${url.href} was corrupted, and has been removed`, {
      hint: `fetch it again while online: imagebuilder fetch ${url.href}`,
    });
  }
  if (!record.origin.verified && !context.options.insecureSkipVerify && !expected) {
    throw new ImageBuilderError('VERIFY_FAILED', `--offline: the cached ${record.published.name} was never verified`, {
      hint: 'it was fetched with --insecure-skip-verify: pass that again, or --checksum',
    });
  }
  context.log.info(`offline: ${url.href} as cached on ${record.origin.fetchedAt}`);
  return useCached(layout, record, context, undefined, expected);
}

/**
 * A local file: checked against a sums file beside it (none is fine locally) or --checksum, and used where it
 * is. A compressed one (xz, gzip, zstd) is verified as it is, then unpacked into the cache once.
 */
async function obtainLocal(path: string, context: Context): Promise<ObtainedImage> {
  const { log, signal, options } = context;
  const info = await stat(path).catch(() => undefined);
  if (!info?.isFile()) {
    throw new ImageBuilderError('BAD_INPUT', `disk image not found: ${path}`, { hint: 'pass the path of an existing image file, or an http(s):// URL, with --disk-image' });
  }
  const fileName = basename(path);
  const { expected } = await expectedSum(localLocation(path), fileName, context);
  const compression = detectCompression(await readHead(path));
  const { sums, remembered } = await hashFileRemembered(path, ['sha256', ...(expected ? [expected.algorithm] : [])], memoOptions(context));
  if (expected) verifySum(path, sums, expected);
  const describe = expected ? `against ${expected.source}` : 'unverified: no sums file beside it names it';
  const how = remembered ? ' (its sums as hashed before: the file is unchanged since)' : '';
  if (!compression) {
    const { format, virtualSize } = await probeInputImage(context.run, path, log);
    if (expected) log.info(`verified ${path} (${format}) against ${expected.source}${how}`);
    else log.info(`no sums file beside ${path} names it: using it unverified (sha256 ${sums.sha256})${how}`);
    const differs = expected && expected.algorithm !== 'sha256';
    return {
      path,
      name: fileName,
      sha256: sums.sha256!,
      format,
      virtualSize,
      published: differs ? { name: fileName, algorithm: expected.algorithm, hash: expected.hash } : undefined,
      checksumSource: expected?.source,
      verified: expected !== undefined,
      signature: expected?.signedWith,
      source: 'local',
    };
  }
  log.info(`${path} is ${compression}-compressed (${describe})`);
  const layout = cacheLayout(options.cacheDir);
  await ensureCacheLayout(layout, log);
  const key = sourceKey(`sha256:${sums.sha256}`);
  const origin: ImageOrigin = { path, checksumSource: expected?.source, sumsText: expected?.sumsText, signature: expected?.signedWith, verified: expected !== undefined, fetchedAt: now() };
  const release = await acquireLock(lockPath(layout, key), path, { signal, log });
  try {
    for (const record of await findByPublishedSum(layout, 'sha256', sums.sha256!)) {
      if (record.format && (await intact(layout, record, context))) return await useCached(layout, record, context, origin, expected);
    }
    const record = await commitToCache(layout, key, { path, name: fileName, sums, size: info.size }, origin, context);
    return resultOf(imagePath(layout, record.sha256), record, 'cache', expected);
  } finally {
    await release();
  }
}
