import { execa } from 'execa';
import { mkdir, mkdtemp, readdir, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { collectRpmDownloads, definedDnfRepositories, dnfBundleOptions, rpmBundleIndex, rpmBundlePackages, zypperBundleOptions, zypperBundleRepoFile } from '../../src/pkg/rpm-bundle.js';
import { MAX_ENTRY_BYTES, PrimaryReader } from '../../src/pkg/rpm-metadata.js';
import type { PackageCollector } from '../../src/pkg/types.js';
import { installedAs, missingFromBundle } from '../../src/pkg/bundle-use.js';
import { sha256Text } from '../../src/util/digest.js';
import type { Logger } from '../../src/util/log.js';

const entry = (name: string, version: { epoch?: string; ver: string; rel: string }, sha256: string, href: string, extra = '') =>
  `<package type="rpm"><name>${name}</name><arch>x86_64</arch><version epoch="${version.epoch ?? '0'}" ver="${version.ver}" rel="${version.rel}"/>` +
  `<checksum type="sha256" pkgid="YES">${sha256}</checksum><location href="${href}"/>${extra}<format><rpm:provides/></format></package>`;

const A = 'a'.repeat(64);
const B = 'b'.repeat(64);

describe('rpm bundle repositories', () => {
  test('the index: entries as the metadata gave them, sorted, each with one location, the bundle\'s file; repomd names its sha256', () => {
    const kubelet = entry('kubelet', { ver: '1.36.2', rel: '150500.1.1' }, A, 'x86_64/kubelet.rpm');
    // A crafted entry with a second location: only the bundle's stays.
    const ethtool = entry('ethtool', { epoch: '2', ver: '6.7', rel: '1.fc40' }, B, '../../etc/shadow', '<location href="elsewhere.rpm"/>');
    const { primary, repomd } = rpmBundleIndex([
      { sha256: A, entry: kubelet, filename: `packages/${A}.rpm` },
      { sha256: B, entry: ethtool, filename: `packages/${B}.rpm` },
    ], new Date(1_700_000_000_000));
    expect(primary).toMatch(/^<\?xml version="1.0" encoding="UTF-8"\?>\n<metadata xmlns="http:\/\/linux.duke.edu\/metadata\/common" xmlns:rpm="http:\/\/linux.duke.edu\/metadata\/rpm" packages="2">\n/);
    expect(primary.indexOf('<name>ethtool</name>')).toBeLessThan(primary.indexOf('<name>kubelet</name>'));
    expect(primary.match(/<location [^>]*\/>/g)).toEqual([`<location href="packages/${B}.rpm"/>`, `<location href="packages/${A}.rpm"/>`]);
    expect(primary).not.toContain('shadow');
    expect(primary.endsWith('</metadata>\n')).toBe(true);
    expect(repomd).toContain(`<checksum type="sha256">${sha256Text(primary)}</checksum>`);
    expect(repomd).toContain(`<size>${Buffer.byteLength(primary)}</size>`);
    expect(repomd).toContain('<location href="repodata/primary.xml"/>');
    expect(repomd).toContain('<timestamp>1700000000</timestamp>');
    // One set of packages, one index, whatever order they were kept in.
    expect(rpmBundleIndex([{ sha256: B, entry: ethtool, filename: `packages/${B}.rpm` }, { sha256: A, entry: kubelet, filename: `packages/${A}.rpm` }], new Date(1_700_000_000_000)).primary).toBe(primary);
  });

  test('a repository the manager read but fetched nothing from is an empty one, still served (never the network instead)', () => {
    const { primary, repomd } = rpmBundleIndex([]);
    expect(primary).toContain('packages="0">\n</metadata>\n');
    expect(repomd).toContain(`<checksum type="sha256">${sha256Text(primary)}</checksum>`);
    expect(rpmBundlePackages(primary).size).toBe(0);
    // Entries of many unclosed tags read in linear time (a regular expression took seconds on 200 kB, hours on MBs).
    const unclosed = `<package type="rpm"><name>x</name>${'<version '.repeat(1 << 19)}${'<rpm:provides>'.repeat(1 << 19)}</package>`;
    expect(rpmBundlePackages(unclosed).size).toBe(0);
  });

  test('an entry without a self-closing location gets the bundle\'s one', () => {
    const text = `<package type="rpm"><name>x</name><version epoch="0" ver="1" rel="1"/><checksum type="sha256">${A}</checksum></package>`;
    expect(rpmBundleIndex([{ sha256: A, entry: text, filename: 'packages/x.rpm' }]).primary).toContain('<location href="packages/x.rpm"/></package>');
  });

  test('what it holds, in every form a recipe pins a version', () => {
    const { primary } = rpmBundleIndex([
      { sha256: A, entry: entry('kubelet', { ver: '1.36.2', rel: '150500.1.1' }, A, 'k.rpm'), filename: 'packages/a.rpm' },
      { sha256: B, entry: entry('ethtool', { epoch: '2', ver: '6.7', rel: '1.fc40' }, B, 'e.rpm'), filename: 'packages/b.rpm' },
    ]);
    const packages = rpmBundlePackages(primary);
    expect([...packages.get('kubelet')!].sort()).toEqual(['1.36.2', '1.36.2-150500.1.1']);
    expect([...packages.get('ethtool')!].sort()).toEqual(['2:6.7', '2:6.7-1.fc40', '6.7', '6.7-1.fc40']);
    expect(packages.has('packager')).toBe(false);
    expect([...packages.get('kubelet.x86_64')!]).toContain('1.36.2');
    const provided = rpmBundlePackages(rpmBundleIndex([{ sha256: A, entry: entry('iptables-nft', { ver: '1.8', rel: '1' }, A, 'i.rpm').replace('<rpm:provides/>', '<rpm:provides><rpm:entry name="iptables" flags="EQ" ver="1.8"/></rpm:provides>'), filename: 'packages/a.rpm' }]).primary);
    expect([...provided.get('iptables')!]).toContain('1.8-1');
  });

  test('dnf: every repository of the guest off but the bundle\'s, each read from its directory; zypper: the bundle\'s repos.d', () => {
    const served = { rpm: { dir: '/run/imagebuilder-bundle/rpm', repositories: ['fedora', 'kubernetes'] }, packages: new Map() };
    const options = dnfBundleOptions(served, new Set(['fedora', 'kubernetes', 'updates']));
    // A repository the guest does not define (yet) gets no setopt (dnf 5 refuses one); with none defined, no glob either.
    expect(dnfBundleOptions({ ...served, rpm: { ...served.rpm, repositories: ['fedora', 'later'] } }, new Set(['fedora'])).some((option) => option.includes('later'))).toBe(false);
    expect(dnfBundleOptions(served, new Set())).toEqual([expect.stringMatching(/^--setopt=cachedir=/)]);
    // Every repository off first, then the bundle's on: by setopt, which a repository not defined yet leaves unused.
    expect(options[0]).toBe('--setopt=*.enabled=0');
    expect(options.indexOf('--setopt=kubernetes.enabled=1')).toBeGreaterThan(0);
    expect(options.some((option) => option.startsWith('--enablerepo') || option.startsWith('--disablerepo'))).toBe(false);
    expect(options).toContain('--setopt=kubernetes.baseurl=file:///run/imagebuilder-bundle/rpm/kubernetes/');
    expect(options).toContain('--setopt=fedora.metalink=');
    expect(options).toContain('--setopt=fedora.repo_gpgcheck=0');
    expect(options).toContain('--setopt=fedora.module_hotfixes=1');
    expect(options.some((option) => option.startsWith('--setopt=updates.'))).toBe(false);
    expect(options.some((option) => /gpgcheck=0/.test(option) && !/repo_gpgcheck/.test(option))).toBe(false);
    expect(options.at(-1)).toMatch(/^--setopt=cachedir=\/run\//);
    expect(zypperBundleOptions(served)).toEqual(['--reposd-dir', '/run/imagebuilder-bundle/rpm/.repos.d', '--cache-dir', expect.stringMatching(/^\/run\//)]);
    const repo = zypperBundleRepoFile('kubernetes', '/run/imagebuilder-bundle/rpm');
    expect(repo).toMatch(/^\[kubernetes\]$/m);
    expect(repo).toMatch(/^baseurl=dir:\/run\/imagebuilder-bundle\/rpm\/kubernetes$/m);
    expect(repo).toMatch(/^pkg_gpgcheck=1$/m);
  });

  test('the primary reader keeps the whole entries asked for, and only those', () => {
    const reader = new PrimaryReader(new Set([B]));
    const text = `<metadata>${entry('kubelet', { ver: '1', rel: '1' }, A, 'k.rpm')}${entry('ethtool', { ver: '2', rel: '1' }, B, 'e.rpm')}</metadata>`;
    reader.push(text.slice(0, 100));
    reader.push(text.slice(100));
    expect([...reader.packages.values()]).toEqual([A, B]);
    expect([...reader.entries.keys()]).toEqual([B]);
    expect(reader.entries.get(B)).toBe(entry('ethtool', { ver: '2', rel: '1' }, B, 'e.rpm'));
  });
});

describe('collecting what dnf fetched, on a guest tree', () => {
  let root: string;
  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'ib-rpm-bundle-'));
  });
  afterEach(async () => {
    await rm(root, { recursive: true, force: true });
  });

  const logger = (warnings: string[]): Logger => ({ info: () => undefined, warn: (text: string) => warnings.push(text), debug: () => undefined, error: () => undefined }) as unknown as Logger;

  /** A dnf cache of repository kubernetes whose metadata names `kubelet.rpm` with the sha256 of `good`. */
  const good = Buffer.from('a real package');
  const repository = () => join(root, 'var/cache/dnf/kubernetes-0123456789abcdef');
  const setUp = async () => {
    const repo = repository();
    const primary = `<metadata>${entry('kubelet', { ver: '1', rel: '1' }, sha256Text(good), 'x86_64/kubelet.rpm')}${entry('kubeadm', { ver: '1', rel: '1' }, A, 'x86_64/kubeadm.rpm')}${entry('shadow', { ver: '1', rel: '1' }, sha256Text('secret'), 'x86_64/shadow.rpm')}</metadata>`;
    await mkdir(join(repo, 'repodata'), { recursive: true });
    await writeFile(join(repo, 'repodata/repomd.xml'), '<repomd><data type="primary"><location href="repodata/primary.xml"/></data></repomd>');
    await writeFile(join(repo, 'repodata/primary.xml'), primary);
    await writeFile(join(root, 'secret'), 'secret');
    const kept: { sha256: string; repository: string; entry: string; content: string }[] = [];
    const repositories: string[] = [];
    const collector = {
      log: logger([]),
      aptTransaction: () => undefined,
      addDeb: async () => undefined,
      rpmRepositories: (ids: string[]) => void repositories.push(...ids),
      addRpm: async (content: Buffer, sha256: string, id: string, text: string) => {
        kept.push({ sha256, repository: id, entry: text, content: content.toString() });
      },
    } satisfies PackageCollector;
    return { repo, kept, repositories, collector };
  };

  test('the repositories a guest defines: section names of its .repo files, never through a guest link', async () => {
    await mkdir(join(root, 'etc/yum.repos.d'), { recursive: true });
    await mkdir(join(root, 'etc/distro.repos.d'), { recursive: true });
    await writeFile(join(root, 'etc/yum.repos.d/kubernetes.repo'), '[kubernetes]\nbaseurl=x\n\n[kubernetes-source] \nenabled=0\n');
    await writeFile(join(root, 'etc/distro.repos.d/fedora.repo'), '[fedora]\n[main]\n');
    await writeFile(join(root, 'host.repo'), '[host-only]\n');
    await symlink(join(root, 'host.repo'), join(root, 'etc/yum.repos.d/linked.repo'));
    expect([...(await definedDnfRepositories(root))].sort()).toEqual(['fedora', 'kubernetes', 'kubernetes-source']);
  });

  test('what the transaction fetched is kept with its entry, under its repository; the new files go; the transaction runs after', async () => {
    const { repo, kept, repositories, collector } = await setUp();
    let installed = false;
    const count = await collectRpmDownloads(root, 'dnf', collector, async () => {
      await mkdir(join(repo, 'packages'), { recursive: true });
      await writeFile(join(repo, 'packages/kubelet.rpm'), good);
    }, async () => {
      installed = true;
    });
    expect(count).toBe(1);
    expect(installed).toBe(true);
    expect(repositories).toEqual(['kubernetes']);
    expect(kept).toEqual([{ sha256: sha256Text(good), repository: 'kubernetes', entry: expect.stringContaining('<name>kubelet</name>'), content: 'a real package' }]);
    expect(await readdir(join(repo, 'packages'))).toEqual([]);
  });

  test('a fetched file that is not what the metadata names fails the step, naming it, and is removed', async () => {
    const { repo, kept, collector } = await setUp();
    await expect(collectRpmDownloads(root, 'dnf', collector, async () => {
      await mkdir(join(repo, 'packages'), { recursive: true });
      await writeFile(join(repo, 'packages/kubeadm.rpm'), 'not what the metadata says');
    })).rejects.toThrow(/kubeadm\.rpm: not what repository kubernetes's metadata names/);
    expect(kept).toEqual([]);
    expect(await readdir(join(repo, 'packages'))).toEqual([]);
  });

  test('a guest link in the cache to a host file whose bytes the metadata names is never followed', async () => {
    const { repo, kept, collector } = await setUp();
    await expect(collectRpmDownloads(root, 'dnf', collector, async () => {
      await mkdir(join(repo, 'packages'), { recursive: true });
      await symlink(join(root, 'secret'), join(repo, 'packages/shadow.rpm'));
    })).rejects.toThrow(/shadow\.rpm is not a regular file/);
    expect(kept).toEqual([]);
    expect(await readdir(join(repo, 'packages'))).toEqual([]);
  });

  test('a FIFO in the cache, named as a package, is never opened: the step fails naming it', async () => {
    const { repo, kept, collector } = await setUp();
    await expect(collectRpmDownloads(root, 'dnf', collector, async () => {
      await mkdir(join(repo, 'packages'), { recursive: true });
      await execa('mkfifo', [join(repo, 'packages/kubelet.rpm')]);
    })).rejects.toThrow(/kubelet\.rpm is not a regular file/);
    expect(kept).toEqual([]);
    expect(await readdir(join(repo, 'packages'))).toEqual([]);
  });

  test('an entry longer than the bound is not kept: the package fails the step rather than filling memory', async () => {
    const { repo, kept, collector } = await setUp();
    const big = `<metadata>${entry('kubelet', { ver: '1', rel: '1' }, sha256Text(good), 'x86_64/kubelet.rpm', `<description>${'x'.repeat(MAX_ENTRY_BYTES)}</description>`)}</metadata>`;
    await writeFile(join(repo, 'repodata/primary.xml'), big);
    await expect(collectRpmDownloads(root, 'dnf', collector, async () => {
      await mkdir(join(repo, 'packages'), { recursive: true });
      await writeFile(join(repo, 'packages/kubelet.rpm'), good);
    })).rejects.toThrow(/its entry is larger than/);
    expect(kept).toEqual([]);
  });

  test('a cache directory whose name is no plain repository id (a crafted guest\'s) keeps nothing and fails the step', async () => {
    const { kept, repositories, collector } = await setUp();
    const crafted = join(root, 'var/cache/dnf/.hidden-0123456789abcdef');
    await mkdir(join(crafted, 'repodata'), { recursive: true });
    await writeFile(join(crafted, 'repodata/repomd.xml'), '<repomd/>');
    await expect(collectRpmDownloads(root, 'dnf', collector, async () => {
      await mkdir(join(crafted, 'packages'), { recursive: true });
      await writeFile(join(crafted, 'packages/kubelet.rpm'), good);
    })).rejects.toThrow(/have no repository name imagebuilder can use/);
    expect(kept).toEqual([]);
    expect(repositories).toEqual(['kubernetes']);
    expect(await readdir(join(crafted, 'packages'))).toEqual([]);
  });
});

describe('what a bundle lacks, before the manager runs', () => {
  const served = { rpm: { dir: '/run/x', repositories: ['kubernetes'] }, packages: new Map([['kubelet', new Set(['1.36.2', '1.36.2-150500.1.1'])]]) };
  test('a package pinned as rpm prints it without release or epoch counts as installed; anything else the bundle lacks is named', () => {
    const installed = new Map([['kubectl', '1.36.2-150500.1.1'], ['ethtool', '2:6.7-1.fc40']]);
    const specs = [{ name: 'kubelet', version: '1.36.2' }, { name: 'kubectl', version: '1.36.2' }, { name: 'ethtool', version: '6.7-1.fc40' }, { name: 'kubectl', version: '1.36.3' }, { name: 'jq' }];
    expect(missingFromBundle(served, specs, installed)).toEqual(['kubectl=1.36.3', 'jq']);
    expect(installedAs('1.36.20-1', '1.36.2')).toBe(false);
  });
});
