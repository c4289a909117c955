import { requireFamily } from '../distro/families.js';
import { parsePackageSpec } from '../pkg/types.js';
import { defineStep } from './types.js';

export interface PackagesSpec {
  install?: string[];
  remove?: string[];
}

const packageList = {
  type: 'array',
  minItems: 1,
  uniqueItems: true,
  items: { type: 'string', pattern: '^[a-z0-9][a-z0-9+._-]*(=[A-Za-z0-9.+~:_-]+)?$' },
};

export const packagesStep = defineStep<PackagesSpec>({
  key: 'packages',
  summary: "Install or remove packages with the guest's own package manager",
  description:
    'Installs packages (optionally at an exact version, `name=version`) and removes packages, through the package ' +
    "manager of the guest's distribution family (apt on Debian and Ubuntu). Removal runs before installation.",
  example: { install: ['containerd', 'conntrack', 'socat=1.7.4.4-2'] },
  schema: {
    type: 'object',
    additionalProperties: false,
    minProperties: 1,
    properties: {
      install: { ...packageList, description: 'Packages to install: `name` or `name=version`.' },
      remove: { ...packageList, description: 'Packages to remove (purged, with dependencies nothing else needs).' },
    },
  },
  describe: (spec) =>
    [spec.remove?.length ? `remove ${spec.remove.join(' ')}` : '', spec.install?.length ? `install ${spec.install.join(' ')}` : '']
      .filter(Boolean)
      .join(', '),
  async run(context, spec) {
    const manager = requireFamily(context.distro, 'the packages step').packageManager;
    if (spec.remove?.length) await manager.remove(context.session, spec.remove);
    if (spec.install?.length) await manager.install(context.session, spec.install.map(parsePackageSpec));
  },
});
