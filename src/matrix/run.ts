import { constants, createWriteStream, type WriteStream } from 'node:fs';
import { mkdir, open } from 'node:fs/promises';
import { join } from 'node:path';
import type { DiskImageOptions } from '../fetch/image-source.js';
import type { OutputFormat } from '../image/formats.js';
import { apply, type ApplyOptions, type ApplyResult, type Artifact } from '../pipeline/apply.js';
import { FORMAT_EXTENSIONS } from '../pipeline/output.js';
import { verifyImage, type VerifiedImage } from '../pipeline/verify.js';
import { peekBundle } from '../bundle/open.js';
import { ImageBuilderError, toImageBuilderError, type ErrorCode } from '../util/errors.js';
import { execRunner, type Runner } from '../util/exec.js';
import { createLogger, type Logger, type LogLevel } from '../util/log.js';
import { closest } from '../util/template.js';
import type { Matrix, MatrixBase, MatrixBuild } from './load.js';

/** What the host decides for every build (the flags `apply` takes for the same things). */
export type HostBuildOptions = Pick<ApplyOptions, 'mountBackend' | 'sparsify' | 'sbom' | 'keepWorkDir' | 'workDir' | 'cache' | 'runDir' | 'allowNetworks'> & Pick<DiskImageOptions, 'offline' | 'cacheDir' | 'rehash'>;

export interface MatrixRunOptions {
  /** Builds at once. Each one is I/O- and CPU-heavy (overlay writes, package installs, conversion). */
  jobs: number;
  /** Stop the other builds at the first failure. */
  failFast?: boolean;
  /** Instead of the matrix file's output.dir. */
  outputDir?: string;
  host?: HostBuildOptions;
  /** Console log level of each build (its full log, command output included, goes to <build>.log). */
  level?: LogLevel;
  /** Where prefixed console lines go (default stderr). */
  write?: (text: string) => void;
  signal?: AbortSignal;
  run?: Runner;
  /** The build itself (default apply()); a test seam for the scheduling logic. */
  build?: (options: ApplyOptions) => Promise<ApplyResult>;
}

export type BuildStatus = 'succeeded' | 'failed' | 'cancelled';

export interface BuildResult {
  name: string;
  recipe: string;
  base: string;
  /** The matrix values of this build (axes and include keys). */
  variables: Record<string, string>;
  status: BuildStatus;
  durationMs: number;
  /** <output dir>/<build>/ and the full log in it. */
  dir: string;
  log: string;
  output?: Artifact;
  artifacts?: Artifact[];
  bom?: string;
  sums?: string;
  error?: { code: ErrorCode; exitCode: number; message: string };
}

export interface MatrixResult {
  results: BuildResult[];
  /** Phase 0 of each base used, once, before the builds. */
  bases: { name: string; image: string; sha256?: string; source?: VerifiedImage['source']; error?: string }[];
  durationMs: number;
}

/** The builds named (all when none is), each name checked. */
export function selectBuilds(matrix: Matrix, names: string[] = []): MatrixBuild[] {
  if (!names.length) return matrix.builds;
  const all = matrix.builds.map((b) => b.name);
  for (const name of names) {
    if (!all.includes(name)) throw new ImageBuilderError('BAD_INPUT', `--only ${name}: the matrix has no such build${closest(name, all)}`, { hint: `builds: ${all.join(', ')}` });
  }
  return matrix.builds.filter((b) => names.includes(b.name));
}

export function baseImageOptions(base: MatrixBase, host: HostBuildOptions = {}): DiskImageOptions {
  return { checksum: base.checksum, keyring: base.keyring, insecureSkipVerify: base.insecureSkipVerify, offline: host.offline, cacheDir: host.cacheDir, rehash: host.rehash };
}

/** A bundle base: its manifest's base image (format and sha256), the bundle read as a build will read it. */
async function bundleBase(bundle: string, log: Logger): Promise<Pick<VerifiedImage, 'sha256' | 'format'>> {
  const manifest = await peekBundle(bundle);
  log.info(`bundle ${bundle}: base ${manifest.base.path} (${manifest.base.format}, sha256 ${manifest.base.sha256}); its builds run offline`);
  return { sha256: manifest.base.sha256, format: manifest.base.format as VerifiedImage['format'] };
}

