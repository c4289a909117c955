import { Type, type Static } from '@sinclair/typebox';
import { Enum } from '../util/json-schema.js';
import { requireFamily } from '../distro/families.js';
import { DBUS_MACHINE_ID } from '../distro/types.js';
import { guestRun } from './guest-exec.js';
import { defineStep, type StepContext } from './types.js';

/** Every operation, in the order they run (logs last: the others may write some). */
export const SYSPREP_OPERATIONS = ['package-cache', 'cloud-init', 'ssh-host-keys', 'machine-id', 'shell-history', 'tmp', 'logs'] as const;
export type SysprepOperation = (typeof SYSPREP_OPERATIONS)[number];

const sysprepSchema = Type.Object(
  {
    operations: Type.Optional(Type.Array(Enum(SYSPREP_OPERATIONS), { minItems: 1, uniqueItems: true, description: 'Which operations to run (default: all).' })),
  },
  { additionalProperties: false },
);

export type SysprepSpec = Static<typeof sysprepSchema>;

/** History files removed from every home directory in the guest's passwd database (regular files only). */
export const HISTORY_FILES = ['.bash_history', '.zsh_history', '.sh_history', '.ash_history', '.history', '.python_history', '.lesshst'];

/** The shell scripts, run with the guest's /bin/sh inside the chroot: paths resolve in the guest only. */
export const SYSPREP_SCRIPTS = {
  // Regular files matching the patterns given as arguments go; a link stays (Debian links /var/lib/dbus/machine-id
  // to /etc/machine-id). The unquoted $pattern is expanded by the guest's shell, in the guest.
  removeFiles: 'for pattern in "$@"; do for file in $pattern; do if [ -f "$file" ] && [ ! -L "$file" ]; then rm -f -- "$file"; fi; done; done',
  sshHostKeys: 'rm -f /etc/ssh/ssh_host_*',
  // Journal files are removed (an empty one is a corrupt one to journald); every other log is kept, empty.
  logs:
    'set -e; [ -d /var/log ] || exit 0; ' +
    'find /var/log -path /var/log/journal -prune -o -type f -exec truncate -s 0 {} +; ' +
    "if [ -d /var/log/journal ]; then find /var/log/journal -type f \\( -name '*.journal' -o -name '*.journal~' \\) -delete; fi",
  // What `cloud-init clean --logs` does, by the guest's own cloud-init when it has one (the seed stays).
  cloudInit:
    'set -e; if command -v cloud-init >/dev/null 2>&1; then exec cloud-init clean --logs; fi; ' +
    'if [ -d /var/lib/cloud ]; then find /var/lib/cloud -mindepth 1 -maxdepth 1 ! -name seed -exec rm -rf --one-file-system -- {} +; fi; ' +
    'rm -f /var/log/cloud-init.log /var/log/cloud-init-output.log',
  tmp: 'set -e; for dir in /tmp /var/tmp; do if [ -d "$dir" ]; then find "$dir" -mindepth 1 -maxdepth 1 -exec rm -rf --one-file-system -- {} +; fi; done',
  shellHistory:
    'set -e; getent passwd | cut -d: -f6 | sort -u | while IFS= read -r home; do ' +
    '[ -d "$home" ] || continue; ' +
    `for name in ${HISTORY_FILES.join(' ')}; do ` +
    'if [ -f "$home/$name" ] && [ ! -L "$home/$name" ]; then rm -f -- "$home/$name"; fi; ' +
    'done; done',
};

const sh = (script: string) => ['/bin/sh', '-c', script];
const removeFiles = (patterns: string[]) => ['/bin/sh', '-c', SYSPREP_SCRIPTS.removeFiles, 'remove-files', ...patterns];

async function runOperation(context: StepContext, operation: SysprepOperation, explicit: boolean): Promise<void> {
  const run = (argv: string[]) => guestRun(context, argv, { purpose: `sysprep ${operation}` });
  switch (operation) {
    case 'machine-id':
      // Empty, not absent: systemd fills it at first boot, and the file stays a file (not a mount point).
      await run(['truncate', '-s', '0', '/etc/machine-id']);
      // The family knows its other per-machine ids; on any other guest, D-Bus's copy.
      await run(removeFiles(context.distro.family?.hygiene.machineIdentity ?? [DBUS_MACHINE_ID]));
      return;
    case 'ssh-host-keys':
      await run(sh(SYSPREP_SCRIPTS.sshHostKeys));
      return;
    case 'logs':
      await run(sh(SYSPREP_SCRIPTS.logs));
      return;
    case 'package-cache': {
      if (!context.distro.family && !explicit) {
        context.log.warn(`${context.label}: package-cache skipped: unknown distribution family`);
        return;
      }
      const family = requireFamily(context.distro, 'the package-cache operation of sysprep');
      await family.packageManager.cleanCache(context.session);
      if (family.hygiene.packageLeftovers.length) await run(removeFiles(family.hygiene.packageLeftovers));
      return;
    }
    case 'cloud-init':
      await run(sh(SYSPREP_SCRIPTS.cloudInit));
      return;
    case 'tmp':
      await run(sh(SYSPREP_SCRIPTS.tmp));
      return;
    case 'shell-history':
      await run(sh(SYSPREP_SCRIPTS.shellHistory));
      return;
  }
}

export const sysprepStep = defineStep({
  key: 'sysprep',
  summary: 'Remove what makes this image one machine: machine-id, SSH host keys, logs, caches',
  description:
    'Makes the image a template; every operation runs inside the guest, in this order whatever order the recipe ' +
    "gives: `package-cache` cleans the package manager's cache and package lists (apt: apt-get clean and /var/lib/apt/lists; dnf/yum/tdnf: clean all and /var/cache/dnf, yum or tdnf; zypper: clean --all and /var/cache/zypp) and, on the rpm families, rpm's Berkeley DB environment files (__db.*); " +
    '`cloud-init` does what `cloud-init clean --logs` does (with the guest\'s cloud-init when it has one; the seed ' +
    'stays), so cloud-init runs again at first boot; `ssh-host-keys` removes /etc/ssh/ssh_host_* (something must ' +
    'create new ones at first boot: cloud-init does, or a unit running `ssh-keygen -A`); `machine-id` empties ' +
    '/etc/machine-id (systemd makes a new one at first boot) and removes a copied /var/lib/dbus/machine-id and the ' +
    "package manager's own machine id (yum: /var/lib/yum/uuid; zypper: /var/lib/zypp/AnonymousUniqueId); " +
    '`shell-history` removes shell and tool history files from every home directory; `tmp` empties /tmp and ' +
    '/var/tmp; `logs` (last) empties every file under /var/log, keeping them, and removes journal files. Without ' +
    '`operations`, all of them run. Put this step last.',
  example: { operations: ['machine-id', 'ssh-host-keys', 'logs', 'package-cache', 'tmp', 'shell-history'] },
  schema: sysprepSchema,
  describe: (spec) => `sysprep ${spec.operations ? spec.operations.join(' ') : 'all'}`,
  // Without `operations`, package-cache is skipped (with a warning) on an unknown distribution; asked for, it needs one.
  needsPackageManager: (spec) => spec.operations?.includes('package-cache') ?? false,
  async run(context, spec) {
    for (const operation of SYSPREP_OPERATIONS) {
      if (spec.operations && !spec.operations.includes(operation)) continue;
      await runOperation(context, operation, spec.operations !== undefined);
    }
  },
});
