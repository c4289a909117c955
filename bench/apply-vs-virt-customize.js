#!/usr/bin/env node
// Benchmark: the same job — install containerd, conntrack and socat into a Debian 12 image — done by
// `imagebuilder apply` (once per sparsify mode) and by `virt-customize --install`, on copies of one image.
// Prints wall times, output sizes and ratios. Measures; asserts nothing.
//   npm run bench [-- --disk-image BASE.qcow2] [--runs N]
import { copyFile, mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { execa } from 'execa';

const repo = new URL('..', import.meta.url).pathname;
const { values } = parseArgs({ options: { 'disk-image': { type: 'string' }, runs: { type: 'string', default: '1' }, dir: { type: 'string', default: '/var/tmp/imagebuilder-bench' } } });
const dir = values.dir;
const runs = Number(values.runs);
const packages = ['containerd', 'conntrack', 'socat'];
await mkdir(dir, { recursive: true });

let base = values['disk-image'];
if (!base) {
  base = join(dir, 'debian-12-3g.qcow2');
  if (!(await stat(base).catch(() => undefined))) {
    console.error('bench: building a 3 GB Debian 12 image with bin/make-debian-image');
    await execa(join(repo, 'bin/make-debian-image'), ['--layout', 'gpt-esp', '--size', '3G', '--output', base], { stderr: 'inherit' });
  }
}
const recipe = join(dir, 'install.yaml');
await writeFile(recipe, `name: bench-install\nsteps:\n  - packages:\n      install: [${packages.join(', ')}]\n`);

const seconds = (t0) => (performance.now() - t0) / 1000;
const sizeMiB = async (path) => ((await stat(path)).blocks * 512) / 2 ** 20;
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

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
  // Same appliance choice imagebuilder makes: TCG where KVM does not work for libguestfs on this host.
  const verdict = await readFile(join(process.env.HOME ?? '/root', `.cache/imagebuilder/libguestfs-kvm-${(await execa('uname', ['-r'])).stdout}`), 'utf8').catch(() => 'works');
  const env = verdict.trim() === 'broken' && !process.env.LIBGUESTFS_BACKEND_SETTINGS ? { LIBGUESTFS_BACKEND_SETTINGS: 'force_tcg' } : {};
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
for (const mode of ['none', 'fstrim', 'virt-sparsify']) results.push(await imagebuilder(mode));

console.log(`base image: ${base}; packages: ${packages.join(' ')}; runs: ${runs} (median)`);
console.log(`${'job'.padEnd(36)}${'seconds'.padStart(9)}${'ratio'.padStart(8)}${'size MiB'.padStart(10)}`);
console.log(`${reference.name.padEnd(36)}${reference.seconds.toFixed(1).padStart(9)}${'1.000'.padStart(8)}${reference.size.toFixed(0).padStart(10)}`);
for (const r of results) {
  console.log(`${r.name.padEnd(36)}${r.seconds.toFixed(1).padStart(9)}${(r.seconds / reference.seconds).toFixed(3).padStart(8)}${r.size.toFixed(0).padStart(10)}`);
}
const none = results[0];
console.log(`the install step itself (imagebuilder, inside the chroot): ${none.steps.toFixed(1)} s`);
console.log(`ratio without sparsifying (goal < 0.1): ${(none.seconds / reference.seconds).toFixed(3)}`);
