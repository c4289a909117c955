import { mkdir, mkdtemp, rename, rm, stat, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
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
 * known distribution and no known ID_LIKE. Derived without the code under test: qemu-img to raw, the kernel
 * mounts it through a loop device, the file is replaced, qemu-img back to a standalone qcow2 (imagebuilder
 * refuses overlays as input). Cached beside the other fixtures, keyed by the base fixture and this file.
 */
export async function unknownDistroImage(): Promise<string> {
  const base = await fixtureImage('whole-disk');
  const version = (await sha256(fileURLToPath(import.meta.url))).slice(0, 8);
  const path = `${FIXTURE_CACHE}/images/unknown-distro-${base.split('/').pop()!.replace(/\.qcow2$/, '')}-${version}.qcow2`;
  if (await stat(path).catch(() => undefined)) return path;
  await mkdir(`${FIXTURE_CACHE}/images`, { recursive: true });
  const work = await mkdtemp('/var/tmp/ib-unknown-distro-');
  const raw = join(work, 'disk.raw');
  const mnt = join(work, 'mnt');
  try {
    await execa('qemu-img', ['convert', '-O', 'raw', base, raw]);
    await mkdir(mnt);
    await execa('mount', ['-o', 'loop', raw, mnt]);
    try {
      // Debian's /etc/os-release is a link to ../usr/lib/os-release: both are replaced.
      const text = `${Object.entries(UNKNOWN_OS_RELEASE).map(([key, value]) => `${key}="${value}"`).join('\n')}\n`;
      await unlink(join(mnt, 'etc/os-release')).catch(() => undefined);
      await writeFile(join(mnt, 'etc/os-release'), text);
      await writeFile(join(mnt, 'usr/lib/os-release'), text);
    } finally {
      await execa('umount', [mnt]);
    }
    const partial = `${path}.partial-${process.pid}`;
    await execa('qemu-img', ['convert', '-O', 'qcow2', raw, partial]);
    await rename(partial, path);
    return path;
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}
