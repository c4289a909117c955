import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { resolve } from 'node:path';
import type { ChrootSession } from '../chroot/session.js';
import { ImageBuilderError } from '../util/errors.js';
import { sleep } from '../util/fs.js';
import { defineStep, type StepContext } from './types.js';

export interface ContainerImagesSpec {
  /** Host paths (relative to the recipe) of OCI or docker-archive tarballs; `{guest: PATH}` for one already in the image. */
  archives: (string | { guest: string })[];
  namespace?: string;
}

/** A private containerd for the length of the step: its own socket and state under the session's /run. */
const STATE_DIR = '/run/imagebuilder-containerd';
const SOCKET = `${STATE_DIR}/containerd.sock`;

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

async function startContainerd(context: StepContext, root: string): Promise<string> {
  const { session } = context;
  const config = `version = 2\nroot = "${root}"\nstate = "${STATE_DIR}"\n[grpc]\n  address = "${SOCKET}"\n`;
  // Its output goes to a log file so the shell's pipes close and the exec returns while containerd runs on.
  const started = await session.exec(
    ['/bin/sh', '-c', `set -e; mkdir -p ${STATE_DIR}; cat > ${STATE_DIR}/config.toml; containerd --config ${STATE_DIR}/config.toml > ${STATE_DIR}/log 2>&1 < /dev/null & echo $!`],
    { input: config, errorCode: 'STEP_FAILED', purpose: `${context.label}: starting a private containerd` },
  );
  const pid = started.stdout.trim();
  for (let waited = 0; waited < 30000; waited += 100) {
    const ready = await session.exec(['/bin/sh', '-c', `test -S ${SOCKET} && ctr --address ${SOCKET} version >/dev/null 2>&1`], { allowFailure: true });
    if (ready.exitCode === 0) return pid;
    await sleep(100);
  }
  const log = await session.exec(['/bin/sh', '-c', `tail -n 20 ${STATE_DIR}/log`], { allowFailure: true });
  throw new ImageBuilderError('STEP_FAILED', `${context.label}: the private containerd did not start within 30 s`, { detail: log.stdout });
}

async function stopContainerd(session: ChrootSession, pid: string): Promise<void> {
  // SIGTERM lets containerd close its metadata database cleanly before the image is unmounted.
  await session.exec(['/bin/sh', '-c', `kill ${pid} 2>/dev/null || exit 0; for i in $(seq 100); do kill -0 ${pid} 2>/dev/null || exit 0; sleep 0.1; done; kill -9 ${pid}`], {
    allowFailure: true,
  });
}

export const containerImagesStep = defineStep<ContainerImagesSpec>({
  key: 'container-images',
  summary: "Import container image tarballs into the guest's containerd (k8s.io namespace)",
  description:
    'Imports OCI or docker-archive tarballs into containerd\'s content store inside the image, so a node starts ' +
    'with its images already present (air-gapped clusters, faster boots). A private containerd runs inside the ' +
    'chroot on its own socket and state directory for the length of the step, then stops. Images are imported ' +
    'without unpacking (no mounts are possible while building); the CRI plugin unpacks them on first use. The ' +
    "guest must already have containerd and ctr. Each image's reference and digest go into the BOM.",
  example: { archives: ['images/pause-3.9.tar', { guest: '/opt/images/kube-apiserver.tar' }] },
  schema: {
    type: 'object',
    additionalProperties: false,
    required: ['archives'],
    properties: {
      archives: {
        type: 'array',
        minItems: 1,
        items: {
          oneOf: [
            { type: 'string', minLength: 1, description: 'A tarball on the build host, relative to the recipe.' },
            {
              type: 'object',
              additionalProperties: false,
              required: ['guest'],
              properties: { guest: { type: 'string', pattern: '^/', description: 'A tarball already in the image (e.g. from a download step).' } },
            },
          ],
        },
      },
      namespace: { type: 'string', default: 'k8s.io', minLength: 1, description: 'containerd namespace (Kubernetes uses k8s.io).' },
    },
  },
  describe: (spec) => `import ${spec.archives.length} container image archive(s)`,
  async run(context, spec) {
    const { session } = context;
    const namespace = spec.namespace ?? 'k8s.io';
    const hostArchives = spec.archives.filter((a): a is string => typeof a === 'string').map((a) => resolve(context.recipeDir, a));
    for (const path of hostArchives) {
      if (!(await stat(path).catch(() => undefined))?.isFile()) {
        throw new ImageBuilderError('BAD_RECIPE', `${context.label}: container image archive not found: ${path}`, { hint: 'archive paths are relative to the recipe file' });
      }
    }
    const tools = await session.exec(['/bin/sh', '-c', 'command -v containerd && command -v ctr'], { allowFailure: true });
    if (tools.exitCode !== 0) {
      throw new ImageBuilderError('STEP_FAILED', `${context.label}: containerd and ctr are not installed in the guest`, {
        hint: 'install containerd in an earlier step (packages, or download of the release tarball)',
      });
    }
    const ctr = ['ctr', '--address', SOCKET, '--namespace', namespace];
    const platform = context.architecture ? ['--platform', `linux/${context.architecture}`] : [];
    const pid = await startContainerd(context, await containerdRoot(session));
    try {
      const before = parseImageList((await session.exec([...ctr, 'images', 'ls'])).stdout);
      for (const archive of spec.archives) {
        const input = typeof archive === 'string' ? createReadStream(resolve(context.recipeDir, archive)) : undefined;
        const source = typeof archive === 'string' ? '-' : archive.guest;
        context.log.info(`${context.label}: importing ${typeof archive === 'string' ? archive : archive.guest}`);
        await session.exec([...ctr, 'images', 'import', '--no-unpack', ...platform, source], {
          input,
          errorCode: 'STEP_FAILED',
          purpose: `${context.label}: importing ${typeof archive === 'string' ? archive : archive.guest}`,
          hint: 'is it an OCI or docker-archive tarball (`docker save`, `ctr images export`, `skopeo copy ... oci-archive:`)?',
        });
      }
      const after = parseImageList((await session.exec([...ctr, 'images', 'ls'])).stdout);
      for (const [reference, digest] of after) {
        if (before.get(reference) !== digest) context.record.image({ reference, digest });
      }
    } finally {
      await stopContainerd(session, pid);
    }
  },
});
