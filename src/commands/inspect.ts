import { Args, Flags } from '@oclif/core';
import { BaseCommand } from '../cli/base-command.js';
import { createLogger } from '../util/log.js';
import { withInterrupts } from '../util/signals.js';
import { hostPaths, mountBackendFlag, mountBackendOf, workDirFlag } from '../cli/host-flags.js';
import { inspect } from '../pipeline/inspect.js';
import { diskImageOptions, imageVerifyFlags } from '../cli/image-flags.js';
import { renderCycloneDx } from '../bom/cyclonedx.js';
import { modelFromInventory } from '../bom/purl.js';
import { renderSpdx } from '../bom/spdx.js';
import { TOOL_VERSION } from '../version.js';
import { oneLine } from '../util/log.js';

/** The widest the package name column grows. */
const MAX_NAME_COLUMN = 60;

export default class Inspect extends BaseCommand {
  static override summary = 'What any disk image holds: OS, architecture, kernels, every package, enabled and masked units';
  static override description = 'Mounts the image read-only (through a throw-away overlay; the image is never written) and reads its own package database.';
  static override examples = ['<%= config.bin %> inspect debian-12.qcow2', '<%= config.bin %> inspect node.qcow2 --format json > inventory.json', '<%= config.bin %> inspect node.qcow2 --format spdx > node.spdx.json'];
  static override args = { image: Args.string({ description: 'disk image: a local path or an http(s):// URL', required: true }) };
  static override flags = {
    ...imageVerifyFlags,
    format: Flags.string({ description: 'output format', options: ['table', 'json', 'cyclonedx', 'spdx'], default: 'table' }),
    ...mountBackendFlag,
    ...workDirFlag,
  };

  async run(): Promise<void> {
    const { args, flags } = await this.parse(Inspect);
    const paths = hostPaths(flags);
    const log = createLogger({ level: 'warn' });
    const result = await withInterrupts(log, (signal) =>
      inspect({ diskImage: args.image, image: diskImageOptions(flags), mountBackend: mountBackendOf(flags), ...paths, log, signal }),
    );
    if (flags.format === 'json') {
      this.log(JSON.stringify(result, null, 2));
      return;
    }
    if (flags.format === 'cyclonedx' || flags.format === 'spdx') {
      const model = modelFromInventory(result.image, result.inventory, { name: 'imagebuilder', version: TOOL_VERSION });
      this.log(JSON.stringify(flags.format === 'cyclonedx' ? renderCycloneDx(model) : renderSpdx(model), null, 2));
      return;
    }
    const { inventory } = result;
    // A guest's names on one line each (a newline in a unit's name would forge a line of the table).
    const line = (text: string) => this.log(oneLine(text));
    line(`image:        ${result.image.path} (${result.image.format}, sha256 ${result.image.sha256})`);
    line(`os:           ${inventory.os.prettyName ?? inventory.os.id} (family ${inventory.family ?? 'unknown'})`);
    line(`architecture: ${inventory.architecture ?? 'unknown'}`);
    line(`kernels:      ${inventory.kernels.map((k) => k.version).join(', ') || 'none'}`);
    line(`units:        ${inventory.units.map((u) => (u.state === 'masked' ? `${u.unit} (masked)` : u.unit)).join(', ') || 'none'}`);
    if (result.work) {
      const { work } = result;
      line(`work image:   recipe ${work.recipe.name} (sha256 ${work.recipe.sha256.slice(0, 12)}…) over base sha256 ${work.input.sha256.slice(0, 12)}… (${work.input.url ?? work.input.path}); finish it with imagebuilder export`);
      for (const step of work.steps) line(`  step ${step.index + 1} ${step.type}: ${step.description}${step.skipped ? ` (skipped: ${step.skipped})` : ''}`);
    }
    line(`packages:     ${inventory.packages.length}`);
    // A loop, not Math.max(...): a guest of 150,000 packages overflows the call's arguments; one long name does not widen every line.
    let width = 4;
    for (const p of inventory.packages) width = Math.max(width, Math.min(p.name.length, MAX_NAME_COLUMN));
    for (const p of inventory.packages) line(`  ${p.name.padEnd(width)}  ${p.version}  ${p.architecture}`);
  }
}
