import { chmod } from 'node:fs/promises';
import { createServer, type Socket } from 'node:net';

/** The virtio-serial port the guest reports on (/dev/virtio-ports/<name> in the guest). */
export const CHANNEL_NAME = 'org.imagebuilder.results';

/** The first line of a report: `imagebuilder-boot-result status=<exit status> bytes=<length of the output>`. */
const HEADER = /^imagebuilder-boot-result status=(\d+) bytes=(\d+)\n/;
const MAX_HEADER = 128;

export interface GuestReport {
  exitCode: number;
  output: string;
}

/**
 * Reads a report from what the guest sent so far: undefined until all of it has arrived. The guest may send
 * nothing else on this port, so anything but a report is an error (said with what came, shortened).
 */
export function parseReport(received: Buffer, maxOutputBytes: number): GuestReport | undefined {
  const newline = received.indexOf(0x0a);
  if (newline < 0) {
    if (received.length > MAX_HEADER) throw new Error(`the guest sent something other than a report: ${JSON.stringify(received.subarray(0, 80).toString('latin1'))}`);
    return undefined;
  }
  const header = HEADER.exec(received.subarray(0, newline + 1).toString('latin1'));
  if (!header) throw new Error(`the guest sent something other than a report: ${JSON.stringify(received.subarray(0, Math.min(newline, 80)).toString('latin1'))}`);
  const length = Number(header[2]);
  if (length > maxOutputBytes) throw new Error(`the guest's report holds ${length} bytes of output, more than the ${maxOutputBytes} taken`);
  const body = received.subarray(newline + 1);
  if (body.length < length) return undefined;
  return { exitCode: Number(header[1]), output: body.subarray(0, length).toString('utf8') };
}

export interface ChannelReader {
  /** Settles with the report once it has all arrived; rejects when the guest sent something else. */
  readonly report: Promise<GuestReport>;
  close(): void;
}

export interface QemuConnection {
  /** Settles once qemu has connected. */
  readonly connected: Promise<void>;
  stop(): void;
}

/**
 * Listens on a Unix socket for qemu to connect to (its chardev a client: server=off). qemu runs unprivileged and
 * needs no directory it may write; the socket is ours, in a directory only qemu's box reaches, and connectable
 * (0666) by qemu's uid. qemu connects while it starts, before the guest runs, so nothing sent is missed. The
 * first connection is taken and the server then closed: no second client is heard. `handle` gets it.
 */
export async function listenForQemu(socketPath: string, handle: (socket: Socket) => void): Promise<QemuConnection> {
  let accepted: Socket | undefined;
  let onConnected: () => void = () => undefined;
  const connected = new Promise<void>((resolve) => (onConnected = resolve));
  const server = createServer((socket) => {
    server.close();
    if (accepted) return void socket.destroy();
    accepted = socket;
    onConnected();
    handle(socket);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socketPath, () => resolve());
  });
  await chmod(socketPath, 0o666);
  return {
    connected,
    stop: () => {
      server.close();
      accepted?.destroy();
    },
  };
}

/**
 * Listens for qemu's end of the results channel and reads one report from it. The guest's writes wait until
 * qemu is connected. A connection that ends early says nothing here: who waits learns why from qemu's exit.
 */
export async function readChannel(socketPath: string, maxOutputBytes: number): Promise<ChannelReader> {
  let settle: { resolve: (report: GuestReport) => void; reject: (error: unknown) => void } | undefined;
  const report = new Promise<GuestReport>((resolve, reject) => (settle = { resolve, reject }));
  // Nobody may be listening when the report is abandoned (a timeout): its rejection must not go unhandled.
  report.catch(() => undefined);
  const connection = await listenForQemu(socketPath, (socket) => {
    // Gathered into one buffer that doubles as it fills: a guest sending its report a byte at a time costs the
    // host linear time, not a concatenation of everything so far on each read.
    let received = Buffer.alloc(4096);
    let length = 0;
    socket.on('error', () => undefined);
    socket.on('data', (chunk: Buffer) => {
      if (length + chunk.length > received.length) {
        const grown = Buffer.alloc(Math.max(received.length * 2, length + chunk.length));
        received.copy(grown, 0, 0, length);
        received = grown;
      }
      chunk.copy(received, length);
      length += chunk.length;
      try {
        const parsed = parseReport(received.subarray(0, length), maxOutputBytes);
        if (parsed) {
          settle!.resolve(parsed);
          socket.destroy();
        }
      } catch (error) {
        settle!.reject(error);
        socket.destroy();
      }
    });
  });
  return { report, close: () => connection.stop() };
}
