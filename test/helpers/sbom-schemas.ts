import { readFileSync } from 'node:fs';
import type { Ajv, ValidateFunction } from 'ajv';
import { formatsAjv } from './ajv.js';
import { REPO } from './host.js';

/*
 * Validators for the standard SBOM renderings.
 *
 * CycloneDX 1.6: the published JSON schema (draft-07) as @cyclonedx/cyclonedx-library ships it
 * (res/schema/bom-1.6.SNAPSHOT.schema.json, with the spdx and jsf schemas it $refs), validated by ajv with
 * ajv-formats' date-time, uri and email formats.
 *
 * SPDX 2.3: no npm or Debian package ships the official spdx-schema.json, so this is a schema of our own, written
 * from the SPDX 2.3 specification's required fields and value forms (document, creationInfo, packages, files,
 * relationships, annotations, checksums, external references): required properties, SPDXID and date patterns,
 * dataLicense CC0-1.0, the enumerations, no unknown properties. What a JSON schema cannot say (SPDXIDs unique,
 * every relationship naming an element of the document, DESCRIBES present) is checked in code below.
 */

const CDX_DIR = `${REPO}/node_modules/@cyclonedx/cyclonedx-library/res/schema`;

function ajv(): Ajv {
  const instance = formatsAjv();
  // Formats CycloneDX uses that ajv-formats lacks: IRIs and internationalized e-mail addresses (no ASCII-only check).
  instance.addFormat('iri-reference', (text: string) => !/\s/.test(text));
  instance.addFormat('idn-email', (text: string) => /^[^\s@]+@[^\s@]+$/.test(text));
  return instance;
}

let cdx: ValidateFunction | undefined;
function cycloneDxValidator(): ValidateFunction {
  if (cdx) return cdx;
  const load = (name: string) => JSON.parse(readFileSync(`${CDX_DIR}/${name}`, 'utf8')) as Record<string, unknown>;
  const instance = ajv();
  // The bom schema $refs its neighbours by their SNAPSHOT file names: register them under those.
  instance.addSchema({ ...load('spdx.SNAPSHOT.schema.json'), $id: 'http://cyclonedx.org/schema/spdx.SNAPSHOT.schema.json' });
  instance.addSchema({ ...load('jsf-0.82.SNAPSHOT.schema.json'), $id: 'http://cyclonedx.org/schema/jsf-0.82.SNAPSHOT.schema.json' });
  cdx = instance.compile(load('bom-1.6.SNAPSHOT.schema.json'));
  return cdx;
}

const DATE = '^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T(([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]|23:59:60)Z$';
const SPDXID = '^SPDXRef-[A-Za-z0-9.-]+$';
const CHECKSUM_ALGORITHMS = ['SHA1', 'SHA224', 'SHA256', 'SHA384', 'SHA512', 'SHA3-256', 'SHA3-384', 'SHA3-512', 'BLAKE2b-256', 'BLAKE2b-384', 'BLAKE2b-512', 'BLAKE3', 'MD2', 'MD4', 'MD5', 'MD6', 'ADLER32'];
const RELATIONSHIP_TYPES = [
  'DESCRIBES', 'DESCRIBED_BY', 'CONTAINS', 'CONTAINED_BY', 'DEPENDS_ON', 'DEPENDENCY_OF', 'DEPENDENCY_MANIFEST_OF', 'BUILD_DEPENDENCY_OF',
  'DEV_DEPENDENCY_OF', 'OPTIONAL_DEPENDENCY_OF', 'PROVIDED_DEPENDENCY_OF', 'TEST_DEPENDENCY_OF', 'RUNTIME_DEPENDENCY_OF', 'EXAMPLE_OF',
  'GENERATES', 'GENERATED_FROM', 'ANCESTOR_OF', 'DESCENDANT_OF', 'VARIANT_OF', 'DISTRIBUTION_ARTIFACT', 'PATCH_FOR', 'PATCH_APPLIED',
  'COPY_OF', 'FILE_ADDED', 'FILE_DELETED', 'FILE_MODIFIED', 'EXPANDED_FROM_ARCHIVE', 'DYNAMIC_LINK', 'STATIC_LINK', 'DATA_FILE_OF',
  'TEST_CASE_OF', 'BUILD_TOOL_OF', 'DEV_TOOL_OF', 'TEST_OF', 'TEST_TOOL_OF', 'DOCUMENTATION_OF', 'OPTIONAL_COMPONENT_OF', 'METAFILE_OF',
  'PACKAGE_OF', 'AMENDS', 'PREREQUISITE_FOR', 'HAS_PREREQUISITE', 'REQUIREMENT_DESCRIPTION_FOR', 'SPECIFICATION_FOR', 'OTHER',
];
const checksum = {
  type: 'object',
  required: ['algorithm', 'checksumValue'],
  additionalProperties: false,
  properties: { algorithm: { enum: CHECKSUM_ALGORITHMS }, checksumValue: { type: 'string', pattern: '^[0-9a-fA-F]+$' } },
};
const annotation = {
  type: 'object',
  required: ['annotationDate', 'annotationType', 'annotator', 'comment'],
  additionalProperties: false,
  properties: { annotationDate: { type: 'string', pattern: DATE }, annotationType: { enum: ['OTHER', 'REVIEW'] }, annotator: { type: 'string' }, comment: { type: 'string' } },
};
const strings = { type: 'array', items: { type: 'string' } };

