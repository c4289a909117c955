import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { which, writeFileAtomic } from '../util/fs.js';
import { release } from 'node:os';
import { join } from 'node:path';
import type { Runner } from '../util/exec.js';
import type { Logger } from '../util/log.js';
import { QEMU_SANDBOX } from './firmware.js';

export type KvmVerdict = 'works' | 'broken';

/** qemu's isa-debug-exit device: a guest's byte `v` written to this port ends qemu with exit status (v << 1) | 1. */
const DEBUG_EXIT_PORT = 0xf4;
const PROBE_VALUE = 0x2a;
export const PROBE_EXIT_STATUS = (PROBE_VALUE << 1) | 1;
/** A working KVM runs the probe in well under a second (SeaBIOS included); one that hangs is broken. */
const PROBE_TIMEOUT_MS = 15_000;

/**
 * A disk whose boot sector, run by SeaBIOS on a vCPU, writes PROBE_VALUE to the debug-exit port and halts:
 * `mov al, 0x2a; out 0xf4, al; hlt; jmp $-1`. If KVM executes guest code here, qemu exits with
 * PROBE_EXIT_STATUS; on the hosts where it does not (nested virtualisation refusing an MSR, a vCPU that never
 * runs) qemu aborts or hangs.
 */
export function probeBootSector(): Buffer {
  const sector = Buffer.alloc(512);
  Buffer.from([0xb0, PROBE_VALUE, 0xe6, DEBUG_EXIT_PORT, 0xf4, 0xeb, 0xfd]).copy(sector);
  sector.writeUInt16LE(0xaa55, 510);
  return sector;
}

/** Where the verdict is remembered: per kernel, since a kernel update may fix (or break) nested KVM. */
export const bootKvmVerdictFile = (cacheDir: string) => join(cacheDir, `qemu-kvm-${release()}`);

/**
 * Whether qemu-system-x86_64 runs guest code under KVM on this host, with the CPU model a boot uses (`host`):
 * /dev/kvm may be there and still fail (seen here: a nested host whose KVM refuses an MSR qemu sets, so qemu
 * aborts at its first vCPU run). Asked of qemu itself with the smallest guest there is, once per kernel;
 * the verdict is kept in the cache dir.
 */
export async function probeBootKvm(run: Runner, log: Logger, cacheDir: string, workDir: string, signal?: AbortSignal): Promise<KvmVerdict> {
  const remembered = (await readFile(bootKvmVerdictFile(cacheDir), 'utf8').catch(() => '')).trim();
  if (remembered === 'works' || remembered === 'broken') return remembered;
  const dir = await mkdtemp(join(workDir, 'kvm-probe-'));
  try {
    const disk = join(dir, 'probe.raw');
    await writeFile(disk, probeBootSector());
    const qemu = [
      'qemu-system-x86_64',
      '-sandbox', QEMU_SANDBOX, '-machine', 'pc,accel=kvm', '-cpu', 'host', '-m', '16', '-nodefaults', '-no-user-config', '-display', 'none', '-nic', 'none', '-monitor', 'none', '-serial', 'none',
      '-device', `isa-debug-exit,iobase=${DEBUG_EXIT_PORT},iosize=1`,
      '-drive', `file=${disk},format=raw,if=ide,index=0`,
    ];
    // A broken KVM may hang qemu: it dies with a killed build (--pdeathsig), and an interrupt stops it.
    const setpriv = await which('setpriv');
    const [file, args] = setpriv ? [setpriv, ['--pdeathsig', 'KILL', '--', ...qemu]] : [qemu[0], qemu.slice(1)];
    const started = Date.now();
    const result = await run(file, args, { allowFailure: true, timeoutMs: PROBE_TIMEOUT_MS, signal, log, purpose: 'checking whether qemu can use KVM here' });
    const verdict: KvmVerdict = result.exitCode === PROBE_EXIT_STATUS ? 'works' : 'broken';
    if (verdict === 'broken') log.info(`boot: KVM does not run guests on this host (${result.output.trim().split('\n').pop() || `qemu exited with ${result.exitCode}`}); TCG`);
    // Remembered only when qemu ended by itself (an exit status, or an abort as on this project's hosts): a probe
    // cut short by its deadline (a loaded host, a hang) decides this build only.
    if (Date.now() - started < PROBE_TIMEOUT_MS) {
      await mkdir(cacheDir, { recursive: true });
      await writeFileAtomic(bootKvmVerdictFile(cacheDir), `${verdict}\n`);
    }
    return verdict;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
