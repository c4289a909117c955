import { statSync } from 'node:fs';
import { createHash } from 'node:crypto';
import type { Stats } from 'node:fs';
import { lstat, readdir, readlink, stat } from 'node:fs/promises';
import { join, posix } from 'node:path';
import { Readable } from 'node:stream';
import tar from 'tar-stream';
import { Type, type Static } from '@sinclair/typebox';
import { extractIntoGuest } from '../chroot/guest-write.js';
import { ImageBuilderError } from '../util/errors.js';
import { clampTime, sourceDateEpoch } from '../util/time.js';
import { packEntry, packFile, type TarHeader } from '../util/tar-pack.js';
import { defineStep, type StepContext } from './types.js';
import { confinedHostPath, hostTreeDigest } from './host-inputs.js';

const copySchema = Type.Object(
  {
    src: Type.String({ minLength: 1, description: 'A file or directory on the build host, relative to the recipe file.' }),
    dest: Type.String({
      pattern: '^/',
      description: 'Absolute guest path: the copy of a file (ending in "/": the directory to put it in), or the directory to copy a directory\'s contents into.',
    }),
    owner: Type.Optional(Type.String({ minLength: 1, maxLength: 32, default: 'root', description: 'Owner name or uid in the guest, of everything copied.' })),
    group: Type.Optional(Type.String({ minLength: 1, maxLength: 32, default: 'root', description: 'Group name or gid in the guest, of everything copied.' })),
    mode: Type.Optional(Type.String({ pattern: '^0?[0-7]{3,4}$', description: 'Octal mode for a single file, e.g. "0640" (default: the host file\'s mode).' })),
  },
  { additionalProperties: false },
);

export type CopySpec = Static<typeof copySchema>;

/** One thing to put into the archive: its name inside it, where it is on the host, what it is. */
interface HostEntry {
  name: string;
  hostPath: string;
  stats: Stats;
}

/** Everything under `dir`, parents before children, sorted: symlinks are entries themselves, never followed. */
async function walk(dir: string, prefix: string, context: StepContext): Promise<HostEntry[]> {
  const entries: HostEntry[] = [];
  for (const name of (await readdir(dir)).sort()) {
    const hostPath = join(dir, name);
    const stats = await lstat(hostPath);
    const entryName = prefix ? `${prefix}/${name}` : name;
    if (stats.isDirectory()) {
      entries.push({ name: entryName, hostPath, stats }, ...(await walk(hostPath, entryName, context)));
    } else if (stats.isFile() || stats.isSymbolicLink()) {
      entries.push({ name: entryName, hostPath, stats });
    } else {
      context.log.warn(`${context.label}: skipping ${hostPath}: neither a file, a directory nor a symlink`);
    }
  }
  return entries;
}

/** Owner or group as tar header fields: a name for the guest's tar to map, or a number used as it is. */
function ownerFields(value: string): { name?: string; id: number } {
  return /^\d+$/.test(value) ? { id: Number(value) } : { name: value, id: 0 };
}

/** Adds one entry to the archive; for a regular file, streams its content and returns its sha256. */
async function addEntry(pack: tar.Pack, entry: HostEntry, header: TarHeader): Promise<string | undefined> {
  if (!entry.stats.isFile()) return void (await packEntry(pack, header));
  const hash = createHash('sha256');
  await packFile(pack, { ...header, size: entry.stats.size }, entry.hostPath, {
    onChunk: (chunk) => hash.update(chunk),
    wrapError: (error) => new HostReadError(entry.hostPath, error),
  });
  return hash.digest('hex');
}

