import { createSocket } from 'node:dgram';
import { chmod, chown, mkdir, readFile } from 'node:fs/promises';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { claimBoxUid } from '../util/box-uid.js';
import type { CleanupStack } from '../util/cleanup.js';
import { startHelper } from '../util/daemon.js';
import type { Runner } from '../util/exec.js';
import type { Logger } from '../util/log.js';

/**
 * DNS for guest commands when the host's resolver listens on the host's own loopback (Docker's 127.0.0.11,
 * dnsmasq, unbound): the sandbox cannot reach that loopback, and the pasta of Debian 12 drops such a resolver
 * under --no-map-gw. So a relay inside the build's network namespace listens at GUEST_DNS_FORWARD:53 (UDP and
 * TCP) and hands every query, framed as DNS over TCP is (2-byte length), through a Unix socket (reachable across
 * network namespaces by its path) to this process, which asks the host's resolver. Only standard queries cross
 * (no updates, notifies or zone transfers, which a resolver may trust from localhost); each connection has a
 * bounded number of queries in flight; the relay runs as a uid of its own (or, where Node is only root's, as root
 * with no capability) and dies with the build.
 */

/** Where guest commands send DNS queries when the host's resolver is on its loopback (podman's address for the same). */
export const GUEST_DNS_FORWARD = '169.254.1.1';

const QUERY_TIMEOUT_MS = 5000;
const MAX_CONNECTIONS = 64;
/** Queries of one connection being answered at once; the connection is paused beyond that. */
const MAX_IN_FLIGHT = 8;
/** What one connection may have buffered: two whole frames. */
const MAX_PENDING = 2 * (2 + 65535);

/**
 * The relay, run by `node -e` so it needs no file of ours: argv[1] the Unix socket, argv[2] the address. Each
 * Unix connection starts with one byte saying how the guest asked: `U` one UDP query (its answer goes back in
 * one datagram), `T` a TCP client's stream, piped as is (the framing is the same).
 */
const RELAY = `
const [socketPath, address] = process.argv.slice(1);
const dgram = require('node:dgram'), net = require('node:net');
const udp = dgram.createSocket('udp4');
udp.on('error', () => {});
udp.on('message', (query, peer) => {
  const upstream = net.connect(socketPath);
  const length = Buffer.alloc(2); length.writeUInt16BE(query.length);
  upstream.end(Buffer.concat([Buffer.from('U'), length, query]));
  const chunks = [];
  upstream.on('data', (chunk) => chunks.push(chunk));
  upstream.on('end', () => {
    const reply = Buffer.concat(chunks);
    if (reply.length > 2 && reply.length >= 2 + reply.readUInt16BE(0) && reply.readUInt16BE(0) <= 65507) udp.send(reply.subarray(2, 2 + reply.readUInt16BE(0)), peer.port, peer.address, () => {});
  });
  upstream.on('error', () => {});
  upstream.setTimeout(${QUERY_TIMEOUT_MS + 1000}, () => upstream.destroy());
});
const tcp = net.createServer((client) => {
  const upstream = net.connect(socketPath);
  upstream.write('T');
  client.pipe(upstream).pipe(client);
  client.on('error', () => upstream.destroy()); upstream.on('error', () => client.destroy());
});
tcp.on('error', () => {});
tcp.maxConnections = ${MAX_CONNECTIONS};
let listening = 0;
const ready = () => { if (++listening === 2) console.log('listening'); };
udp.bind(53, address, ready);
tcp.listen(53, address, ready);
`;

