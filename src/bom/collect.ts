import type { InstalledPackage } from '../pkg/types.js';
import type { RecordedFile, RecordedImage, RecordedUnit } from '../steps/types.js';
import type { BomStep } from '../util/step-record.js';
import type { Kernel, UnitState } from './inventory.js';
import type { CheckResult } from '../checks/run.js';
import type { NodeComponent } from './components.js';

/** 'changed': same package, another version than the base had (an upgrade or a pinned downgrade). */
export type PackageOrigin = 'base' | 'added' | 'changed';

export interface BomPackage extends InstalledPackage {
  origin: PackageOrigin;
  baseVersion?: string;
}

export interface BomOffline {
  /** sha256 of the bundle's bundle.json, which names every file of the bundle by its sha256. */
  bundle: string;
  /** Guest commands had no network; downloads and packages came from the bundle alone. */
  network: 'none';
  /** Why its packages were trusted: apt's `[trusted=yes]` on the bundle's source alone, its index verified by the manifest. */
  trust: string;
}

export interface Bom {
  bomVersion: 1;
  tool: { name: 'imagebuilder'; version: string };
  createdAt: string;
  input: {
    /** The URL the image was fetched from (then `path` is its verified copy in the cache). */
    url?: string;
    path: string;
    format: string;
    /** sha256 of the file used. */
    sha256: string;
    /** The sum the file as published was verified by, when it is not `sha256`: a compressed download, or sha512. */
    published?: { name: string; compression?: string; algorithm: 'sha256' | 'sha512'; hash: string };
    /** The sums file (path or URL) that vouched for it, or "--checksum". */
    checksumSource?: string;
    /** false: nothing vouched for it (--insecure-skip-verify, or a local image without a sums file). */
    verified: boolean;
    /** The keyring and signature that vouched for the sums file (--keyring). */
    signature?: { keyring: string; signature: string };
  };
  /** The first artifact, and how it was written. */
  output: { path: string; format: string; sha256: string; sparsify: string; compressed?: boolean };
  /** Every image written (one per --format), with its sha256; each is also in the SHA256SUMS beside it. */
  artifacts: { path: string; format: string; sha256: string }[];
  recipe: { path: string; name: string; sha256: string; variables: Record<string, string>; includes: { path: string; sha256: string }[] };
  os: { id?: string; versionId?: string; prettyName?: string; osRelease: Record<string, string> };
  architecture?: string;
  kernels: Kernel[];
  packages: BomPackage[];
  removedPackages: InstalledPackage[];
  /** Files the recipe wrote, downloaded or copied in, with their sha256. */
  files: RecordedFile[];
  /** systemd units the recipe enabled, disabled or masked. */
  units: RecordedUnit[];
  /** Every unit enabled or masked in the finished image, as systemctl left them on disk. */
  unitStates: UnitState[];
  containerImages: RecordedImage[];
  steps: BomStep[];
  /** The recipe's checks judged on the image at the end of phase 1 (`imagebuilder test` judges the rest booted). */
  checks?: CheckResult[];
  /** The node's components (Kubernetes, containerd, runc, CNI plugins, crictl) the image holds, with purls. */
  components?: NodeComponent[];
  /** `apply --test`: the output booted and checked before it took its name; the boot from qemu's start to the report. */
  test?: {
    results: CheckResult[];
    summary: { passed: number; failed: number; skipped: number };
    boot?: { bootMs: number; accel: string; firmware: string; via: string; consoleLog: string; baseFailures?: string[] };
  };
  /** apply --bundle: built offline from an air-gapped bundle, identified by the sha256 of its bundle.json. */
  offline?: BomOffline;
  mountBackend: string;
  durationsMs: Record<string, number>;
  warnings: string[];
}

/** Marks each package as from the base image, added or changed by the recipe; lists what was removed. */
export function comparePackages(before: InstalledPackage[], after: InstalledPackage[]): { packages: BomPackage[]; removed: InstalledPackage[] } {
  const key = (p: InstalledPackage) => `${p.name}:${p.architecture}`;
  const base = new Map(before.map((p) => [key(p), p]));
  const now = new Set(after.map(key));
  const packages = after.map((p): BomPackage => {
    const old = base.get(key(p));
    if (!old) return { ...p, origin: 'added' };
    if (old.version === p.version) return { ...p, origin: 'base' };
    return { ...p, origin: 'changed', baseVersion: old.version };
  });
  return { packages, removed: before.filter((p) => !now.has(key(p))) };
}
