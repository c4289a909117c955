import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { fixtureImage } from '../helpers/fixtures.js';
import { expectNothingLeft, hostState, REPO, runCli } from '../helpers/host.js';
import { dpkgVersion, withImageMounted } from '../helpers/inspect.js';

/** The product's main job, as the README shows it: the shipped Kubernetes node recipe on a Debian qcow2. */
describe('recipes/examples/k8s-node-containerd.yaml', () => {
  let work: string;
  beforeAll(async () => {
    work = await mkdtemp('/var/tmp/ib-example-');
  });
  afterAll(() => rm(work, { recursive: true, force: true }));

  test('produces a qcow2 whose BOM lists containerd, conntrack and socat at their installed versions', async () => {
    const input = await fixtureImage('gpt-esp');
    const output = join(work, 'k8s-node.qcow2');
    const before = await hostState();
    const result = await runCli(['apply', `${REPO}/recipes/examples/k8s-node-containerd.yaml`, '--disk-image', input, '--output', output, '--sparsify', 'fstrim']);
    expect(result.exitCode).toBe(0);
    expect(result.stdout).toContain(`image: ${output}`);
    expect((JSON.parse((await execa('qemu-img', ['info', '--output=json', output])).stdout) as { format: string }).format).toBe('qcow2');
    const bom = JSON.parse(await readFile(`${output}.bom.json`, 'utf8'));
    await withImageMounted(output, 'gpt-esp', async (root) => {
      for (const name of ['containerd', 'conntrack', 'socat']) {
        const version = await dpkgVersion(root, name);
        expect(version).toBeDefined();
        expect(bom.packages).toContainEqual(expect.objectContaining({ name, version, origin: 'added' }));
      }
      expect(await readFile(join(root, 'etc/containerd/config.toml'), 'utf8')).toContain('SystemdCgroup = true');
      expect(await readFile(join(root, 'etc/modules-load.d/k8s.conf'), 'utf8')).toBe('overlay\nbr_netfilter\n');
    });
    await expectNothingLeft(before);
  });
});
