import { createHash } from 'node:crypto';
import { basename } from 'node:path';
import type { InstalledPackage } from '../pkg/types.js';
import type { RecordedFile, RecordedImage } from '../steps/types.js';
import type { Bom, BomPackage } from './collect.js';
import type { NodeComponent } from './components.js';
import type { Inventory, Kernel, UnitState } from './inventory.js';
import { sourceDateEpoch } from '../util/time.js';

/*
 * Package URLs (https://github.com/package-url/purl-spec) for what an image holds, and the one model the
 * CycloneDX and SPDX renderings are both made from (from a native Bom after apply, or an Inventory of any image).
 */

/** Percent-encodes a purl segment (name, namespace segment, version): everything but unreserved characters and ':'. */
function encodeSegment(text: string): string {
  return encodeURIComponent(text).replace(/%3A/gi, ':');
}

/** Qualifier values keep ':' and '/' as well (a repository_url reads as it is written). */
function encodeQualifierValue(text: string): string {
  return encodeSegment(text).replace(/%2F/gi, '/');
}

export interface PurlParts {
  type: string;
  namespace?: string;
  name: string;
  version?: string;
  qualifiers?: Record<string, string | undefined>;
}

/** The canonical purl string: lowercase type, encoded segments, qualifiers sorted by key, empty ones dropped. */
export function formatPurl(parts: PurlParts): string {
  const namespace = parts.namespace ? `${parts.namespace.split('/').filter(Boolean).map(encodeSegment).join('/')}/` : '';
  const version = parts.version ? `@${encodeSegment(parts.version)}` : '';
  const qualifiers = Object.entries(parts.qualifiers ?? {})
    .filter((entry): entry is [string, string] => entry[1] !== undefined && entry[1] !== '')
    .map(([key, value]) => [key.toLowerCase(), value] as const)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([key, value]) => `${key}=${encodeQualifierValue(value)}`)
    .join('&');
  return `pkg:${parts.type.toLowerCase()}/${namespace}${encodeSegment(parts.name)}${version}${qualifiers ? `?${qualifiers}` : ''}`;
}

export type PackageType = 'deb' | 'rpm';

/** What a purl needs of the guest: its package type, vendor (the purl namespace) and distro qualifier. */
export interface PurlDistro {
  type?: PackageType;
  /** os-release ID: debian, ubuntu, fedora … */
  id?: string;
  versionId?: string;
}

/** deb or rpm, from the distro family when known, else from os-release (ID, ID_LIKE), else from the packages. */
export function packageType(os: { id?: string; osRelease?: Record<string, string> }, family?: string, packages: InstalledPackage[] = []): PackageType | undefined {
  if (family === 'debian') return 'deb';
  if (family === 'redhat' || family === 'suse' || family === 'photon') return 'rpm';
  const ids = [os.id, ...(os.osRelease?.ID_LIKE ?? '').split(/\s+/)].filter(Boolean).map((id) => id!.toLowerCase());
  if (ids.some((id) => id === 'debian' || id === 'ubuntu')) return 'deb';
  if (ids.some((id) => ['fedora', 'rhel', 'centos', 'suse', 'opensuse', 'photon'].includes(id))) return 'rpm';
  if (packages.some((p) => p.sourceRpm !== undefined || p.epoch !== undefined)) return 'rpm';
  return undefined;
}

/**
 * A package's purl: `pkg:deb/debian/NAME@VERSION?arch=ARCH&distro=debian-12` (dpkg's version, epoch included, as
 * the deb type says), `pkg:rpm/fedora/NAME@VERSION-RELEASE?arch=ARCH&distro=fedora-40&epoch=N` (the rpm type keeps
 * the epoch in its own qualifier, and only when it is not 0). Undefined when the package type is unknown.
 */
