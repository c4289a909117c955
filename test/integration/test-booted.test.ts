import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { fixtureImage } from '../helpers/fixtures.js';
import { expectNothingLeft, hostState, runCli, sha256 } from '../helpers/host.js';

/** `imagebuilder test` without --offline: the bootable fixture booted in QEMU, the running-system checks judged there. */
describe('imagebuilder test, booted', () => {
  let work: string;
  beforeAll(async () => {
    work = await mkdtemp('/var/tmp/ib-test-booted-');
  });
  afterAll(() => rm(work, { recursive: true, force: true }));

  test('files on the image, services, kernel and sockets in the booted guest; a wrong one is exit 7; the image untouched', async () => {
    const image = await fixtureImage('efi-boot');
    const checks = join(work, 'checks.yaml');
    await writeFile(checks, stringify({
      checks: [
        { file: { path: '/etc/os-release', contains: ['ID=debian'] } },
        { service: { name: 'systemd-journald', running: true } },
        { kernel_param: { name: 'kernel.ostype', value: 'Linux' } },
        { mount: { path: '/', exists: true } },
        { failed_units: {} },
        { name: 'a wrong one', kernel_param: { name: 'kernel.ostype', value: 'Plan9' } },
      ],
    }));
    const before = await hostState();
    const imageBefore = await sha256(image);
    const results = join(work, 'results');
    const result = await runCli(['test', image, '--checks', checks, '--json', '--results', results]);
    expect(result.exitCode).toBe(7);
    const report = JSON.parse(result.stdout) as { results: { check: string; attribute: string; status: string; observed?: string }[]; boot: { firmware: string; consoleLog: string } };
    expect(report.results.map((r) => `${r.check}: ${r.status}`)).toEqual([
      'file /etc/os-release: passed', 'file /etc/os-release: passed',
      'service systemd-journald: passed', 'kernel parameter kernel.ostype: passed', 'mount /: passed', 'failed units: passed',
      'a wrong one: failed',
    ]);
    expect(report.results.at(-1)!.observed).toBe('Linux');
    expect(report.boot.firmware).toBe('uefi');
    expect(await readFile(report.boot.consoleLog, 'utf8')).toMatch(/Linux version/);
    expect(await sha256(image)).toBe(imageBefore);
    await expectNothingLeft(before);
  }, 900_000);
});
