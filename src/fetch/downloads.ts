import { fetchBytes, fetchToFile, type SizeCap, type StepFetchOptions } from './http.js';

/**
 * Where a step's downloads come from (a download step's file and checksum file, a repository step's key): the
 * network by default; an air-gapped bundle (src/bundle/) records them while it is made and serves them to
 * `apply --bundle`, which reaches no network at all.
 */
export interface StepDownloads {
  /** A small resource (a key, a checksum file), refused beyond `cap`. */
  bytes(url: string, options: StepFetchOptions & { cap?: SizeCap }): Promise<Buffer>;
  /** A file of any size streamed to `path`; its sha256 computed on the way. */
  toFile(url: string, path: string, options: StepFetchOptions): Promise<{ sha256: string; size: number }>;
}

export const networkDownloads: StepDownloads = { bytes: fetchBytes, toFile: fetchToFile };
