import { mkdtemp, mkdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { execa } from 'execa';
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigMap } from 'kubernetes-models/v1/ConfigMap';
import { Job } from 'kubernetes-models/batch/v1/Job';
import { Workflow } from '@kubernetes-models/argo-workflows/argoproj.io/v1alpha1/Workflow';
import { parse, parseAllDocuments } from 'yaml';
import { parseMatrix, type Matrix } from '../../src/matrix/load.js';
import { emitArgo, emitJobs, isPublicKeyring, kubernetesNames, manifestsYaml, type EmitOptions } from '../../src/matrix/emit.js';
import { matrixOutcome, openBuildLog, runMatrix, selectBuilds } from '../../src/matrix/run.js';
import { formatSummary } from '../../src/matrix/summary.js';
import { OUTPUT_FORMATS } from '../../src/image/formats.js';
import { recordingRunner } from '../../src/util/exec.js';
import { ImageBuilderError } from '../../src/util/errors.js';
import type { ApplyOptions, ApplyResult } from '../../src/pipeline/apply.js';

const RECIPE = ['name: node', 'variables:', '  kubernetes_version: "1.30.2"', '  arch: amd64', '  runtime: containerd', 'steps:', '  - file:', '      path: /etc/k8s', '      content: "{{ kubernetes_version }} {{ arch }}"', ''].join('\n');

