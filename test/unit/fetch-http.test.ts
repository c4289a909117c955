import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { createServer as createNetServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { request } from 'undici';
import { join } from 'node:path';
import { createDispatcher, downloadFile, fetchOptional, fetchToFile, guardedLookup, isDiscardableFetchFailure, parseContentRange, parseImageUrl } from '../../src/fetch/http.js';
import { createProgress } from '../../src/fetch/progress.js';
import type { RetryPolicy } from '../../src/fetch/retry.js';
import { createLogger } from '../../src/util/log.js';
import { startImageServer, type ImageServer } from '../helpers/image-server.js';

/** Fast retries: the schedule itself is unit-tested in fetch-retry.test.ts. */
const quick: RetryPolicy = { attempts: 4, initialDelayMs: 10, maxDelayMs: 50, factor: 2, jitter: 0, maxElapsedMs: 30000 };

/** A self-signed certificate for 127.0.0.1 (a throwaway, valid until 2126): no CA trusts it. */
const TLS = {
  key: `-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgUi7zEqdAFZ5BKr87
MENjOLBTroyxKJl+LtunoaGuBu6hRANCAAQ1B8Y+QD5WQGOHsCySqLLieoDmROyw
lf/6Z6HGeuuUrnFM5fiVAFdY7uepnF2yOBE5QI2V1gnfcM2dnpvCgvMT
-----END PRIVATE KEY-----
`,
  cert: `-----BEGIN CERTIFICATE-----
MIIBkDCCATagAwIBAgIUK8ztxvCrPJjWC3h/duBmKXTXUpQwCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJMTI3LjAuMC4xMCAXDTI2MTEyNDA1MjQwMFoYDzIxMjYxMDMx
MDUyNDAwWjAUMRIwEAYDVQQDDAkxMjcuMC4wLjEwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAAQ1B8Y+QD5WQGOHsCySqLLieoDmROywlf/6Z6HGeuuUrnFM5fiVAFdY
7uepnF2yOBE5QI2V1gnfcM2dnpvCgvMTo2QwYjAdBgNVHQ4EFgQUT8vsvwceUeCR
lhtbSNZeylSF/L4wHwYDVR0jBBgwFoAUT8vsvwceUeCRlhtbSNZeylSF/L4wDwYD
VR0TAQH/BAUwAwEB/zAPBgNVHREECDAGhwR/AAABMAoGCCqGSM49BAMCA0gAMEUC
IFQC6Z8CrJATQHunDWafPv08clhZ+X+vpw1O294LZ2jXAiEAx+v4RxufUenUjPKg
kkvLTr8Qxd8IN3IQbMbh/uQrZEg=
-----END CERTIFICATE-----
`,
};

const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex');

describe('downloadFile', () => {
  let server: ImageServer;
  let dir: string;
  const data = randomBytes(3 * 1024 * 1024 + 123);
  const warnings: string[] = [];
  const log = createLogger({ write: (text) => void warnings.push(text) });

  beforeAll(async () => {
    server = await startImageServer();
    dir = await mkdtemp(join(tmpdir(), 'download-'));
  });
  afterAll(async () => {
    await server.close();
    await rm(dir, { recursive: true, force: true });
  });
  beforeEach(() => {
    server.requests.length = 0;
    warnings.length = 0;
  });

  test('streams the whole file and records its validators', async () => {
    server.serve('/a/image.qcow2', { data });
    const partial = join(dir, 'a.partial');
    const seen: number[] = [];
    const result = await downloadFile(`${server.url}/a/image.qcow2`, partial, { retry: quick, onProgress: (p) => seen.push(p.received) });
    expect(sha256(await readFile(partial))).toBe(sha256(data));
    expect(result).toMatchObject({ notModified: false, size: data.length, resumes: 0, attempts: 1, lastModified: 'Mon, 01 Jan 2024 00:00:00 GMT' });
    expect(result.etag).toMatch(/^"[0-9a-f]{16}"$/);
    expect(seen.at(-1)).toBe(data.length);
    expect(seen.length).toBeGreaterThan(10);
  });

  test('a download stops while its filesystem still has room: said with where and how much, the partial not kept to resume', async () => {
    server.serve('/full/image.qcow2', { data });
    const partial = join(dir, 'full.partial');
    // A reserve larger than the filesystem: the first look (after 1 MiB) finds too little free.
    const error = await downloadFile(`${server.url}/full/image.qcow2`, partial, { retry: quick, freeSpace: { checkEveryBytes: 1 << 20, reserveBytes: (total) => total + 1 } }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'ENVIRONMENT', message: expect.stringMatching(/^downloading \S+ stopped after [\d.]+ MiB: .* has [\d.]+ GiB free, and imagebuilder leaves at least [\d.]+ GiB$/) });
    expect(isDiscardableFetchFailure(error)).toBe(true);
    expect(server.gets('/full/image.qcow2')).toHaveLength(1); // not retried
    // A server that drops every connection before a check is due and answers each resume: the count goes on
    // across attempts (five of 600 KiB: a check after the second).
    server.serve('/drops/image.qcow2', { data });
    server.dropAfter('/drops/image.qcow2', 600 * 1024, 5);
    const resumed = await downloadFile(`${server.url}/drops/image.qcow2`, join(dir, 'drops.partial'), { retry: quick, freeSpace: { checkEveryBytes: 1 << 20, reserveBytes: (total) => total + 1 } }).catch((e: unknown) => e);
    expect(resumed).toMatchObject({ code: 'ENVIRONMENT', message: expect.stringMatching(/^downloading \S+ stopped after/) });
    // A recipe's download step, the same.
    const step = await fetchToFile(`${server.url}/full/image.qcow2`, join(dir, 'step-download'), { retry: quick, freeSpace: { checkEveryBytes: 1 << 20, reserveBytes: (total) => total + 1 } }).catch((e: unknown) => e);
    expect(step).toMatchObject({ code: 'ENVIRONMENT', message: expect.stringMatching(/^downloading \S+ stopped after/) });
    await expect(stat(join(dir, 'step-download.partial'))).rejects.toThrow(/ENOENT/);
  });

  test('a dropped connection is resumed with Range and If-Range, and the file is whole', async () => {
    server.serve('/b/image.qcow2', { data });
    server.dropAfter('/b/image.qcow2', 1024 * 1024 + 7, 2);
    const partial = join(dir, 'b.partial');
    const result = await downloadFile(`${server.url}/b/image.qcow2`, partial, { retry: quick, log });
    expect(sha256(await readFile(partial))).toBe(sha256(data));
    expect(result.resumes).toBe(2);
    const gets = server.gets('/b/image.qcow2');
    expect(gets.map((r) => [r.status, r.ifRange])).toEqual([
      [200, undefined],
      [206, result.etag],
      [206, result.etag],
    ]);
    // Each resume starts where the file on disk ended: after what came before, and at most at what the server
    // sent (bytes still in flight when the connection dropped are fetched again; how many depends on the load).
    const starts = gets.map((r) => (r.range ? Number(/^bytes=(\d+)-$/.exec(r.range)![1]) : 0));
    expect(gets[0].bytes).toBe(1024 * 1024 + 7);
    expect(gets[1].bytes).toBe(1024 * 1024 + 7);
    for (const i of [1, 2]) {
      expect(starts[i]).toBeGreaterThan(starts[i - 1]);
      expect(starts[i]).toBeLessThanOrEqual(starts[i - 1] + gets[i - 1].bytes);
    }
    expect(starts[2] + gets[2].bytes).toBe(data.length);
    expect(warnings.join('')).toContain('retrying in');
  });

  test('a partial left by an earlier process is resumed; if the file changed meanwhile, it starts over', async () => {
    server.serve('/c/image.qcow2', { data });
    const partial = join(dir, 'c.partial');
    server.dropAfter('/c/image.qcow2', 500000, 1);
    await expect(downloadFile(`${server.url}/c/image.qcow2`, partial, { retry: { ...quick, attempts: 1 } })).rejects.toMatchObject({ code: 'COMMAND_FAILED' });
    // What reached the disk before the drop: at most the 500000 bytes sent (those in flight are lost).
    const kept = (await stat(partial)).size;
    expect(server.gets('/c/image.qcow2')[0].bytes).toBe(500000);
    expect(kept).toBeGreaterThan(0);
    expect(kept).toBeLessThanOrEqual(500000);

    // Another process, later: the file is the same, so it continues where the partial ends.
    await downloadFile(`${server.url}/c/image.qcow2`, partial, { retry: quick });
    expect(server.gets('/c/image.qcow2').at(-1)).toMatchObject({ status: 206, range: `bytes=${kept}-` });
    expect(sha256(await readFile(partial))).toBe(sha256(data));

    // A new version under the same URL: its ETag differs, the server sends it whole (200), nothing is mixed.
    const newer = randomBytes(1000000);
    server.serve('/c/image.qcow2', { data: newer, etag: '"v2"', lastModified: 'Tue, 02 Jan 2024 00:00:00 GMT' });
    await writeFile(partial, data.subarray(0, 300000));
    await downloadFile(`${server.url}/c/image.qcow2`, partial, { retry: quick });
    expect(server.gets('/c/image.qcow2').at(-1)).toMatchObject({ status: 200, range: 'bytes=300000-' });
    expect(sha256(await readFile(partial))).toBe(sha256(newer));
  });

  test('a partial that is already complete is not downloaded again (416 for its length)', async () => {
    server.serve('/d/image.qcow2', { data });
    const partial = join(dir, 'd.partial');
    await downloadFile(`${server.url}/d/image.qcow2`, partial, { retry: quick });
    const result = await downloadFile(`${server.url}/d/image.qcow2`, partial, { retry: quick });
    expect(result.size).toBe(data.length);
    expect(server.gets('/d/image.qcow2').map((r) => [r.status, r.bytes])).toEqual([
      [200, data.length],
      [416, 0],
    ]);
  });

  test('500 then 200: retried; 503 with Retry-After too', async () => {
    server.serve('/e/image.qcow2', { data });
    server.failNext('/e/image.qcow2', 500, 2);
    const partial = join(dir, 'e.partial');
    const result = await downloadFile(`${server.url}/e/image.qcow2`, partial, { retry: quick, log });
    expect(result.attempts).toBe(3);
    expect(server.gets('/e/image.qcow2').map((r) => r.status)).toEqual([500, 500, 200]);
    expect(warnings.join('')).toContain('HTTP 500');
  });

  test('5xx every time: COMMAND_FAILED after the policy’s attempts, the partial kept for later', async () => {
    server.serve('/f/image.qcow2', { data });
    server.failNext('/f/image.qcow2', 503, 100);
    const failing = downloadFile(`${server.url}/f/image.qcow2`, join(dir, 'f.partial'), { retry: quick });
    await expect(failing).rejects.toMatchObject({ code: 'COMMAND_FAILED', message: expect.stringContaining('gave up after 4 attempts') });
    expect(server.gets('/f/image.qcow2')).toHaveLength(4);
  });

  test('404 is BAD_INPUT at once, never retried', async () => {
    const failing = downloadFile(`${server.url}/nothing/here.qcow2`, join(dir, 'g.partial'), { retry: quick });
    await expect(failing).rejects.toMatchObject({ code: 'BAD_INPUT', message: `${server.url}/nothing/here.qcow2 does not exist (HTTP 404)` });
    expect(server.gets('/nothing/here.qcow2')).toHaveLength(1);
  });

  test('redirects are followed; If-None-Match answered 304 downloads nothing', async () => {
    server.serve('/h/image.qcow2', { data, etag: '"h1"' });
    server.redirect('/latest/image.qcow2', '/h/image.qcow2');
    const partial = join(dir, 'h.partial');
    await downloadFile(`${server.url}/latest/image.qcow2`, partial, { retry: quick });
    expect(sha256(await readFile(partial))).toBe(sha256(data));
    await rm(partial);
    const again = await downloadFile(`${server.url}/latest/image.qcow2`, partial, { retry: quick, ifNotModified: { etag: '"h1"' } });
    expect(again.notModified).toBe(true);
    expect(server.gets('/h/image.qcow2').map((r) => [r.status, r.ifNoneMatch])).toEqual([
      [200, undefined],
      [304, '"h1"'],
    ]);
  });

  test('an abort stops the download and leaves a resumable partial', async () => {
    server.serve('/i/image.qcow2', { data });
    server.throttle('/i/image.qcow2', 20);
    const partial = join(dir, 'i.partial');
    const controller = new AbortController();
    const reason = new Error('interrupted by SIGINT');
    const running = downloadFile(`${server.url}/i/image.qcow2`, partial, {
      retry: quick,
      signal: controller.signal,
      onProgress: (p) => p.received > 200000 && controller.abort(reason),
    });
    await expect(running).rejects.toBe(reason);
    const kept = (await stat(partial)).size;
    expect(kept).toBeGreaterThan(0);
    expect(kept).toBeLessThan(data.length);
    expect(JSON.parse(await readFile(`${partial}.json`, 'utf8'))).toMatchObject({ url: `${server.url}/i/image.qcow2`, total: data.length });
    // The next run continues where this one stopped.
    await downloadFile(`${server.url}/i/image.qcow2`, partial, { retry: quick });
    expect(server.gets('/i/image.qcow2').at(-1)).toMatchObject({ status: 206, range: `bytes=${kept}-` });
    expect(sha256(await readFile(partial))).toBe(sha256(data));
  });

  test('a stalled body fails the attempt (body timeout); each attempt that got bytes resumes, and it completes', async () => {
    const small = data.subarray(0, 150000);
    server.serve('/j/image.qcow2', { data: small });
    // undici's body timer has a resolution of about a second: a 500 ms timeout fires well within a 2.5 s stall.
    server.throttle('/j/image.qcow2', 2500);
    const partial = join(dir, 'j.partial');
    const timeouts = { connectMs: 1000, headersMs: 1000, bodyMs: 500 };
    const dispatcher = await createDispatcher(timeouts);
    try {
      // Two failures in a row would end it; but every attempt delivers a chunk before it stalls.
      await downloadFile(`${server.url}/j/image.qcow2`, partial, { retry: { ...quick, attempts: 2 }, dispatcher, timeouts, log });
      expect(server.gets('/j/image.qcow2').map((r) => r.range)).toEqual([undefined, 'bytes=65536-', 'bytes=131072-']);
      expect(sha256(await readFile(partial))).toBe(sha256(small));
      expect(warnings.join('')).toMatch(/timeout/i);
    } finally {
      await dispatcher.close();
    }
  });

  test('a server that accepts but never answers: headers timeout, retried, then COMMAND_FAILED', async () => {
    server.serve('/l/image.qcow2', { data });
    server.failNext('/l/image.qcow2', 0, 2);
    const timeouts = { connectMs: 1000, headersMs: 150, bodyMs: 150 };
    const dispatcher = await createDispatcher(timeouts);
    try {
      const failing = downloadFile(`${server.url}/l/image.qcow2`, join(dir, 'l.partial'), { retry: { ...quick, attempts: 2 }, dispatcher, timeouts });
      await expect(failing).rejects.toMatchObject({ code: 'COMMAND_FAILED', message: expect.stringMatching(/Headers Timeout/i) });
    } finally {
      await dispatcher.close();
    }
  });

  test('a TLS failure is COMMAND_FAILED with a hint about the certificate, not retried', async () => {
    const tls = await startImageServer({ tls: TLS });
    try {
      tls.serve('/image.qcow2', { data });
      const failing = downloadFile(`${tls.url}/image.qcow2`, join(dir, 'tls.partial'), { retry: quick });
      await expect(failing).rejects.toMatchObject({
        code: 'COMMAND_FAILED',
        message: expect.stringContaining(`TLS failure fetching ${tls.url}/image.qcow2`),
        hint: expect.stringContaining('certificate is not trusted'),
      });
      expect(tls.requests).toHaveLength(0);
    } finally {
      await tls.close();
    }
  });

  test('a connection refused is retried, then COMMAND_FAILED', async () => {
    const gone = await startImageServer();
    const url = `${gone.url}/image.qcow2`;
    await gone.close();
    await expect(downloadFile(url, join(dir, 'k.partial'), { retry: { ...quick, attempts: 2 }, log })).rejects.toMatchObject({
      code: 'COMMAND_FAILED',
      message: expect.stringContaining('ECONNREFUSED'),
    });
    expect(warnings.join('')).toContain('attempt 1');
  });
});

