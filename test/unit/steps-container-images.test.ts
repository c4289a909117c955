import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { containerImagesStep, parseImageList } from '../../src/steps/container-images.js';
import { parseRecipe } from '../../src/recipe/load.js';
import { fakeSession, fakeStepContext } from '../helpers/fake-session.js';

const LS_HEADER = 'REF TYPE DIGEST SIZE PLATFORMS LABELS';

describe('container-images step', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'images-'));
    await writeFile(join(dir, 'pause.tar'), 'ARCHIVE-BYTES');
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  test('starts a private containerd, imports each archive without unpacking, records new images, stops it', async () => {
    let listed = 0;
    const { session, calls } = fakeSession((call) => {
      const command = call.argv.join(' ');
      if (command.includes('echo $!')) return { stdout: '4242\n' };
      if (command.endsWith('images ls')) {
        listed += 1;
        const rows = [LS_HEADER, 'docker.io/library/old:1 application/vnd.oci.image.manifest.v1+json sha256:aaa 1 linux/amd64 -'];
        if (listed > 1) rows.push('registry.k8s.io/pause:3.9 application/vnd.oci.image.manifest.v1+json sha256:bbb 734 linux/amd64 x', 'sha256:ccc application/vnd.oci.image.manifest.v1+json sha256:bbb 734 linux/amd64 x');
        return { stdout: rows.join('\n') };
      }
      return undefined;
    });
    const { context, records } = fakeStepContext(session, { recipeDir: dir, architecture: 'arm64' });
    await containerImagesStep.run(context, { archives: ['pause.tar', { guest: '/opt/images/api.tar' }] });
    const ctr = 'ctr --address /run/imagebuilder-containerd/containerd.sock --namespace k8s.io';
    expect(calls.map((c) => c.argv.join(' '))).toEqual([
      "/bin/sh -c command -v containerd && command -v ctr",
      '/bin/sh -c cat /etc/containerd/config.toml 2>/dev/null || true',
      '/bin/sh -c set -e; mkdir -p /run/imagebuilder-containerd; cat > /run/imagebuilder-containerd/config.toml; containerd --config /run/imagebuilder-containerd/config.toml > /run/imagebuilder-containerd/log 2>&1 < /dev/null & echo $!',
      '/bin/sh -c test -S /run/imagebuilder-containerd/containerd.sock && ctr --address /run/imagebuilder-containerd/containerd.sock version >/dev/null 2>&1',
      `${ctr} images ls`,
      `${ctr} images import --no-unpack --platform linux/arm64 -`,
      `${ctr} images import --no-unpack --platform linux/arm64 /opt/images/api.tar`,
      `${ctr} images ls`,
      '/bin/sh -c kill 4242 2>/dev/null || exit 0; for i in $(seq 100); do kill -0 4242 2>/dev/null || exit 0; sleep 0.1; done; kill -9 4242',
    ]);
    expect(calls[2].input).toBe('version = 2\nroot = "/var/lib/containerd"\nstate = "/run/imagebuilder-containerd"\n[grpc]\n  address = "/run/imagebuilder-containerd/containerd.sock"\n');
    expect(calls[5].input).toBe('ARCHIVE-BYTES'); // the host archive is streamed on stdin
    expect(records.images).toEqual([{ reference: 'registry.k8s.io/pause:3.9', digest: 'sha256:bbb' }]);
  });

  test('honours the root of the guest containerd config, and stops containerd even when an import fails', async () => {
    const { session, calls } = fakeSession((call) => {
      const command = call.argv.join(' ');
      if (command.includes('config.toml 2>/dev/null')) return { stdout: 'version = 2\nroot = "/data/containerd"\n' };
      if (command.includes('echo $!')) return { stdout: '7\n' };
      if (command.includes('images import')) return { exitCode: 1 };
      if (command.endsWith('images ls')) return { stdout: LS_HEADER };
      return undefined;
    });
    const { context } = fakeStepContext(session, { recipeDir: dir });
    await expect(containerImagesStep.run(context, { archives: ['pause.tar'] })).rejects.toThrow();
    expect(calls[2].input).toContain('root = "/data/containerd"');
    expect(calls.at(-1)!.argv.join(' ')).toContain('kill 7');
  });

  test('a missing host archive or a guest without containerd is a clear error before anything starts', async () => {
    const { session, calls } = fakeSession();
    const { context } = fakeStepContext(session, { recipeDir: dir });
    await expect(containerImagesStep.run(context, { archives: ['nope.tar'] })).rejects.toMatchObject({ code: 'BAD_RECIPE', message: expect.stringContaining(join(dir, 'nope.tar')) });
    expect(calls).toEqual([]);
    const missing = fakeSession(() => ({ exitCode: 1 }));
    await expect(containerImagesStep.run(fakeStepContext(missing.session, { recipeDir: dir }).context, { archives: ['pause.tar'] })).rejects.toMatchObject({
      code: 'STEP_FAILED',
      message: expect.stringContaining('containerd and ctr are not installed in the guest'),
    });
  });

  test('image list parsing drops the CRI plugin\'s ID aliases; the example validates', () => {
    expect([...parseImageList(`${LS_HEADER}\nregistry.k8s.io/pause:3.9 t sha256:bbb 1 p l\nsha256:ccc t sha256:bbb 1 p l\n`)]).toEqual([['registry.k8s.io/pause:3.9', 'sha256:bbb']]);
    expect(parseRecipe(JSON.stringify({ name: 'x', steps: [{ 'container-images': containerImagesStep.example }] }), 'x.json').problems).toEqual([]);
  });
});
