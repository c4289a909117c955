import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { componentPurl, NODE_COMPONENTS, readComponents, upstreamVersion, versionIn } from '../../src/bom/components.js';
import { fakeSession } from '../helpers/fake-session.js';

const spec = (name: string) => NODE_COMPONENTS.find((c) => c.name === name)!;

describe('node components', () => {
  test('the version in what each binary prints', () => {
    expect(versionIn('Kubernetes v1.30.1')).toBe('1.30.1');
    expect(versionIn('Client Version: v1.31.0\nKustomize Version: v5.4.2')).toBe('1.31.0');
    expect(versionIn('containerd github.com/containerd/containerd v1.7.20 8fc6bcff51318944179630522a095cc9dbf9f353')).toBe('1.7.20');
    expect(versionIn('containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+b1')).toBe('1.6.20~ds1');
    expect(versionIn('runc version 1.1.13\ncommit: v1.1.13-0-g58aa9203\nspec: 1.0.2-dev\ngo: go1.22.5')).toBe('1.1.13');
    expect(versionIn('crictl version v1.30.0')).toBe('1.30.0');
    expect(versionIn('CNI loopback plugin v1.5.1\nCNI protocol versions supported: 0.1.0, 0.2.0')).toBe('1.5.1');
    expect(versionIn('no version here')).toBeUndefined();
  });
  test("a package's upstream version: epoch and revision dropped", () => {
    expect(upstreamVersion('1.30.1-1.1')).toBe('1.30.1');
    expect(upstreamVersion('1:1.6.20~ds1-1+b1')).toBe('1.6.20~ds1');
    expect(upstreamVersion('1.30.1')).toBe('1.30.1');
  });
  test('golang purls of the upstream projects, the command as subpath, containerd 2 as its own module', () => {
    expect(componentPurl(spec('kubelet'), '1.30.1')).toBe('pkg:golang/k8s.io/kubernetes@v1.30.1#cmd/kubelet');
    expect(componentPurl(spec('containerd'), '1.7.20')).toBe('pkg:golang/github.com/containerd/containerd@v1.7.20');
    expect(componentPurl(spec('containerd'), '2.0.1')).toBe('pkg:golang/github.com/containerd/containerd/v2@v2.0.1');
    expect(componentPurl(spec('containerd'), '1.6.20~ds1')).toBe('pkg:golang/github.com/containerd/containerd@v1.6.20');
    expect(componentPurl(spec('runc'), '1.1.13')).toBe('pkg:golang/github.com/opencontainers/runc@v1.1.13');
    expect(componentPurl(spec('crictl'), '1.30.0')).toBe('pkg:golang/sigs.k8s.io/cri-tools@v1.30.0#cmd/crictl');
    expect(componentPurl(spec('cni-plugins'), '1.5')).toBe('pkg:golang/github.com/containernetworking/plugins@v1.5.0');
  });

  test('only the components with a binary in the guest are asked, each answer read as its own; the others from their package, or left out', async () => {
    const root = await mkdtemp(join(tmpdir(), 'ib-components-'));
    try {
      await mkdir(join(root, 'usr/bin'), { recursive: true });
      for (const binary of ['runc', 'containerd']) await writeFile(join(root, 'usr/bin', binary), '');
      const answers: Record<string, string> = {
        containerd: '/usr/bin/containerd\ncontainerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+b1',
        runc: '/usr/bin/runc\nrunc version 1.1.5+ds1\ncommit: unknown',
      };
      const scripts: string[] = [];
      const { session } = fakeSession((call) => {
        const script = call.argv[2];
        scripts.push(script);
        const nonce = /@@imagebuilder-probe-([0-9a-f]+)/.exec(script)![1];
        // Each probe's own output, in the order they were asked: as the guest's shell prints it.
        const probes = script.split('\n').filter((line) => line.startsWith('out=$( ('));
        const stdout = probes
          .map((probe, index) => {
            const binary = /\/usr\/bin\/(containerd|runc)\b/.exec(probe)![1];
            return `\n@@imagebuilder-probe-${nonce} ${index} 0 ${Buffer.from(answers[binary]).toString('base64')}\n`;
          })
          .join('');
        return { stdout };
      }, root);
      const packages = [{ name: 'kubelet', version: '1.36.2-1.1', architecture: 'amd64', source: 'kubernetes' }];
      const found = await readComponents(root, async () => session, packages);
      expect(scripts).toHaveLength(1);
      expect(scripts[0].split('\n').filter((line) => line.startsWith('out=$( ('))).toHaveLength(2);
      expect(found).toEqual([
        { name: 'containerd', version: '1.6.20~ds1', purl: 'pkg:golang/github.com/containerd/containerd@v1.6.20', source: '/usr/bin/containerd' },
        { name: 'kubelet', version: '1.36.2-1.1', purl: 'pkg:golang/k8s.io/kubernetes@v1.36.2#cmd/kubelet', source: 'package kubelet' },
        { name: 'runc', version: '1.1.5+ds1', purl: 'pkg:golang/github.com/opencontainers/runc@v1.1.5', source: '/usr/bin/runc' },
      ]);
      // No binary at all: no guest command.
      const empty = await mkdtemp(join(tmpdir(), 'ib-components-'));
      expect(await readComponents(empty, async () => { throw new Error('no session wanted'); }, [])).toEqual([]);
      await rm(empty, { recursive: true, force: true });
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });
});
