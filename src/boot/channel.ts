import { connect, type Socket } from 'node:net';

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

/**
 * Connects to a Unix socket qemu listens on. Its file exists a moment before qemu listens, so a refused connect
 * is tried again every 100 ms, up to 100 times; once connected, qemu going away closes the connection. `handle`
 * gets each attempt's socket, whether it got through, and whether it is the last try. stop() ends it all.
 */
export function connectToQemu(socketPath: string, handle: (socket: Socket, attempt: { connected: () => boolean; last: boolean }) => void): { stop: () => void } {
  let current: Socket | undefined;
  let stopped = false;
  const attempt = (left: number) => {
    if (stopped) return;
    let connected = false;
    const socket = (current = connect(socketPath, () => (connected = true)));
    handle(socket, { connected: () => connected, last: left <= 0 });
    socket.on('error', () => {
      if (!connected && left > 0) setTimeout(() => attempt(left - 1), 100).unref();
    });
  };
  attempt(100);
  return {
    stop: () => {
      stopped = true;
      current?.destroy();
    },
  };
}

/**
 * Connects to the host end of the results channel (qemu listening on `socketPath`) and reads one report.
 * qemu accepts one client at a time; the guest's writes wait until we are connected. A connection that ends
 * early says nothing here: who waits learns why from qemu's exit.
 */
export function readChannel(socketPath: string, maxOutputBytes: number): ChannelReader {
  let connection: { stop: () => void } | undefined;
  const report = new Promise<GuestReport>((resolve, reject) => {
    connection = connectToQemu(socketPath, (socket) => {
      const chunks: Buffer[] = [];
      socket.on('data', (chunk: Buffer) => {
        chunks.push(chunk);
        try {
          const parsed = parseReport(Buffer.concat(chunks), maxOutputBytes);
          if (parsed) {
            resolve(parsed);
            socket.destroy();
          }
        } catch (error) {
          reject(error);
          socket.destroy();
        }
      });
    });
  });
  // Nobody may be listening when the report is abandoned (a timeout): its rejection must not go unhandled.
  report.catch(() => undefined);
  return { report, close: () => connection?.stop() };
}
