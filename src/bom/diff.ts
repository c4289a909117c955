import type { InstalledPackage } from '../pkg/types.js';
import { oneLine } from '../util/log.js';
import type { RecordedFile } from '../steps/types.js';
import type { UnitState } from './inventory.js';

/** What two images (or their BOMs) are compared on. Files are known only from BOMs. */
export interface Comparable {
  label: string;
  packages: InstalledPackage[];
  units: UnitState[];
  files?: RecordedFile[];
}

export interface ImageDiff {
  a: string;
  b: string;
  packages: { added: InstalledPackage[]; removed: InstalledPackage[]; changed: { name: string; architecture: string; from: string; to: string }[] };
  units: { added: UnitState[]; removed: UnitState[]; changed: { unit: string; from: string; to: string }[] };
  /** Only when both sides are BOMs: files the recipes wrote, downloaded or copied. */
  files?: { added: RecordedFile[]; removed: RecordedFile[]; changed: { path: string; from: string; to: string }[] };
}

function compare<T>(a: T[], b: T[], key: (item: T) => string, value: (item: T) => string) {
  const left = new Map(a.map((item) => [key(item), item]));
  const right = new Map(b.map((item) => [key(item), item]));
  return {
    added: b.filter((item) => !left.has(key(item))),
    removed: a.filter((item) => !right.has(key(item))),
    changed: b.filter((item) => left.has(key(item)) && value(left.get(key(item))!) !== value(item)).map((item) => ({ item, from: value(left.get(key(item))!), to: value(item) })),
  };
}

export function diffImages(a: Comparable, b: Comparable): ImageDiff {
  const packages = compare(a.packages, b.packages, (p) => `${p.name}:${p.architecture}`, (p) => p.version);
  const units = compare(a.units, b.units, (u) => u.unit, (u) => u.state);
  const result: ImageDiff = {
    a: a.label,
    b: b.label,
    packages: {
      added: packages.added,
      removed: packages.removed,
      changed: packages.changed.map(({ item, from, to }) => ({ name: item.name, architecture: item.architecture, from, to })),
    },
    units: { added: units.added, removed: units.removed, changed: units.changed.map(({ item, from, to }) => ({ unit: item.unit, from, to })) },
  };
  if (a.files && b.files) {
    const files = compare(a.files, b.files, (f) => f.path, (f) => f.sha256);
    result.files = { added: files.added, removed: files.removed, changed: files.changed.map(({ item, from, to }) => ({ path: item.path, from, to })) };
  }
  return result;
}

export function diffIsEmpty(diff: ImageDiff): boolean {
  const sections = [diff.packages, diff.units, ...(diff.files ? [diff.files] : [])];
  return sections.every((s) => s.added.length + s.removed.length + s.changed.length === 0);
}

/** The diff as a reader wants it on a terminal: + added, - removed, ~ changed, per section. */
export function renderDiff(diff: ImageDiff): string {
  const lines = [`--- ${diff.a}`, `+++ ${diff.b}`];
  const section = (title: string, added: string[], removed: string[], changed: string[]) => {
    if (!added.length && !removed.length && !changed.length) return;
    // A guest's names on one line each: a newline in a unit's name is shown, not a forged line.
    lines.push(`${title}:`, ...added.map((l) => `  + ${oneLine(l)}`), ...removed.map((l) => `  - ${oneLine(l)}`), ...changed.map((l) => `  ~ ${oneLine(l)}`));
  };
  const pkg = (p: InstalledPackage) => `${p.name} ${p.version} (${p.architecture})`;
  section('packages', diff.packages.added.map(pkg), diff.packages.removed.map(pkg), diff.packages.changed.map((c) => `${c.name} ${c.from} → ${c.to} (${c.architecture})`));
  section('units', diff.units.added.map((u) => `${u.unit} ${u.state}`), diff.units.removed.map((u) => `${u.unit} ${u.state}`), diff.units.changed.map((c) => `${c.unit} ${c.from} → ${c.to}`));
  if (diff.files) {
    const short = (sha: string) => sha.slice(0, 12);
    section('files', diff.files.added.map((f) => `${f.path} ${short(f.sha256)}`), diff.files.removed.map((f) => `${f.path} ${short(f.sha256)}`), diff.files.changed.map((c) => `${c.path} ${short(c.from)} → ${short(c.to)}`));
  }
  if (lines.length === 2) lines.push('no differences in packages, units' + (diff.files ? ' or files' : ''));
  return lines.join('\n');
}
