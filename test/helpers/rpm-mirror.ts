import { chmod, copyFile, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { FIXTURE_CACHE } from './fixtures.js';
import { cachedFixture, serveDirectory } from './static-server.js';

/**
 * A local stand-in for pkgs.k8s.io's RPM repository, served on 127.0.0.1 (the chroot shares the host's network,
 * so dnf inside the guest reaches it):
 *
 *   /core:/stable:/v1.36/rpm/repodata/repomd.xml        createrepo_c metadata; repomd.xml.asc (detached signature)
 *                                                        and repomd.xml.key (the armored public key), as upstream
 *   /core:/stable:/v1.36/rpm/x86_64/NAME-V-R.x86_64.rpm  built with rpmbuild, each signed with rpmsign
 *
 * kubelet, kubeadm and kubectl at two versions, cri-tools and kubernetes-cni at one, with the releases upstream
 * uses (150500.1.1) and the dependencies upstream declares that stay inside this repository; the ones that need
 * Fedora's own repositories (conntrack, iptables, socat …) are left out, except ethtool, built here as a
 * stand-in for Fedora's with Fedora's epoch (2:6.7-1.fc40) so that an epoch goes through the whole pipeline.
 * `imposter` is signed by another key than the repository's: gpgcheck must refuse it.
 *
 * Beside it, a stand-in for Fedora 40's own repository (what a real Fedora guest's fedora.repo names), signed by
 * a third key, with the node prerequisites recipes/kubernetes-node.yaml installs from the distribution
 * (ca-certificates, conntrack-tools, ebtables-legacy, ethtool, iptables, socat), each one marker file:
 *
 *   /fedora/releases/40/Everything/x86_64/os/            repodata/ and Packages/, RPM-GPG-KEY-fedora-40-x86_64
 *
 * Built once into FIXTURE_CACHE/rpm-mirror-<hash of this file>/ and only read afterwards. Host tools: rpmbuild
 * and rpmsign (Debian's rpm), createrepo_c (createrepo-c), gpg: bin/setup.
 */

export const RPM_PATH = '/core:/stable:/v1.36/rpm/';
export const FEDORA_PATH = '/fedora/releases/40/Everything/x86_64/os/';

export interface RpmPackage {
  name: string;
  epoch?: number;
  version: string;
  release: string;
  vendor: string;
  summary: string;
  requires?: string[];
  /** Guest path → content; paths under /usr/lib/systemd are 0644, everything else 0755. */
  files: Record<string, string>;
  /** Signed by a key that is not the repository's. */
  imposter?: boolean;
  /** In the Fedora stand-in repository (signed by its key), not in pkgs.k8s.io's. */
  fedora?: boolean;
}

const K8S_VENDOR = 'imagebuilder test mirror of pkgs.k8s.io';
const RELEASE = '150500.1.1';

const script = (program: string, version: string) => `#!/bin/sh\necho "${program} v${version} (imagebuilder test mirror)"\n`;

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
EnvironmentFile=-/etc/sysconfig/kubelet
ExecStart=
ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_EXTRA_ARGS
`;

function kubernetesPackages(version: string): RpmPackage[] {
  return [
    {
      name: 'kubelet', version, release: RELEASE, vendor: K8S_VENDOR, summary: `Node agent for Kubernetes clusters (test build of ${version})`,
      requires: ['kubernetes-cni >= 1.2.0', 'ethtool'],
      files: { '/usr/bin/kubelet': script('kubelet', version), '/usr/lib/systemd/system/kubelet.service': KUBELET_SERVICE },
    },
    {
      name: 'kubeadm', version, release: RELEASE, vendor: K8S_VENDOR, summary: `Command-line utility for administering a Kubernetes cluster (test build of ${version})`,
      requires: ['cri-tools >= 1.36.0'],
      files: { '/usr/bin/kubeadm': script('kubeadm', version), '/usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf': KUBEADM_DROP_IN },
    },
    {
      name: 'kubectl', version, release: RELEASE, vendor: K8S_VENDOR, summary: `Command-line utility for interacting with a Kubernetes cluster (test build of ${version})`,
      files: { '/usr/bin/kubectl': script('kubectl', version) },
    },
  ];
}

export const RPM_PACKAGES: RpmPackage[] = [
  ...kubernetesPackages('1.36.2'),
  ...kubernetesPackages('1.36.3'),
  {
    name: 'cri-tools', version: '1.36.0', release: RELEASE, vendor: K8S_VENDOR, summary: 'Command-line utility for interacting with a container runtime (test build)',
    files: { '/usr/bin/crictl': script('crictl', '1.36.0') },
  },
  {
    name: 'kubernetes-cni', version: '1.9.1', release: RELEASE, vendor: K8S_VENDOR, summary: 'Binaries required to provision kubernetes container networking (test build)',
    files: Object.fromEntries(['bridge', 'host-local', 'loopback', 'portmap'].map((plugin) => [`/opt/cni/bin/${plugin}`, script(plugin, '1.9.1')])),
  },
  {
    name: 'ethtool', epoch: 2, version: '6.7', release: '1.fc40', vendor: 'imagebuilder test stand-in for Fedora Project', summary: 'Settings tool for Ethernet NICs (test stand-in)',
    files: { '/usr/sbin/ethtool': script('ethtool', '6.7') },
  },
  {
    name: 'imposter', version: '1.0', release: '1', vendor: 'nobody the recipe trusts', summary: 'Signed by a key that is not the repository key',
    files: { '/usr/bin/imposter': script('imposter', '1.0') },
    imposter: true,
  },
];

const FEDORA_VENDOR = 'imagebuilder test stand-in for Fedora Project';
const fedoraStandIn = (name: string, version: string, release: string, epoch?: number): RpmPackage => ({
  name, version, release, vendor: FEDORA_VENDOR, summary: `${name} (test stand-in for Fedora 40's)`, fedora: true,
  ...(epoch !== undefined ? { epoch } : {}),
  files: { [`/usr/share/imagebuilder-stand-in/${name}`]: `${name} ${version}-${release}\n` },
});

