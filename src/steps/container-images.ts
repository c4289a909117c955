import type { FileHandle } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { normalize } from 'node:path';
import { Type, type Static } from '@sinclair/typebox';
import { OneOf } from '../util/json-schema.js';
import type { ChrootSession } from '../chroot/session.js';
import { ImageBuilderError } from '../util/errors.js';
import { NotRegularFile, openRegularFile } from '../util/fs.js';
import { defineStep, type StepContext } from './types.js';
import { confinedHostPath, hostTreeDigest } from './host-inputs.js';

const containerImagesSchema = Type.Object(
  {
    /** Host paths (relative to the recipe) of OCI or docker-archive tarballs; `{guest: PATH}` for one already in the image. */
    archives: Type.Array(
      OneOf([
        Type.String({ minLength: 1, description: 'A tarball on the build host, relative to the recipe.' }),
        Type.Object({ guest: Type.String({ pattern: '^/', description: 'A tarball already in the image (e.g. from a download step).' }) }, { additionalProperties: false }),
      ]),
      { minItems: 1 },
    ),
    namespace: Type.Optional(Type.String({ default: 'k8s.io', minLength: 1, description: 'containerd namespace (Kubernetes uses k8s.io).' })),
  },
  { additionalProperties: false },
);

export type ContainerImagesSpec = Static<typeof containerImagesSchema>;

/** A private containerd for the length of the step: its own socket and state under the session's /run. */
const STATE_DIR = '/run/imagebuilder-containerd';

/** The content root the node's containerd will use: the guest's config.toml `root`, else the default. */
async function containerdRoot(session: ChrootSession): Promise<string> {
  const config = await session.exec(['/bin/sh', '-c', 'cat /etc/containerd/config.toml 2>/dev/null || true']);
  return /^\s*root\s*=\s*"([^"]+)"/m.exec(config.stdout)?.[1] ?? '/var/lib/containerd';
}

/** `ctr images ls` rows as reference → digest, without the image-ID aliases the CRI plugin adds. */
export function parseImageList(text: string): Map<string, string> {
  const images = new Map<string, string>();
  for (const line of text.split('\n').slice(1)) {
    const [reference, , digest] = line.trim().split(/\s+/);
    if (reference && digest?.startsWith('sha256:') && !reference.startsWith('sha256:')) images.set(reference, digest);
  }
  return images;
}

/**
 * One command does it all, because each guest command runs in its own PID namespace and what it leaves
 * running dies with it: start containerd, wait for its socket, list, import each archive, list again, and
 * stop containerd (SIGTERM, so it closes its metadata database) on the way out, whatever happened.
 */
export const IMPORT_SCRIPT = [
  'set -e',
  `state=${STATE_DIR}; sock=$state/containerd.sock; ns=$1; shift`,
  'containerd --config "$state/config.toml" > "$state/log" 2>&1 < /dev/null &',
  'pid=$!',
  'trap \'kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true\' EXIT',
  'i=0; until ctr --address "$sock" version > /dev/null 2>&1; do i=$((i+1)); if [ "$i" -gt 300 ] || ! kill -0 "$pid" 2>/dev/null; then echo "containerd did not start:" >&2; tail -n 20 "$state/log" >&2; exit 1; fi; sleep 0.1; done',
  'echo "=== before"; ctr --address "$sock" --namespace "$ns" images ls',
  'for archive; do ctr --address "$sock" --namespace "$ns" images import --no-unpack ${PLATFORM:+--platform "$PLATFORM"} "$archive"; done',
  'echo "=== after"; ctr --address "$sock" --namespace "$ns" images ls',
].join('\n');

