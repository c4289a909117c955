import { mkdir, stat } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { deriveImage } from './derive-image.js';
import { FIXTURE_CACHE, fixtureImage } from './fixtures.js';
import { sha256 } from './host.js';

/** What the derived image's /etc/os-release says: a distribution imagebuilder does not know. */
export const UNKNOWN_OS_RELEASE = {
  ID: 'imagebuilder-test-unknown',
  ID_LIKE: 'nothing-known',
  VERSION_ID: '0.1',
  PRETTY_NAME: 'Unknown Test Linux 0.1 (synthetic: the whole-disk Debian fixture with another os-release)',
};

/**
 * The whole-disk Debian fixture (one ext4 filesystem, no partition table) with an /etc/os-release that names no
 * known distribution and no known ID_LIKE, derived without the code under test (deriveImage: a standalone qcow2,
 * since imagebuilder refuses overlays as input). Cached beside the other fixtures, keyed by the base fixture and
 * the helpers that make it.
 */
export async function unknownDistroImage(): Promise<string> {
  const base = await fixtureImage('whole-disk');
  const version = (await sha256(fileURLToPath(import.meta.url))).slice(0, 4) + (await sha256(fileURLToPath(new URL('./derive-image.ts', import.meta.url)))).slice(0, 4);
  const path = `${FIXTURE_CACHE}/images/unknown-distro-${base.split('/').pop()!.replace(/\.qcow2$/, '')}-${version}.qcow2`;
  if (await stat(path).catch(() => undefined)) return path;
  await mkdir(`${FIXTURE_CACHE}/images`, { recursive: true });
  const text = `${Object.entries(UNKNOWN_OS_RELEASE).map(([key, value]) => `${key}="${value}"`).join('\n')}\n`;
  // Debian's /etc/os-release is a link to ../usr/lib/os-release: both become this file.
  return deriveImage(base, path, { '/etc/os-release': text, '/usr/lib/os-release': text });
}