/** The node prerequisites from Fedora 40's repository, at Fedora's versions. */
export const FEDORA_PACKAGES: RpmPackage[] = [
  fedoraStandIn('ca-certificates', '2024.2.69_v8.0.303', '1.0.fc40'),
  fedoraStandIn('conntrack-tools', '1.4.8', '1.fc40'),
  fedoraStandIn('ebtables-legacy', '2.0.11', '17.fc40'),
  fedoraStandIn('ethtool', '6.7', '1.fc40', 2),
  fedoraStandIn('iptables', '1.8.10', '7.fc40'),
  fedoraStandIn('socat', '1.8.0.0', '3.fc40'),
];

/**
 * The prerequisites by the names openSUSE and Photon give them, where Fedora's differ (Fedora's ebtables is
 * ebtables-legacy), in the same stand-in repository: the zypper build of the shipped recipe takes its
 * prerequisites from there too.
 */
export const OTHER_DISTRO_PACKAGES: RpmPackage[] = [fedoraStandIn('ebtables', '2.0.11', '17.fc40')];

/** `[epoch:]version-release`, as rpm and dnf print it. */
export const evr = (p: Pick<RpmPackage, 'epoch' | 'version' | 'release'>) => `${p.epoch !== undefined ? `${p.epoch}:` : ''}${p.version}-${p.release}`;

export interface RpmMirror {
  /** http://127.0.0.1:PORT */
  url: string;
  /** The repository's baseurl: ${url}/core:/stable:/v1.36/rpm/ */
  repoUrl: string;
  /** repodata/repomd.xml.key, as pkgs.k8s.io publishes its key; its fingerprint (40 upper-case hex digits). */
  keyUrl: string;
  keyFingerprint: string;
  key: string;
  /** The imposter's signing key (another throwaway key), by fingerprint. */
  imposterFingerprint: string;
  /** The Fedora stand-in: its baseurl (${url}/fedora/releases/40/Everything/x86_64/os/), armored key and fingerprint. */
  fedoraRepoUrl: string;
  fedoraKey: string;
  fedoraFingerprint: string;
  packages: RpmPackage[];
  /** Every request path served so far (decoded), in order. */
  requests: string[];
  dir: string;
  close(): Promise<void>;
}

interface Manifest {
  keyFingerprint: string;
  imposterFingerprint: string;
  fedoraFingerprint: string;
}

const BUILDER = fileURLToPath(import.meta.url);

function specFile(p: RpmPackage, stage: string): string {
  const lines = [
    `Name: ${p.name}`,
    ...(p.epoch !== undefined ? [`Epoch: ${p.epoch}`] : []),
    `Version: ${p.version}`,
    `Release: ${p.release}`,
    `Summary: ${p.summary}`,
    'License: Apache-2.0',
    'URL: https://kubernetes.io',
    `Vendor: ${p.vendor}`,
    // Only the dependencies declared here: the scripts' /bin/sh is Debian's, which the rpm database does not know.
    'AutoReqProv: no',
    ...(p.requires ?? []).map((r) => `Requires: ${r}`),
    '',
    '%description',
    `${p.summary}.`,
    '',
    '%install',
    `cp -a ${stage}/. %{buildroot}/`,
    '',
    '%files',
    ...Object.keys(p.files).sort(),
    '',
  ];
  return lines.join('\n');
}

