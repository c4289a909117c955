import { createHash, randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { chmod, lstat, mkdir, mkdtemp, readdir, readFile, readlink, rm, stat, symlink, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import tar from 'tar-stream';
import { fixtureImage } from '../helpers/fixtures.js';
import { expectNothingLeft, hostState, runCli, jsonResult } from '../helpers/host.js';
import { withImageMounted } from '../helpers/inspect.js';
import { writeRecipe } from '../helpers/recipes.js';

const sha256 = (data: Buffer | string) => createHash('sha256').update(data).digest('hex');

/** The numeric id of a name in a passwd or group file of the output image (read by the test, not the tool). */
async function idIn(file: string, name: string): Promise<number> {
  const line = (await readFile(file, 'utf8')).split('\n').find((l) => l.startsWith(`${name}:`));
  if (!line) throw new Error(`${name} not in ${file}`);
  return Number(line.split(':')[2]);
}

/** A release tarball the way upstream projects lay them out: one top directory, bin/ inside, built by some uid. */
async function releaseTarball(): Promise<Buffer> {
  const pack = tar.pack();
  const owner = { uid: 1001, gid: 1001, uname: 'builder', gname: 'builder' };
  pack.entry({ name: 'thing-1.0/', type: 'directory', mode: 0o755, ...owner });
  pack.entry({ name: 'thing-1.0/bin/', type: 'directory', mode: 0o755, ...owner });
  pack.entry({ name: 'thing-1.0/bin/thing', mode: 0o755, ...owner }, '#!/bin/sh\necho thing 1.0\n');
  pack.entry({ name: 'thing-1.0/share/doc/thing/README', mode: 0o644, ...owner }, 'thing, release 1.0\n');
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const chunk of pack) chunks.push(chunk as Buffer);
  return gzipSync(Buffer.concat(chunks));
}

/** download and copy in a real guest: bytes, modes, owners by the guest's names, symlinks, the BOM. */
describe('download and copy steps in a real image (fuse)', () => {
  let work: string;
  let tmp: string;
  let server: Server;
  let base: string;
  const binary = Buffer.concat([Buffer.from('\x7fELF\x02\x01\x01\x00', 'latin1'), randomBytes(300_000)]);
  let tarball: Buffer;

  beforeAll(async () => {
    work = await mkdtemp('/var/tmp/ib-transfer-');
    tmp = await mkdtemp('/var/tmp/ib-transfer-tmp-');
    tarball = await releaseTarball();
    const routes: Record<string, Buffer | string> = {
      '/releases/v1.0/thing-cli': binary,
      '/releases/v1.0/thing-cli.sha256': `${sha256(binary)}  thing-cli\n`,
      '/releases/v1.0/thing-1.0-linux-amd64.tar.gz': tarball,
      '/releases/v1.0/SHA256SUMS': `${sha256('other')}  thing-1.0-linux-arm64.tar.gz\n${sha256(tarball)}  thing-1.0-linux-amd64.tar.gz\n`,
    };
    server = createServer((req, res) => {
      const body = routes[req.url!];
      if (body === undefined) res.writeHead(404).end();
      else res.end(body);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}/releases/v1.0`;
  });
  afterAll(async () => {
    await new Promise((resolve) => server.close(resolve));
    await rm(work, { recursive: true, force: true });
    await rm(tmp, { recursive: true, force: true });
  });

  test('downloads verified by .sha256 and SHA256SUMS, a .tgz unpacked, a host tree copied with guest owners', async () => {
    // The host tree to copy, beside the recipe.
    const app = join(work, 'files/app');
    await mkdir(join(app, 'bin'), { recursive: true });
    await mkdir(join(app, 'conf/deep'), { recursive: true });
    await writeFile(join(app, 'bin/run.sh'), '#!/bin/sh\nexec /usr/local/bin/thing-cli "$@"\n');
    await writeFile(join(app, 'conf/app.conf'), 'listen = 127.0.0.1:8080\n');
    await writeFile(join(app, 'conf/deep/data.bin'), randomBytes(70_000));
    await symlink('bin/run.sh', join(app, 'run'));
    await chmod(join(app, 'bin/run.sh'), 0o750);
    await chmod(join(app, 'conf/app.conf'), 0o640);
    await chmod(join(app, 'conf/deep'), 0o750);
    await utimes(join(app, 'conf/app.conf'), 1_600_000_000, 1_600_000_000);
    await writeFile(join(work, 'files/motd'), 'built by imagebuilder\n');

    const recipe = await writeRecipe(work, 'transfer', [
      { download: { url: `${base}/thing-cli`, checksum_url: `${base}/thing-cli.sha256`, dest: '/usr/local/bin/thing-cli', mode: '0755' } },
      { download: { url: `${base}/thing-1.0-linux-amd64.tar.gz`, checksum_url: `${base}/SHA256SUMS`, extract: '/opt/thing', strip_components: 1 } },
      { copy: { src: 'files/app', dest: '/etc/app', owner: 'daemon', group: 'adm' } },
      // A user and group that exist only in the guest: the names can only be mapped by the guest's own files.
      { run: 'groupadd --gid 777 thinggrp\nuseradd --system --uid 778 --gid thinggrp --no-create-home thingsvc' },
      { copy: { src: 'files/motd', dest: '/etc/motd.d/hello', owner: 'thingsvc', group: 'thinggrp', mode: '0600' } },
    ]);
    const output = join(work, 'transfer-out.qcow2');
    const input = await fixtureImage('gpt-esp');
    const before = await hostState();

    const result = await runCli(['apply', recipe, '--disk-image', input, '--output', output, '--mount-backend', 'fuse', '--sparsify', 'fstrim', '--json'], {
      env: { IMAGEBUILDER_WORK_DIR: tmp },
    });

    expect(result.stderr).not.toContain('error');
    expect(result.exitCode).toBe(0);
    expect(await readdir(tmp)).toEqual([]);
    const bom = JSON.parse(await readFile(jsonResult(result.stdout).bom, 'utf8'));

    await withImageMounted(output, 'gpt-esp', async (root) => {
      const daemon = await idIn(join(root, 'etc/passwd'), 'daemon');
      const adm = await idIn(join(root, 'etc/group'), 'adm');
      expect([daemon, adm]).toEqual([1, 4]);
      expect([await idIn(join(root, 'etc/passwd'), 'thingsvc'), await idIn(join(root, 'etc/group'), 'thinggrp')]).toEqual([778, 777]);

      // The verified download, byte for byte, as root with its mode.
      const cli = join(root, 'usr/local/bin/thing-cli');
      expect((await readFile(cli)).equals(binary)).toBe(true);
      expect(sha256(await readFile(cli))).toBe(sha256(binary));
      const cliStat = await stat(cli);
      expect([cliStat.mode & 0o7777, cliStat.uid, cliStat.gid]).toEqual([0o755, 0, 0]);

      // The release tarball, one component stripped, owned by root whatever uid built it.
      const thing = await lstat(join(root, 'opt/thing/bin/thing'));
      expect([thing.mode & 0o7777, thing.uid, thing.gid]).toEqual([0o755, 0, 0]);
      expect(await readFile(join(root, 'opt/thing/bin/thing'), 'utf8')).toBe('#!/bin/sh\necho thing 1.0\n');
      expect(await readFile(join(root, 'opt/thing/share/doc/thing/README'), 'utf8')).toBe('thing, release 1.0\n');
      expect((await readdir(join(root, 'opt/thing'))).sort()).toEqual(['bin', 'share']);
      expect((await stat(join(root, 'opt/thing/share/doc'))).uid).toBe(0);

      // The copied tree: modes, mtimes, owners from the guest's names, the symlink kept as a symlink.
      const ownerOf = async (path: string) => {
        const s = await lstat(join(root, 'etc/app', path));
        return [s.uid, s.gid];
      };
      for (const path of ['bin', 'bin/run.sh', 'conf', 'conf/app.conf', 'conf/deep', 'conf/deep/data.bin', 'run']) expect([path, ...(await ownerOf(path))]).toEqual([path, daemon, adm]);
      expect((await stat(join(root, 'etc/app/bin/run.sh'))).mode & 0o7777).toBe(0o750);
      expect((await stat(join(root, 'etc/app/conf/app.conf'))).mode & 0o7777).toBe(0o640);
      expect((await stat(join(root, 'etc/app/conf/deep'))).mode & 0o7777).toBe(0o750);
      expect((await stat(join(root, 'etc/app/conf/app.conf'))).mtimeMs).toBe(1_600_000_000_000);
      expect((await lstat(join(root, 'etc/app/run'))).isSymbolicLink()).toBe(true);
      expect(await readlink(join(root, 'etc/app/run'))).toBe('bin/run.sh');
      expect(await readFile(join(root, 'etc/app/conf/deep/data.bin'))).toEqual(await readFile(join(app, 'conf/deep/data.bin')));
      // The destination directory itself is not taken from the host's (private, 0700) directory.
      expect((await stat(join(root, 'etc/app'))).uid).toBe(0);

      const motd = await stat(join(root, 'etc/motd.d/hello'));
      expect([motd.mode & 0o7777, motd.uid, motd.gid]).toEqual([0o600, 778, 777]);
      expect(await readFile(join(root, 'etc/motd.d/hello'), 'utf8')).toBe('built by imagebuilder\n');
    });

    const hostSha = async (path: string) => sha256(await readFile(join(work, path)));
    expect(bom.files).toEqual([
      { path: '/usr/local/bin/thing-cli', sha256: sha256(binary), kind: 'download', source: `${base}/thing-cli` },
      { path: '/opt/thing', sha256: sha256(tarball), kind: 'download', source: `${base}/thing-1.0-linux-amd64.tar.gz` },
      { path: '/etc/app/bin/run.sh', sha256: await hostSha('files/app/bin/run.sh'), kind: 'copy', source: join(work, 'files/app/bin/run.sh') },
      { path: '/etc/app/conf/app.conf', sha256: await hostSha('files/app/conf/app.conf'), kind: 'copy', source: join(work, 'files/app/conf/app.conf') },
      { path: '/etc/app/conf/deep/data.bin', sha256: await hostSha('files/app/conf/deep/data.bin'), kind: 'copy', source: join(work, 'files/app/conf/deep/data.bin') },
      { path: '/etc/motd.d/hello', sha256: await hostSha('files/motd'), kind: 'copy', source: join(work, 'files/motd') },
    ]);
    await expectNothingLeft(before);
  });

  test('a sha256 mismatch fails the build with exit code 4, naming the URL and both sums, and leaves nothing', async () => {
    const wrong = '0'.repeat(64);
    const url = `${base}/thing-cli`;
    const recipe = await writeRecipe(work, 'mismatch', [
      { file: { path: '/etc/first', content: 'x' } },
      { name: 'fetch thing', download: { url, sha256: wrong, dest: '/usr/local/bin/thing-cli' } },
    ]);
    const output = join(work, 'mismatch-out.qcow2');
    const before = await hostState();
    const result = await runCli(['apply', recipe, '--disk-image', await fixtureImage('gpt-esp'), '--output', output, '--mount-backend', 'fuse', '--sparsify', 'fstrim'], {
      env: { IMAGEBUILDER_WORK_DIR: tmp },
    });
    expect(result.exitCode).toBe(4);
    expect(result.stderr).toContain(`error [STEP_FAILED]: step 2/2 (fetch thing): checksum mismatch for ${url}`);
    expect(result.stderr).toContain(`expected sha256 ${wrong} (from the recipe)`);
    expect(result.stderr).toContain(`actual   sha256 ${sha256(binary)}`);
    expect((await readdir(work)).filter((name) => name.startsWith('mismatch-out'))).toEqual([]);
    expect(await readdir(tmp)).toEqual([]);
    await expectNothingLeft(before);
  });
});
