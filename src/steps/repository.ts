import { chown, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Type, type Static } from '@sinclair/typebox';
import { ABSENT } from '../util/json-schema.js';
import { requireFamily } from '../distro/families.js';
import { networkDownloads } from '../fetch/downloads.js';
import { MAX_KEY_BYTES } from '../fetch/http.js';
import { ImageBuilderError, isImageBuilderError } from '../util/errors.js';
import { execRunner, type Runner } from '../util/exec.js';
import { withBoxUid } from '../util/box-uid.js';
import type { Logger } from '../util/log.js';
import { boxFailed, requireBoxedTool, unprivilegedCommand } from '../util/unprivileged.js';
import { defineStep, type StepContext } from './types.js';

/** One primary key found in a key file, as the host's gpg reads it. */
export interface OpenPgpKey {
  fingerprint: string;
  /** `pub` for a public key; `sec` means the file holds a secret key. */
  type: 'pub' | 'sec';
  userIds: string[];
}

const HTTP_URL = '^https?://[^\\s]+$';

const repositorySchema = Type.Object(
  {
    name: Type.String({
      pattern: '^[A-Za-z0-9][A-Za-z0-9_.-]*$',
      maxLength: 64,
      description: 'Names the files written (NAME.sources and NAME.asc; NAME.repo and RPM-GPG-KEY-NAME) and the dnf repository id: letters, digits, "_", "." and "-".',
    }),
    url: Type.String({ pattern: HTTP_URL, description: "The repository's URI (dnf: its baseurl), as the guest reaches it (http or https)." }),
    suite: Type.Optional(
      Type.String({
        pattern: '^[^\\s]+$',
        default: '/',
        description: 'apt: the suite (e.g. bookworm), or an exact path ending in "/" for a flat repository (the default, "/"). Not for dnf.',
      }),
    ),
    components: Type.Optional(
      Type.Array(Type.String({ pattern: '^[^\\s/]+$' }), {
        minItems: 1,
        uniqueItems: true,
        description: 'apt: components (e.g. [main]); required with a suite that is not a path, not allowed with one that is. Not for dnf.',
      }),
    ),
    key_url: Type.Optional(Type.String({ pattern: HTTP_URL, description: 'URL of the OpenPGP public key that signs the repository (armored or binary). Needs fingerprint.' })),
    key: Type.Optional(Type.String({ pattern: '-----BEGIN PGP PUBLIC KEY BLOCK-----', description: 'The armored OpenPGP public key, inline. Exactly one of key and key_url.' })),
    fingerprint: Type.Optional(
      Type.String({
        pattern: '^\\s*([0-9A-Fa-f]\\s*){40}$',
        description: "The key's full primary key fingerprint (40 hex digits, spaces allowed); required with key_url, checked if given with key.",
      }),
    ),
    exclude: Type.Optional(
      Type.Array(Type.String({ pattern: '^[A-Za-z0-9*?][A-Za-z0-9+._*?-]*$' }), {
        minItems: 1,
        uniqueItems: true,
        description: 'dnf and yum: packages (globs allowed) this repository never offers unless an install says `disable_excludes: NAME` (`exclude=` in the .repo file). Not for apt, tdnf or zypper.',
      }),
    ),
  },
  {
    additionalProperties: false,
    allOf: [
      {
        description: 'Exactly one of key and key_url; key_url needs fingerprint.',
        if: { required: ['key_url'] },
        then: { required: ['fingerprint'], properties: { key: ABSENT } },
        else: { required: ['key'] },
      },
      {
        description: 'A flat repository (suite ending in "/", the default) has no components; any other suite needs them.',
        if: { required: ['suite'], properties: { suite: { pattern: '[^/]$' } } },
        then: { required: ['components'] },
        else: { properties: { components: ABSENT } },
      },
    ],
  },
);

export type RepositorySpec = Static<typeof repositorySchema>;

/** Upper-case hex without spaces: how fingerprints are compared. */
export function normalizeFingerprint(text: string): string {
  return text.replace(/\s+/g, '').toUpperCase();
}

/**
 * Primary keys from `gpg --with-colons` output (gpg's doc/DETAILS): each `pub`/`sec` record starts a key, the first
 * `fpr` record after it is that key's fingerprint (later ones belong to its subkeys), `uid` field 10 is a user id.
 */
export function parseGpgColons(text: string): OpenPgpKey[] {
  const keys: OpenPgpKey[] = [];
  let current: OpenPgpKey | undefined;
  let inSubkey = false;
  for (const line of text.split('\n')) {
    const fields = line.split(':');
    const record = fields[0];
    if (record === 'pub' || record === 'sec') {
      current = { fingerprint: '', type: record, userIds: [] };
      keys.push(current);
      inSubkey = false;
    } else if (record === 'sub' || record === 'ssb') {
      inSubkey = true;
    } else if (record === 'fpr' && current && !inSubkey && !current.fingerprint) {
      current.fingerprint = (fields[9] ?? '').toUpperCase();
    } else if (record === 'uid' && current) {
      // gpg escapes ':' and other bytes in user ids as \xHH.
      current.userIds.push((fields[9] ?? '').replace(/\\x([0-9a-fA-F]{2})/g, (_, hex: string) => String.fromCharCode(parseInt(hex, 16))));
    }
  }
  return keys;
}

