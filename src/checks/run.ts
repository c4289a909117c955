import { randomBytes } from 'node:crypto';
import type { Check, Probe, ProbeOutput } from './types.js';

/** One probe's outcome: a check makes one or more (service: enabled, running). */
export interface CheckResult {
  /** The check's name, or what it checks: "service containerd". */
  check: string;
  type: string;
  attribute: string;
  /** Where the check was declared: file:line:column, or the suite's name. */
  location: string;
  status: 'passed' | 'failed' | 'skipped';
  observed?: string;
  expected?: string;
  /** Why it was skipped. */
  reason?: string;
}

/**
 * Where probes run: `image` — on the mounted image, the probes that read only files; `booted` — in the booted
 * guest, the probes that need it; `booted-all` — in the booted guest, every probe that means something there
 * (to compare with the image's answers). Checks marked image-only (hygiene) are judged on the image alone.
 */
export type CheckMode = 'image' | 'booted' | 'booted-all';

type Declared = Check & { name?: string; imageOnly?: boolean };

function skipReason(check: Declared, probe: Probe, mode: CheckMode): string | undefined {
  if (mode === 'image') return probe.boot ? 'needs a booted guest' : undefined;
  if (check.imageOnly) return 'judged on the image, before first boot';
  return mode === 'booted' && !probe.boot ? 'judged on the image' : undefined;
}

/** Runs a batch script in the guest and returns what it printed. */
export type GuestScriptRunner = (script: string) => Promise<ProbeOutput>;

const MARK = '@@imagebuilder-probe';
/** Printed when the guest lacks base64: every probe would seem to print nothing, which could pass a check. */
export const NO_BASE64 = '@@imagebuilder-no-base64';

/**
 * One script for all probes, so a whole check run is one guest command (one boot, one sandbox entry): each
 * probe runs in a subshell with no stdin, and its exit status and base64'd stdout are printed on a line marked
 * with this run's nonce (a probe's own output cannot pass for another's result by accident).
 */
export function batchScript(probes: Probe[], nonce: string): string {
  return [
    `command -v base64 >/dev/null 2>&1 || { echo ${NO_BASE64}; exit 97; }`,
    ...probes.map((probe, index) => [
      `out=$( (${probe.script}\n) </dev/null 2>/dev/null ); rc=$?`,
      `printf '\\n${MARK}-${nonce} %s %s %s\\n' ${index} "$rc" "$(printf '%s' "$out" | base64 | tr -d '\\n')"`,
    ].join('\n')),
  ].join('\n');
}

/** The marked lines of a batch script's output, by probe index; an index reported twice counts as not reported. */
export function parseBatchOutput(stdout: string, nonce: string): Map<number, ProbeOutput> {
  const outputs = new Map<number, ProbeOutput>();
  const twice = new Set<number>();
  for (const line of stdout.split('\n')) {
    const match = new RegExp(`^${MARK}-${nonce} (\\d+) (\\d+) ?(\\S*)$`).exec(line.trim());
    if (!match) continue;
    const index = Number(match[1]);
    if (outputs.has(index)) twice.add(index);
    outputs.set(index, { exitCode: Number(match[2]), stdout: Buffer.from(match[3], 'base64').toString('utf8') });
  }
  for (const index of twice) outputs.delete(index);
  return outputs;
}

/**
 * Runs the checks' probes that `mode` takes in one batch through `runScript`, and judges each; the others are
 * reported as skipped, saying why.
 */
export async function runChecks(checks: Declared[], mode: CheckMode, runScript: GuestScriptRunner): Promise<CheckResult[]> {
  const planned = checks.flatMap((check) => check.type.probes(check.spec).map((probe) => ({ check, probe })));
  const runnable = planned.filter(({ check, probe }) => !skipReason(check, probe, mode));
  const nonce = randomBytes(8).toString('hex');
  const batch = runnable.length ? await runScript(batchScript(runnable.map(({ probe }) => probe), nonce)) : { exitCode: 0, stdout: '' };
  const outputs = parseBatchOutput(batch.stdout, nonce);
  const missing = batch.stdout.includes(NO_BASE64) ? 'no result: the guest has no base64 (coreutils)' : 'no result (the guest did not run it, or reported it twice)';
  return planned.map(({ check, probe }) => {
    const base = { check: check.name ?? check.type.describe(check.spec), type: check.type.key, attribute: probe.attribute, location: check.location };
    const index = runnable.findIndex((entry) => entry.probe === probe);
    if (index < 0) return { ...base, status: 'skipped', reason: skipReason(check, probe, mode) };
    const output = outputs.get(index);
    if (!output) return { ...base, status: 'failed', observed: missing, expected: probe.attribute };
    const verdict = probe.judge(output);
    return { ...base, status: verdict.passed ? 'passed' : 'failed', observed: verdict.observed, expected: verdict.expected };
  });
}

export function summarize(results: CheckResult[]): { passed: number; failed: number; skipped: number } {
  return {
    passed: results.filter((r) => r.status === 'passed').length,
    failed: results.filter((r) => r.status === 'failed').length,
    skipped: results.filter((r) => r.status === 'skipped').length,
  };
}
