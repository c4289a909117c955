import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';

/** The digests imagebuilder computes: sha256 everywhere, sha512 where a published sums file uses it. */
export type HashAlgorithm = 'sha256' | 'sha512';

export async function sha256File(path: string, signal?: AbortSignal): Promise<string> {
  return (await hashFile(path, ['sha256'], signal)).sha256!;
}

/** Several digests of a file in one read. */
export async function hashFile(path: string, algorithms: readonly HashAlgorithm[], signal?: AbortSignal): Promise<Partial<Record<HashAlgorithm, string>>> {
  const wanted = [...new Set(algorithms)];
  const hashes = wanted.map((algorithm) => createHash(algorithm));
  for await (const chunk of createReadStream(path, { highWaterMark: 4 << 20, signal })) for (const hash of hashes) hash.update(chunk as Buffer);
  return Object.fromEntries(wanted.map((algorithm, i) => [algorithm, hashes[i].digest('hex')]));
}

export function sha256Text(text: string | Buffer): string {
  return createHash('sha256').update(text).digest('hex');
}
