import { readFile } from 'node:fs/promises';

/** Mount points under a directory, from /proc/mounts (octal escapes decoded). */
export async function mountsUnder(dir: string): Promise<string[]> {
  const text = await readFile('/proc/mounts', 'utf8');
  return text
    .split('\n')
    .map((line) => line.split(' ')[1]?.replace(/\\([0-7]{3})/g, (_, octal) => String.fromCharCode(parseInt(octal, 8))))
    .filter((target): target is string => !!target && (target === dir || target.startsWith(`${dir}/`)));
}

/** Whether something is mounted exactly at `target`: a release registered before its mount checks this first. */
export async function isMounted(target: string): Promise<boolean> {
  return (await mountsUnder(target)).includes(target);
}
