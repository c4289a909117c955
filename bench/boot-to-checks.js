#!/usr/bin/env node
// Benchmark of what a build does to the boot: `imagebuilder test IMAGE --checks F` (a failed_units check, which
// waits for the boot to finish, and a command) timed on three images, interleaved run by run:
//   base   the efi-boot cloud-init fixture (Debian 12, its cloud kernel and initramfs, GRUB on an ESP, cloud-init)
//   empty  the output of a recipe with no steps: what the tool itself adds to a boot (a first-boot fsck, a
//          relabel, a bloated initramfs …) shows here; the goal is nothing, within 10% of the base
//   node   the output of the shipped recipes/kubernetes-node.yaml, built against the tests' local stand-ins of
//          pkgs.k8s.io and GitHub (test/helpers/local-mirror.ts, imported as TypeScript through ts-register.js)
// Prints the median of QEMU start to the checks' report (the boot's own clock, `boot.bootMs`) and of the whole
// command, and the ratios empty/base (PASS when ≤ 1.10) and node/base. Measures; asserts nothing.
//   node bench/boot-to-checks.js [--runs N (0: only build)] [--disk-image BASE] [--empty-image IMG] [--node-image IMG] [--no-node] [--dir DIR] [--repo CHECKOUT]
import { mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { execa } from 'execa';
import { median, repo, seconds } from './common.js';
import './ts-register.js';

const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '3' }, dir: { type: 'string', default: '/var/tmp/imagebuilder-bench' }, repo: { type: 'string' },
    'disk-image': { type: 'string' }, 'empty-image': { type: 'string' }, 'node-image': { type: 'string' }, 'no-node': { type: 'boolean', default: false },
  },
});
const runs = Number(values.runs);
const dir = join(values.dir, 'boot-to-checks');
const checkout = values.repo ?? repo;
const cli = join(checkout, 'bin/run.js');
await mkdir(dir, { recursive: true });

// The helpers' own cache: the same fixture image and mirror the tests use, built once.
const { fixtureImage } = await import('../test/helpers/fixtures.ts');
const { startLocalMirror } = await import('../test/helpers/local-mirror.ts');
const { nodeRecipeSets } = await import('../test/helpers/recipes.ts');

const base = values['disk-image'] ?? (await fixtureImage('efi-boot', 'qcow2', { cloudInit: true }));

async function apply(recipe, output, extra = [], env = {}) {
  await rm(output, { force: true });
  const t0 = performance.now();
  const result = await execa('node', [cli, 'apply', recipe, '--disk-image', base, '--output', output, '--mount-backend', 'fuse', '--sparsify', 'fstrim', '--quiet', ...extra], { env, reject: false, all: true });
  if (result.exitCode !== 0) throw new Error(`apply ${recipe} failed (exit ${result.exitCode}):\n${result.all}`);
  console.error(`bench: ${output} built in ${seconds(t0).toFixed(1)} s`);
  return output;
}

const images = { base };
if (values['empty-image']) images.empty = values['empty-image'];
else {
  const recipe = join(dir, 'empty.yaml');
  await writeFile(recipe, 'name: bench-empty\nsteps: []\n');
  images.empty = await apply(recipe, join(dir, 'empty.qcow2'));
}
if (values['node-image']) images.node = values['node-image'];
else if (!values['no-node']) {
  const mirror = await startLocalMirror();
  try {
    // The guest's apt reaches the mirror on this host's loopback only with its port let through, as runCli does.
    images.node = await apply(join(repo, 'recipes/kubernetes-node.yaml'), join(dir, 'node.qcow2'), nodeRecipeSets(mirror), { IMAGEBUILDER_HOST_PORTS: String(new URL(mirror.url).port) });
  } finally {
    await mirror.close();
  }
} else console.error('bench: --no-node: the node recipe is not built or measured');

// The boot completes (failed_units waits for `systemctl is-system-running --wait`), then one command.
const checks = join(dir, 'checks.yaml');
await writeFile(checks, 'checks:\n  - failed_units: {}\n  - command: { run: "test -s /etc/os-release" }\n');

async function bootToChecks(image) {
  const t0 = performance.now();
  const result = await execa('node', [cli, 'test', image, '--checks', checks, '--json'], { reject: false, all: true });
  const wall = seconds(t0);
  // Exit 7 (a unit failed) still timed the whole boot; anything else did not.
  if (result.exitCode !== 0 && result.exitCode !== 7) throw new Error(`imagebuilder test ${image} failed (exit ${result.exitCode}):\n${result.all}`);
  const report = JSON.parse(result.stdout);
  const failed = report.results.filter((r) => r.status === 'failed').map((r) => `${r.check}: ${r.observed}`);
  return { boot: report.boot.bootMs / 1000, wall, accel: report.boot.accel, via: report.boot.via, failed };
}

if (runs < 1) {
  // --runs 0: only the images built (then measured by a later run with --empty-image and --node-image).
  for (const [name, image] of Object.entries(images)) console.log(`${name}: ${image}`);
  process.exit(0);
}

const times = Object.fromEntries(Object.keys(images).map((name) => [name, []]));
const notes = {};
const order = Object.entries(images);
for (let i = 0; i < runs; i++) {
  // Each round starts with the next image: none is always the one booted first (or right after another).
  for (const [name, image] of [...order.slice(i % order.length), ...order.slice(0, i % order.length)]) {
    const r = await bootToChecks(image);
    times[name].push(r);
    notes[name] = `${r.accel}, via ${r.via}${r.failed.length ? `; FAILED: ${r.failed.join('; ')}` : ''}`;
    console.error(`bench: run ${i + 1}/${runs} ${name}: boot-to-checks ${r.boot.toFixed(1)} s, command ${r.wall.toFixed(1)} s`);
  }
}

const med = (name, key) => median(times[name].map((r) => r[key]));
const size = async (path) => ((await stat(path)).blocks * 512) / 2 ** 20;
console.log(`checkout: ${checkout}; runs: ${runs} each, interleaved, each round starting with the next image (medians); checks: failed_units + a command`);
console.log(`${'image'.padEnd(8)}${'boot→checks s'.padStart(15)}${'command s'.padStart(11)}${'vs base'.padStart(9)}${'MiB'.padStart(8)}  runs (boot→checks s)`);
for (const name of Object.keys(images)) {
  const all = times[name].map((r) => r.boot.toFixed(1)).join(' ');
  console.log(`${name.padEnd(8)}${med(name, 'boot').toFixed(1).padStart(15)}${med(name, 'wall').toFixed(1).padStart(11)}${(med(name, 'boot') / med('base', 'boot')).toFixed(3).padStart(9)}${(await size(images[name])).toFixed(0).padStart(8)}  ${all}  (${notes[name]})`);
}
const emptyRatio = med('empty', 'boot') / med('base', 'boot');
console.log(`empty / base (goal ≤ 1.10: the tool adds nothing to a boot): ${emptyRatio.toFixed(3)} ${emptyRatio <= 1.1 ? 'PASS' : 'FAIL'}`);
if (images.node) console.log(`node / base (reported): ${(med('node', 'boot') / med('base', 'boot')).toFixed(3)}`);
const bom = JSON.parse(await readFile(`${images.empty}.bom.json`, 'utf8').catch(() => '{}'));
if (bom.steps) console.log(`empty recipe: ${bom.steps.length} steps (its output differs from the base only by what the tool itself does)`);