describe('undici 6 and servers that close the connection (nodejs/undici#5360)', () => {
  test('a Content-Length body whose reader is behind when the server closes is read whole, no crash', async () => {
    const body = Buffer.alloc(64 * 1024, 0x61);
    const server = createNetServer((socket) =>
      socket.once('data', () => {
        socket.write(`HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n`);
        socket.end(body);
      }),
    );
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const dispatcher = await createDispatcher();
    try {
      // undici's default 64 KiB high-water mark: the one chunk fills it, the parser would pause on it.
      const response = await request(`http://127.0.0.1:${(server.address() as AddressInfo).port}/`, { dispatcher });
      await new Promise((resolve) => setTimeout(resolve, 300)); // the server's FIN arrives meanwhile
      let received = 0;
      for await (const chunk of response.body) received += (chunk as Buffer).length;
      expect(received).toBe(body.length);
    } finally {
      await dispatcher.close();
      server.close();
    }
  });
});

describe('fetchOptional', () => {
  let server: ImageServer;
  beforeAll(async () => (server = await startImageServer()));
  afterAll(() => server.close());

  test('content, undefined for 404, retried on 5xx', async () => {
    server.serve('/SHA256SUMS', { data: Buffer.from('sums\n') });
    server.failNext('/SHA256SUMS', 502, 1);
    expect((await fetchOptional(`${server.url}/SHA256SUMS`, { retry: quick }))?.toString()).toBe('sums\n');
    expect(await fetchOptional(`${server.url}/SHA512SUMS`, { retry: quick })).toBeUndefined();
    expect(server.gets('/SHA256SUMS').map((r) => r.status)).toEqual([502, 200]);
  });
});