/** Asks the resolver over UDP; for a TCP client, over TCP again when the answer is truncated (TC bit), as a stub resolver would. */
async function ask(resolver: string, query: Buffer, overTcp: boolean): Promise<Buffer | undefined> {
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
  if (!overTcp || !overUdp || !(overUdp[2] & 0x02)) return overUdp;
  return new Promise<Buffer | undefined>((resolve) => {
    let received = Buffer.alloc(0);
    const socket = connect(53, resolver, () => socket.write(frame(query)));
    socket.setTimeout(QUERY_TIMEOUT_MS, () => socket.destroy());
    socket.on('data', (chunk) => {
      received = Buffer.concat([received, chunk]);
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

/**
 * Whether a message is a standard query a stub resolver sends: not a response, opcode QUERY, one question,
 * no answer or authority records, at most one additional (EDNS), and not a zone transfer. Updates, notifies
 * and transfers never reach the host's resolver, which may trust what comes from localhost.
 */
export function isStandardQuery(message: Buffer): boolean {
  if (message.length < 12) return false;
  const flags = message[2];
  if (flags & 0x80 || (flags >> 3) & 0x0f) return false;
  if (message.readUInt16BE(4) !== 1 || message.readUInt16BE(6) !== 0 || message.readUInt16BE(8) !== 0 || message.readUInt16BE(10) > 1) return false;
  let offset = 12;
  while (offset < message.length && message[offset] !== 0) {
    if (message[offset] & 0xc0) return false;
    offset += message[offset] + 1;
  }
  if (offset + 5 > message.length) return false;
  const qtype = message.readUInt16BE(offset + 1);
  return qtype !== 251 && qtype !== 252;
}

/** REFUSED for a message that is not a standard query: its id, the response bit, no records. */
export function refused(message: Buffer): Buffer {
  const reply = Buffer.alloc(12);
  message.copy(reply, 0, 0, 2);
  reply[2] = 0x80 | (message[2] & 0x78);
  reply[3] = 5;
  return reply;
}

/** Answers the framed queries of one relay connection, in order, a bounded number at a time. */
function serveConnection(connection: Socket, resolver: string): void {
  let pending = Buffer.alloc(0);
  let kind: 'U' | 'T' | undefined;
  let inFlight = 0;
  let queue = Promise.resolve();
  connection.setTimeout(60_000, () => connection.destroy());
  connection.on('error', () => connection.destroy());
  connection.on('data', (chunk) => {
    pending = Buffer.concat([pending, chunk]);
    if (!kind && pending.length) {
      kind = pending[0] === 0x55 ? 'U' : pending[0] === 0x54 ? 'T' : undefined;
      if (!kind) return void connection.destroy();
      pending = pending.subarray(1);
    }
    if (pending.length > MAX_PENDING) return void connection.destroy();
    while (pending.length >= 2 && pending.length >= 2 + pending.readUInt16BE(0)) {
      // Copied: a view would keep every chunk it came from alive.
      const query = Buffer.from(pending.subarray(2, 2 + pending.readUInt16BE(0)));
      pending = Buffer.from(pending.subarray(2 + query.length));
      if (query.length < 12) continue;
      inFlight++;
      if (inFlight >= MAX_IN_FLIGHT) connection.pause();
      queue = queue.then(async () => {
        const reply = isStandardQuery(query) ? await ask(resolver, query, kind === 'T') : refused(query);
        if (reply && !connection.destroyed) connection.write(frame(reply));
        inFlight--;
        if (inFlight < MAX_IN_FLIGHT && !connection.destroyed) connection.resume();
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
  /**
   * A directory of ours (root's, 0700, removed by the caller) for the socket and the relay's log; kept apart from
   * the sandbox's state directory so that opening it to the relay's user exposes nothing else.
   */
  dir: string;
  /** The host's resolver, on its loopback. */
  resolver: string;
}

/** Starts the forwarder and its relay; both are released by `cleanup`, open connections included. */
export async function forwardDns(options: DnsForwardOptions): Promise<void> {
  const { run, log, cleanup, netns, dir } = options;
  // As a uid of its own (util/box-uid.ts: it takes traffic from the guest, and runs in the host's PID namespace)
  // when that uid can run this Node (not when it lives under root's home, as nvm installs it); else as root with
  // no capability at all. Either way the socket is reachable by that user alone.
  const uid = await claimBoxUid(run, cleanup, log, 'the DNS relay');
  const asOwnUid = (await run('setpriv', ['--reuid', String(uid), '--regid', String(uid), '--clear-groups', '--', process.execPath, '-e', ''], { allowFailure: true })).exitCode === 0;
  if (!asOwnUid) log.debug(`the DNS relay runs as root with no capabilities: uid ${uid} cannot run ${process.execPath}`);
  const socketDir = join(dir, 'socket');
  await mkdir(socketDir, { mode: 0o700 });
  const socketPath = join(socketDir, 'dns');
  const connections = new Set<Socket>();
  // Half-open: a UDP query's connection ends its side right after the query, and still wants the answer.
  const server: Server = createServer({ allowHalfOpen: true }, (connection) => {
    connections.add(connection);
    connection.on('close', () => connections.delete(connection));
    serveConnection(connection, options.resolver);
  });
  server.maxConnections = MAX_CONNECTIONS;
  cleanup.push('DNS forwarder', () => new Promise<void>((resolve) => {
    // close() waits for open connections: a client that never ends would hold the build's release.
    for (const connection of connections) connection.destroy();
    server.close(() => resolve());
  }));
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socketPath, resolve);
  });
  server.unref();
  await chmod(socketPath, 0o600);
  if (asOwnUid) {
    // Reached through the relay's group: its uid owns nothing here, so nothing it (or a child it left, or the
    // next holder of its uid) does can make our removal of this directory follow a link of its own.
    await chmod(dir, 0o711);
    await chown(socketDir, 0, uid);
    await chmod(socketDir, 0o710);
    await chown(socketPath, 0, uid);
    await chmod(socketPath, 0o660);
  }
  const enter = ['nsenter', `--net=${netns}`, '--'];
  await run(enter[0], [...enter.slice(1), 'ip', 'address', 'add', `${GUEST_DNS_FORWARD}/32`, 'dev', 'lo'], { log, purpose: 'giving the sandbox its DNS address' });
  await run(enter[0], [...enter.slice(1), 'sysctl', '-q', '-w', 'net.ipv4.ip_unprivileged_port_start=53'], { log, purpose: 'letting the DNS relay bind port 53 in the sandbox' });
  const logFile = join(dir, 'relay.log');
  const user = asOwnUid ? ['--reuid', String(uid), '--regid', String(uid), '--clear-groups'] : [];
  await startHelper(enter[0], [
    ...enter.slice(1),
    // --pdeathsig again after the switch: the kernel clears it when the credentials change.
    'setpriv', ...user, '--bounding-set', '-all', '--inh-caps', '-all', '--no-new-privs', '--pdeathsig', 'KILL', '--',
    process.execPath, '-e', RELAY, socketPath, GUEST_DNS_FORWARD,
  ], {
    log, logFile, purpose: 'starting the sandbox\'s DNS relay',
    ready: async () => (await readFile(logFile, 'utf8').catch(() => '')).includes('listening'),
  }, (helper) => cleanup.push('DNS relay', () => helper.stop(2000)));
}
