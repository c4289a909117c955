import { createHash } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { basename, dirname, join, relative, resolve, sep } from 'node:path';
import { stringify } from 'yaml';
import { ImageBuilderError } from '../util/errors.js';
import { TOOL_VERSION } from '../version.js';
import type { Matrix, MatrixBase, MatrixBuild } from './load.js';

/** The image the Dockerfile builds, tagged with this version (README: docker build -t imagebuilder:VERSION .). */
export const DEFAULT_CONTAINER_IMAGE = `imagebuilder:${TOOL_VERSION}`;

/** Where things are inside each pod; the cache and work paths are the Dockerfile's own defaults. */
export const POD_PATHS = { config: '/config', cache: '/var/cache/imagebuilder', artifacts: '/artifacts', work: '/var/tmp', dev: '/dev' } as const;

export interface EmitOptions {
  /** The container image with imagebuilder (privileged, ENTRYPOINT imagebuilder). */
  image: string;
  /** A ReadWriteMany PVC for the base-image cache, shared by every pod. */
  cacheClaim: string;
  /** The PVC that receives <build>/ directories. */
  artifactsClaim: string;
  namespace?: string;
  serviceAccount?: string;
  /** Resource requests of each build pod. */
  cpu: string;
  memory: string;
  /** Argo: at most this many builds at once (spec.parallelism). */
  jobs: number;
  failFast?: boolean;
  /** Passed to each build as its flag. */
  mountBackend?: string;
  sparsify?: string;
  /** --allow-network, passed to each build: the private networks (an internal mirror) its guest commands may reach. */
  allowNetworks?: string[];
}

type Manifest = Record<string, unknown>;

const hash8 = (text: string) => createHash('sha256').update(text).digest('hex').slice(0, 8);

/**
 * DNS-1123 labels (what Job names, DAG task names and label values accept) for each text: lowercase letters,
 * digits and "-", at most `max` long. A name that had to be shortened, or that two texts would share, keeps
 * a hash of its original, so two builds never share one.
 */
export function kubernetesNames(texts: string[], max = 63): Map<string, string> {
  const clean = (text: string) => text.toLowerCase().replace(/[^a-z0-9-]+/g, '-').replace(/-+/g, '-').replace(/^-|-$/g, '') || 'x';
  const hashed = (text: string) => {
    const suffix = `-${hash8(text)}`;
    return `${clean(text).slice(0, max - suffix.length).replace(/-$/, '')}${suffix}`;
  };
  const cleaned = texts.map(clean);
  return new Map(texts.map((text, i) => [text, cleaned[i].length > max || cleaned.indexOf(cleaned[i]) !== cleaned.lastIndexOf(cleaned[i]) ? hashed(text) : cleaned[i]]));
}

export const kubernetesName = (text: string, max = 63) => kubernetesNames([text], max).get(text)!;

/**
 * The files a build reads (matrix, recipes, includes, keyrings), relative to the deepest directory that holds them
 * all (the matrix file's, or one above it when a recipe sits beside or above it: recipes/examples/matrix.yaml
 * building ../kubernetes-node.yaml): the ConfigMap, laid out in the pod as they are here.
 */
function carriedFiles(matrix: Matrix, builds: MatrixBuild[]): { root: string; files: string[]; matrixFile: string } {
  const absolute = new Set<string>([resolve(matrix.path)]);
  for (const build of builds) {
    for (const file of build.recipe.files) absolute.add(resolve(matrix.dir, file));
    if (build.base.keyringWritten) absolute.add(resolve(matrix.dir, build.base.keyringWritten));
  }
  const dirs = [...absolute].map((file) => dirname(file).split(sep));
  let depth = 0;
  while (dirs.every((parts) => depth < parts.length && parts[depth] === dirs[0][depth])) depth++;
  const root = dirs[0].slice(0, depth).join(sep) || sep;
  if (root === sep) {
    throw new ImageBuilderError('BAD_INPUT', `a cluster build carries the files its builds read from one directory, and these share none below /: ${[...absolute].join(', ')}`, {
      hint: `keep the recipes, includes and keyrings with the matrix file (${matrix.dir}) or in one tree with it, and refer to them by relative paths`,
    });
  }
  return { root, files: [...absolute].map((file) => relative(root, file)).sort(), matrixFile: relative(root, resolve(matrix.path)) };
}

