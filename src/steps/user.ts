import { posix } from 'node:path';
import { Type, type Static, type StringOptions } from '@sinclair/typebox';
import { Const, OneOf } from '../util/json-schema.js';
import { writeGuestFile } from '../chroot/guest-write.js';
import { ImageBuilderError } from '../util/errors.js';
import { guestHasCommand, guestRun } from './guest-exec.js';
import { defineStep, type StepContext } from './types.js';

/** A user or group name, as useradd and groupadd take it. */
const name = (options: StringOptions = {}) => Type.String({ pattern: '^[a-z_][a-z0-9_.-]*$', maxLength: 32, ...options });
const id = (description: string) => Type.Optional(Type.Integer({ minimum: 0, maximum: 4294967294, description }));
const SINGLE_LINE = '^[^\\n]+$';

const groupSchema = Type.Object(
  {
    name: name({ description: 'Group name.' }),
    gid: id('Numeric group id (default: the next free one).'),
    system: Type.Optional(Type.Boolean({ default: false, description: 'A system group (gid from the system range).' })),
  },
  { additionalProperties: false },
);

const userEntrySchema = Type.Object(
  {
    name: name({ description: 'User name.' }),
    uid: id('Numeric user id (default: the next free one).'),
    groups: Type.Optional(
      Type.Array(name(), { uniqueItems: true, description: 'Supplementary groups; they must exist (create them under `groups`).' }),
    ),
    shell: Type.Optional(Type.String({ pattern: '^/', description: "Login shell (default: the guest's useradd default)." })),
    home: Type.Optional(Type.String({ pattern: '^/', description: 'Home directory (default: /home/NAME).' })),
    system: Type.Optional(Type.Boolean({ default: false, description: 'A system user (uid from the system range, no home unless asked).' })),
    authorized_keys: Type.Optional(
      Type.Array(Type.String({ pattern: SINGLE_LINE }), { description: 'SSH public keys, one per entry; they replace ~/.ssh/authorized_keys.' }),
    ),
    sudo: Type.Optional(
      OneOf(
        [
          Type.String({ pattern: SINGLE_LINE, description: 'The sudoers rule after the user name, e.g. "ALL=(ALL) NOPASSWD:ALL".' }),
          Const(false, { description: "Remove the user's file in /etc/sudoers.d." }),
        ],
        { description: 'A sudo rule for the user, or false to remove it.' },
      ),
    ),
  },
  { additionalProperties: false },
);

const userSchema = Type.Object(
  {
    groups: Type.Optional(Type.Array(groupSchema, { minItems: 1, description: 'Groups to create (or update), before the users.' })),
    users: Type.Optional(Type.Array(userEntrySchema, { minItems: 1, description: 'Users to create (or update).' })),
  },
  { additionalProperties: false, minProperties: 1 },
);

export type GroupEntry = Static<typeof groupSchema>;
export type UserEntry = Static<typeof userEntrySchema>;
export type UserSpec = Static<typeof userSchema>;

export const SUDOERS_HEADER = '# Written by imagebuilder.\n';

/** sudo skips files in /etc/sudoers.d whose names contain a dot, so `first.last` gets `first_last`. */
export function sudoersFileName(user: string): string {
  return `/etc/sudoers.d/${user.replace(/\./g, '_')}`;
}

interface PasswdEntry {
  uid: number;
  gid: number;
  home: string;
  shell: string;
}

async function lookupUser(context: StepContext, name: string): Promise<PasswdEntry | undefined> {
  // getent exits 2 when the name is unknown.
  const result = await guestRun(context, ['getent', 'passwd', name], { purpose: `looking up user ${name}`, okExitCodes: [2] });
  const fields = result.exitCode === 0 ? result.stdout.split('\n')[0].split(':') : [];
  if (fields.length < 7) return undefined;
  return { uid: Number(fields[2]), gid: Number(fields[3]), home: fields[5], shell: fields[6] };
}

async function lookupGroup(context: StepContext, name: string): Promise<{ gid: number } | undefined> {
  const result = await guestRun(context, ['getent', 'group', name], { purpose: `looking up group ${name}`, okExitCodes: [2] });
  const fields = result.exitCode === 0 ? result.stdout.split('\n')[0].split(':') : [];
  return fields.length >= 3 ? { gid: Number(fields[2]) } : undefined;
}

const SHADOW_HINT = "the guest's own message is above; supplementary groups must exist first (list them under `groups`, or install the package that creates them in an earlier step)";

async function ensureGroup(context: StepContext, group: GroupEntry): Promise<void> {
  const existing = await lookupGroup(context, group.name);
  if (!existing) {
    const argv = ['groupadd', ...(group.system ? ['--system'] : []), ...(group.gid !== undefined ? ['--gid', String(group.gid)] : []), group.name];
    await guestRun(context, argv, { purpose: `creating group ${group.name}`, hint: SHADOW_HINT });
  } else if (group.gid !== undefined && existing.gid !== group.gid) {
    await guestRun(context, ['groupmod', '--gid', String(group.gid), group.name], { purpose: `changing the gid of group ${group.name}`, hint: SHADOW_HINT });
  }
}

