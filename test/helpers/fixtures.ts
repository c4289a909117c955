import { mkdir, stat } from 'node:fs/promises';
import { execa } from 'execa';
import { REPO, sha256 } from './host.js';

export type Layout = 'gpt-esp' | 'efi-boot' | 'bios-boot' | 'mbr' | 'whole-disk' | 'separate-boot' | 'xfs' | 'btrfs-subvol' | 'selinux-dracut';

export const FIXTURE_CACHE = process.env.IMAGEBUILDER_FIXTURE_CACHE ?? '/var/cache/imagebuilder-fixtures';

/**
 * A real Debian disk image built from Debian's packages by bin/make-debian-image (debootstrap, mkfs -d, sfdisk,
 * qemu-img), independent of the code under test. Built once and cached; tests only ever read it.
 * `arch` builds a guest of another architecture (debootstrap under qemu-user): without a kernel, which would
 * double its cold build under emulation and no test of it needs.
 */
export async function fixtureImage(layout: Layout, format: 'qcow2' | 'raw' = 'qcow2', options: { arch?: 'arm64'; cloudInit?: boolean } = {}): Promise<string> {
  const script = `${REPO}/bin/make-debian-image`;
  const version = (await sha256(script)).slice(0, 12);
  const dir = `${FIXTURE_CACHE}/images`;
  const path = `${dir}/${layout}${options.arch ? `-${options.arch}` : ''}${options.cloudInit ? '-cloud-init' : ''}-${version}.${format}`;
  if (await stat(path).catch(() => undefined)) return path;
  await mkdir(dir, { recursive: true });
  // Foreign-architecture trees are built under qemu-user: without a kernel (slow to install there) unless they boot.
  const arch = options.arch ? ['--arch', options.arch, ...(layout === 'efi-boot' ? [] : ['--no-kernel'])] : [];
  const cloudInit = options.cloudInit ? ['--cloud-init'] : [];
  await execa(script, ['--layout', layout, '--format', format, '--output', path, '--cache-dir', FIXTURE_CACHE, ...arch, ...cloudInit], { stderr: 'inherit' });
  return path;
}

/** The partition that holds each layout's root (and /boot), as the fixture script lays them out. */
export const LAYOUT_PARTITIONS: Record<Layout, { root: number | 'disk'; rootOptions?: string; boot?: number }> = {
  'gpt-esp': { root: 2 },
  'efi-boot': { root: 2 },
  'bios-boot': { root: 1 },
  mbr: { root: 1 },
  'whole-disk': { root: 'disk' },
  'separate-boot': { root: 3, boot: 1 },
  xfs: { root: 1, rootOptions: 'nouuid' },
  'btrfs-subvol': { root: 2, rootOptions: 'subvol=root', boot: 1 },
  'selinux-dracut': { root: 2, boot: 1 },
};