/**
 * Reads the primary keys of an OpenPGP key file with the host's gpg, importing nothing anywhere (`--show-keys`)
 * and starting no agent (`--no-autostart`). The key comes from the network or a bundle: gpg parses it as a uid of its own in
 * the unprivileged box (no network, a throwaway home and nothing else of the host's but its /usr). No keys (with
 * gpg's complaint in `diagnostics`) when gpg finds none; a host without gpg is MISSING_TOOL.
 */
export async function inspectOpenPgpKey(key: Buffer, options: { run?: Runner; signal?: AbortSignal; log?: Logger } = {}): Promise<{ keys: OpenPgpKey[]; diagnostics: string }> {
  const run = options.run ?? execRunner;
  await requireBoxedTool('gpg', 'the repository step checks keys with it', 'install it (Debian and Ubuntu: apt-get install gpg; Fedora: dnf install gnupg2)');
  const home = await mkdtemp(join(tmpdir(), 'imagebuilder-gpg-'));
  try {
    const result = await withBoxUid('gpg', async (uid) => {
      await chown(home, uid, uid);
      const [sandbox, args] = unprivilegedCommand(['gpg', '--homedir', '/gnupg', '--batch', '--no-tty', '--no-autostart', '--with-colons', '--show-keys'], {
        uid,
        binds: [{ host: home, inside: '/gnupg', writable: true }],
      });
      return run(sandbox, args, {
        input: key,
        signal: options.signal,
        errorCode: 'STEP_FAILED',
        display: 'gpg --with-colons --show-keys (unprivileged, in bwrap)',
        purpose: 'reading an OpenPGP key with gpg',
      });
    }, { log: options.log, signal: options.signal });
    return { keys: parseGpgColons(result.stdout), diagnostics: result.stderr.trim() };
  } catch (error) {
    if (!isImageBuilderError(error) || error.code !== 'STEP_FAILED') throw error;
    // The box itself failed (not gpg on the key): a host problem, not a bad key.
    if (boxFailed(error.detail ?? '')) throw new ImageBuilderError('ENVIRONMENT', `the sandbox gpg runs in could not start: ${(error.detail ?? '').trim().split('\n')[0]}`, { hint: 'imagebuilder runs as root, where bubblewrap needs no user namespace: `imagebuilder doctor` checks the host', cause: error });
    return { keys: [], diagnostics: error.detail ?? error.message };
  } finally {
    await rm(home, { recursive: true, force: true });
  }
}

function stepFailure(context: StepContext, message: string, options: { detail?: string; hint?: string } = {}) {
  return new ImageBuilderError('STEP_FAILED', `${context.label}: ${message}`, options);
}

/** The key's bytes: inline from the recipe, or fetched on the build host (never from inside the guest). */
async function keyBytes(context: StepContext, spec: RepositorySpec): Promise<Buffer> {
  if (spec.key !== undefined) return Buffer.from(spec.key, 'utf8');
  try {
    return await (context.downloads ?? networkDownloads).bytes(spec.key_url!, { signal: context.signal, log: context.log, timeouts: context.fetchTimeouts, cap: { bytes: MAX_KEY_BYTES, what: 'repository key' } });
  } catch (error) {
    if (isImageBuilderError(error) && error.code === 'COMMAND_FAILED') {
      throw new ImageBuilderError('STEP_FAILED', `${context.label}: cannot fetch the key of repository ${spec.name}: ${error.message}`, { hint: error.hint, cause: error });
    }
    throw error;
  }
}

