import { createHash } from 'node:crypto';
import { pipeline, Readable, Transform } from 'node:stream';
import type { ChrootSession } from './session.js';
import { sha256Text } from '../util/digest.js';
import { sourceDateEpoch } from '../util/time.js';

export interface GuestFileSpec {
  /** Absolute guest path. */
  path: string;
  /** The content; a stream (a verified download) is piped through without being held in memory. */
  content: string | Buffer | Readable;
  /** Octal mode as text, e.g. "0644". */
  mode?: string;
  owner?: string;
  group?: string;
}

// The parent is made only when missing, found with the shell's own tests (a process each cost ~5 ms a write).
const WRITE_FILE_SCRIPT =
  'set -e; dir=${1%/*}; [ -z "$dir" ] || [ -d "$dir" ] || mkdir -p -- "$dir"; tmp="$1.imagebuilder-new"; cat > "$tmp"; ' +
  'chown -- "$2:$3" "$tmp"; chmod -- "$4" "$tmp"; [ -z "$5" ] || touch -m -d "$5" -- "$tmp"; mv -f -- "$tmp" "$1"';

/**
 * Writes a file through the guest's own tools inside the chroot, so the path and any symlinks on it resolve
 * inside the guest (never on the host) and owner and group names come from the guest's /etc/passwd and
 * /etc/group. The file appears atomically (temp name, then rename). Returns the content's sha256 (for a
 * stream: of the bytes that went through).
 */
export async function writeGuestFile(session: ChrootSession, spec: GuestFileSpec, purpose = `writing ${spec.path}`): Promise<string> {
  let input = spec.content;
  let digest = () => sha256Text(spec.content as string | Buffer);
  if (input instanceof Readable) {
    const hash = createHash('sha256');
    // pipeline() carries a read error of the source on to what the guest's `cat` reads, failing the write.
    const hashing = new Transform({
      transform(chunk: Buffer, _encoding, done) {
        hash.update(chunk);
        done(null, chunk);
      },
    });
    input = pipeline(input, hashing, () => undefined);
    digest = () => hash.digest('hex');
  }
  // Reproducible builds: what the build writes is dated no later than SOURCE_DATE_EPOCH (clamped, as tar's
  // --clamp-mtime does), so the file's mtime is the same in every build; without it, the write's own time.
  const epoch = sourceDateEpoch();
  const mtime = epoch && epoch.getTime() < Date.now() ? [`@${epoch.getTime() / 1000}`] : [];
  await session.exec(['/bin/sh', '-c', WRITE_FILE_SCRIPT, 'write-file', spec.path, spec.owner ?? 'root', spec.group ?? 'root', spec.mode ?? '0644', ...mtime], {
    input,
    needsNoNetwork: true,
    errorCode: 'STEP_FAILED',
    purpose,
    hint: 'check that the owner and group exist in the guest and that no parent of the path is a file',
  });
  return digest();
}

/**
 * Unpacks a tar stream into a guest directory with the guest's own tar, inside the chroot, so entries resolve
 * inside the guest. Modes are kept. With `keepOwners`, owners come from the archive's user and group names,
 * mapped through the guest's /etc/passwd (how `copy` sets an owner); without, everything is root's (how a
 * downloaded upstream tarball is unpacked, whatever uid its builder had).
 */
export async function extractIntoGuest(
  session: ChrootSession,
  tar: Readable | Buffer,
  directory: string,
  options: { keepOwners?: boolean; stripComponents?: number; purpose?: string } = {},
): Promise<void> {
  const flags = [
    options.keepOwners ? '--same-owner' : '--no-same-owner',
    ...(options.stripComponents ? [`--strip-components=${options.stripComponents}`] : []),
  ];
  await session.exec(['/bin/sh', '-c', 'set -e; dir="$1"; shift; mkdir -p -- "$dir"; tar -x -p -f - -C "$dir" "$@"', 'extract', directory, ...flags], {
    input: tar,
    needsNoNetwork: true,
    errorCode: 'STEP_FAILED',
    purpose: options.purpose ?? `unpacking into ${directory}`,
  });
}
