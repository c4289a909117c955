import { randomBytes } from 'node:crypto';
import { open, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';

/**
 * A small real qcow2 image (8 MiB virtual, `size` MiB of random data, so its clusters are allocated and a
 * download of it spans many chunks), made with qemu-img: enough for fetch and cache tests.
 */
export async function makeSmallQcow2(dir: string, name = 'small.qcow2', size = 4): Promise<string> {
  const raw = join(dir, `${name}.raw`);
  await execa('qemu-img', ['create', '-q', '-f', 'raw', raw, `${size * 2}M`]);
  const file = await open(raw, 'r+');
  try {
    await file.write(randomBytes(size << 20), 0, size << 20, 1 << 20);
  } finally {
    await file.close();
  }
  const path = join(dir, name);
  await execa('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', raw, path]);
  await rm(raw);
  return path;
}