/** Checks that the key is exactly one public key, with the expected fingerprint when one is given. */
async function verifyKey(context: StepContext, spec: RepositorySpec, key: Buffer): Promise<OpenPgpKey> {
  const from = spec.key_url ?? 'the key given in the recipe';
  const { keys, diagnostics } = await inspectOpenPgpKey(key, { signal: context.signal, log: context.log });
  if (!keys.length) {
    throw stepFailure(context, `${from} is not an OpenPGP public key`, {
      detail: `${diagnostics || 'gpg --show-keys found no key in it'}\nit starts with: ${JSON.stringify(key.subarray(0, 60).toString('latin1'))}`,
      hint: 'key_url must point at the repository\'s signing key itself (armored or binary), e.g. Release.key or a *.gpg / *.asc file',
    });
  }
  const listed = keys.map((k) => `${k.fingerprint}${k.userIds.length ? ` (${k.userIds[0]})` : ''}`).join('\n');
  if (keys.some((k) => k.type === 'sec')) {
    throw stepFailure(context, `${from} holds a secret key, not a public key: nothing was written to the image`, {
      hint: 'give the public key (gpg --export --armor FINGERPRINT); a private key must never be put into an image',
    });
  }
  if (keys.length > 1) {
    throw stepFailure(context, `${from} holds ${keys.length} primary keys, not one`, {
      detail: `keys found:\n${listed}${spec.fingerprint ? `\nexpected exactly one: ${normalizeFingerprint(spec.fingerprint)}` : ''}`,
      hint: 'a repository key file must hold exactly the one key that signs the repository',
    });
  }
  const [found] = keys;
  if (spec.fingerprint !== undefined) {
    const expected = normalizeFingerprint(spec.fingerprint);
    if (found.fingerprint !== expected) {
      throw stepFailure(context, `the key of repository ${spec.name} has fingerprint ${found.fingerprint}, expected ${expected}`, {
        detail: `expected fingerprint ${expected} (from the recipe)\nactual   fingerprint ${found.fingerprint}${found.userIds.length ? ` (${found.userIds.join(', ')})` : ''}\nkey from ${from}`,
        hint: 'the key is not the one the recipe trusts: check key_url and the fingerprint the repository publishes (nothing was written to the image)',
      });
    }
  }
  return found;
}

export const repositoryStep = defineStep({
  key: 'repository',
  summary: 'Add a signed package repository, trusted through a verified key',
  description:
    'Adds a package repository to the guest, signed by one OpenPGP key. The key is given inline (`key`, armored) or ' +
    'fetched on the build host from `key_url`; then it must be exactly one public key, and with `key_url` its primary ' +
    'key fingerprint must equal `fingerprint` (40 hex digits, spaces allowed), else the step fails before anything is ' +
    'written. On Debian and Ubuntu the key goes to /etc/apt/keyrings/NAME.asc (NAME.gpg for a binary key) and a deb822 ' +
    'source to /etc/apt/sources.list.d/NAME.sources whose Signed-By names that key only, so the key vouches for this ' +
    'repository alone. `suite` defaults to "/" (a flat repository, as pkgs.k8s.io has: no components); any other ' +
    'suite needs `components`. On the RedHat family (dnf, yum) the key goes, armored, to ' +
    '/etc/pki/rpm-gpg/RPM-GPG-KEY-NAME and /etc/yum.repos.d/NAME.repo gets `baseurl` = `url`, `enabled=1`, ' +
    '`gpgcheck=1` with `gpgkey` naming that file (every package must be signed by this key; dnf imports it into the ' +
    "guest's rpm database at the first install) and `repo_gpgcheck=0`; `exclude` adds `exclude=` (these packages are " +
    'then installed only by a packages step with `disable_excludes: NAME`, as pkgs.k8s.io\'s instructions do). Photon ' +
    '(tdnf) gets the same .repo file, without `exclude`. On openSUSE and SLES (zypper) the key is imported into the ' +
    "guest's rpm database (`rpm --import`) and /etc/zypp/repos.d/NAME.repo gets `type=rpm-md`, `autorefresh=1`, " +
    '`gpgcheck=1`, `pkg_gpgcheck=1`, `repo_gpgcheck=0` and `gpgkey`; zypper has no `exclude` (hold the packages ' +
    'instead: `addlock`). `suite` and `components` are apt\'s and fail the step on the rpm families. Package lists are ' +
    'fetched again before the next install or upgrade.',
  example: {
    name: 'kubernetes',
    url: 'https://pkgs.k8s.io/core:/stable:/v1.30/deb/',
    key_url: 'https://pkgs.k8s.io/core:/stable:/v1.30/deb/Release.key',
    fingerprint: 'DE15 B144 86CD 377B 9E87  6E1A 2346 54DA 9A29 6436',
  },
  schema: repositorySchema,
  describe: (spec) => `add repository ${spec.name} (${spec.url})`,
  needsPackageManager: () => true,
  async run(context, spec) {
    const manager = requireFamily(context.distro, 'the repository step').packageManager;
    const key = await keyBytes(context, spec);
    const found = await verifyKey(context, spec, key);
    context.log.info(
      `${context.label}: key ${found.fingerprint}${found.userIds.length ? ` (${found.userIds[0]})` : ''}${spec.fingerprint ? ' matches the recipe' : ''}`,
    );
    const files = await manager.addRepository(context.session, {
      name: spec.name,
      url: spec.url,
      suite: spec.suite ?? '/',
      components: spec.components,
      key,
      keySource: spec.key_url,
      exclude: spec.exclude,
    });
    for (const file of files) context.record.file({ ...file, kind: 'config' });
  },
});