describe('matrix files', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'matrix-unit-'));
    await mkdir(join(dir, 'recipes'));
    await writeFile(join(dir, 'recipes/node.yaml'), RECIPE);
    await writeFile(join(dir, 'recipes/gpu.yaml'), RECIPE.replace('name: node', 'name: gpu'));
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  const parseText = (lines: string[]) => parseMatrix(lines.join('\n'), join(dir, 'm.yaml'));
  const expand = (lines: string[]): Matrix => {
    const { matrix, problems } = parseText(lines);
    if (!matrix) throw new Error(problems.map((p) => `${p.location}: ${p.message}`).join('\n'));
    return matrix;
  };
  const problemsOf = (lines: string[]) => parseText(lines).problems.map((p) => `${p.location.replace(`${dir}/`, '')}: ${p.message}`);

  const URL_A = 'https://images.example.org/debian-12-genericcloud-amd64.qcow2';
  const URL_B = 'https://images.example.org/noble-server-cloudimg-amd64.img';

  test('the product of bases and variable axes, named by every value; 1.30 stays "1.30"', () => {
    const matrix = expand(['recipe: recipes/node.yaml', 'bases:', `  - ${URL_A}`, `  - { name: noble, image: ${URL_B} }`, 'variables:', '  kubernetes_version: [1.30, 1.31.0]']);
    expect(matrix.builds.map((b) => [b.name, b.base.name, b.variables])).toEqual([
      ['node-debian-12-genericcloud-amd64-1.30', 'debian-12-genericcloud-amd64', { kubernetes_version: '1.30' }],
      ['node-debian-12-genericcloud-amd64-1.31.0', 'debian-12-genericcloud-amd64', { kubernetes_version: '1.31.0' }],
      ['node-noble-1.30', 'noble', { kubernetes_version: '1.30' }],
      ['node-noble-1.31.0', 'noble', { kubernetes_version: '1.31.0' }],
    ]);
    expect(matrix.builds[0].recipe.path).toBe(join(dir, 'recipes/node.yaml'));
    expect(matrix.builds[0].base).toMatchObject({ image: URL_A, isUrl: true });
    expect(matrix.output.dir).toBe(dir);
  });

  test('exclude removes matching builds; include adds keys where it contradicts nothing, else is a build of its own (GitHub rules)', () => {
    const matrix = expand([
      'recipe: recipes/node.yaml',
      'bases:',
      `  - { name: debian, image: ${URL_A} }`,
      `  - { name: noble, image: ${URL_B} }`,
      'variables:',
      '  kubernetes_version: [1.30.2, 1.31.0]',
      'set:',
      '  runtime: cri-o',
      'exclude:',
      '  - { base: noble, kubernetes_version: 1.30.2 }',
      'include:',
      '  - { base: noble, arch: arm64 }',
      '  - { base: debian, kubernetes_version: 1.29.6 }',
      '  - { kubernetes_version: 1.31.0, runtime: containerd }',
      'output:',
      '  name: "{{ base }}-{{ kubernetes_version | major_minor }}-{{ arch }}"',
      '  dir: out',
      '  formats: [raw]',
    ]);
    expect(matrix.builds.map((b) => [b.name, b.matrixVariables, b.variables.runtime])).toEqual([
      ['debian-1.30-amd64', { kubernetes_version: '1.30.2' }, 'cri-o'],
      ['debian-1.31-amd64', { kubernetes_version: '1.31.0', runtime: 'containerd' }, 'containerd'],
      ['noble-1.31-arm64', { kubernetes_version: '1.31.0', arch: 'arm64', runtime: 'containerd' }, 'containerd'],
      ['debian-1.29-amd64', { kubernetes_version: '1.29.6' }, 'cri-o'],
    ]);
    expect(matrix.output).toEqual({ dir: join(dir, 'out'), formats: ['raw'], compress: undefined });
    expect(selectBuilds(matrix, ['noble-1.31-arm64']).map((b) => b.name)).toEqual(['noble-1.31-arm64']);
    expect(() => selectBuilds(matrix, ['noble-1.31-arm'])).toThrow('--only noble-1.31-arm: the matrix has no such build (did you mean "noble-1.31-arm64"?)');
  });

  test('output formats are exactly what apply --format writes (one list, OUTPUT_FORMATS), archives included', () => {
    const allFormats = [...OUTPUT_FORMATS];
    expect(allFormats).toEqual(expect.arrayContaining(['tar', 'ova', 'gce']));
    const matrix = expand(['recipe: recipes/node.yaml', `bases: [${URL_A}]`, `output: { formats: [${allFormats.join(', ')}] }`]);
    expect(matrix.output.formats).toEqual(allFormats);
    expect(problemsOf(['recipe: recipes/node.yaml', `bases: [${URL_A}]`, 'output: { formats: [iso] }']).join('\n')).toMatch(/m\.yaml:3/);
  });

  test('several recipes are an axis of their own', () => {
    const matrix = expand(['recipes: [recipes/node.yaml, { name: accel, path: recipes/gpu.yaml }]', `bases: [${URL_A}]`, 'exclude: [{ recipe: accel }]', 'include: [{ recipe: accel, arch: arm64 }]']);
    expect(matrix.builds.map((b) => [b.name, b.recipe.name])).toEqual([
      ['node-debian-12-genericcloud-amd64', 'node'],
      ['accel-debian-12-genericcloud-amd64-arm64', 'accel'],
    ]);
    expect(matrix.recipes.map((r) => r.files)).toEqual([['recipes/node.yaml'], ['recipes/gpu.yaml']]);
  });

  test('every mistake is located in the matrix file, with its fix', () => {
    expect(problemsOf(['recipe: recipes/node.yaml', `bases: [${URL_A}]`, 'variabels: {}'])).toEqual([
      'm.yaml:3:1: the matrix: unknown key "variabels" (did you mean "variables"?); allowed: recipe, recipes, bases, variables, set, exclude, include, output',
    ]);
    expect(problemsOf(['recipe: recipes/node.yaml', `bases: [${URL_A}]`, 'variables:', '  kubernetes_verison: [1.30.2]'])).toEqual([
      'm.yaml:4:3: "kubernetes_verison" is not a variable of recipe node (recipes/node.yaml) (did you mean "kubernetes_version"?); it defines: kubernetes_version, arch, runtime',
    ]);
    expect(
      problemsOf([
        'recipe: recipes/node.yaml',
        `bases: [{ name: a, image: ${URL_A} }, { name: b, image: ${URL_B} }]`,
        'variables: { arch: [amd64, arm64] }',
        'exclude:',
        '  - { archh: amd64 }',
        '  - { arch: riscv64 }',
        'include:',
        '  - { base: c }',
        '  - { arch: ppc64el }',
      ]),
    ).toEqual([
      'm.yaml:5:7: exclude[0]: "archh" is not an axis (did you mean "arch"?); axes: recipe, base, arch',
      'm.yaml:6:13: exclude[1].arch: riscv64 is not one of its values (amd64, arm64)',
      'm.yaml:8:13: include[0].base: no base is named "c" (did you mean "a"?); bases: a, b',
      'm.yaml:9:5: include[1] fits no build, so it is a build of its own, but it names no base: add `base:` (one of a, b); there are several bases',
    ]);
    expect(problemsOf(['recipe: recipes/node.yaml', `bases: [${URL_A}]`, 'variables: { arch: [amd64, arm64] }', 'output: { name: "k8s-{{ kubernetes_version }}" }'])).toEqual([
      'm.yaml:4:17: 2 builds are named "k8s-1.30.2": put the variables that tell them apart into output.name',
    ]);
    expect(problemsOf(['recipe: recipes/node.yaml', `bases: [${URL_A}]`, 'output: { name: "{{ verion }}" }'])).toEqual([
      'm.yaml:3:17: output.name: undefined variable "verion"; names available: kubernetes_version, arch, runtime, recipe, base',
    ]);
    expect(problemsOf(['recipe: recipes/missing.yaml', `bases: [${URL_A}, ${URL_A}]`])).toEqual([
      `m.yaml:2:${11 + URL_A.length}: two bases are named "debian-12-genericcloud-amd64" (the first at ${dir}/m.yaml:2:9): give each a \`name:\``,
    ]);
    expect(problemsOf(['recipe: recipes/missing.yaml', `bases: [${URL_A}]`])).toEqual([`recipes/missing.yaml: cannot read recipe ${join(dir, 'recipes/missing.yaml')}: no such file`]);
    expect(problemsOf(['recipe: recipes/node.yaml', 'recipes: [recipes/gpu.yaml]', `bases: [${URL_A}]`])).toEqual(['m.yaml:2:1: give either `recipe` (one) or `recipes` (several), not both']);
    expect(problemsOf(['recipe: recipes/node.yaml', 'bases: ["ftp://x/y.img"]'])[0]).toMatch(/^m\.yaml:2:9: /);
  });
});

