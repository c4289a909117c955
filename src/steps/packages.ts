import { requireFamily } from '../distro/families.js';
import { parsePackageSpec } from '../pkg/types.js';
import { defineStep } from './types.js';

export interface PackagesSpec {
  install?: string[];
  remove?: string[];
  /** true: upgrade everything; names: upgrade those, if installed. */
  upgrade?: true | string[];
  /** names: hold those; true: hold the packages named in `install`. */
  hold?: true | string[];
}

const packageList = {
  type: 'array',
  minItems: 1,
  uniqueItems: true,
  items: { type: 'string', pattern: '^[a-z0-9][a-z0-9+._-]*(=[A-Za-z0-9.+~:_-]+)?$' },
};

/** Names only: upgrade and hold act on installed packages, whatever their version. */
const nameList = {
  type: 'array',
  minItems: 1,
  uniqueItems: true,
  items: { type: 'string', pattern: '^[a-z0-9][a-z0-9+._-]*$' },
};

/** The names `hold` acts on: its list, or with `true` the packages `install` names (without versions). */
export function holdNames(spec: PackagesSpec): string[] {
  if (spec.hold === true) return (spec.install ?? []).map((text) => parsePackageSpec(text).name);
  return spec.hold ?? [];
}

export const packagesStep = defineStep<PackagesSpec>({
  key: 'packages',
  summary: "Install, remove, upgrade or hold packages with the guest's own package manager",
  description:
    'Installs packages (optionally at an exact version, `name=version`), removes packages, upgrades packages and holds ' +
    "packages at their installed versions, through the package manager of the guest's distribution family (apt on " +
    'Debian and Ubuntu). In that order: remove, install, upgrade, hold. `upgrade: true` upgrades everything ' +
    '(`apt-get upgrade`); a list upgrades just those packages if they are installed (`apt-get install --only-upgrade`); ' +
    'held packages are kept back by `upgrade: true`, and naming one in the list fails the step (release it first: ' +
    '`apt-mark unhold NAME` in a `run` step). `hold` keeps packages at their versions (`apt-mark hold`): a list of names, or ' +
    '`true` for the packages named in `install`.',
  example: { install: ['containerd', 'conntrack', 'socat=1.7.4.4-2'] },
  schema: {
    type: 'object',
    additionalProperties: false,
    minProperties: 1,
    properties: {
      install: { ...packageList, description: 'Packages to install: `name` or `name=version`.' },
      remove: { ...packageList, description: 'Packages to remove (purged, with dependencies nothing else needs).' },
      upgrade: {
        description: '`true` to upgrade every installed package, or the names of installed packages to upgrade.',
        oneOf: [{ enum: [true] }, nameList],
      },
      hold: {
        description: 'Names of packages to hold at their installed versions, or `true` for the packages named in `install`.',
        oneOf: [{ enum: [true] }, nameList],
      },
    },
    if: { required: ['hold'], properties: { hold: { const: true } } },
    then: { required: ['install'] },
  },
  describe: (spec) =>
    [
      spec.remove?.length ? `remove ${spec.remove.join(' ')}` : '',
      spec.install?.length ? `install ${spec.install.join(' ')}` : '',
      spec.upgrade === true ? 'upgrade all' : spec.upgrade?.length ? `upgrade ${spec.upgrade.join(' ')}` : '',
      spec.hold ? `hold ${holdNames(spec).join(' ')}` : '',
    ]
      .filter(Boolean)
      .join(', '),
  async run(context, spec) {
    const manager = requireFamily(context.distro, 'the packages step').packageManager;
    if (spec.remove?.length) await manager.remove(context.session, spec.remove);
    if (spec.install?.length) await manager.install(context.session, spec.install.map(parsePackageSpec));
    if (spec.upgrade === true) await manager.upgrade(context.session, 'all');
    else if (spec.upgrade?.length) await manager.upgrade(context.session, spec.upgrade);
    const hold = holdNames(spec);
    if (hold.length) await manager.hold(context.session, hold);
  },
});
