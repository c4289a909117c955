import { readlink } from 'node:fs/promises';
import { readGuestDir, statGuest } from '../util/guest-fs.js';
import { join } from 'node:path';
import type { Distro } from '../distro/families.js';
import type { InstalledPackage } from '../pkg/types.js';
import type { Logger } from '../util/log.js';
import { resolveInRoot } from '../util/fs.js';

export interface Kernel {
  version: string;
  /** Guest path of the kernel image, when there is one. */
  image?: string;
}

/** Installed kernels: /lib/modules/<version> directories, with the matching /boot/vmlinuz-<version>. */
export async function listKernels(root: string): Promise<Kernel[]> {
  const versions = new Set<string>((await readGuestDir(root, '/lib/modules')) ?? []);
  const images = new Map<string, string>();
  for (const entry of (await readGuestDir(root, '/boot')) ?? []) {
    const match = /^(?:vmlinuz|vmlinux|Image)-(.+)$/.exec(entry);
    if (match) {
      versions.add(match[1]);
      images.set(match[1], `/boot/${entry}`);
    }
  }
  return [...versions].sort().map((version) => ({ version, ...(images.has(version) ? { image: images.get(version) } : {}) }));
}

export interface UnitState {
  unit: string;
  state: 'enabled' | 'masked';
}

/** What an image holds, read from its own databases and files: the part of a BOM any image can give. */
export interface Inventory {
  os: { id?: string; versionId?: string; prettyName?: string; osRelease: Record<string, string> };
  family?: string;
  architecture?: string;
  kernels: Kernel[];
  packages: InstalledPackage[];
  units: UnitState[];
}

/**
 * Enabled and masked units as systemctl leaves them on disk: links in /etc/systemd/system/*.wants|*.requires
 * (enabled), and units in /etc/systemd/system linked to /dev/null (masked).
 */
export async function listUnitStates(root: string): Promise<UnitState[]> {
  const dir = await resolveInRoot(root, '/etc/systemd/system');
  const states = new Map<string, UnitState['state']>();
  for (const entry of (await readGuestDir(root, dir)) ?? []) {
    const guestPath = `${dir}/${entry}`;
    const stat = await statGuest(root, guestPath);
    if (stat?.isSymbolicLink() && (await readlink(join(root, guestPath))) === '/dev/null') states.set(entry, 'masked');
    else if (stat?.isDirectory() && /\.(wants|requires)$/.test(entry)) {
      for (const unit of (await readGuestDir(root, guestPath)) ?? []) if (!states.has(unit)) states.set(unit, 'enabled');
    }
  }
  return [...states].map(([unit, state]) => ({ unit, state })).sort((a, b) => a.unit.localeCompare(b.unit));
}

export async function collectInventory(root: string, distro: Distro, log?: Logger): Promise<Inventory> {
  const manager = distro.family?.packageManager;
  return {
    os: { id: distro.id, versionId: distro.versionId, prettyName: distro.prettyName, osRelease: distro.osRelease },
    family: distro.family?.name,
    architecture: manager ? await manager.architecture(root, log) : undefined,
    kernels: await listKernels(root),
    packages: manager ? await manager.listInstalled(root, log) : [],
    units: await listUnitStates(root),
  };
}