describe('the host\'s fetches never reach a metadata service', () => {
  const redirector = async (location: string) => {
    const server = createNetServer((socket) =>
      socket.once('data', () => socket.end(`HTTP/1.1 302 Found\r\nLocation: ${location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`)),
    );
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/key`, close: () => server.close() };
  };

  test('by address, by a redirect to one (IPv4-mapped too), or by a name resolving to one: refused before any connection; loopback still served', async () => {
    const refused = { code: 'BAD_INPUT', message: expect.stringMatching(/^refusing to connect to \S+.*a cloud metadata service's address/) };
    await expect(fetchOptional('http://169.254.169.254/latest/user-data', { retry: quick })).rejects.toMatchObject(refused);
    await expect(fetchOptional('http://168.63.129.16/machine', { retry: quick })).rejects.toMatchObject(refused);
    for (const target of ['http://169.254.169.254/latest/user-data', 'http://[::ffff:169.254.169.254]/', 'http://100.100.100.200/latest/meta-data']) {
      const server = await redirector(target);
      try {
        await expect(fetchOptional(server.url, { retry: quick })).rejects.toMatchObject(refused);
      } finally {
        server.close();
      }
    }
    // A name: checked on every address it resolves to, at connection time.
    const fakeDns = (answers: string[]) => ((_host: string, _options: unknown, done: (e: null, a: { address: string; family: number }[]) => void) => done(null, answers.map((address) => ({ address, family: 4 })))) as never;
    const outcome = (answers: string[]) => new Promise<unknown>((resolve) => guardedLookup(fakeDns(answers))('mirror.example', { all: true }, (error, address) => resolve(error ?? address)));
    expect(await outcome(['192.0.2.1', '168.63.129.16'])).toMatchObject({ code: 'BAD_INPUT', message: expect.stringContaining('refusing to connect to mirror.example (168.63.129.16)') });
    expect(await outcome(['192.0.2.1'])).toEqual([{ address: '192.0.2.1', family: 4 }]);
    const loopback = await startImageServer();
    try {
      loopback.serve('/SHA256SUMS', { data: Buffer.from('sums\n') });
      expect((await fetchOptional(`${loopback.url}/SHA256SUMS`, { retry: quick }))?.toString()).toBe('sums\n');
    } finally {
      await loopback.close();
    }
  });
});

describe('URLs', () => {
  test.each([
    ['https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2', true],
    ['/var/lib/images/debian.qcow2', false],
    ['debian.qcow2', false],
  ])('%s is a URL: %s', (text, isUrl) => {
    expect(parseImageUrl(text) !== undefined).toBe(isUrl);
  });

  test.each([
    ['ftp://example.org/image.qcow2', 'unsupported URL scheme ftp:'],
    ['http://exa mple.org/x', 'not a valid URL'],
    ['https://example.org/images/', 'names a directory'],
  ])('%s is BAD_INPUT', (text, message) => {
    expect(() => parseImageUrl(text)).toThrow(expect.objectContaining({ code: 'BAD_INPUT', message: expect.stringContaining(message) }));
  });

  test('Content-Range', () => {
    expect(parseContentRange('bytes 100-199/1000')).toEqual({ start: 100, end: 199, total: 1000 });
    expect(parseContentRange('bytes 100-199/*')).toEqual({ start: 100, end: 199, total: undefined });
    expect(parseContentRange('bytes */1000')).toBeUndefined();
  });
});

describe('progress', () => {
  test('a terminal gets a redrawn bar, at most 10 times a second', () => {
    let t = 0;
    const out: string[] = [];
    const progress = createProgress('image.qcow2', createLogger({ write: () => undefined }), { sink: { isTTY: true, columns: 100, write: (s) => out.push(s) }, now: () => t });
    progress.start({ received: 0, total: 1000, resumed: false });
    for (let i = 1; i <= 10; i++) {
      t += 30;
      progress.update({ received: i * 100, total: 1000 });
    }
    progress.done({ received: 1000 });
    expect(out[0]).toMatch(/^\r\x1b\[Kimage\.qcow2 \[\.{40}\] 0% 0 B of 1000 B/);
    expect(out.filter((s) => s.startsWith('\r'))).toHaveLength(1 + 2 + 1); // start, every 100 ms of 300, done
    expect(out.at(-2)).toContain('[########################################] 100%');
    expect(out.at(-1)).toBe('\n');
  });

  test('a log gets a start line, a line per interval, and an end line', () => {
    let t = 0;
    const lines: string[] = [];
    const progress = createProgress('image.qcow2', createLogger({ write: (s) => void lines.push(s) }), { sink: { isTTY: false, write: () => undefined }, now: () => t, intervalMs: 1000 });
    progress.start({ received: 2048, total: 4096, resumed: true });
    for (let i = 0; i < 5; i++) {
      t += 500;
      progress.update({ received: 2048 + i * 100, total: 4096 });
    }
    progress.done({ received: 4096 });
    expect(lines.map((l) => l.replace(/^\[ *[\d.]+s\] /, '').trim())).toEqual([
      'resuming image.qcow2 (4.0 KiB) at 2.0 KiB',
      expect.stringMatching(/^downloading image\.qcow2: 5\d% /),
      expect.stringMatching(/^downloading image\.qcow2: 5\d% /),
      'downloaded image.qcow2: 4.0 KiB in 2.5s',
    ]);
  });
});
