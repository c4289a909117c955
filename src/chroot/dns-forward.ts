import { createSocket } from 'node:dgram';
import { chmod, mkdir, readFile } from 'node:fs/promises';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import type { CleanupStack } from '../util/cleanup.js';
import { startHelper } from '../util/daemon.js';
import type { Runner } from '../util/exec.js';
import type { Logger } from '../util/log.js';

/**
 * DNS for guest commands when the host's resolver listens on the host's own loopback (Docker's 127.0.0.11,
 * dnsmasq, unbound): the sandbox cannot reach that loopback, and the pasta of Debian 12 drops such a resolver
 * under --no-map-gw. So a relay inside the build's network namespace listens at GUEST_DNS_FORWARD:53 (UDP and
 * TCP) and hands every query, framed as DNS over TCP is (2-byte length), through a Unix socket (reachable across
 * network namespaces by its path) to this process, which asks the host's resolver. Nothing but DNS messages
 * crosses; the relay runs as nobody with no capabilities and dies with the build.
 */

/** Where guest commands send DNS queries when the host's resolver is on its loopback (podman's address for the same). */
export const GUEST_DNS_FORWARD = '169.254.1.1';

const QUERY_TIMEOUT_MS = 5000;
const MAX_CONNECTIONS = 64;

/**
 * The relay, run by `node -e` so it needs no file nobody can read: argv[1] the Unix socket, argv[2] the address.
 * UDP: one query per connection; TCP: the client's stream piped as is (the framing is the same).
 */
const RELAY = `
const [socketPath, address] = process.argv.slice(1);
const dgram = require('node:dgram'), net = require('node:net');
const udp = dgram.createSocket('udp4');
udp.on('message', (query, peer) => {
  const upstream = net.connect(socketPath);
  const length = Buffer.alloc(2); length.writeUInt16BE(query.length);
  upstream.end(Buffer.concat([length, query]));
  const chunks = [];
  upstream.on('data', (chunk) => chunks.push(chunk));
  upstream.on('end', () => { const reply = Buffer.concat(chunks); if (reply.length > 2) udp.send(reply.subarray(2, 2 + reply.readUInt16BE(0)), peer.port, peer.address); });
  upstream.on('error', () => {});
  upstream.setTimeout(${QUERY_TIMEOUT_MS + 1000}, () => upstream.destroy());
});
const tcp = net.createServer((client) => {
  const upstream = net.connect(socketPath);
  client.pipe(upstream).pipe(client);
  client.on('error', () => upstream.destroy()); upstream.on('error', () => client.destroy());
});
tcp.maxConnections = ${MAX_CONNECTIONS};
let listening = 0;
const ready = () => { if (++listening === 2) console.log('listening'); };
udp.bind(53, address, ready);
tcp.listen(53, address, ready);
`;

/** Asks the resolver over UDP; over TCP when the answer is truncated (TC bit), as a stub resolver would. */
async function ask(resolver: string, query: Buffer): Promise<Buffer | undefined> {
  const overUdp = await new Promise<Buffer | undefined>((resolve) => {
    const socket = createSocket(resolver.includes(':') ? 'udp6' : 'udp4');
    const done = (reply?: Buffer) => {
      clearTimeout(timer);
      socket.close();
      resolve(reply);
    };
    const timer = setTimeout(() => done(), QUERY_TIMEOUT_MS);
    socket.on('error', () => done());
    // Only the answer to this query (same id, from the resolver) counts.
    socket.on('message', (reply, from) => {
      if (from.address === resolver && reply.length >= 12 && reply.readUInt16BE(0) === query.readUInt16BE(0)) done(reply);
    });
    socket.send(query, 53, resolver);
  });
  if (!overUdp || !(overUdp[2] & 0x02)) return overUdp;
  return new Promise<Buffer | undefined>((resolve) => {
    const chunks: Buffer[] = [];
    const socket = connect(53, resolver, () => socket.write(frame(query)));
    socket.setTimeout(QUERY_TIMEOUT_MS, () => socket.destroy());
    socket.on('data', (chunk) => {
      chunks.push(chunk);
      const received = Buffer.concat(chunks);
      if (received.length >= 2 && received.length >= 2 + received.readUInt16BE(0)) {
        socket.destroy();
        resolve(received.subarray(2, 2 + received.readUInt16BE(0)));
      }
    });
    socket.on('close', () => resolve(overUdp));
    socket.on('error', () => undefined);
  });
}