/**
 * Whether bytes are an OpenPGP public keyring as gpgv reads one: binary packets starting with a public key packet
 * (tag 6, old or new format), an armored PUBLIC KEY BLOCK, or a keybox (gpg's pubring.kbx).
 */
export function isPublicKeyring(bytes: Buffer): boolean {
  if (bytes.length === 0) return false;
  if ([0x98, 0x99, 0x9a, 0x9b, 0xc6].includes(bytes[0])) return true;
  if (bytes.subarray(8, 12).toString('latin1') === 'KBXf') return true;
  // Armored: a PUBLIC KEY BLOCK line near the start (after comments, a byte-order mark), and no private key anywhere.
  const text = bytes.toString('utf8');
  if (text.includes('-----BEGIN PGP PRIVATE KEY BLOCK-----')) return false;
  return /^\uFEFF?-----BEGIN PGP PUBLIC KEY BLOCK-----\r?$/m.test(text.slice(0, 4096));
}

/** The ConfigMap that delivers those files into every pod at /config, keeping their relative paths. */
function configMap(matrix: Matrix, builds: MatrixBuild[], options: EmitOptions, labels: Record<string, string>): Manifest {
  const data: Record<string, string> = {};
  const binaryData: Record<string, string> = {};
  const items: { key: string; path: string }[] = [];
  const digest = createHash('sha256');
  let size = 0;
  const { root, files } = carriedFiles(matrix, builds);
  const keyrings = new Set(builds.flatMap((build) => (build.base.keyringWritten ? [resolve(matrix.dir, build.base.keyringWritten)] : [])));
  for (const file of files) {
    // A regular file: a FIFO or a device named here would hang the emitter or carry what it yields.
    if (!statSync(join(root, file)).isFile()) throw new ImageBuilderError('BAD_INPUT', `${join(root, file)} is not a regular file, so a cluster build does not carry it`, { hint: 'name the file itself' });
    const bytes = readFileSync(join(root, file));
    // Carried into the cluster as it is: a matrix naming a key or a secret as its keyring would publish it.
    if (keyrings.has(join(root, file)) && !isPublicKeyring(bytes)) {
      throw new ImageBuilderError('BAD_INPUT', `${join(root, file)} is not an OpenPGP public keyring, and a cluster build would carry it into a ConfigMap`, {
        hint: 'give the base a public keyring (binary, armored PUBLIC KEY BLOCK, or a keybox): gpg --export KEYID > keyring.gpg',
      });
    }
    size += bytes.length;
    digest.update(file).update('\0').update(bytes);
    let key = file.replace(/[^-._a-zA-Z0-9]/g, '_');
    while (key in data || key in binaryData) key = `_${key}`;
    const text = bytes.toString('utf8');
    // As text only when every YAML reader takes it as it is: NEL, U+2028 and U+2029 are line breaks to YAML 1.1
    // readers (kubectl's), which would end a block scalar there and read what follows as keys of the manifest.
    if (Buffer.from(text, 'utf8').equals(bytes) && !/[\u0085\u2028\u2029]/.test(text)) data[key] = text;
    else binaryData[key] = bytes.toString('base64');
    items.push({ key, path: file });
  }
  if (size > 900 * 1024) {
    throw new ImageBuilderError('BAD_INPUT', `the matrix's files take ${Math.round(size / 1024)} KiB: a ConfigMap holds at most 1 MiB`, { hint: 'keep large host files out of the recipes, or bake them into the container image' });
  }
  return {
    apiVersion: 'v1',
    kind: 'ConfigMap',
    metadata: { name: kubernetesName(`${matrixName(matrix)}-${digest.digest('hex').slice(0, 8)}`), ...namespaced(options), labels },
    // Named after its content: a changed matrix gets a new ConfigMap, and running builds keep theirs.
    immutable: true,
    data,
    ...(Object.keys(binaryData).length ? { binaryData } : {}),
    items,
  };
}

