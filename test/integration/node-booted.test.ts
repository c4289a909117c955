import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { bootAndRun } from '../../src/boot/boot.js';
import { runChecks, type CheckResult } from '../../src/checks/run.js';
import { hygieneSuite } from '../../src/checks/suites.js';
import { mountContext, startBuild, withResources } from '../../src/pipeline/context.js';
import { loadCheckFile } from '../../src/recipe/checks.js';
import { createLogger } from '../../src/util/log.js';
import { fixtureImage } from '../helpers/fixtures.js';
import { expectNothingLeft, hostState, REPO, runCli, sha256 } from '../helpers/host.js';
import { startLocalMirror, type LocalMirror } from '../helpers/local-mirror.js';
import { nodeRecipeSets } from '../helpers/recipes.js';

interface Report {
  results: CheckResult[];
  summary: { passed: number; failed: number; skipped: number };
  boot?: { accel: string; firmware: string; via: string; consoleLog: string; bootMs: number };
}

/** One line per probe, as the tests below compare them: check, attribute, status. */
const verdicts = (results: CheckResult[]) => results.map((r) => `${r.check}: ${r.attribute}: ${r.status}`);
const find = (results: CheckResult[], check: string, attribute: string) => {
  const found = results.find((r) => r.check === check && r.attribute === attribute);
  if (!found) throw new Error(`no result for ${check}: ${attribute} in\n${verdicts(results).join('\n')}`);
  return found;
};

/** A JUnit file's test cases in order (a name can come twice: a recipe's check and a suite's): [name, the failure message or 'passed' / 'skipped']. */
function junitCases(xml: string): [string, string][] {
  const cases: [string, string][] = [];
  const unescape = (text: string) => text.replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&quot;/g, '"').replace(/&apos;/g, "'").replace(/&amp;/g, '&');
  for (const match of xml.matchAll(/<testcase [^>]*name="([^"]*)"[^>]*>([\s\S]*?)<\/testcase>/g)) {
    const failure = /<failure message="([^"]*)"/.exec(match[2]);
    cases.push([unescape(match[1]), failure ? unescape(failure[1]) : match[2].includes('<skipped') ? 'skipped' : 'passed']);
  }
  return cases;
}

/**
 * The end-to-end proof: a cloud-like Debian image (the efi-boot fixture with cloud-init: systemd, the cloud
 * kernel and its initramfs, GRUB on an ESP) customized by the shipped recipes against the local stand-ins, then
 * `imagebuilder test` boots it (QEMU, TCG here) and judges what a node needs. Boots are few (each is 1–3 minutes
 * under TCG): the node once, a node broken three ways once, the example's output once.
 */