function frame(message: Buffer): Buffer {
  const length = Buffer.alloc(2);
  length.writeUInt16BE(message.length);
  return Buffer.concat([length, message]);
}

/** Answers the framed queries of one relay connection, in order, then ends it. */
function serveConnection(connection: Socket, resolver: string): void {
  let pending = Buffer.alloc(0);
  let queue = Promise.resolve();
  connection.setTimeout(60_000, () => connection.destroy());
  connection.on('error', () => connection.destroy());
  connection.on('data', (chunk) => {
    pending = Buffer.concat([pending, chunk]);
    while (pending.length >= 2 && pending.length >= 2 + pending.readUInt16BE(0)) {
      const query = pending.subarray(2, 2 + pending.readUInt16BE(0));
      pending = pending.subarray(2 + query.length);
      if (query.length < 12) continue;
      queue = queue.then(async () => {
        const reply = await ask(resolver, query);
        if (reply && !connection.destroyed) connection.write(frame(reply));
      });
    }
  });
  connection.on('end', () => void queue.then(() => connection.end()));
}

export interface DnsForwardOptions {
  run: Runner;
  log: Logger;
  cleanup: CleanupStack;
  /** The build's network namespace (a bind-mounted nsfs file). */
  netns: string;
  /** The build sandbox's state directory (ours, 0700): the socket goes in a directory of its own there. */
  stateDir: string;
  /** The host's resolver, on its loopback. */
  resolver: string;
}

/** Starts the forwarder and its relay; both are released by `cleanup`. */
export async function forwardDns(options: DnsForwardOptions): Promise<void> {
  const { run, log, cleanup, netns, stateDir } = options;
  // The relay runs as nobody: it may pass through the state directory to the socket, and bind port 53 in
  // the build's namespace (a setting of that namespace only).
  const dir = join(stateDir, 'dns');
  await mkdir(dir, { mode: 0o755 });
  await chmod(stateDir, 0o711);
  const socketPath = join(dir, 'socket');
  // Half-open: a UDP query's connection ends its side right after the query, and still wants the answer.
  const server: Server = createServer({ allowHalfOpen: true }, (connection) => serveConnection(connection, options.resolver));
  server.maxConnections = MAX_CONNECTIONS;
  cleanup.push('DNS forwarder', () => new Promise<void>((resolve) => server.close(() => resolve())));
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socketPath, resolve);
  });
  server.unref();
  await chmod(socketPath, 0o666);
  const enter = ['nsenter', `--net=${netns}`, '--'];
  await run(enter[0], [...enter.slice(1), 'ip', 'address', 'add', `${GUEST_DNS_FORWARD}/32`, 'dev', 'lo'], { log, purpose: 'giving the sandbox its DNS address' });
  await run(enter[0], [...enter.slice(1), 'sysctl', '-q', '-w', 'net.ipv4.ip_unprivileged_port_start=53'], { log, purpose: 'letting the DNS relay bind port 53 in the sandbox' });
  const logFile = join(stateDir, 'dns-relay.log');
  await startHelper(enter[0], [
    ...enter.slice(1),
    // --pdeathsig again after the switch: the kernel clears it when the credentials change.
    'setpriv', '--reuid', '65534', '--regid', '65534', '--clear-groups', '--bounding-set', '-all', '--inh-caps', '-all', '--no-new-privs', '--pdeathsig', 'KILL', '--',
    process.execPath, '-e', RELAY, socketPath, GUEST_DNS_FORWARD,
  ], {
    log, logFile, purpose: 'starting the sandbox\'s DNS relay',
    ready: async () => (await readFile(logFile, 'utf8').catch(() => '')).includes('listening'),
  }, (helper) => cleanup.push('DNS relay', () => helper.stop(2000)));
}
