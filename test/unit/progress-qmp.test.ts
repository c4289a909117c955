import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { terminalProgress } from '../../src/cli/progress.js';
import { connectQmp } from '../../src/mount/qmp.js';

/** A stream that records what is written, a terminal or not. */
function fakeStream(isTTY: boolean) {
  const written: string[] = [];
  return { stream: { isTTY, write: (text: string) => void written.push(text) } as unknown as NodeJS.WriteStream, written };
}

describe('the live progress line', () => {
  test('on a terminal: drawn under the log while a step runs, cleared before each log line and when it ends', () => {
    const { stream, written } = fakeStream(true);
    const progress = terminalProgress(stream);
    progress.onEvent({ event: 'step-started', step: 2, of: 3, type: 'packages', name: 'install containerd', description: 'install containerd' });
    expect(written.at(-1)).toMatch(/^. step 2\/3 \(install containerd\) 0\.0s$/);
    progress.write('[   1.0s] a log line\n');
    expect(written.slice(-3)).toEqual(['\r\x1b[2K', '[   1.0s] a log line\n', expect.stringMatching(/step 2\/3/)]);
    progress.onEvent({ event: 'step-finished', step: 2, durationMs: 10 });
    expect(written.at(-1)).toBe('\r\x1b[2K');
    progress.write('after\n');
    expect(written.at(-1)).toBe('after\n');
    progress.stop();
  });

  test('not a terminal: log lines only, nothing drawn', () => {
    const { stream, written } = fakeStream(false);
    const progress = terminalProgress(stream);
    progress.onEvent({ event: 'step-started', step: 1, of: 1, type: 'run', description: 'run true' });
    progress.write('line\n');
    progress.onEvent({ event: 'step-finished', step: 1, durationMs: 1 });
    expect(written).toEqual(['line\n']);
  });
});

/** The QMP client against a scripted monitor (the real one is exercised by the step-cache integration test). */
describe('QMP client', () => {
  let dir: string;
  let server: Server;
  const received: unknown[] = [];
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ib-qmp-'));
    server = createServer((socket) => {
      socket.write('{"QMP": {"version": {}, "capabilities": []}}\r\n');
      let buffer = '';
      socket.on('data', (chunk) => {
        buffer += chunk.toString();
        for (let at = buffer.indexOf('\n'); at >= 0; at = buffer.indexOf('\n')) {
          const command = JSON.parse(buffer.slice(0, at)) as { execute: string; arguments?: unknown };
          buffer = buffer.slice(at + 1);
          received.push(command);
          // An event arrives before the answer, as QEMU may send them at any time.
          socket.write('{"event": "JOB_STATUS_CHANGE", "data": {}}\r\n');
          if (command.execute === 'fail') socket.write('{"error": {"class": "GenericError", "desc": "no such node"}}\r\n');
          else socket.write(`{"return": ${command.execute === 'query' ? '[1, 2]' : '{}'}}\r\n`);
        }
      });
    });
    await new Promise<void>((resolve) => server.listen(join(dir, 'qmp.sock'), resolve));
  });
  afterAll(async () => {
    await new Promise((resolve) => server.close(resolve));
    await rm(dir, { recursive: true, force: true });
  });

  test('negotiates capabilities, skips events, returns answers and turns errors into ImageBuilderErrors', async () => {
    const qmp = await connectQmp(join(dir, 'qmp.sock'));
    expect(await qmp.execute('query', { flat: true })).toEqual([1, 2]);
    await expect(qmp.execute('fail')).rejects.toMatchObject({ code: 'COMMAND_FAILED', message: 'QMP fail failed: no such node' });
    qmp.close();
    expect(received).toEqual([{ execute: 'qmp_capabilities' }, { execute: 'query', arguments: { flat: true } }, { execute: 'fail' }]);
  });
});