/** SPDX 2.3 JSON, as the specification describes it (our own schema: see above). */
export const SPDX_23_SCHEMA = {
  $schema: 'http://json-schema.org/draft-07/schema#',
  title: 'SPDX 2.3 document (structural checks written from the specification)',
  type: 'object',
  required: ['spdxVersion', 'dataLicense', 'SPDXID', 'name', 'documentNamespace', 'creationInfo'],
  additionalProperties: false,
  properties: {
    $schema: { type: 'string' },
    spdxVersion: { const: 'SPDX-2.3' },
    dataLicense: { const: 'CC0-1.0' },
    SPDXID: { const: 'SPDXRef-DOCUMENT' },
    name: { type: 'string', minLength: 1 },
    // An absolute URI, unique to this document, without a fragment.
    documentNamespace: { type: 'string', pattern: '^[A-Za-z][A-Za-z0-9+.-]*:[^#\\s]+$' },
    comment: { type: 'string' },
    documentDescribes: strings,
    externalDocumentRefs: {
      type: 'array',
      items: {
        type: 'object',
        required: ['externalDocumentId', 'spdxDocument', 'checksum'],
        additionalProperties: false,
        properties: { externalDocumentId: { type: 'string', pattern: '^DocumentRef-[A-Za-z0-9.-]+$' }, spdxDocument: { type: 'string' }, checksum },
      },
    },
    creationInfo: {
      type: 'object',
      required: ['created', 'creators'],
      additionalProperties: false,
      properties: {
        created: { type: 'string', pattern: DATE },
        creators: { type: 'array', minItems: 1, items: { type: 'string', pattern: '^(Person|Organization|Tool): .+' } },
        licenseListVersion: { type: 'string', pattern: '^[0-9]+\\.[0-9]+$' },
        comment: { type: 'string' },
      },
    },
    annotations: { type: 'array', items: annotation },
    packages: {
      type: 'array',
      items: {
        type: 'object',
        required: ['SPDXID', 'name', 'downloadLocation'],
        additionalProperties: false,
        properties: {
          SPDXID: { type: 'string', pattern: SPDXID },
          name: { type: 'string', minLength: 1 },
          versionInfo: { type: 'string' },
          packageFileName: { type: 'string' },
          supplier: { type: 'string', pattern: '^(NOASSERTION|(Person|Organization): .+)$' },
          originator: { type: 'string', pattern: '^(NOASSERTION|(Person|Organization): .+)$' },
          downloadLocation: { type: 'string', pattern: '^(NONE|NOASSERTION|[A-Za-z][A-Za-z0-9+.-]*:\\S+)$' },
          filesAnalyzed: { type: 'boolean' },
          packageVerificationCode: {
            type: 'object',
            required: ['packageVerificationCodeValue'],
            additionalProperties: false,
            properties: { packageVerificationCodeValue: { type: 'string' }, packageVerificationCodeExcludedFiles: strings },
          },
          checksums: { type: 'array', items: checksum },
          homepage: { type: 'string' },
          sourceInfo: { type: 'string' },
          licenseConcluded: { type: 'string' },
          licenseInfoFromFiles: strings,
          licenseDeclared: { type: 'string' },
          licenseComments: { type: 'string' },
          copyrightText: { type: 'string' },
          summary: { type: 'string' },
          description: { type: 'string' },
          comment: { type: 'string' },
          externalRefs: {
            type: 'array',
            items: {
              type: 'object',
              required: ['referenceCategory', 'referenceType', 'referenceLocator'],
              additionalProperties: false,
              properties: {
                referenceCategory: { enum: ['SECURITY', 'PACKAGE-MANAGER', 'PACKAGE_MANAGER', 'PERSISTENT-ID', 'PERSISTENT_ID', 'OTHER'] },
                referenceType: { type: 'string', minLength: 1 },
                referenceLocator: { type: 'string', pattern: '^\\S+$' },
                comment: { type: 'string' },
              },
            },
          },
          attributionTexts: strings,
          primaryPackagePurpose: { enum: ['APPLICATION', 'FRAMEWORK', 'LIBRARY', 'CONTAINER', 'OPERATING-SYSTEM', 'DEVICE', 'FIRMWARE', 'SOURCE', 'ARCHIVE', 'FILE', 'INSTALL', 'OTHER'] },
          releaseDate: { type: 'string', pattern: DATE },
          builtDate: { type: 'string', pattern: DATE },
          validUntilDate: { type: 'string', pattern: DATE },
          annotations: { type: 'array', items: annotation },
          hasFiles: strings,
        },
        // filesAnalyzed false: no verification code (the package lists no files).
        if: { properties: { filesAnalyzed: { const: false } }, required: ['filesAnalyzed'] },
        then: { not: { required: ['packageVerificationCode'] } },
      },
    },
    files: {
      type: 'array',
      items: {
        type: 'object',
        required: ['SPDXID', 'fileName', 'checksums'],
        additionalProperties: false,
        properties: {
          SPDXID: { type: 'string', pattern: SPDXID },
          fileName: { type: 'string', minLength: 1 },
          fileTypes: { type: 'array', items: { enum: ['SOURCE', 'BINARY', 'ARCHIVE', 'APPLICATION', 'AUDIO', 'IMAGE', 'TEXT', 'VIDEO', 'DOCUMENTATION', 'SPDX', 'OTHER'] } },
          // SHA1 is mandatory in the 2.3 text; the 2.3.1 schema relaxed it to at least one checksum.
          checksums: { type: 'array', minItems: 1, items: checksum },
          licenseConcluded: { type: 'string' },
          licenseInfoInFiles: strings,
          licenseComments: { type: 'string' },
          copyrightText: { type: 'string' },
          comment: { type: 'string' },
          noticeText: { type: 'string' },
          fileContributors: strings,
          attributionTexts: strings,
          annotations: { type: 'array', items: annotation },
        },
      },
    },
    relationships: {
      type: 'array',
      items: {
        type: 'object',
        required: ['spdxElementId', 'relationshipType', 'relatedSpdxElement'],
        additionalProperties: false,
        properties: {
          spdxElementId: { type: 'string', pattern: '^(DocumentRef-[A-Za-z0-9.-]+:)?SPDXRef-[A-Za-z0-9.-]+$' },
          relationshipType: { enum: RELATIONSHIP_TYPES },
          relatedSpdxElement: { type: 'string', pattern: '^((DocumentRef-[A-Za-z0-9.-]+:)?SPDXRef-[A-Za-z0-9.-]+|NONE|NOASSERTION)$' },
          comment: { type: 'string' },
        },
      },
    },
  },
};

