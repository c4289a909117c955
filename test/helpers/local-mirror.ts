import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { chmod, copyFile, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { execa } from 'execa';
import { FIXTURE_CACHE } from './fixtures.js';
import { cachedFixture, serveDirectory } from './static-server.js';

/**
 * A local stand-in for the upstream sources a Kubernetes node recipe uses, served on 127.0.0.1 (the chroot
 * shares the host's network namespace, so apt inside the guest reaches it too):
 *
 *   /core:/stable:/v1.30/deb/            a flat apt repository laid out like pkgs.k8s.io, signed (InRelease,
 *                                        Release.gpg) by a throwaway key whose armored public half is Release.key
 *   /containerd/containerd/releases/download/v1.7.20/containerd-1.7.20-linux-amd64.tar.gz{,.sha256sum}
 *   /opencontainers/runc/releases/download/v1.1.13/{runc.amd64,runc.sha256sum}
 *   /kubernetes-sigs/cri-tools/releases/download/v1.30.0/crictl-v1.30.0-linux-amd64.tar.gz{,.sha256}
 *   /containernetworking/plugins/releases/download/v1.5.1/cni-plugins-linux-amd64-v1.5.1.tgz{,.sha256}
 *   /containerd/containerd/v1.7.20/containerd.service   (raw.githubusercontent.com's layout)
 *
 * Checksum files have the names and forms upstream publishes: containerd `NAME.sha256sum` and runc
 * `runc.sha256sum` as `hash  name` lines, cri-tools `NAME.sha256` as a bare hash, CNI plugins `NAME.sha256`
 * as `hash  name`. The packages are tiny (a shell script each) with the dependencies upstream declares for
 * 1.30 that stay inside this repository or that Debian's minbase satisfies (mount, util-linux); containerd
 * and runc binaries are Debian's own (`apt-get download containerd runc`), repackaged the way upstream packs.
 *
 * Built once into FIXTURE_CACHE/mirror-<hash of this file>/ (so changing the builder rebuilds it) and only
 * ever read afterwards. Host tools: gpg (+ gpg-agent), apt-ftparchive (apt-utils), dpkg-deb, tar: bin/setup.
 */

export const MIRROR_PACKAGES: Record<string, string[]> = {
  kubelet: ['1.30.1-1.1', '1.30.2-1.1'],
  kubeadm: ['1.30.1-1.1', '1.30.2-1.1'],
  kubectl: ['1.30.1-1.1', '1.30.2-1.1'],
  'cri-tools': ['1.30.0-1.1'],
  'kubernetes-cni': ['1.4.0-1.1'],
};

export const MIRROR_RELEASES = { containerd: '1.7.20', runc: '1.1.13', crictl: '1.30.0', cniPlugins: '1.5.1' } as const;

/** The apt repository's path under the mirror's URL, as on pkgs.k8s.io. */
export const APT_PATH = '/core:/stable:/v1.30/deb/';

export interface MirrorArtifact {
  url: string;
  /** The upstream checksum file beside it. */
  checksumUrl: string;
  sha256: string;
}

export interface LocalMirror {
  /** http://127.0.0.1:PORT (no trailing slash). */
  url: string;
  /** The flat apt repository: `deb [signed-by=…] ${aptUrl} /`. */
  aptUrl: string;
  /** The armored public key (Release.key) and its full fingerprint (40 upper-case hex digits). */
  keyUrl: string;
  keyFingerprint: string;
  key: string;
  /** Package name → the versions the apt repository offers, oldest first. */
  versions: Record<string, string[]>;
  releases: typeof MIRROR_RELEASES;
  files: {
    containerd: MirrorArtifact;
    runc: MirrorArtifact;
    crictl: MirrorArtifact;
    cniPlugins: MirrorArtifact;
    containerdService: { url: string; sha256: string };
  };
  /** Every request path served so far (decoded), in order: proof that a build really used the mirror. */
  requests: string[];
  /** The cached tree being served. */
  dir: string;
  close(): Promise<void>;
}

interface Manifest {
  keyFingerprint: string;
  sha256: Record<string, string>;
}

const BUILDER = fileURLToPath(import.meta.url);

const ARTIFACT_PATHS = {
  containerd: {
    path: `/containerd/containerd/releases/download/v${MIRROR_RELEASES.containerd}/containerd-${MIRROR_RELEASES.containerd}-linux-amd64.tar.gz`,
    checksum: `/containerd/containerd/releases/download/v${MIRROR_RELEASES.containerd}/containerd-${MIRROR_RELEASES.containerd}-linux-amd64.tar.gz.sha256sum`,
  },
  runc: {
    path: `/opencontainers/runc/releases/download/v${MIRROR_RELEASES.runc}/runc.amd64`,
    checksum: `/opencontainers/runc/releases/download/v${MIRROR_RELEASES.runc}/runc.sha256sum`,
  },
  crictl: {
    path: `/kubernetes-sigs/cri-tools/releases/download/v${MIRROR_RELEASES.crictl}/crictl-v${MIRROR_RELEASES.crictl}-linux-amd64.tar.gz`,
    checksum: `/kubernetes-sigs/cri-tools/releases/download/v${MIRROR_RELEASES.crictl}/crictl-v${MIRROR_RELEASES.crictl}-linux-amd64.tar.gz.sha256`,
  },
  cniPlugins: {
    path: `/containernetworking/plugins/releases/download/v${MIRROR_RELEASES.cniPlugins}/cni-plugins-linux-amd64-v${MIRROR_RELEASES.cniPlugins}.tgz`,
    checksum: `/containernetworking/plugins/releases/download/v${MIRROR_RELEASES.cniPlugins}/cni-plugins-linux-amd64-v${MIRROR_RELEASES.cniPlugins}.tgz.sha256`,
  },
} as const;

const CONTAINERD_SERVICE_PATH = `/containerd/containerd/v${MIRROR_RELEASES.containerd}/containerd.service`;

/** containerd's own unit file as the v1.7 branch ships it (containerd.service at the repository root). */
const CONTAINERD_SERVICE = `# Copyright The containerd Authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

[Unit]
Description=containerd container runtime
Documentation=https://containerd.io
After=network.target local-fs.target

[Service]
ExecStartPre=-/sbin/modprobe overlay
ExecStart=/usr/local/bin/containerd

Type=notify
Delegate=yes
KillMode=process
Restart=always
RestartSec=5

# Having non-zero Limit*s causes performance problems due to accounting overhead
# in the kernel. We recommend using cgroups to do container-local accounting.
LimitNPROC=infinity
LimitCORE=infinity

# Comment TasksMax if your systemd version does not supports it.
# Only systemd 226 and above support this version.
TasksMax=infinity
OOMScoreAdjust=-999

[Install]
WantedBy=multi-user.target
`;

/** What upstream's 1.30 packages declare (kubernetes/release, cmd/krel/templates/latest), minus what needs Debian's mirror. */
function controlFields(name: string, version: string): Record<string, string> {
  const upstream = version.replace(/-[^-]*$/, '');
  const common = { Package: name, Version: version, Architecture: 'amd64', Maintainer: 'Kubernetes Authors <dev@kubernetes.io>', Homepage: 'https://kubernetes.io' };
  switch (name) {
    case 'kubelet':
      return { ...common, Section: 'net', Priority: 'optional', Depends: 'kubernetes-cni (>= 1.2.0), mount, util-linux', Recommends: 'iptables (>= 1.8.4)', Description: `Node agent for Kubernetes clusters (test build of ${upstream})` };
    case 'kubeadm':
      return { ...common, Section: 'admin', Priority: 'optional', Depends: 'cri-tools (>= 1.30.0)', Description: `Command-line utility for administering a Kubernetes cluster (test build of ${upstream})` };
    case 'kubectl':
      return { ...common, Section: 'admin', Priority: 'optional', Description: `Command-line utility for interacting with a Kubernetes cluster (test build of ${upstream})` };
    case 'cri-tools':
      return { ...common, Section: 'admin', Priority: 'optional', Description: `Command-line utility for interacting with a container runtime (test build of ${upstream})` };
    case 'kubernetes-cni':
      return { ...common, Section: 'net', Priority: 'optional', Description: `Binaries required to provision kubernetes container networking (test build of ${upstream})` };
    default:
      throw new Error(`no control fields for ${name}`);
  }
}

const KUBELET_SERVICE = `[Unit]
Description=kubelet: The Kubernetes Node Agent
Documentation=https://kubernetes.io/docs/
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=/usr/bin/kubelet
Restart=always
StartLimitInterval=0
RestartSec=10

[Install]
WantedBy=multi-user.target
`;

const KUBEADM_DROP_IN = `[Service]
Environment="KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf"
Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"
ExecStart=
ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS
`;

/** The files each package installs: a script per program that prints what it is (and unit files). */
function packageFiles(name: string, version: string): Record<string, string> {
  const upstream = version.replace(/-[^-]*$/, '');
  const script = (program: string) => `#!/bin/sh\necho "${program} v${upstream} (imagebuilder test mirror)"\n`;
  switch (name) {
    case 'kubernetes-cni':
      return Object.fromEntries(['bridge', 'host-local', 'loopback', 'portmap'].map((plugin) => [`opt/cni/bin/${plugin}`, script(plugin)]));
    case 'cri-tools':
      return { 'usr/bin/crictl': script('crictl') };
    // As upstream's packages: kubelet ships its unit, kubeadm the drop-in that points it at kubeadm's config.
    case 'kubelet':
      return { 'usr/bin/kubelet': script('kubelet'), 'usr/lib/systemd/system/kubelet.service': KUBELET_SERVICE };
    case 'kubeadm':
      return { 'usr/bin/kubeadm': script('kubeadm'), 'usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf': KUBEADM_DROP_IN };
    default:
      return { [`usr/bin/${name}`]: script(name) };
  }
}

async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

async function writeExecutable(path: string, content: string | Buffer) {
  await mkdir(join(path, '..'), { recursive: true });
  await writeFile(path, content);
  await chmod(path, 0o755);
}

/** tar with root as owner and a fixed mtime, gzip-compressed, of `entries` relative to `dir`. */
async function tarGz(out: string, dir: string, entries: string[]) {
  await execa('tar', ['--owner=0', '--group=0', '--numeric-owner', '--mtime=@1700000000', '--sort=name', '-czf', out, '-C', dir, ...entries]);
}

async function buildMirror(build: string): Promise<void> {
  const root = join(build, 'root');
  const work = join(build, 'work');
  const gnupgHome = await mkdtemp('/tmp/ib-mirror-gnupg-');
  const gpgEnv = { GNUPGHOME: gnupgHome };
  const gpg = (args: string[], input?: string) => execa('gpg', ['--batch', '--no-tty', ...args], { env: gpgEnv, input });
  try {
    await mkdir(work, { recursive: true });
    await chmod(gnupgHome, 0o700);

    // A throwaway signing key: no passphrase, never leaves this build except as its public half.
    await gpg(['--gen-key'], ['%no-protection', 'Key-Type: EDDSA', 'Key-Curve: ed25519', 'Key-Usage: sign', 'Name-Real: imagebuilder test mirror', 'Name-Email: mirror@imagebuilder.invalid', 'Expire-Date: 0', '%commit', ''].join('\n'));
    const colons = (await gpg(['--with-colons', '--list-keys'])).stdout;
    const fingerprint = /^fpr:+([0-9A-F]{40}):/m.exec(colons)?.[1];
    if (!fingerprint) throw new Error(`no fingerprint in gpg output:\n${colons}`);

    // The apt repository.
    const repo = join(root, ...APT_PATH.split('/').filter(Boolean));
    await mkdir(join(repo, 'amd64'), { recursive: true });
    for (const [name, versions] of Object.entries(MIRROR_PACKAGES)) {
      for (const version of versions) {
        const tree = join(work, 'pkg', `${name}_${version}`);
        for (const [path, content] of Object.entries(packageFiles(name, version))) {
          await writeExecutable(join(tree, path), content);
          if (path.includes('/systemd/')) await chmod(join(tree, path), 0o644);
        }
        const control = Object.entries(controlFields(name, version)).map(([key, value]) => `${key}: ${value}`).join('\n');
        await mkdir(join(tree, 'DEBIAN'), { recursive: true });
        await writeFile(join(tree, 'DEBIAN/control'), `${control}\n`);
        await execa('dpkg-deb', ['--root-owner-group', '-Zgzip', '--build', tree, join(repo, 'amd64', `${name}_${version}_amd64.deb`)], { env: { SOURCE_DATE_EPOCH: '1700000000' } });
      }
    }
    const packages = (await execa('apt-ftparchive', ['packages', 'amd64'], { cwd: repo })).stdout;
    await writeFile(join(repo, 'Packages'), `${packages.trimEnd()}\n`);
    await writeFile(join(repo, 'Packages.gz'), gzipSync(await readFile(join(repo, 'Packages'))));
    const release = (
      await execa(
        'apt-ftparchive',
        [
          '-o', 'APT::FTPArchive::Release::Origin=imagebuilder test mirror of pkgs.k8s.io',
          '-o', 'APT::FTPArchive::Release::Label=deb',
          '-o', 'APT::FTPArchive::Release::Architectures=amd64',
          '-o', 'APT::FTPArchive::Release::Description=core:stable:v1.30 (test)',
          'release', '.',
        ],
        { cwd: repo },
      )
    ).stdout;
    await writeFile(join(repo, 'Release'), `${release.trimEnd()}\n`);
    await gpg(['--local-user', fingerprint, '--clearsign', '--output', join(repo, 'InRelease'), join(repo, 'Release')]);
    await gpg(['--local-user', fingerprint, '--detach-sign', '--armor', '--output', join(repo, 'Release.gpg'), join(repo, 'Release')]);
    await writeFile(join(repo, 'Release.key'), (await gpg(['--export', '--armor', fingerprint])).stdout + '\n');

    // Debian's containerd and runc binaries, repackaged as upstream's release artifacts.
    const debs = join(work, 'debs');
    await mkdir(debs, { recursive: true });
    const download = () => execa('apt-get', ['download', '-q', '-o', 'APT::Sandbox::User=root', 'containerd', 'runc'], { cwd: debs });
    await download().catch(async () => {
      // The host's package lists may be missing (a fresh container): fetch them, then try once more.
      await execa('apt-get', ['update', '-qq']);
      await download();
    });
    for (const deb of (await readdir(debs)).filter((n) => n.endsWith('.deb'))) await execa('dpkg-deb', ['-x', join(debs, deb), join(work, 'extracted')]);
    const extracted = join(work, 'extracted');
    const sha256: Record<string, string> = {};

    const containerdStage = join(work, 'containerd');
    for (const program of ['containerd', 'containerd-shim-runc-v2', 'ctr']) {
      await writeExecutable(join(containerdStage, 'bin', program), await readFile(join(extracted, 'usr/bin', program)));
    }
    const containerd = join(root, ARTIFACT_PATHS.containerd.path);
    await mkdir(join(containerd, '..'), { recursive: true });
    await tarGz(containerd, containerdStage, ['bin']);

    const runc = join(root, ARTIFACT_PATHS.runc.path);
    await mkdir(join(runc, '..'), { recursive: true });
    await copyFile(join(extracted, 'usr/sbin/runc'), runc);
    await chmod(runc, 0o755);

    const crictlStage = join(work, 'crictl');
    await writeExecutable(join(crictlStage, 'crictl'), `#!/bin/sh\necho "crictl version v${MIRROR_RELEASES.crictl} (imagebuilder test mirror)"\n`);
    const crictl = join(root, ARTIFACT_PATHS.crictl.path);
    await mkdir(join(crictl, '..'), { recursive: true });
    await tarGz(crictl, crictlStage, ['crictl']);

    const cniStage = join(work, 'cni');
    for (const plugin of ['bridge', 'host-local', 'loopback', 'portmap']) {
      await writeExecutable(join(cniStage, plugin), `#!/bin/sh\necho "CNI ${plugin} plugin v${MIRROR_RELEASES.cniPlugins} (imagebuilder test mirror)"\n`);
    }
    await writeFile(join(cniStage, 'LICENSE'), 'Apache License 2.0 (test stand-in)\n');
    const cni = join(root, ARTIFACT_PATHS.cniPlugins.path);
    await mkdir(join(cni, '..'), { recursive: true });
    // Upstream's archive lists its entries as ./bridge, ./host-local …
    await tarGz(cni, cniStage, ['./LICENSE', './bridge', './host-local', './loopback', './portmap']);

    for (const [key, { path }] of Object.entries(ARTIFACT_PATHS)) sha256[key] = await sha256File(join(root, path));
    const base = (path: string) => path.slice(path.lastIndexOf('/') + 1);
    await writeFile(join(root, ARTIFACT_PATHS.containerd.checksum), `${sha256.containerd}  ${base(ARTIFACT_PATHS.containerd.path)}\n`);
    await writeFile(join(root, ARTIFACT_PATHS.runc.checksum), `${sha256.runc}  ${base(ARTIFACT_PATHS.runc.path)}\n`);
    await writeFile(join(root, ARTIFACT_PATHS.crictl.checksum), `${sha256.crictl}\n`);
    await writeFile(join(root, ARTIFACT_PATHS.cniPlugins.checksum), `${sha256.cniPlugins}  ${base(ARTIFACT_PATHS.cniPlugins.path)}\n`);

    const service = join(root, CONTAINERD_SERVICE_PATH);
    await mkdir(join(service, '..'), { recursive: true });
    await writeFile(service, CONTAINERD_SERVICE);
    sha256.containerdService = createHash('sha256').update(CONTAINERD_SERVICE).digest('hex');

    await rm(work, { recursive: true, force: true });
    const manifest: Manifest = { keyFingerprint: fingerprint, sha256 };
    await writeFile(join(build, 'manifest.json'), `${JSON.stringify(manifest, null, 2)}\n`);
  } finally {
    // The agent gpg started for this home directory (only ours: it is keyed by the directory).
    await execa('gpgconf', ['--kill', 'gpg-agent'], { env: gpgEnv, reject: false });
    await rm(gnupgHome, { recursive: true, force: true });
  }
}

/** The cached tree, built on first use. */
export const mirrorDirectory = cachedFixture('mirror', BUILDER, buildMirror);

/** Builds (once) and serves the mirror on 127.0.0.1 at a random port. */
export async function startLocalMirror(): Promise<LocalMirror> {
  const dir = await mirrorDirectory();
  const manifest = JSON.parse(await readFile(join(dir, 'manifest.json'), 'utf8')) as Manifest;
  const root = join(dir, 'root');
  const server = await serveDirectory(root);
  const { url, requests } = server;
  const artifact = (key: keyof typeof ARTIFACT_PATHS): MirrorArtifact => ({
    url: `${url}${ARTIFACT_PATHS[key].path}`,
    checksumUrl: `${url}${ARTIFACT_PATHS[key].checksum}`,
    sha256: manifest.sha256[key],
  });
  const aptUrl = `${url}${APT_PATH}`;
  return {
    url,
    aptUrl,
    keyUrl: `${aptUrl}Release.key`,
    keyFingerprint: manifest.keyFingerprint,
    key: await readFile(join(root, APT_PATH, 'Release.key'), 'utf8'),
    versions: MIRROR_PACKAGES,
    releases: MIRROR_RELEASES,
    files: {
      containerd: artifact('containerd'),
      runc: artifact('runc'),
      crictl: artifact('crictl'),
      cniPlugins: artifact('cniPlugins'),
      containerdService: { url: `${url}${CONTAINERD_SERVICE_PATH}`, sha256: manifest.sha256.containerdService },
    },
    requests,
    dir,
    close: server.close,
  };
}
