import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { fixtureImage } from '../helpers/fixtures.js';
import { expectNothingLeft, hostState, runCli } from '../helpers/host.js';
import { withImageMounted } from '../helpers/inspect.js';
import { writeOciArchive } from '../helpers/oci.js';
import { writeRecipe } from '../helpers/recipes.js';

/** A real containerd (Debian's) inside the guest imports an OCI archive the test made, then stops. */
describe('container-images step', () => {
  let work: string;
  beforeAll(async () => {
    work = await mkdtemp('/var/tmp/ib-images-');
  });
  afterAll(() => rm(work, { recursive: true, force: true }));

  test('imports an OCI archive into k8s.io and another into a namespace of its own, records reference, digest and namespace, leaves no containerd running', async () => {
    const input = await fixtureImage('gpt-esp');
    const { manifestDigest } = await writeOciArchive(join(work, 'pause.tar'), 'registry.k8s.io/pause:3.9', 'hello from the test\n');
    const tools = await writeOciArchive(join(work, 'tools.tar'), 'example.com/tools:1', 'another namespace\n');
    const recipe = await writeRecipe(work, 'images', [
      { packages: { install: ['containerd'] } },
      { 'container-images': { archives: ['pause.tar'] } },
      { 'container-images': { archives: ['tools.tar'], namespace: 'tools' } },
    ]);
    const output = join(work, 'images-out.qcow2');
    const before = await hostState();
    const result = await runCli(['apply', recipe, '--disk-image', input, '--output', output, '--mount-backend', 'fuse', '--sparsify', 'fstrim']);
    expect(result.stderr).not.toContain('error [');
    expect(result.exitCode).toBe(0);
    expect(result.stderr).not.toContain('left running inside the guest'); // the step stopped its containerd itself
    const bom = JSON.parse(await readFile(`${output}.bom.json`, 'utf8'));
    // Each with the namespace it went into (the node suite looks for it there on the booted node).
    expect(bom.containerImages).toEqual([
      { reference: 'registry.k8s.io/pause:3.9', digest: manifestDigest, namespace: 'k8s.io' },
      { reference: 'example.com/tools:1', digest: tools.manifestDigest, namespace: 'tools' },
    ]);
    await withImageMounted(output, 'gpt-esp', async (root) => {
      const content = join(root, 'var/lib/containerd/io.containerd.content.v1.content/blobs/sha256');
      const manifest = JSON.parse(await readFile(join(content, manifestDigest.slice('sha256:'.length)), 'utf8'));
      // Every blob the manifest names is in the store; the metadata database knows the image in k8s.io.
      for (const blob of [manifest.config, ...manifest.layers]) await readFile(join(content, blob.digest.slice('sha256:'.length)));
      const metadata = await readFile(join(root, 'var/lib/containerd/io.containerd.metadata.v1.bolt/meta.db'));
      expect(metadata.includes(Buffer.from('registry.k8s.io/pause:3.9'))).toBe(true);
      expect(metadata.includes(Buffer.from('k8s.io'))).toBe(true);
      // The private state directory was on the session's tmpfs /run: nothing of it is in the image.
      await expect(execa('ls', [join(root, 'run/imagebuilder-containerd')])).rejects.toThrow();
    });
    expect((await execa('pgrep', ['-f', 'imagebuilder-containerd'], { reject: false })).stdout).toBe('');
    await expectNothingLeft(before);
  });
});