/** Each line of a build's console log starts with its name: several builds write at once. */
function buildLogger(name: string, file: WriteStream, options: MatrixRunOptions): Logger {
  const toFile = createLogger({ level: 'debug', write: (text) => void file.write(text) });
  const write = options.write ?? ((text: string) => void process.stderr.write(text));
  const toConsole = createLogger({ level: options.level ?? 'info', showOutput: false, write: (text) => write(text.replace(/^(?=.)/gm, `[${name}] `)) });
  return {
    debug: (m) => (toFile.debug(m), toConsole.debug(m)),
    info: (m) => (toFile.info(m), toConsole.info(m)),
    warn: (m) => (toFile.warn(m), toConsole.warn(m)),
    error: (m) => (toFile.error(m), toConsole.error(m)),
    output: (chunk) => toFile.output(chunk),
    warnings: toFile.warnings,
  };
}

const closeStream = (stream: WriteStream) => new Promise<void>((resolve) => stream.end(resolve));

/**
 * Runs the builds of a matrix here: phase 0 once per base (so the cache is filled before builds share it),
 * then the builds, `jobs` at a time, each through apply() with its own log, output directory and cleanup.
 * A failing build does not stop the others unless failFast. A stop signal (SIGINT, SIGTERM, SIGHUP, SIGQUIT) stops every build;
 * each releases what it holds before this returns. Never throws for a build's failure: see each result.
 */
export async function runMatrix(matrix: Matrix, builds: MatrixBuild[], options: MatrixRunOptions): Promise<MatrixResult> {
  const started = Date.now();
  const run = options.run ?? execRunner;
  const build = options.build ?? apply;
  const host = options.host ?? {};
  const outputDir = options.outputDir ?? matrix.output.dir;
  const stop = new AbortController();
  const signal = options.signal ? AbortSignal.any([options.signal, stop.signal]) : stop.signal;
  const write = options.write ?? ((text: string) => void process.stderr.write(text));
  const log = createLogger({ level: options.level ?? 'info', write: (text) => write(text.replace(/^(?=.)/gm, '[matrix] ')) });

  const results = new Map<string, BuildResult>();
  const resultOf = (b: MatrixBuild, status: BuildStatus, extra: Partial<BuildResult> = {}): BuildResult => ({
    name: b.name,
    recipe: b.recipe.name,
    base: b.base.name,
    variables: b.matrixVariables,
    status,
    durationMs: 0,
    dir: join(outputDir, b.name),
    log: join(outputDir, b.name, `${b.name}.log`),
    ...extra,
  });
  const failure = (error: unknown) => {
    const e = toImageBuilderError(error);
    return { code: e.code, exitCode: e.exitCode, message: e.message };
  };
  const failed = (name: string, reason: string) => {
    if (options.failFast && !stop.signal.aborted) stop.abort(new ImageBuilderError('INTERRUPTED', `stopped because ${name} failed (--fail-fast): ${reason}`));
  };

  // Phase 0, once per base: concurrent builds then all find it verified in the cache.
  const verified = new Map<string, Pick<VerifiedImage, 'sha256' | 'format'> | VerifiedImage>();
  const bases: MatrixResult['bases'] = [];
  for (const base of [...new Set(builds.map((b) => b.base))]) {
    if (signal.aborted) break;
    const baseLog = createLogger({ level: options.level ?? 'info', write: (text) => write(text.replace(/^(?=.)/gm, `[base ${base.name}] `)) });
    try {
      // A bundle's base is verified by each build from it (offline); here its manifest is read, for its format.
      const image = base.bundle ? await bundleBase(base.bundle, baseLog) : await verifyImage(run, base.image, baseLog, signal, { ...baseImageOptions(base, host), progress: false });
      verified.set(base.name, image);
      bases.push({ name: base.name, image: base.image, sha256: image.sha256, ...('source' in image ? { source: (image as VerifiedImage).source } : {}) });
    } catch (error) {
      const reason = failure(error);
      bases.push({ name: base.name, image: base.image, error: reason.message });
      if (signal.aborted) break;
      log.error(`base ${base.name}: ${reason.message}; its builds fail`);
      for (const b of builds.filter((x) => x.base === base)) results.set(b.name, resultOf(b, 'failed', { error: reason }));
      failed(`base ${base.name}`, reason.message);
    }
  }

  const queue = builds.filter((b) => !results.has(b.name) && verified.has(b.base.name));
  log.info(`${builds.length} build(s), ${options.jobs} at a time, into ${outputDir}`);
  const worker = async () => {
    for (let next = queue.shift(); next; next = queue.shift()) {
      if (signal.aborted) break;
      const b = next;
      const dir = join(outputDir, b.name);
      const file = await openBuildLog(dir, `${b.name}.log`);
      const buildLog = buildLogger(b.name, file, options);
      const t0 = Date.now();
      const formats: OutputFormat[] = matrix.output.formats ?? [verified.get(b.base.name)!.format];
      try {
        buildLog.info(`recipe ${b.recipe.written}, base ${b.base.written}${Object.keys(b.variables).length ? `, ${Object.entries(b.variables).map(([k, v]) => `${k}=${v}`).join(' ')}` : ''}`);
        const result = await build({
          recipe: b.recipe.path,
          recipeInputs: { set: b.variables },
          diskImage: b.base.bundle ? '' : b.base.image,
          ...(b.base.bundle ? { bundle: b.base.bundle } : {}),
          image: { ...baseImageOptions(b.base, host), progress: false },
          output: join(dir, `${b.name}.${FORMAT_EXTENSIONS[formats[0]]}`),
          formats,
          compress: matrix.output.compress,
          mountBackend: host.mountBackend,
          sparsify: host.sparsify,
          sbom: host.sbom,
          keepWorkDir: host.keepWorkDir,
          cache: host.cache,
          allowNetworks: host.allowNetworks,
          workDir: host.workDir,
          cacheDir: host.cacheDir,
          runDir: host.runDir,
          log: buildLog,
          run,
          signal,
        });
        results.set(b.name, resultOf(b, 'succeeded', { durationMs: Date.now() - t0, output: result.output, artifacts: result.artifacts, bom: result.bomPath, sums: result.sumsPath }));
        buildLog.info(`succeeded in ${((Date.now() - t0) / 1000).toFixed(1)}s`);
      } catch (error) {
        const reason = failure(error);
        const cancelled = signal.aborted && reason.code === 'INTERRUPTED';
        results.set(b.name, resultOf(b, cancelled ? 'cancelled' : 'failed', { durationMs: Date.now() - t0, error: reason }));
        buildLog.error(`${cancelled ? 'cancelled' : 'failed'}: ${toImageBuilderError(error).render()}`);
        if (!cancelled) failed(b.name, reason.message);
      } finally {
        await closeStream(file);
      }
    }
  };
  // Every worker ends (and every build has released what it held) before the results are read.
  await Promise.allSettled(Array.from({ length: Math.max(1, Math.min(options.jobs, queue.length)) }, worker));

  const reason = signal.aborted ? failure(signal.reason) : undefined;
  return {
    results: builds.map((b) => results.get(b.name) ?? resultOf(b, 'cancelled', reason ? { error: reason } : {})),
    bases,
    durationMs: Date.now() - started,
  };
}

