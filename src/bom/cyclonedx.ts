import type { Bom } from './collect.js';
import { compareStrings, modelFromBom, stableUuid, type SbomModel, type SbomPackage } from './purl.js';

/*
 * CycloneDX 1.6 JSON (https://cyclonedx.org/docs/1.6/json/) of the model: the image is metadata.component, the
 * base image, every package, every file the recipe brought in and every container image are components, and the
 * image depends on each of them. Deterministic: sorted, bom-refs derived from names, no random serial number.
 */

type Property = { name: string; value: string };
type Hash = { alg: 'SHA-256'; content: string };
type ExternalReference = { type: string; url: string; comment?: string };

export interface CdxComponent {
  'bom-ref': string;
  type: 'application' | 'library' | 'operating-system' | 'file' | 'container' | 'data';
  name: string;
  version?: string;
  description?: string;
  publisher?: string;
  hashes?: Hash[];
  purl?: string;
  externalReferences?: ExternalReference[];
  properties?: Property[];
}

export interface CycloneDxDocument {
  $schema: string;
  bomFormat: 'CycloneDX';
  specVersion: '1.6';
  serialNumber: string;
  version: 1;
  metadata: {
    timestamp: string;
    tools: { components: { type: 'application'; name: string; version: string }[] };
    component: CdxComponent;
    properties?: Property[];
  };
  components: CdxComponent[];
  dependencies: { ref: string; dependsOn?: string[] }[];
}

const prop = (name: string, value: string | undefined): Property[] => (value === undefined || value === '' ? [] : [{ name: `imagebuilder:${name}`, value }]);
const sha256 = (hex: string | undefined): Hash[] => (hex && /^[0-9a-f]{64}$/i.test(hex) ? [{ alg: 'SHA-256', content: hex.toLowerCase() }] : []);
const isUrl = (text: string | undefined): text is string => !!text && /^https?:\/\//i.test(text);

function packageComponent(p: SbomPackage, removed = false): CdxComponent {
  const properties = [
    ...prop('package:architecture', p.architecture),
    ...prop('package:source', p.source),
    ...prop('package:sourceRpm', p.sourceRpm),
    ...prop('package:epoch', p.epoch !== undefined ? String(p.epoch) : undefined),
    ...prop('package:origin', removed ? 'removed' : p.origin),
    ...prop('package:baseVersion', p.baseVersion),
  ];
  return {
    'bom-ref': `${removed ? 'removed:' : ''}${p.purl ?? `package:${p.name}@${p.version}?arch=${p.architecture}`}`,
    type: 'library',
    name: p.name,
    version: p.version,
    ...(p.vendor ? { publisher: p.vendor } : {}),
    ...(p.purl ? { purl: p.purl } : {}),
    ...(properties.length ? { properties } : {}),
  };
}

/** Renders the model as a CycloneDX 1.6 JSON document. */
export function renderCycloneDx(model: SbomModel): CycloneDxDocument {
  const imageRef = `image:${model.image.name}`;
  const image: CdxComponent = {
    'bom-ref': imageRef,
    type: 'operating-system',
    name: model.image.name,
    ...(model.os.versionId ? { version: model.os.versionId } : {}),
    description: `${model.image.format === 'tar' ? 'root filesystem tarball' : `disk image${model.image.format ? ` (${model.image.format})` : ''}`}${model.os.prettyName ? ` of ${model.os.prettyName}` : ''}`,
    hashes: sha256(model.image.sha256),
    properties: [
      ...prop('image:format', model.image.format),
      ...model.image.artifacts.slice(1).map((a) => ({ name: 'imagebuilder:image:artifact', value: `${a.name} ${a.format} sha256:${a.sha256}` })),
      ...prop('os:id', model.os.id),
      ...prop('os:versionId', model.os.versionId),
      ...prop('os:prettyName', model.os.prettyName),
      ...prop('architecture', model.architecture),
      ...model.kernels.map((k) => ({ name: 'imagebuilder:kernel', value: k.version })),
      ...model.units.map((u) => ({ name: `imagebuilder:unit:${u.state}`, value: u.unit })),
      ...prop('recipe:name', model.recipe?.name),
      ...prop('recipe:sha256', model.recipe?.sha256),
    ],
  };

  const components: CdxComponent[] = [];
  if (model.base) {
    const base = model.base;
    components.push({
      'bom-ref': `base-image:${base.name}`,
      type: 'operating-system',
      name: base.name,
      description: `base disk image (${base.format})`,
      hashes: sha256(base.sha256),
      ...(isUrl(base.url) ? { externalReferences: [{ type: 'distribution', url: base.url }] } : {}),
      properties: [
        ...prop('image:role', 'base'),
        ...prop('image:format', base.format),
        ...prop('image:verified', String(base.verified)),
        ...prop('image:checksumSource', base.checksumSource),
      ],
    });
  }
  components.push(...model.packages.map((p) => packageComponent(p)));
  for (const file of model.files) {
    components.push({
      'bom-ref': `file:${file.path}`,
      type: 'file',
      name: file.path,
      hashes: sha256(file.sha256),
      ...(file.kind === 'download' && isUrl(file.source) ? { externalReferences: [{ type: 'distribution', url: file.source }] } : {}),
      properties: [...prop('file:kind', file.kind), ...prop('file:source', file.source)],
    });
  }
  for (const container of model.containerImages) {
    const digest = /^sha256:([0-9a-f]{64})$/i.exec(container.digest)?.[1];
    components.push({
      'bom-ref': container.purl,
      type: 'container',
      name: container.name,
      ...(container.tag ? { version: container.tag } : {}),
      hashes: sha256(digest),
      purl: container.purl,
      properties: [...prop('container:reference', container.reference), ...prop('container:digest', container.digest)],
    });
  }

  const refs = components.map((c) => c['bom-ref']);
  const removed = model.removedPackages.map((p) => ({ name: 'imagebuilder:package:removed', value: p.purl ?? `${p.name} ${p.version} ${p.architecture}` }));
  const body = {
    metadata: {
      timestamp: model.timestamp,
      tools: { components: [{ type: 'application' as const, name: model.tool.name, version: model.tool.version }] },
      component: image,
      ...(removed.length ? { properties: removed } : {}),
    },
    components,
    dependencies: [{ ref: imageRef, dependsOn: [...new Set(refs)].sort(compareStrings) }, ...[...new Set(refs)].sort(compareStrings).map((ref) => ({ ref }))],
  };
  return {
    $schema: 'http://cyclonedx.org/schema/bom-1.6.schema.json',
    bomFormat: 'CycloneDX',
    specVersion: '1.6',
    serialNumber: `urn:uuid:${stableUuid(JSON.stringify(body))}`,
    version: 1,
    ...body,
  };
}

export function cycloneDxFromBom(bom: Bom, options: { env?: NodeJS.ProcessEnv } = {}): CycloneDxDocument {
  return renderCycloneDx(modelFromBom(bom, options));
}
