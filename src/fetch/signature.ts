import { chmod, chown, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { NotRegularFile, openRegularFile } from '../util/fs.js';
import { ImageBuilderError } from '../util/errors.js';
import type { Runner } from '../util/exec.js';
import type { Logger } from '../util/log.js';
import { withBoxUid } from '../util/box-uid.js';
import { boxFailed, requireBoxedTool, unprivilegedCommand } from '../util/unprivileged.js';

/**
 * The binary packets of an ASCII-armored OpenPGP key file (`gpg --export --armor`, a distribution's `.asc`):
 * gpgv 2.2 (Debian 12) reads only binary keyrings. Several armored blocks are concatenated.
 */
export function dearmor(text: string): Buffer {
  const blocks = [...text.matchAll(/-----BEGIN PGP [A-Z ]+-----\r?\n([\s\S]*?)-----END PGP [A-Z ]+-----/g)];
  if (!blocks.length) throw new ImageBuilderError('BAD_INPUT', 'the keyring holds no armored OpenPGP block', { hint: 'give a keyring file (gpg --export > keyring.gpg) or an armored key' });
  return Buffer.concat(
    blocks.map((block) => {
      const lines = block[1].split(/\r?\n/);
      const blank = lines.findIndex((line) => line.trim() === '');
      const body = lines.slice(blank + 1).filter((line) => line.trim() && !line.startsWith('='));
      return Buffer.from(body.join(''), 'base64');
    }),
  );
}

export interface SignatureCheck {
  /** The user's keyring: binary (`gpg --export`), keybox, or armored. */
  keyring: string;
  /** The sums file as fetched. */
  data: Buffer;
  /** Its detached signature, or none for a clearsigned file. */
  signature?: Buffer;
  /** For messages: where the sums file and signature came from. */
  dataSource: string;
  signatureSource: string;
  run: Runner;
  log?: Logger;
  signal?: AbortSignal;
}

/**
 * What gpgv wrote of a clearsigned file, in a directory the box could write: the file itself (a link it made there
 * is not followed), regular, no larger than the clearsigned file it came from.
 */
async function readVerifiedText(path: string, atMost: number): Promise<string> {
  const notTheText = (why: string) => new ImageBuilderError('VERIFY_FAILED', `gpgv's output is not the text it verified (${why})`);
  const opened = await openRegularFile(path, { follow: false }).catch((error: unknown) => {
    if (error instanceof NotRegularFile) throw notTheText('not a regular file');
    throw error;
  });
  if (!opened) throw notTheText('gpgv wrote none');
  const { handle, size } = opened;
  try {
    if (size > atMost) throw notTheText(`${size} bytes, more than the ${atMost} signed`);
    return (await handle.readFile()).toString('utf8');
  } finally {
    await handle.close();
  }
}

/**
 * Verifies a sums file's OpenPGP signature with `gpgv` against only the user's keyring, in a private home
 * (no trust database, nothing of the user's ~/.gnupg). Returns the text that was signed: for a clearsigned
 * file what gpgv verified (never text outside the signed part), else the file itself. A bad or unknown
 * signature is VERIFY_FAILED.
 */
export async function verifySignature(check: SignatureCheck): Promise<string> {
  const keyringText = await readFile(resolve(check.keyring)).catch((error: NodeJS.ErrnoException) => {
    throw new ImageBuilderError('BAD_INPUT', `cannot read the keyring ${check.keyring}: ${error.code ?? error.message}`, { hint: 'give --keyring the path of an OpenPGP public keyring' });
  });
  await requireBoxedTool('gpgv', `--keyring: the sums file's signature is checked with it`);
  const dir = await mkdtemp(join(tmpdir(), 'imagebuilder-gpgv-'));
  try {
    // gpgv parses the signature and the sums file (from the network) in the unprivileged box, as a uid of its own
    // (not nobody, whose other processes on the host it could reach). It reads them from this directory, root's
    // and read-only to it (as /gpgv), and writes only into out/ (as /gpgv-out), its uid's: no other process on
    // the host can plant anything where root writes.
    const out = join(dir, 'out');
    await mkdir(out, { mode: 0o700 });
    const input = async (name: string, content: Buffer) => {
      await writeFile(join(dir, name), content, { flag: 'wx' });
      await chmod(join(dir, name), 0o644); // whatever the umask: the box's uid reads it
    };
    const armored = keyringText.subarray(0, 200).toString('latin1').includes('-----BEGIN PGP');
    await input('keyring.gpg', armored ? dearmor(keyringText.toString('latin1')) : keyringText);
    await input('sums', check.data);
    const args = ['gpgv', '--homedir', '/gpgv-out', '--keyring', '/gpgv/keyring.gpg', '--output', '/gpgv-out/verified'];
    if (check.signature) {
      await input('sums.sig', check.signature);
      args.push('/gpgv/sums.sig', '/gpgv/sums');
    } else {
      args.push('/gpgv/sums');
    }
    await chmod(dir, 0o755);
    // Read back while the uid is still held: after its release another box may run as it.
    return await withBoxUid('gpgv', async (uid) => {
      await chown(out, uid, uid);
      const [sandbox, boxed] = unprivilegedCommand(args, { uid, binds: [{ host: dir, inside: '/gpgv' }, { host: out, inside: '/gpgv-out', writable: true }] });
      const result = await check.run(sandbox, boxed, {
        allowFailure: true,
        log: check.log,
        signal: check.signal,
        display: `${args.join(' ')} (unprivileged, in bwrap)`,
        purpose: `checking the signature of ${check.dataSource}`,
      });
      if (result.exitCode !== 0 && boxFailed(result.output)) {
        throw new ImageBuilderError('ENVIRONMENT', `the sandbox gpgv runs in could not start: ${result.output.trim().split('\n')[0]}`, { hint: 'imagebuilder runs as root, where bubblewrap needs no user namespace: `imagebuilder doctor` checks the host' });
      }
      if (result.exitCode !== 0) {
        throw new ImageBuilderError('VERIFY_FAILED', `the signature of ${check.dataSource} does not verify with the keyring ${check.keyring}`, {
          detail: `signature: ${check.signatureSource}\n${result.output.trim()}`,
          hint: 'the sums file was altered, or it is signed by a key that is not in this keyring: check --keyring',
        });
      }
      check.log?.info(`signature of ${check.dataSource} verified (${check.signatureSource}, keyring ${check.keyring})`);
      return check.signature ? check.data.toString('utf8') : await readVerifiedText(join(out, 'verified'), check.data.length);
    }, { log: check.log, signal: check.signal });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
