// What both benchmarks share: their options, the base image they measure on, and virt-customize's appliance choice.
import { mkdir, readFile, stat } from 'node:fs/promises';
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
