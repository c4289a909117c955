import { createReadStream } from 'node:fs';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { pipeline, type Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { Type, type Static } from '@sinclair/typebox';
import { ABSENT } from '../util/json-schema.js';
import { extractIntoGuest, writeGuestFile } from '../chroot/guest-write.js';
import { parseSumsFile } from '../fetch/checksums.js';
import { networkDownloads } from '../fetch/downloads.js';
import { MAX_SUMS_BYTES } from '../fetch/http.js';
import { ImageBuilderError, isImageBuilderError } from '../util/errors.js';
import { defineStep, type StepContext } from './types.js';

const HTTP_URL = '^https?://[^\\s]+$';

const downloadSchema = Type.Object(
  {
    url: Type.String({ pattern: HTTP_URL, description: 'http(s) URL of the file.' }),
    sha256: Type.Optional(Type.String({ pattern: '^[0-9a-fA-F]{64}$', description: 'The expected sha256 (64 hex digits). Exactly one of sha256 and checksum_url.' })),
    checksum_url: Type.Optional(
      Type.String({
        pattern: HTTP_URL,
        description: "URL of a checksum file: `<file>.sha256` (a hash, or `hash  name`) or SHA256SUMS (the line for the URL's file name is used).",
      }),
    ),
    dest: Type.Optional(Type.String({ pattern: '^/.*[^/]$', description: 'Absolute guest path of the file to write. Exactly one of dest and extract.' })),
    extract: Type.Optional(Type.String({ pattern: '^/', description: 'Absolute guest directory to unpack a .tar.gz/.tgz (or .tar) archive into; created if missing.' })),
    strip_components: Type.Optional(Type.Integer({ minimum: 0, description: 'With extract: leading path components to drop from the names in the archive.' })),
    mode: Type.Optional(Type.String({ pattern: '^0?[0-7]{3,4}$', default: '0644', description: 'With dest: octal mode, e.g. "0755".' })),
    owner: Type.Optional(Type.String({ minLength: 1, default: 'root', description: 'With dest: owner name or uid in the guest.' })),
    group: Type.Optional(Type.String({ minLength: 1, default: 'root', description: 'With dest: group name or gid in the guest.' })),
  },
  {
    additionalProperties: false,
    allOf: [
      {
        description: 'Exactly one of sha256 and checksum_url.',
        oneOf: [
          { required: ['sha256'], properties: { checksum_url: ABSENT } },
          { required: ['checksum_url'], properties: { sha256: ABSENT } },
        ],
      },
      {
        description: 'Exactly one of dest (with mode, owner, group) and extract (with strip_components).',
        oneOf: [
          { required: ['dest'], properties: { extract: ABSENT, strip_components: ABSENT } },
          { required: ['extract'], properties: { dest: ABSENT, mode: ABSENT, owner: ABSENT, group: ABSENT } },
        ],
      },
    ],
  },
);

export type DownloadSpec = Static<typeof downloadSchema>;

/** The file name a checksum file lists for this URL: the last path segment as written in the recipe. */
export function urlFileName(url: string): string {
  return decodeURIComponent(basename(new URL(url).pathname));
}

/**
 * The expected sha256 of `fileName` from a checksum file: either just a hash (`<file>.sha256`), or
 * `hash  name` lines (one for the file, or SHA256SUMS listing many) in GNU or BSD form.
 * Undefined when the file does not name it.
 */
export function sumFromChecksumFile(text: string, fileName: string): string | undefined {
  const bare = /^([0-9a-fA-F]{64})$/.exec(text.trim());
  if (bare) return bare[1].toLowerCase();
  return parseSumsFile(text).get(fileName);
}

/** Turns a fetch failure (a host command failure by default) into this step's failure. */
function asStepFailure(context: StepContext, error: unknown): unknown {
  if (isImageBuilderError(error) && error.code === 'COMMAND_FAILED') {
    return new ImageBuilderError('STEP_FAILED', `${context.label}: ${error.message}`, { hint: error.hint, detail: error.detail, cause: error });
  }
  return error;
}

async function expectedSum(context: StepContext, spec: DownloadSpec): Promise<{ sha256: string; source: string }> {
  if (spec.sha256) return { sha256: spec.sha256.toLowerCase(), source: 'the recipe' };
  const checksumUrl = spec.checksum_url!;
  const downloads = context.downloads ?? networkDownloads;
  const text = await downloads.bytes(checksumUrl, { signal: context.signal, log: context.log, timeouts: context.fetchTimeouts, cap: { bytes: MAX_SUMS_BYTES, what: 'checksum file' } }).then((bytes) => bytes.toString('utf8'), (error: unknown) => {
    throw asStepFailure(context, error);
  });
  const name = urlFileName(spec.url);
  const sha256 = sumFromChecksumFile(text, name);
  if (!sha256) {
    const listed = [...parseSumsFile(text).keys()];
    throw new ImageBuilderError('STEP_FAILED', `${context.label}: the checksum file ${checksumUrl} has no sha256 for ${name}`, {
      detail: listed.length ? `it lists: ${listed.join(', ')}` : `it holds neither a bare sha256 nor "hash  name" lines`,
      hint: 'check that checksum_url belongs to this URL, or give the sha256 in the recipe',
    });
  }
  return { sha256, source: checksumUrl };
}

/** gzip-compressed (by its magic bytes, whatever the file is called), or a plain tar archive. */
async function archiveStream(path: string, context: StepContext, url: string): Promise<Readable> {
  const head = Buffer.alloc(262);
  const file = await open(path, 'r');
  try {
    await file.read(head, 0, head.length, 0);
  } finally {
    await file.close();
  }
  // pipeline(): a read or gunzip error reaches the guest's tar as a failed stdin, not a silently short archive.
  if (head[0] === 0x1f && head[1] === 0x8b) return pipeline(createReadStream(path), createGunzip(), () => undefined);
  if (head.subarray(257, 262).toString('latin1') === 'ustar') return createReadStream(path);
  throw new ImageBuilderError('STEP_FAILED', `${context.label}: ${url} is neither a .tar.gz nor a .tar archive`, {
    hint: 'extract unpacks gzip-compressed or plain tar archives; use dest to place any other file as it is',
  });
}

export const downloadStep = defineStep({
  key: 'download',
  summary: 'Download a file, verify its sha256, put it into the guest',
  description:
    'Downloads `url` on the build host (redirects followed) into a private temporary directory and verifies its sha256 ' +
    'against `sha256`, or against `checksum_url`: a `<file>.sha256` file (just the hash, or `hash  name`) or a ' +
    "SHA256SUMS file, whose line for the URL's file name is used. Nothing reaches the guest unless the sum matches. " +
    'Then either writes it to `dest` (a file path, with mode, owner and group resolved in the guest, like `file`), or ' +
    'unpacks it (.tar.gz/.tgz or .tar) into the directory `extract` with the guest\'s own tar, dropping ' +
    '`strip_components` leading path components; unpacked files keep their modes and belong to root.',
  example: {
    url: 'https://dl.k8s.io/release/v1.31.0/bin/linux/amd64/kubectl',
    checksum_url: 'https://dl.k8s.io/release/v1.31.0/bin/linux/amd64/kubectl.sha256',
    dest: '/usr/local/bin/kubectl',
    mode: '0755',
  },
  schema: downloadSchema,
  describe: (spec) => `download ${urlFileName(spec.url)} to ${spec.dest ?? spec.extract}`,
  // With a sha256 the value pins the content; a checksum_url is read anew each time.
  cacheInputs: async (spec) => (spec.sha256 ? {} : { unpinned: `${spec.url} has no pinned sha256` }),
  async run(context, spec) {
    const expected = await expectedSum(context, spec);
    const temp = await mkdtemp(join(context.workDir, 'download-'));
    try {
      const path = join(temp, 'download');
      // No cap but the disk's (fetchToFile stops while the work directory keeps its reserve): the sha256 is known,
      // and checked before anything reaches the guest.
      const { sha256, size } = await (context.downloads ?? networkDownloads).toFile(spec.url, path, { signal: context.signal, log: context.log, timeouts: context.fetchTimeouts }).catch((error) => {
        throw asStepFailure(context, error);
      });
      if (sha256 !== expected.sha256) {
        throw new ImageBuilderError('STEP_FAILED', `${context.label}: checksum mismatch for ${spec.url}`, {
          detail: `expected sha256 ${expected.sha256} (from ${expected.source})\nactual   sha256 ${sha256}`,
          hint: 'the download is not the file the checksum describes: fix the URL or the checksum (nothing was written to the image)',
        });
      }
      context.log.info(`downloaded ${spec.url} (${size} bytes, sha256 ${sha256}, verified against ${expected.source})`);
      if (spec.extract !== undefined) {
        await extractIntoGuest(context.session, await archiveStream(path, context, spec.url), spec.extract, {
          stripComponents: spec.strip_components,
          purpose: `${context.label}: unpacking ${urlFileName(spec.url)} into ${spec.extract}`,
        });
        context.record.file({ path: spec.extract, sha256, kind: 'download', source: spec.url });
      } else {
        const dest = spec.dest!;
        const written = await writeGuestFile(
          context.session,
          { path: dest, content: createReadStream(path), mode: spec.mode, owner: spec.owner, group: spec.group },
          `${context.label}: writing ${dest}`,
        );
        // The temp file is private, but a difference here would mean the guest got something unverified.
        if (written !== sha256) throw new ImageBuilderError('INTERNAL', `${context.label}: ${dest} was written with sha256 ${written}, not the verified ${sha256}`);
        context.record.file({ path: dest, sha256, kind: 'download', source: spec.url });
      }
    } finally {
      await rm(temp, { recursive: true, force: true });
    }
  },
});