describe('shipped recipes on a cloud-like Debian image, booted by imagebuilder test', () => {
  let work: string;
  let mirror: LocalMirror;
  let base: string;
  let baseSha: string;
  beforeAll(async () => {
    work = await mkdtemp('/var/tmp/ib-node-booted-');
    mirror = await startLocalMirror();
    base = await fixtureImage('efi-boot', 'qcow2', { cloudInit: true });
    baseSha = await sha256(base);
  });
  afterAll(async () => {
    await mirror?.close();
    await rm(work, { recursive: true, force: true });
    // The base is only ever read.
    if (base) expect(await sha256(base)).toBe(baseSha);
  });

  const nodeRecipe = `${REPO}/recipes/kubernetes-node.yaml`;
  let node: Promise<string> | undefined;
  /** recipes/kubernetes-node.yaml applied to the base, unchanged, as kubernetes-node.test.ts builds it (once). */
  const nodeImage = () =>
    (node ??= (async () => {
      const output = join(work, 'node.qcow2');
      const result = await runCli(['apply', nodeRecipe, '--disk-image', base, '--output', output, '--mount-backend', 'fuse', '--sparsify', 'fstrim', ...nodeRecipeSets(mirror)]);
      if (result.exitCode !== 0) throw new Error(result.all);
      return output;
    })());

  test('the node recipe\'s output passes its own checks, the node suite and the hygiene suite, booted: containerd running and answering, modules loaded, sysctls live', async () => {
    const image = await nodeImage();
    const imageSha = await sha256(image);
    const junit = join(work, 'node.junit.xml');
    const results = join(work, 'node-results');
    const before = await hostState();
    const result = await runCli([
      'test', image, '--recipe', nodeRecipe, ...nodeRecipeSets(mirror), '--suite', 'node', '--suite', 'hygiene', '--json', '--junit', junit, '--results', results,
    ]);
    if (result.exitCode !== 0) throw new Error(result.all);
    const report = JSON.parse(result.stdout) as Report;
    // Every probe judged — the recipe's 15 checks, the node suite with the recipe's modules and sysctls, hygiene — and passed.
    expect(verdicts(report.results)).toEqual([
      'kubelet, kubeadm and kubectl installed: installed: passed',
      'package kubeadm: installed: passed',
      'package kubectl: installed: passed',
      'containerd starts at boot, and runs: enabled: passed',
      'containerd starts at boot, and runs: running: passed',
      'kubelet starts at boot (kubeadm configures it): enabled: passed',
      'containerd uses the systemd cgroup driver and the pinned pause image: exists: passed',
      'containerd uses the systemd cgroup driver and the pinned pause image: contains: passed',
      'file /usr/local/bin/containerd: exists, filetype: passed',
      'file /usr/local/sbin/runc: exists, mode: passed',
      'file /usr/local/bin/crictl: exists, filetype: passed',
      'containerd answers on its socket: exit status: passed',
      'kernel module br_netfilter: loaded: passed',
      'kernel parameter net.ipv4.ip_forward: value: passed',
      "kubelet's --protect-kernel-defaults would start: value: passed",
      'kernel parameter kernel.panic: value: passed',
      'kernel parameter kernel.panic_on_oops: value: passed',
      "boot reached running (or only the base image's failures): none failed: passed",
      'containerd enabled and running: enabled: passed',
      'containerd enabled and running: running: passed',
      'containerd answers on its socket: exit status: passed',
      // Passes on the stand-in crictl, a script that prints its version whatever it is asked (test/helpers/local-mirror.ts).
      'crictl info works (when crictl is installed): exit status: passed',
      'kubelet enabled: enabled: passed',
      'swap off: exit status: passed',
      // Nothing preloaded in this build (import_control_plane_images is off): nothing to find in containerd.
      'the images the build preloaded (the pause image among them, when it was) are in containerd, each in its namespace: exit status: passed',
      'module overlay loaded: loaded: passed',
      'module br_netfilter loaded: loaded: passed',
      'net.bridge.bridge-nf-call-iptables = 1: value: passed',
      'net.bridge.bridge-nf-call-ip6tables = 1: value: passed',
      'net.ipv4.ip_forward = 1: value: passed',
      'net.ipv6.conf.all.forwarding = 1: value: passed',
      'vm.overcommit_memory = 1: value: passed',
      'vm.panic_on_oom = 0: value: passed',
      'kernel.panic = 10: value: passed',
      'kernel.panic_on_oops = 1: value: passed',
      'kernel.keys.root_maxkeys = 1000000: value: passed',
      'kernel.keys.root_maxbytes = 25000000: value: passed',
      'no SSH host keys: exit status: passed',
      'machine-id empty or uninitialized: exit status: passed',
      'no cloud-init instance state: exit status: passed',
      'no core dumps: exit status: passed',
      '/var/log under 200 MB: exit status: passed',
    ]);
    expect(report.summary).toEqual({ passed: 42, failed: 0, skipped: 0 });
    // What the booted guest answered (the image alone cannot say these).
    expect(find(report.results, 'containerd enabled and running', 'running').observed).toBe('active');
    expect(find(report.results, 'containerd starts at boot, and runs', 'running').observed).toBe('active');
    expect(find(report.results, 'containerd answers on its socket', 'exit status').observed).toBe('exit 0');
    for (const module of ['overlay', 'br_netfilter']) expect(find(report.results, `module ${module} loaded`, 'loaded').observed).toBe('loaded');
    for (const key of ['net.bridge.bridge-nf-call-iptables', 'net.bridge.bridge-nf-call-ip6tables', 'net.ipv4.ip_forward']) {
      expect(find(report.results, `${key} = 1`, 'value')).toMatchObject({ observed: '1', expected: '1' });
    }
    expect(report.boot).toMatchObject({ firmware: 'uefi', via: 'cloud-init', consoleLog: join(results, 'console.log') });
    const console_ = await readFile(report.boot!.consoleLog, 'utf8');
    expect(console_).toMatch(/Linux version 6\.1\.0-\d+-cloud-amd64/);
    expect(console_).toContain('containerd container runtime');
    // The JUnit file says the same, case by case.
    const xml = await readFile(junit, 'utf8');
    expect(xml).toContain('<testsuites tests="42" failures="0" skipped="0"');
    const cases = junitCases(xml);
    expect(cases.map(([name]) => name)).toEqual(report.results.map((r) => `${r.check}: ${r.attribute}`));
    expect([...new Set(cases.map(([, outcome]) => outcome))]).toEqual(['passed']);
    expect(await sha256(image)).toBe(imageSha);
    await expectNothingLeft(before);
  }, 1_800_000);

  test('a node broken three ways (containerd masked, a sysctl the kernel refuses, an fstab mount of a missing disk) fails exactly the checks that see it, exit 7, in one boot', async () => {
    const broken = join(work, 'broken.yaml');
    await writeFile(broken, stringify({
      name: 'broken-node',
      steps: [
        { name: 'containerd masked', service: { mask: ['containerd'] } },
        { name: 'a value the kernel refuses (EINVAL)', sysctl: { name: '98-broken', settings: { 'vm.swappiness': 'banana' } } },
        { name: 'a mount of a disk that is not there, without nofail', run: "echo 'UUID=0badf00d-0000-4000-8000-000000000000 /srv/missing ext4 defaults 0 2' >> /etc/fstab" },
      ],
    }));
    const image = join(work, 'broken.qcow2');
    const applied = await runCli(['apply', broken, '--disk-image', await nodeImage(), '--output', image, '--mount-backend', 'fuse', '--sparsify', 'fstrim']);
    if (applied.exitCode !== 0) throw new Error(applied.all);
    const imageSha = await sha256(image);
    const junit = join(work, 'broken.junit.xml');
    const before = await hostState();
    // The table (no --json), as a person reads it; the JUnit file for exact assertions.
    const result = await runCli(['test', image, '--recipe', broken, '--suite', 'node', '--junit', junit, '--results', join(work, 'broken-results')]);
    expect(result.exitCode).toBe(7);
    const cases = junitCases(await readFile(junit, 'utf8'));
    const failed = cases.filter(([, outcome]) => !['passed', 'skipped'].includes(outcome));
    expect(failed.map(([name]) => name)).toEqual([
      "boot reached running (or only the base image's failures): none failed",
      'containerd enabled and running: enabled',
      'containerd enabled and running: running',
      'containerd answers on its socket: exit status',
      'vm.swappiness = banana: value',
    ]);
    // Each break is told apart in the one boot: the mask by is-enabled, the sysctl by the live value and by
    // systemd-sysctl's failure, the fstab line by the boot stopping in emergency mode on that mount.
    const outcome = Object.fromEntries(failed);
    expect(outcome['containerd enabled and running: enabled']).toBe('found masked, expected enabled');
    expect(outcome['containerd enabled and running: running']).toMatch(/^found (inactive|failed), expected active$/);
    expect(outcome['vm.swappiness = banana: value']).toBe('found 60, expected banana');
    const boot = outcome["boot reached running (or only the base image's failures): none failed"];
    expect(boot).toContain('systemd-sysctl.service');
    expect(boot).toContain('maintenance');
    expect(boot).toMatch(/srv-missing\.mount|\/srv\/missing/);
    // What did not break still passes: kubelet stays enabled, swap stays off.
    const outcomes = new Map(cases);
    expect(outcomes.get('kubelet enabled: enabled')).toBe('passed');
    expect(outcomes.get('swap off: exit status')).toBe('passed');

    // The table on stdout: one line per probe, the failures marked, with what was found and what was expected.
    const table = result.stdout.split('\n');
    expect(table).toContainEqual(expect.stringMatching(/^FAIL {2}containerd enabled and running: enabled +found masked, expected enabled \(suite node\)$/));
    expect(table).toContainEqual(expect.stringMatching(/^FAIL {2}vm\.swappiness = banana: value +found 60, expected banana \(suite node\)$/));
    expect(table).toContainEqual(expect.stringMatching(/^ok {4}kubelet enabled: enabled +enabled$/));
    expect(table).toContain(`${cases.length - failed.length} passed, ${failed.length} failed, 0 skipped`);
    // And the error on stderr names each failure, where it was declared, found and expected.
    expect(result.stderr).toContain(`${failed.length} of ${cases.length} check(s) failed on ${image}`);
    expect(result.stderr).toContain('suite node: containerd enabled and running: enabled: found masked, expected enabled');
    expect(result.stderr).toContain('suite node: vm.swappiness = banana: value: found 60, expected banana');
    expect(await sha256(image)).toBe(imageSha);
    await expectNothingLeft(before);
  }, 1_800_000);

  test("the example recipe's output: what it claims holds booted, hygiene passes, and each check judged both offline and booted gets the same answer", async () => {
    const image = join(work, 'example.qcow2');
    const applied = await runCli(['apply', `${REPO}/recipes/examples/k8s-node-containerd.yaml`, '--disk-image', base, '--output', image, '--mount-backend', 'fuse', '--sparsify', 'fstrim']);
    if (applied.exitCode !== 0) throw new Error(applied.all);
    const imageSha = await sha256(image);
    // The example has no `checks:` of its own: these are what its steps say they do.
    const checks = join(work, 'example-checks.yaml');
    await writeFile(checks, stringify({
      checks: [
        ...['containerd', 'conntrack', 'socat'].map((name) => ({ package: { name } })),
        { service: { name: 'containerd', enabled: true, running: true } },
        { file: { path: '/etc/containerd/config.toml', contains: ['SystemdCgroup = true'] } },
        { file: { path: '/etc/modules-load.d/k8s.conf', contains: ['overlay', 'br_netfilter'], mode: '0644' } },
        { name: 'containerd runs here', command: { run: 'containerd --version', stdout: ['containerd'], boot: false } },
        { name: 'containerd answers', command: { run: 'ctr version', stdout: ['Server:'] } },
        ...['overlay', 'br_netfilter'].map((name) => ({ kernel_module: { name, loaded: true } })),
        ...['net.bridge.bridge-nf-call-iptables', 'net.bridge.bridge-nf-call-ip6tables', 'net.ipv4.ip_forward'].map((name) => ({ kernel_param: { name, value: 1 } })),
      ],
    }));
    const before = await hostState();

    // Offline: the CLI, judging what the image shows.
    const offline = await runCli(['test', image, '--checks', checks, '--suite', 'hygiene', '--offline', '--json']);
    if (offline.exitCode !== 0) throw new Error(offline.all);
    const onImage = (JSON.parse(offline.stdout) as Report).results;

    // Booted: the same checks in the same order, every probe that means something in a running guest judged
    // there (`booted-all`, which the CLI does not offer: its booted pass judges only what the image pass skipped).
    const declared = [...loadCheckFile(checks), ...hygieneSuite()];
    const start = startBuild({ log: createLogger({ level: 'warn' }), workDir: work });
    const booted = await withResources(start, { workDir: work }, (context) =>
      runChecks(declared, 'booted-all', async (script) => {
        const result = await bootAndRun(mountContext(context), image, { script });
        return { exitCode: result.exitCode, stdout: result.output };
      }),
    );
    expect(booted.map((r) => `${r.check}: ${r.attribute}`)).toEqual(onImage.map((r) => `${r.check}: ${r.attribute}`));

    // Everything the example claims holds in the booted guest; hygiene is judged on the image alone, and passes.
    expect(booted.filter((r) => r.status === 'failed')).toEqual([]);
    expect(booted.filter((r) => r.status === 'skipped').map((r) => r.check)).toEqual(hygieneSuite().map((c) => c.name));
    expect(onImage.filter((r) => r.location === 'suite hygiene').map((r) => r.status)).toEqual(hygieneSuite().map(() => 'passed'));
    expect(find(booted, 'containerd answers', 'exit status, stdout').status).toBe('passed');
    expect(find(booted, 'kernel parameter net.ipv4.ip_forward', 'value').observed).toBe('1');

    // Judged both ways: the same verdict and the same observation, probe by probe. Which ones those are is
    // asserted too, so the agreement is never vacuous.
    const both = onImage.map((r, i) => [r, booted[i]] as const).filter(([a, b]) => a.status !== 'skipped' && b.status !== 'skipped');
    expect(both.map(([r]) => `${r.check}: ${r.attribute}`)).toEqual([
      'package containerd: installed',
      'package conntrack: installed',
      'package socat: installed',
      'service containerd: enabled',
      'file /etc/containerd/config.toml: exists',
      'file /etc/containerd/config.toml: contains',
      'file /etc/modules-load.d/k8s.conf: exists, mode',
      'file /etc/modules-load.d/k8s.conf: contains',
      'containerd runs here: exit status, stdout',
    ]);
    for (const [offlineResult, bootedResult] of both) {
      expect({ check: bootedResult.check, status: bootedResult.status, observed: bootedResult.observed })
        .toEqual({ check: offlineResult.check, status: offlineResult.status, observed: offlineResult.observed });
    }
    expect(await sha256(image)).toBe(imageSha);
    await expectNothingLeft(before);
  }, 1_800_000);
});
