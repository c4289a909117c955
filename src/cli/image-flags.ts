import { Flags } from '@oclif/core';
import { parseDuration, parseSize } from '../fetch/cache.js';
import { DEFAULT_TIMEOUTS, type HttpTimeouts } from '../fetch/http.js';
import type { DiskImageOptions } from '../fetch/image-source.js';
import { cacheFlag } from './host-flags.js';
import { hostPaths } from './host-flags.js';

/** How every command that takes a disk image verifies and caches it (phase 0). */
export const imageVerifyFlags = {
  checksum: Flags.string({
    description: 'the expected sum of the image as published: sha256:HEX or sha512:HEX (instead of a sums file beside it)',
    helpValue: 'ALGO:HEX',
  }),
  'insecure-skip-verify': Flags.boolean({
    description: 'use a remote image that no sums file names, unverified (the BOM records verified: false)',
    default: false,
  }),
  keyring: Flags.string({
    description: "verify the sums file's OpenPGP signature (detached .gpg/.sign/.sig, or clearsigned) with gpgv against this keyring",
    helpValue: 'FILE',
    env: 'IMAGEBUILDER_KEYRING',
  }),
  offline: Flags.boolean({
    description: 'use the cache alone: a URL must have been fetched before',
    default: false,
    env: 'IMAGEBUILDER_OFFLINE',
  }),
  rehash: Flags.boolean({
    description: 'hash the image again even when its file is unchanged since it was last hashed (its inode, size, mtime and ctime)',
    default: false,
    env: 'IMAGEBUILDER_REHASH',
  }),
  'fetch-deadline': Flags.string({
    description: 'give up a download (every retry and resume included) after this long: 45s, 90m, 6h [default: 6h]',
    helpValue: 'DURATION',
    env: 'IMAGEBUILDER_FETCH_DEADLINE',
  }),
  'fetch-min-rate': Flags.string({
    description: 'give up a download that brings less than this many bytes per second over a minute: 1K, 100K; 0 for no minimum [default: 1K]',
    helpValue: 'SIZE',
    env: 'IMAGEBUILDER_FETCH_MIN_RATE',
  }),
  ...cacheFlag,
};

/** `--disk-image` and its verification flags: spread into a command's flags. */
export const diskImageFlags = {
  'disk-image': Flags.string({
    char: 'i',
    description: 'base disk image (raw, qcow2, vmdk, vhdx, vpc, vdi; .xz/.gz/.zst too): a local path or an http(s):// URL',
    required: true,
    env: 'IMAGEBUILDER_DISK_IMAGE',
  }),
  ...imageVerifyFlags,
};

export function diskImageOptions(flags: {
  checksum?: string;
  'insecure-skip-verify'?: boolean;
  keyring?: string;
  offline?: boolean;
  cache?: string;
  rehash?: boolean;
  'fetch-deadline'?: string;
  'fetch-min-rate'?: string;
}): DiskImageOptions {
  return {
    timeouts: fetchLimits(flags),
    cacheDir: hostPaths(flags).cacheDir,
    rehash: flags.rehash,
    checksum: flags.checksum,
    insecureSkipVerify: flags['insecure-skip-verify'],
    keyring: flags.keyring,
    offline: flags.offline,
  };
}

/** The limits of every download (`--fetch-deadline`, `--fetch-min-rate`) over the default timeouts. */
export function fetchLimits(flags: { 'fetch-deadline'?: string; 'fetch-min-rate'?: string }): HttpTimeouts {
  return {
    ...DEFAULT_TIMEOUTS,
    ...(flags['fetch-deadline'] !== undefined && { deadlineMs: parseDuration(flags['fetch-deadline']) }),
    ...(flags['fetch-min-rate'] !== undefined && { minBytesPerSecond: parseSize(flags['fetch-min-rate']) }),
  };
}
