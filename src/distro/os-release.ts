import { readGuestText } from '../util/guest-fs.js';

/** Parses os-release(5): KEY=value lines, values optionally quoted with shell-style escapes. */
export function parseOsRelease(text: string): Record<string, string> {
  const fields: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const match = /^([A-Z0-9_]+)=(.*)$/.exec(line.trim());
    if (!match) continue;
    let value = match[2];
    const quoted = /^(["'])(.*)\1$/.exec(value);
    if (quoted) value = quoted[2].replace(/\\(["'$`\\])/g, '$1');
    fields[match[1]] = value;
  }
  return fields;
}

/** Reads the guest's os-release the way systemd does: /etc/os-release, else /usr/lib/os-release. */
export async function readOsRelease(root: string): Promise<Record<string, string> | undefined> {
  for (const path of ['/etc/os-release', '/usr/lib/os-release']) {
    const text = await readGuestText(root, path);
    if (text !== undefined) return parseOsRelease(text);
  }
  return undefined;
}
