import type { MountContext } from '../mount/backend.js';
import { CleanupStack } from '../util/cleanup.js';
import { execRunner, type Runner } from '../util/exec.js';
import { createLogger, type Logger } from '../util/log.js';
import { defaultCacheDir } from '../util/paths.js';
import { sourceDateEpoch } from '../util/time.js';
import { ignoreEvents, type EventSink } from './events.js';
import { createWorkDir } from './workdir.js';

/** What every build is told by its caller about this host and how to report (apply, export, matrix builds). */
export interface BuildOptions {
  log?: Logger;
  run?: Runner;
  signal?: AbortSignal;
  /** Machine-readable progress (--json). */
  onEvent?: EventSink;
  /** Parent of the work directory (default: the system temp dir; the CLI's --work-dir). */
  workDir?: string;
  keepWorkDir?: boolean;
  /** The cache directory: base images, the step cache's layers (default: ~/.cache/imagebuilder; the CLI's --cache). */
  cacheDir?: string;
  /** Where builds register for reaping (default /run/imagebuilder; the CLI's IMAGEBUILDER_RUN_DIR). */
  runDir?: string;
}

/** Measures stages for the BOM: each stage's wall time in milliseconds. */
export function stopwatch() {
  const durations: Record<string, number> = {};
  const started = Date.now();
  // Each stage's own time: a stage timed within another (the last step's checks, within the steps) is not
  // counted twice, so the stages add up to the total.
  const open: { nested: number }[] = [];
  return {
    durations,
    async time<T>(stage: string, body: () => Promise<T>): Promise<T> {
      const t0 = Date.now();
      const frame = { nested: 0 };
      open.push(frame);
      try {
        return await body();
      } finally {
        open.splice(open.indexOf(frame), 1);
        const elapsed = Date.now() - t0;
        durations[stage] = (durations[stage] ?? 0) + elapsed - frame.nested;
        if (open.length) open[open.length - 1].nested += elapsed;
      }
    },
    total: () => (durations.total = Date.now() - started),
  };
}
export type Stopwatch = ReturnType<typeof stopwatch>;

/** A build before it holds anything (mkosi's Context): how it runs commands, logs, reports and is timed. */
export interface BuildStart {
  run: Runner;
  log: Logger;
  signal?: AbortSignal;
  events: EventSink;
  clock: Stopwatch;
  cacheDir: string;
  runDir?: string;
}

/** A build holding resources: its work directory and the stacks that release what it acquires, in order. */
export interface BuildContext extends BuildStart {
  workDir: string;
  /** The build's own releases: the work directory, partial outputs. Unwound last. */
  cleanup: CleanupStack;
  /** Unfinished step-cache layers: released after the guest that writes them. */
  files: CleanupStack;
  /** The mounted guest and everything running in it: released first (phase 2 releases it early, before converting). */
  guest: CleanupStack;
}

export function startBuild(options: BuildOptions): BuildStart {
  sourceDateEpoch(); // a malformed SOURCE_DATE_EPOCH fails here, before any work
  return {
    run: options.run ?? execRunner,
    log: options.log ?? createLogger(),
    signal: options.signal,
    events: options.onEvent ?? ignoreEvents,
    clock: stopwatch(),
    cacheDir: options.cacheDir ?? defaultCacheDir(),
    runDir: options.runDir,
  };
}

/** Runs `body` with a work directory and its release stacks; everything is released afterwards, whatever happens. */
export async function withResources<T>(start: BuildStart, options: BuildOptions, body: (context: BuildContext) => Promise<T>): Promise<T> {
  const cleanup = new CleanupStack(start.log);
  try {
    const workDir = await createWorkDir(cleanup, start.log, { parent: options.workDir, keep: options.keepWorkDir, runDir: start.runDir, run: start.run });
    // Made in this order so they unwind guest → unfinished layers → work directory.
    const files = cleanup.child('unfinished layers');
    const guest = cleanup.child('guest');
    return await body({ ...start, workDir, cleanup, files, guest });
  } finally {
    await cleanup.unwind();
  }
}

/** How the mount layer sees a build: the guest's stack takes what mounting acquires. */
export function mountContext(context: BuildContext): MountContext {
  return { run: context.run, log: context.log, cleanup: context.guest, signal: context.signal, workDir: context.workDir, cacheDir: context.cacheDir };
}