/** The error a matrix run ends with: interrupted (130), or the first failed build's own code. */
export function matrixOutcome(result: MatrixResult, signal?: AbortSignal): ImageBuilderError | undefined {
  if (signal?.aborted) return toImageBuilderError(signal.reason);
  const failedBuilds = result.results.filter((r) => r.status !== 'succeeded');
  if (!failedBuilds.length) return undefined;
  const first = failedBuilds.find((r) => r.status === 'failed') ?? failedBuilds[0];
  return new ImageBuilderError(first.error?.code ?? 'INTERNAL', `${failedBuilds.length} of ${result.results.length} build(s) did not succeed; first: ${first.name}: ${first.error?.message ?? first.status}`, {
    hint: `each build's full log is beside its output: ${first.log}`,
  });
}

/**
 * A build's directory under the matrix's output directory, and its log there, emptied. The output directory may
 * be shared (/tmp): what another user put at these names is not followed. The directory is opened without
 * following a link and must be ours; the log is opened through that descriptor (a directory swapped for a link
 * afterwards changes nothing), without following a link or waiting on a FIFO, and emptied only once it is known
 * to be a regular file of ours.
 */
export async function openBuildLog(dir: string, name: string): Promise<WriteStream> {
  await mkdir(dir, { recursive: true });
  const notOurs = (what: string) => new ImageBuilderError('BAD_INPUT', `${what} is not a directory or file of this user's, so a build's output and log are not written there`, {
    hint: 'remove it, or give the matrix an output.dir only you can write',
  });
  const refuse = (what: string) => (error: NodeJS.ErrnoException) => {
    if (error.code === 'ELOOP' || error.code === 'ENOTDIR' || error.code === 'ENXIO') throw notOurs(what);
    throw error;
  };
  const directory = await open(dir, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW).catch(refuse(dir));
  try {
    if ((await directory.stat()).uid !== process.getuid?.()) throw notOurs(dir);
    const path = join(dir, name);
    const handle = await open(`/proc/self/fd/${directory.fd}/${name}`, constants.O_WRONLY | constants.O_CREAT | constants.O_NOFOLLOW | constants.O_NONBLOCK, 0o644).catch(refuse(path));
    const opened = await handle.stat();
    if (!opened.isFile() || opened.uid !== process.getuid?.()) {
      await handle.close();
      throw notOurs(path);
    }
    await handle.truncate(0);
    return createWriteStream('', { fd: handle, autoClose: true });
  } finally {
    await directory.close();
  }
}