describe('matrix emission for Kubernetes', () => {
  let dir: string;
  let matrix: Matrix;
  const options: EmitOptions = { image: 'registry.example.org/imagebuilder:0.1.0', cacheClaim: 'ib-cache', artifactsClaim: 'ib-images', namespace: 'images', cpu: '2', memory: '4Gi', jobs: 3, sparsify: 'fstrim' };

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'matrix-emit-'));
    await mkdir(join(dir, 'recipes/parts'), { recursive: true });
    await writeFile(join(dir, 'recipes/parts/common.yaml'), 'steps:\n  - run: "true"\n');
    await writeFile(join(dir, 'recipes/node.yaml'), RECIPE + '  - include: parts/common.yaml\n');
    await writeFile(join(dir, 'keyring.gpg'), Buffer.from([0x99, 0x01, 0xff, 0x00]));
    const text = [
      'recipe: recipes/node.yaml',
      'bases:',
      '  - { name: debian, image: "https://images.example.org/debian-12.qcow2", keyring: keyring.gpg }',
      '  - { name: noble, image: "https://images.example.org/noble.img", checksum: "sha256:' + 'ab'.repeat(32) + '" }',
      'variables:',
      '  kubernetes_version: [1.30.2, 1.31.0]',
      'output: { name: "{{ base }}-k8s-{{ kubernetes_version }}" }',
    ].join('\n');
    await writeFile(join(dir, 'matrix.yaml'), text);
    const parsed = parseMatrix(text, join(dir, 'matrix.yaml'));
    if (!parsed.matrix) throw new Error(JSON.stringify(parsed.problems));
    matrix = parsed.matrix;
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  const podChecks = (spec: any, build: string) => {
    const [container] = spec.containers;
    expect(container.securityContext).toEqual({ privileged: true });
    expect(container.image).toBe(options.image);
    expect(container.resources.requests).toEqual({ cpu: '2', memory: '4Gi' });
    expect(container.args).toEqual(['matrix', '/config/matrix.yaml', '--only', build, '--jobs', '1', '--output-dir', '/artifacts', '--sparsify', 'fstrim']);
    expect(Object.fromEntries(container.volumeMounts.map((m: any) => [m.name, m.mountPath]))).toEqual({
      config: '/config',
      cache: '/var/cache/imagebuilder',
      artifacts: '/artifacts',
      work: '/var/tmp',
      dev: '/dev',
    });
  };
  const checkVolumes = (volumes: any[], configName: string) => {
    expect(Object.fromEntries(volumes.map((v) => [v.name, v]))).toEqual({
      config: { name: 'config', configMap: { name: configName, items: [{ key: 'keyring.gpg', path: 'keyring.gpg' }, { key: 'matrix.yaml', path: 'matrix.yaml' }, { key: 'recipes_node.yaml', path: 'recipes/node.yaml' }, { key: 'recipes_parts_common.yaml', path: 'recipes/parts/common.yaml' }] } },
      cache: { name: 'cache', persistentVolumeClaim: { claimName: 'ib-cache' } },
      artifacts: { name: 'artifacts', persistentVolumeClaim: { claimName: 'ib-images' } },
      work: { name: 'work', emptyDir: {} },
      dev: { name: 'dev', hostPath: { path: '/dev', type: 'Directory' } },
    });
  };
  const checkConfigMap = async (doc: any) => {
    new ConfigMap(doc).validate();
    expect(doc.metadata.namespace).toBe('images');
    expect(doc.data['matrix.yaml']).toBe(await readFile(join(dir, 'matrix.yaml'), 'utf8'));
    expect(doc.data['recipes_parts_common.yaml']).toBe('steps:\n  - run: "true"\n');
    expect(doc.binaryData['keyring.gpg']).toBe(Buffer.from([0x99, 0x01, 0xff, 0x00]).toString('base64'));
  };

  test('--emit jobs: the ConfigMap and one valid batch/v1 Job per build', async () => {
    const docs = parseAllDocuments(manifestsYaml(emitJobs(matrix, matrix.builds, options))).map((d) => d.toJS());
    expect(docs.map((d) => d.kind)).toEqual(['ConfigMap', 'Job', 'Job', 'Job', 'Job']);
    await checkConfigMap(docs[0]);
    const jobs = docs.slice(1);
    for (const [i, doc] of jobs.entries()) {
      new Job(doc).validate();
      const build = matrix.builds[i].name;
      expect(doc.metadata.annotations['imagebuilder.dev/build']).toBe(build);
      expect(doc.spec.backoffLimit).toBe(0);
      expect(doc.spec.template.spec.restartPolicy).toBe('Never');
      // No service account named: no API token in a privileged pod that runs hostile images' programs.
      expect(doc.spec.template.spec.automountServiceAccountToken).toBe(false);
      podChecks(doc.spec.template.spec, build);
      checkVolumes(doc.spec.template.spec.volumes, docs[0].metadata.name);
    }
    expect(jobs.map((j) => j.metadata.name)).toEqual(['matrix-debian-k8s-1-30-2', 'matrix-debian-k8s-1-31-0', 'matrix-noble-k8s-1-30-2', 'matrix-noble-k8s-1-31-0']);
  });

  test('read as kubectl and argo read YAML (1.1): a build named `on` stays a string, a file holding U+2028 travels as binaryData; a named service account keeps its token', async () => {
    const other = await mkdtemp(join(tmpdir(), 'matrix-emit-yaml11-'));
    try {
      // U+2028 is a line break to a YAML 1.1 reader: inside a block scalar, what follows it would become keys.
      const part = Buffer.from('steps:\n  - run: "true"  # \u2028data: { evil: "x" }\n');
      await mkdir(join(other, 'recipes/parts'), { recursive: true });
      await writeFile(join(other, 'recipes/parts/common.yaml'), part);
      await writeFile(join(other, 'recipes/node.yaml'), RECIPE + '  - include: parts/common.yaml\n');
      const text = ['recipe: recipes/node.yaml', 'bases:', '  - { name: noble, image: "https://images.example.org/noble.img", checksum: "sha256:' + 'ab'.repeat(32) + '" }', 'variables:', '  kubernetes_version: [1.30.2]', 'output: { name: "on" }'].join('\n');
      await writeFile(join(other, 'matrix.yaml'), text);
      const parsed = parseMatrix(text, join(other, 'matrix.yaml'));
      if (!parsed.matrix) throw new Error(JSON.stringify(parsed.problems));
      const emitted = manifestsYaml(emitJobs(parsed.matrix, parsed.matrix.builds, options));
      const docs = parseAllDocuments(emitted, { version: '1.1' }).map((d) => d.toJS());
      expect(docs.map((d) => d.kind)).toEqual(['ConfigMap', 'Job']);
      expect(docs[1].metadata.annotations['imagebuilder.dev/build']).toBe('on');
      expect(docs[1].spec.template.spec.containers[0].args.slice(2, 4)).toEqual(['--only', 'on']);
      expect(Object.keys(docs[0].data).sort()).toEqual(['matrix.yaml', 'recipes_node.yaml']);
      expect(Buffer.from(docs[0].binaryData['recipes_parts_common.yaml'], 'base64')).toEqual(part);
      expect(emitted).not.toMatch(/[\u0085\u2028\u2029]/);
      const named = parseAllDocuments(manifestsYaml(emitJobs(parsed.matrix, parsed.matrix.builds, { ...options, serviceAccount: 'image-builder', allowNetworks: ['10.20.0.0/16', 'fd12::/64'] })), { version: '1.1' }).map((d) => d.toJS());
      expect(named[1].spec.template.spec.serviceAccountName).toBe('image-builder');
      // --allow-network goes on to each build.
      expect(named[1].spec.template.spec.containers[0].args.slice(-4)).toEqual(['--allow-network', '10.20.0.0/16', '--allow-network', 'fd12::/64']);
      expect(named[1].spec.template.spec.automountServiceAccountToken).toBeUndefined();
    } finally {
      await rm(other, { recursive: true, force: true });
    }
  });

  test('--emit argo: a valid Workflow whose DAG fetches each base once, then builds on it', async () => {
    const docs = parseAllDocuments(manifestsYaml(emitArgo(matrix, matrix.builds, { ...options, failFast: true }))).map((d) => d.toJS());
    expect(docs.map((d) => d.kind)).toEqual(['ConfigMap', 'Workflow']);
    await checkConfigMap(docs[0]);
    const workflow = docs[1];
    new Workflow(workflow).validate();
    expect(workflow.spec.parallelism).toBe(3);
    checkVolumes(workflow.spec.volumes, docs[0].metadata.name);
    const templates = Object.fromEntries(workflow.spec.templates.map((t: any) => [t.name, t]));
    expect(templates[workflow.spec.entrypoint].dag.failFast).toBe(true);
    const tasks = templates[workflow.spec.entrypoint].dag.tasks;
    expect(tasks.map((t: any) => [t.name, t.dependencies ?? [], t.arguments?.parameters?.[0]?.value])).toEqual([
      ['fetch-debian', [], undefined],
      ['fetch-noble', [], undefined],
      ['build-debian-k8s-1-30-2', ['fetch-debian'], 'debian-k8s-1.30.2'],
      ['build-debian-k8s-1-31-0', ['fetch-debian'], 'debian-k8s-1.31.0'],
      ['build-noble-k8s-1-30-2', ['fetch-noble'], 'noble-k8s-1.30.2'],
      ['build-noble-k8s-1-31-0', ['fetch-noble'], 'noble-k8s-1.31.0'],
    ]);
    expect(templates['fetch-debian'].container.args).toEqual(['fetch', 'https://images.example.org/debian-12.qcow2', '--keyring', '/config/keyring.gpg']);
    expect(templates['fetch-noble'].container.args).toEqual(['fetch', 'https://images.example.org/noble.img', '--checksum', `sha256:${'ab'.repeat(32)}`]);
    expect(templates['fetch-noble'].container.securityContext).toBeUndefined();
    podChecks({ containers: [templates.build.container] }, '{{inputs.parameters.build}}');
  });

  test('the validators do reject a broken manifest (so the checks above can fail)', () => {
    const [, job] = emitJobs(matrix, matrix.builds, options) as any[];
    expect(() => new Job({ ...job, spec: { ...job.spec, backoffLimit: 'none' } }).validate()).toThrow(/backoffLimit/);
    const [, workflow] = emitArgo(matrix, matrix.builds, options) as any[];
    expect(() => new Workflow({ ...workflow, spec: { ...workflow.spec, parallelism: 'many' } }).validate()).toThrow(/parallelism/);
  });

  test('a local base cannot go to a cluster; files above the matrix go in one tree with it, files sharing no directory do not', async () => {
    const text = ['recipe: recipes/node.yaml', 'bases: [images/base.qcow2]'].join('\n');
    const local = parseMatrix(text, join(dir, 'local.yaml')).matrix!;
    expect(() => emitJobs(local, local.builds, options)).toThrow('a cluster build fetches its base by URL; these are local files: base (images/base.qcow2)');
    // recipes/examples/matrix.yaml building ../kubernetes-node.yaml: the ConfigMap holds the tree from their common directory.
    await mkdir(join(dir, 'sub'));
    const aboveText = ['recipe: ../recipes/node.yaml', 'bases: ["https://images.example.org/a.qcow2"]'].join('\n');
    await writeFile(join(dir, 'sub/m.yaml'), aboveText);
    const above = parseMatrix(aboveText, join(dir, 'sub/m.yaml')).matrix!;
    const [map, job] = emitJobs(above, above.builds, options) as any[];
    const items = job.spec.template.spec.volumes.find((v: { name: string }) => v.name === 'config').configMap.items as { key: string; path: string }[];
    expect(items.map((item) => item.path)).toEqual(['recipes/node.yaml', 'recipes/parts/common.yaml', 'sub/m.yaml']);
    expect(Object.keys(map.data).sort()).toEqual(items.map((item) => item.key).sort());
    expect(job.spec.template.spec.containers[0].args.slice(0, 2)).toEqual(['matrix', '/config/sub/m.yaml']);
    // Nothing in common below /: refused, naming them.
    const elsewhere = await mkdtemp('/var/tmp/matrix-elsewhere-');
    try {
      await writeFile(join(elsewhere, 'node.yaml'), 'name: node\nsteps: []\n');
      const apartText = [`recipe: ${join(elsewhere, 'node.yaml')}`, 'bases: ["https://images.example.org/a.qcow2"]'].join('\n');
      await writeFile(join(dir, 'apart.yaml'), apartText);
      const apart = parseMatrix(apartText, join(dir, 'apart.yaml')).matrix!;
      expect(() => emitArgo(apart, apart.builds, options)).toThrow(`a cluster build carries the files its builds read from one directory, and these share none below /: ${join(dir, 'apart.yaml')}, ${join(elsewhere, 'node.yaml')}`);
    } finally {
      await rm(elsewhere, { recursive: true, force: true });
    }
  });

  test('a keyring is carried into the cluster only when it is an OpenPGP public keyring (a matrix naming ~/.ssh/id_rsa would publish it)', async () => {
    await writeFile(join(dir, 'id_rsa'), '-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n');
    const text = ['recipe: recipes/node.yaml', 'bases:', '  - { name: debian, image: "https://images.example.org/d.qcow2", keyring: id_rsa }'].join('\n');
    const matrix = parseMatrix(text, join(dir, 'secret.yaml')).matrix!;
    expect(() => emitJobs(matrix, matrix.builds, options)).toThrow(`${join(dir, 'id_rsa')} is not an OpenPGP public keyring, and a cluster build would carry it into a ConfigMap`);
    expect(() => emitArgo(matrix, matrix.builds, options)).toThrow(/is not an OpenPGP public keyring/);
    expect(isPublicKeyring(Buffer.from('\n-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmQINB\n'))).toBe(true);
    expect(isPublicKeyring(Buffer.from('-----BEGIN PGP PRIVATE KEY BLOCK-----\n'))).toBe(false);
    // An .asc with a comment first, or a byte-order mark: as gpgv takes them. A private block after a public one: not.
    expect(isPublicKeyring(Buffer.from('# the release key\n-----BEGIN PGP PUBLIC KEY BLOCK-----\r\n\r\nmQINB\n'))).toBe(true);
    expect(isPublicKeyring(Buffer.from('\uFEFF-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmQINB\n'))).toBe(true);
    expect(isPublicKeyring(Buffer.from('-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmQINB\n-----END PGP PUBLIC KEY BLOCK-----\n-----BEGIN PGP PRIVATE KEY BLOCK-----\n'))).toBe(false);
    expect(isPublicKeyring(Buffer.from([0xc6, 0x01]))).toBe(true);
    expect(isPublicKeyring(Buffer.concat([Buffer.from([0, 0, 0, 32, 1, 1, 0, 0]), Buffer.from('KBXf')]))).toBe(true);
    expect(isPublicKeyring(Buffer.alloc(0))).toBe(false);
    // A FIFO named as a keyring: refused, not read (readFileSync would wait on it for ever).
    await execa('mkfifo', [join(dir, 'keyring.fifo')]);
    const fifoText = ['recipe: recipes/node.yaml', 'bases:', '  - { name: debian, image: "https://images.example.org/d.qcow2", keyring: keyring.fifo }'].join('\n');
    await writeFile(join(dir, 'fifo.yaml'), fifoText);
    const fifo = parseMatrix(fifoText, join(dir, 'fifo.yaml')).matrix!;
    expect(() => emitJobs(fifo, fifo.builds, options)).toThrow(`${join(dir, 'keyring.fifo')} is not a regular file, so a cluster build does not carry it`);
  });

  test('Kubernetes names: DNS labels, hashed only when shortened or shared', () => {
    const names = kubernetesNames(['Debian_12', 'debian-12', 'a.b', 'x'.repeat(80)]);
    expect(names.get('a.b')).toBe('a-b');
    expect(names.get('Debian_12')).toMatch(/^debian-12-[0-9a-f]{8}$/);
    expect(names.get('debian-12')).toMatch(/^debian-12-[0-9a-f]{8}$/);
    expect(names.get('Debian_12')).not.toBe(names.get('debian-12'));
    expect(names.get('x'.repeat(80))).toHaveLength(63);
  });
});