export const copyStep = defineStep({
  key: 'copy',
  hostPaths: (spec) => [{ at: ['src'], path: spec.src }],
  summary: 'Copy a file or a directory tree from the build host into the guest',
  description:
    '`src` is a file or directory on the build host, relative to the recipe. A file is copied to `dest` under that ' +
    'name (a `dest` ending in "/" keeps the source file name); a directory\'s contents are copied into the directory ' +
    '`dest` (created if missing; an existing one keeps its own owner and mode), with its subdirectories and symlinks ' +
    "(copied as symlinks, never followed). Modes and modification times are kept; everything belongs to `owner` and " +
    "`group` (default root), resolved by the guest's own tar from its /etc/passwd and /etc/group. `mode` overrides the " +
    'mode of a single file.',
  example: { src: 'files/kubelet', dest: '/etc/kubernetes/kubelet', owner: 'root', group: 'root' },
  schema: copySchema,
  describe: (spec) => `copy ${spec.src} to ${spec.dest}`,
  async cacheInputs(spec, environment) {
    return { digests: { src: await hostTreeDigest(confinedHostPath(environment, spec.src)) } };
  },
  check(spec, environment) {
    const src = confinedHostPath(environment, spec.src);
    const stat = statSync(src, { throwIfNoEntry: false });
    if (!stat) return [`cannot copy ${src}: no such file or directory; host paths are relative to the recipe`];
    if (stat.isDirectory() && spec.mode !== undefined) return [`mode applies to a single file, and ${src} is a directory`];
    return [];
  },
  async run(context, spec) {
    const src = confinedHostPath(context, spec.src);
    // src itself is what the recipe names: followed if it is a symlink. Inside a directory, nothing is.
    const top = await stat(src).catch((error: NodeJS.ErrnoException) => {
      throw new ImageBuilderError('BAD_RECIPE', `${context.label}: cannot copy ${src}: ${error.code === 'ENOENT' ? 'no such file or directory' : (error.code ?? error.message)}`, {
        hint: 'src is relative to the directory of the recipe file',
      });
    });
    let directory: string;
    let entries: HostEntry[];
    if (top.isDirectory()) {
      if (spec.mode !== undefined) throw new ImageBuilderError('BAD_RECIPE', `${context.label}: mode applies to a single file, and ${src} is a directory`);
      directory = spec.dest;
      entries = await walk(src, '', context).catch((error: unknown) => {
        throw readFailure(context, error);
      });
    } else if (top.isFile()) {
      const name = spec.dest.endsWith('/') ? posix.basename(src) : posix.basename(spec.dest);
      if (!name || spec.dest === '/') throw new ImageBuilderError('BAD_RECIPE', `${context.label}: dest "${spec.dest}" names no file`);
      directory = spec.dest.endsWith('/') ? spec.dest : posix.dirname(spec.dest);
      entries = [{ name, hostPath: src, stats: top }];
    } else {
      throw new ImageBuilderError('BAD_RECIPE', `${context.label}: cannot copy ${src}: neither a file nor a directory`);
    }

    const owner = ownerFields(spec.owner ?? 'root');
    const group = ownerFields(spec.group ?? 'root');
    if ((owner.name !== undefined && owner.name !== 'root') || (group.name !== undefined && group.name !== 'root')) {
      // The guest's tar would silently fall back to the numeric id in the archive for an unknown name.
      await context.session.exec(['/bin/sh', '-c', CHECK_OWNER_SCRIPT, 'check-owner', spec.owner ?? 'root', spec.group ?? 'root'], {
        needsNoNetwork: true,
        errorCode: 'STEP_FAILED',
        purpose: `${context.label}: owner ${spec.owner ?? 'root'}:${spec.group ?? 'root'}`,
        hint: 'create the user or group in an earlier step (e.g. `run: useradd --system NAME`), or use one the image has',
      });
    }

    const epoch = sourceDateEpoch();
    const pack = tar.pack();
    // Its failures reach us through `packing` and the extraction; an 'error' event must not crash the process.
    pack.on('error', () => undefined);
    const sums = new Map<string, string>();
    let hostError: HostReadError | undefined;
    const packing = (async () => {
      for (const entry of entries) {
        const header: TarHeader = {
          name: entry.stats.isDirectory() ? `${entry.name}/` : entry.name,
          type: entry.stats.isDirectory() ? 'directory' : entry.stats.isSymbolicLink() ? 'symlink' : 'file',
          mode: spec.mode !== undefined && entry.stats.isFile() ? parseInt(spec.mode, 8) : entry.stats.mode & 0o7777,
          // Reproducible builds: host files newer than SOURCE_DATE_EPOCH are dated at it (tar --clamp-mtime).
          mtime: clampTime(entry.stats.mtime, epoch),
          uid: owner.id,
          gid: group.id,
          uname: owner.name,
          gname: group.name,
          linkname: entry.stats.isSymbolicLink()
            ? await readlink(entry.hostPath).catch((error: Error) => {
                throw new HostReadError(entry.hostPath, error);
              })
            : undefined,
        };
        const sha256 = await addEntry(pack, entry, header);
        if (sha256) sums.set(entry.name, sha256);
      }
      pack.finalize();
    })().then(
      () => undefined,
      (error: Error) => {
        if (error instanceof HostReadError) hostError ??= error;
        pack.destroy(error);
        return error;
      },
    );
    let guestError: unknown;
    try {
      await extractIntoGuest(context.session, Readable.from(pack), directory, {
        keepOwners: true,
        purpose: `${context.label}: copying ${src} into ${directory}`,
      });
    } catch (error) {
      guestError = error;
      pack.destroy(new Error('the guest stopped reading the archive'));
    }
    const packError = await packing;
    // The cause first: a host file that could not be read makes the guest's tar fail too, not the other way round.
    if (hostError) throw readFailure(context, hostError);
    if (guestError !== undefined) throw guestError;
    if (packError) throw packError;

    for (const entry of entries) {
      const sha256 = sums.get(entry.name);
      if (sha256) context.record.file({ path: posix.join(directory, entry.name), sha256, kind: 'copy', source: entry.hostPath });
    }
  },
});

/** Fails unless the owner and group, when names, exist in the guest (numbers are taken as they are). */
const CHECK_OWNER_SCRIPT =
  'case "$1" in *[!0-9]*) getent passwd "$1" >/dev/null || { echo "no user \\"$1\\" in the guest" >&2; exit 1; };; esac; ' +
  'case "$2" in *[!0-9]*) getent group "$2" >/dev/null || { echo "no group \\"$2\\" in the guest" >&2; exit 1; };; esac';

/** A file of the host tree that could not be read while it was being packed. */
class HostReadError extends Error {
  constructor(
    readonly path: string,
    cause: NodeJS.ErrnoException,
  ) {
    super(`${path}: ${cause.code ? `cannot read it (${cause.code})` : cause.message}`, { cause });
  }
}

function readFailure(context: StepContext, error: unknown): ImageBuilderError {
  const message = error instanceof Error ? error.message : String(error);
  return new ImageBuilderError('STEP_FAILED', `${context.label}: copying from the build host: ${message}`, { cause: error });
}
