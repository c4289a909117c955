#!/usr/bin/env node
// Benchmark: the same job — install containerd, conntrack and socat into a Debian 12 image — done by
// `imagebuilder apply` (once per sparsify mode) and by `virt-customize --install`, on copies of one image.
// Prints wall times (median and spread over --runs), output sizes and ratios: to virt-customize, and to the
// physical limit (the install alone in a plain chroot with the packages downloaded, plus one read and write of
// the output's used bytes). Measures; asserts nothing.
//   npm run bench [-- --disk-image BASE.qcow2] [--runs N]
import { copyFile, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { benchSetup, buildStages, copyLimit, installLimit, median, medianStages, printStages, repo, seconds, spread, virtCustomizeEnv } from './common.js';

const { dir, base, runs, virtCustomize: withVirtCustomize } = await benchSetup();
const packages = ['containerd', 'conntrack', 'socat'];
const recipe = join(dir, 'install.yaml');
await writeFile(recipe, `name: bench-install\nsteps:\n  - packages:\n      install: [${packages.join(', ')}]\n`);

const sizeMiB = async (path) => ((await stat(path)).blocks * 512) / 2 ** 20;

// Cold: --no-cache, every run installs (a step cache would replay the first run's layers), downloads every package
// and hashes the base anew. Warm: what a user's next build of the same base does: the caches on (its own cache
// directory, primed by one untimed run), the package cache holding the packages, `--refresh 1` so the step cache
// still runs the install.
async function imagebuilder(sparsify, warm = false) {
  const output = join(dir, `out-${sparsify}${warm ? '-warm' : ''}.qcow2`);
  const cacheArgs = warm ? ['--refresh', '1'] : ['--no-cache'];
  const env = warm ? { IMAGEBUILDER_CACHE: join(dir, 'warm-cache') } : {};
  const run = () => execa('node', [join(repo, 'bin/run.js'), 'apply', recipe, '--disk-image', base, '--output', output, '--sparsify', sparsify, '--mount-backend', 'fuse', '--quiet', ...cacheArgs], { stderr: 'ignore', env });
  if (warm) {
    await rm(output, { force: true });
    await run();
  }
  const times = [];
  const stagesOfRuns = [];
  for (let i = 0; i < runs; i++) {
    await rm(output, { force: true });
    const t0 = performance.now();
    await run();
    const elapsed = seconds(t0);
    times.push(elapsed);
    stagesOfRuns.push(buildStages(JSON.parse(await readFile(`${output}.bom.json`, 'utf8')), elapsed));
  }
  const stages = medianStages(stagesOfRuns);
  return { name: `imagebuilder --sparsify ${sparsify}${warm ? ' (warm)' : ''}`, seconds: median(times), spread: spread(times), steps: stages.steps / 1000, stages, size: await sizeMiB(output), output, applianceMs: stages['virt-sparsify'] ?? 0 };
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
  return { name: 'virt-customize --install', seconds: median(times), spread: spread(times), size: await sizeMiB(copy) };
}

// virt-customize first: it also warms the mirror's caches on the way, which only helps the runs after it.
// --no-virt-customize: no reference (its column stays empty).
const reference = withVirtCustomize ? await virtCustomize() : undefined;
const results = [];
for (const mode of ['none', 'fstrim', 'auto', 'virt-sparsify']) results.push(await imagebuilder(mode));
for (const mode of ['fstrim', 'auto']) results.push(await imagebuilder(mode, true));

// The physical limit each imagebuilder job is held against: the install alone, and its own output copied once.
const install = await installLimit(base, packages, dir, runs);
for (const r of results) r.limit = install + (await copyLimit(r.output, dir, runs));

const cpus = (await readFile('/proc/cpuinfo', 'utf8')).split('\n').filter((l) => l.startsWith('processor')).length;
console.log(`machine: ${cpus} CPUs, ${(await execa('uname', ['-r'])).stdout}; base image: ${base}; packages: ${packages.join(' ')}; runs: ${runs} (median; spread min–max)`);
const spreadText = (r) => `${r.spread.min.toFixed(1)}–${r.spread.max.toFixed(1)}`;
console.log(`${'job'.padEnd(36)}${'seconds'.padStart(9)}${'spread'.padStart(12)}${'vs v-c'.padStart(8)}${'limit s'.padStart(9)}${'vs limit'.padStart(10)}${'size MiB'.padStart(10)}`);
if (reference) console.log(`${reference.name.padEnd(36)}${reference.seconds.toFixed(1).padStart(9)}${spreadText(reference).padStart(12)}${'1.000'.padStart(8)}${''.padStart(9)}${''.padStart(10)}${reference.size.toFixed(0).padStart(10)}`);
for (const r of results) {
  const vsReference = reference ? (r.seconds / reference.seconds).toFixed(3) : '';
  console.log(`${r.name.padEnd(36)}${r.seconds.toFixed(1).padStart(9)}${spreadText(r).padStart(12)}${vsReference.padStart(8)}${r.limit.toFixed(1).padStart(9)}${(r.seconds / r.limit).toFixed(2).padStart(10)}${r.size.toFixed(0).padStart(10)}`);
}
// Where each job's time goes (its build's own clock, medians over the runs): beside the limit, what is not the install.
printStages(results.map((r) => [r.name.replace('imagebuilder --sparsify ', ''), r.stages]), 20, 15);
console.log('');
const none = results[0];
const byMode = Object.fromEntries(results.map((r) => [r.name.replace('imagebuilder --sparsify ', ''), r]));
const byName = (name) => byMode[name];
console.log(`the physical limit: apt-get install alone in a plain chroot, packages downloaded: ${install.toFixed(1)} s (+ one copy of each output)`);
console.log(`the install step itself (imagebuilder, inside the chroot, downloads included): ${none.steps.toFixed(1)} s; with the package cache warm: ${byName('fstrim (warm)').steps.toFixed(1)} s`);
if (reference) console.log(`ratio without sparsifying (goal < 0.1): ${(none.seconds / reference.seconds).toFixed(3)}`);

const goal = (value, limit) => `${value.toFixed(2)} (goal <= ${limit.toFixed(2)}: ${value <= limit ? 'met' : 'NOT met'})`;
// Issue 19's goals: the fast path within 1.5x of its limit, the default within 2x; auto near fstrim, no larger than virt-sparsify.
console.log(`fast path (fstrim) / its limit: cold ${goal(byMode.fstrim.seconds / byMode.fstrim.limit, 1.5)}; warm ${goal(byName('fstrim (warm)').seconds / byName('fstrim (warm)').limit, 1.5)}`);
console.log(`default (auto) / its limit: cold ${goal(byMode.auto.seconds / byMode.auto.limit, 2)}; warm ${goal(byName('auto (warm)').seconds / byName('auto (warm)').limit, 2)}`);
console.log(`default (auto) / fstrim time: ${goal(byMode.auto.seconds / byMode.fstrim.seconds, 1.2)}`);
// auto boots the appliance only for filesystems this host did not mount (a vfat ESP on a kernel without vfat).
if (byMode.auto.applianceMs) console.log(`  auto ran virt-sparsify --in-place for ${(byMode.auto.applianceMs / 1000).toFixed(1)} s: a filesystem of the image is one this host did not mount (its log says which)`);
console.log(`output size: auto ${byMode.auto.size.toFixed(0)} MiB, virt-sparsify ${byMode['virt-sparsify'].size.toFixed(0)} MiB (goal: auto no larger: ${byMode.auto.size <= byMode['virt-sparsify'].size ? 'met' : 'NOT met'})`);
