import { lstat, mkdtemp, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { fixtureImage } from '../helpers/fixtures.js';
import { expectNothingLeft, hostState, runCli, sha256 } from '../helpers/host.js';
import { withImageMounted } from '../helpers/inspect.js';
import { writeRecipe } from '../helpers/recipes.js';

/**
 * The slow paths, once each: the libguestfs appliance mounts the guest (TCG on hosts where its KVM does not
 * work) and virt-sparsify (asked for: the default, auto, uses it only for what this host cannot mount) writes the output.
 */
describe('imagebuilder apply --mount-backend guestmount --sparsify virt-sparsify', () => {
  let work: string;
  beforeAll(async () => {
    work = await mkdtemp('/var/tmp/ib-guestmount-');
  });
  afterAll(() => rm(work, { recursive: true, force: true }));

  test('a small recipe end to end', async () => {
    const input = await fixtureImage('gpt-esp');
    const inputSha = await sha256(input);
    const recipe = await writeRecipe(work, 'small', [
      { file: { path: '/etc/imagebuilder-test', content: 'through guestmount\n', mode: '0600' } },
      { run: 'echo "$(id -u) $SYSTEMD_OFFLINE" > /root/ran.txt' },
    ]);
    const output = join(work, 'small-out.qcow2');
    const before = await hostState();
    const result = await runCli(['apply', recipe, '--disk-image', input, '--output', output, '--mount-backend', 'guestmount', '--sparsify', 'virt-sparsify', '--json']);
    expect(result.stderr).not.toContain('error [');
    expect(result.exitCode).toBe(0);
    expect(result.stderr).toContain('mount backend: guestmount');
    expect(result.stderr).toContain('writing qcow2 output (sparsify: virt-sparsify)');
    expect(await sha256(input)).toBe(inputSha);
    await execa('qemu-img', ['check', output]);
    await withImageMounted(output, 'gpt-esp', async (root) => {
      expect(await readFile(join(root, 'etc/imagebuilder-test'), 'utf8')).toBe('through guestmount\n');
      expect((await lstat(join(root, 'etc/imagebuilder-test'))).mode & 0o777).toBe(0o600);
      expect(await readFile(join(root, 'root/ran.txt'), 'utf8')).toBe('0 1\n');
    });
    const bom = JSON.parse(await readFile(`${output}.bom.json`, 'utf8'));
    expect(bom.mountBackend).toBe('guestmount');
    expect(bom.output.sparsify).toBe('virt-sparsify');
    expect(bom.output.sha256).toBe(await sha256(output));
    await expectNothingLeft(before);
  });
});
