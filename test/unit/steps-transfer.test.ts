import { createHash, randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdir, mkdtemp, readdir, rm, symlink, utimes, writeFile, chmod } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import tar from 'tar-stream';
import { parseRecipe } from '../../src/recipe/load.js';
import { copyStep } from '../../src/steps/copy.js';
import { downloadStep, sumFromChecksumFile } from '../../src/steps/download.js';
import type { ImageBuilderError } from '../../src/util/errors.js';
import { createLogger } from '../../src/util/log.js';
import { withSourceDateEpoch } from '../helpers/env.js';
import { fakeSession, fakeStepContext } from '../helpers/fake-session.js';

const sha256 = (data: Buffer | string) => createHash('sha256').update(data).digest('hex');

/** The exact commands the guest helpers run (src/chroot/guest-write.ts). */
const WRITE_SCRIPT =
  'set -e; dir=${1%/*}; [ -z "$dir" ] || [ -d "$dir" ] || mkdir -p -- "$dir"; tmp="$1.imagebuilder-new"; cat > "$tmp"; chown -- "$2:$3" "$tmp"; chmod -- "$4" "$tmp"; [ -z "$5" ] || touch -m -d "$5" -- "$tmp"; mv -f -- "$tmp" "$1"';
const EXTRACT_SCRIPT = 'set -e; dir="$1"; shift; mkdir -p -- "$dir"; tar -x -p -f - -C "$dir" "$@"';

interface TarEntry {
  name: string;
  type: string;
  mode: number;
  uid: number;
  gid: number;
  uname: string;
  gname: string;
  linkname: string | null;
  mtime: number;
  body: Buffer;
}

/** Parses what the fake session collected as stdin (latin1 text) as a tar archive, the way the guest's tar would. */
async function tarEntries(stdin: string | undefined): Promise<TarEntry[]> {
  const extract = tar.extract();
  const entries: TarEntry[] = [];
  const reading = (async () => {
    for await (const entry of extract) {
      const chunks: Buffer[] = [];
      for await (const chunk of entry) chunks.push(chunk as Buffer);
      const h = entry.header;
      entries.push({ name: h.name, type: h.type, mode: h.mode, uid: h.uid, gid: h.gid, uname: h.uname, gname: h.gname, linkname: h.linkname, mtime: h.mtime.getTime() / 1000, body: Buffer.concat(chunks) });
    }
  })();
  extract.end(Buffer.from(stdin ?? '', 'latin1'));
  await reading;
  return entries;
}

/** A tar archive built in the test, laid out like an upstream release. */
async function makeTar(files: { name: string; content?: string; mode: number; type?: 'directory' }[]): Promise<Buffer> {
  const pack = tar.pack();
  for (const file of files) {
    if (file.type) pack.entry({ name: file.name, type: 'directory', mode: file.mode, uid: 1001, gid: 1001, uname: 'builder', gname: 'builder' });
    else pack.entry({ name: file.name, mode: file.mode, uid: 1001, gid: 1001, uname: 'builder', gname: 'builder' }, file.content ?? '');
  }
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const chunk of pack) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

