import { basename } from 'node:path';
import { ImageBuilderError } from '../util/errors.js';
import type { HashAlgorithm } from '../util/digest.js';

export const HASH_ALGORITHMS: readonly HashAlgorithm[] = ['sha256', 'sha512'];
const HEX_LENGTH: Record<HashAlgorithm, number> = { sha256: 64, sha512: 128 };

/**
 * The sums files phase 0 looks for beside an image, in this order: the names Ubuntu, Debian and the design use
 * (Fedora's `<name>-CHECKSUM` is found by its suffix where the directory can be listed), then the per-image
 * `<image>.sha256` / `<image>.sha512`.
 */
export const SUMS_FILE_NAMES = ['SHA256SUMS', 'sha256sum.txt', 'SHA512SUMS', 'sha512sum.txt', 'CHECKSUM'];
export const perImageSumsNames = (fileName: string) => [`${fileName}.sha256`, `${fileName}.sha512`];
/** Detached signatures of a sums file, as Ubuntu (`.gpg`), Debian (`.sign`) and others (`.sig`, `.asc`) publish them. */
export const SIGNATURE_SUFFIXES = ['.gpg', '.sign', '.sig', '.asc'];

/**
 * The signed text of an OpenPGP clearsigned message (Fedora's CHECKSUM), dash-escaping undone; any other text
 * unchanged. `clearsigned` says whether there was armor. Parsing the stripped text is not a signature check:
 * that is gpgv's job (signature.ts), which returns the text it verified.
 */
export function stripPgpArmor(text: string): { text: string; clearsigned: boolean } {
  const lines = text.split(/\r?\n/);
  const begin = lines.findIndex((line) => line.trim() === '-----BEGIN PGP SIGNED MESSAGE-----');
  if (begin < 0) return { text, clearsigned: false };
  let i = begin + 1;
  while (i < lines.length && lines[i].trim() !== '') i++; // armor headers ("Hash: SHA256")
  const body: string[] = [];
  for (i++; i < lines.length; i++) {
    if (lines[i].startsWith('-----BEGIN PGP SIGNATURE-----')) break;
    body.push(lines[i].startsWith('- ') ? lines[i].slice(2) : lines[i]);
  }
  return { text: body.join('\n'), clearsigned: true };
}

export interface ChecksumEntry {
  /** The file name as listed, without directories or a leading `./`. */
  name: string;
  algorithm: HashAlgorithm;
  /** Lowercase hex. */
  hash: string;
}

const algorithmOfLength = (hex: string): HashAlgorithm | undefined => HASH_ALGORITHMS.find((a) => HEX_LENGTH[a] === hex.length);

/** GNU coreutils escapes names holding `\` or a newline: the line starts with `\` and the name uses `\\`, `\n`. */
function unescapeGnuName(name: string): string {
  return name.replace(/\\(\\|n)/g, (_m, c: string) => (c === 'n' ? '\n' : '\\'));
}

/**
 * Every entry of a sums file in any real-world form: GNU coreutils (`hash  name`, `hash *name`, `\hash  name`),
 * BSD / `--tag` (`SHA256 (name) = hash`, `SHA512 (name) = hash`, Fedora's CHECKSUM), clearsigned or not.
 * The algorithm is the BSD tag, or for GNU lines the hash's length. Comments and other lines are skipped.
 */
