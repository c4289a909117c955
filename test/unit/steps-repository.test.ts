import { createHash } from 'node:crypto';
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { detectDistro } from '../../src/distro/families.js';
import { parseRecipe } from '../../src/recipe/load.js';
import { packagesStep } from '../../src/steps/packages.js';
import { inspectOpenPgpKey, normalizeFingerprint, parseGpgColons, repositoryStep, type RepositorySpec } from '../../src/steps/repository.js';
import { BOX_UIDS, processesRunningAs, withBoxUid } from '../../src/util/box-uid.js';
import { execRunner, type Runner } from '../../src/util/exec.js';
import { fakeSession, fakeStepContext, type FakeCall } from '../helpers/fake-session.js';

/** What apt-get gets on every install, upgrade and purge (src/pkg/apt.ts): spelled out, not imported. */
const APT_BIN_CACHES = ['-o', 'Dir::Cache::pkgcache=/run/imagebuilder-apt-pkgcache.bin', '-o', 'Dir::Cache::srcpkgcache=/run/imagebuilder-apt-srcpkgcache.bin'];
const APT_OPTIONS = ['-y', '-q', '-o', 'Dpkg::Options::=--force-confdef', '-o', 'Dpkg::Options::=--force-confold', '-o', 'Dpkg::Use-Pty=0', ...APT_BIN_CACHES];
const UPDATE = ['apt-get', 'update', '-q', ...APT_BIN_CACHES];
/** The session's apt configuration file (APT_CONFIG for what apt starts), written before its first apt command. */
const APT_CONF = 'write /run/imagebuilder-apt.conf';
/** A call as a readable entry: guest file writes by path, everything else by argv. */
const shown = (c: { argv: string[] }) => (c.argv[0] === '/bin/sh' && c.argv[3] === 'write-file' ? `write ${c.argv[4]}` : c.argv);
const CLEAN = ['apt-get', 'clean'];

const sha256 = (data: string | Buffer) => createHash('sha256').update(data).digest('hex');

/** A guest file write (src/chroot/guest-write.ts) as the fake session sees it: path, owner, group, mode, content. */
function writeOf(call: FakeCall) {
  expect(call.argv.slice(0, 2)).toEqual(['/bin/sh', '-c']);
  expect(call.argv[3]).toBe('write-file');
  return { path: call.argv[4], owner: call.argv[5], group: call.argv[6], mode: call.argv[7], content: call.input };
}

/** Two throwaway keys made by gpg, served with some broken variants on 127.0.0.1. */
let gnupgHome: string;
let server: Server;
let base: string;
const keys = { a: '', b: '', aBinary: Buffer.alloc(0), both: '', aSecret: '', fprA: '', fprB: '' };

