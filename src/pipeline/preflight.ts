import { describeOsRelease, unknownDistroHint, type Distro } from '../distro/families.js';
import type { RecipeStep } from '../recipe/load.js';
import { whenMismatch } from '../steps/when.js';
import { ImageBuilderError } from '../util/errors.js';

/**
 * Fails before the first step runs when the guest's distribution is unknown and a step that will run needs its
 * package manager (packages, repository, sysprep's package-cache): better than failing halfway through the
 * recipe. Steps whose `when` skips them on this guest do not count; a recipe of run and file steps works on
 * any distribution.
 */
export function requireFamilyForSteps(steps: RecipeStep[], distro: Distro, architecture?: string): void {
  if (distro.family) return;
  const needing = steps.filter((step) => !whenMismatch(step.when, distro, architecture) && step.type.needsPackageManager?.(step.spec));
  if (!needing.length) return;
  const listed = needing.map((step) => `step ${step.index + 1} (${step.name ?? step.type.describe(step.spec)}) at ${step.location}`);
  throw new ImageBuilderError(
    'BAD_INPUT',
    `the image's distribution is unknown to imagebuilder: ${distro.prettyName ?? distro.id ?? 'no name'} (${describeOsRelease(distro)}); ` +
      `${needing.length === 1 ? 'a step needs' : `${needing.length} steps need`} its package manager, so nothing was run`,
    { detail: listed.join('\n'), hint: unknownDistroHint() },
  );
}
