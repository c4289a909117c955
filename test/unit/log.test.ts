import { printResult } from '../../src/cli/print-result.js';
import type { ApplyResult } from '../../src/pipeline/apply.js';
import { createLogger, stdoutSafe, terminalSafe } from '../../src/util/log.js';

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
});
