import { createHash } from 'node:crypto';
import type { Bom } from './collect.js';
import { compareStrings, modelFromBom, stableUuid, type SbomModel, type SbomPackage } from './purl.js';

/*
 * SPDX 2.3 JSON (https://spdx.github.io/spdx-spec/v2.3/) of the model: the document DESCRIBES the image, the
 * image is a DESCENDANT_OF its base image and CONTAINS every package, file and container image. SPDXIDs are
 * derived from names, so equal builds give equal documents.
 */

type Checksum = { algorithm: 'SHA256'; checksumValue: string };
type ExternalRef = { referenceCategory: 'PACKAGE-MANAGER' | 'OTHER'; referenceType: string; referenceLocator: string };

export interface SpdxPackage {
  SPDXID: string;
  name: string;
  versionInfo?: string;
  packageFileName?: string;
  supplier?: string;
  downloadLocation: string;
  filesAnalyzed: false;
  checksums?: Checksum[];
  sourceInfo?: string;
  licenseConcluded: 'NOASSERTION';
  licenseDeclared: 'NOASSERTION';
  copyrightText: 'NOASSERTION';
  primaryPackagePurpose?: 'OPERATING-SYSTEM' | 'LIBRARY' | 'CONTAINER' | 'FILE' | 'APPLICATION';
  comment?: string;
  externalRefs?: ExternalRef[];
}

export interface SpdxFile {
  SPDXID: string;
  fileName: string;
  checksums: Checksum[];
  licenseConcluded: 'NOASSERTION';
  copyrightText: 'NOASSERTION';
  comment?: string;
}

export interface SpdxRelationship {
  spdxElementId: string;
  relationshipType: 'DESCRIBES' | 'DESCENDANT_OF' | 'CONTAINS';
  relatedSpdxElement: string;
}

export interface SpdxDocument {
  spdxVersion: 'SPDX-2.3';
  dataLicense: 'CC0-1.0';
  SPDXID: 'SPDXRef-DOCUMENT';
  name: string;
  documentNamespace: string;
  creationInfo: { created: string; creators: string[]; comment?: string };
  comment?: string;
  packages: SpdxPackage[];
  files?: SpdxFile[];
  relationships: SpdxRelationship[];
}

const NOASSERTION = 'NOASSERTION' as const;
const checksums = (hex: string | undefined): Checksum[] => (hex && /^[0-9a-f]{64}$/i.test(hex) ? [{ algorithm: 'SHA256', checksumValue: hex.toLowerCase() }] : []);
const isUrl = (text: string | undefined): text is string => !!text && /^https?:\/\//i.test(text);

/** Hands out SPDXIDs (`SPDXRef-` and [A-Za-z0-9.-]) derived from names; a clash gets a suffix from the full name. */
function idAllocator() {
  const used = new Set<string>(['SPDXRef-DOCUMENT']);
  // The next number to try per name: a package listed 20,000 times (a crafted status file) would otherwise count up
  // from 2 for each copy, in quadratic time.
  const nextNumber = new Map<string, number>();
  return (kind: string, ...parts: (string | undefined)[]): string => {
    const key = parts.filter(Boolean).join('-');
    const clean = key.replace(/[^A-Za-z0-9.-]+/g, '-').replace(/^-+|-+$/g, '') || 'x';
    let id = `SPDXRef-${kind}-${clean}`;
    if (used.has(id)) id = `${id}-${createHash('sha256').update(`${kind}\0${key}`).digest('hex').slice(0, 8)}`;
    if (used.has(id)) {
      const base = `SPDXRef-${kind}-${clean}`;
      let n = nextNumber.get(base) ?? 2;
      while (used.has(`${base}-${n}`)) n++;
      id = `${base}-${n}`;
      nextNumber.set(base, n + 1);
    }
    used.add(id);
    return id;
  };
}

function originComment(p: SbomPackage): string | undefined {
  if (p.origin === 'base') return 'origin: base (in the base image)';
  if (p.origin === 'added') return 'origin: added (installed by the recipe)';
  if (p.origin === 'changed') return `origin: changed (the recipe changed it; the base image had ${p.baseVersion ?? 'another version'})`;
  return undefined;
}

