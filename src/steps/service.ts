import { Type, type Static } from '@sinclair/typebox';
import { ImageBuilderError } from '../util/errors.js';
import { guestRun } from './guest-exec.js';
import { defineStep, type RecordedUnit, type StepContext } from './types.js';

/** In the order they run: a unit can be unmasked and then enabled, or disabled and then masked, in one step. */
const ACTIONS = ['unmask', 'enable', 'disable', 'mask'] as const;
type Action = (typeof ACTIONS)[number];

const STATES: Record<Action, RecordedUnit['state']> = { unmask: 'unmasked', enable: 'enabled', disable: 'disabled', mask: 'masked' };

/** Pairs that contradict each other within one step. */
const CONFLICTS: [Action, Action][] = [
  ['enable', 'disable'],
  ['enable', 'mask'],
  ['mask', 'unmask'],
];

/** Unit types systemd knows; a name without one of these suffixes means NAME.service (as systemctl reads it). */
const UNIT_SUFFIXES = ['service', 'socket', 'target', 'timer', 'path', 'mount', 'automount', 'swap', 'device', 'slice', 'scope'];

/** The full unit name systemctl acts on: `ssh` is `ssh.service`. */
export function unitName(name: string): string {
  const dot = name.lastIndexOf('.');
  return dot > 0 && UNIT_SUFFIXES.includes(name.slice(dot + 1)) ? name : `${name}.service`;
}

const unitList = (what: string) =>
  Type.Optional(
    Type.Array(Type.String({ minLength: 1, maxLength: 255, pattern: '^[A-Za-z0-9:_\\\\][A-Za-z0-9:_.@\\\\-]*$' }), { minItems: 1, uniqueItems: true, description: what }),
  );

const serviceSchema = Type.Object(
  {
    enable: unitList('Units to enable (their [Install] section: WantedBy= symlinks, aliases).'),
    disable: unitList('Units to disable (removes the symlinks enable made).'),
    mask: unitList('Units to mask (linked to /dev/null: they cannot be started at all).'),
    unmask: unitList('Units to unmask.'),
  },
  { additionalProperties: false, minProperties: 1 },
);

export type ServiceSpec = Static<typeof serviceSchema>;

/** Units the guest's systemctl does not know, from `systemctl is-enabled` (older systemd: an error; newer: "not-found"). */
function unknownUnits(units: string[], stdout: string, stderr: string): string[] {
  const unknown = new Set<string>();
  stdout
    .split('\n')
    .filter(Boolean)
    .forEach((line, i) => {
      if (line.trim() === 'not-found' && units[i]) unknown.add(units[i]);
    });
  for (const match of stderr.matchAll(/Failed to get unit file state for (\S+): No such file or directory/g)) unknown.add(match[1]);
  return [...unknown];
}

async function checkUnitsExist(context: StepContext, units: string[]): Promise<void> {
  // is-enabled reads unit files only (offline, in the chroot); it exits 1 for units that are merely not enabled.
  const result = await guestRun(context, ['systemctl', 'is-enabled', ...units], {
    purpose: 'looking up the units',
    okExitCodes: [1, 4, 127],
    hint: 'the service step needs a systemd guest',
  });
  if (result.exitCode === 127) {
    throw new ImageBuilderError('STEP_FAILED', `${context.label}: the guest has no systemctl`, {
      detail: result.stderr.trim() || undefined,
      hint: 'the service step works on guests that use systemd; use a `run` step with the guest\'s own service tool instead',
    });
  }
  const unknown = unknownUnits(units, result.stdout, result.stderr);
  if (unknown.length) {
    throw new ImageBuilderError('STEP_FAILED', `${context.label}: unknown unit ${unknown.join(', ')}: the guest has no unit file for it`, {
      detail: result.stderr.trim() || undefined,
      hint: 'check the name (`systemctl list-unit-files` in the guest lists them); a unit a package provides exists only after the step that installs it',
    });
  }
  if (/Failed/.test(result.stderr)) {
    throw new ImageBuilderError('STEP_FAILED', `${context.label}: looking up the units failed`, { detail: result.stderr.trim(), hint: 'check the unit names' });
  }
}

export const serviceStep = defineStep({
  key: 'service',
  summary: 'Enable, disable, mask or unmask systemd units',
  description:
    "Enables, disables, masks or unmasks systemd units with the guest's own `systemctl`, inside the chroot, where it " +
    'acts on unit files only: nothing is started or stopped. A name without a unit type means `.service`. Every unit ' +
    'must exist in the guest (a typo is an error, not a silent no-op), so install a package before enabling its units. ' +
    'Runs unmask, enable, disable, then mask; a unit may not be both enabled and disabled or masked, nor masked and ' +
    'unmasked. Each change is listed in the BOM under `units`.',
  example: { enable: ['containerd.service', 'kubelet'], mask: ['apt-daily.timer', 'apt-daily-upgrade.timer'] },
  schema: serviceSchema,
  describe: (spec) =>
    ACTIONS.filter((action) => spec[action]?.length)
      .map((action) => `${action} ${spec[action]!.join(' ')}`)
      .join(', '),
  async run(context, spec) {
    const lists = Object.fromEntries(ACTIONS.map((action) => [action, (spec[action] ?? []).map(unitName)])) as Record<Action, string[]>;
    for (const [a, b] of CONFLICTS) {
      const both = lists[a].filter((unit) => lists[b].includes(unit));
      if (both.length) {
        throw new ImageBuilderError('STEP_FAILED', `${context.label}: ${both.join(', ')} cannot be both ${STATES[a]} and ${STATES[b]}`, {
          hint: `keep ${both.length > 1 ? 'each' : 'it'} in one of \`${a}\` and \`${b}\``,
        });
      }
    }
    const all = [...new Set(ACTIONS.flatMap((action) => lists[action]))];
    await checkUnitsExist(context, all);
    for (const action of ACTIONS) {
      const units = lists[action];
      if (!units.length) continue;
      await guestRun(context, ['systemctl', action, ...units], {
        purpose: `${action} ${units.join(' ')}`,
        hint: "see the systemctl output above; `systemctl cat UNIT` in the guest shows the unit's [Install] section",
      });
      for (const unit of units) context.record.unit({ unit, state: STATES[action] });
    }
  },
});
