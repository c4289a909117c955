import { chmod, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { Ajv } from 'ajv';
import { CHECK_TYPES, checkSchema } from '../../src/checks/registry.js';
import { fileCheck, listening, packageCheck, portCheck, serviceCheck, commandCheck, kernelModuleCheck, kernelParamCheck, mountCheck, failedUnitsCheck, FAILED_UNITS_SCRIPT } from '../../src/checks/kinds.js';
import { batchScript, parseBatchOutput, runChecks, type CheckResult } from '../../src/checks/run.js';
import { junitXml, resultTable } from '../../src/checks/report.js';
import { hygieneSuite, nodeSuite } from '../../src/checks/suites.js';
import { loadCheckFile } from '../../src/recipe/checks.js';
import { parseRecipe } from '../../src/recipe/load.js';
import type { Check } from '../../src/checks/types.js';

/** The batch script run by this host's real /bin/sh: the same script a guest runs. */
const hostShell = async (script: string) => {
  const result = await execa('/bin/sh', ['-c', script], { reject: false });
  return { exitCode: result.exitCode ?? 1, stdout: String(result.stdout) };
};
const declared = (type: (typeof CHECK_TYPES)[number], spec: unknown, location = 'test:1:1'): Check => ({ type, spec, location });
const statuses = (results: CheckResult[]) => results.map((r) => `${r.check}: ${r.attribute}: ${r.status}${r.status === 'failed' ? ` (found ${r.observed})` : ''}`);

describe('check probes, run by a real shell', () => {
  let dir: string;
  let server: Server;
  let port: number;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'checks-'));
    await writeFile(join(dir, 'config.toml'), 'version = 2\nSystemdCgroup = true\n');
    await chmod(join(dir, 'config.toml'), 0o640);
    await symlink('config.toml', join(dir, 'link'));
    server = createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    port = (server.address() as { port: number }).port;
  });
  afterAll(async () => {
    server.close();
    await rm(dir, { recursive: true, force: true });
  });

  test('file: type, mode, owner and content are judged; a symlink is not followed; absent when asked', async () => {
    const file = join(dir, 'config.toml');
    const results = await runChecks([
      declared(fileCheck, { path: file, filetype: 'file', mode: '0640', owner: 'root', contains: ['SystemdCgroup = true', '/^version = \\d$/', '!Cgroup = false'] }),
      declared(fileCheck, { path: file, mode: '0644' }),
      declared(fileCheck, { path: join(dir, 'link'), filetype: 'symlink', contains: ['SystemdCgroup'] }),
      declared(fileCheck, { path: join(dir, 'nope'), exists: false }),
      declared(fileCheck, { path: join(dir, 'nope'), contains: ['x'] }),
      declared(fileCheck, { path: file, contains: ['SystemdCgroup = false'] }),
    ], 'image', hostShell);
    expect(statuses(results)).toEqual([
      `file ${file}: exists, filetype, mode, owner: passed`,
      `file ${file}: contains: passed`,
      `file ${file}: exists, mode: failed (found mode 0640)`,
      `file ${join(dir, 'link')}: exists, filetype: passed`,
      `file ${join(dir, 'link')}: contains: passed`,
      `file ${join(dir, 'nope')}: exists: passed`,
      `file ${join(dir, 'nope')}: exists: failed (found absent)`,
      `file ${join(dir, 'nope')}: contains: failed (found not a regular file)`,
      `file ${file}: exists: passed`,
      `file ${file}: contains: failed (found lacks "SystemdCgroup = false")`,
    ]);
  });

  test('command: exit status and stdout patterns; a timeout says so; booted-only by default', async () => {
    const checks = [
      declared(commandCheck, { run: 'echo "RuntimeReady: true"', stdout: ['RuntimeReady'], boot: false }),
      declared(commandCheck, { run: 'exit 3', exit_status: 3, boot: false }),
      declared(commandCheck, { run: 'echo no', stdout: ['yes'], boot: false }),
      declared(commandCheck, { run: 'sleep 5', timeout: 1, boot: false }),
      declared(commandCheck, { run: 'true' }),
    ];
    const results = await runChecks(checks, 'image', hostShell);
    expect(statuses(results)).toEqual([
      'command echo "RuntimeReady: true": exit status, stdout: passed',
      'command exit 3: exit status: passed',
      'command echo no: exit status, stdout: failed (found exit 0; stdout lacks "yes")',
      'command sleep 5: exit status: failed (found timed out after 1s)',
      'command true: exit status: skipped',
    ]);
    expect(results[4].reason).toBe('needs a booted guest');
    // Booted, the same command runs.
    expect(statuses(await runChecks([checks[4]], 'booted', hostShell))).toEqual(['command true: exit status: passed']);
  });

  test('port, kernel parameter, mount: read from the kernel this shell runs on', async () => {
    const ipForward = (await readFile('/proc/sys/net/ipv4/ip_forward', 'utf8')).trim();
    const results = await runChecks([
      declared(portCheck, { port }),
      declared(portCheck, { port, listening: false }),
      declared(kernelParamCheck, { name: 'net.ipv4.ip_forward', value: ipForward }),
      declared(kernelParamCheck, { name: 'net.ipv4.ip_forward', value: ipForward === '1' ? 0 : 1 }),
      declared(mountCheck, { path: '/proc', filesystem: 'proc' }),
      declared(mountCheck, { path: '/proc', filesystem: 'ext4' }),
      declared(mountCheck, { path: join(dir, 'not-a-mount'), exists: false }),
    ], 'booted', hostShell);
    expect(results.map((r) => r.status)).toEqual(['passed', 'failed', 'passed', 'failed', 'passed', 'failed', 'passed']);
    expect(results[3].observed).toBe(ipForward);
  });

  test('values from a check file reach the script quoted: a path full of shell syntax is only a path', async () => {
    const canary = join(dir, 'injected');
    const hostile = `/x'; touch ${canary}; echo '$(touch ${canary})\`touch ${canary}\``;
    const results = await runChecks([
      declared(fileCheck, { path: hostile, exists: false, contains: ['x'] }),
      declared(serviceCheck, { name: `-x; touch ${canary}`, enabled: false }),
      declared(packageCheck, { name: `x; touch ${canary}`, installed: false }),
      declared(kernelModuleCheck, { name: `x$(touch ${canary})` }),
    ], 'booted', hostShell);
    expect(results.length).toBe(4);
    await expect(readFile(canary)).rejects.toThrow();
  });

  test('listening() reads /proc/net tables (LISTEN for tcp, bound for udp)', () => {
    const tcp = '  sl  local_address rem_address   st\n   0: 00000000:2A9A 00000000:0000 0A 00000000:00000000\n   1: 0100007F:0016 0100007F:D431 01 00000000:00000000\n';
    expect(listening(tcp, 10906, 'tcp')).toBe(true);
    expect(listening(tcp, 22, 'tcp')).toBe(false);
    expect(listening('   0: 00000000:0035 00000000:0000 07 0\n', 53, 'udp')).toBe(true);
  });

  test('service and package probes judge what systemctl and dpkg/rpm print', () => {
    const [enabled, running] = serviceCheck.probes({ name: 'containerd', enabled: true, running: true });
    expect([enabled.boot, running.boot]).toEqual([false, true]);
    expect(enabled.judge({ exitCode: 0, stdout: 'enabled\n' }).passed).toBe(true);
    expect(enabled.judge({ exitCode: 1, stdout: 'masked\n' })).toEqual({ passed: false, observed: 'masked', expected: 'enabled' });
    expect(running.judge({ exitCode: 3, stdout: 'inactive\n' })).toEqual({ passed: false, observed: 'inactive', expected: 'active' });
    const [pkg] = packageCheck.probes({ name: 'kubelet', versions: ['1.34.2-1.1'] });
    expect(pkg.judge({ exitCode: 0, stdout: 'installed 1.34.2-1.1\n' }).passed).toBe(true);
    expect(pkg.judge({ exitCode: 0, stdout: 'installed 1.33.0-1.1\n' })).toEqual({ passed: false, observed: 'installed 1.33.0-1.1', expected: 'version 1.34.2-1.1' });
    expect(pkg.judge({ exitCode: 0, stdout: 'installed (none):1.34.2-1.1\n' }).passed).toBe(true);
    expect(pkg.judge({ exitCode: 0, stdout: '' })).toEqual({ passed: false, observed: 'not installed', expected: 'installed' });
    const [failed] = failedUnitsCheck.probes({ allowed: ['a.service'] });
    expect(failed.judge({ exitCode: 0, stdout: 'state: degraded\na.service loaded failed failed A\nb.service loaded failed failed B\n' })).toEqual({
      passed: false, observed: 'degraded, failed: b.service', expected: 'running, no failed unit beyond a.service',
    });
    expect(failed.judge({ exitCode: 0, stdout: 'state: degraded\na.service loaded failed failed A\n' })).toEqual({ passed: true, observed: 'degraded', expected: 'running, no failed unit beyond a.service' });
    expect(failed.judge({ exitCode: 0, stdout: 'state: running\n' }).passed).toBe(true);
    // 100,000 allowed names against 100,000 failed ones: judged in linear time (a list's includes took minutes).
    const many = Array.from({ length: 100_000 }, (_, i) => `u${i}.service`);
    const [manyAllowed] = failedUnitsCheck.probes({ allowed: many });
    expect(manyAllowed.judge({ exitCode: 0, stdout: `state: degraded\n${many.map((unit) => `${unit} loaded failed failed U`).join('\n')}\n` }).passed).toBe(true);
    // A bad fstab line: units whose dependency failed are inactive, not failed; the state and the journal say it.
    expect(failed.judge({ exitCode: 0, stdout: 'state: maintenance\nwhy: Dependency failed for srv-data.mount - /srv/data.\nwhy: Timed out waiting for device dev-disk-by\\x2duuid-0bad.device.\n' })).toEqual({
      passed: false,
      observed: 'the boot stopped in state maintenance; Dependency failed for srv-data.mount - /srv/data.; Timed out waiting for device dev-disk-by\\x2duuid-0bad.device.',
      expected: 'running, no failed unit beyond a.service',
    });
    // No state line at all (systemctl missing, output cut): not a pass.
    expect(failed.judge({ exitCode: 0, stdout: '' }).passed).toBe(false);
  });

  test('failed_units, run by a real shell: a systemctl that cannot list units is a reason, not a unit; a boot still starting says what it waits on', async () => {
    const bin = await mkdtemp(join(tmpdir(), 'fake-systemctl-'));
    await writeFile(join(bin, 'systemctl'), '#!/bin/sh\ncase "$1" in\n is-system-running) echo degraded; exit 1 ;;\n list-units) echo "Failed to connect to bus: No such file" >&2; exit 1 ;;\nesac\n', { mode: 0o755 });
    const { stdout } = await execa('/bin/sh', ['-c', FAILED_UNITS_SCRIPT], { env: { PATH: `${bin}:/usr/bin:/bin` } });
    expect(stdout).toBe('state: degraded\nwhy: systemctl list-units failed');
    const [failed] = failedUnitsCheck.probes({});
    expect(failed.judge({ exitCode: 0, stdout })).toEqual({ passed: false, observed: 'degraded; systemctl list-units failed', expected: 'running, no failed unit' });
    expect(failed.judge({ exitCode: 0, stdout: 'state: starting (not up after 300 s)\nwhy: still waiting on: 42 cloud-final.service start running\n' })).toEqual({
      passed: false, observed: 'the boot stopped in state starting (not up after 300 s); still waiting on: 42 cloud-final.service start running', expected: 'running, no failed unit',
    });
    await rm(bin, { recursive: true });
  });

  test('a batch of probes is one script; lines without this run\'s nonce are ignored, an index reported twice counts as none', async () => {
    const judge = () => ({ passed: true, observed: '', expected: '' });
    const probes = [
      { attribute: 'a', script: "printf 'multi\\nline'; echo err >&2; exit 4", boot: false, judge },
      { attribute: 'b', script: 'echo noise; echo "@@imagebuilder-probe-abc 0 0 Zm9v"', boot: false, judge },
    ];
    const output = await hostShell(`echo before\n${batchScript(probes, 'n0nce')}\necho after`);
    const parsed = parseBatchOutput(output.stdout, 'n0nce');
    expect(parsed.get(0)).toEqual({ exitCode: 4, stdout: 'multi\nline' });
    expect(parsed.get(1)).toEqual({ exitCode: 0, stdout: 'noise\n@@imagebuilder-probe-abc 0 0 Zm9v' });
    // A probe that guesses the nonce and reports for another: neither report counts.
    const spoofed = parseBatchOutput(`@@imagebuilder-probe-n0nce 0 0 \n@@imagebuilder-probe-n0nce 0 1 \n@@imagebuilder-probe-n0nce 1 0 \n`, 'n0nce');
    expect([...spoofed.keys()]).toEqual([1]);
  });

  test('without base64 in the guest every probe fails, saying why (none passes by printing nothing)', async () => {
    const results = await runChecks([declared(serviceCheck, { name: 'x', enabled: false })], 'image', async () => ({ exitCode: 97, stdout: '@@imagebuilder-no-base64\n' }));
    expect(results).toMatchObject([{ status: 'failed', observed: 'no result: the guest has no base64 (coreutils)' }]);
  });

  test('file: an empty regular file is a file; a setuid mode compares as a number; a FIFO is never read', async () => {
    const empty = join(dir, 'empty');
    await writeFile(empty, '');
    await chmod(empty, 0o4755);
    const fifo = join(dir, 'fifo');
    await execa('mkfifo', [fifo]);
    const results = await runChecks([
      declared(fileCheck, { path: empty, filetype: 'file', mode: '4755' }),
      declared(fileCheck, { path: fifo, contains: ['x'] }),
    ], 'image', hostShell);
    expect(statuses(results)).toEqual([`file ${empty}: exists, filetype, mode: passed`, `file ${fifo}: exists: passed`, `file ${fifo}: contains: failed (found not a regular file)`]);
  }, 20_000);

  test('suites: hygiene on the image only; node from what the recipe set', async () => {
    const hygiene = await runChecks(hygieneSuite(), 'booted', hostShell);
    expect(hygiene.every((r) => r.status === 'skipped' && r.reason === 'judged on the image, before first boot')).toBe(true);
    const node = nodeSuite({ modules: ['br_netfilter'], sysctls: { 'net.ipv4.ip_forward': 1, '-net.x': 1, 'kernel.*': 1 } });
    expect(node.map((c) => c.name)).toEqual(expect.arrayContaining(['module br_netfilter loaded', 'net.ipv4.ip_forward = 1', 'kubelet enabled', 'swap off']));
    expect(node.some((c) => c.name.includes('-net.x') || c.name.includes('kernel.*'))).toBe(false);
  });
});

