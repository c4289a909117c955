import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { ImageBuilderError } from '../util/errors.js';

/** The sums files phase 0 looks for beside an image, in the order the design names them. */
export const SUMS_FILE_NAMES = ['SHA256SUMS', 'sha256sum.txt'];

export async function sha256File(path: string, signal?: AbortSignal): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 4 << 20, signal })) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

export function sha256Text(text: string | Buffer): string {
  return createHash('sha256').update(text).digest('hex');
}

/**
 * Parses GNU coreutils lines (`hash  name`, `hash *name`) and BSD lines (`SHA256 (name) = hash`)
 * into name → lowercase hash. Comments and blank lines are skipped.
 */
export function parseSumsFile(text: string): Map<string, string> {
  const sums = new Map<string, string>();
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const bsd = /^SHA256 \((.+)\) = ([0-9a-fA-F]{64})$/.exec(line);
    const gnu = /^([0-9a-fA-F]{64}) [ *]?(.+)$/.exec(line);
    if (bsd) sums.set(basename(bsd[1]), bsd[2].toLowerCase());
    else if (gnu) sums.set(basename(gnu[2].replace(/^\.\//, '')), gnu[1].toLowerCase());
  }
  return sums;
}

export interface ExpectedSum {
  sha256: string;
  /** Where the expected sum came from: a sums file path, or "--checksum". */
  source: string;
}

/** Looks beside the image for a sums file that names it. None found is not an error for a local image. */
export async function findExpectedSum(imagePath: string): Promise<ExpectedSum | undefined> {
  const name = basename(imagePath);
  for (const sumsName of SUMS_FILE_NAMES) {
    const sumsPath = join(dirname(imagePath), sumsName);
    let text: string;
    try {
      text = await readFile(sumsPath, 'utf8');
    } catch {
      continue;
    }
    const sha256 = parseSumsFile(text).get(name);
    if (sha256) return { sha256, source: sumsPath };
  }
  return undefined;
}

export function verifySum(imagePath: string, actual: string, expected: ExpectedSum): void {
  if (actual !== expected.sha256) {
    throw new ImageBuilderError('VERIFY_FAILED', `checksum mismatch for ${imagePath}`, {
      detail: `expected sha256 ${expected.sha256} (from ${expected.source})\nactual   sha256 ${actual}`,
      hint: 'the image is corrupt or not the one the sums file describes: download it again, or fix the sums file',
    });
  }
}
