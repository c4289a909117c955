import { basename } from 'node:path';
import type { Bom } from './collect.js';

/**
 * The only parts of a BOM two builds of one recipe on one base may differ in, and why. Everything else must be
 * equal, value for value.
 */
export const BUILD_OWN_FIELDS: Record<string, string> = {
  durationsMs: "this run's wall-clock times",
  'steps[].durationMs': "this run's wall-clock time of each step",
  createdAt: "this run's time; compared too when SOURCE_DATE_EPOCH is set, which fixes it",
  'output.path, artifacts[].path': 'where this run wrote (--verify-repeatable puts its second build in a scratch directory); the file names are compared',
  'output.sha256, artifacts[].sha256':
    "the artifacts' bytes: a disk image's filesystems hold the inode change and birth times the kernel set while the build wrote them, " +
    "and a tree holds what the guest's own tools dated (apt's history.log, dpkg.log); no SOURCE_DATE_EPOCH reaches those",
};

/** The BOM without its build-own fields (see BUILD_OWN_FIELDS); createdAt stays when it came from SOURCE_DATE_EPOCH. */
export function repeatableView(bom: Bom, options: { sourceDateEpoch: boolean }): Record<string, unknown> {
  const { durationsMs: _durations, createdAt, output, artifacts, steps, ...rest } = bom;
  const artifact = (a: { path: string; sha256: string }) => {
    const { path, sha256: _sha256, ...kept } = a;
    return { ...kept, name: basename(path) };
  };
  return {
    ...rest,
    ...(options.sourceDateEpoch ? { createdAt } : {}),
    output: artifact(output),
    artifacts: artifacts.map(artifact),
    steps: steps.map(({ durationMs: _, ...step }) => step),
  };
}

/** Where two values differ, as `path: a ≠ b` lines (JSON paths, at most `limit`). */
export function jsonDifferences(a: unknown, b: unknown, limit = 50): string[] {
  const out: string[] = [];
  const visit = (x: unknown, y: unknown, path: string) => {
    if (out.length >= limit) return;
    if (x !== null && y !== null && typeof x === 'object' && typeof y === 'object' && Array.isArray(x) === Array.isArray(y)) {
      const keys = Array.isArray(x) ? [...Array(Math.max(x.length, (y as unknown[]).length)).keys()].map(String) : [...new Set([...Object.keys(x), ...Object.keys(y)])].sort();
      for (const key of keys) {
        const child = Array.isArray(x) ? `${path}[${key}]` : path ? `${path}.${key}` : key;
        visit((x as Record<string, unknown>)[key], (y as Record<string, unknown>)[key], child);
      }
      return;
    }
    if (JSON.stringify(x) !== JSON.stringify(y)) out.push(`${path || '(whole)'}: ${JSON.stringify(x) ?? 'absent'} ≠ ${JSON.stringify(y) ?? 'absent'}`);
  };
  visit(a, b, '');
  return out;
}

/** What differs between two builds' BOMs beyond their build-own fields; empty when the builds are repeatable. */
export function bomDifferences(a: Bom, b: Bom, options: { sourceDateEpoch: boolean }): string[] {
  return jsonDifferences(repeatableView(a, options), repeatableView(b, options));
}
