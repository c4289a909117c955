// What both benchmarks share: their options, the base image they measure on, and virt-customize's appliance choice.
import { copyFile, mkdir, readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { execa } from 'execa';

export const repo = new URL('..', import.meta.url).pathname;

/**
 * --disk-image BASE (default: a 3 GB Debian 12 image built once), --runs N (median), --dir DIR, --repo CHECKOUT
 * (measure another checkout's CLI: before/after a change), --no-virt-customize (skip the slow comparison).
 */
export async function benchSetup() {
  const { values } = parseArgs({
    options: {
      'disk-image': { type: 'string' }, runs: { type: 'string', default: '1' }, dir: { type: 'string', default: '/var/tmp/imagebuilder-bench' },
      repo: { type: 'string' }, 'no-virt-customize': { type: 'boolean', default: false },
    },
  });
  const dir = values.dir;
  await mkdir(dir, { recursive: true });
  let base = values['disk-image'];
  if (!base) {
    base = join(dir, 'debian-12-3g.qcow2');
    if (!(await stat(base).catch(() => undefined))) {
      console.error('bench: building a 3 GB Debian 12 image with bin/make-debian-image');
      await execa(join(repo, 'bin/make-debian-image'), ['--layout', 'gpt-esp', '--size', '3G', '--output', base], { stderr: 'inherit' });
    }
  }
  return { dir, base, runs: Number(values.runs), checkout: values.repo ?? repo, virtCustomize: !values['no-virt-customize'] };
}

/** The appliance choice imagebuilder makes: TCG where KVM does not work for libguestfs on this host. */
export async function virtCustomizeEnv() {
  const verdict = await readFile(join(process.env.HOME ?? '/root', `.cache/imagebuilder/libguestfs-kvm-${(await execa('uname', ['-r'])).stdout}`), 'utf8').catch(() => 'works');
  return verdict.trim() === 'broken' && !process.env.LIBGUESTFS_BACKEND_SETTINGS ? { LIBGUESTFS_BACKEND_SETTINGS: 'force_tcg' } : {};
}

export const seconds = (t0) => (performance.now() - t0) / 1000;
export const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/**
 * A build's time by stage, from its own clock (`durationsMs` in its BOM), and what that clock does not time
 * (Node's and the CLI's start-up, writing the BOM, SBOMs and sums) from the wall time around it.
 */
export function buildStages(bom, elapsedSeconds) {
  const stages = { ...bom.durationsMs, 'outside the clock': elapsedSeconds * 1000 - bom.durationsMs.total };
  delete stages.total;
  return stages;
}

/** Each stage's median over runs (a stage a run lacks counts as 0 there). */
export function medianStages(stagesOfRuns) {
  const names = [...new Set(stagesOfRuns.flatMap((stages) => Object.keys(stages)))];
  return Object.fromEntries(names.map((name) => [name, median(stagesOfRuns.map((stages) => stages[name] ?? 0))]));
}

/** Prints jobs' stages side by side: `jobs` is [column name, stages] pairs. */
export function printStages(jobs, nameWidth = 24, columnWidth = 10) {
  const OUTSIDE = 'outside the clock';
  const names = [...new Set(jobs.flatMap(([, stages]) => Object.keys(stages)))].filter((name) => name !== OUTSIDE);
  names.push(OUTSIDE);
  console.log(`\n${'stage (ms, median)'.padEnd(nameWidth)}${jobs.map(([name]) => name.padStart(columnWidth)).join('')}`);
  for (const name of names) console.log(`${name.padEnd(nameWidth)}${jobs.map(([, stages]) => String(Math.round(stages[name] ?? 0)).padStart(columnWidth)).join('')}`);
}

export const spread = (xs) => ({ min: Math.min(...xs), median: median(xs), max: Math.max(...xs) });

/**
 * The physical limit of an install: `apt-get install` of `packages` alone, timed inside the guest (one
 * `imagebuilder shell --writable` command on a throw-away copy of `base`), with the packages already downloaded
 * (apt-get update and --download-only first, untimed). No verify, mount, BOM or output is in the time: what no
 * tool that installs with the guest's own apt can beat. Seconds, median of `runs`.
 */
export async function installLimit(base, packages, dir, runs, checkout = repo) {
  const times = [];
  const names = packages.join(' ');
  const script = [
    'export DEBIAN_FRONTEND=noninteractive',
    'apt-get update -qq >/dev/null',
    // apt-get as imagebuilder's packages step runs it (src/pkg/apt.ts): no recommends, dpkg without a pty.
    `apt-get install -y -qq --no-install-recommends -o Dpkg::Use-Pty=0 --download-only ${names} >/dev/null`,
    'start=$(date +%s%N)',
    `apt-get install -y -qq --no-install-recommends -o Dpkg::Use-Pty=0 --no-download ${names} >/dev/null`,
    'end=$(date +%s%N)',
    'echo "@@install-ms $(( (end - start) / 1000000 ))"',
  ].join('\n');
  for (let i = 0; i < runs; i++) {
    const copy = join(dir, 'limit-copy.qcow2');
    await copyFile(base, copy);
    try {
      const { stdout } = await execa('node', [join(checkout, 'bin/run.js'), 'shell', '--disk-image', copy, '--writable', '--mount-backend', 'fuse', '--command', script], { stderr: 'ignore' });
      const ms = /@@install-ms (\d+)/.exec(stdout)?.[1];
      if (!ms) throw new Error(`installLimit: no timing in the shell's output: ${stdout.slice(-500)}`);
      times.push(Number(ms) / 1000);
    } finally {
      await rm(copy, { force: true });
    }
  }
  return median(times);
}

/** One read and one write of a file's used bytes (cp --sparse=always, then synced), median of `runs`: the least an output costs. */
export async function copyLimit(path, dir, runs = 1) {
  const copy = join(dir, 'limit-copy');
  const times = [];
  for (let i = 0; i < runs; i++) {
    await execa('sync');
    const t0 = performance.now();
    await execa('cp', ['--sparse=always', path, copy]);
    await execa('sync', ['-f', copy]);
    times.push(seconds(t0));
    await rm(copy, { force: true });
  }
  // The median: on this VM one copy of the same 500 MB took 0.3 s or 1.2 s (fresh page cache faulted in from
  // the host; see the README's Benchmark section), which one copy made each job's limit at random.
  return median(times);
}