const matrixName = (matrix: Matrix) => kubernetesName(basename(matrix.path).replace(/\.ya?ml$/, ''), 40);
const namespaced = (options: EmitOptions) => (options.namespace ? { namespace: options.namespace } : {});

function refuseLocalBases(builds: MatrixBuild[]): void {
  const local = [...new Set(builds.map((b) => b.base))].filter((base) => !base.isUrl);
  if (local.length) {
    throw new ImageBuilderError('BAD_INPUT', `a cluster build fetches its base by URL; these are local files: ${local.map((b) => `${b.name} (${b.written})`).join(', ')}`, {
      hint: 'serve them over http(s) (with a SHA256SUMS beside them, or give checksum:) and name the URL in bases:',
    });
  }
}

function volumes(configMapName: string, items: unknown, options: EmitOptions): Manifest[] {
  return [
    { name: 'config', configMap: { name: configMapName, items } },
    { name: 'cache', persistentVolumeClaim: { claimName: options.cacheClaim } },
    { name: 'artifacts', persistentVolumeClaim: { claimName: options.artifactsClaim } },
    // Overlays and mount points: node-local scratch, gone with the pod.
    { name: 'work', emptyDir: {} },
    // Partition nodes of loop devices appear in the host's /dev, not in a container's private one.
    { name: 'dev', hostPath: { path: '/dev', type: 'Directory' } },
  ];
}

function container(args: string[], options: EmitOptions, mounts: (keyof typeof POD_PATHS)[], privileged: boolean): Manifest {
  return {
    name: 'imagebuilder',
    image: options.image,
    imagePullPolicy: 'IfNotPresent',
    args,
    env: [
      { name: 'IMAGEBUILDER_CACHE', value: POD_PATHS.cache },
      { name: 'IMAGEBUILDER_WORK_DIR', value: POD_PATHS.work },
    ],
    // Loop devices, FUSE and mounts need it; fetching does not.
    ...(privileged ? { securityContext: { privileged: true } } : {}),
    resources: { requests: privileged ? { cpu: options.cpu, memory: options.memory } : { cpu: '250m', memory: '256Mi' } },
    volumeMounts: mounts.map((name) => ({ name, mountPath: POD_PATHS[name], ...(name === 'config' ? { readOnly: true } : {}) })),
  };
}

function buildArgs(matrix: Matrix, builds: MatrixBuild[], build: string, options: EmitOptions): string[] {
  return [
    'matrix',
    `${POD_PATHS.config}/${carriedFiles(matrix, builds).matrixFile}`,
    '--only',
    build,
    '--jobs',
    '1',
    '--output-dir',
    POD_PATHS.artifacts,
    ...(options.mountBackend ? ['--mount-backend', options.mountBackend] : []),
    ...(options.sparsify ? ['--sparsify', options.sparsify] : []),
    ...(options.allowNetworks ?? []).flatMap((network) => ['--allow-network', network]),
  ];
}

function fetchArgs(base: MatrixBase): string[] {
  return [
    'fetch',
    base.image,
    ...(base.checksum ? ['--checksum', base.checksum] : []),
    ...(base.keyringWritten ? ['--keyring', `${POD_PATHS.config}/${base.keyringWritten}`] : []),
    ...(base.insecureSkipVerify ? ['--insecure-skip-verify'] : []),
  ];
}

const BUILD_MOUNTS: (keyof typeof POD_PATHS)[] = ['config', 'cache', 'artifacts', 'work', 'dev'];

function commonLabels(matrix: Matrix): Record<string, string> {
  return { 'app.kubernetes.io/name': 'imagebuilder', 'app.kubernetes.io/version': TOOL_VERSION, 'imagebuilder.dev/matrix': matrixName(matrix) };
}

/** Splits the ConfigMap's items (they go into each pod's volume) from the ConfigMap itself. */
function splitItems(map: Manifest): { map: Manifest; items: unknown } {
  const { items, ...rest } = map;
  return { map: rest, items };
}

/**
 * Plain Kubernetes: the ConfigMap, then one batch/v1 Job per build (one privileged pod, no retries: a failed
 * build is a result, not a flake). Builds of one base wait on the cache's lock while the first fetches it.
 */
