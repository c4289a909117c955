import { constants } from 'node:fs';
import { copyFile, mkdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { StepDownloads } from '../fetch/downloads.js';
import { networkDownloads } from '../fetch/downloads.js';
import { aptBundleIndex } from '../pkg/apt-bundle.js';
import { rpmBundleIndex } from '../pkg/rpm-bundle.js';
import type { PackageCollector } from '../pkg/types.js';
import type { StepHostFiles } from '../steps/types.js';
import { sha256File, sha256Text } from '../util/digest.js';
import { ImageBuilderError } from '../util/errors.js';
import type { Logger } from '../util/log.js';
import { writeBundleManifest, type BundleFile, type BundleManifest } from './manifest.js';

/** Where each kind of file lives in a bundle directory. */
export const BUNDLE_LAYOUT = {
  base: 'base',
  baseSums: 'base/SHA256SUMS',
  files: 'files',
  apt: 'apt',
  aptPackages: 'apt/packages',
  /** rpm/<repository id>/packages/<sha256>.rpm and rpm/<repository id>/repodata/{repomd,primary}.xml */
  rpm: 'rpm',
} as const;

/** The most metadata-entry text a bundle holds in memory for its rpm repositories. */
const MAX_KEPT_ENTRY_BYTES = 256 << 20;

/** The base image as phase 0 verified it: kept in the bundle with a sums file naming it. */
export interface BundleBase {
  path: string;
  sha256: string;
  format: string;
  /** Where it came from: its URL, or its local path. */
  origin: string;
}

/**
 * What `imagebuilder bundle` gathers while the recipe runs on a throw-away copy of the base: every file a step
 * downloaded (by URL), every container archive a step read beside the recipe (by its name there), every .deb apt
 * fetched (with its signed list's stanza), every .rpm dnf or zypper fetched (with its repository's metadata entry).
 * finish() writes the repositories' indexes and bundle.json. Everything is written into `dir` (the partial bundle)
 * as it arrives.
 */
export class BundleCollector implements PackageCollector {
  private readonly entries = new Map<string, Omit<BundleFile, 'sha256' | 'size'>>();
  private readonly debs = new Map<string, { stanza: string; origin: string }>();
  private readonly downloaded = new Map<string, string>();
  /** repository id → sha256 → its metadata entry */
  private readonly rpms = new Map<string, Map<string, string>>();
  private aptUsed = false;
  /** Container archive name → the sha256 kept for it; how many were copied in (each staged under its own name). */
  private readonly hostFileSha256 = new Map<string, string>();
  private hostFileCount = 0;
  private entryBytes = 0;

  constructor(
    readonly dir: string,
    readonly log: Logger,
  ) {}

  /** The base image, copied into the bundle (a reflink where the filesystem can), with a SHA256SUMS naming it. */
  async addBase(base: BundleBase, copy: (from: string, to: string) => Promise<void>): Promise<string> {
    const name = basename(base.path);
    await mkdir(join(this.dir, BUNDLE_LAYOUT.base), { recursive: true });
    await copy(base.path, join(this.dir, BUNDLE_LAYOUT.base, name));
    await writeFile(join(this.dir, BUNDLE_LAYOUT.baseSums), `${base.sha256}  ${name}\n`);
    this.entries.set(`${BUNDLE_LAYOUT.base}/${name}`, { path: `${BUNDLE_LAYOUT.base}/${name}`, kind: 'base-image', origin: base.origin });
    this.entries.set(BUNDLE_LAYOUT.baseSums, { path: BUNDLE_LAYOUT.baseSums, kind: 'base-sums' });
    return name;
  }

  /** The steps' downloads: fetched from the network as always, each kept under its sha256 and recorded by URL. */
  readonly downloads: StepDownloads = {
    bytes: async (url, options) => {
      const bytes = await networkDownloads.bytes(url, options);
      await this.keepDownload(url, sha256Text(bytes), (path) => writeFile(path, bytes));
      return bytes;
    },
    toFile: async (url, path, options) => {
      const result = await networkDownloads.toFile(url, path, options);
      await this.keepDownload(url, result.sha256, (target) => copyFile(path, target));
      return result;
    },
  };

  private async keepDownload(url: string, sha256: string, write: (path: string) => Promise<void>): Promise<void> {
    const previous = this.downloaded.get(url);
    if (previous && previous !== sha256) {
      this.log.warn(`bundle: ${url} gave other bytes the second time it was fetched (sha256 ${sha256}, first ${previous}); the bundle keeps the first`);
      return;
    }
    if (previous) return;
    const path = `${BUNDLE_LAYOUT.files}/${sha256}`;
    await mkdir(join(this.dir, BUNDLE_LAYOUT.files), { recursive: true });
    if (!this.entries.has(path)) await write(join(this.dir, path));
    this.downloaded.set(url, sha256);
    this.entries.set(`url:${url}`, { path, kind: 'download', origin: url });
  }

  /** Container archives beside the recipe: each kept under its sha256 and recorded by the name the recipe gives it. */
  readonly hostFiles: StepHostFiles = {
    path: async (named, hostPath, what) => {
      const info = await stat(hostPath).catch(() => undefined);
      // A missing one fails the step as always, with its own message.
      if (!info?.isFile()) return hostPath;
      const staged = join(this.dir, BUNDLE_LAYOUT.files, `.incoming-${this.hostFileCount++}`);
      await mkdir(dirname(staged), { recursive: true });
      await copyFile(hostPath, staged, constants.COPYFILE_FICLONE);
      const sha256 = await sha256File(staged);
      const previous = this.hostFileSha256.get(named);
      if (previous !== undefined && previous !== sha256) {
        await rm(staged, { force: true });
        throw new ImageBuilderError('BAD_RECIPE', `two different ${what}s are named ${named} (recipe files in different directories?); a bundle tells them apart by that name`, {
          hint: 'give them different names (or paths) in the recipe, then run `imagebuilder bundle` again',
        });
      }
      this.hostFileSha256.set(named, sha256);
      const path = `${BUNDLE_LAYOUT.files}/${sha256}`;
      // Two names for the same bytes share one file.
      if (await stat(join(this.dir, path)).then(() => true, () => false)) await rm(staged, { force: true });
      else await rename(staged, join(this.dir, path));
      this.entries.set(`host:${named}`, { path, kind: 'container-archive', origin: named });
      return hostPath;
    },
  };

  aptTransaction(): void {
    this.aptUsed = true;
  }

  async addDeb(content: Buffer, sha256: string, stanza: string, origin = 'apt'): Promise<void> {
    if (this.debs.has(sha256)) return;
    const path = `${BUNDLE_LAYOUT.aptPackages}/${sha256}.deb`;
    await mkdir(join(this.dir, BUNDLE_LAYOUT.aptPackages), { recursive: true });
    await writeFile(join(this.dir, path), content);
    this.debs.set(sha256, { stanza, origin });
    this.entries.set(path, { path, kind: 'package', origin });
  }

  rpmRepositories(ids: string[]): void {
    for (const id of ids) if (!this.rpms.has(id)) this.rpms.set(id, new Map());
  }

  async addRpm(content: Buffer, sha256: string, repository: string, entry: string, origin: string): Promise<void> {
    this.rpmRepositories([repository]);
    const kept = this.rpms.get(repository)!;
    if (kept.has(sha256)) return;
    // The entries are held until finish(): bounded, whatever a crafted guest's metadata holds.
    this.entryBytes += entry.length;
    if (this.entryBytes > MAX_KEPT_ENTRY_BYTES) throw new ImageBuilderError('STEP_FAILED', `bundle: the kept packages' metadata entries exceed ${MAX_KEPT_ENTRY_BYTES} bytes`, { hint: 'a real recipe keeps a few MiB of them: is the guest\'s repository metadata what it should be?' });
    const path = `${BUNDLE_LAYOUT.rpm}/${repository}/packages/${sha256}.rpm`;
    await mkdir(join(this.dir, dirname(path)), { recursive: true });
    await writeFile(join(this.dir, path), content);
    kept.set(sha256, entry);
    this.entries.set(path, { path, kind: 'package', origin });
  }

  /** The repositories' indexes (apt's flat one, one rpm-md per rpm repository) and bundle.json: the bundle is complete. */
  async finish(recipe: { path: string; sha256: string }, variables: Record<string, string>, base: BundleBase & { name: string }): Promise<BundleManifest> {
    if (this.debs.size || this.aptUsed) {
      await mkdir(join(this.dir, BUNDLE_LAYOUT.apt), { recursive: true });
      const { packages, release } = aptBundleIndex([...this.debs].map(([sha256, { stanza }]) => ({ sha256, stanza, filename: `packages/${sha256}.deb` })));
      await writeFile(join(this.dir, BUNDLE_LAYOUT.apt, 'Packages'), packages, 'latin1');
      await writeFile(join(this.dir, BUNDLE_LAYOUT.apt, 'Release'), release);
      for (const name of ['Packages', 'Release']) this.entries.set(`${BUNDLE_LAYOUT.apt}/${name}`, { path: `${BUNDLE_LAYOUT.apt}/${name}`, kind: 'repository-index' });
    }
    for (const [repository, kept] of [...this.rpms].sort(([a], [b]) => a.localeCompare(b))) {
      const { primary, repomd } = rpmBundleIndex([...kept].map(([sha256, entry]) => ({ sha256, entry, filename: `packages/${sha256}.rpm` })));
      const repodata = `${BUNDLE_LAYOUT.rpm}/${repository}/repodata`;
      await mkdir(join(this.dir, repodata), { recursive: true });
      for (const [name, text] of [['primary.xml', primary], ['repomd.xml', repomd]]) {
        await writeFile(join(this.dir, repodata, name), text);
        this.entries.set(`${repodata}/${name}`, { path: `${repodata}/${name}`, kind: 'repository-index' });
      }
    }
    return writeBundleManifest(this.dir, recipe, variables, [...this.entries.values()], {
      base: { path: `${BUNDLE_LAYOUT.base}/${base.name}`, sha256: base.sha256, format: base.format, origin: base.origin },
    });
  }
}
