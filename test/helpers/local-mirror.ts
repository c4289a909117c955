import { createHash } from 'node:crypto';
import { createReadStream, readFileSync } from 'node:fs';
import { chmod, copyFile, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { execa } from 'execa';
import { parse as parseYaml } from 'yaml';
import { FIXTURE_CACHE } from './fixtures.js';
import { cachedFixture, serveDirectory } from './static-server.js';

/**
 * A local stand-in for the upstream sources a Kubernetes node recipe uses, served on 127.0.0.1 (the chroot
 * shares the host's network namespace, so apt inside the guest reaches it too), for every Kubernetes series the
 * shipped recipes/kubernetes-node.yaml supports, at the versions its table (`tables: kubernetes_release`) names:
 *
 *   /core:/stable:/v1.NN/deb/            a flat apt repository laid out like pkgs.k8s.io, signed (InRelease,
 *                                        Release.gpg) by a throwaway key whose armored public half is Release.key:
 *                                        kubelet/kubeadm/kubectl at the series' newest patch and the one before,
 *                                        cri-tools and kubernetes-cni at the table's versions
 *   /containerd/containerd/releases/download/vX/containerd-X-linux-amd64.tar.gz{,.sha256sum}
 *   /opencontainers/runc/releases/download/vX/{runc.amd64,runc.sha256sum}
 *   /kubernetes-sigs/cri-tools/releases/download/vX/crictl-vX-linux-amd64.tar.gz{,.sha256}
 *   /containernetworking/plugins/releases/download/vX/cni-plugins-linux-amd64-vX.tgz{,.sha256}
 *   /containerd/containerd/vX/containerd.service   (raw.githubusercontent.com's layout)
 *
 * Checksum files have the names and forms upstream publishes: containerd `NAME.sha256sum` and runc
 * `runc.sha256sum` as `hash  name` lines, cri-tools `NAME.sha256` as a bare hash, CNI plugins `NAME.sha256`
 * as `hash  name`. The packages, crictl and the CNI plugins are tiny (a shell script each, printing the
 * version published) with the dependencies upstream declares, minus what needs Debian's mirror. containerd is
 * a real containerd 2.x (Debian's build from unstable: its binaries need only glibc 2.34, so they run on Debian
 * 12 guests) and runc Debian 12's own, each repackaged the way upstream packs: they say their own versions.
 *
 * Built once into FIXTURE_CACHE/mirror-<hash of this file and of the recipe>/ and only ever read afterwards.
 * Host tools: gpg (+ gpg-agent), apt-ftparchive (apt-utils), dpkg-deb, tar: bin/setup.
 */

const RECIPE = fileURLToPath(new URL('../../recipes/kubernetes-node.yaml', import.meta.url));
const recipe = parseYaml(readFileSync(RECIPE, 'utf8')) as { variables: Record<string, string>; tables: { kubernetes_release: { rows: Record<string, SeriesRow> } } };

/** A row of the recipe's table: what goes with one Kubernetes series. */
export interface SeriesRow {
  cri_tools_deb_version: string;
  kubernetes_cni_deb_version: string;
  containerd_version: string;
  runc_version: string;
  crictl_version: string;
  cni_plugins_version: string;
  pause_image: string;
}

/** The recipe's table, series → companions: what the stand-ins serve. */
export const SERIES: Record<string, SeriesRow> = recipe.tables.kubernetes_release.rows;

/** The newest patch of each series (kubernetes-sigs/image-builder's release pins, as the recipe's comment says). */
const NEWEST_PATCH: Record<string, number> = { '1.36': 3, '1.35': 7, '1.34': 10 };

/** The series the recipe builds by default. */
export const DEFAULT_SERIES = recipe.variables.kubernetes_version.split('.').slice(0, 2).join('.');

/**
 * The Kubernetes release a test pins for a series: the patch before its newest, which the repository offers too
 * (an unpinned install would take the newest: a pinned one proves the pin).
 */
export function pinnedRelease(series: string): string {
  const newest = NEWEST_PATCH[series];
  if (newest === undefined) throw new Error(`the stand-in mirror knows no newest patch of ${series}: add it to NEWEST_PATCH`);
  return `${series}.${newest - 1}`;
}

/** The apt repository's packages for a series: package name → versions, oldest first. */
export function seriesPackages(series: string): Record<string, string[]> {
  const row = SERIES[series];
  const kubernetes = [`${pinnedRelease(series)}-1.1`, `${series}.${NEWEST_PATCH[series]}-1.1`];
  return { kubelet: kubernetes, kubeadm: kubernetes, kubectl: kubernetes, 'cri-tools': [row.cri_tools_deb_version], 'kubernetes-cni': [row.kubernetes_cni_deb_version] };
}

/** The default series' packages (as MIRROR_PACKAGES always was: one series). */
export const MIRROR_PACKAGES: Record<string, string[]> = seriesPackages(DEFAULT_SERIES);

/** The default series' release artifacts' versions. */
export const MIRROR_RELEASES = {
  containerd: SERIES[DEFAULT_SERIES].containerd_version,
  runc: SERIES[DEFAULT_SERIES].runc_version,
  crictl: SERIES[DEFAULT_SERIES].crictl_version,
  cniPlugins: SERIES[DEFAULT_SERIES].cni_plugins_version,
} as const;

/** A series' apt repository path under the mirror's URL, as on pkgs.k8s.io. */
export const aptPath = (series: string) => `/core:/stable:/v${series}/deb/`;
export const APT_PATH = aptPath(DEFAULT_SERIES);

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
  /** The default series' artifacts. */
  files: SeriesFiles;
  /** Each series' artifacts. */
  series: (series: string) => SeriesFiles;
  /** Every request path served so far (decoded), in order: proof that a build really used the mirror. */
  requests: string[];
  /** The cached tree being served. */
  dir: string;
  close(): Promise<void>;
}

