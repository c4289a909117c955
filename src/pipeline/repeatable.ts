import { mkdtemp, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { diffImages, diffIsEmpty, renderDiff, type ImageDiff } from '../bom/diff.js';
import { bomDifferences, BUILD_OWN_FIELDS } from '../bom/repeatable.js';
import { sourceDateEpoch } from '../util/time.js';
import { ImageBuilderError } from '../util/errors.js';
import { createLogger, type Logger } from '../util/log.js';
import { apply, type ApplyOptions, type ApplyResult } from './apply.js';

/**
 * Builds twice from the same inputs and compares what went in: packages (with versions), units, and every file
 * the recipe wrote, downloaded or copied (by sha256); then the whole BOMs, all but the build's own fields
 * (BUILD_OWN_FIELDS: durations, where the artifacts went, their bytes, and the time unless SOURCE_DATE_EPOCH
 * fixes it). The first build's artifacts are kept; the second is thrown away. Not repeatable is VERIFY_FAILED,
 * with the differences.
 */
export async function applyRepeatably(options: ApplyOptions): Promise<ApplyResult & { repeatDiff: ImageDiff }> {
  // Both from scratch: a build taken from the step cache (or resumed from kept layers) would repeat trivially.
  if (options.resume) {
    throw new ImageBuilderError('BAD_INPUT', '--verify-repeatable builds from scratch twice; it cannot --resume', { hint: 'drop one of the two flags' });
  }
  const first = await apply({ ...options, cache: false });
  const log = options.log ?? createLogger();
  log.info('building a second time to check that the build is repeatable');
  const scratch = await mkdtemp(join(dirname(first.output.path), `.${basename(first.output.path)}.repeat-`));
  try {
    // The same options: the BOMs then differ only where a build's own fields do.
    // Its own list of warnings: a BOM lists its build's warnings, not the first build's again.
    const second = await apply({ ...options, log: withOwnWarnings(log), cache: false, output: join(scratch, basename(first.output.path)) });
    const comparable = (result: ApplyResult, label: string) => ({ label, packages: result.bom.packages, units: result.bom.unitStates, files: result.bom.files });
    const repeatDiff = diffImages(comparable(first, 'first build'), comparable(second, 'second build'));
    if (!diffIsEmpty(repeatDiff)) {
      throw new ImageBuilderError('VERIFY_FAILED', 'the build is not repeatable: the same inputs gave different contents', {
        detail: renderDiff(repeatDiff),
        hint: 'pin what moved: exact package versions (name=version), download sha256s, and no unpinned upgrades',
      });
    }
    const differences = bomDifferences(first.bom, second.bom, { sourceDateEpoch: sourceDateEpoch() !== undefined });
    if (differences.length) {
      throw new ImageBuilderError('VERIFY_FAILED', 'the build is not repeatable: the two BOMs differ beyond the build-own fields', {
        detail: differences.join('\n'),
        hint: `only ${Object.keys(BUILD_OWN_FIELDS).join('; ')} may differ between builds`,
      });
    }
    log.info('repeatable: both builds have the same packages, units and files, and equal BOMs but for their build-own fields');
    return { ...first, repeatDiff };
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
}

/** The same log, with a list of warnings of its own (each warning still goes to the log it wraps). */
function withOwnWarnings(log: Logger): Logger {
  const warnings: string[] = [];
  return {
    ...log,
    warn: (message) => {
      warnings.push(message);
      log.warn(message);
    },
    warnings,
  };
}
