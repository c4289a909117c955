import { componentPurl, NODE_COMPONENTS, upstreamVersion, versionIn } from '../../src/bom/components.js';

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
});
