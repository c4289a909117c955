import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { release } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { CLI, hostState } from '../helpers/host.js';

/** Whether this host has a /dev/kvm at all (the appliance may still not start under it). */
const HAS_KVM = existsSync('/dev/kvm');

interface Report {
  ready: boolean;
  checks: { id: string; status: string; required: boolean; found: string; cost?: string; fix?: string }[];
}

/** `imagebuilder doctor` on this machine, whose real gaps are known: no nbd module, KVM unusable by libguestfs. */
describe('imagebuilder doctor on this host', () => {
  let cache: string;
  beforeEach(async () => {
    cache = await mkdtemp('/var/tmp/ib-doctor-cache-');
  });
  afterEach(async () => {
    await rm(cache, { recursive: true, force: true });
  });

  async function doctor(args: string[], env: Record<string, string> = {}) {
    const result = await execa(process.execPath, [CLI, 'doctor', ...args], { reject: false, env: { IMAGEBUILDER_CACHE: cache, ...env } });
    return { exitCode: result.exitCode, stdout: String(result.stdout), stderr: String(result.stderr) };
  }
  const check = (report: Report, id: string) => report.checks.find((c) => c.id === id)!;

  test('root, /dev/fuse and loop devices OK; no nbd module named, with its cost; nothing started to find out', async () => {
    const before = await hostState();
    const result = await doctor(['--json']);
    expect(result.exitCode).toBe(0);
    const report = JSON.parse(result.stdout) as Report;
    expect(report.ready).toBe(true);
    expect(check(report, 'root').status).toBe('ok');
    expect(check(report, 'dev-fuse').status).toBe('ok');
    expect(check(report, 'loop')).toMatchObject({ status: 'ok', found: expect.stringMatching(/^next free: \/dev\/loop\d+; partitions are not scanned by the kernel here: partx -a adds them$/) });
    expect(check(report, 'dev-nodes').status).toBe('ok');
    expect(check(report, 'nbd')).toMatchObject({ status: 'missing', required: false, found: `not loaded, and no nbd module for kernel ${release()} here` });
    // A fresh cache holds no KVM verdict, and doctor does not start the appliance unless asked. (Machines of this
    // kind have come with a /dev/kvm the appliance cannot use, and without one: TCG then, nothing to probe.)
    if (HAS_KVM) expect(check(report, 'libguestfs')).toMatchObject({ status: 'unknown', fix: expect.stringContaining('--probe-libguestfs') });
    else expect(check(report, 'libguestfs')).toMatchObject({ status: 'degraded', found: 'no /dev/kvm', cost: expect.stringContaining('TCG') });
    expect((await hostState()).helpers).toEqual(before.helpers);
    expect(report.checks.filter((c) => c.id.startsWith('tool:') && c.status !== 'ok')).toEqual([]);

    const human = await doctor([]);
    expect(human.exitCode).toBe(0);
    expect(human.stdout).toMatch(/^MISSING +nbd module +not loaded, and no nbd module for kernel/m);
    expect(human.stdout).toMatch(/^ +costs: the nbd backend; auto uses the fuse backend instead/m);
    expect(human.stdout).toMatch(/^ready: a default build \(fuse backend, auto sparsify\) works here/m);
  });

  test('--probe-libguestfs: KVM is unusable for the appliance here (or absent), TCG works; a KVM verdict is remembered', async () => {
    const result = await doctor(['--json', '--probe-libguestfs']);
    expect(result.exitCode).toBe(0);
    const report = JSON.parse(result.stdout) as Report;
    const libguestfs = check(report, 'libguestfs');
    expect(libguestfs).toMatchObject({ status: 'degraded', required: false });
    if (!HAS_KVM) {
      // Nothing to probe but TCG, which started (else the check would be missing and required); nothing remembered.
      expect(libguestfs.found).toBe('no /dev/kvm');
      await expect(readFile(join(cache, `libguestfs-kvm-${release()}`), 'utf8')).rejects.toThrow();
      return;
    }
    expect(libguestfs.found).toContain('/dev/kvm is present but the appliance does not start under KVM');
    expect(libguestfs.cost).toContain('TCG');
    expect(await readFile(join(cache, `libguestfs-kvm-${release()}`), 'utf8')).toBe('broken\n');

    // The next run (and every build) reads the verdict instead of probing.
    const again = JSON.parse((await doctor(['--json'])).stdout) as Report;
    expect(check(again, 'libguestfs').found).toContain(`remembered in ${join(cache, `libguestfs-kvm-${release()}`)}`);
  });

  test('without the tools on PATH: exit 5, each required tool missing with its Debian package', async () => {
    const empty = await mkdtemp('/var/tmp/ib-doctor-path-');
    try {
      const result = await doctor(['--json'], { PATH: empty });
      expect(result.exitCode).toBe(5);
      const report = JSON.parse(result.stdout) as Report;
      expect(report.ready).toBe(false);
      expect(check(report, 'tool:qemu-storage-daemon')).toMatchObject({ status: 'missing', required: true, fix: 'apt-get install qemu-utils (Debian 12: qemu-system-common)' });
      expect(check(report, 'loop')).toMatchObject({ status: 'missing', found: 'losetup is not installed' });
      const human = await doctor([], { PATH: empty });
      expect(human.exitCode).toBe(5);
      expect(human.stdout).toMatch(/^not ready: missing .*qemu-storage-daemon.* \(required by a default build\)$/m);
    } finally {
      await rm(empty, { recursive: true, force: true });
    }
  });
});
