import { Type, type Static } from '@sinclair/typebox';
import { Const } from '../util/json-schema.js';
import { readGuestText, statGuest } from '../util/guest-fs.js';
import { posix } from 'node:path';
import { writeGuestFile } from '../chroot/guest-write.js';
import { resolveInRoot } from '../util/fs.js';
import { guestHasCommand, guestRun } from './guest-exec.js';
import { defineStep } from './types.js';

const swapSchema = Type.Object({ off: Const(true, { description: 'Must be `true`: swap is turned off.' }) }, { additionalProperties: false });

export type SwapSpec = Static<typeof swapSchema>;

/** What a disabled fstab line starts with: the line itself follows, so it can be put back by hand. */
export const FSTAB_DISABLED_PREFIX = '# disabled by imagebuilder: ';

export const ZRAM_GENERATOR_CONF = '/etc/systemd/zram-generator.conf';
/** No [zramN] sections: zram-generator creates no devices (this file replaces the vendor's /usr/lib one). */
export const ZRAM_OFF_CONTENT = '# Written by imagebuilder: swap is off, so no zram swap devices.\n';

/** fstab(5) escapes spaces and tabs in fields as octal (`\040`). */
function unescapeFstab(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)));
}

/** Comments out every active swap line of an fstab; returns the new text and what each line named (field 1). */
export function disableSwapInFstab(text: string): { text: string; sources: string[] } {
  const sources: string[] = [];
  const lines = text.split('\n').map((line) => {
    const fields = line.trim().split(/\s+/);
    if (!fields[0] || fields[0].startsWith('#') || fields[2] !== 'swap') return line;
    sources.push(unescapeFstab(fields[0]));
    return `${FSTAB_DISABLED_PREFIX}${line}`;
  });
  return { text: lines.join('\n'), sources };
}

export const swapStep = defineStep({
  key: 'swap',
  summary: 'Turn swap off for good (fstab, swap files, zram, swap.target)',
  description:
    'Makes the image boot without swap, as the kubelet expects by default: swap lines in /etc/fstab are commented out ' +
    '(kept, prefixed with `# disabled by imagebuilder: `), swap files they name are deleted (regular files inside the ' +
    'guest only; swap partitions stay on the disk, unused), /etc/systemd/zram-generator.conf is replaced by one that ' +
    'defines no device (only a comment: the empty file Fedora documents for turning zram swap off), and `swap.target` ' +
    'is masked so that no other swap unit (the GPT auto-generator\'s, a zram-generator drop-in\'s, a hand-made .swap ' +
    'unit) is pulled in at boot. Nothing runs swapoff: the build host is not touched.',
  example: { off: true },
  schema: swapSchema,
  describe: () => 'swap off',
  async run(context, _spec) {
    const { root } = context.session;
    // Paths are resolved as the guest sees them: a guest symlink can never lead a write or a removal to the host.
    const fstab = await resolveInRoot(root, '/etc/fstab');
    const fstabText = await readGuestText(root, fstab);
    const { text, sources } = disableSwapInFstab(fstabText ?? '');
    if (fstabText === undefined) context.log.info(`${context.label}: the guest has no /etc/fstab`);
    if (sources.length) {
      const info = (await statGuest(root, fstab))!;
      const sha256 = await writeGuestFile(
        context.session,
        { path: fstab, content: text, mode: (info.mode & 0o7777).toString(8).padStart(4, '0'), owner: String(info.uid), group: String(info.gid) },
        `${context.label}: writing ${fstab}`,
      );
      context.record.file({ path: fstab, sha256, kind: 'config' });
      context.log.info(`${context.label}: commented out ${sources.length} swap line(s) in /etc/fstab: ${sources.join(', ')}`);
    }

    for (const source of sources) {
      // UUID=, LABEL=, /dev/...: a partition or a device, which stays; only a file can be removed.
      if (!source.startsWith('/') || source.startsWith('/dev/')) continue;
      const path = posix.join(await resolveInRoot(root, posix.dirname(source)), posix.basename(source));
      const entry = await statGuest(root, path);
      if (!entry) {
        context.log.info(`${context.label}: swap file ${source} is not in the image; nothing to remove`);
      } else if (entry.isFile()) {
        await guestRun(context, ['rm', '-f', '--', path], { purpose: `removing the swap file ${path}` });
        context.log.info(`${context.label}: removed the swap file ${path}`);
      } else {
        context.log.warn(`${context.label}: swap entry ${source} is not a regular file in the guest; left as it is`);
      }
    }

    const sha256 = await writeGuestFile(context.session, { path: ZRAM_GENERATOR_CONF, content: ZRAM_OFF_CONTENT, mode: '0644' }, `${context.label}: writing ${ZRAM_GENERATOR_CONF}`);
    context.record.file({ path: ZRAM_GENERATOR_CONF, sha256, kind: 'config' });

    if (await guestHasCommand(context, 'systemctl')) {
      await guestRun(context, ['systemctl', 'mask', 'swap.target'], { purpose: 'masking swap.target' });
      context.record.unit({ unit: 'swap.target', state: 'masked' });
    } else {
      context.log.info(`${context.label}: the guest has no systemctl; swap.target not masked`);
    }
  },
});
