import { FAMILY_NAMES, type Distro } from '../distro/types.js';
import type { JsonSchema } from '../util/json-schema.js';

/** A step's condition: every key given must match the guest. Lists mean "any of". */
export interface WhenCondition {
  family?: string | string[];
  distro?: string | string[];
  /** VERSION_ID: exact ("12"), or compared (">=12", "<24.04"). */
  version?: string | string[];
  architecture?: string | string[];
  /** A switch, usually a variable: `enabled: "{{ import_images }}"` runs the step only when it is true. */
  enabled?: boolean | string;
}

/** A version condition: an optional comparison, then a version of no blanks, with blanks around allowed. */
const VERSION_CONDITION = /^\s*(>=|<=|>|<|==|=)?\s*(\S+)\s*$/;

const oneOrMore = (description: string, item: JsonSchema = { type: 'string', minLength: 1 }): JsonSchema => ({
  description,
  oneOf: [item, { type: 'array', minItems: 1, items: item }],
});

export const WHEN_SCHEMA: JsonSchema = {
  type: 'object',
  description: 'Run the step only on matching guests; every key given must match, a list matches any of its values.',
  additionalProperties: false,
  minProperties: 1,
  properties: {
    family: oneOrMore(
      'Distro family: debian (Debian, Ubuntu), redhat (Fedora, RHEL, CentOS, Rocky, Alma, Oracle Linux, Amazon Linux), suse (openSUSE, SLES), photon (Photon OS).',
      { enum: [...FAMILY_NAMES] },
    ),
    distro: oneOrMore('os-release ID: debian, ubuntu, fedora, rocky, amzn …'),
    version: oneOrMore('os-release VERSION_ID, exact or with a comparison: "12", ">=22.04", "<9".', { type: 'string', pattern: VERSION_CONDITION.source }),
    architecture: oneOrMore('Guest architecture as the package manager names it: amd64, arm64, x86_64, aarch64 …'),
    enabled: {
      description: 'true or false, usually from a variable: enabled: "{{ import_images }}".',
      oneOf: [{ type: 'boolean' }, { type: 'string', enum: ['true', 'false'] }],
    },
  },
};

function compareVersions(a: string, b: string): number {
  const pa = a.split(/[.-]/).map((part) => Number.parseInt(part, 10) || 0);
  const pb = b.split(/[.-]/).map((part) => Number.parseInt(part, 10) || 0);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const diff = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (diff) return Math.sign(diff);
  }
  return 0;
}

export function versionMatches(actual: string | undefined, wanted: string): boolean {
  if (actual === undefined) return false;
  // The schema took only what this matches: a blank or multi-line value is a located error, never a TypeError here.
  const match = VERSION_CONDITION.exec(wanted)!;
  const cmp = compareVersions(actual, match[2]);
  switch (match[1]) {
    case '>=': return cmp >= 0;
    case '<=': return cmp <= 0;
    case '>': return cmp > 0;
    case '<': return cmp < 0;
    default: return actual === match[2];
  }
}

const list = (value: string | string[] | undefined) => (value === undefined ? undefined : Array.isArray(value) ? value : [value]);

/** Why the step does not apply to this guest, or undefined when it does. */
export function whenMismatch(when: WhenCondition | undefined, distro: Distro, architecture: string | undefined): string | undefined {
  if (!when) return undefined;
  if (when.enabled === false || when.enabled === 'false') return 'enabled is false';
  const checks: [string, string[] | undefined, string | undefined, (actual: string | undefined, wanted: string) => boolean][] = [
    ['family', list(when.family), distro.family?.name, (a, w) => a === w],
    ['distro', list(when.distro), distro.id, (a, w) => a === w],
    ['version', list(when.version), distro.versionId, versionMatches],
    ['architecture', list(when.architecture), architecture, (a, w) => a === w],
  ];
  for (const [key, wanted, actual, matches] of checks) {
    if (wanted && !wanted.some((w) => matches(actual, w))) return `${key} is ${actual ?? 'unknown'}, not ${wanted.join(' or ')}`;
  }
  return undefined;
}
