import type { ApplyResult } from '../pipeline/apply.js';
import { oneLine } from '../util/log.js';

/** The result of a build (apply or export): a JSON line, or a summary for people. */
export function printResult(command: { log(message: string): void }, result: ApplyResult, json: boolean): void {
  if (json) {
    command.log(JSON.stringify({ event: 'result', output: result.output, artifacts: result.artifacts, bom: result.bomPath, sboms: result.sbomPaths, sums: result.sumsPath, ...(result.bom.test ? { test: result.bom.test } : {}), durationsMs: result.bom.durationsMs, warnings: result.bom.warnings }));
  } else {
    // The guest's names (its os-release, its packages' names and versions) on one line each: a newline in them is
    // shown as text too. Every other control character is escaped by the command's log (BaseCommand: \uNNNN).
    const forTerminal = { log: (message: string) => command.log(oneLine(message)) };
    const bom = result.bom;
    const added = bom.packages.filter((p) => p.origin !== 'base');
    for (const artifact of result.artifacts) {
      forTerminal.log(`${artifact.format === 'tar' ? 'tar:  ' : 'image:'} ${artifact.path}`);
      forTerminal.log(`  format ${artifact.format}, sha256 ${artifact.sha256}`);
    }
    forTerminal.log(`sums:  ${result.sumsPath}`);
    forTerminal.log(`bom:   ${result.bomPath}`);
    for (const path of result.sbomPaths) forTerminal.log(`sbom:  ${path}`);
    forTerminal.log(`  ${bom.os.prettyName ?? bom.os.id} ${bom.architecture ?? ''}, kernels: ${bom.kernels.map((k) => k.version).join(', ') || 'none'}`);
    forTerminal.log(`  ${bom.packages.length} packages; added or changed by the recipe: ${added.length}`);
    for (const p of added) forTerminal.log(`    ${p.name} ${p.version} (${p.architecture})${p.baseVersion ? ` was ${p.baseVersion}` : ''}`);
    for (const p of bom.removedPackages) forTerminal.log(`    removed ${p.name} ${p.version}`);
    if (bom.test) {
      const { summary, boot } = bom.test;
      forTerminal.log(`  tested: ${summary.passed} check(s) passed${boot ? `, booted in ${(boot.bootMs / 1000).toFixed(1)} s (${boot.accel}, ${boot.firmware}); console log ${boot.consoleLog}` : ''}`);
    }
    forTerminal.log(`  took ${(bom.durationsMs.total / 1000).toFixed(1)}s (steps ${((bom.durationsMs.steps ?? 0) / 1000).toFixed(1)}s)`);
  }
}
