#!/usr/bin/env node
// Benchmark of the step cache, all measured in one run on one base image, printed as ratios:
//   full      a multi-step recipe applied with an empty step cache (every step runs, each becomes a layer)
//   no-cache  the same with --no-cache (one overlay, no snapshots): what the layers cost a first build
//   rebuild   the same recipe with only its last step changed: the first steps come from the cache
//   overhead  a recipe with no steps: verify, mount, find the guest, chroot set-up, teardown, BOM
//   virt-customize  the same installs with virt-customize --install, where it is installed
// Measures; asserts nothing. The issue's goal: rebuild / full < 0.2.
//   npm run bench:cache [-- --disk-image BASE.qcow2] [--runs N] [--repo CHECKOUT] [--no-virt-customize]
import { copyFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { benchSetup, median, seconds, virtCustomizeEnv } from './common.js';
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
  return { seconds: elapsed, cached: bom.steps.filter((s) => s.cached).length };
}

async function measure(body) {
  const times = [];
  let last;
  for (let i = 0; i < runs; i++) {
    last = await body();
    times.push(last.seconds);
  }
  return { ...last, seconds: median(times) };
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

const row = (name, r, ratio) => console.log(`${name.padEnd(46)}${r.seconds.toFixed(1).padStart(9)}${ratio.toFixed(3).padStart(10)}`);
console.log(`checkout: ${checkout}; base image: ${base}; recipe: ${installs.length} package steps + 1 file step; runs: ${runs} (median)`);
console.log(`${'job'.padEnd(46)}${'seconds'.padStart(9)}${'vs full'.padStart(10)}`);
row('full apply, empty step cache', results.full, 1);
row('full apply, --no-cache', results['no-cache'], results['no-cache'].seconds / results.full.seconds);
row(`rebuild, last step changed (${results.rebuild.cached} steps cached)`, results.rebuild, results.rebuild.seconds / results.full.seconds);
row('overhead: a recipe with no steps', results.overhead, results.overhead.seconds / results.full.seconds);
if (virtCustomize) row('virt-customize --install (same packages)', virtCustomize, virtCustomize.seconds / results.full.seconds);
else console.log('virt-customize: not installed, not measured');
console.log(`per guest command (sandbox included; goal: the sandbox adds < 50 ms): ${guestCommand.perCommandMs.toFixed(1)} ms`);
console.log(`rebuild / full (goal < 0.2): ${(results.rebuild.seconds / results.full.seconds).toFixed(3)}`);
if (virtCustomize) console.log(`full / virt-customize: ${(results.full.seconds / virtCustomize.seconds).toFixed(3)}`);