let spdx: ValidateFunction | undefined;

/** Schema errors (ajv's, as text) of a CycloneDX 1.6 document; empty when valid. */
export function cycloneDxErrors(document: unknown): string[] {
  const validate = cycloneDxValidator();
  if (validate(document)) {
    // What the schema cannot say: bom-refs unique, every dependency naming a component.
    const doc = document as { metadata?: { component?: { 'bom-ref'?: string } }; components?: { 'bom-ref'?: string }[]; dependencies?: { ref: string; dependsOn?: string[] }[] };
    const refs = [doc.metadata?.component?.['bom-ref'], ...(doc.components ?? []).map((c) => c['bom-ref'])].filter((r): r is string => !!r);
    const errors: string[] = [];
    const seen = new Set<string>();
    for (const ref of refs) {
      if (seen.has(ref)) errors.push(`duplicate bom-ref ${ref}`);
      seen.add(ref);
    }
    for (const dep of doc.dependencies ?? []) for (const ref of [dep.ref, ...(dep.dependsOn ?? [])]) if (!seen.has(ref)) errors.push(`dependency names unknown bom-ref ${ref}`);
    return errors;
  }
  return (validate.errors ?? []).map((e) => `${e.instancePath || '/'} ${e.message ?? ''} ${JSON.stringify(e.params)}`);
}

/** Errors of an SPDX 2.3 document against SPDX_23_SCHEMA and the spec's cross-references; empty when valid. */
export function spdxErrors(document: unknown): string[] {
  spdx ??= ajv().compile(SPDX_23_SCHEMA);
  if (!spdx(document)) return (spdx.errors ?? []).map((e) => `${e.instancePath || '/'} ${e.message ?? ''} ${JSON.stringify(e.params)}`);
  const doc = document as { packages?: { SPDXID: string }[]; files?: { SPDXID: string }[]; relationships?: { spdxElementId: string; relationshipType: string; relatedSpdxElement: string }[] };
  const errors: string[] = [];
  const ids = new Set<string>(['SPDXRef-DOCUMENT']);
  for (const { SPDXID } of [...(doc.packages ?? []), ...(doc.files ?? [])]) {
    if (ids.has(SPDXID)) errors.push(`duplicate SPDXID ${SPDXID}`);
    ids.add(SPDXID);
  }
  for (const r of doc.relationships ?? []) {
    if (!ids.has(r.spdxElementId)) errors.push(`relationship from unknown element ${r.spdxElementId}`);
    if (!['NONE', 'NOASSERTION'].includes(r.relatedSpdxElement) && !ids.has(r.relatedSpdxElement)) errors.push(`relationship to unknown element ${r.relatedSpdxElement}`);
  }
  if (!(doc.relationships ?? []).some((r) => r.spdxElementId === 'SPDXRef-DOCUMENT' && r.relationshipType === 'DESCRIBES')) errors.push('the document DESCRIBES nothing');
  return errors;
}
