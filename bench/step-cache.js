#!/usr/bin/env node
// Benchmark of the step cache, all measured in one run on one base image, printed as ratios:
//   full      a multi-step recipe applied with an empty step cache (every step runs, each becomes a layer)
//   no-cache  the same with --no-cache (one overlay, no snapshots): what the layers cost a first build
//   rebuild   the same recipe with only its last step changed: the first steps come from the cache
//   overhead  a recipe with no steps: verify, mount, find the guest, chroot set-up, teardown, BOM
//   virt-customize  the same installs with virt-customize --install, where it is installed
// Measures; asserts nothing. Goals: rebuild / full <= 0.1, overhead <= 1.0 s. Prints each job's spread and
// where its time goes, stage by stage (the build's own clock, from its BOM).
//   npm run bench:cache [-- --disk-image BASE.qcow2] [--runs N] [--repo CHECKOUT] [--no-virt-customize]
import { copyFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { benchSetup, buildStages, median, medianStages, printStages, seconds, virtCustomizeEnv } from './common.js';
import { guestCommandCost } from './guest-command.js';

const { dir, base, runs, checkout, virtCustomize: withVirtCustomize } = await benchSetup();

const installs = [['containerd'], ['conntrack', 'socat', 'ethtool'], ['iptables', 'ebtables']];
const recipeText = (motd) =>
  `name: bench-cache\nsteps:\n${installs.map((names) => `  - packages:\n      install: [${names.join(', ')}]\n`).join('')}  - file:\n      path: /etc/motd\n      content: "${motd}"\n`;
const full = join(dir, 'cache-full.yaml');
const changed = join(dir, 'cache-changed.yaml');
const empty = join(dir, 'cache-empty.yaml');
await writeFile(full, recipeText('a kubernetes node'));
await writeFile(changed, recipeText('a kubernetes node, rebuilt'));
await writeFile(empty, 'name: bench-empty\nsteps: []\n');


async function apply(recipe, cache, extra = []) {
  const output = join(dir, 'cache-out.qcow2');
  await rm(output, { force: true });
  const t0 = performance.now();
  await execa('node', [join(checkout, 'bin/run.js'), 'apply', recipe, '--disk-image', base, '--output', output, '--sparsify', 'none', '--mount-backend', 'fuse', '--quiet', ...extra], {
    env: { IMAGEBUILDER_CACHE: cache, IMAGEBUILDER_NO_CACHE: '' },
    stderr: 'ignore',
  });
  const elapsed = seconds(t0);
  const bom = JSON.parse(await readFile(`${output}.bom.json`, 'utf8'));
  return { seconds: elapsed, cached: bom.steps.filter((s) => s.cached).length, stages: buildStages(bom, elapsed) };
}

async function measure(body) {
  const all = [];
  for (let i = 0; i < runs; i++) all.push(await body());
  const times = all.map((r) => r.seconds);
  return { ...all.at(-1), seconds: median(times), min: Math.min(...times), max: Math.max(...times), stages: medianStages(all.map((r) => r.stages ?? {})) };
}

// The base image's verification and the phase-0 cache are shared: only the step cache starts empty.
const results = {};
results.full = await measure(async () => {
  const cache = await mkdtemp(join(dir, 'cache-'));
  try {
    return await apply(full, cache);
  } finally {
    await rm(cache, { recursive: true, force: true });
  }
});
results['no-cache'] = await measure(() => apply(full, join(dir, 'unused-cache'), ['--no-cache']));
results.rebuild = await measure(async () => {
  const cache = await mkdtemp(join(dir, 'cache-'));
  try {
    await apply(full, cache);
    return await apply(changed, cache);
  } finally {
    await rm(cache, { recursive: true, force: true });
  }
});
results.overhead = await measure(() => apply(empty, join(dir, 'unused-cache'), ['--no-cache']));
// The same with the cache on, as a user's next build of a base has it: the base's digest remembered (its sums
// still compared), so verify does not read the whole image again.
const overheadCache = join(dir, 'overhead-cache');
await apply(empty, overheadCache);
results['overhead-cached'] = await measure(() => apply(empty, overheadCache));
// The sandbox every guest command runs in (src/chroot/sandbox.ts): its cost per command.
const guestCommand = await guestCommandCost({ dir, base, runs, repo: checkout });

let virtCustomize;
if (withVirtCustomize && (await execa('sh', ['-c', 'command -v virt-customize'], { reject: false })).exitCode === 0) {
  const env = await virtCustomizeEnv();
  virtCustomize = await measure(async () => {
    const copy = join(dir, 'virt-customize.qcow2');
    await copyFile(base, copy);
    const t0 = performance.now();
    await execa('virt-customize', ['--format', 'qcow2', '-a', copy, '--install', installs.flat().join(','), '--write', '/etc/motd:a kubernetes node'], { env, stderr: 'ignore', stdout: 'ignore' });
    return { seconds: seconds(t0) };
  });
}

const row = (name, r, ratio) => console.log(`${name.padEnd(46)}${r.seconds.toFixed(2).padStart(9)}${ratio.toFixed(3).padStart(10)}${`${r.min.toFixed(2)}–${r.max.toFixed(2)}`.padStart(14)}`);
console.log(`checkout: ${checkout}; base image: ${base}; recipe: ${installs.length} package steps + 1 file step; runs: ${runs} (median; spread min–max)`);
console.log(`${'job'.padEnd(46)}${'seconds'.padStart(9)}${'vs full'.padStart(10)}${'spread'.padStart(14)}`);
row('full apply, empty step cache', results.full, 1);
row('full apply, --no-cache', results['no-cache'], results['no-cache'].seconds / results.full.seconds);
row(`rebuild, last step changed (${results.rebuild.cached} steps cached)`, results.rebuild, results.rebuild.seconds / results.full.seconds);
row('overhead: a recipe with no steps', results.overhead, results.overhead.seconds / results.full.seconds);
row('overhead, cache on (base verified before)', results['overhead-cached'], results['overhead-cached'].seconds / results.full.seconds);
if (virtCustomize) row('virt-customize --install (same packages)', virtCustomize, virtCustomize.seconds / results.full.seconds);
else console.log('virt-customize: not installed, not measured');
console.log(`per guest command (sandbox included; goal: the sandbox adds < 50 ms): ${guestCommand.perCommandMs.toFixed(1)} ms`);
console.log(`rebuild / full (goal <= 0.1): ${(results.rebuild.seconds / results.full.seconds).toFixed(3)}`);
console.log(`overhead, a recipe with no steps (goal <= 1.0 s): ${results.overhead.seconds.toFixed(2)} s with --no-cache, ${results['overhead-cached'].seconds.toFixed(2)} s with the cache on`);
// Where the time goes, stage by stage (medians, ms): what a rebuild and an empty recipe still pay.
printStages([['full', results.full.stages], ['rebuild', results.rebuild.stages], ['overhead', results.overhead.stages], ['cached', results['overhead-cached'].stages]]);
if (virtCustomize) console.log(`full / virt-customize: ${(results.full.seconds / virtCustomize.seconds).toFixed(3)}`);