beforeAll(async () => {
  gnupgHome = await mkdtemp(join(tmpdir(), 'ib-unit-gnupg-'));
  await chmod(gnupgHome, 0o700);
  const gpg = (args: string[], encoding: 'utf8' | 'buffer' = 'utf8') =>
    execa('gpg', ['--homedir', gnupgHome, '--batch', '--no-tty', ...args], { encoding: encoding === 'buffer' ? 'buffer' : 'utf8', stripFinalNewline: encoding !== 'buffer' });
  const fingerprintOf = async (uid: string) => /^fpr:+([0-9A-F]{40}):/m.exec(String((await gpg(['--with-colons', '--list-keys', uid])).stdout))![1];
  await gpg(['--passphrase', '', '--quick-gen-key', 'Repo A <a@example.invalid>', 'ed25519', 'sign', 'never']);
  await gpg(['--passphrase', '', '--quick-gen-key', 'Repo B <b@example.invalid>', 'ed25519', 'sign', 'never']);
  keys.fprA = await fingerprintOf('a@example.invalid');
  keys.fprB = await fingerprintOf('b@example.invalid');
  keys.a = String((await gpg(['--export', '--armor', keys.fprA])).stdout);
  keys.b = String((await gpg(['--export', '--armor', keys.fprB])).stdout);
  keys.both = String((await gpg(['--export', '--armor', keys.fprA, keys.fprB])).stdout);
  keys.aBinary = Buffer.from((await gpg(['--export', keys.fprA], 'buffer')).stdout as Uint8Array);
  keys.aSecret = String((await gpg(['--export-secret-keys', '--armor', keys.fprA])).stdout);

  const routes: Record<string, string | Buffer> = {
    '/a.asc': `${keys.a}\n`,
    '/a.gpg': keys.aBinary,
    '/both.asc': keys.both,
    '/secret.asc': keys.aSecret,
    '/not-a-key': '<html>Not Found</html>\n',
  };
  server = createServer((request, response) => {
    const body = routes[request.url ?? ''];
    if (body === undefined) response.writeHead(404).end();
    else response.writeHead(200).end(body);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  server?.closeAllConnections();
  await new Promise((resolve) => server?.close(resolve));
  await execa('gpgconf', ['--homedir', gnupgHome, '--kill', 'gpg-agent'], { reject: false });
  await rm(gnupgHome, { recursive: true, force: true });
});

/** The fingerprint the way vendors print it: groups of four, lower case, a double space in the middle. */
const spaced = (fpr: string) => fpr.toLowerCase().replace(/(.{4})/g, '$1 ').trim().replace(/^((?:\S+ ){4}\S+) /, '$1  ');

describe('repository step', () => {
  test('key_url with a spaced, lower-case fingerprint: the key and a deb822 flat source, recorded for the BOM', async () => {
    const { session, calls } = fakeSession();
    const { context, records } = fakeStepContext(session);
    const spec: RepositorySpec = { name: 'kubernetes', url: 'http://127.0.0.1:1/core:/stable:/v1.30/deb/', key_url: `${base}/a.asc`, fingerprint: spaced(keys.fprA) };
    expect(spec.fingerprint).toMatch(/^[0-9a-f]{4}( [0-9a-f]{4}){4}  [0-9a-f]{4}( [0-9a-f]{4}){4}$/);

    await repositoryStep.run(context, spec);

    const sources = 'Types: deb\nURIs: http://127.0.0.1:1/core:/stable:/v1.30/deb/\nSuites: /\nSigned-By: /etc/apt/keyrings/kubernetes.asc\n';
    expect(calls.map(writeOf)).toEqual([
      { path: '/etc/apt/keyrings/kubernetes.asc', owner: 'root', group: 'root', mode: '0644', content: `${keys.a}\n` },
      { path: '/etc/apt/sources.list.d/kubernetes.sources', owner: 'root', group: 'root', mode: '0644', content: sources },
    ]);
    expect(records.files).toEqual([
      { path: '/etc/apt/keyrings/kubernetes.asc', sha256: sha256(`${keys.a}\n`), kind: 'config', source: `${base}/a.asc` },
      { path: '/etc/apt/sources.list.d/kubernetes.sources', sha256: sha256(sources), kind: 'config' },
    ]);
  });

  test('a suite with components; an inline key needs no fingerprint', async () => {
    const { session, calls } = fakeSession();
    const { context, records } = fakeStepContext(session);
    await repositoryStep.run(context, { name: 'docker', url: 'https://download.docker.com/linux/debian', suite: 'bookworm', components: ['stable', 'test'], key: keys.b });
    expect(calls.map(writeOf)).toEqual([
      { path: '/etc/apt/keyrings/docker.asc', owner: 'root', group: 'root', mode: '0644', content: keys.b },
      {
        path: '/etc/apt/sources.list.d/docker.sources',
        owner: 'root',
        group: 'root',
        mode: '0644',
        content: 'Types: deb\nURIs: https://download.docker.com/linux/debian\nSuites: bookworm\nComponents: stable test\nSigned-By: /etc/apt/keyrings/docker.asc\n',
      },
    ]);
    expect(records.files.map((f) => [f.path, f.source])).toEqual([
      ['/etc/apt/keyrings/docker.asc', undefined],
      ['/etc/apt/sources.list.d/docker.sources', undefined],
    ]);
  });

  test('a binary key is written byte for byte as NAME.gpg, which Signed-By names', async () => {
    const { session, calls } = fakeSession();
    const { context, records } = fakeStepContext(session);
    await repositoryStep.run(context, { name: 'bin', url: 'http://127.0.0.1:1/deb/', key_url: `${base}/a.gpg`, fingerprint: keys.fprA });
    const [key, sources] = calls.map(writeOf);
    expect(key.path).toBe('/etc/apt/keyrings/bin.gpg');
    expect(key.content).toBe(keys.aBinary.toString('latin1'));
    expect(sources.content).toContain('Signed-By: /etc/apt/keyrings/bin.gpg\n');
    expect(records.files[0].sha256).toBe(sha256(keys.aBinary));
  });

  test('a fingerprint mismatch fails the step naming expected and actual, before any guest command', async () => {
    const { session, calls } = fakeSession();
    const { context, records } = fakeStepContext(session);
    const error = await repositoryStep.run(context, { name: 'k', url: 'http://127.0.0.1:1/deb/', key_url: `${base}/a.asc`, fingerprint: keys.fprB }).catch((e) => e);
    expect(error.code).toBe('STEP_FAILED');
    expect(error.message).toBe(`step 1/1 (test): the key of repository k has fingerprint ${keys.fprA}, expected ${keys.fprB}`);
    expect(error.detail).toContain(`expected fingerprint ${keys.fprB}`);
    expect(error.detail).toContain(`actual   fingerprint ${keys.fprA} (Repo A <a@example.invalid>)`);
    expect(calls).toEqual([]);
    expect(records.files).toEqual([]);
  });

  test('an inline key with a fingerprint given is checked too', async () => {
    const { session, calls } = fakeSession();
    const { context } = fakeStepContext(session);
    await expect(repositoryStep.run(context, { name: 'k', url: 'http://127.0.0.1:1/deb/', key: keys.a, fingerprint: spaced(keys.fprB) })).rejects.toMatchObject({
      code: 'STEP_FAILED',
      message: expect.stringContaining(`fingerprint ${keys.fprA}, expected ${keys.fprB}`),
    });
    expect(calls).toEqual([]);
  });

  test('a file with several primary keys fails, naming every one, even when one of them matches', async () => {
    const { session, calls } = fakeSession();
    const { context } = fakeStepContext(session);
    const error = await repositoryStep.run(context, { name: 'k', url: 'http://127.0.0.1:1/deb/', key_url: `${base}/both.asc`, fingerprint: keys.fprA }).catch((e) => e);
    expect(error.code).toBe('STEP_FAILED');
    expect(error.message).toBe(`step 1/1 (test): ${base}/both.asc holds 2 primary keys, not one`);
    expect(error.detail).toContain(`${keys.fprA} (Repo A <a@example.invalid>)`);
    expect(error.detail).toContain(`${keys.fprB} (Repo B <b@example.invalid>)`);
    expect(error.detail).toContain(`expected exactly one: ${keys.fprA}`);
    expect(calls).toEqual([]);
  });

  test('not a key, a secret key, or a key URL that fails: the step fails and the guest is untouched', async () => {
    const { session, calls } = fakeSession();
    const { context } = fakeStepContext(session);
    const run = (path: string) => repositoryStep.run(context, { name: 'k', url: 'http://127.0.0.1:1/deb/', key_url: `${base}${path}`, fingerprint: keys.fprA });
    await expect(run('/not-a-key')).rejects.toMatchObject({
      code: 'STEP_FAILED',
      message: `step 1/1 (test): ${base}/not-a-key is not an OpenPGP public key`,
      detail: expect.stringMatching(/no valid OpenPGP data found[\s\S]*it starts with: "<html>Not Found<\/html>\\n"/),
    });
    await expect(run('/secret.asc')).rejects.toMatchObject({ code: 'STEP_FAILED', message: expect.stringContaining('holds a secret key, not a public key') });
    await expect(run('/missing.asc')).rejects.toMatchObject({ code: 'STEP_FAILED', message: expect.stringMatching(/cannot fetch the key of repository k: .*HTTP 404/) });
    expect(calls).toEqual([]);
  });

  test("the key (from the network or a bundle) is parsed by gpg as a uid of its own (not nobody's) in the unprivileged box, with no network", async () => {
    const commands: string[][] = [];
    const recording: Runner = (file, args, options) => (commands.push([file, ...args]), execRunner(file, args, options));
    expect((await inspectOpenPgpKey(Buffer.from(keys.a), { run: recording })).keys.map((key) => key.fingerprint)).toEqual([keys.fprA]);
    expect(commands).toHaveLength(1);
    expect(commands[0][0]).toBe('bwrap');
    expect(commands[0]).toEqual(expect.arrayContaining(['--unshare-net', '--bounding-set', '-all']));
    const uid = Number(commands[0][commands[0].indexOf('--reuid') + 1]);
    expect(uid).toBeGreaterThanOrEqual(BOX_UIDS.first);
    expect(uid).toBeLessThan(BOX_UIDS.first + BOX_UIDS.count);
    expect(commands[0][commands[0].indexOf('--regid') + 1]).toBe(String(uid));
    // Released with the box: nothing runs as it, and it can be claimed again.
    expect(await processesRunningAs(uid)).toEqual([]);
    expect(await withBoxUid('the test', async (again) => again, { range: { first: uid, count: 1 } })).toBe(uid);
    expect(commands[0].slice(commands[0].indexOf('gpg'))).toEqual(['gpg', '--homedir', '/gnupg', '--batch', '--no-tty', '--no-autostart', '--with-colons', '--show-keys']);
  });

  test('a host without gpg: MISSING_TOOL saying what to install, nothing run', async () => {
    const { session, calls } = fakeSession();
    const { context } = fakeStepContext(session);
    const path = process.env.PATH;
    process.env.PATH = '/nonexistent';
    try {
      await expect(repositoryStep.run(context, { name: 'k', url: 'http://127.0.0.1:1/deb/', key: keys.a })).rejects.toMatchObject({
        code: 'MISSING_TOOL',
        message: 'gpg is not installed on this host: the repository step checks keys with it',
        hint: expect.stringContaining('apt-get install gpg'),
      });
    } finally {
      process.env.PATH = path;
    }
    expect(calls).toEqual([]);
  });

  test('an unknown distribution family: a clear failure, nothing run', async () => {
    const { session, calls } = fakeSession();
    const { context } = fakeStepContext(session, { distro: detectDistro({ ID: 'plan9', PRETTY_NAME: 'Plan 9' }) });
    await expect(repositoryStep.run(context, { name: 'k', url: 'http://127.0.0.1:1/deb/', key: keys.a })).rejects.toMatchObject({
      code: 'STEP_FAILED',
      message: expect.stringContaining('the repository step is not supported on Plan 9'),
    });
    expect(calls).toEqual([]);
  });

  test('after a repository is added, the next install in the session fetches the package lists again', async () => {
    const { session, calls } = fakeSession();
    const { context } = fakeStepContext(session);
    await packagesStep.run(context, { install: ['socat'] });
    await packagesStep.run(context, { install: ['conntrack'] });
    await repositoryStep.run(context, { name: 'k', url: 'http://127.0.0.1:1/deb/', key: keys.a });
    await packagesStep.run(context, { install: ['kubectl'] });
    const install = (name: string) => ['apt-get', 'install', ...APT_OPTIONS, '--no-install-recommends', name];
    expect(calls.map(shown)).toEqual([
      APT_CONF, UPDATE, install('socat'), CLEAN,
      install('conntrack'), CLEAN,
      'write /etc/apt/keyrings/k.asc', 'write /etc/apt/sources.list.d/k.sources',
      UPDATE, install('kubectl'), CLEAN,
    ]);
  });

  test('a later session on the same guest (the step cache: a session per step) finds the lists and does not fetch them again, unless they are gone or apt\'s configuration changed', async () => {
    const root = await mkdtemp(join(tmpdir(), 'ib-apt-root-'));
    try {
      const lists = join(root, 'var/lib/apt/lists');
      await mkdir(lists, { recursive: true });
      await writeFile(join(lists, 'lock'), '');
      const install = (name: string) => ['apt-get', 'install', ...APT_OPTIONS, '--no-install-recommends', name];
      const step = async (name: string) => {
        const { session, calls } = fakeSession(() => undefined, root);
        await packagesStep.run(fakeStepContext(session).context, { install: [name] });
        return calls.map(shown);
      };
      // No lists yet: fetched (the fake apt writes one, as apt-get update would).
      expect(await step('socat')).toEqual([APT_CONF, UPDATE, install('socat'), CLEAN]);
      await writeFile(join(lists, 'deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages'), '');
      expect(await step('conntrack')).toEqual([APT_CONF, install('conntrack'), CLEAN]);
      // A step other than repository (run, file) added a source: apt's configuration changed, fetched again.
      await mkdir(join(root, 'etc/apt/sources.list.d'), { recursive: true });
      await writeFile(join(root, 'etc/apt/sources.list.d/vendor.sources'), 'Types: deb\nURIs: http://127.0.0.1:1/\nSuites: ./\n');
      expect(await step('iptables')).toEqual([APT_CONF, UPDATE, install('iptables'), CLEAN]);
      expect(await step('ebtables')).toEqual([APT_CONF, install('ebtables'), CLEAN]);
      // A step removed them: the next one fetches them again.
      await rm(join(lists, 'deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages'));
      expect(await step('ethtool')).toEqual([APT_CONF, UPDATE, install('ethtool'), CLEAN]);
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });

  test('gpg colon listings: primary fingerprints only, user ids unescaped', () => {
    const listing = [
      'pub:-:255:22:CA7D4C642233BD2B:1795496061:::-:::scSC:::::ed25519:::0:',
      'fpr:::::::::6ACCE82A223F0B3DE753057DCA7D4C642233BD2B:',
      'uid:-::::1795496061::FE0D::Repo \\x3a A <a@example.invalid>::::::::::0:',
      'sub:-:255:18:1111111111111111:1795496061::::::e:::::cv25519::',
      'fpr:::::::::0000000000000000000000001111111111111111:',
      '',
    ].join('\n');
    expect(parseGpgColons(listing)).toEqual([{ fingerprint: '6ACCE82A223F0B3DE753057DCA7D4C642233BD2B', type: 'pub', userIds: ['Repo : A <a@example.invalid>'] }]);
    expect(normalizeFingerprint(' de15 b144 86cd 377b 9e87  6e1a 2346 54da 9a29 6436 ')).toBe('DE15B14486CD377B9E876E1A234654DA9A296436');
  });
});

describe('packages step: upgrade and hold', () => {
  test('order is remove, install, upgrade, hold; each with its exact argv', async () => {
    const { session, calls } = fakeSession();
    const { context } = fakeStepContext(session);
    await packagesStep.run(context, { remove: ['nano'], install: ['kubelet=1.30.1-1.1'], upgrade: ['kubectl', 'kubeadm'], hold: ['kubelet', 'kubectl'] });
    expect(calls.map(shown)).toEqual([
      APT_CONF,
      ['apt-get', 'purge', ...APT_OPTIONS, 'nano'],
      ['apt-get', 'autoremove', '--purge', ...APT_OPTIONS],
      UPDATE,
      ['apt-get', 'install', ...APT_OPTIONS, '--no-install-recommends', 'kubelet=1.30.1-1.1'],
      CLEAN,
      ['apt-get', 'install', ...APT_OPTIONS, '--no-install-recommends', '--only-upgrade', 'kubectl', 'kubeadm'],
      CLEAN,
      ['apt-mark', ...APT_BIN_CACHES, 'hold', 'kubelet', 'kubectl'],
    ]);
    // Every apt command but apt-get clean passes APT_CONFIG on to what it starts (debconf's hook, python-apt);
    // apt-get clean cleans /var/cache/apt as always.
    for (const call of calls.slice(1)) expect(call.env).toEqual(call.argv[1] === 'clean' ? undefined : { APT_CONFIG: '/run/imagebuilder-apt.conf' });
    expect(calls[0].input).toBe('Dir::Cache::pkgcache "/run/imagebuilder-apt-pkgcache.bin";\nDir::Cache::srcpkgcache "/run/imagebuilder-apt-srcpkgcache.bin";\n');
  });

  test('upgrade: true is apt-get upgrade, after fetching the package lists', async () => {
    const { session, calls } = fakeSession();
    const { context } = fakeStepContext(session);
    await packagesStep.run(context, { upgrade: true });
    expect(calls.map(shown)).toEqual([APT_CONF, UPDATE, ['apt-get', 'upgrade', ...APT_OPTIONS], CLEAN]);
  });

  test('hold: true holds exactly the packages install names, without their versions', async () => {
    const { session, calls } = fakeSession();
    const { context } = fakeStepContext(session);
    await packagesStep.run(context, { install: ['kubelet=1.30.1-1.1', 'kubeadm=1.30.1-1.1', 'kubectl'], hold: true });
    expect(calls.at(-1)!.argv).toEqual(['apt-mark', ...APT_BIN_CACHES, 'hold', 'kubelet', 'kubeadm', 'kubectl']);
    expect(calls.filter((c) => c.argv[0] === 'apt-mark')).toHaveLength(1);
  });

  test('hold alone runs apt-mark only', async () => {
    const { session, calls } = fakeSession();
    const { context } = fakeStepContext(session);
    await packagesStep.run(context, { hold: ['containerd'] });
    expect(calls.map(shown)).toEqual([APT_CONF, ['apt-mark', ...APT_BIN_CACHES, 'hold', 'containerd']]);
  });

  test('describe says what the step does', () => {
    expect(packagesStep.describe({ install: ['a=1', 'b'], upgrade: true, hold: true })).toBe('install a=1 b, upgrade all, hold a b');
    expect(packagesStep.describe({ remove: ['x'], upgrade: ['y'], hold: ['z'] })).toBe('remove x, upgrade y, hold z');
  });
});

describe('schemas of repository and packages', () => {
  const problems = (step: unknown) => parseRecipe(JSON.stringify({ name: 't', steps: [step] }), 'r.json').problems.map((p) => p.message);

  test('the examples validate', () => {
    for (const type of [repositoryStep, packagesStep]) expect(problems({ [type.key]: type.example })).toEqual([]);
    expect(repositoryStep.example.fingerprint && normalizeFingerprint(repositoryStep.example.fingerprint)).toMatch(/^[0-9A-F]{40}$/);
  });

  test.each([
    [{ name: 'k', url: 'http://h/deb/', key: '-----BEGIN PGP PUBLIC KEY BLOCK-----\n...' }],
    [{ name: 'k', url: 'http://h/deb/', key: '-----BEGIN PGP PUBLIC KEY BLOCK-----\n...', fingerprint: 'a'.repeat(40) }],
    [{ name: 'k.v1_2-x', url: 'https://h/debian', suite: 'bookworm', components: ['main'], key_url: 'https://h/k', fingerprint: 'DE15 B144 86CD 377B 9E87  6E1A 2346 54DA 9A29 6436' }],
    [{ name: 'k', url: 'https://h/debian', suite: 'sub/dir/', key_url: 'https://h/k', fingerprint: 'f'.repeat(40) }],
  ])('valid repository %j', (spec) => {
    expect(problems({ repository: spec })).toEqual([]);
  });

  test.each([
    [{ name: 'k', url: 'http://h/', key_url: 'http://h/k' }, 'steps[0].repository: missing required key "fingerprint"'],
    [{ name: 'k', url: 'http://h/' }, 'steps[0].repository: missing required key "key"'],
    [{ name: 'k', url: 'http://h/', key_url: 'http://h/k', fingerprint: 'A'.repeat(39) }, 'steps[0].repository.fingerprint must match pattern'],
    [{ name: 'k', url: 'http://h/', key_url: 'http://h/k', fingerprint: 'G'.repeat(40) }, 'steps[0].repository.fingerprint must match pattern'],
    [{ name: 'k', url: 'http://h/', key_url: 'http://h/k', fingerprint: 'A'.repeat(40), key: '-----BEGIN PGP PUBLIC KEY BLOCK-----' }, 'steps[0].repository.key '],
    [{ name: 'k', url: 'http://h/', key_url: 'http://h/k', fingerprint: 'A'.repeat(40), components: ['main'] }, 'steps[0].repository.components '],
    [{ name: 'k', url: 'http://h/', key_url: 'http://h/k', fingerprint: 'A'.repeat(40), suite: 'bookworm' }, 'steps[0].repository: missing required key "components"'],
    [{ name: '../etc/passwd', url: 'http://h/', key_url: 'http://h/k', fingerprint: 'A'.repeat(40) }, 'steps[0].repository.name must match pattern'],
    [{ name: 'k', url: 'ftp://h/', key_url: 'http://h/k', fingerprint: 'A'.repeat(40) }, 'steps[0].repository.url must match pattern'],
    [{ name: 'k', url: 'http://h/', key: 'not armored' }, 'steps[0].repository.key must match pattern'],
    [{ name: 'k', url: 'http://h/', key_url: 'http://h/k', fingerprint: 'A'.repeat(40), trusted: true }, 'steps[0].repository: unknown key "trusted"'],
  ])('invalid repository %j: %s', (spec, message) => {
    // Exactly one problem, at the offending key (the loader words "not allowed together" its own way).
    const found = problems({ repository: spec });
    expect(found).toHaveLength(1);
    expect(found[0]).toContain(message);
  });

  test.each([
    [{ upgrade: true }],
    [{ upgrade: ['kubectl'] }],
    [{ hold: ['kubelet', 'kubeadm'] }],
    [{ install: ['kubelet=1.30.1-1.1'], hold: true }],
    [{ remove: ['nano'], install: ['a'], upgrade: true, hold: ['a'] }],
  ])('valid packages %j', (spec) => {
    expect(problems({ packages: spec })).toEqual([]);
  });

  test.each([
    [{ hold: true }, 'steps[0].packages: missing required key "install"'],
    [{ upgrade: false }, 'steps[0].packages.upgrade must be one of true'],
    [{ upgrade: ['kubectl=1.30.2-1.1'] }, 'steps[0].packages.upgrade[0] must match pattern'],
    [{ hold: ['kubelet=1.30.1-1.1'] }, 'steps[0].packages.hold[0] must match pattern'],
    [{ hold: [] }, 'steps[0].packages.hold must NOT have fewer than 1 items'],
    [{}, 'steps[0].packages must NOT have fewer than 1 properties'],
  ])('invalid packages %j: %s', (spec, message) => {
    expect(problems({ packages: spec }).join('\n')).toContain(message);
  });
});
