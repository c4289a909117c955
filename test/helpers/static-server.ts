import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join, normalize, sep } from 'node:path';
import { FIXTURE_CACHE } from './fixtures.js';

export interface StaticServer {
  /** http://127.0.0.1:PORT (no trailing slash). */
  url: string;
  /** Every request path served so far (decoded), in order: proof that a build really used the server. */
  requests: string[];
  close(): Promise<void>;
}

/**
 * Ports of this host's loopback that test servers listen on for the guest (apt or dnf inside it): runCli opts
 * them in with IMAGEBUILDER_HOST_PORTS, as the sandbox otherwise refuses the host's loopback.
 */
export const GUEST_REACHABLE_PORTS = new Set<number>();

/** Serves the files under `root` read-only (GET and HEAD) on 127.0.0.1 at a random port (reachable from guests, see above). */
export async function serveDirectory(root: string): Promise<StaticServer> {
  const requests: string[] = [];
  const server: Server = createServer((request, response) => {
    let path: string;
    try {
      path = decodeURIComponent(new URL(request.url ?? '/', 'http://mirror').pathname);
    } catch {
      response.writeHead(400).end();
      return;
    }
    requests.push(path);
    const file = normalize(join(root, path));
    if ((request.method !== 'GET' && request.method !== 'HEAD') || !file.startsWith(root + sep)) {
      response.writeHead(request.method === 'GET' || request.method === 'HEAD' ? 404 : 405).end();
      return;
    }
    stat(file).then(
      (info) => {
        if (!info.isFile()) {
          response.writeHead(404).end();
          return;
        }
        response.writeHead(200, { 'content-length': info.size, 'content-type': 'application/octet-stream', 'last-modified': info.mtime.toUTCString() });
        if (request.method === 'HEAD') response.end();
        else createReadStream(file).pipe(response);
      },
      () => response.writeHead(404).end(),
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  GUEST_REACHABLE_PORTS.add(port);
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    close: () =>
      new Promise<void>((resolve, reject) => {
        GUEST_REACHABLE_PORTS.delete(port);
        server.close((error) => (error ? reject(error) : resolve()));
        server.closeAllConnections();
      }),
  };
}

/**
 * A fixture tree built once and cached as FIXTURE_CACHE/<name>-<sha256 of its builder file, 12 hex>, rebuilt
 * only when the builder changes. `build` fills a private staging directory and writes `manifest.json` last;
 * the tree then appears complete or not at all (if another process won the race, its tree is as good).
 */
export function cachedFixture(name: string, builderFiles: string | string[], build: (target: string) => Promise<void>): () => Promise<string> {
  let built: Promise<string> | undefined;
  return () => {
    built ??= (async () => {
      // Keyed by every file that decides what is built: a change to any of them builds it anew.
      const hash = createHash('sha256');
      for (const file of [builderFiles].flat()) hash.update(await readFile(file));
      const version = hash.digest('hex').slice(0, 12);
      const target = join(FIXTURE_CACHE, `${name}-${version}`);
      const complete = async () => !!(await stat(join(target, 'manifest.json')).catch(() => undefined));
      if (!(await complete())) {
        await mkdir(FIXTURE_CACHE, { recursive: true });
        const staging = `${target}.build-${process.pid}`;
        await rm(staging, { recursive: true, force: true });
        try {
          await build(staging);
          await rename(staging, target).catch(async (error: NodeJS.ErrnoException) => {
            if (!(await complete())) throw error;
          });
        } finally {
          await rm(staging, { recursive: true, force: true });
        }
      }
      return target;
    })();
    built.catch(() => (built = undefined));
    return built;
  };
}
