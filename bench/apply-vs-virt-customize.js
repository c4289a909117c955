#!/usr/bin/env node
// Benchmark: the same job — install containerd, conntrack and socat into a Debian 12 image — done by
// `imagebuilder apply` (once per sparsify mode) and by `virt-customize --install`, on copies of one image.
// Prints wall times, output sizes and ratios. Measures; asserts nothing.
//   npm run bench [-- --disk-image BASE.qcow2] [--runs N]
import { copyFile, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { benchSetup, median, repo, seconds, virtCustomizeEnv } from './common.js';

const { dir, base, runs } = await benchSetup();
const packages = ['containerd', 'conntrack', 'socat'];
const recipe = join(dir, 'install.yaml');
await writeFile(recipe, `name: bench-install\nsteps:\n  - packages:\n      install: [${packages.join(', ')}]\n`);

const sizeMiB = async (path) => ((await stat(path)).blocks * 512) / 2 ** 20;

async function imagebuilder(sparsify) {
  const output = join(dir, `out-${sparsify}.qcow2`);
  const times = [];
  let steps = 0;
  for (let i = 0; i < runs; i++) {
    await rm(output, { force: true });
    const t0 = performance.now();
    await execa('node', [join(repo, 'bin/run.js'), 'apply', recipe, '--disk-image', base, '--output', output, '--sparsify', sparsify, '--mount-backend', 'fuse', '--quiet'], { stderr: 'ignore' });
    times.push(seconds(t0));
    steps = JSON.parse(await readFile(`${output}.bom.json`, 'utf8')).durationsMs.steps / 1000;
  }
  return { name: `imagebuilder --sparsify ${sparsify}`, seconds: median(times), steps, size: await sizeMiB(output) };
}

async function virtCustomize() {
  const copy = join(dir, 'virt-customize.qcow2');
  const times = [];
  const env = await virtCustomizeEnv();
  for (let i = 0; i < runs; i++) {
    await copyFile(base, copy);
    const t0 = performance.now();
    await execa('virt-customize', ['--format', 'qcow2', '-a', copy, '--install', packages.join(',')], { env, stderr: 'ignore', stdout: 'ignore' });
    times.push(seconds(t0));
  }
  return { name: 'virt-customize --install', seconds: median(times), size: await sizeMiB(copy) };
}

// virt-customize first: it also warms the mirror's caches on the way, which only helps the runs after it.
const reference = await virtCustomize();
const results = [];
for (const mode of ['none', 'fstrim', 'auto', 'virt-sparsify']) results.push(await imagebuilder(mode));

console.log(`base image: ${base}; packages: ${packages.join(' ')}; runs: ${runs} (median)`);
console.log(`${'job'.padEnd(36)}${'seconds'.padStart(9)}${'ratio'.padStart(8)}${'size MiB'.padStart(10)}`);
console.log(`${reference.name.padEnd(36)}${reference.seconds.toFixed(1).padStart(9)}${'1.000'.padStart(8)}${reference.size.toFixed(0).padStart(10)}`);
for (const r of results) {
  console.log(`${r.name.padEnd(36)}${r.seconds.toFixed(1).padStart(9)}${(r.seconds / reference.seconds).toFixed(3).padStart(8)}${r.size.toFixed(0).padStart(10)}`);
}
const none = results[0];
console.log(`the install step itself (imagebuilder, inside the chroot): ${none.steps.toFixed(1)} s`);
console.log(`ratio without sparsifying (goal < 0.1): ${(none.seconds / reference.seconds).toFixed(3)}`);
const byMode = Object.fromEntries(results.map((r) => [r.name.replace('imagebuilder --sparsify ', ''), r]));
// The default (auto) against the fast path, and its output against virt-sparsify's (issue 19's goals).
const autoRatio = byMode.auto.seconds / byMode.fstrim.seconds;
console.log(`default (auto) / fstrim time: ${autoRatio.toFixed(2)} (goal <= 1.20: ${autoRatio <= 1.2 ? 'met' : 'NOT met'})`);
console.log(`output size: auto ${byMode.auto.size.toFixed(0)} MiB, virt-sparsify ${byMode['virt-sparsify'].size.toFixed(0)} MiB (goal: auto no larger: ${byMode.auto.size <= byMode['virt-sparsify'].size ? 'met' : 'NOT met'})`);
