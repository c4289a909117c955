import { Type, type Static } from '@sinclair/typebox';
import { Dictionary } from '../util/json-schema.js';
import { writeGuestFile } from '../chroot/guest-write.js';
import { dropInName, GENERATED_HEADER } from './sysctl.js';
import { defineStep } from './types.js';

const MODULE_NAME = '^[A-Za-z0-9_-]+$';
const moduleList = (description: string) =>
  Type.Optional(Type.Array(Type.String({ pattern: MODULE_NAME, maxLength: 64 }), { minItems: 1, uniqueItems: true, description }));

const kernelModulesSchema = Type.Object(
  {
    name: dropInName('File name in /etc/modules-load.d and /etc/modprobe.d, without `.conf`.'),
    load: moduleList('Modules to load at every boot.'),
    options: Type.Optional(
      Dictionary(Type.String({ pattern: '^[^\\n]+$' }), {
        minProperties: 1,
        propertyNames: { pattern: MODULE_NAME },
        description: 'Module parameters, as modprobe takes them: `nf_conntrack: "hashsize=131072"`.',
      }),
    ),
    blacklist: moduleList('Modules never loaded by alias (automatic hardware loading).'),
  },
  { additionalProperties: false, anyOf: [{ required: ['load'] }, { required: ['options'] }, { required: ['blacklist'] }] },
);

export type KernelModulesSpec = Static<typeof kernelModulesSchema>;

/** modules-load.d(5): one module per line. */
export function modulesLoadConf(modules: string[]): string {
  return GENERATED_HEADER + modules.map((module) => `${module}\n`).join('');
}

/** modprobe.d(5): `options` lines, then `blacklist` lines. */
export function modprobeConf(options: Record<string, string>, blacklist: string[]): string {
  return (
    GENERATED_HEADER +
    Object.entries(options).map(([module, value]) => `options ${module} ${value}\n`).join('') +
    blacklist.map((module) => `blacklist ${module}\n`).join('')
  );
}

export const kernelModulesStep = defineStep({
  key: 'kernel-modules',
  summary: 'Load kernel modules at boot, set their options, blacklist others',
  description:
    'Writes `/etc/modules-load.d/<name>.conf` listing the modules systemd-modules-load loads at boot and, for ' +
    '`options` or `blacklist`, `/etc/modprobe.d/<name>.conf` with `options MODULE ...` and `blacklist MODULE` lines. ' +
    'Nothing is loaded now (modprobe never runs; the build host\'s kernel is never touched). `blacklist` only stops ' +
    'loading by alias (hardware autoload); an explicit modprobe still loads the module. If the initramfs must know, ' +
    'rebuild it in a later `run` step (`update-initramfs -u` on Debian).',
  example: { name: 'kubernetes', load: ['overlay', 'br_netfilter'], options: { nf_conntrack: 'hashsize=131072' } },
  schema: kernelModulesSchema,
  describe: (spec) =>
    [
      spec.load?.length ? `load ${spec.load.join(' ')}` : '',
      spec.options ? `options for ${Object.keys(spec.options).join(' ')}` : '',
      spec.blacklist?.length ? `blacklist ${spec.blacklist.join(' ')}` : '',
    ]
      .filter(Boolean)
      .join(', '),
  async run(context, spec) {
    const name = spec.name ?? '99-imagebuilder';
    const write = async (path: string, content: string) => {
      const sha256 = await writeGuestFile(context.session, { path, content, mode: '0644' }, `${context.label}: writing ${path}`);
      context.record.file({ path, sha256, kind: 'config' });
    };
    if (spec.load?.length) await write(`/etc/modules-load.d/${name}.conf`, modulesLoadConf(spec.load));
    if (spec.options || spec.blacklist?.length) await write(`/etc/modprobe.d/${name}.conf`, modprobeConf(spec.options ?? {}, spec.blacklist ?? []));
  },
});