async function ensureUser(context: StepContext, user: UserEntry): Promise<void> {
  const existing = await lookupUser(context, user.name);
  const groups = user.groups?.length ? user.groups.join(',') : undefined;
  if (!existing) {
    // A group of the user's name may exist already (listed under `groups`): then it is the primary group.
    const ownGroup = await lookupGroup(context, user.name);
    // System users get a home only when one is asked for or needed for authorized_keys.
    const createHome = !user.system || user.home !== undefined || user.authorized_keys !== undefined;
    const argv = [
      'useradd',
      ...(user.system ? ['--system'] : []),
      ...(user.uid !== undefined ? ['--uid', String(user.uid)] : []),
      ...(user.home !== undefined ? ['--home-dir', user.home] : []),
      ...(createHome ? ['--create-home'] : []),
      ...(user.shell !== undefined ? ['--shell', user.shell] : []),
      ...(groups ? ['--groups', groups] : []),
      ...(ownGroup ? ['--gid', user.name] : ['--user-group']),
      user.name,
    ];
    await guestRun(context, argv, { purpose: `creating user ${user.name}`, hint: SHADOW_HINT });
    return;
  }
  // An existing user is brought to what the recipe says; memberships it does not mention are kept.
  const changes = [
    ...(user.uid !== undefined && user.uid !== existing.uid ? ['--uid', String(user.uid)] : []),
    ...(user.home !== undefined && user.home !== existing.home ? ['--home', user.home, '--move-home'] : []),
    ...(user.shell !== undefined && user.shell !== existing.shell ? ['--shell', user.shell] : []),
    ...(groups ? ['--append', '--groups', groups] : []),
  ];
  if (changes.length) await guestRun(context, ['usermod', ...changes, user.name], { purpose: `updating user ${user.name}`, hint: SHADOW_HINT });
}

async function writeAuthorizedKeys(context: StepContext, user: UserEntry, keys: string[]): Promise<void> {
  const entry = await lookupUser(context, user.name);
  if (!entry) throw new ImageBuilderError('STEP_FAILED', `${context.label}: user ${user.name} is not in the guest's passwd database after creating it`, { hint: 'check /etc/nsswitch.conf in the guest' });
  const sshDir = posix.join(entry.home, '.ssh');
  await guestRun(context, ['install', '-d', '-m', '0700', '-o', user.name, '-g', String(entry.gid), sshDir], { purpose: `creating ${sshDir}` });
  const path = posix.join(sshDir, 'authorized_keys');
  const content = keys.map((key) => `${key.trim()}\n`).join('');
  const sha256 = await writeGuestFile(context.session, { path, content, mode: '0600', owner: user.name, group: String(entry.gid) }, `${context.label}: writing ${path}`);
  context.record.file({ path, sha256, kind: 'config' });
}

async function writeSudoers(context: StepContext, user: UserEntry, rule: string | false): Promise<void> {
  const path = sudoersFileName(user.name);
  if (rule === false) {
    await guestRun(context, ['rm', '-f', '--', path], { purpose: `removing ${path}` });
    return;
  }
  const content = `${SUDOERS_HEADER}${user.name} ${rule}\n`;
  if (await guestHasCommand(context, 'visudo')) {
    // Checked before it is installed: a broken file in sudoers.d breaks sudo for everyone.
    const check = await guestRun(context, ['visudo', '-c', '-f', '-'], { purpose: `checking the sudo rule for ${user.name}`, input: content, okExitCodes: [1] });
    if (check.exitCode !== 0) {
      throw new ImageBuilderError('STEP_FAILED', `${context.label}: the sudo rule for ${user.name} is not valid sudoers syntax: ${JSON.stringify(rule)}`, {
        detail: (check.output || check.stderr).trim() || undefined,
        hint: 'a rule is what follows the user name in sudoers(5), e.g. "ALL=(ALL) NOPASSWD:ALL"',
      });
    }
  } else {
    context.log.warn(`${context.label}: sudo is not installed in the guest: ${path} written without checking it (install sudo in an earlier step)`);
  }
  const sha256 = await writeGuestFile(context.session, { path, content, mode: '0440' }, `${context.label}: writing ${path}`);
  context.record.file({ path, sha256, kind: 'config' });
}

export const userStep = defineStep({
  key: 'user',
  summary: 'Create or update users and groups, their SSH keys and sudo rules',
  description:
    "Creates groups, then users, with the guest's own groupadd, useradd and usermod inside the chroot. An existing " +
    'group or user is updated instead (gid, uid, home, shell; `groups` are added, other memberships kept). A new user ' +
    'gets its own group and a home (system users only when `home` or `authorized_keys` is given). `authorized_keys` ' +
    'replaces ~/.ssh/authorized_keys (mode 0600, .ssh 0700, owned by the user). `sudo` writes the rule to ' +
    '/etc/sudoers.d/<name> (mode 0440, dots in the name become `_`), checked with the guest\'s `visudo -c` first when ' +
    'sudo is installed; `sudo: false` removes that file.',
  example: {
    groups: [{ name: 'k8s-admins', gid: 1500 }],
    users: [{ name: 'ops', uid: 1500, groups: ['k8s-admins', 'adm'], shell: '/bin/bash', authorized_keys: ['ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleKeyOnly ops@example'], sudo: 'ALL=(ALL) NOPASSWD:ALL' }],
  },
  schema: userSchema,
  describe: (spec) =>
    [spec.groups?.length ? `group ${spec.groups.map((g) => g.name).join(' ')}` : '', spec.users?.length ? `user ${spec.users.map((u) => u.name).join(' ')}` : '']
      .filter(Boolean)
      .join(', '),
  async run(context, spec) {
    for (const group of spec.groups ?? []) await ensureGroup(context, group);
    for (const user of spec.users ?? []) {
      await ensureUser(context, user);
      if (user.authorized_keys !== undefined) await writeAuthorizedKeys(context, user, user.authorized_keys);
      if (user.sudo !== undefined) await writeSudoers(context, user, user.sudo);
    }
  },
});
