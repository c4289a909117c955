import { relative } from 'node:path';
import type { MatrixResult } from './run.js';

/** Columns padded to their widest cell; the last column is not padded. */
export function formatTable(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i].length)));
  const line = (cells: string[]) => cells.map((cell, i) => (i === cells.length - 1 ? cell : cell.padEnd(widths[i]))).join('  ').trimEnd();
  return [line(header), ...rows.map(line)].join('\n');
}

/** One line per build: what it was, how it ended, where its output is. */
export function formatSummary(result: MatrixResult, cwd = process.cwd()): string {
  const rows = result.results.map((r) => [
    r.name,
    r.base,
    Object.entries(r.variables).map(([k, v]) => `${k}=${v}`).join(' ') || '-',
    r.status === 'failed' && r.error ? `failed (${r.error.code})` : r.status,
    r.durationMs ? `${(r.durationMs / 1000).toFixed(1)}s` : '-',
    r.output ? relative(cwd, r.output.path) || r.output.path : relative(cwd, r.log),
    r.output ? r.output.sha256.slice(0, 16) : '-',
  ]);
  const counts = (['succeeded', 'failed', 'cancelled'] as const).map((s) => [s, result.results.filter((r) => r.status === s).length] as const).filter(([, n]) => n);
  return `${formatTable(['BUILD', 'BASE', 'VARIABLES', 'STATUS', 'DURATION', 'OUTPUT (or log)', 'SHA256'], rows)}\n${counts.map(([s, n]) => `${n} ${s}`).join(', ')} in ${(result.durationMs / 1000).toFixed(1)}s`;
}