async function buildMirror(build: string): Promise<void> {
  const repo = join(build, 'root', ...RPM_PATH.split('/').filter(Boolean));
  const fedoraRepo = join(build, 'root', ...FEDORA_PATH.split('/').filter(Boolean));
  const work = join(build, 'work');
  const gnupgHome = await mkdtemp('/tmp/ib-rpm-mirror-gnupg-');
  const gpgEnv = { GNUPGHOME: gnupgHome };
  const gpg = (args: string[]) => execa('gpg', ['--batch', '--no-tty', ...args], { env: gpgEnv });
  try {
    await chmod(gnupgHome, 0o700);
    await mkdir(join(repo, 'x86_64'), { recursive: true });
    await mkdir(join(fedoraRepo, 'Packages'), { recursive: true });
    await mkdir(work, { recursive: true });

    // Throwaway RSA keys (what Fedora and pkgs.k8s.io sign with), no passphrase.
    const newKey = async (uid: string) => {
      await gpg(['--passphrase', '', '--quick-gen-key', uid, 'rsa3072', 'sign', 'never']);
      const colons = (await gpg(['--with-colons', '--list-keys', uid])).stdout;
      const fingerprint = /^fpr:+([0-9A-F]{40}):/m.exec(colons)?.[1];
      if (!fingerprint) throw new Error(`no fingerprint in gpg output:\n${colons}`);
      return fingerprint;
    };
    const keyFingerprint = await newKey('imagebuilder test rpm mirror <rpm-mirror@imagebuilder.invalid>');
    const imposterFingerprint = await newKey('imposter <imposter@imagebuilder.invalid>');
    const fedoraFingerprint = await newKey('imagebuilder test stand-in for Fedora 40 <fedora-40@imagebuilder.invalid>');

    const env = { SOURCE_DATE_EPOCH: '1700000000', GNUPGHOME: gnupgHome };
    for (const p of [...RPM_PACKAGES, ...FEDORA_PACKAGES, ...OTHER_DISTRO_PACKAGES]) {
      const base = `${p.name}-${p.version}-${p.release}`;
      // Each repository builds in its own area: both have an ethtool-6.7-1.fc40, with different files.
      const area = join(work, p.fedora ? 'fedora' : 'k8s');
      const stage = join(area, 'stage', base);
      for (const [path, content] of Object.entries(p.files)) {
        await mkdir(join(stage, path, '..'), { recursive: true });
        await writeFile(join(stage, path), content);
        await chmod(join(stage, path), path.startsWith('/usr/lib/systemd/') ? 0o644 : 0o755);
      }
      const spec = join(area, `${base}.spec`);
      await writeFile(spec, specFile(p, stage));
      await execa('rpmbuild', [
        '-bb', '--target', 'x86_64',
        '--define', `_topdir ${join(area, 'rpmbuild')}`,
        '--define', 'debug_package %{nil}',
        '--define', '_build_id_links none',
        '--define', '_buildhost imagebuilder.invalid',
        '--define', 'use_source_date_epoch_as_buildtime 1',
        '--define', 'clamp_mtime_to_source_date_epoch 1',
        spec,
      ], { env });
      const rpm = join(area, 'rpmbuild', 'RPMS', 'x86_64', `${base}.x86_64.rpm`);
      await execa('rpmsign', [
        '--addsign',
        '--define', `_gpg_name ${p.imposter ? imposterFingerprint : p.fedora ? fedoraFingerprint : keyFingerprint}`,
        '--define', '__gpg /usr/bin/gpg',
        '--define', `_gpg_path ${gnupgHome}`,
        rpm,
      ], { env });
      await copyFile(rpm, p.fedora ? join(fedoraRepo, 'Packages', `${base}.x86_64.rpm`) : join(repo, 'x86_64', `${base}.x86_64.rpm`));
    }

    await execa('createrepo_c', ['--quiet', '--revision', '1700000000', repo]);
    await execa('createrepo_c', ['--quiet', '--revision', '1700000000', fedoraRepo]);
    await writeFile(join(fedoraRepo, 'RPM-GPG-KEY-fedora-40-x86_64'), (await gpg(['--export', '--armor', fedoraFingerprint])).stdout + '\n');
    await gpg(['--local-user', keyFingerprint, '--detach-sign', '--armor', '--output', join(repo, 'repodata/repomd.xml.asc'), join(repo, 'repodata/repomd.xml')]);
    await writeFile(join(repo, 'repodata/repomd.xml.key'), (await gpg(['--export', '--armor', keyFingerprint])).stdout + '\n');

    // Proof that the signatures are what the tests assume, with the host's rpm on a scratch database.
    const check = join(work, 'rpmdb');
    await mkdir(check);
    await execa('rpmkeys', ['--dbpath', check, '--import', join(repo, 'repodata/repomd.xml.key')]);
    for (const file of await readdir(join(repo, 'x86_64'))) {
      const result = await execa('rpmkeys', ['--dbpath', check, '--checksig', join(repo, 'x86_64', file)], { reject: false });
      const imposter = file.startsWith('imposter-');
      if ((result.exitCode === 0) === imposter) throw new Error(`signature check of ${file} gave ${result.exitCode}: ${result.stdout}${result.stderr}`);
    }
    const fedoraCheck = join(work, 'rpmdb-fedora');
    await mkdir(fedoraCheck);
    await execa('rpmkeys', ['--dbpath', fedoraCheck, '--import', join(fedoraRepo, 'RPM-GPG-KEY-fedora-40-x86_64')]);
    for (const file of await readdir(join(fedoraRepo, 'Packages'))) await execa('rpmkeys', ['--dbpath', fedoraCheck, '--checksig', join(fedoraRepo, 'Packages', file)]);

    await rm(work, { recursive: true, force: true });
    const manifest: Manifest = { keyFingerprint, imposterFingerprint, fedoraFingerprint };
    await writeFile(join(build, 'manifest.json'), `${JSON.stringify(manifest, null, 2)}\n`);
  } finally {
    await execa('gpgconf', ['--kill', 'gpg-agent'], { env: gpgEnv, reject: false });
    await rm(gnupgHome, { recursive: true, force: true });
  }
}