export function packagePurl(pkg: InstalledPackage, distro: PurlDistro): string | undefined {
  if (!distro.type) return undefined;
  const vendor = distro.id?.toLowerCase();
  const distroQualifier = vendor ? (distro.versionId ? `${vendor}-${distro.versionId}` : vendor) : undefined;
  if (distro.type === 'deb') {
    return formatPurl({ type: 'deb', namespace: vendor, name: pkg.name.toLowerCase(), version: pkg.version, qualifiers: { arch: pkg.architecture, distro: distroQualifier } });
  }
  const colon = /^(\d+):/.exec(pkg.version);
  const epoch = pkg.epoch ?? (colon ? Number(colon[1]) : undefined);
  const version = colon ? pkg.version.slice(colon[0].length) : pkg.version;
  return formatPurl({
    type: 'rpm',
    namespace: vendor,
    name: pkg.name,
    version,
    qualifiers: { arch: pkg.architecture, distro: distroQualifier, epoch: epoch ? String(epoch) : undefined },
  });
}

/** An OCI image reference split as Docker reads it: `[registry/]path[:tag][@digest]`, docker.io's defaults filled in. */
export function parseImageReference(reference: string): { registry: string; repository: string; tag?: string; digest?: string } {
  let rest = reference;
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
  }
  let tag: string | undefined;
  const colon = rest.lastIndexOf(':');
  if (colon > rest.lastIndexOf('/')) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
  }
  const slash = rest.indexOf('/');
  const first = slash >= 0 ? rest.slice(0, slash) : '';
  let registry: string;
  let repository: string;
  if (slash >= 0 && (first.includes('.') || first.includes(':') || first === 'localhost')) {
    registry = first;
    repository = rest.slice(slash + 1);
  } else {
    registry = 'docker.io';
    repository = slash >= 0 ? rest : `library/${rest}`;
  }
  return { registry, repository, tag, digest };
}

/** `pkg:oci/NAME@sha256:…?repository_url=REGISTRY/PATH&tag=TAG`: the oci type names an image by its digest. */
export function ociPurl(image: RecordedImage): string {
  const { registry, repository, tag } = parseImageReference(image.reference);
  const name = repository.slice(repository.lastIndexOf('/') + 1).toLowerCase();
  return formatPurl({ type: 'oci', name, version: image.digest, qualifiers: { repository_url: `${registry}/${repository}`, tag } });
}

// ---------------------------------------------------------------------------------------------------------------
// The model both renderings are made from.

export interface SbomPackage extends InstalledPackage {
  purl?: string;
  /** apply: whether it came with the base image or the recipe added or changed it. */
  origin?: BomPackage['origin'];
  baseVersion?: string;
}

export interface SbomContainerImage extends RecordedImage {
  purl: string;
  name: string;
  tag?: string;
}

/** Everything the CycloneDX and SPDX documents say, sorted, with nothing that varies between equal builds. */
export interface SbomModel {
  tool: { name: string; version: string };
  /** ISO 8601 in UTC, whole seconds. */
  timestamp: string;
  image: { name: string; path?: string; format?: string; sha256: string; artifacts: { name: string; format: string; sha256: string }[] };
  base?: { name: string; url?: string; format: string; sha256: string; checksumSource?: string; verified: boolean };
  recipe?: { name: string; sha256: string };
  os: { id?: string; versionId?: string; prettyName?: string };
  packageType?: PackageType;
  architecture?: string;
  kernels: Kernel[];
  packages: SbomPackage[];
  removedPackages: SbomPackage[];
  files: RecordedFile[];
  containerImages: SbomContainerImage[];
  /** The node's components (Kubernetes, containerd, runc, CNI plugins, crictl), with their golang purls. */
  components: NodeComponent[];
  units: UnitState[];
}

const compare = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);
const byPackage = (a: InstalledPackage, b: InstalledPackage) => compare(a.name, b.name) || compare(a.architecture, b.architecture) || compare(a.version, b.version);

/** SOURCE_DATE_EPOCH when set (reproducible builds), else the fallback (the BOM's createdAt), else now; whole seconds. */
export function sbomTimestamp(fallback?: string, env: NodeJS.ProcessEnv = process.env): string {
  const date = sourceDateEpoch(env) ?? (fallback ? new Date(fallback) : new Date());
  return `${date.toISOString().slice(0, 19)}Z`;
}

