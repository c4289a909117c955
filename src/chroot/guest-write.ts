import type { Readable } from 'node:stream';
import type { ChrootSession } from './session.js';
import { sha256Text } from '../fetch/checksums.js';

export interface GuestFileSpec {
  /** Absolute guest path. */
  path: string;
  content: string | Buffer;
  /** Octal mode as text, e.g. "0644". */
  mode?: string;
  owner?: string;
  group?: string;
}

/**
 * Writes a file through the guest's own tools inside the chroot, so the path and any symlinks on it resolve
 * inside the guest (never on the host) and owner and group names come from the guest's /etc/passwd and
 * /etc/group. The file appears atomically (temp name, then rename). Returns the content's sha256.
 */
export async function writeGuestFile(session: ChrootSession, spec: GuestFileSpec, purpose = `writing ${spec.path}`): Promise<string> {
  const script =
    'set -e; mkdir -p -- "$(dirname -- "$1")"; tmp="$1.imagebuilder-new"; cat > "$tmp"; ' +
    'chown -- "$2:$3" "$tmp"; chmod -- "$4" "$tmp"; mv -f -- "$tmp" "$1"';
  await session.exec(['/bin/sh', '-c', script, 'write-file', spec.path, spec.owner ?? 'root', spec.group ?? 'root', spec.mode ?? '0644'], {
    input: spec.content,
    errorCode: 'STEP_FAILED',
    purpose,
    hint: 'check that the owner and group exist in the guest and that no parent of the path is a file',
  });
  return sha256Text(spec.content);
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
    errorCode: 'STEP_FAILED',
    purpose: options.purpose ?? `unpacking into ${directory}`,
  });
}