/** Renders the model as an SPDX 2.3 JSON document. */
export function renderSpdx(model: SbomModel): SpdxDocument {
  const id = idAllocator();
  const tool = `Tool: ${model.tool.name}-${model.tool.version}`;
  const imageId = id('Image', model.image.name);
  const packages: SpdxPackage[] = [];
  const files: SpdxFile[] = [];
  const relationships: SpdxRelationship[] = [{ spdxElementId: 'SPDXRef-DOCUMENT', relationshipType: 'DESCRIBES', relatedSpdxElement: imageId }];
  const contains = (target: string) => relationships.push({ spdxElementId: imageId, relationshipType: 'CONTAINS', relatedSpdxElement: target });

  const imageComment = [
    model.image.format && `format: ${model.image.format}`,
    model.os.prettyName && `os: ${model.os.prettyName}`,
    model.architecture && `architecture: ${model.architecture}`,
    model.kernels.length && `kernels: ${model.kernels.map((k) => k.version).join(', ')}`,
    model.recipe && `recipe: ${model.recipe.name} (sha256 ${model.recipe.sha256})`,
    ...model.image.artifacts.slice(1).map((a) => `also written as ${a.name} (${a.format}, sha256 ${a.sha256})`),
    model.units.length && `units: ${model.units.map((u) => (u.state === 'masked' ? `${u.unit} (masked)` : u.unit)).join(', ')}`,
    model.removedPackages.length && `removed by the recipe: ${model.removedPackages.map((p) => `${p.name} ${p.version} (${p.architecture})`).join(', ')}`,
  ].filter(Boolean);
  packages.push({
    SPDXID: imageId,
    name: model.image.name,
    ...(model.os.versionId ? { versionInfo: model.os.versionId } : {}),
    packageFileName: model.image.name,
    downloadLocation: NOASSERTION,
    filesAnalyzed: false,
    checksums: checksums(model.image.sha256),
    licenseConcluded: NOASSERTION,
    licenseDeclared: NOASSERTION,
    copyrightText: NOASSERTION,
    primaryPackagePurpose: 'OPERATING-SYSTEM',
    ...(imageComment.length ? { comment: imageComment.join('; ') } : {}),
  });

  if (model.base) {
    const base = model.base;
    const baseId = id('BaseImage', base.name);
    packages.push({
      SPDXID: baseId,
      name: base.name,
      packageFileName: base.name,
      downloadLocation: isUrl(base.url) ? base.url : NOASSERTION,
      filesAnalyzed: false,
      checksums: checksums(base.sha256),
      licenseConcluded: NOASSERTION,
      licenseDeclared: NOASSERTION,
      copyrightText: NOASSERTION,
      primaryPackagePurpose: 'OPERATING-SYSTEM',
      comment: `base image (${base.format}); ${base.verified ? `verified by ${base.checksumSource ?? 'its checksum'}` : 'not verified against a published checksum'}`,
    });
    relationships.push({ spdxElementId: imageId, relationshipType: 'DESCENDANT_OF', relatedSpdxElement: baseId });
  }

  for (const p of model.packages) {
    const pkgId = id('Package', model.packageType, p.name, p.architecture);
    const source = p.sourceRpm ?? p.source;
    const comment = originComment(p);
    packages.push({
      SPDXID: pkgId,
      name: p.name,
      versionInfo: p.version,
      ...(p.vendor ? { supplier: `Organization: ${p.vendor}` } : {}),
      downloadLocation: NOASSERTION,
      filesAnalyzed: false,
      ...(source ? { sourceInfo: `built from the source package ${source}` } : {}),
      licenseConcluded: NOASSERTION,
      licenseDeclared: NOASSERTION,
      copyrightText: NOASSERTION,
      ...(comment ? { comment } : {}),
      ...(p.purl ? { externalRefs: [{ referenceCategory: 'PACKAGE-MANAGER', referenceType: 'purl', referenceLocator: p.purl }] } : {}),
    });
    contains(pkgId);
  }

  for (const file of model.files) {
    if (file.kind === 'download' && isUrl(file.source)) {
      // A download is a package in SPDX's terms: it has a download location.
      const fileId = id('Download', file.path);
      packages.push({
        SPDXID: fileId,
        name: file.path,
        packageFileName: file.path,
        downloadLocation: file.source,
        filesAnalyzed: false,
        checksums: checksums(file.sha256),
        licenseConcluded: NOASSERTION,
        licenseDeclared: NOASSERTION,
        copyrightText: NOASSERTION,
        primaryPackagePurpose: 'FILE',
        comment: `downloaded by the recipe to ${file.path}`,
      });
      contains(fileId);
    } else {
      const fileId = id('File', file.path);
      files.push({
        SPDXID: fileId,
        fileName: file.path,
        checksums: checksums(file.sha256),
        licenseConcluded: NOASSERTION,
        copyrightText: NOASSERTION,
        comment: file.kind === 'copy' ? `copied in by the recipe${file.source ? ` from ${file.source}` : ''}` : `${file.kind} written by the recipe${file.source ? ` (from ${file.source})` : ''}`,
      });
      contains(fileId);
    }
  }

  for (const container of model.containerImages) {
    const containerId = id('Container', container.name, container.tag);
    const digest = /^sha256:([0-9a-f]{64})$/i.exec(container.digest)?.[1];
    packages.push({
      SPDXID: containerId,
      name: container.name,
      versionInfo: container.tag ?? container.digest,
      downloadLocation: NOASSERTION,
      filesAnalyzed: false,
      checksums: checksums(digest),
      licenseConcluded: NOASSERTION,
      licenseDeclared: NOASSERTION,
      copyrightText: NOASSERTION,
      primaryPackagePurpose: 'CONTAINER',
      comment: `container image ${container.reference} (${container.digest}) imported by the recipe`,
      externalRefs: [{ referenceCategory: 'PACKAGE-MANAGER', referenceType: 'purl', referenceLocator: container.purl }],
    });
    contains(containerId);
  }

  for (const component of model.components) {
    const componentId = id('Component', component.name, component.version);
    packages.push({
      SPDXID: componentId,
      name: component.name,
      versionInfo: component.version,
      downloadLocation: NOASSERTION,
      filesAnalyzed: false,
      licenseConcluded: NOASSERTION,
      licenseDeclared: NOASSERTION,
      copyrightText: NOASSERTION,
      primaryPackagePurpose: 'APPLICATION',
      comment: `node component, version read from ${component.source}`,
      externalRefs: [{ referenceCategory: 'PACKAGE-MANAGER', referenceType: 'purl', referenceLocator: component.purl }],
    });
    contains(componentId);
  }

  for (const p of packages) if (p.checksums?.length === 0) delete p.checksums;
  const order = (r: SpdxRelationship) => ['DESCRIBES', 'DESCENDANT_OF', 'CONTAINS'].indexOf(r.relationshipType);
  relationships.sort((a, b) => order(a) - order(b) || compareStrings(a.spdxElementId, b.spdxElementId) || compareStrings(a.relatedSpdxElement, b.relatedSpdxElement));
  const body = {
    name: model.image.name,
    creationInfo: { created: model.timestamp, creators: [tool] },
    packages,
    ...(files.length ? { files } : {}),
    relationships,
  };
  return {
    spdxVersion: 'SPDX-2.3',
    dataLicense: 'CC0-1.0',
    SPDXID: 'SPDXRef-DOCUMENT',
    name: body.name,
    documentNamespace: `https://spdx.org/spdxdocs/${encodeURIComponent(model.image.name)}-${stableUuid(JSON.stringify(body))}`,
    creationInfo: body.creationInfo,
    packages: body.packages,
    ...(body.files ? { files: body.files } : {}),
    relationships: body.relationships,
  };
}

export function spdxFromBom(bom: Bom, options: { env?: NodeJS.ProcessEnv } = {}): SpdxDocument {
  return renderSpdx(modelFromBom(bom, options));
}
