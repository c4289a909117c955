import { createHash } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { gzipSync } from 'node:zlib';
import { pack } from 'tar-stream';

const sha = (data: Buffer) => createHash('sha256').update(data).digest('hex');

async function tarOf(entries: { name: string; data: Buffer }[]): Promise<Buffer> {
  const archive = pack();
  const chunks: Buffer[] = [];
  archive.on('data', (chunk) => chunks.push(chunk as Buffer));
  const done = new Promise<void>((resolve) => archive.on('end', () => resolve()));
  for (const entry of entries) archive.entry({ name: entry.name, size: entry.data.length, mtime: new Date(0), mode: 0o644 }, entry.data);
  archive.finalize();
  await done;
  return Buffer.concat(chunks);
}

/**
 * Writes a real OCI image layout archive (oci-layout, index.json, blobs) with one gzip layer holding one file,
 * named `reference` the way `ctr images export` names it. Returns the manifest digest.
 */
export async function writeOciArchive(path: string, reference: string, fileContent: string): Promise<{ manifestDigest: string }> {
  const layerTar = await tarOf([{ name: 'hello.txt', data: Buffer.from(fileContent) }]);
  const layer = gzipSync(layerTar);
  const config = Buffer.from(
    JSON.stringify({ architecture: 'amd64', os: 'linux', config: { Cmd: ['/hello.txt'] }, rootfs: { type: 'layers', diff_ids: [`sha256:${sha(layerTar)}`] } }),
  );
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: `sha256:${sha(config)}`, size: config.length },
      layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: `sha256:${sha(layer)}`, size: layer.length }],
    }),
  );
  const index = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      manifests: [
        {
          mediaType: 'application/vnd.oci.image.manifest.v1+json',
          digest: `sha256:${sha(manifest)}`,
          size: manifest.length,
          annotations: { 'io.containerd.image.name': reference, 'org.opencontainers.image.ref.name': reference.split(':').pop() },
          platform: { architecture: 'amd64', os: 'linux' },
        },
      ],
    }),
  );
  const blobs = [layer, config, manifest].map((data) => ({ name: `blobs/sha256/${sha(data)}`, data }));
  await writeFile(path, await tarOf([{ name: 'oci-layout', data: Buffer.from('{"imageLayoutVersion":"1.0.0"}') }, { name: 'index.json', data: index }, ...blobs]));
  return { manifestDigest: `sha256:${sha(manifest)}` };
}
