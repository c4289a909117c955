import { Flags } from '@oclif/core';
import { BaseCommand } from '../cli/base-command.js';
import { findBuilds } from '../host/reap.js';
import { hostProbes, runDoctor, type DoctorCheck, type DoctorReport } from '../host/doctor.js';
import { EXIT_CODES } from '../util/errors.js';
import { execRunner } from '../util/exec.js';
import { createLogger } from '../util/log.js';
import { locateHostPaths } from '../cli/host-flags.js';

const LABELS: Record<DoctorCheck['status'], string> = { ok: 'OK', degraded: 'DEGRADED', missing: 'MISSING', unknown: 'UNKNOWN' };

export default class Doctor extends BaseCommand {
  static override summary = 'Check this host: what works, what is missing, what each gap costs and how to fix it';
  static override description =
    'Checks root, /dev/fuse, loop devices, device nodes, the nbd module, binfmt_misc for foreign architectures, KVM for ' +
    'libguestfs, free space in the work and cache directories, every host tool, and builds killed without releasing what they held (`imagebuilder cleanup` releases them). Exits with 5 when something a ' +
    'default build (fuse backend, auto sparsify) needs is missing.';
  static override examples = ['<%= config.bin %> doctor', '<%= config.bin %> doctor --json', '<%= config.bin %> doctor --probe-libguestfs'];
  static override flags = {
    json: Flags.boolean({ description: 'print the report as JSON', default: false }),
    'probe-libguestfs': Flags.boolean({ description: 'start the libguestfs appliance to learn whether KVM (and else TCG) works: up to 75 s', default: false }),
  };

  async run(): Promise<DoctorReport> {
    const { flags } = await this.parse(Doctor);
    const log = createLogger({ level: flags.json ? 'warn' : 'info' });
    // Doctor has no --cache or --work-dir: it checks where the variables (or the defaults) put them.
    const paths = locateHostPaths({ cache: process.env.IMAGEBUILDER_CACHE, 'work-dir': process.env.IMAGEBUILDER_WORK_DIR });
    const report = await runDoctor(hostProbes(execRunner, log, paths.cacheDir), { workDir: paths.workDir, cacheDir: paths.cacheDir, probeLibguestfs: flags['probe-libguestfs'], builds: () => findBuilds([paths.workDir], paths.runDir) });
    if (flags.json) this.log(JSON.stringify(report, null, 2));
    else this.log(renderReport(report));
    if (!report.ready) process.exitCode = EXIT_CODES.ENVIRONMENT;
    return report;
  }
}

function renderReport(report: DoctorReport): string {
  const width = Math.max(...report.checks.map((c) => c.name.length));
  const lines: string[] = [];
  for (const check of report.checks) {
    lines.push(`${LABELS[check.status].padEnd(8)}  ${check.name.padEnd(width)}  ${check.found}${check.required && check.status === 'missing' ? '  (required)' : ''}`);
    const indent = ' '.repeat(10 + width + 2);
    if (check.status !== 'ok' && check.cost) lines.push(`${indent}costs: ${check.cost}`);
    if (check.status !== 'ok' && check.fix) lines.push(`${indent}fix:   ${check.fix}`);
  }
  const missing = report.checks.filter((c) => c.status === 'missing');
  const requiredMissing = missing.filter((c) => c.required);
  const gaps = report.checks.filter((c) => c.status !== 'ok').length;
  lines.push('');
  lines.push(
    report.ready
      ? `ready: a default build (fuse backend, auto sparsify) works here${gaps ? `; ${gaps} optional gap(s) above` : ''}`
      : `not ready: missing ${requiredMissing.map((c) => c.name).join(', ')} (required by a default build)`,
  );
  return lines.join('\n');
}