describe('running a matrix (scheduling, with apply() replaced)', () => {
  let dir: string;
  let matrix: Matrix;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'matrix-run-'));
    await writeFile(join(dir, 'node.yaml'), RECIPE);
    await writeFile(join(dir, 'base.qcow2'), 'not really an image: qemu-img is answered by the recording runner');
    const text = ['recipe: node.yaml', 'bases: [base.qcow2]', 'variables: { kubernetes_version: [1.30.1, 1.30.2, 1.30.3, 1.30.4, 1.30.5] }', 'output: { name: "k8s-{{ kubernetes_version }}", dir: out }'].join('\n');
    matrix = parseMatrix(text, join(dir, 'm.yaml')).matrix!;
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  // qemu-img info of a base runs sandboxed: bwrap … qemu-img info.
  const isProbe = (call: { file: string; args: string[] }) => call.file === 'bwrap' && call.args.includes('qemu-img');
  const qemuImg = () => recordingRunner((call) => (isProbe(call) ? { stdout: JSON.stringify({ format: 'qcow2', 'virtual-size': 1 << 30 }) } : undefined));
  const fakeBuild = (fail: (o: ApplyOptions) => ImageBuilderError | undefined, running: { now: number; max: number }) => async (o: ApplyOptions): Promise<ApplyResult> => {
    running.max = Math.max(running.max, ++running.now);
    try {
      for (let i = 0; i < 5; i++) {
        await new Promise((resolve) => setTimeout(resolve, 10));
        if (o.signal?.aborted) throw o.signal.reason;
      }
      o.log!.info('built');
      const failure = fail(o);
      if (failure) throw failure;
      const output = { path: o.output!, format: 'qcow2', sha256: 'f'.repeat(64) };
      return { output, artifacts: [output], bomPath: `${o.output}.bom.json`, sbomPaths: [], sumsPath: join(o.output!, '..', 'SHA256SUMS'), bom: {} as ApplyResult['bom'] };
    } finally {
      running.now--;
    }
  };

  test('at most --jobs at once, phase 0 once per base, a failure does not stop the others, the first failure gives the exit code', async () => {
    const run = qemuImg();
    const running = { now: 0, max: 0 };
    const lines: string[] = [];
    const result = await runMatrix(matrix, matrix.builds, {
      jobs: 2,
      run,
      write: (text) => void lines.push(text),
      build: fakeBuild((o) => (o.recipeInputs?.set?.kubernetes_version === '1.30.2' ? new ImageBuilderError('STEP_FAILED', 'step 1/1 failed') : undefined), running),
    });
    expect(running.max).toBe(2);
    expect(run.calls.filter(isProbe).length).toBe(1);
    expect(result.bases).toEqual([expect.objectContaining({ name: 'base', source: 'local' })]);
    expect(result.results.map((r) => [r.name, r.status])).toEqual([
      ['k8s-1.30.1', 'succeeded'],
      ['k8s-1.30.2', 'failed'],
      ['k8s-1.30.3', 'succeeded'],
      ['k8s-1.30.4', 'succeeded'],
      ['k8s-1.30.5', 'succeeded'],
    ]);
    expect(result.results[0].output?.path).toBe(join(dir, 'out/k8s-1.30.1/k8s-1.30.1.qcow2'));
    expect(result.results[1].error).toEqual({ code: 'STEP_FAILED', exitCode: 4, message: 'step 1/1 failed' });
    expect(await readFile(join(dir, 'out/k8s-1.30.1/k8s-1.30.1.log'), 'utf8')).toMatch(/recipe node\.yaml, base base\.qcow2, kubernetes_version=1\.30\.1\n.*built\n.*succeeded in/);
    expect(lines.join('')).toMatch(/^\[k8s-1\.30\.2\] \[ *[\d.]+s\] error: failed: error \[STEP_FAILED\]/m);
    const outcome = matrixOutcome(result);
    expect(outcome?.exitCode).toBe(4);
    expect(outcome?.message).toBe('1 of 5 build(s) did not succeed; first: k8s-1.30.2: step 1/1 failed');
    const summary = formatSummary(result, dir).split('\n');
    expect(summary[0]).toMatch(/^BUILD +BASE +VARIABLES +STATUS +DURATION +OUTPUT \(or log\) +SHA256$/);
    expect(summary[1]).toMatch(/^k8s-1\.30\.1 +base +kubernetes_version=1\.30\.1 +succeeded +[\d.]+s +out\/k8s-1\.30\.1\/k8s-1\.30\.1\.qcow2 +ffffffffffffffff$/);
    expect(summary[2]).toMatch(/^k8s-1\.30\.2 +base +kubernetes_version=1\.30\.2 +failed \(STEP_FAILED\) +[\d.]+s +out\/k8s-1\.30\.2\/k8s-1\.30\.2\.log +-$/);
    expect(summary[6]).toMatch(/^4 succeeded, 1 failed in [\d.]+s$/);
  });

  test('--rehash (or --no-cache) reaches every build\'s phase 0: each hashes its base again', async () => {
    for (const rehash of [true, false]) {
      const seen: (boolean | undefined)[] = [];
      const build = fakeBuild(() => undefined, { now: 0, max: 0 });
      await runMatrix(matrix, matrix.builds.slice(0, 2), {
        jobs: 2,
        run: qemuImg(),
        write: () => undefined,
        host: { rehash },
        build: (o) => (seen.push(o.image?.rehash), build(o)),
      });
      expect(seen).toEqual([rehash, rehash]);
    }
  });

  test('--fail-fast cancels the running build and starts no other; an interruption ends as INTERRUPTED', async () => {
    const running = { now: 0, max: 0 };
    const result = await runMatrix(matrix, matrix.builds, {
      jobs: 2,
      failFast: true,
      run: qemuImg(),
      write: () => undefined,
      build: fakeBuild((o) => (o.recipeInputs?.set?.kubernetes_version === '1.30.1' ? new ImageBuilderError('VERIFY_FAILED', 'bad sum') : undefined), running),
    });
    expect(result.results.map((r) => r.status)).toEqual(['failed', expect.stringMatching(/^(succeeded|cancelled)$/), 'cancelled', 'cancelled', 'cancelled']);
    expect(matrixOutcome(result)?.exitCode).toBe(3);

    const controller = new AbortController();
    const interrupted = runMatrix(matrix, matrix.builds, { jobs: 1, run: qemuImg(), write: () => undefined, signal: controller.signal, build: fakeBuild(() => undefined, running) });
    setTimeout(() => controller.abort(new ImageBuilderError('INTERRUPTED', 'interrupted by SIGINT')), 20);
    const stopped = await interrupted;
    expect(stopped.results.every((r) => r.status !== 'failed')).toBe(true);
    expect(stopped.results.at(-1)?.status).toBe('cancelled');
    expect(matrixOutcome(stopped, controller.signal)?.exitCode).toBe(130);
    expect(running.now).toBe(0);
  });
});

