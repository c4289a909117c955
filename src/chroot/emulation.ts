import { constants } from 'node:fs';
import { mkdtemp, open, readdir, readFile, realpath, rmdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { programArchitecture, runsNatively, type Architecture } from '../util/architecture.js';
import type { CleanupStack } from '../util/cleanup.js';
import { hasProgramInterpreter } from '../util/elf.js';
import { ImageBuilderError, isImageBuilderError } from '../util/errors.js';
import type { Runner } from '../util/exec.js';
import { exists, resolveInRoot } from '../util/fs.js';
import type { Logger } from '../util/log.js';

/** Where the host's own facts are read; tests point these at a fake host tree. */
export interface EmulationHost {
  /** The host's root: its /bin/sh says what the host runs. */
  root: string;
  /** The mount table (binfmt_misc mounts are looked up in it). */
  mountsFile: string;
  /** Directories searched for qemu-NAME-static and qemu-NAME. */
  searchPath: string[];
  /** Where a private binfmt_misc mount is made when the host has none. */
  tmpDir: string;
}

export const REAL_HOST: EmulationHost = {
  root: '/',
  mountsFile: '/proc/self/mounts',
  searchPath: [...new Set([...(process.env.PATH ?? '').split(delimiter).filter(Boolean), '/usr/local/bin', '/usr/bin'])],
  tmpDir: tmpdir(),
};

export interface EmulationOptions {
  run: Runner;
  log: Logger;
  /** The registration and mount made here are released on it. */
  cleanup: CleanupStack;
  host?: EmulationHost;
}

/** How the guest's programs run on this host. */
export type Emulation =
  | { mode: 'native'; guest?: Architecture }
  /** Through a binfmt_misc entry that was there already, with the F flag (systemd-binfmt, binfmt-support). */
  | { mode: 'existing'; guest: Architecture; entry: string; interpreter: string }
  /** Through an entry registered here for the session and removed when it closes. */
  | { mode: 'registered'; guest: Architecture; entry: string; interpreter: string };

/** One binfmt_misc entry, as the kernel shows it in /proc/sys/fs/binfmt_misc/NAME. */
export interface BinfmtEntry {
  name: string;
  enabled: boolean;
  interpreter: string;
  /** The flag letters: F fix-binary (the interpreter is opened at registration), P, O, C. */
  flags: string;
  offset: number;
  /** Magic entries only (extension entries have none). */
  magic?: Buffer;
  mask?: Buffer;
}

/** Entries this tool (and the fixture script) registers: short-lived, each removed by the run that made it. */
export const OWN_ENTRY_PREFIX = 'imagebuilder-';

export function parseBinfmtEntry(name: string, text: string): BinfmtEntry {
  const fields = new Map<string, string>();
  const lines = text.split('\n');
  for (const line of lines.slice(1)) {
    const match = /^(\S+?):?\s(.*)$/.exec(line);
    if (match) fields.set(match[1], match[2].trim());
  }
  const hex = (key: string) => (fields.has(key) ? Buffer.from(fields.get(key)!, 'hex') : undefined);
  return {
    name,
    enabled: lines[0] === 'enabled',
    interpreter: fields.get('interpreter') ?? '',
    flags: fields.get('flags') ?? '',
    offset: Number(fields.get('offset') ?? 0),
    magic: hex('magic'),
    mask: hex('mask'),
  };
}

/** Whether the kernel would hand a file starting with `bytes` to this entry (fs/binfmt_misc.c check_file). */
export function entryMatches(entry: BinfmtEntry, bytes: Buffer): boolean {
  if (!entry.enabled || !entry.magic) return false;
  for (let i = 0; i < entry.magic.length; i++) {
    const byte = bytes[entry.offset + i];
    if (byte === undefined) return false;
    if ((byte ^ entry.magic[i]) & (entry.mask?.[i] ?? 0xff)) return false;
  }
  return true;
}

function hexEscaped(hex: string): string {
  return hex.replace(/../g, '\\x$&');
}

/**
 * The line written to binfmt_misc's `register` file (Documentation/admin-guide/binfmt-misc.rst):
 * `:name:type:offset:magic:mask:interpreter:flags`. F makes the kernel open the interpreter now, so it
 * need not exist inside the chroot the guest's programs run in.
 */
export function binfmtRegistration(name: string, architecture: Architecture, interpreter: string): string {
  return `:${name}:M::${hexEscaped(architecture.binfmtMagic)}:${hexEscaped(architecture.binfmtMask)}:${interpreter}:F`;
}

/** binfmt_misc mount points; those under an `imagebuilder-` directory belong to another run, which unmounts them. */
async function binfmtMounts(mountsFile: string): Promise<string[]> {
  const text = await readFile(mountsFile, 'utf8');
  return text
    .split('\n')
    .map((line) => line.split(' '))
    .filter((fields) => fields[2] === 'binfmt_misc')
    .map((fields) => fields[1].replace(/\\([0-7]{3})/g, (_, octal) => String.fromCharCode(parseInt(octal, 8))))
    .filter((path) => !path.includes(`/${OWN_ENTRY_PREFIX}`));
}

async function readEntries(dir: string): Promise<BinfmtEntry[]> {
  const entries: BinfmtEntry[] = [];
  for (const name of await readdir(dir)) {
    if (name === 'register' || name === 'status') continue;
    const text = await readFile(join(dir, name), 'utf8').catch(() => undefined);
    if (text !== undefined) entries.push(parseBinfmtEntry(name, text));
  }
  return entries;
}

/** binfmt_misc's control files take one write each, without truncation or creation. */
async function writeControl(path: string, text: string): Promise<void> {
  const file = await open(path, constants.O_WRONLY);
  try {
    await file.write(text);
  } finally {
    await file.close();
  }
}

/** The static qemu-user emulator for `architecture` on this host, or why there is none. */
export async function findEmulator(architecture: Architecture, host: EmulationHost): Promise<{ path?: string; dynamic: string[] }> {
  const dynamic: string[] = [];
  for (const name of [`qemu-${architecture.qemu}-static`, `qemu-${architecture.qemu}`]) {
    for (const dir of host.searchPath) {
      const candidate = join(dir, name);
      if (!(await exists(candidate))) continue;
      const path = await realpath(candidate);
      // A dynamically linked emulator needs the host's loader at exec time, inside the guest's root.
      if ((await hasProgramInterpreter(path).catch(() => undefined)) === false) return { path, dynamic };
      dynamic.push(candidate);
    }
  }
  return { dynamic };
}

const INSTALL_HINT =
  'install the static qemu-user emulators: `apt-get install qemu-user-static` (Debian 12 and Ubuntu; on Debian 13 it brings qemu-user, ' +
  'whose emulators are static, and qemu-user-binfmt), `dnf install qemu-user-static` on Fedora';

let registrations = 0;

/**
 * Makes the guest's programs runnable on this host. Nothing is done when the host runs them itself. For a
 * foreign guest (arm64 on amd64), binfmt_misc must hand them to a static qemu-user emulator: an enabled
 * entry that matches the guest's programs and has the F flag is used as it is; otherwise an entry with F
 * is registered for this session (newest entries match first, so it also wins over an entry without F),
 * and binfmt_misc is mounted privately when the host has not mounted it. Both are released on `cleanup`,
 * so the host is left as it was. Throws before anything is touched when no emulator is installed.
 */
export async function enableEmulation(root: string, options: EmulationOptions): Promise<Emulation> {
  const { run, log, cleanup } = options;
  const host = options.host ?? REAL_HOST;
  const guest = await programArchitecture(root);
  const hostProgram = await programArchitecture(host.root);
  if (!guest || !hostProgram || runsNatively(hostProgram.header, guest.header)) return { mode: 'native', guest: guest?.architecture };

  const hostName = hostProgram.architecture?.debian ?? `ELF machine ${hostProgram.header.machine}`;
  const target = guest.architecture;
  if (!target) {
    throw new ImageBuilderError('BAD_INPUT', `the guest's ${guest.program} is for ELF machine 0x${guest.header.machine.toString(16)}, which imagebuilder cannot run on this ${hostName} host`, {
      hint: 'build this image on a host of its own architecture',
    });
  }
  const what = `the guest is ${target.debian} (${guest.program}) and this host is ${hostName}`;

  // An entry the host already has (systemd-binfmt, binfmt-support) is used when the kernel would pick it
  // and can run it in a chroot: with F, or with an interpreter the guest itself contains.
  let dir = (await binfmtMounts(host.mountsFile))[0];
  if (dir) {
    const status = (await readFile(join(dir, 'status'), 'utf8').catch(() => 'enabled')).trim();
    if (status === 'disabled') {
      throw new ImageBuilderError('ENVIRONMENT', `${what}, and binfmt_misc is disabled on this host: guest programs cannot be handed to an emulator`, {
        hint: `enable it: echo 1 > ${join(dir, 'status')}`,
      });
    }
    const matching = (await readEntries(dir)).filter((entry) => entryMatches(entry, guest.header.bytes));
    const unusable: BinfmtEntry[] = [];
    for (const entry of matching) {
      if (!entry.flags.includes('F') && !(await exists(join(root, await resolveInRoot(root, entry.interpreter))))) unusable.push(entry);
    }
    const usable = matching.find((entry) => !unusable.includes(entry) && !entry.name.startsWith(OWN_ENTRY_PREFIX));
    if (usable && unusable.length === 0) {
      log.info(`${what}: its programs run under ${usable.interpreter} (binfmt_misc entry ${usable.name})`);
      return { mode: 'existing', guest: target, entry: usable.name, interpreter: usable.interpreter };
    }
    for (const entry of unusable) {
      log.warn(
        `binfmt_misc entry ${entry.name} would run the guest's ${target.debian} programs with ${entry.interpreter}, but without the F (fix-binary) flag ` +
          'the kernel looks for that file inside the guest, where it is not; imagebuilder registers its own entry with F for this build ' +
          `(to fix the host: re-register ${entry.name} with F, as Debian's qemu-user-static does)`,
      );
    }
  }

  const emulator = await findEmulator(target, host);
  if (!emulator.path) {
    const found = emulator.dynamic.length ? ` (${emulator.dynamic.join(', ')} is dynamically linked: it cannot start inside the guest)` : '';
    throw new ImageBuilderError('MISSING_TOOL', `${what}: its programs need the static qemu-${target.qemu} emulator, which is not installed${found}`, { hint: INSTALL_HINT });
  }

  if (!dir) {
    // Private, not /proc/sys/fs/binfmt_misc: the kernel drops every entry when the last binfmt_misc mount
    // goes, so a mount shared with another run could vanish under it.
    // Named after this process, so a reaper finds the mount of a build killed by SIGKILL.
    const mountPoint = await mkdtemp(join(host.tmpDir, `${OWN_ENTRY_PREFIX}binfmt-${process.pid}-`));
    cleanup.push(`directory ${mountPoint}`, () => rmdir(mountPoint));
    // Registered before the mount: interrupted while mount runs, it may or may not be there (then umount may fail).
    let outcome: 'mounted' | 'refused' | 'interrupted' = 'mounted';
    cleanup.push(`mount ${mountPoint}`, async () => {
      if (outcome !== 'refused') await run('umount', [mountPoint], { log, allowFailure: outcome === 'interrupted' });
    });
    await run('mount', ['-t', 'binfmt_misc', 'binfmt_misc', mountPoint], {
      log,
      purpose: 'mounting binfmt_misc to run the guest under qemu',
      errorCode: 'ENVIRONMENT',
      hint: 'this kernel needs binfmt_misc (modprobe binfmt_misc) to run programs of another architecture',
    }).catch((error: unknown) => {
      outcome = isImageBuilderError(error) && error.code === 'INTERRUPTED' ? 'interrupted' : 'refused';
      throw error;
    });
    dir = mountPoint;
  }

  // Named after this process, so a reaper removes the entries of a build killed by SIGKILL (reap.ts).
  const entry = `${OWN_ENTRY_PREFIX}${target.qemu}-${process.pid}-${++registrations}`;
  const entryPath = join(dir, entry);
  await writeControl(join(dir, 'register'), binfmtRegistration(entry, target, emulator.path)).catch((error: unknown) => {
    throw new ImageBuilderError('ENVIRONMENT', `registering ${emulator.path} with binfmt_misc failed: ${error instanceof Error ? error.message : String(error)}`, {
      hint: 'imagebuilder must run as root on the host (not in a user namespace) to register an emulator',
      cause: error,
    });
  });
  cleanup.push(`binfmt_misc entry ${entry}`, async () => {
    // Gone already when someone else removed it (or all entries): nothing left to undo.
    if (await exists(entryPath)) await writeControl(entryPath, '-1');
  });
  log.info(`${what}: its programs run under ${emulator.path} (binfmt_misc entry ${entry}, removed at the end)`);
  return { mode: 'registered', guest: target, entry, interpreter: emulator.path };
}