describe('download and copy steps (fake session)', () => {
  let server: Server;
  let base: string;
  let work: string;
  let downloadTemp: string;
  const savedWorkDir = process.env.IMAGEBUILDER_WORK_DIR;
  // An ELF-looking binary with every byte value in it: the bytes must arrive exactly.
  const binary = Buffer.concat([Buffer.from('\x7fELF', 'latin1'), Buffer.from(Array.from({ length: 256 }, (_, i) => i)), randomBytes(200_000)]);
  const binarySha = sha256(binary);
  let tarball: Buffer;
  let innerTar: Buffer;
  const requests: string[] = [];
  const failedOnce = new Set<string>();

  beforeAll(async () => {
    innerTar = await makeTar([
      { name: 'thing-1.0/', type: 'directory', mode: 0o755 },
      { name: 'thing-1.0/bin/thing', content: '#!/bin/sh\necho thing\n', mode: 0o755 },
      { name: 'thing-1.0/README', content: 'read me\n', mode: 0o644 },
    ]);
    tarball = gzipSync(innerTar);
    const routes: Record<string, (res: import('node:http').ServerResponse) => void> = {
      '/files/thing.bin': (res) => res.end(binary),
      '/files/thing.bin.sha256': (res) => res.end(`${binarySha}\n`),
      '/files/named.sha256': (res) => res.end(`${binarySha}  thing.bin\n`),
      '/files/wrong.sha256': (res) => res.end(`${'b'.repeat(64)}  thing.bin\n`),
      '/files/SHA256SUMS': (res) => res.end(`${'c'.repeat(64)}  other.bin\n${binarySha} *thing.bin\n${sha256(tarball)}  thing-1.0.tar.gz\n`),
      '/files/thing-1.0.tar.gz': (res) => res.end(tarball),
      '/redirect/thing.bin': (res) => res.writeHead(302, { location: '/files/thing.bin' }).end(),
      // Failing once, then whole: a 503, and a connection dropped half way through the body.
      '/flaky/thing.bin': (res) => (failedOnce.has('503') ? res.end(binary) : (failedOnce.add('503'), res.writeHead(503).end('busy'))),
      '/dropped/thing.bin': (res) => {
        if (failedOnce.has('drop')) return res.end(binary);
        failedOnce.add('drop');
        res.writeHead(200, { 'content-length': String(binary.length) });
        res.write(binary.subarray(0, 100_000), () => res.destroy());
      },
    };
    server = createServer((req, res) => {
      requests.push(req.url!);
      const route = routes[req.url!];
      if (route) route(res);
      else res.writeHead(404).end('not found');
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    work = await mkdtemp(join(tmpdir(), 'ib-transfer-'));
    downloadTemp = join(work, 'tmp');
    await mkdir(downloadTemp);
    // Downloads go to private temp dirs under IMAGEBUILDER_WORK_DIR: every test checks none is left.
    process.env.IMAGEBUILDER_WORK_DIR = downloadTemp;
  });
  afterAll(async () => {
    if (savedWorkDir === undefined) delete process.env.IMAGEBUILDER_WORK_DIR;
    else process.env.IMAGEBUILDER_WORK_DIR = savedWorkDir;
    await new Promise((resolve) => server.close(resolve));
    await rm(work, { recursive: true, force: true });
  });
  afterEach(async () => {
    const left = await readdir(downloadTemp);
    for (const name of left) await rm(join(downloadTemp, name), { recursive: true, force: true });
    expect(left).toEqual([]);
  });

  describe('download', () => {
    async function download(spec: Parameters<typeof downloadStep.run>[1], overrides = {}) {
      const { session, calls } = fakeSession();
      const { context, records } = fakeStepContext(session, overrides);
      const outcome = await downloadStep.run(context, spec).then(
        () => undefined,
        (error: ImageBuilderError) => error,
      );
      return { calls, files: records.files, error: outcome };
    }

    test('inline sha256: the exact bytes are written to dest with mode, owner and group, and recorded', async () => {
      const url = `${base}/files/thing.bin`;
      const { calls, files, error } = await download({ url, sha256: binarySha.toUpperCase(), dest: '/usr/local/bin/thing', mode: '0755', owner: 'daemon', group: 'adm' });
      expect(error).toBeUndefined();
      expect(calls.map((c) => c.argv)).toEqual([['/bin/sh', '-c', WRITE_SCRIPT, 'write-file', '/usr/local/bin/thing', 'daemon', 'adm', '0755']]);
      expect(Buffer.from(calls[0].input!, 'latin1').equals(binary)).toBe(true);
      expect(files).toEqual([{ path: '/usr/local/bin/thing', sha256: binarySha, kind: 'download', source: url }]);
    });

    test('defaults: root:root 0644', async () => {
      const { calls } = await download({ url: `${base}/files/thing.bin`, sha256: binarySha, dest: '/opt/thing.bin' });
      expect(calls.map((c) => c.argv)).toEqual([['/bin/sh', '-c', WRITE_SCRIPT, 'write-file', '/opt/thing.bin', 'root', 'root', '0644']]);
    });

    test.each([
      ['a bare <file>.sha256', '/files/thing.bin.sha256'],
      ['a "hash  name" .sha256', '/files/named.sha256'],
      ['SHA256SUMS (the line for the file name)', '/files/SHA256SUMS'],
    ])('the expected sum from %s', async (_, path) => {
      const url = `${base}/files/thing.bin`;
      const { calls, files, error } = await download({ url, checksum_url: `${base}${path}`, dest: '/usr/local/bin/thing' });
      expect(error).toBeUndefined();
      expect(calls).toHaveLength(1);
      expect(Buffer.from(calls[0].input!, 'latin1').equals(binary)).toBe(true);
      expect(files).toEqual([{ path: '/usr/local/bin/thing', sha256: binarySha, kind: 'download', source: url }]);
    });

    test('a mismatch (inline) fails before anything is run in the guest, naming URL, both sums and their source', async () => {
      const url = `${base}/files/thing.bin`;
      const wrong = 'a'.repeat(64);
      const { calls, files, error } = await download({ url, sha256: wrong, dest: '/usr/local/bin/thing' });
      expect(calls).toEqual([]);
      expect(files).toEqual([]);
      expect(error!.code).toBe('STEP_FAILED');
      expect(error!.message).toBe(`step 1/1 (test): checksum mismatch for ${url}`);
      expect(error!.detail).toBe(`expected sha256 ${wrong} (from the recipe)\nactual   sha256 ${binarySha}`);
    });

    test('a mismatch against a checksum file names that file as the source', async () => {
      const { calls, error } = await download({ url: `${base}/files/thing.bin`, checksum_url: `${base}/files/wrong.sha256`, dest: '/x' });
      expect(calls).toEqual([]);
      expect(error!.code).toBe('STEP_FAILED');
      expect(error!.detail).toBe(`expected sha256 ${'b'.repeat(64)} (from ${base}/files/wrong.sha256)\nactual   sha256 ${binarySha}`);
    });

    test('a checksum file that does not name the file is an error listing what it names', async () => {
      const { calls, error } = await download({ url: `${base}/redirect/other.tgz`, checksum_url: `${base}/files/SHA256SUMS`, dest: '/x' });
      expect(calls).toEqual([]);
      expect(error!.code).toBe('STEP_FAILED');
      expect(error!.message).toBe(`step 1/1 (test): the checksum file ${base}/files/SHA256SUMS has no sha256 for other.tgz`);
      expect(error!.detail).toBe('it lists: other.bin, thing.bin, thing-1.0.tar.gz');
    });

    test('a 503, or a connection dropped half way, is retried (and logged); the file arrives whole and verified', async () => {
      for (const path of ['/flaky/thing.bin', '/dropped/thing.bin']) {
        requests.length = 0;
        const lines: string[] = [];
        const { calls, files, error } = await download({ url: `${base}${path}`, sha256: binarySha, dest: '/usr/local/bin/thing' }, { log: createLogger({ write: (line: string) => lines.push(line) }) });
        expect(error).toBeUndefined();
        expect(requests).toEqual([path, path]);
        expect(lines.join('')).toMatch(new RegExp(`fetching ${base}${path} failed \\(attempt 1: .+\\); retrying in \\d`));
        expect(Buffer.from(calls[0].input!, 'latin1').equals(binary)).toBe(true);
        expect(files).toEqual([{ path: '/usr/local/bin/thing', sha256: binarySha, kind: 'download', source: `${base}${path}` }]);
      }
    });

    test('HTTP 404, of the file or of the checksum file, fails the step with the URL', async () => {
      const missing = await download({ url: `${base}/missing/thing.bin`, sha256: binarySha, dest: '/x' });
      expect(missing.calls).toEqual([]);
      expect(missing.error!.code).toBe('STEP_FAILED');
      expect(missing.error!.message).toBe(`step 1/1 (test): cannot fetch ${base}/missing/thing.bin: HTTP 404`);
      expect(missing.error!.hint).toBe('the URL does not exist: check its version and path');
      const sums = await download({ url: `${base}/files/thing.bin`, checksum_url: `${base}/missing/SHA256SUMS`, dest: '/x' });
      expect(sums.calls).toEqual([]);
      expect(sums.error!.message).toBe(`step 1/1 (test): cannot fetch ${base}/missing/SHA256SUMS: HTTP 404`);
    });

    test('a redirect is followed; the file name checked against SHA256SUMS is the one in the recipe URL', async () => {
      requests.length = 0;
      const url = `${base}/redirect/thing.bin`;
      const { calls, files, error } = await download({ url, checksum_url: `${base}/files/SHA256SUMS`, dest: '/usr/local/bin/thing' });
      expect(error).toBeUndefined();
      expect(requests).toEqual(['/files/SHA256SUMS', '/redirect/thing.bin', '/files/thing.bin']);
      expect(Buffer.from(calls[0].input!, 'latin1').equals(binary)).toBe(true);
      expect(files).toEqual([{ path: '/usr/local/bin/thing', sha256: binarySha, kind: 'download', source: url }]);
    });

    test('extract: the .tar.gz is verified, unpacked on the way (gunzip on the host) by the guest tar, owned by root', async () => {
      const url = `${base}/files/thing-1.0.tar.gz`;
      const { calls, files, error } = await download({ url, checksum_url: `${base}/files/SHA256SUMS`, extract: '/opt/thing', strip_components: 1 });
      expect(error).toBeUndefined();
      expect(calls.map((c) => c.argv)).toEqual([['/bin/sh', '-c', EXTRACT_SCRIPT, 'extract', '/opt/thing', '--no-same-owner', '--strip-components=1']]);
      expect(Buffer.from(calls[0].input!, 'latin1').equals(innerTar)).toBe(true);
      const entries = await tarEntries(calls[0].input);
      expect(entries.map((e) => [e.name, e.mode, e.body.toString()])).toEqual([
        ['thing-1.0/', 0o755, ''],
        ['thing-1.0/bin/thing', 0o755, '#!/bin/sh\necho thing\n'],
        ['thing-1.0/README', 0o644, 'read me\n'],
      ]);
      expect(files).toEqual([{ path: '/opt/thing', sha256: sha256(tarball), kind: 'download', source: url }]);
    });

    test('extract without strip_components; something that is not a tar archive is refused before the guest', async () => {
      const ok = await download({ url: `${base}/files/thing-1.0.tar.gz`, sha256: sha256(tarball), extract: '/opt' });
      expect(ok.calls.map((c) => c.argv)).toEqual([['/bin/sh', '-c', EXTRACT_SCRIPT, 'extract', '/opt', '--no-same-owner']]);
      const bad = await download({ url: `${base}/files/thing.bin`, sha256: binarySha, extract: '/opt' });
      expect(bad.calls).toEqual([]);
      expect(bad.error!.code).toBe('STEP_FAILED');
      expect(bad.error!.message).toBe(`step 1/1 (test): ${base}/files/thing.bin is neither a .tar.gz nor a .tar archive`);
    });

    test('the build signal reaches the download: a cancelled build fetches nothing', async () => {
      requests.length = 0;
      const controller = new AbortController();
      controller.abort(new Error('cancelled by test'));
      const { calls, error } = await download({ url: `${base}/files/thing.bin`, sha256: binarySha, dest: '/x' }, { signal: controller.signal });
      expect(calls).toEqual([]);
      expect((error as unknown as Error).message).toBe('cancelled by test');
      expect(requests).toEqual([]);
    });

    test('checksum file parsing', () => {
      const hash = 'd'.repeat(64);
      expect(sumFromChecksumFile(`${hash.toUpperCase()}\n`, 'anything')).toBe(hash);
      expect(sumFromChecksumFile(`${hash}  ./dist/kubectl\n`, 'kubectl')).toBe(hash);
      expect(sumFromChecksumFile(`SHA256 (kubectl) = ${hash}\n`, 'kubectl')).toBe(hash);
      expect(sumFromChecksumFile(`${hash}  kubeadm\n`, 'kubectl')).toBeUndefined();
      expect(sumFromChecksumFile('<html>not found</html>', 'kubectl')).toBeUndefined();
    });
  });

  describe('copy', () => {
    let recipeDir: string;
    const mtime = 1_700_000_000;
    beforeAll(async () => {
      recipeDir = join(work, 'recipe');
      const tree = join(recipeDir, 'tree');
      await mkdir(join(tree, 'bin'), { recursive: true });
      await mkdir(join(tree, 'empty'));
      await writeFile(join(tree, 'bin/tool'), '#!/bin/sh\necho tool\n');
      await writeFile(join(tree, 'conf.txt'), 'key = value\n');
      await symlink('bin/tool', join(tree, 'link'));
      await symlink('/etc/shadow', join(tree, 'outside')); // must stay a link, never be read from the host
      await chmod(join(tree, 'bin/tool'), 0o750);
      await chmod(join(tree, 'conf.txt'), 0o640);
      await chmod(join(tree, 'empty'), 0o700);
      for (const path of ['bin/tool', 'conf.txt', 'empty', 'bin', '']) await utimes(join(tree, path), mtime, mtime);
    });

    async function copy(spec: Parameters<typeof copyStep.run>[1], allowed: string[] = []) {
      const { session, calls } = fakeSession();
      const { context, records } = fakeStepContext(session, { recipeDir, hostRoots: [recipeDir, ...allowed] });
      const error = await copyStep.run(context, spec).then(
        () => undefined,
        (e: ImageBuilderError) => e,
      );
      return { calls, files: records.files, error };
    }

    test('a tree: dirs, files with their modes and mtimes, symlinks kept as symlinks, owner and group as names', async () => {
      const { calls, files, error } = await copy({ src: 'tree', dest: '/etc/app', owner: 'daemon', group: 'adm' });
      expect(error).toBeUndefined();
      expect(calls.map((c) => c.argv)).toEqual([
        ['/bin/sh', '-c', expect.stringContaining('getent passwd "$1"'), 'check-owner', 'daemon', 'adm'],
        ['/bin/sh', '-c', EXTRACT_SCRIPT, 'extract', '/etc/app', '--same-owner'],
      ]);
      const entries = await tarEntries(calls[1].input);
      expect(entries.map((e) => [e.name, e.type, e.mode.toString(8), e.uname, e.gname, e.linkname ?? null])).toEqual([
        ['bin/', 'directory', expect.stringMatching(/^7[0-7][0-7]$/), 'daemon', 'adm', null],
        ['bin/tool', 'file', '750', 'daemon', 'adm', null],
        ['conf.txt', 'file', '640', 'daemon', 'adm', null],
        ['empty/', 'directory', '700', 'daemon', 'adm', null],
        ['link', 'symlink', expect.any(String), 'daemon', 'adm', 'bin/tool'],
        ['outside', 'symlink', expect.any(String), 'daemon', 'adm', '/etc/shadow'],
      ]);
      const byName = new Map(entries.map((e) => [e.name, e]));
      expect(byName.get('bin/tool')!.body.toString()).toBe('#!/bin/sh\necho tool\n');
      expect(byName.get('outside')!.body.length).toBe(0);
      expect(['bin/tool', 'conf.txt', 'empty/'].map((name) => byName.get(name)!.mtime)).toEqual([mtime, mtime, mtime]);
      expect(files).toEqual([
        { path: '/etc/app/bin/tool', sha256: sha256('#!/bin/sh\necho tool\n'), kind: 'copy', source: join(recipeDir, 'tree/bin/tool') },
        { path: '/etc/app/conf.txt', sha256: sha256('key = value\n'), kind: 'copy', source: join(recipeDir, 'tree/conf.txt') },
      ]);
    });

    test('with SOURCE_DATE_EPOCH, host files newer than it are dated at it in the archive; older ones keep their time', async () => {
      const clamped = await withSourceDateEpoch(String(mtime - 1000), async () => tarEntries((await copy({ src: 'tree', dest: '/etc/app' })).calls[0].input));
      expect(clamped.filter((e) => e.type !== 'symlink').map((e) => [e.name, e.mtime])).toEqual(['bin/', 'bin/tool', 'conf.txt', 'empty/'].map((name) => [name, mtime - 1000]));
      const kept = await withSourceDateEpoch(String(mtime + 1000), async () => tarEntries((await copy({ src: 'tree', dest: '/etc/app' })).calls[0].input));
      expect(kept.filter((e) => e.type !== 'symlink').map((e) => e.mtime)).toEqual([mtime, mtime, mtime, mtime]);
    });

    test('a single file lands at dest under that name, with the given mode, root by default (no owner check)', async () => {
      const { calls, files } = await copy({ src: 'tree/conf.txt', dest: '/etc/other/app.conf', mode: '0600' });
      expect(calls.map((c) => c.argv)).toEqual([['/bin/sh', '-c', EXTRACT_SCRIPT, 'extract', '/etc/other', '--same-owner']]);
      const entries = await tarEntries(calls[0].input);
      expect(entries.map((e) => [e.name, e.type, e.mode, e.uname, e.gname, e.body.toString()])).toEqual([['app.conf', 'file', 0o600, 'root', 'root', 'key = value\n']]);
      expect(files).toEqual([{ path: '/etc/other/app.conf', sha256: sha256('key = value\n'), kind: 'copy', source: join(recipeDir, 'tree/conf.txt') }]);
    });

    test('a dest ending in "/" keeps the file name; numeric owners go into the archive as numbers', async () => {
      const { calls, files } = await copy({ src: 'tree/bin/tool', dest: '/usr/local/bin/', owner: '1000', group: '1000' });
      expect(calls.map((c) => c.argv)).toEqual([['/bin/sh', '-c', EXTRACT_SCRIPT, 'extract', '/usr/local/bin/', '--same-owner']]);
      const [entry] = await tarEntries(calls[0].input);
      expect([entry.name, entry.mode, entry.uid, entry.gid, entry.uname, entry.gname]).toEqual(['tool', 0o750, 1000, 1000, '', '']);
      expect(files.map((f) => f.path)).toEqual(['/usr/local/bin/tool']);
    });

    test('when the guest stops reading half way, the step fails with the guest\'s error (no hang, no stray stream error)', async () => {
      await writeFile(join(recipeDir, 'big.bin'), randomBytes(8 << 20));
      const session = {
        ...fakeSession().session,
        async exec(_argv: string[], options: { input?: unknown } = {}) {
          for await (const _chunk of options.input as AsyncIterable<Buffer>) break; // tar died after one chunk
          throw new Error('tar: guest disk full');
        },
      };
      const { context } = fakeStepContext(session, { recipeDir });
      await expect(copyStep.run(context, { src: 'big.bin', dest: '/big.bin' })).rejects.toThrow('tar: guest disk full');
    });

    test('a host file that changes while it is packed fails the step instead of corrupting the archive', async () => {
      // /proc files say size 0 and then have content: the same as a file growing under our feet.
      const { calls, error } = await copy({ src: '/proc/self/status', dest: '/status' }, ['/proc']);
      expect(error!.code).toBe('STEP_FAILED');
      expect(error!.message).toMatch(/^step 1\/1 \(test\): copying from the build host: \/proc\/(self|\d+)\/status: it changed while being copied \(0 bytes before, now \d+\)$/);
      expect(calls).toEqual([]); // the archive stream failed: the guest's stdin errored rather than ending cleanly
    });

    test('a src outside the recipe directory (absolute, .., or a symlink leading out) is a recipe error unless its directory is allowed', async () => {
      await symlink('/etc', join(recipeDir, 'host-etc'));
      for (const src of ['/etc/hostname', '../../../../etc/hostname', 'host-etc/hostname']) {
        const { calls, error } = await copy({ src, dest: '/x' });
        expect(calls).toEqual([]);
        expect(error!.code).toBe('BAD_RECIPE');
        expect(error!.message).toContain(`${src} is outside the recipe's directory ${recipeDir} (it is /etc/hostname)`);
      }
      const allowed = await copy({ src: 'host-etc/hostname', dest: '/x' }, ['/etc']);
      expect(allowed.error).toBeUndefined();
      expect(allowed.calls).toHaveLength(1);
    });

    test('a missing src is a recipe error with the resolved path; mode on a directory too', async () => {
      const missing = await copy({ src: 'nope/here', dest: '/x' });
      expect(missing.calls).toEqual([]);
      expect(missing.error!.code).toBe('BAD_RECIPE');
      expect(missing.error!.message).toBe(`step 1/1 (test): cannot copy ${join(recipeDir, 'nope/here')}: no such file or directory`);
      const mode = await copy({ src: 'tree', dest: '/x', mode: '0644' });
      expect(mode.calls).toEqual([]);
      expect(mode.error!.code).toBe('BAD_RECIPE');
    });
  });

  describe('schemas', () => {
    const problems = (step: Record<string, unknown>) => parseRecipe(JSON.stringify({ name: 'x', steps: [step] }), 'r.json', { schemaOnly: true }).problems.map((p) => p.message);

    test('each example validates', () => {
      expect(problems({ download: downloadStep.example })).toEqual([]);
      expect(problems({ copy: copyStep.example })).toEqual([]);
    });

    test('download: exactly one of sha256 and checksum_url, exactly one of dest and extract', () => {
      const hash = 'e'.repeat(64);
      expect(problems({ download: { url: 'https://x/a.tgz', sha256: hash, extract: '/opt', strip_components: 1 } })).toEqual([]);
      expect(problems({ download: { url: 'https://x/a', checksum_url: 'https://x/SHA256SUMS', dest: '/a', mode: '0755', owner: 'daemon', group: 'adm' } })).toEqual([]);
      expect(problems({ download: { url: 'https://x/a', dest: '/a' } })).toEqual([
        'steps[0].download: needs exactly one of the keys "sha256", "checksum_url"',
      ]);
      expect(problems({ download: { url: 'https://x/a', sha256: hash, checksum_url: 'https://x/s', dest: '/a' } })).toEqual([
        'steps[0].download.checksum_url cannot be used together with the other keys given here (see `imagebuilder steps` for which keys go together)',
        'steps[0].download.sha256 cannot be used together with the other keys given here (see `imagebuilder steps` for which keys go together)',
      ]);
      expect(problems({ download: { url: 'https://x/a', sha256: hash } })).not.toEqual([]);
      expect(problems({ download: { url: 'https://x/a', sha256: hash, dest: '/a', extract: '/b' } })).not.toEqual([]);
      expect(problems({ download: { url: 'https://x/a', sha256: hash, dest: '/a', strip_components: 1 } })).not.toEqual([]);
      expect(problems({ download: { url: 'https://x/a', sha256: hash, extract: '/b', mode: '0755' } })).not.toEqual([]);
      expect(problems({ download: { url: 'ftp://x/a', sha256: hash, dest: '/a' } })).not.toEqual([]);
      expect(problems({ download: { url: 'https://x/a', sha256: 'abc', dest: '/a' } })).not.toEqual([]);
      expect(problems({ download: { url: 'https://x/a', sha256: hash, dest: '/a/' } })).not.toEqual([]);
    });

    test('copy: src and an absolute dest are required; no unknown keys', () => {
      expect(problems({ copy: { src: 'files', dest: 'etc' } })).not.toEqual([]);
      expect(problems({ copy: { dest: '/etc' } })).toEqual(['steps[0].copy: missing required key "src"']);
      expect(problems({ copy: { src: 'a', dest: '/etc', recursive: true } })[0]).toMatch(/unknown key "recursive"/);
    });
  });
});