export function emitJobs(matrix: Matrix, builds: MatrixBuild[], options: EmitOptions): Manifest[] {
  refuseLocalBases(builds);
  const labels = commonLabels(matrix);
  const { map, items } = splitItems(configMap(matrix, builds, options, labels));
  const configName = (map.metadata as { name: string }).name;
  const jobNames = kubernetesNames(builds.map((b) => `${matrixName(matrix)}-${b.name}`));
  const buildLabels = kubernetesNames(builds.map((b) => b.name));
  const jobs = builds.map((build) => {
    const jobLabels = { ...labels, 'imagebuilder.dev/build': buildLabels.get(build.name)! };
    return {
      apiVersion: 'batch/v1',
      kind: 'Job',
      metadata: { name: jobNames.get(`${matrixName(matrix)}-${build.name}`)!, ...namespaced(options), labels: jobLabels, annotations: { 'imagebuilder.dev/build': build.name } },
      spec: {
        backoffLimit: 0,
        template: {
          metadata: { labels: jobLabels },
          spec: {
            restartPolicy: 'Never',
            // A privileged pod that runs hostile images' programs gets no API credentials it was not given.
            ...(options.serviceAccount ? { serviceAccountName: options.serviceAccount } : { automountServiceAccountToken: false }),
            containers: [container(buildArgs(matrix, builds, build.name, options), options, BUILD_MOUNTS, true)],
            volumes: volumes(configName, items, options),
          },
        },
      },
    };
  });
  return [map, ...jobs];
}

/**
 * Argo Workflows: the ConfigMap and one Workflow whose DAG fetches each base once (phase 0 into the shared
 * cache), then runs each build on that base, at most `jobs` pods at once; a failed build stops the others
 * only with failFast.
 */
export function emitArgo(matrix: Matrix, builds: MatrixBuild[], options: EmitOptions): Manifest[] {
  refuseLocalBases(builds);
  const labels = commonLabels(matrix);
  const { map, items } = splitItems(configMap(matrix, builds, options, labels));
  const configName = (map.metadata as { name: string }).name;
  const bases = [...new Set(builds.map((b) => b.base))];
  const baseNames = kubernetesNames(bases.map((b) => b.name), 50);
  const buildNames = kubernetesNames(builds.map((b) => b.name), 50);
  const fetchTask = (base: MatrixBase) => `fetch-${baseNames.get(base.name)}`;
  const workflow = {
    apiVersion: 'argoproj.io/v1alpha1',
    kind: 'Workflow',
    metadata: { generateName: `${matrixName(matrix)}-`, ...namespaced(options), labels },
    spec: {
      entrypoint: 'matrix',
      parallelism: options.jobs,
      ...(options.serviceAccount ? { serviceAccountName: options.serviceAccount } : {}),
      volumes: volumes(configName, items, options),
      templates: [
        {
          name: 'matrix',
          dag: {
            failFast: Boolean(options.failFast),
            tasks: [
              ...bases.map((base) => ({ name: fetchTask(base), template: fetchTask(base) })),
              ...builds.map((build) => ({
                name: `build-${buildNames.get(build.name)}`,
                template: 'build',
                dependencies: [fetchTask(build.base)],
                arguments: { parameters: [{ name: 'build', value: build.name }] },
              })),
            ],
          },
        },
        ...bases.map((base) => ({ name: fetchTask(base), container: container(fetchArgs(base), options, ['config', 'cache'], false) })),
        {
          name: 'build',
          inputs: { parameters: [{ name: 'build' }] },
          container: container(buildArgs(matrix, builds, '{{inputs.parameters.build}}', options), options, BUILD_MOUNTS, true),
        },
      ],
    },
  };
  return [map, workflow];
}

/** Multi-document YAML, as kubectl apply -f and argo submit take it. */
export function manifestsYaml(manifests: Manifest[]): string {
  // YAML 1.1, as kubectl and argo read it: a string such as `yes`, `on` or `0b1` is written quoted, not as YAML
  // 1.2 writes it (plain), which they would read as a boolean or a number.
  return manifests.map((m) => stringify(m, { lineWidth: 0, aliasDuplicateObjects: false, version: '1.1' })).join('---\n');
}