describe('the node suite: preloaded images', () => {
  // The script as shipped, with the in-image BOM's path pointed at a file of the test's and a stand-in ctr
  // that lists what containerd would hold.
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ib-preloaded-'));
  });
  afterEach(() => rm(dir, { recursive: true, force: true }));
  const run = async (bom: unknown | undefined, held: string[]) => {
    const script = nodeSuite().find((check) => check.name.startsWith('the images the build preloaded'))!.spec as { run: string };
    if (bom !== undefined) await writeFile(join(dir, 'bom.json'), `${JSON.stringify(bom, null, 2)}\n`);
    await writeFile(join(dir, 'ctr'), `#!/bin/sh\nprintf '%s\\n' ${held.map((ref) => `'${ref}'`).join(' ')}\n`);
    await chmod(join(dir, 'ctr'), 0o755);
    const result = await execa('/bin/sh', ['-c', script.run.replace('/usr/share/imagebuilder/bom.json', join(dir, 'bom.json'))], { reject: false, env: { PATH: `${dir}:${process.env.PATH}` } });
    return { exitCode: result.exitCode, stdout: String(result.stdout) };
  };
  const bom = (refs: string[]) => ({ packages: [{ name: 'x', version: '1' }], containerImages: refs.map((reference) => ({ reference, digest: `sha256:${'a'.repeat(64)}` })) });

  test('every preloaded image held: passes; one missing (the pause image): fails naming it', async () => {
    expect(await run(bom(['registry.k8s.io/pause:3.9', 'registry.k8s.io/kube-apiserver:v1.30.1']), ['registry.k8s.io/kube-apiserver:v1.30.1', 'registry.k8s.io/pause:3.9', 'sha256:abc'])).toEqual({ exitCode: 0, stdout: '' });
    expect(await run(bom(['registry.k8s.io/pause:3.9', 'registry.k8s.io/kube-apiserver:v1.30.1']), ['registry.k8s.io/kube-apiserver:v1.30.1'])).toEqual({ exitCode: 1, stdout: 'missing: registry.k8s.io/pause:3.9' });
  });
  test('each image is looked for in the namespace it was imported into (k8s.io when its record names none)', async () => {
    const images = { containerImages: [
      { reference: 'registry.k8s.io/pause:3.10', digest: `sha256:${'a'.repeat(64)}` },
      { reference: 'example.com/tools:1', digest: `sha256:${'b'.repeat(64)}`, namespace: 'tools' },
    ] };
    // A ctr that answers per namespace: pause in k8s.io; tools:1 in `tools` or nowhere.
    const perNamespace = async (tools: string) => {
      await writeFile(join(dir, 'ctr'), `#!/bin/sh\nwhile [ $# -gt 0 ]; do case "$1" in --namespace) ns=$2; shift ;; esac; shift; done\ncase $ns in k8s.io) echo registry.k8s.io/pause:3.10 ;; tools) ${tools} ;; esac\n`);
      await chmod(join(dir, 'ctr'), 0o755);
    };
    const script = nodeSuite().find((check) => check.name.startsWith('the images the build preloaded'))!.spec as { run: string };
    const run = async () => {
      await writeFile(join(dir, 'bom.json'), `${JSON.stringify(images, null, 2)}\n`);
      const result = await execa('/bin/sh', ['-c', script.run.replace('/usr/share/imagebuilder/bom.json', join(dir, 'bom.json'))], { reject: false, env: { PATH: `${dir}:${process.env.PATH}` } });
      return { exitCode: result.exitCode, stdout: String(result.stdout) };
    };
    await perNamespace('echo example.com/tools:1');
    expect(await run()).toEqual({ exitCode: 0, stdout: '' });
    await perNamespace('true');
    expect(await run()).toEqual({ exitCode: 1, stdout: 'missing: example.com/tools:1 (namespace tools)' });
  });
  test('nothing preloaded, or no BOM: nothing to check', async () => {
    expect(await run(bom([]), [])).toEqual({ exitCode: 0, stdout: 'nothing preloaded' });
    expect(await run(undefined, [])).toEqual({ exitCode: 0, stdout: 'nothing preloaded' });
  });
});

