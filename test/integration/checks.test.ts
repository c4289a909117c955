import { access, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { fixtureImage } from '../helpers/fixtures.js';
import { expectNothingLeft, hostState, jsonResult, runCli, sha256 } from '../helpers/host.js';

/**
 * Checks for real: a recipe's checks judged on a real Debian image at the end of apply, and `imagebuilder test`
 * on the output with our check files, goss files and the hygiene suite. The images are never written.
 */
describe('checks: apply judges a recipe\'s checks; imagebuilder test judges an image', () => {
  let work: string;
  let input: string;
  let output: string;
  beforeAll(async () => {
    work = await mkdtemp('/var/tmp/ib-checks-');
    input = await fixtureImage('gpt-esp');
  });
  afterAll(async () => {
    await rm(work, { recursive: true, force: true });
  });

  const writeYaml = async (name: string, value: unknown) => {
    const path = join(work, name);
    await writeFile(path, stringify(value));
    return path;
  };

  test('apply runs the recipe\'s checks on the image: passed and skipped in the BOM; a failing one is exit 7 with no output', async () => {
    const steps = [
      { name: 'motd', file: { path: '/etc/motd', content: 'a kubernetes node\n', mode: '0644' } },
      { name: 'a unit', file: { path: '/etc/systemd/system/demo.service', content: '[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n' } },
      { service: { enable: ['demo.service'] } },
    ];
    const checks = [
      { name: 'motd says what it is', file: { path: '/etc/motd', mode: '0644', owner: 'root', contains: ['kubernetes node'] } },
      { service: { name: 'demo', enabled: true, running: true } },
      { package: { name: 'dpkg' } },
      { command: { run: 'test -s /etc/os-release', boot: false } },
      { kernel_param: { name: 'net.ipv4.ip_forward', value: 1 } },
    ];
    const recipe = await writeYaml('good.yaml', { name: 'good', steps, checks });
    const before = await hostState();
    output = join(work, 'good.qcow2');
    const result = await runCli(['apply', recipe, '--disk-image', input, '--output', output, '--sparsify', 'none', '--no-cache', '--json']);
    expect(result.stderr).toContain('checks on the image: 5 passed, 2 need the booted image'); // (stderr names any failure)
    expect(result.exitCode).toBe(0);
    const bom = JSON.parse(await readFile(`${output}.bom.json`, 'utf8')) as { checks: { check: string; attribute: string; status: string; location: string }[] };
    expect(bom.checks.map((c) => `${c.check}: ${c.attribute}: ${c.status}`)).toEqual([
      'motd says what it is: exists, mode, owner: passed',
      'motd says what it is: contains: passed',
      'service demo: enabled: passed',
      'service demo: running: skipped',
      'package dpkg: installed: passed',
      'command test -s /etc/os-release: exit status: passed',
      'kernel parameter net.ipv4.ip_forward: value: skipped',
    ]);
    const line = (await readFile(recipe, 'utf8')).split('\n').findIndex((text) => text.includes('name: motd says what it is')) + 1;
    expect(bom.checks[0].location).toBe(`${recipe}:${line}:5`);
    await expectNothingLeft(before);

    const bad = await writeYaml('bad.yaml', { name: 'bad', steps, checks: [{ file: { path: '/etc/motd', mode: '0600' } }, { service: { name: 'demo', enabled: false } }] });
    const badOutput = join(work, 'bad.qcow2');
    const failed = await runCli(['apply', bad, '--disk-image', input, '--output', badOutput, '--sparsify', 'none', '--no-cache']);
    expect(failed.exitCode).toBe(7);
    expect(failed.stderr).toContain('error [CHECK_FAILED]: 2 of 2 check(s) failed on the image at the end of phase 1');
    expect(failed.stderr).toMatch(new RegExp(`${bad}:\\d+:5: file /etc/motd: exists, mode: found mode 0644, expected mode 0600`));
    expect(failed.stderr).toContain(': service demo: enabled: found enabled, expected not enabled');
    await expect(access(badOutput)).rejects.toThrow();
    await expectNothingLeft(before);
  }, 300_000);

  test('imagebuilder test --offline: our file, a goss file and the hygiene suite; JSON and JUnit; the image never written', async () => {
    const ours = await writeYaml('ours.yaml', { checks: [{ file: { path: '/etc/motd', contains: ['kubernetes'] } }, { port: { port: 22 } }] });
    const goss = await writeYaml('goss.yaml', { package: { dpkg: { installed: true } }, file: { '/etc/os-release': { exists: true, contents: ['/^ID=debian$/'] } }, service: { demo: { enabled: true } } });
    const junit = join(work, 'checks.xml');
    const imageBefore = await sha256(output);
    const before = await hostState();
    const result = await runCli(['test', output, '--checks', ours, '--checks', goss, '--suite', 'hygiene', '--offline', '--json', '--junit', junit]);
    expect(result.exitCode).toBe(0);
    const report = JSON.parse(result.stdout) as { summary: { passed: number; failed: number; skipped: number }; results: { check: string; status: string; reason?: string }[] };
    expect(report.summary).toEqual({ passed: 11, failed: 0, skipped: 1 });
    expect(report.results.find((r) => r.check === 'port tcp/22')).toMatchObject({ status: 'skipped', reason: 'needs a booted guest' });
    expect(report.results.filter((r) => /SSH host keys|machine-id|cloud-init|core dumps|\/var\/log/.test(r.check)).map((r) => r.status)).toEqual(['passed', 'passed', 'passed', 'passed', 'passed']);
    const xml = await readFile(junit, 'utf8');
    expect(xml).toContain('<testsuites tests="12" failures="0" skipped="1"');
    expect(await sha256(output)).toBe(imageBefore);
    await expectNothingLeft(before);
  }, 180_000);

  test('a failing check is exit 7 with a readable report; a check cannot write the image', async () => {
    const checks = await writeYaml('failing.yaml', {
      checks: [
        { name: 'writes the image', command: { run: 'echo x > /etc/hacked && ls /etc/hacked', boot: false } },
        { file: { path: '/etc/hacked', exists: false } },
        { package: { name: 'no-such-package' } },
      ],
    });
    const imageBefore = await sha256(output);
    const before = await hostState();
    const result = await runCli(['test', output, '--checks', checks, '--offline']);
    expect(result.exitCode).toBe(7);
    expect(result.stdout).toMatch(/^FAIL {2}writes the image: exit status +found exit [12], expected exit 0 \(.*failing\.yaml:\d+:\d+\)$/m);
    expect(result.stdout).toMatch(/^ok {4}file \/etc\/hacked: exists/m);
    expect(result.stdout).toMatch(/^FAIL {2}package no-such-package: installed +found not installed, expected installed/m);
    expect(result.stdout).toContain('1 passed, 2 failed, 0 skipped');
    expect(result.stderr).toContain('error [CHECK_FAILED]: 2 of 3 check(s) failed on');
    expect(await sha256(output)).toBe(imageBefore);

    await expectNothingLeft(before);
  }, 180_000);
});