function withPurls(packages: (InstalledPackage | BomPackage)[], distro: PurlDistro): SbomPackage[] {
  return packages.map((p) => ({ ...p, purl: packagePurl(p, distro) })).sort(byPackage);
}

function containerImages(images: RecordedImage[]): SbomContainerImage[] {
  return [...new Map(images.map((i) => [i.reference, i])).values()]
    .map((image) => {
      const { registry, repository, tag } = parseImageReference(image.reference);
      return { ...image, name: `${registry}/${repository}`, tag, purl: ociPurl(image) };
    })
    .sort((a, b) => compare(a.reference, b.reference) || compare(a.digest, b.digest));
}

/** The model of a build: the native BOM apply writes. */
export function modelFromBom(bom: Bom, options: { env?: NodeJS.ProcessEnv } = {}): SbomModel {
  const type = packageType(bom.os, undefined, bom.packages);
  const distro: PurlDistro = { type, id: bom.os.id, versionId: bom.os.versionId };
  return {
    tool: bom.tool,
    timestamp: sbomTimestamp(bom.createdAt, options.env),
    image: {
      name: basename(bom.output.path),
      path: bom.output.path,
      format: bom.output.format,
      sha256: bom.output.sha256,
      artifacts: bom.artifacts.map((a) => ({ name: basename(a.path), format: a.format, sha256: a.sha256 })),
    },
    base: {
      name: basename(bom.input.url ? new URL(bom.input.url).pathname : bom.input.path) || bom.input.path,
      url: bom.input.url,
      format: bom.input.format,
      sha256: bom.input.sha256,
      checksumSource: bom.input.checksumSource,
      verified: bom.input.verified,
    },
    recipe: { name: bom.recipe.name, sha256: bom.recipe.sha256 },
    os: { id: bom.os.id, versionId: bom.os.versionId, prettyName: bom.os.prettyName },
    packageType: type,
    architecture: bom.architecture,
    kernels: [...bom.kernels].sort((a, b) => compare(a.version, b.version)),
    packages: withPurls(bom.packages, distro),
    removedPackages: withPurls(bom.removedPackages, distro),
    // A path written twice holds what was written last.
    files: [...new Map(bom.files.map((f) => [f.path, f])).values()].sort((a, b) => compare(a.path, b.path)),
    containerImages: containerImages(bom.containerImages),
    components: [...(bom.components ?? [])].sort((a, b) => compare(a.name, b.name)),
    units: [...bom.unitStates].sort((a, b) => compare(a.unit, b.unit)),
  };
}

/** The model of any image, built here or not: what inspect reads from its databases. */
export function modelFromInventory(
  image: { path: string; format?: string; sha256: string },
  inventory: Inventory,
  tool: { name: string; version: string },
  options: { env?: NodeJS.ProcessEnv; createdAt?: string } = {},
): SbomModel {
  const type = packageType(inventory.os, inventory.family, inventory.packages);
  const distro: PurlDistro = { type, id: inventory.os.id, versionId: inventory.os.versionId };
  return {
    tool,
    timestamp: sbomTimestamp(options.createdAt, options.env),
    image: { name: basename(image.path), path: image.path, format: image.format, sha256: image.sha256, artifacts: [] },
    os: { id: inventory.os.id, versionId: inventory.os.versionId, prettyName: inventory.os.prettyName },
    packageType: type,
    architecture: inventory.architecture,
    kernels: [...inventory.kernels].sort((a, b) => compare(a.version, b.version)),
    packages: withPurls(inventory.packages, distro),
    removedPackages: [],
    files: [],
    containerImages: [],
    components: [],
    units: [...inventory.units].sort((a, b) => compare(a.unit, b.unit)),
  };
}

/** A UUID (version 5 layout, variant RFC 4122) derived from text: stable for equal documents. */
export function stableUuid(text: string): string {
  const hex = createHash('sha256').update(text).digest('hex').slice(0, 32).split('');
  hex[12] = '5';
  hex[16] = ((parseInt(hex[16], 16) & 0x3) | 0x8).toString(16);
  const h = hex.join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20, 32)}`;
}

export { compare as compareStrings };