export interface SeriesFiles {
  containerd: MirrorArtifact;
  runc: MirrorArtifact;
  crictl: MirrorArtifact;
  cniPlugins: MirrorArtifact;
  containerdService: { url: string; sha256: string };
}

interface Manifest {
  keyFingerprint: string;
  sha256: Record<string, string>;
}

const BUILDER = fileURLToPath(import.meta.url);

type ArtifactKind = 'containerd' | 'runc' | 'crictl' | 'cniPlugins';

/** Where upstream publishes each artifact of a version, and its checksum file. */
function artifactPaths(kind: ArtifactKind, version: string): { path: string; checksum: string } {
  const path = {
    containerd: `/containerd/containerd/releases/download/v${version}/containerd-${version}-linux-amd64.tar.gz`,
    runc: `/opencontainers/runc/releases/download/v${version}/runc.amd64`,
    crictl: `/kubernetes-sigs/cri-tools/releases/download/v${version}/crictl-v${version}-linux-amd64.tar.gz`,
    cniPlugins: `/containernetworking/plugins/releases/download/v${version}/cni-plugins-linux-amd64-v${version}.tgz`,
  }[kind];
  const checksum = { containerd: `${path}.sha256sum`, runc: `/opencontainers/runc/releases/download/v${version}/runc.sha256sum`, crictl: `${path}.sha256`, cniPlugins: `${path}.sha256` }[kind];
  return { path, checksum };
}

const versionOf = (kind: ArtifactKind, row: SeriesRow) => ({ containerd: row.containerd_version, runc: row.runc_version, crictl: row.crictl_version, cniPlugins: row.cni_plugins_version })[kind];
const ARTIFACT_KINDS: ArtifactKind[] = ['containerd', 'runc', 'crictl', 'cniPlugins'];
const containerdServicePath = (version: string) => `/containerd/containerd/v${version}/containerd.service`;

/** containerd's own unit file as upstream ships it (containerd.service at the repository root). */
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

