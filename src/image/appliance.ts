import { createWriteStream } from 'node:fs';
import { mkdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import { hasEsp, PARTITION_TABLE_BYTES } from './partition-table.js';
import { sha256File, sha256Text } from '../util/digest.js';
import type { Runner } from '../util/exec.js';
import type { Logger } from '../util/log.js';
import { packFile, type TarHeader } from '../util/tar-pack.js';
import { ovaManifest, ovfDescriptor, ovfOsType, type GuestOs } from './ovf.js';
import { convertImage, imageInfo, readImageStart, type ImageFormat } from './qemu-img.js';

/**
 * The cloud packages made from a finished image of ours: an OVA (OVF 1.0 + streamOptimized VMDK + manifest in
 * one ustar tar) and GCE's gzip'd GNU tar holding `disk.raw`. Their intermediate files go in the work directory
 * and are removed; the guest's data is only ever copied, as the disk image's bytes.
 */

export interface ApplianceOptions {
  log: Logger;
  signal?: AbortSignal;
  /** Where the intermediate VMDK or raw disk is written (and removed). */
  workDir: string;
  /** The date of every tar member (the build's). */
  mtime: Date;
}

/** The image an appliance is made from: one of ours, its format named. */
export interface ApplianceSource {
  path: string;
  format: ImageFormat;
}

const GIB = 1024 ** 3;

/** A name for the OVA's members and its virtual system: the output's stem, in characters every importer takes. */
export function ovaName(stem: string): string {
  return stem.replace(/[^A-Za-z0-9._-]+/g, '-').replace(/^[.-]+/, '').slice(0, 64) || 'image';
}

/**
 * Writes an OVA at `target`: `<name>.ovf` first (importers read the descriptor before the disk), then
 * `<name>-disk1.vmdk` (streamOptimized) and `<name>.mf` (SHA256 of both). The descriptor names the guest OS (from
 * the BOM's os-release), the firmware (EFI when the partition table has an ESP) and the disk's virtual size.
 */
export async function writeOva(
  run: Runner,
  source: ApplianceSource,
  target: string,
  guest: { name: string; os: GuestOs; architecture?: string },
  options: ApplianceOptions,
): Promise<{ firmware: 'efi' | 'bios' }> {
  const { log, signal, workDir } = options;
  const name = ovaName(guest.name);
  const capacity = (await imageInfo(run, source.path, log, source.format)).virtualSize;
  const firmware = hasEsp(await readImageStart(run, source.path, source.format, PARTITION_TABLE_BYTES, workDir, log)) ? 'efi' : 'bios';
  const vmdk = { name: `${name}-disk1.vmdk`, path: join(workDir, `ova-${process.pid}.vmdk`) };
  try {
    await convertImage(run, source.path, vmdk.path, 'vmdk', { log, signal, sourceFormat: source.format });
    const vmdkSize = (await stat(vmdk.path)).size;
    const descriptor = Buffer.from(
      ovfDescriptor({ name, disk: { href: vmdk.name, size: vmdkSize }, capacity, firmware, os: ovfOsType(guest.os, guest.architecture) }),
    );
    const manifest = Buffer.from(
      ovaManifest([
        { name: `${name}.ovf`, sha256: sha256Text(descriptor) },
        { name: vmdk.name, sha256: await sha256File(vmdk.path, signal) },
      ]),
    );
    const pack = tar.pack();
    const writing = pipeline(pack, createWriteStream(target, { mode: 0o644 }), { signal });
    const header = (memberName: string, size: number) => ({ name: memberName, size, mode: 0o644, mtime: options.mtime, uid: 0, gid: 0, type: 'file' as const });
    try {
      await packBuffer(pack, header(`${name}.ovf`, descriptor.length), descriptor);
      await packFile(pack, header(vmdk.name, vmdkSize), vmdk.path);
      await packBuffer(pack, header(`${name}.mf`, manifest.length), manifest);
      pack.finalize();
    } catch (error) {
      pack.destroy(error as Error);
    }
    await writing;
    log.info(`ova: ${name}.ovf (firmware ${firmware}, ${capacity} bytes), ${vmdk.name} (${vmdkSize} bytes), ${name}.mf`);
    return { firmware };
  } finally {
    await rm(vmdk.path, { force: true });
  }
}

function packBuffer(pack: tar.Pack, header: TarHeader, content: Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    pack.entry(header, content, (error) => (error ? reject(error) : resolve()));
  });
}

/**
 * Writes GCE's image archive at `target`: `disk.raw` alone in a gzip'd GNU (oldgnu) tar, as `gcloud compute images
 * create --source-uri` takes it. The raw disk is grown to a whole number of GiB, which GCE requires (said in the
 * log). GNU tar writes it (`--sparse`): our own file, read as data, its holes recorded as sparse-member maps
 * rather than gigabytes of zeroes; tar-stream writes no sparse members.
 */
export async function writeGceTar(run: Runner, source: ApplianceSource, target: string, options: ApplianceOptions): Promise<{ size: number }> {
  const { log, signal } = options;
  const dir = join(options.workDir, `gce-${process.pid}`);
  await mkdir(dir, { recursive: true });
  const raw = join(dir, 'disk.raw');
  try {
    await convertImage(run, source.path, raw, 'raw', { log, signal, sourceFormat: source.format });
    const virtualSize = (await stat(raw)).size;
    const size = Math.ceil(virtualSize / GIB) * GIB;
    if (size !== virtualSize) {
      await run('qemu-img', ['resize', '-q', '-f', 'raw', raw, String(size)], { log, signal, purpose: 'rounding the GCE disk up to whole GiB' });
      log.warn(`gce: the disk is ${virtualSize} bytes, rounded up to ${size / GIB} GiB as GCE requires; a GPT's backup header is then not at the disk's end until the guest moves it (--grow to a whole number of GiB avoids this)`);
    }
    await run(
      'tar',
      ['--create', '--format=oldgnu', '--sparse', '--gzip', '--file', target, '--directory', dir, '--owner=0', '--group=0', '--numeric-owner', '--mode=0644', `--mtime=@${Math.floor(options.mtime.getTime() / 1000)}`, '--', 'disk.raw'],
      { log, signal, purpose: 'writing the GCE image archive' },
    );
    return { size };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
