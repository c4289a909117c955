import { Flags } from '@oclif/core';
import { BaseCommand } from '../cli/base-command.js';
import { locateHostPaths, workDirFlag } from '../cli/host-flags.js';
import { reapDeadBuilds, summary, type CleanupReport } from '../host/reap.js';
import { ImageBuilderError } from '../util/errors.js';
import { execRunner } from '../util/exec.js';
import { HOST_LOCK_DIR } from '../util/lock.js';
import { createLogger } from '../util/log.js';

export default class Cleanup extends BaseCommand {
  static override summary = 'Release what builds killed by SIGKILL left behind: mounts, loop devices, helper processes, work directories';
  static override description =
    'Finds builds whose process is gone (killed by the OOM killer, a CI timeout, a preempted pod) from the registry in ' +
    '/run/imagebuilder and the work directories under --work-dir, and releases what each held: its processes, mounts, ' +
    'loop and nbd devices, partition nodes, binfmt_misc entries, partial outputs and work directory; then the claim files of nbd devices and box uids no one holds. A build still ' +
    'running is never touched. Every build does this for itself when it starts; `imagebuilder doctor` reports dead builds.';
  static override examples = ['<%= config.bin %> cleanup', '<%= config.bin %> cleanup --dry-run', '<%= config.bin %> cleanup --json'];
  static override flags = {
    'dry-run': Flags.boolean({ description: 'only list the dead builds and what each still holds', default: false }),
    json: Flags.boolean({ description: 'print the report as JSON', default: false }),
    ...workDirFlag,
  };

  async run(): Promise<CleanupReport> {
    const { flags } = await this.parse(Cleanup);
    // Not hostPaths: cleanup never uses the cache, and must work whatever state the cache is in.
    const paths = locateHostPaths(flags);
    // The report says what was released; the log would say it twice.
    const log = createLogger({ level: 'error' });
    const report = await reapDeadBuilds({ run: execRunner, log, workDirParents: [paths.workDir], runDir: paths.runDir, dryRun: flags['dry-run'], locks: HOST_LOCK_DIR });
    if (flags.json) this.log(JSON.stringify(report, null, 2));
    else this.log(renderReport(report));
    const failed = report.dead.filter((build) => build.failures.length);
    if (failed.length) {
      throw new ImageBuilderError('COMMAND_FAILED', `could not release everything of ${failed.length} dead build(s): ${failed.flatMap((b) => b.failures).join('; ')}`, {
        hint: 'they stay registered: once whatever holds them is gone (`fuser -vm DIR` lists processes), run imagebuilder cleanup again',
      });
    }
    return report;
  }
}

function renderReport(report: CleanupReport): string {
  const lines = report.dead.map((build) => {
    const what = summary(build.leftovers) || 'nothing but its registration';
    return `${report.dryRun ? 'dead' : 'released'}: build ${build.id} (pid ${build.pid}${build.command ? `: ${build.command}` : ''}) in ${build.workDir}: ${what}`;
  });
  const running = report.live.length ? `; ${report.live.length} build(s) running, left alone` : '';
  if (report.freedLocks?.length) lines.push(`${report.dryRun ? 'held by no one' : 'removed'}: ${report.freedLocks.length} claim file(s) builds killed earlier left in the lock directory (${report.freedLocks.join(' ')})`);
  lines.push(report.dead.length ? `${report.dead.length} dead build(s)${report.dryRun ? ' (dry run: nothing released)' : ''}${running}` : `no dead builds${running}`);
  return lines.join('\n');
}
