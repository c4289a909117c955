import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { release } from 'node:os';
import { join } from 'node:path';
import type { ExecOptions, ExecResult, Runner } from './exec.js';
import { ImageBuilderError } from './errors.js';
import { exists } from './fs.js';
import type { Logger } from './log.js';

const TCG = { LIBGUESTFS_BACKEND_SETTINGS: 'force_tcg' };
/** An appliance boots in seconds under KVM and ~15 s under TCG; one that has not booted after this is stuck. */
const KVM_PROBE_TIMEOUT_MS = 60000;

export type KvmVerdict = 'works' | 'broken';

/** Where the KVM verdict is remembered: per kernel, since a kernel update may fix (or break) nested KVM. */
export function kvmVerdictFile(cacheDir: string): string {
  return join(cacheDir, `libguestfs-kvm-${release()}`);
}

/** The remembered verdict, or undefined when this host (this kernel) was never probed. */
export async function cachedKvmVerdict(cacheDir: string): Promise<KvmVerdict | undefined> {
  const verdict = (await readFile(kvmVerdictFile(cacheDir), 'utf8').catch(() => '')).trim();
  return verdict === 'works' || verdict === 'broken' ? verdict : undefined;
}

/**
 * Starts the appliance once under KVM (`guestfish -a /dev/null run`, what libguestfs-test-tool does) and
 * remembers the verdict. Up to a minute: an appliance that has not booted by then is stuck.
 */
export async function probeKvm(run: Runner, log: Logger, cacheDir: string): Promise<KvmVerdict> {
  log.info('checking whether the libguestfs appliance can use KVM here (once per host, up to 60 s)');
  const probe = await run('guestfish', ['--ro', '--add', '/dev/null', 'run'], { allowFailure: true, timeoutMs: KVM_PROBE_TIMEOUT_MS, log, extraEnv: { LIBGUESTFS_BACKEND_SETTINGS: '' } });
  const verdict: KvmVerdict = probe.exitCode === 0 ? 'works' : 'broken';
  await mkdir(cacheDir, { recursive: true });
  await writeFile(kvmVerdictFile(cacheDir), `${verdict}\n`);
  return verdict;
}

/** Whether the appliance starts at all under TCG (no KVM): what every libguestfs tool falls back to. */
export async function probeTcg(run: Runner, log: Logger): Promise<ExecResult> {
  return run('guestfish', ['--ro', '--add', '/dev/null', 'run'], { allowFailure: true, timeoutMs: 4 * KVM_PROBE_TIMEOUT_MS, log, extraEnv: TCG });
}

/**
 * Whether libguestfs's appliance can use KVM on this host. On some hosts KVM is present but the appliance
 * aborts or hangs (nested virtualisation); then TCG, slower but sure, is forced. Probed once (probeKvm) and
 * remembered per kernel in the cache dir. A user's own LIBGUESTFS_BACKEND_SETTINGS always wins.
 */
export async function libguestfsEnv(run: Runner, log: Logger, cacheDir: string): Promise<Record<string, string>> {
  if (process.env.LIBGUESTFS_BACKEND_SETTINGS !== undefined) return {};
  if (!(await exists('/dev/kvm'))) return TCG;
  const verdict = (await cachedKvmVerdict(cacheDir)) ?? (await probeKvm(run, log, cacheDir));
  if (verdict === 'broken') log.info(`libguestfs: KVM does not work on this host (${kvmVerdictFile(cacheDir)}); using TCG`);
  return verdict === 'works' ? {} : TCG;
}

/** The environment to try once more with when a libguestfs tool failed under `env`, or undefined: TCG was used, or the user chose. */
export function tcgRetryEnv(env: Record<string, string>): Record<string, string> | undefined {
  if (env.LIBGUESTFS_BACKEND_SETTINGS !== undefined || process.env.LIBGUESTFS_BACKEND_SETTINGS !== undefined) return undefined;
  return { ...env, ...TCG };
}

/** Runs a libguestfs tool with the backend chosen above; if it still fails under KVM, once more with TCG. */
export async function runWithTcgFallback(run: Runner, file: string, args: string[], options: ExecOptions & { purpose: string; log: Logger; cacheDir: string }): Promise<ExecResult> {
  const env = { ...(await libguestfsEnv(run, options.log, options.cacheDir)), ...options.extraEnv };
  let result = await run(file, args, { ...options, allowFailure: true, extraEnv: env });
  const retry = tcgRetryEnv(env);
  if (result.exitCode !== 0 && retry) {
    options.log.warn(`${file} failed with the KVM appliance (${result.output.trim().split('\n').pop()}); retrying with TCG`);
    result = await run(file, args, { ...options, allowFailure: true, extraEnv: retry });
  }
  if (result.exitCode !== 0) {
    throw new ImageBuilderError('COMMAND_FAILED', `${options.purpose}: \`${result.command}\` exited with ${result.exitCode}`, {
      detail: result.output.trim().split('\n').slice(-20).join('\n'),
      hint: 'run `libguestfs-test-tool` to see why the libguestfs appliance does not start',
    });
  }
  return result;
}