/** What upstream's packages declare (kubernetes/release, cmd/krel/templates/latest), minus what needs Debian's mirror. */
function controlFields(name: string, version: string, row: SeriesRow): Record<string, string> {
  const upstream = version.replace(/-[^-]*$/, '');
  const common = { Package: name, Version: version, Architecture: 'amd64', Maintainer: 'Kubernetes Authors <dev@kubernetes.io>', Homepage: 'https://kubernetes.io' };
  switch (name) {
    case 'kubelet':
      return { ...common, Section: 'net', Priority: 'optional', Depends: 'kubernetes-cni (>= 1.2.0), mount, util-linux', Recommends: 'iptables (>= 1.8.4)', Description: `Node agent for Kubernetes clusters (test build of ${upstream})` };
    case 'kubeadm':
      return { ...common, Section: 'admin', Priority: 'optional', Depends: `cri-tools (>= ${row.cri_tools_deb_version.replace(/-[^-]*$/, '')})`, Description: `Command-line utility for administering a Kubernetes cluster (test build of ${upstream})` };
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

    // One apt repository per series, each signed by the key.
    for (const series of Object.keys(SERIES)) {
      const repo = join(root, ...aptPath(series).split('/').filter(Boolean));
      await mkdir(join(repo, 'amd64'), { recursive: true });
      for (const [name, versions] of Object.entries(seriesPackages(series))) {
        for (const version of versions) {
          const tree = join(work, 'pkg', `${name}_${version}`);
          for (const [path, content] of Object.entries(packageFiles(name, version))) {
            await writeExecutable(join(tree, path), content);
            if (path.includes('/systemd/')) await chmod(join(tree, path), 0o644);
          }
          const control = Object.entries(controlFields(name, version, SERIES[series])).map(([key, value]) => `${key}: ${value}`).join('\n');
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
            '-o', `APT::FTPArchive::Release::Description=core:stable:v${series} (test)`,
            'release', '.',
          ],
          { cwd: repo },
        )
      ).stdout;
      await writeFile(join(repo, 'Release'), `${release.trimEnd()}\n`);
      await gpg(['--local-user', fingerprint, '--clearsign', '--output', join(repo, 'InRelease'), join(repo, 'Release')]);
      await gpg(['--local-user', fingerprint, '--detach-sign', '--armor', '--output', join(repo, 'Release.gpg'), join(repo, 'Release')]);
      await writeFile(join(repo, 'Release.key'), (await gpg(['--export', '--armor', fingerprint])).stdout + '\n');
    }

    // Real binaries: runc is Debian 12's own; containerd a 2.x, Debian's build from unstable (fetched with an
    // apt configuration of its own, never the host's), repackaged as upstream's release artifacts.
    const debs = join(work, 'debs');
    await mkdir(debs, { recursive: true });
    const download = () => execa('apt-get', ['download', '-q', '-o', 'APT::Sandbox::User=root', 'runc'], { cwd: debs });
    await download().catch(async () => {
      // The host's package lists may be missing (a fresh container): fetch them, then try once more.
      await execa('apt-get', ['update', '-qq']);
      await download();
    });
    const unstable = join(work, 'apt-unstable');
    await mkdir(join(unstable, 'lists/partial'), { recursive: true });
    await mkdir(join(unstable, 'cache/archives/partial'), { recursive: true });
    await writeFile(join(unstable, 'sources.list'), 'deb http://deb.debian.org/debian unstable main\n');
    const unstableApt = ['-o', `Dir::Etc::SourceList=${join(unstable, 'sources.list')}`, '-o', 'Dir::Etc::SourceParts=/dev/null', '-o', `Dir::State::Lists=${join(unstable, 'lists')}`, '-o', `Dir::Cache=${join(unstable, 'cache')}`, '-o', 'APT::Sandbox::User=root'];
    await execa('apt-get', ['update', '-qq', ...unstableApt]);
    await execa('apt-get', ['download', '-q', ...unstableApt, 'containerd'], { cwd: debs });
    for (const deb of (await readdir(debs)).filter((n) => n.endsWith('.deb'))) await execa('dpkg-deb', ['-x', join(debs, deb), join(work, 'extracted')]);
    const extracted = join(work, 'extracted');
    const sha256: Record<string, string> = {};
    const base = (path: string) => path.slice(path.lastIndexOf('/') + 1);
    const published = new Set<string>();

    for (const row of Object.values(SERIES)) {
      for (const kind of ARTIFACT_KINDS) {
        const version = versionOf(kind, row);
        const { path, checksum } = artifactPaths(kind, version);
        if (published.has(path)) continue;
        published.add(path);
        const target = join(root, path);
        await mkdir(join(target, '..'), { recursive: true });
        const stage = join(work, `${kind}-${version}`);
        if (kind === 'containerd') {
          for (const program of ['containerd', 'containerd-shim-runc-v2', 'ctr']) await writeExecutable(join(stage, 'bin', program), await readFile(join(extracted, 'usr/bin', program)));
          await tarGz(target, stage, ['bin']);
        } else if (kind === 'runc') {
          await copyFile(join(extracted, 'usr/sbin/runc'), target);
          await chmod(target, 0o755);
        } else if (kind === 'crictl') {
          await writeExecutable(join(stage, 'crictl'), `#!/bin/sh\necho "crictl version v${version} (imagebuilder test mirror)"\n`);
          await tarGz(target, stage, ['crictl']);
        } else {
          for (const plugin of ['bridge', 'host-local', 'loopback', 'portmap']) await writeExecutable(join(stage, plugin), `#!/bin/sh\necho "CNI ${plugin} plugin v${version} (imagebuilder test mirror)"\n`);
          await writeFile(join(stage, 'LICENSE'), 'Apache License 2.0 (test stand-in)\n');
          // Upstream's archive lists its entries as ./bridge, ./host-local …
          await tarGz(target, stage, ['./LICENSE', './bridge', './host-local', './loopback', './portmap']);
        }
        const digest = await sha256File(target);
        sha256[path] = digest;
        await writeFile(join(root, checksum), kind === 'crictl' ? `${digest}\n` : `${digest}  ${base(path)}\n`);
      }
      const service = join(root, containerdServicePath(row.containerd_version));
      await mkdir(join(service, '..'), { recursive: true });
      await writeFile(service, CONTAINERD_SERVICE);
      sha256[containerdServicePath(row.containerd_version)] = createHash('sha256').update(CONTAINERD_SERVICE).digest('hex');
    }

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
export const mirrorDirectory = cachedFixture('mirror', [BUILDER, RECIPE], buildMirror);

/** Builds (once) and serves the mirror on 127.0.0.1 at a random port. */
export async function startLocalMirror(): Promise<LocalMirror> {
  const dir = await mirrorDirectory();
  const manifest = JSON.parse(await readFile(join(dir, 'manifest.json'), 'utf8')) as Manifest;
  const root = join(dir, 'root');
  const server = await serveDirectory(root);
  const { url, requests } = server;
  const seriesFiles = (series: string): SeriesFiles => {
    const row = SERIES[series];
    if (!row) throw new Error(`the stand-in mirror serves no series ${series}`);
    const artifact = (kind: ArtifactKind): MirrorArtifact => {
      const { path, checksum } = artifactPaths(kind, versionOf(kind, row));
      return { url: `${url}${path}`, checksumUrl: `${url}${checksum}`, sha256: manifest.sha256[path] };
    };
    const service = containerdServicePath(row.containerd_version);
    return { containerd: artifact('containerd'), runc: artifact('runc'), crictl: artifact('crictl'), cniPlugins: artifact('cniPlugins'), containerdService: { url: `${url}${service}`, sha256: manifest.sha256[service] } };
  };
  const aptUrl = `${url}${APT_PATH}`;
  return {
    url,
    aptUrl,
    keyUrl: `${aptUrl}Release.key`,
    keyFingerprint: manifest.keyFingerprint,
    key: await readFile(join(root, APT_PATH, 'Release.key'), 'utf8'),
    versions: MIRROR_PACKAGES,
    releases: MIRROR_RELEASES,
    files: seriesFiles(DEFAULT_SERIES),
    series: seriesFiles,
    requests,
    dir,
    close: server.close,
  };
}
