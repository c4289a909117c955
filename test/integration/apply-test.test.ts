import { mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { fixtureImage } from '../helpers/fixtures.js';
import { expectValidBom } from '../helpers/bom-schema.js';
import { leftoversUnder, NOTHING_LEFT, runCli, sha256 } from '../helpers/host.js';

/** A unit that fails at every boot. */
const failingUnit = (name: string) => ({
  file: { path: `/etc/systemd/system/${name}.service`, content: `[Unit]\nDescription=${name}\n[Service]\nType=oneshot\nExecStart=/bin/false\n[Install]\nWantedBy=multi-user.target\n` },
});

/**
 * `apply --test`: the output booted in QEMU (TCG or KVM, whichever runs guests here) and the recipe's checks
 * judged before it takes its name. The base is the bootable efi-boot fixture with a unit that fails at boot
 * (as real bases have: a networkd-wait-online, a cloud agent); it is booted once to learn its own failures
 * (remembered in the cache), which are then not the build's.
 */
describe('apply --test', () => {
  let work: string;
  let env: Record<string, string>;
  let base: string;
  beforeAll(async () => {
    work = await mkdtemp('/var/tmp/ib-apply-test-');
    env = { XDG_CACHE_HOME: join(work, 'xdg-cache'), IMAGEBUILDER_WORK_DIR: join(work, 'tmp') };
    await mkdir(env.IMAGEBUILDER_WORK_DIR);
    const baseRecipe = await recipe('base', [failingUnit('base-fails'), { service: { enable: ['base-fails'] } }], []);
    base = join(work, 'base.qcow2');
    const built = await runCli(['apply', baseRecipe, '--disk-image', await fixtureImage('efi-boot'), '--output', base, '--sparsify', 'none', '--no-cache'], { env });
    if (built.exitCode !== 0) throw new Error(built.all);
  });
  afterAll(() => rm(work, { recursive: true, force: true }));

  const recipe = async (name: string, steps: unknown[], checks: unknown[]) => {
    const path = join(work, `${name}.yaml`);
    await writeFile(path, stringify({ name, steps, checks }));
    return path;
  };

  test('a good build: booted, its checks pass, results and boot time in the BOM and beside the output; the base booted once', async () => {
    const good = await recipe('good', [{ file: { path: '/etc/motd', content: 'built by imagebuilder\n' } }], [
      { file: { path: '/etc/motd', contains: ['built by imagebuilder'] } },
      { service: { name: 'systemd-journald', running: true } },
      { kernel_param: { name: 'kernel.ostype', value: 'Linux' } },
      { failed_units: {} },
    ]);
    const baseBefore = await sha256(base);
    const output = join(work, 'good.qcow2');
    const result = await runCli(['apply', good, '--disk-image', base, '--output', output, '--sparsify', 'none', '--no-cache', '--test'], { env });
    if (result.exitCode !== 0) throw new Error(result.all);
    expect(result.stderr).toContain('booting the base image');
    expect(result.stdout).toMatch(/tested: 5 check\(s\) passed, booted in [\d.]+ s \((kvm|tcg), uefi\)/);

    const bom = JSON.parse(await readFile(`${output}.bom.json`, 'utf8'));
    expectValidBom(bom);
    expect(bom.test.summary).toEqual({ passed: 5, failed: 0, skipped: 0 });
    expect(bom.test.results.map((r: { check: string; attribute: string; status: string }) => `${r.check} ${r.attribute}: ${r.status}`)).toEqual([
      'file /etc/motd exists: passed',
      'file /etc/motd contains: passed',
      'service systemd-journald running: passed',
      'kernel parameter kernel.ostype value: passed',
      'failed units none failed: passed',
    ]);
    // The base's own failure is allowed, and said: the output fails it too (degraded), and nothing else.
    expect(bom.test.boot).toMatchObject({ firmware: 'uefi', via: 'systemd', consoleLog: `${output}.test/console.log`, baseFailures: ['base-fails.service'] });
    expect(bom.test.results.at(-1)).toMatchObject({ observed: 'degraded', expected: 'running, no failed unit beyond base-fails.service' });
    expect(['kvm', 'tcg']).toContain(bom.test.boot.accel);
    expect(bom.test.boot.bootMs).toBeGreaterThan(1000);
    expect(bom.durationsMs.boot).toBeGreaterThanOrEqual(bom.test.boot.bootMs);
    // Kept beside the output for pipelines: the results and the console of the boot that produced them.
    expect(JSON.parse(await readFile(`${output}.test/results.json`, 'utf8')).summary).toEqual(bom.test.summary);
    expect(await readFile(`${output}.test/console.log`, 'utf8')).toMatch(/Linux version 6\.1\./);
    // The output booted is the output shipped: its sha256 is the one the BOM and SHA256SUMS give.
    expect(await sha256(output)).toBe(bom.output.sha256);
    expect(await sha256(base)).toBe(baseBefore);
    expect(await leftoversUnder(env.IMAGEBUILDER_WORK_DIR)).toEqual(NOTHING_LEFT);

    // The base's failures are remembered by its sha256: a second build does not boot it again.
    const again = await runCli(['apply', good, '--disk-image', base, '--output', join(work, 'again.qcow2'), '--sparsify', 'none', '--test', '--json'], { env });
    if (again.exitCode !== 0) throw new Error(again.all);
    expect(again.stderr).not.toContain('booting the base image');
  }, 900_000);

  test('a build that breaks the boot (a bad fstab line): exit 7, the failed check says why, no output; results and console kept', async () => {
    const bad = await recipe(
      'bad-fstab',
      // A device that never appears, waited for 5 s (not the default 90) so the test is quick; not nofail.
      [{ run: "echo 'UUID=0badf00d-0000-4000-8000-000000000000 /srv/data ext4 defaults,x-systemd.device-timeout=5s 0 2' >> /etc/fstab" }],
      [{ failed_units: {} }, { service: { name: 'systemd-journald', running: true } }],
    );
    const output = join(work, 'bad.qcow2');
    const result = await runCli(['apply', bad, '--disk-image', base, '--output', output, '--sparsify', 'none', '--no-cache', '--test'], { env });
    expect(result.exitCode).toBe(7);
    expect(result.stderr).toContain('1 of 2 check(s) failed on the output');
    expect(result.stderr).toMatch(/bad-fstab\.yaml:\d+:\d+: failed units: none failed: found the boot stopped in state maintenance; .*srv-data\.mount/);
    // No output, and nothing half-written beside where it would have been.
    expect((await readdir(work)).filter((name) => name.startsWith('bad.qcow2') || name.startsWith('.bad.qcow2'))).toEqual(['bad.qcow2.test']);
    const results = JSON.parse(await readFile(`${output}.test/results.json`, 'utf8'));
    expect(results.summary).toEqual({ passed: 1, failed: 1, skipped: 0 });
    // The guest reported from emergency mode rather than the host waiting out its deadline.
    expect(await readFile(`${output}.test/console.log`, 'utf8')).toMatch(/emergency/i);
    expect(await leftoversUnder(env.IMAGEBUILDER_WORK_DIR)).toEqual(NOTHING_LEFT);
  }, 900_000);

  test('a guest that never reports (an image with no bootloader): exit 7 at --boot-timeout, results.json says why, the console kept, no output', async () => {
    const nothing = await recipe('nothing', [{ file: { path: '/etc/motd', content: 'never booted\n' } }], []);
    const output = join(work, 'unbootable.qcow2');
    // The mbr fixture has no bootloader: SeaBIOS finds nothing to boot. The base is booted first (its failed
    // units), and that is the boot that never reports.
    const result = await runCli(['apply', nothing, '--disk-image', await fixtureImage('mbr'), '--output', output, '--sparsify', 'none', '--no-cache', '--test', '--boot-timeout', '15'], { env });
    expect(result.exitCode).toBe(7);
    expect(result.stderr).toMatch(/the guest did not report within 15 s \((kvm|tcg), bios\)/);
    expect((await readdir(work)).filter((name) => name.startsWith('unbootable.qcow2') || name.startsWith('.unbootable.qcow2'))).toEqual(['unbootable.qcow2.test']);
    const results = JSON.parse(await readFile(`${output}.test/results.json`, 'utf8'));
    expect(results.error.code).toBe('CHECK_FAILED');
    expect(results.error.message).toMatch(/^the guest did not report within 15 s .*; its console is in .*unbootable\.qcow2\.test\/base\/console\.log$/);
    // SeaBIOS, finding nothing to boot, says nothing on the serial port; the log is there all the same.
    expect((await stat(`${output}.test/base/console.log`)).isFile()).toBe(true);
    expect(await leftoversUnder(env.IMAGEBUILDER_WORK_DIR)).toEqual(NOTHING_LEFT);
  }, 900_000);

  test('imagebuilder test --base: a unit the build broke fails, named alone; the base\'s failure (remembered) is allowed', async () => {
    const broke = await recipe('broke', [failingUnit('build-broke'), { service: { enable: ['build-broke'] } }], []);
    const output = join(work, 'broke.qcow2');
    const built = await runCli(['apply', broke, '--disk-image', base, '--output', output, '--sparsify', 'none', '--no-cache'], { env });
    if (built.exitCode !== 0) throw new Error(built.all);
    const checks = join(work, 'failed-units.yaml');
    await writeFile(checks, stringify({ checks: [{ failed_units: {} }] }));
    // --checksum is the tested image's; the base is verified as it is (it has no sums file here), never against it.
    const result = await runCli(['test', output, '--checks', checks, '--base', base, '--checksum', `sha256:${await sha256(output)}`, '--json'], { env });
    expect(result.exitCode).toBe(7);
    expect(result.stderr).not.toContain('booting the base image');
    const report = JSON.parse(result.stdout);
    expect(report.boot.baseFailures).toEqual(['base-fails.service']);
    expect(report.results).toEqual([expect.objectContaining({ status: 'failed', observed: 'degraded, failed: build-broke.service', expected: 'running, no failed unit beyond base-fails.service' })]);
    expect(await leftoversUnder(env.IMAGEBUILDER_WORK_DIR)).toEqual(NOTHING_LEFT);
  }, 900_000);

  test('--test with a tarball alone, or without phase 2, and --test-* without --test, are refused before any work', async () => {
    const good = await recipe('tiny', [{ file: { path: '/etc/motd', content: 'x\n' } }], []);
    const tarOnly = await runCli(['apply', good, '--disk-image', base, '--output', join(work, 'x.tar'), '--format', 'tar', '--test'], { env });
    expect(tarOnly.exitCode).toBe(2);
    expect(tarOnly.stderr).toContain('a root filesystem tarball alone does not boot');
    const phases = await runCli(['apply', good, '--disk-image', base, '--output', join(work, 'y.qcow2'), '--phases', '0,1', '--test'], { env });
    expect(phases.exitCode).toBe(2);
    expect(phases.stderr).toContain('--test boots the output, which --phases 0,1 does not write');
    const without = await runCli(['apply', good, '--disk-image', base, '--output', join(work, 'z.qcow2'), '--test-suite', 'node'], { env });
    expect(without.exitCode).toBe(2);
    expect(without.stderr).toContain('--test-suite only means something with --test');
  });
});
