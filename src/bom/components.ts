import { randomBytes } from 'node:crypto';
import { batchScript, parseBatchOutput } from '../checks/run.js';
import type { ChrootSession } from '../chroot/session.js';
import type { InstalledPackage } from '../pkg/types.js';
import { shellQuote } from '../util/exec.js';
import { readGuestThrough, statGuest } from '../util/guest-fs.js';
import { formatPurl } from './purl.js';

/**
 * The node's own components, named as their projects name them: which Kubernetes, containerd, runc, CNI plugins
 * and crictl the image actually holds (see readComponents for where each version is read).
 */
export interface NodeComponent {
  name: string;
  /** As the package or the binary says it: `1.30.1-1.1`, `v1.7.20`, `1.6.20~ds1-1+b1`. */
  version: string;
  /** pkg:golang/<module>@v<upstream version>[#<command>]: the upstream project, whatever packaged it. */
  purl: string;
  /** Where the version was read: `package NAME` or the binary's guest path. */
  source: string;
}

interface ComponentSpec {
  name: string;
  /** Packages that provide it (deb and rpm names). */
  packages: string[];
  /** The binary to ask, found in the first of these directories that has it, and how. */
  binary: string;
  directories: string[];
  args: string[];
  module: (major: number) => string;
  command?: string;
}

const BIN_DIRS = ['/usr/local/bin', '/usr/local/sbin', '/usr/bin', '/usr/sbin'];
const kubernetes = () => 'k8s.io/kubernetes';

export const NODE_COMPONENTS: ComponentSpec[] = [
  { name: 'kubelet', packages: ['kubelet'], binary: 'kubelet', directories: BIN_DIRS, args: ['--version'], module: kubernetes, command: 'cmd/kubelet' },
  { name: 'kubeadm', packages: ['kubeadm'], binary: 'kubeadm', directories: BIN_DIRS, args: ['version', '-o', 'short'], module: kubernetes, command: 'cmd/kubeadm' },
  { name: 'kubectl', packages: ['kubectl'], binary: 'kubectl', directories: BIN_DIRS, args: ['version', '--client'], module: kubernetes, command: 'cmd/kubectl' },
  // containerd 2 is a new Go module major version (github.com/containerd/containerd/v2).
  { name: 'containerd', packages: ['containerd', 'containerd.io'], binary: 'containerd', directories: BIN_DIRS, args: ['--version'], module: (major) => `github.com/containerd/containerd${major >= 2 ? `/v${major}` : ''}` },
  { name: 'runc', packages: ['runc'], binary: 'runc', directories: BIN_DIRS, args: ['--version'], module: () => 'github.com/opencontainers/runc' },
  { name: 'crictl', packages: ['cri-tools'], binary: 'crictl', directories: BIN_DIRS, args: ['--version'], module: () => 'sigs.k8s.io/cri-tools', command: 'cmd/crictl' },
  // A CNI plugin run with no CNI_COMMAND prints its "about" line: "CNI loopback plugin v1.5.1".
  { name: 'cni-plugins', packages: ['kubernetes-cni', 'containernetworking-plugins'], binary: 'loopback', directories: ['/opt/cni/bin', '/usr/lib/cni', '/usr/libexec/cni'], args: [], module: () => 'github.com/containernetworking/plugins' },
];

/** The first version-looking word of a program's output: `Kubernetes v1.30.1` → 1.30.1, `runc version 1.1.13` → 1.1.13. */
export function versionIn(output: string): string | undefined {
  return /(?:^|[\s:])v?(\d+\.\d+(?:\.\d+)?(?:[-~+][0-9A-Za-z.~+]*)?)(?=\s|$)/m.exec(output)?.[1];
}

/** A packaged version's upstream part: epoch and distribution revision dropped (`1:1.30.1-1.1` → 1.30.1). */
export function upstreamVersion(packaged: string): string {
  const noEpoch = packaged.replace(/^\d+:/, '');
  const dash = noEpoch.lastIndexOf('-');
  return dash > 0 ? noEpoch.slice(0, dash) : noEpoch;
}