/** The cached tree, built on first use. */
export const rpmMirrorDirectory = cachedFixture('rpm-mirror', BUILDER, buildMirror);

/** Builds (once) and serves the repository on 127.0.0.1 at a random port. */
export async function startRpmMirror(): Promise<RpmMirror> {
  const dir = await rpmMirrorDirectory();
  const manifest = JSON.parse(await readFile(join(dir, 'manifest.json'), 'utf8')) as Manifest;
  const root = join(dir, 'root');
  const server = await serveDirectory(root);
  const { url, requests } = server;
  const repoUrl = `${url}${RPM_PATH}`;
  return {
    url,
    repoUrl,
    keyUrl: `${repoUrl}repodata/repomd.xml.key`,
    keyFingerprint: manifest.keyFingerprint,
    key: await readFile(join(root, RPM_PATH, 'repodata/repomd.xml.key'), 'utf8'),
    imposterFingerprint: manifest.imposterFingerprint,
    fedoraRepoUrl: `${url}${FEDORA_PATH}`,
    fedoraKey: await readFile(join(root, FEDORA_PATH, 'RPM-GPG-KEY-fedora-40-x86_64'), 'utf8'),
    fedoraFingerprint: manifest.fedoraFingerprint,
    packages: RPM_PACKAGES,
    requests,
    dir,
    close: server.close,
  };
}

/** The RPM files the mirror served since its request number `from`, by file name, sorted. */
export function rpmsFetched(mirror: RpmMirror, from: number): string[] {
  return mirror.requests
    .slice(from)
    .filter((path) => path.endsWith('.rpm'))
    .map((path) => path.slice(`${RPM_PATH}x86_64/`.length))
    .sort();
}

/** What a pinned 1.36.2 install of kubelet, kubeadm and kubectl fetches: them, their dependencies, never 1.36.3. */
export const PINNED_KUBERNETES_RPMS = [
  'cri-tools-1.36.0-150500.1.1.x86_64.rpm',
  'ethtool-6.7-1.fc40.x86_64.rpm',
  'kubeadm-1.36.2-150500.1.1.x86_64.rpm',
  'kubectl-1.36.2-150500.1.1.x86_64.rpm',
  'kubelet-1.36.2-150500.1.1.x86_64.rpm',
  'kubernetes-cni-1.9.1-150500.1.1.x86_64.rpm',
].sort();
