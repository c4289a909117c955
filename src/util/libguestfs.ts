import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { release } from 'node:os';
import { join } from 'node:path';
import type { ExecOptions, ExecResult, Runner } from './exec.js';
import { ImageBuilderError } from './errors.js';
import { exists } from './fs.js';
import type { Logger } from './log.js';
import { cacheDir } from './paths.js';

const TCG = { LIBGUESTFS_BACKEND_SETTINGS: 'force_tcg' };
/** An appliance boots in seconds under KVM and ~15 s under TCG; one that has not booted after this is stuck. */
const KVM_PROBE_TIMEOUT_MS = 60000;

/**
 * Whether libguestfs's appliance can use KVM on this host. On some hosts KVM is present but the appliance
 * aborts or hangs (nested virtualisation); then TCG, slower but sure, is forced. Probed once with
 * `guestfish -a /dev/null run` (what libguestfs-test-tool does) and remembered per kernel in the cache dir.
 * A user's own LIBGUESTFS_BACKEND_SETTINGS always wins.
 */
export async function libguestfsEnv(run: Runner, log: Logger): Promise<Record<string, string>> {
  if (process.env.LIBGUESTFS_BACKEND_SETTINGS !== undefined) return {};
  if (!(await exists('/dev/kvm'))) return TCG;
  const verdictFile = join(cacheDir(), `libguestfs-kvm-${release()}`);
  let verdict = (await readFile(verdictFile, 'utf8').catch(() => '')).trim();
  if (verdict !== 'works' && verdict !== 'broken') {
    log.info('checking whether the libguestfs appliance can use KVM here (once per host, up to 60 s)');
    const probe = await run('guestfish', ['--ro', '--add', '/dev/null', 'run'], { allowFailure: true, timeoutMs: KVM_PROBE_TIMEOUT_MS, log });
    verdict = probe.exitCode === 0 ? 'works' : 'broken';
    await mkdir(cacheDir(), { recursive: true });
    await writeFile(verdictFile, `${verdict}\n`);
  }
  if (verdict === 'broken') log.info(`libguestfs: KVM does not work on this host (${verdictFile}); using TCG`);
  return verdict === 'works' ? {} : TCG;
}

/** Runs a libguestfs tool with the backend chosen above; if it still fails under KVM, once more with TCG. */
export async function runWithTcgFallback(run: Runner, file: string, args: string[], options: ExecOptions & { purpose: string; log: Logger }): Promise<ExecResult> {
  const env = { ...(await libguestfsEnv(run, options.log)), ...options.extraEnv };
  let result = await run(file, args, { ...options, allowFailure: true, extraEnv: env });
  if (result.exitCode !== 0 && env.LIBGUESTFS_BACKEND_SETTINGS === undefined && process.env.LIBGUESTFS_BACKEND_SETTINGS === undefined) {
    options.log.warn(`${file} failed with the KVM appliance (${result.output.trim().split('\n').pop()}); retrying with TCG`);
    result = await run(file, args, { ...options, allowFailure: true, extraEnv: { ...env, ...TCG } });
  }
  if (result.exitCode !== 0) {
    throw new ImageBuilderError('COMMAND_FAILED', `${options.purpose}: \`${result.command}\` exited with ${result.exitCode}`, {
      detail: result.output.trim().split('\n').slice(-20).join('\n'),
      hint: 'run `libguestfs-test-tool` to see why the libguestfs appliance does not start',
    });
  }
  return result;
}
