import { readFile } from 'node:fs/promises';

/** A path as the kernel's mount tables write it: space, tab, newline and backslash as octal escapes. */
const unescapeMountPath = (field: string) => field.replace(/\\([0-7]{3})/g, (_, octal) => String.fromCharCode(parseInt(octal, 8)));

export interface MountEntry {
  /** The mount's own id, unique while it is mounted: it stays when a rename moves its mount point. */
  id: number;
  /** The mounted filesystem's device, "major:minor" (an anonymous one, as FUSE's, has major 0). */
  device: string;
  target: string;
  type: string;
}

/** Every mount of our mount namespace, from /proc/self/mountinfo. */
export async function mountTable(): Promise<MountEntry[]> {
  const entries: MountEntry[] = [];
  for (const line of (await readFile('/proc/self/mountinfo', 'utf8')).split('\n')) {
    const fields = line.split(' ');
    if (fields.length < 5) continue;
    entries.push({ id: Number(fields[0]), device: fields[2], target: unescapeMountPath(fields[4]), type: line.split(' - ')[1]?.split(' ')[0] ?? '' });
  }
  return entries;
}

/** Mount points under a directory, from /proc/mounts. */
export async function mountsUnder(dir: string): Promise<string[]> {
  const text = await readFile('/proc/mounts', 'utf8');
  return text
    .split('\n')
    .flatMap((line) => {
      const target = line.split(' ')[1];
      return target ? [unescapeMountPath(target)] : [];
    })
    .filter((target) => target === dir || target.startsWith(`${dir}/`));
}

/** Whether something is mounted exactly at `target`: a release registered before its mount checks this first. */
export async function isMounted(target: string): Promise<boolean> {
  return (await mountsUnder(target)).includes(target);
}
