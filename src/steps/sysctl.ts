import { Type, type Static } from '@sinclair/typebox';
import { Dictionary, OneOf } from '../util/json-schema.js';
import { writeGuestFile } from '../chroot/guest-write.js';
import { defineStep } from './types.js';

/** A drop-in file name without directory or `.conf`: `99-kubernetes`. */
export const dropInName = (description: string) => Type.Optional(Type.String({ pattern: '^[A-Za-z0-9_][A-Za-z0-9_@+-]*$', maxLength: 200, default: '99-imagebuilder', description }));

const sysctlSchema = Type.Object(
  {
    name: dropInName('File name in /etc/sysctl.d, without `.conf`.'),
    settings: Dictionary(OneOf([Type.String({ pattern: '^[^\\n]*$' }), Type.Number()]), {
      minProperties: 1,
      propertyNames: { pattern: '^-?[A-Za-z0-9_*][A-Za-z0-9_.*/-]*$' },
      description: 'Kernel parameters and their values: `net.ipv4.ip_forward: 1`.',
    }),
  },
  { additionalProperties: false },
);

export type SysctlSpec = Static<typeof sysctlSchema>;

export const GENERATED_HEADER = '# Written by imagebuilder.\n';

/** The sysctl.d(5) file for these settings, in the order given. */
export function sysctlConf(settings: Record<string, string | number>): string {
  return GENERATED_HEADER + Object.entries(settings).map(([key, value]) => `${key} = ${value}\n`).join('');
}

export const sysctlStep = defineStep({
  key: 'sysctl',
  summary: 'Set kernel parameters for every boot (a sysctl.d file)',
  description:
    'Writes `/etc/sysctl.d/<name>.conf` with one `key = value` line per setting, in the order given; ' +
    'systemd-sysctl applies it at boot. Nothing is applied now: the build host\'s kernel is never touched. ' +
    'A key may use dots or slashes and the sysctl.d(5) forms `-key` (ignore errors) and globs. Two steps with ' +
    'the same `name` write the same file: the later one replaces it.',
  example: { name: '99-kubernetes', settings: { 'net.ipv4.ip_forward': 1, 'net.bridge.bridge-nf-call-iptables': 1 } },
  schema: sysctlSchema,
  describe: (spec) => `sysctl ${Object.keys(spec.settings).join(' ')}`,
  async run(context, spec) {
    const path = `/etc/sysctl.d/${spec.name ?? '99-imagebuilder'}.conf`;
    const sha256 = await writeGuestFile(context.session, { path, content: sysctlConf(spec.settings), mode: '0644' }, `${context.label}: writing ${path}`);
    context.record.file({ path, sha256, kind: 'config' });
  },
});