test('the emitted YAML is plain (no anchors) and parses back to the same objects', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'matrix-yaml-'));
  try {
    await writeFile(join(dir, 'node.yaml'), RECIPE);
    const text = 'recipe: node.yaml\nbases: ["https://x.example/a.qcow2"]\n';
    await writeFile(join(dir, 'm.yaml'), text);
    const matrix = parseMatrix(text, join(dir, 'm.yaml')).matrix!;
    const manifests = emitJobs(matrix, matrix.builds, { image: 'i', cacheClaim: 'c', artifactsClaim: 'a', cpu: '1', memory: '1Gi', jobs: 1 });
    const yaml = manifestsYaml(manifests);
    expect(yaml).not.toMatch(/[&*]a\d/);
    expect(yaml.split(/^---$/m).map((doc) => parse(doc))).toEqual(JSON.parse(JSON.stringify(manifests)));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

describe('a build\'s log in a shared output directory', () => {
  test('a link or a FIFO another user put at its name is not followed, a directory link not written into; its own log truncated', async () => {
    const out = await mkdtemp(join(tmpdir(), 'matrix-out-'));
    try {
      const target = join(out, 'elsewhere');
      await writeFile(target, 'not yours\n');
      await mkdir(join(out, 'a'));
      await symlink(target, join(out, 'a', 'a.log'));
      await expect(openBuildLog(join(out, 'a'), 'a.log')).rejects.toThrow(`${join(out, 'a', 'a.log')} is not a directory or file of this user's`);
      await mkdir(join(out, 'b'));
      await execa('mkfifo', [join(out, 'b', 'b.log')]);
      await expect(openBuildLog(join(out, 'b'), 'b.log')).rejects.toThrow(/b\.log is not a directory or file of this user's/);
      await mkdir(join(out, 'real'));
      await symlink(join(out, 'real'), join(out, 'c'));
      await expect(openBuildLog(join(out, 'c'), 'c.log')).rejects.toThrow(`${join(out, 'c')} is not a directory or file of this user's`);
      expect(await readFile(target, 'utf8')).toBe('not yours\n');
      await mkdir(join(out, 'd'));
      await writeFile(join(out, 'd', 'd.log'), 'an earlier run, longer than this one\n');
      const log = await openBuildLog(join(out, 'd'), 'd.log');
      await new Promise<void>((resolve) => log.end('this run\n', resolve));
      expect(await readFile(join(out, 'd', 'd.log'), 'utf8')).toBe('this run\n');
    } finally {
      await rm(out, { recursive: true, force: true });
    }
  });
});

describe('recipes/examples/matrix.yaml, as shipped', () => {
  const path = new URL('../../recipes/examples/matrix.yaml', import.meta.url).pathname;
  test('the supported series x Debian 12 and 13 x amd64 and arm64; every build a valid node recipe; emitted as valid Jobs and an Argo Workflow', async () => {
    const { parseRecipe } = await import('../../src/recipe/load.js');
    const text = await readFile(path, 'utf8');
    const { matrix, problems } = parseMatrix(text, path);
    expect(problems).toEqual([]);
    const recipe = parse(await readFile(new URL('../../recipes/kubernetes-node.yaml', import.meta.url), 'utf8'));
    const series = Object.keys(recipe.tables.kubernetes_release.rows);
    const builds = matrix!.builds;
    expect(builds).toHaveLength(series.length * 4);
    expect(new Set(builds.map((b) => b.variables.kubernetes_version.split('.').slice(0, 2).join('.')))).toEqual(new Set(series));
    expect(new Set(builds.map((b) => b.base.name))).toEqual(new Set(['debian-12-amd64', 'debian-13-amd64', 'debian-12-arm64', 'debian-13-arm64']));
    for (const build of builds) {
      expect(build.variables.arch ?? 'amd64').toBe(build.base.name.endsWith('arm64') ? 'arm64' : 'amd64');
      const parsed = parseRecipe(readFileSync(build.recipe.path, 'utf8'), build.recipe.path, { set: build.variables });
      expect({ build: build.name, problems: parsed.problems }).toEqual({ build: build.name, problems: [] });
    }
    const options: EmitOptions = { image: 'registry.example.org/imagebuilder:0.1.0', cacheClaim: 'ib-cache', artifactsClaim: 'ib-images', cpu: '2', memory: '4Gi', jobs: 2 };
    const [map, ...jobs] = emitJobs(matrix!, builds, options) as any[];
    new ConfigMap(map).validate();
    for (const job of jobs) new Job(job).validate();
    expect(jobs).toHaveLength(builds.length);
    const [, workflow] = emitArgo(matrix!, builds, options) as any[];
    new Workflow(workflow).validate();
  });
});
