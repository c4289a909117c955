import { printResult } from '../../src/cli/print-result.js';
import type { ApplyResult } from '../../src/pipeline/apply.js';
import { execRunner } from '../../src/util/exec.js';
import { createLogger, MAX_HELD_LINE, outputLines, stdoutSafe, terminalRelay, terminalSafe } from '../../src/util/log.js';

/** What a guest controls reaches the user's terminal as text: no escape sequence, no line overwritten. */
describe('the log on a terminal', () => {
  test('control characters from a guest are shown as \\xNN, never sent; newlines and tabs stay, a carriage return ends a line', () => {
    expect(terminalSafe('a\x1b]52;c;Zm9v\x07b')).toBe('a\\x1b]52;c;Zm9v\\x07b');
    expect(terminalSafe('title\x1b[2J\x9b0m\x7f')).toBe('title\\x1b[2J\\x9b0m\\x7f');
    expect(terminalSafe('line 1\r\nline 2\tcol\roverwritten')).toBe('line 1\nline 2\tcol\noverwritten');
    expect(terminalSafe('unicode ✓ stays')).toBe('unicode ✓ stays');
  });

  test("a guest command's output, a message naming a guest file and the logger's own lines carry no escape character", () => {
    const written: string[] = [];
    const log = createLogger({ write: (text) => void written.push(text) });
    log.output('Setting up x\x1b]0;pwned\x07 ...\r[ 12.3s] wrote /tmp/forged.qcow2\n');
    log.warn('swap entry /swap\x1b[2Jfile is not a regular file');
    const text = written.join('');
    expect(text).not.toMatch(/[\x00-\x08\x0b-\x1f\x7f-\x9f]/);
    expect(text).toContain('    Setting up x\\x1b]0;pwned\\x07 ...\n    [ 12.3s] wrote /tmp/forged.qcow2\n');
    expect(text).toContain('warn: swap entry /swap\\x1b[2Jfile is not a regular file\n');
  });

  test("a build's summary for people shows the guest's os-release name and package names as text", () => {
    const printed: string[] = [];
    const result = {
      output: { path: '/out/x.qcow2', format: 'qcow2', sha256: 'a'.repeat(64) },
      artifacts: [{ path: '/out/x.qcow2', format: 'qcow2', sha256: 'a'.repeat(64) }],
      bomPath: '/out/x.qcow2.bom.json',
      sbomPaths: [],
      sumsPath: '/out/SHA256SUMS',
      bom: {
        os: { id: 'debian', prettyName: 'Debian\x1b]0;owned\x07' },
        architecture: 'amd64',
        kernels: [],
        packages: [{ name: 'evil\x1b[2J', version: '1\r[ 0.1s] wrote /etc/shadow', architecture: 'amd64', origin: 'recipe' }],
        removedPackages: [{ name: 'old\n  took 0.0s', version: '2' }],
        durationsMs: { total: 1000 },
      },
    } as unknown as ApplyResult;
    // Through stdoutSafe, as BaseCommand.log writes every command's stdout.
    printResult({ log: (line) => void printed.push(stdoutSafe(line)) }, result, false);
    expect(printed.join('\n')).not.toMatch(/[\x00-\x08\x0b-\x1f\x7f-\x9f]/);
    expect(printed).toContain('  Debian\\u001b]0;owned\\u0007 amd64, kernels: none');
    expect(printed).toContain('    evil\\u001b[2J 1\\u000d[ 0.1s] wrote /etc/shadow (amd64)');
    // A newline in a guest's name stays on its line: no forged line of ours after it.
    expect(printed).toContain('    removed old\\u000a  took 0.0s 2');
    expect(printed.filter((line) => line.startsWith('  took'))).toEqual(['  took 1.0s (steps 0.0s)']);
  });

  test("a command's stdout: control characters as \\uNNNN, so a table shows them as text and JSON reads them back the same", () => {
    const name = 'pkg\x1b[2J\x85\x7f\ttab';
    const json = JSON.stringify({ packages: [{ name }] }, null, 2);
    // JSON.stringify writes ESC as \u001b but the C1 character and DEL raw.
    expect(json).toMatch(/[\x7f-\x9f]/);
    const safe = stdoutSafe(json);
    expect(safe).not.toMatch(/[\x00-\x08\x0b-\x1f\x7f-\x9f]/);
    expect(JSON.parse(safe)).toEqual({ packages: [{ name }] });
    expect(stdoutSafe(`  ${name}  1.0`)).toBe('  pkg\\u001b[2J\\u0085\\u007f\ttab  1.0');
  });

  test("a child's streamed output: whole lines, characters whole across reads, a progress meter's last state", () => {
    const written: string[] = [];
    const lines = outputLines((text) => void written.push(text));
    // "Reading pack" | "age lists…\nü" split inside the ü (0xc3 0xbc) | then a meter rewritten by CRs.
    const bytes = Buffer.from('Reading package lists... Done\nüber\n 10%\r 50%\r100%\nCRLF line\r\nlast, unended');
    const cuts = [12, 31, 32, 45, 50];
    cuts.reduce((from, to) => (lines.push(bytes.subarray(from, to)), to), 0);
    lines.push(bytes.subarray(cuts.at(-1)));
    lines.end();
    expect(written.join('')).toBe('Reading package lists... Done\nüber\n100%\nCRLF line\nlast, unended\n');
    // Each write is whole lines: the logger's indent starts a line, never splits one.
    for (const text of written) expect(text.endsWith('\n')).toBe(true);
    // A program that never ends its line is written out once it holds more than MAX_HELD_LINE.
    const long: string[] = [];
    const endless = outputLines((text) => void long.push(text));
    for (let i = 0; i < 3; i++) endless.push(Buffer.alloc(MAX_HELD_LINE / 2, 'x'));
    expect(long).toEqual([`${'x'.repeat(MAX_HELD_LINE / 2 * 3)}\n`]);
  });

  test('a relay to a terminal: as it comes, controls escaped, a CR LF split between reads one newline, a character split kept whole', () => {
    const written: string[] = [];
    const relay = terminalRelay((text) => void written.push(text));
    const bytes = Buffer.from('one\r\ntwo ü\x1b[2J\rthree\r');
    // Cut after the CR of CR LF, inside the ü (0xc3 0xbc), and after the last CR.
    for (const [from, to] of [[0, 4], [4, 10], [10, bytes.length]]) relay.push(bytes.subarray(from, to));
    expect(written[0]).toBe('one'); // as it comes: the CR waits for the next read
    relay.end();
    expect(written.join('')).toBe('one\ntwo ü\\x1b[2J\nthree\n');
  });

  test('execRunner streams a real child through it: indented whole lines, the meter collapsed, the unended last line kept', async () => {
    const written: string[] = [];
    const log = createLogger({ write: (text) => void written.push(text) });
    // Three writes the pipe delivers apart (sleeps between), one splitting a line.
    await execRunner('sh', ['-c', 'printf "downloading 1%%\\r"; sleep 0.05; printf "downloading 100%%\\nsetting "; sleep 0.05; printf "up x\\n\\033]0;t\\007done"'], { log, streamOutput: true });
    expect(written.join('')).toBe('    downloading 100%\n    setting up x\n    \\x1b]0;t\\x07done\n');
  });
});
