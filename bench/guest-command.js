// The sandbox's cost per guest command and per build: recipes of 1 and 41 `run: true` steps applied with
// --no-cache (one session: each step is one guest command), so (t41 - t1) / 40 is what one command costs.
// Used by step-cache.js; alone, it can measure another checkout too (before/after):
//   node bench/guest-command.js [--disk-image BASE] [--runs N] [--repo CHECKOUT]
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { median, repo as ownRepo, seconds } from './common.js';

export async function guestCommandCost({ dir, base, runs, repo = ownRepo }) {
  const recipe = async (count) => {
    const path = join(dir, `guest-commands-${count}.yaml`);
    await writeFile(path, `name: bench-guest-commands\nsteps:\n${'  - run: "true"\n'.repeat(count)}`);
    return path;
  };
  const time = async (path) => {
    const times = [];
    for (let i = 0; i < runs; i++) {
      const output = join(dir, 'guest-commands-out.qcow2');
      await rm(output, { force: true });
      const t0 = performance.now();
      await execa('node', [join(repo, 'bin/run.js'), 'apply', path, '--disk-image', base, '--output', output, '--sparsify', 'none', '--mount-backend', 'fuse', '--quiet', '--no-cache'], { stderr: 'ignore' });
      times.push(seconds(t0));
    }
    return median(times);
  };
  const one = await time(await recipe(1));
  const many = await time(await recipe(41));
  return { perCommandMs: ((many - one) / 40) * 1000, oneStepSeconds: one };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { parseArgs } = await import('node:util');
  const { values } = parseArgs({ options: { 'disk-image': { type: 'string' }, runs: { type: 'string', default: '3' }, repo: { type: 'string' }, dir: { type: 'string', default: '/var/tmp/imagebuilder-bench' } } });
  await mkdir(values.dir, { recursive: true });
  const cost = await guestCommandCost({ dir: values.dir, base: values['disk-image'], runs: Number(values.runs), repo: values.repo ?? ownRepo });
  console.log(`${values.repo ?? ownRepo}: per guest command ${cost.perCommandMs.toFixed(1)} ms; a build of one step ${cost.oneStepSeconds.toFixed(2)} s`);
}