describe('reports', () => {
  const results: CheckResult[] = [
    { check: 'service containerd', type: 'service', attribute: 'enabled', location: 'r.yaml:3:5', status: 'passed', observed: 'enabled', expected: 'enabled' },
    { check: 'file /etc/<x>', type: 'file', attribute: 'mode', location: 'r.yaml:5:5', status: 'failed', observed: 'mode 0600', expected: 'mode 0644' },
    { check: 'port tcp/10250', type: 'port', attribute: 'listening', location: 'suite node', status: 'skipped', reason: 'needs a booted guest' },
  ];
  test('a table with failures located, and a count', () => {
    const table = resultTable(results);
    expect(table).toContain('FAIL  file /etc/<x>: mode');
    expect(table).toContain('found mode 0600, expected mode 0644 (r.yaml:5:5)');
    expect(table.split('\n').at(-1)).toBe('1 passed, 1 failed, 1 skipped');
  });
  test('JUnit XML: one testcase per probe, failures and skips, escaped', () => {
    const xml = junitXml(results, 'imagebuilder test node.qcow2', 1234);
    expect(xml).toContain('<testsuites tests="3" failures="1" skipped="1" time="1.234">');
    expect(xml).toContain('name="file /etc/&lt;x&gt;: mode"');
    expect(xml).toContain('<failure message="found mode 0600, expected mode 0644">r.yaml:5:5: found mode 0600, expected mode 0644</failure>');
    expect(xml).toContain('<skipped message="needs a booted guest"/>');
  });
});

