import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { ChrootSession } from '../chroot/session.js';
import type { InstalledPackage, PackageManager, PackageSpec } from './types.js';

/** Keeps the guest's own configuration files when a package ships a newer one, never asks. */
const APT_OPTIONS = ['-y', '-q', '-o', 'Dpkg::Options::=--force-confdef', '-o', 'Dpkg::Options::=--force-confold', '-o', 'Dpkg::Use-Pty=0'];

/** Parses a dpkg status file (deb822 stanzas) into the installed packages. */
export function parseDpkgStatus(text: string): InstalledPackage[] {
  const packages: InstalledPackage[] = [];
  for (const stanza of text.split(/\n\s*\n/)) {
    const fields = new Map<string, string>();
    for (const line of stanza.split('\n')) {
      const match = /^([A-Za-z0-9-]+):\s*(.*)$/.exec(line);
      if (match) fields.set(match[1], match[2]);
    }
    const status = fields.get('Status')?.split(/\s+/);
    if (!fields.get('Package') || status?.[2] !== 'installed') continue;
    const source = fields.get('Source')?.split(' ')[0];
    packages.push({
      name: fields.get('Package')!,
      version: fields.get('Version')!,
      architecture: fields.get('Architecture') ?? 'all',
      source: source ?? fields.get('Package')!,
    });
  }
  return packages.sort((a, b) => a.name.localeCompare(b.name) || a.architecture.localeCompare(b.architecture));
}

export function aptInstallArgs(packages: PackageSpec[]): string[] {
  return ['apt-get', 'install', ...APT_OPTIONS, '--no-install-recommends', ...packages.map((p) => (p.version ? `${p.name}=${p.version}` : p.name))];
}

export function createApt(): PackageManager {
  // Package lists are fetched once per session, before the first install.
  const updated = new WeakSet<ChrootSession>();
  const update = async (session: ChrootSession) => {
    if (updated.has(session)) return;
    await session.exec(['apt-get', 'update', '-q'], { streamOutput: true, purpose: 'apt-get update in the guest', errorCode: 'STEP_FAILED', hint: "check the guest's /etc/apt/sources.list and that its mirror is reachable from this host" });
    updated.add(session);
  };
  return {
    name: 'apt',
    async install(session, packages) {
      await update(session);
      await session.exec(aptInstallArgs(packages), {
        streamOutput: true,
        purpose: 'installing packages',
        errorCode: 'STEP_FAILED',
        hint: 'check the package names and versions: `apt-cache policy NAME` inside `imagebuilder shell` lists what is available',
      });
      await session.exec(['apt-get', 'clean'], { purpose: 'cleaning the apt cache' });
    },
    async remove(session, names) {
      await session.exec(['apt-get', 'purge', ...APT_OPTIONS, ...names], { streamOutput: true, purpose: 'removing packages', errorCode: 'STEP_FAILED' });
      await session.exec(['apt-get', 'autoremove', '--purge', ...APT_OPTIONS], { streamOutput: true, purpose: 'removing unused dependencies', errorCode: 'STEP_FAILED' });
    },
    async listInstalled(root) {
      return parseDpkgStatus(await readFile(join(root, 'var/lib/dpkg/status'), 'utf8'));
    },
    async architecture(root) {
      const dpkg = (await this.listInstalled(root)).find((p) => p.name === 'dpkg');
      return dpkg?.architecture;
    },
  };
}