export const containerImagesStep = defineStep({
  key: 'container-images',
  summary: "Import container image tarballs into the guest's containerd (k8s.io namespace)",
  description:
    'Imports OCI or docker-archive tarballs into containerd\'s content store inside the image, so a node starts ' +
    'with its images already present (air-gapped clusters, faster boots). A private containerd runs inside the ' +
    'chroot on its own socket and state directory for the length of the step, then stops. Images are imported ' +
    'without unpacking (no mounts are possible while building); the CRI plugin unpacks them on first use. The ' +
    "guest must already have containerd and ctr. Each image's reference and digest go into the BOM.",
  example: { archives: ['images/pause-3.9.tar', { guest: '/opt/images/kube-apiserver.tar' }] },
  schema: containerImagesSchema,
  describe: (spec) => `import ${spec.archives.length} container image archive(s)`,
  hostPaths: (spec) => spec.archives.flatMap((archive, index) => (typeof archive === 'string' ? [{ at: ['archives', index], path: archive }] : [])),
  async cacheInputs(spec, environment) {
    const hostArchives = spec.archives.filter((a): a is string => typeof a === 'string');
    return { digests: Object.fromEntries(await Promise.all(hostArchives.map(async (a) => [a, await hostTreeDigest(confinedHostPath(environment, a))]))) };
  },
  async run(context, spec) {
    // Each host archive as the recipe names it, read from the host or, offline, from the bundle.
    const hostArchives = new Map<number, string>();
    for (const [index, archive] of spec.archives.entries()) {
      if (typeof archive !== 'string') continue;
      const hostPath = confinedHostPath(context, archive);
      hostArchives.set(index, context.hostFiles ? await context.hostFiles.path(normalize(archive), hostPath, 'container image archive') : hostPath);
    }
    // Opened now, and only as regular files (a FIFO is not waited on, a device never opened): what is checked is
    // what is read. Closed when the step ends, however it ends.
    const opened = new Map<number, FileHandle>();
    try {
      for (const [index, path] of hostArchives) {
        const file = await openRegularFile(path, { follow: true }).catch((error: unknown) => {
          if (error instanceof NotRegularFile) throw new ImageBuilderError('BAD_RECIPE', `${context.label}: container image archive ${path} is not a regular file (a directory, FIFO, socket or device)`, { hint: 'name a docker-archive or OCI tarball' });
          throw error;
        });
        if (!file) throw new ImageBuilderError('BAD_RECIPE', `${context.label}: container image archive not found: ${path}`, { hint: 'archive paths are relative to the recipe file' });
        opened.set(index, file.handle);
      }
      await importArchives(context, spec, opened);
    } finally {
      for (const handle of opened.values()) await handle.close().catch(() => undefined);
    }
  },
});

/** Stages the archives (host ones from their open descriptors, guest ones where they are) and imports them all. */
async function importArchives(context: StepContext, spec: ContainerImagesSpec, opened: Map<number, FileHandle>): Promise<void> {
  const { session } = context;
  const namespace = spec.namespace ?? 'k8s.io';
  const tools = await session.exec(['/bin/sh', '-c', 'command -v containerd && command -v ctr'], { allowFailure: true });
  if (tools.exitCode !== 0) {
    throw new ImageBuilderError('STEP_FAILED', `${context.label}: containerd and ctr are not installed in the guest`, {
      hint: 'install containerd in an earlier step (packages, or download of the release tarball)',
    });
  }
  const config = `version = 2\nroot = "${await containerdRoot(session)}"\nstate = "${STATE_DIR}"\n[grpc]\n  address = "${STATE_DIR}/containerd.sock"\n`;
  const stage = (path: string, input: string | Readable) =>
    session.exec(['/bin/sh', '-c', 'mkdir -p "$(dirname "$1")" && cat > "$1"', 'stage', path], { input, errorCode: 'STEP_FAILED', purpose: `${context.label}: staging ${path}` });
  await stage(`${STATE_DIR}/config.toml`, config);
  // Host archives are staged on the session's tmpfs /run: never part of the image.
  const archives: string[] = [];
  for (const [index, archive] of spec.archives.entries()) {
    if (typeof archive !== 'string') {
      archives.push(archive.guest);
      continue;
    }
    const staged = `${STATE_DIR}/archives/${index}.tar`;
    await stage(staged, opened.get(index)!.createReadStream({ autoClose: false, start: 0 }));
    archives.push(staged);
  }
  context.log.info(`${context.label}: importing ${spec.archives.map((a) => (typeof a === 'string' ? a : a.guest)).join(', ')}`);
  const result = await session.exec(['/bin/sh', '-c', IMPORT_SCRIPT, 'import-images', namespace, ...archives], {
    env: context.architecture ? { PLATFORM: `linux/${context.architecture}` } : {},
    errorCode: 'STEP_FAILED',
    purpose: `${context.label}: importing container images`,
    hint: 'are they OCI or docker-archive tarballs (`docker save`, `ctr images export`, `skopeo copy ... oci-archive:`)?',
  });
  const [, before = '', after = ''] = result.stdout.split(/^=== (?:before|after)$/m);
  const previous = parseImageList(before);
  for (const [reference, digest] of parseImageList(after)) {
    if (previous.get(reference) !== digest) context.record.image({ reference, digest, namespace });
  }
}