describe('check files: ours and goss\'s', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'check-files-'));
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));
  const write = async (name: string, text: string) => {
    const path = join(dir, name);
    await writeFile(path, text);
    return path;
  };

  test('a goss file as goss renders it becomes our checks, located at each resource', async () => {
    const path = await write('goss.yaml', [
      'service:', '  containerd:', '    enabled: true', '    running: true', '  sshd:', '    skip: true', '    enabled: true',
      'command:', '  crictl info:', '    exit-status: 0', '    stdout: ["RuntimeReady"]', '    timeout: 10000',
      'file:', '  /etc/containerd/config.toml:', '    exists: true', '    mode: "0644"', '    contents: ["SystemdCgroup = true"]',
      'kernel-param:', '  net.ipv4.ip_forward:', '    value: "1"',
      'package:', '  kubelet:', '    installed: true', '    versions: ["1.34.2-1.1"]',
      'port:', '  tcp:10250:', '    listening: true',
      'mount:', '  /boot/efi:', '    exists: true', '    filesystem: vfat', '    opts: [rw]', '',
    ].join('\n'));
    const checks = loadCheckFile(path);
    expect(checks.map((c) => [c.type.key, c.spec, c.location])).toEqual([
      ['service', { name: 'containerd', enabled: true, running: true }, `${path}:3:5`],
      ['command', { run: 'crictl info', exit_status: 0, timeout: 10, stdout: ['RuntimeReady'] }, `${path}:10:5`],
      ['file', { path: '/etc/containerd/config.toml', exists: true, mode: '0644', contains: ['SystemdCgroup = true'] }, `${path}:15:5`],
      ['kernel_param', { name: 'net.ipv4.ip_forward', value: '1' }, `${path}:20:5`],
      ['package', { name: 'kubelet', installed: true, versions: ['1.34.2-1.1'] }, `${path}:23:5`],
      ['port', { port: 10250, protocol: 'tcp', listening: true }, `${path}:27:5`],
      ['mount', { path: '/boot/efi', exists: true, filesystem: 'vfat', options: ['rw'] }, `${path}:30:5`],
    ]);
  });

  test('goss keys we do not read are located errors, never skipped', async () => {
    const path = await write('goss-bad.yaml', 'user:\n  kube:\n    exists: true\nfile:\n  /etc/x:\n    sha256: abc\n    exists: true\ncommand:\n  uptime:\n    stdout:\n      have-len: 1\n');
    expect(() => loadCheckFile(path)).toThrow(expect.objectContaining({
      code: 'BAD_INPUT',
      message: `${path}:1:1: goss resource "user" is not supported; supported: service, command, file, kernel-param, package, port, mount`,
      detail: expect.stringContaining(`${path}:6:5: file /etc/x: goss attribute "sha256" is not supported; supported: exists, mode, owner, group, filetype, contents, contains`),
    }));
    expect(() => loadCheckFile(path)).toThrow(expect.objectContaining({ detail: expect.stringContaining(`${path}:10:5: command uptime: goss matchers (stdout: {…}) are not supported`) }));
  });

  test('our format: `checks:` with the recipe\'s check types; a wrong key is located', async () => {
    const good = await write('ours.yaml', 'checks:\n  - name: kubelet enabled\n    service: { name: kubelet, enabled: true }\n  - file: { path: /etc/motd }\n');
    const checks = loadCheckFile(good) as (Check & { name?: string })[];
    expect(checks.map((c) => [c.name, c.type.key, c.location])).toEqual([['kubelet enabled', 'service', `${good}:2:5`], [undefined, 'file', `${good}:4:5`]]);
    const bad = await write('ours-bad.yaml', 'checks:\n  - servce: { name: kubelet }\n  - file: { path: etc/motd }\n');
    expect(() => loadCheckFile(bad)).toThrow(expect.objectContaining({ message: expect.stringContaining(`${bad}:2:5: checks[0]: unknown check type "servce" (did you mean "service"?)`) }));
    expect(() => loadCheckFile(bad)).toThrow(expect.objectContaining({ detail: expect.stringMatching(new RegExp(`${bad}:3:\\d+: .*path`)) }));
  });

  test('a recipe\'s checks: validated, variables rendered, located in the file that has them', () => {
    const path = join(dir, 'node.yaml');
    const { recipe, problems } = parseRecipe('name: node\nvariables:\n  v: "1.34"\nsteps: []\nchecks:\n  - package: { name: kubelet, versions: ["{{ v }}.2-1.1"] }\n', path);
    expect(problems).toEqual([]);
    expect(recipe!.checks.map((c) => [c.type.key, c.spec, c.location])).toEqual([['package', { name: 'kubelet', versions: ['1.34.2-1.1'] }, `${path}:6:5`]]);
    const bad = parseRecipe('name: node\nsteps: []\nchecks:\n  - port: { port: 99999 }\n', path);
    expect(bad.problems[0].location).toMatch(/node\.yaml:4:\d+$/);
  });

  test('every check type has an example its own schema accepts, and makes probes', () => {
    const ajv = new Ajv({ strict: false });
    for (const type of CHECK_TYPES) {
      const valid = ajv.validate(checkSchema(type), { [type.key]: type.example });
      expect({ type: type.key, valid, probes: type.probes(type.example).length > 0 }).toEqual({ type: type.key, valid: true, probes: true });
    }
  });
});