export function parseChecksums(text: string): ChecksumEntry[] {
  const entries: ChecksumEntry[] = [];
  const cleanName = (name: string) => basename(name.trim().replace(/^\.\//, ''));
  for (const raw of stripPgpArmor(text).text.split(/\r?\n/)) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const bsd = /^(SHA-?256|SHA-?512) ?\((.+)\) ?= ?([0-9a-fA-F]+)$/i.exec(line);
    if (bsd) {
      const algorithm = bsd[1].replace('-', '').toLowerCase() as HashAlgorithm;
      if (bsd[3].length === HEX_LENGTH[algorithm]) entries.push({ name: cleanName(bsd[2]), algorithm, hash: bsd[3].toLowerCase() });
      continue;
    }
    const gnu = /^(\\?)([0-9a-fA-F]{64}|[0-9a-fA-F]{128}) [ *]?(.+)$/.exec(line);
    if (gnu) {
      const name = gnu[1] ? unescapeGnuName(gnu[3]) : gnu[3];
      entries.push({ name: cleanName(name), algorithm: algorithmOfLength(gnu[2])!, hash: gnu[2].toLowerCase() });
    }
  }
  return entries;
}

/**
 * A per-image checksum file (`<image>.sha256`): a bare hash, or `hash  name` lines, or a BSD line. A bare hash is
 * taken as this file's; `algorithm` (from the file's suffix) is checked against the hash's length.
 */
export function parseImageChecksumFile(text: string, fileName: string, algorithm?: HashAlgorithm): ChecksumEntry | undefined {
  const body = stripPgpArmor(text).text.trim();
  const bare = /^([0-9a-fA-F]{64}|[0-9a-fA-F]{128})$/.exec(body);
  if (bare) {
    const found = algorithmOfLength(bare[1])!;
    if (algorithm && found !== algorithm) return undefined;
    return { name: fileName, algorithm: found, hash: bare[1].toLowerCase() };
  }
  return selectChecksum(parseChecksums(body), fileName);
}

/**
 * The entry for exactly this file name (never a prefix: `x.qcow2` is not `x.qcow2.xz`); of several, the
 * strongest algorithm. Two different sums for one name and algorithm are a broken sums file.
 */
export function selectChecksum(entries: ChecksumEntry[], fileName: string): ChecksumEntry | undefined {
  const matching = entries.filter((entry) => entry.name === fileName);
  for (const algorithm of ['sha512', 'sha256'] as const) {
    const sums = new Set(matching.filter((e) => e.algorithm === algorithm).map((e) => e.hash));
    if (sums.size > 1) {
      throw new ImageBuilderError('VERIFY_FAILED', `the sums file lists ${fileName} with ${sums.size} different ${algorithm} sums`, {
        detail: [...sums].join('\n'),
        hint: 'the sums file is inconsistent: ask its publisher, or give the sum with --checksum',
      });
    }
    if (sums.size === 1) return matching.find((e) => e.algorithm === algorithm);
  }
  return undefined;
}

/**
 * Parses GNU and BSD lines into name → lowercase sha256 (sha512 lines are left out). Kept for the download
 * step, which verifies sha256 only.
 */
export function parseSumsFile(text: string): Map<string, string> {
  const sums = new Map<string, string>();
  for (const entry of parseChecksums(text)) if (entry.algorithm === 'sha256') sums.set(entry.name, entry.hash);
  return sums;
}

export interface ExpectedSum {
  algorithm: HashAlgorithm;
  hash: string;
  /** Where the expected sum came from: a sums file path or URL, or "--checksum". */
  source: string;
  /** The sums file's text as fetched (for the cache record), when it came from one. */
  sumsText?: string;
  /** The keyring that verified the sums file's signature, when one was checked. */
  signedWith?: { keyring: string; signature: string };
}

/** `--checksum sha256:HEX` or `sha512:HEX` (a bare 64 or 128 hex digit sum is taken by its length too). */
export function parseChecksumFlag(value: string): ExpectedSum {
  const match = /^(?:(sha256|sha512):)?([0-9a-fA-F]+)$/i.exec(value.trim());
  const algorithm = match ? ((match[1]?.toLowerCase() as HashAlgorithm | undefined) ?? algorithmOfLength(match[2])) : undefined;
  if (!match || !algorithm || match[2].length !== HEX_LENGTH[algorithm]) {
    throw new ImageBuilderError('BAD_INPUT', `--checksum ${value}: not a sha256:HEX (64 hex digits) or sha512:HEX (128 hex digits) sum`, {
      hint: 'e.g. --checksum sha256:$(sha256sum image.qcow2 | cut -d" " -f1)',
    });
  }
  return { algorithm, hash: match[2].toLowerCase(), source: '--checksum' };
}

/** Throws VERIFY_FAILED naming both sums and where the expected one came from. */
export function verifySum(imagePath: string, actual: Partial<Record<HashAlgorithm, string>>, expected: ExpectedSum): void {
  const got = actual[expected.algorithm];
  if (got === undefined) throw new Error(`internal: no ${expected.algorithm} computed for ${imagePath}`);
  if (got !== expected.hash) {
    throw new ImageBuilderError('VERIFY_FAILED', `checksum mismatch for ${imagePath}`, {
      detail: `expected ${expected.algorithm} ${expected.hash} (from ${expected.source})\nactual   ${expected.algorithm} ${got}`,
      hint: 'the image is corrupt or not the one the sums file describes: download it again, or fix the sums file',
    });
  }
}
