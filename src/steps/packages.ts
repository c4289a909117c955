import { Type, type Static } from '@sinclair/typebox';
import { requireFamily } from '../distro/families.js';
import { parsePackageSpec } from '../pkg/types.js';
import { Enum, OneOf } from '../util/json-schema.js';
import { defineStep } from './types.js';

/** Debian names are lower case; RPM names need not be (NetworkManager), and RPM versions may hold a caret (1.0^20240101git). */
const packageList = (description: string) =>
  Type.Optional(Type.Array(Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9+._-]*(=[A-Za-z0-9.+~^:_-]+)?$' }), { minItems: 1, uniqueItems: true, description }));

/** Names only: upgrade and hold act on installed packages, whatever their version. */
const nameList = Type.Array(Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9+._-]*$' }), { minItems: 1, uniqueItems: true });

const packagesSchema = Type.Object(
  {
    install: packageList('Packages to install: `name` or `name=version` (rpm: `[epoch:]version-release`).'),
    remove: packageList('Packages to remove (apt: purged), with the dependencies nothing else needs.'),
    /** true: upgrade everything; names: upgrade those, if installed. */
    upgrade: Type.Optional(OneOf([Enum([true]), nameList], { description: '`true` to upgrade every installed package, or the names of installed packages to upgrade.' })),
    /** names: hold those; true: hold the packages named in `install`. */
    hold: Type.Optional(OneOf([Enum([true]), nameList], { description: 'Names of packages to hold at their installed versions, or `true` for the packages named in `install`.' })),
    /** dnf/yum: installs with --disableexcludes=NAME (a repository whose .repo file excludes these packages). */
    disable_excludes: Type.Optional(
      Type.String({
        pattern: '^[A-Za-z0-9][A-Za-z0-9_.:-]*$',
        description: 'dnf and yum: the id of a repository (or `main`, `all`) whose excludes this install ignores: `--disableexcludes=NAME`.',
      }),
    ),
  },
  {
    additionalProperties: false,
    minProperties: 1,
    dependencies: { disable_excludes: ['install'] },
    if: { required: ['hold'], properties: { hold: { const: true } } },
    then: { required: ['install'] },
  },
);

export type PackagesSpec = Static<typeof packagesSchema>;

/** The names `hold` acts on: its list, or with `true` the packages `install` names (without versions). */
export function holdNames(spec: PackagesSpec): string[] {
  if (spec.hold === true) return (spec.install ?? []).map((text) => parsePackageSpec(text).name);
  return spec.hold ?? [];
}

export const packagesStep = defineStep({
  key: 'packages',
  summary: "Install, remove, upgrade or hold packages with the guest's own package manager",
  description:
    'Installs packages (optionally at an exact version, `name=version`), removes packages, upgrades packages and holds ' +
    "packages at their installed versions, through the package manager of the guest's distribution family: apt on " +
    'Debian and Ubuntu; dnf on Fedora, RHEL, CentOS Stream, Rocky, Alma, Oracle Linux 8+ and Amazon Linux 2023; yum on ' +
    'CentOS/RHEL 7 and Amazon Linux 2; tdnf on Photon OS; zypper on openSUSE and SLES. In that order: remove, install, ' +
    'upgrade, hold. A version is written the same way on every family, `name=version`: apt and zypper get ' +
    '`name=version`, dnf, yum and tdnf `name-version`, where the version is rpm\'s `[epoch:]version-release` (or just ' +
    '`version`, for its newest release). `upgrade: true` upgrades everything (`apt-get upgrade`, `dnf upgrade`, ' +
    '`zypper update`); a list upgrades just those packages if they are installed (`apt-get install --only-upgrade`; dnf ' +
    'fails when none of them is installed). Held packages are kept back by `upgrade: true`; naming one in the list ' +
    'fails the step on apt and zypper (release it first: `apt-mark unhold NAME`, `zypper removelock NAME` in a `run` ' +
    'step), while dnf leaves a versionlocked one as it is and fails on an excluded one, which it no longer sees. `hold` ' +
    'keeps packages at their versions: a list of names, or `true` for the packages named in `install`. apt: ' +
    '`apt-mark hold`. zypper: `addlock`. dnf and yum: `versionlock add` when the guest has the versionlock plugin (dnf 5 ' +
    'has it built in); otherwise (and always on tdnf) the names go into `excludepkgs=` (yum: `exclude=`) in the [main] ' +
    'section of /etc/dnf/dnf.conf (/etc/yum.conf, /etc/tdnf/tdnf.conf), so that no repository can change them, and ' +
    'dnf then ignores them until `--disableexcludes=main`. `disable_excludes: NAME` (dnf and yum) installs with ' +
    '`--disableexcludes=NAME`, for packages the repository NAME excludes (see the repository step\'s `exclude`). ' +
    'Without a release package in its rpm database (zypper: a base product), an rpm guest gets `--releasever` from its ' +
    'os-release VERSION_ID.',
  example: { install: ['containerd', 'conntrack', 'socat=1.7.4.4-2'] },
  schema: packagesSchema,
  cacheInputs: async (spec) => {
    const unversioned = (spec.install ?? []).filter((text) => parsePackageSpec(text).version === undefined);
    if (spec.upgrade) return { unpinned: 'upgrades to whatever the repositories offer' };
    return unversioned.length ? { unpinned: `installs without a pinned version: ${unversioned.join(', ')}` } : {};
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
  needsPackageManager: () => true,
  async run(context, spec) {
    const manager = requireFamily(context.distro, 'the packages step').packageManager;
    const bundle = context.packageBundle ? { bundle: context.packageBundle } : {};
    if (spec.remove?.length) await manager.remove(context.session, spec.remove, bundle);
    const packageCache = {
      ...(context.packageCacheDir ? { packageCache: { dir: context.packageCacheDir, log: context.log, scope: context.packageCacheScope } } : {}),
      ...bundle,
    };
    if (spec.install?.length) await manager.install(context.session, spec.install.map(parsePackageSpec), { ...(spec.disable_excludes ? { disableExcludes: spec.disable_excludes } : {}), ...packageCache });
    if (spec.upgrade === true) await manager.upgrade(context.session, 'all', packageCache);
    else if (spec.upgrade?.length) await manager.upgrade(context.session, spec.upgrade, packageCache);
    const hold = holdNames(spec);
    if (hold.length) await manager.hold(context.session, hold, bundle);
    await manager.finishStep?.(context.session, packageCache);
  },
});