/** The golang purl of a component at an upstream version: its Go module, `v` and the release's x.y.z. */
export function componentPurl(spec: Pick<ComponentSpec, 'module' | 'command'>, upstream: string): string {
  const core = /^(\d+)\.(\d+)(?:\.(\d+))?/.exec(upstream);
  const version = core ? `v${core[1]}.${core[2]}.${core[3] ?? '0'}` : upstream;
  const module = spec.module(core ? Number(core[1]) : 0);
  const slash = module.lastIndexOf('/');
  return `${formatPurl({ type: 'golang', namespace: module.slice(0, slash), name: module.slice(slash + 1), version })}${spec.command ? `#${spec.command}` : ''}`;
}

/** The probe asking one component's binary: the first directory that has it, its output's first lines, 10 s at most. */
function binaryProbe(spec: ComponentSpec): string {
  const candidates = spec.directories.map((dir) => shellQuote(`${dir}/${spec.binary}`)).join(' ');
  const args = spec.args.map(shellQuote).join(' ');
  return `for b in ${candidates}; do if [ -f "$b" ] && [ -x "$b" ]; then echo "$b"; timeout 10 "$b" ${args} </dev/null 2>&1 | head -n 5; exit 0; fi; done; exit 3`;
}

/** The most of one component's binary read ahead (containerd is ~50 MB). */
const WARM_BYTES = 128 << 20;

/**
 * Reads each component's first binary through once from the host (readGuestThrough: links resolved inside the
 * guest, regular files only, bounded), so its probe finds it in the page cache: through the layer chain,
 * containerd's `--version` took ~70 ms cold, ~20 ms warm. Started while the last step runs; a binary that step
 * replaces is paged in by the probe as before. Never fails: it only saves time.
 */
export async function warmNodeComponents(root: string, signal?: AbortSignal): Promise<void> {
  for (const spec of NODE_COMPONENTS) {
    for (const dir of spec.directories) {
      if (await readGuestThrough(root, `${dir}/${spec.binary}`, WARM_BYTES, signal).catch(() => false)) break;
    }
  }
}

/**
 * Reads the node's components from the finished guest: each one's binary, found where a shell's PATH would find
 * it first (/usr/local before /usr: a release tarball's over a package's), asked for its version, all in one
 * guest command in the sandbox (no network, read-only root, as checks run); where no binary answers, the
 * package that provides it, from `packages` (the guest's package database, read already). A component the
 * image does not hold is left out.
 */
export async function readComponents(root: string, session: () => Promise<ChrootSession>, packages: InstalledPackage[], signal?: AbortSignal): Promise<NodeComponent[]> {
  const nonce = randomBytes(8).toString('hex');
  // Only the components with a candidate binary there are asked, and no guest command runs when none has one
  // (an image that is no node; each probe costs a few guest processes): any entry counts, links included (lstat,
  // never followed from the host); the guest's shell decides what runs.
  const present = await Promise.all(NODE_COMPONENTS.map(async (spec) => (await Promise.all(spec.directories.map((dir) => statGuest(root, `${dir}/${spec.binary}`)))).some(Boolean)));
  const asked = NODE_COMPONENTS.filter((_, index) => present[index]);
  let outputs = new Map<number, { exitCode: number; stdout: string }>();
  if (asked.length) {
    const probes = asked.map((spec) => ({ attribute: 'version', script: binaryProbe(spec), boot: false, judge: () => ({ passed: true, observed: '', expected: '' }) }));
    const result = await (await session()).exec(['/bin/sh', '-c', batchScript(probes, nonce)], { allowFailure: true, needsNoNetwork: true, readOnlyRoot: true, timeoutMs: 120_000, signal, purpose: "reading the node components' versions" });
    outputs = parseBatchOutput(result.stdout, nonce);
  }
  const found: NodeComponent[] = [];
  NODE_COMPONENTS.forEach((spec) => {
    const output = outputs.get(asked.indexOf(spec));
    const [path, ...rest] = output?.exitCode === 0 ? output.stdout.split('\n') : [];
    const version = path ? versionIn(rest.join('\n')) : undefined;
    if (version) {
      found.push({ name: spec.name, version, purl: componentPurl(spec, version), source: path });
      return;
    }
    const pkg = packages.find((p) => spec.packages.includes(p.name));
    if (pkg) found.push({ name: spec.name, version: pkg.version, purl: componentPurl(spec, upstreamVersion(pkg.version)), source: `package ${pkg.name}` });
  });
  return found.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}
