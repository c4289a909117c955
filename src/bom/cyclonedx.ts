import { Enums, Models, Serialize, Spec } from '@cyclonedx/cyclonedx-library';
import type { Bom } from './collect.js';
import { compareStrings, modelFromBom, stableUuid, type SbomModel, type SbomPackage } from './purl.js';

/*
 * CycloneDX 1.6 JSON (https://cyclonedx.org/docs/1.6/json/) of the model, built with @cyclonedx/cyclonedx-library's
 * model and written by its JSON serializer: the image is metadata.component, the base image, every package, every
 * file the recipe brought in and every container image are components, and the image depends on each of them.
 * Deterministic: sorted here (the serializer keeps that order), bom-refs derived from names, no random serial number.
 */

type Property = { name: string; value: string };
type Hash = { alg: 'SHA-256'; content: string };
type ExternalReference = { type: string; url: string; comment?: string };

/** The shape of the document the serializer writes, as far as imagebuilder fills it in. */
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

const serializer = new Serialize.JsonSerializer(new Serialize.JSON.Normalize.Factory(Spec.Spec1dot6));
/** In the order given: the model is sorted already, and the image's dependency must come first. */
const serialize = (bom: Models.Bom) => serializer.serialize(bom, { sortLists: false });

const prop = (name: string, value: string | undefined): Models.Property[] => (value === undefined || value === '' ? [] : [new Models.Property(`imagebuilder:${name}`, value)]);
const properties = (list: Models.Property[]) => new Models.PropertyRepository(list);
const sha256 = (hex: string | undefined) => new Models.HashDictionary(hex && /^[0-9a-f]{64}$/i.test(hex) ? [[Enums.HashAlgorithm['SHA-256'], hex.toLowerCase()]] : []);
const distribution = (url: string | undefined) =>
  new Models.ExternalReferenceRepository(url && /^https?:\/\//i.test(url) ? [new Models.ExternalReference(url, Enums.ExternalReferenceType.Distribution)] : []);

function packageComponent(p: SbomPackage, removed = false): Models.Component {
  return new Models.Component(Enums.ComponentType.Library, p.name, {
    bomRef: `${removed ? 'removed:' : ''}${p.purl ?? `package:${p.name}@${p.version}?arch=${p.architecture}`}`,
    version: p.version,
    publisher: p.vendor,
    purl: p.purl,
    properties: properties([
      ...prop('package:architecture', p.architecture),
      ...prop('package:source', p.source),
      ...prop('package:sourceRpm', p.sourceRpm),
      ...prop('package:epoch', p.epoch !== undefined ? String(p.epoch) : undefined),
      ...prop('package:origin', removed ? 'removed' : p.origin),
      ...prop('package:baseVersion', p.baseVersion),
    ]),
  });
}

/** Renders the model as a CycloneDX 1.6 JSON document. */
export function renderCycloneDx(model: SbomModel): CycloneDxDocument {
  const image = new Models.Component(Enums.ComponentType.OperatingSystem, model.image.name, {
    bomRef: `image:${model.image.name}`,
    version: model.os.versionId,
    description: `${model.image.format === 'tar' ? 'root filesystem tarball' : `disk image${model.image.format ? ` (${model.image.format})` : ''}`}${model.os.prettyName ? ` of ${model.os.prettyName}` : ''}`,
    hashes: sha256(model.image.sha256),
    properties: properties([
      ...prop('image:format', model.image.format),
      ...model.image.artifacts.slice(1).map((a) => new Models.Property('imagebuilder:image:artifact', `${a.name} ${a.format} sha256:${a.sha256}`)),
      ...prop('os:id', model.os.id),
      ...prop('os:versionId', model.os.versionId),
      ...prop('os:prettyName', model.os.prettyName),
      ...prop('architecture', model.architecture),
      ...model.kernels.map((k) => new Models.Property('imagebuilder:kernel', k.version)),
      ...model.units.map((u) => new Models.Property(`imagebuilder:unit:${u.state}`, u.unit)),
      ...prop('recipe:name', model.recipe?.name),
      ...prop('recipe:sha256', model.recipe?.sha256),
    ]),
  });

  const components: Models.Component[] = [];
  if (model.base) {
    const base = model.base;
    components.push(
      new Models.Component(Enums.ComponentType.OperatingSystem, base.name, {
        bomRef: `base-image:${base.name}`,
        description: `base disk image (${base.format})`,
        hashes: sha256(base.sha256),
        externalReferences: distribution(base.url),
        properties: properties([
          ...prop('image:role', 'base'),
          ...prop('image:format', base.format),
          ...prop('image:verified', String(base.verified)),
          ...prop('image:checksumSource', base.checksumSource),
        ]),
      }),
    );
  }
  components.push(...model.packages.map((p) => packageComponent(p)));
  for (const file of model.files) {
    components.push(
      new Models.Component(Enums.ComponentType.File, file.path, {
        bomRef: `file:${file.path}`,
        hashes: sha256(file.sha256),
        externalReferences: distribution(file.kind === 'download' ? file.source : undefined),
        properties: properties([...prop('file:kind', file.kind), ...prop('file:source', file.source)]),
      }),
    );
  }
  for (const container of model.containerImages) {
    components.push(
      new Models.Component(Enums.ComponentType.Container, container.name, {
        bomRef: container.purl,
        version: container.tag,
        hashes: sha256(/^sha256:([0-9a-f]{64})$/i.exec(container.digest)?.[1]),
        purl: container.purl,
        properties: properties([...prop('container:reference', container.reference), ...prop('container:digest', container.digest)]),
      }),
    );
  }

  for (const component of model.components) {
    components.push(
      new Models.Component(Enums.ComponentType.Application, component.name, {
        bomRef: `component:${component.name}`,
        version: component.version,
        purl: component.purl,
        properties: properties([...prop('component:source', component.source)]),
      }),
    );
  }

  // A bom-ref names one component: the serializer would rename a repeat at random, and the output would vary.
  const byRef = new Map<string, Models.Component>();
  for (const component of components) if (!byRef.has(component.bomRef.value!)) byRef.set(component.bomRef.value!, component);
  image.dependencies = new Models.BomRefRepository([...byRef.keys()].sort(compareStrings).map((ref) => byRef.get(ref)!.bomRef));

  const bom = new Models.Bom({
    metadata: new Models.Metadata({
      timestamp: new Date(model.timestamp),
      tools: new Models.Tools({ components: new Models.ComponentRepository([new Models.Component(Enums.ComponentType.Application, model.tool.name, { version: model.tool.version })]) }),
      component: image,
      properties: properties(model.removedPackages.map((p) => new Models.Property('imagebuilder:package:removed', p.purl ?? `${p.name} ${p.version} ${p.architecture}`))),
    }),
    components: new Models.ComponentRepository(byRef.values()),
  });
  bom.serialNumber = `urn:uuid:${stableUuid(serialize(bom))}`;
  const document = JSON.parse(serialize(bom)) as CycloneDxDocument;
  // Date#toISOString, which the serializer calls, always writes milliseconds: the model's time is whole seconds.
  document.metadata.timestamp = model.timestamp;
  return document;
}

export function cycloneDxFromBom(bom: Bom, options: { env?: NodeJS.ProcessEnv } = {}): CycloneDxDocument {
  return renderCycloneDx(modelFromBom(bom, options));
}
