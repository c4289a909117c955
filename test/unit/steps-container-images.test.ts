import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { containerImagesStep, IMPORT_SCRIPT, parseImageList } from '../../src/steps/container-images.js';
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

  test('stages the host archives on /run, then one guest command starts containerd, imports without unpacking, lists, stops', async () => {
    const { session, calls } = fakeSession((call) => {
      if (call.argv[3] === 'import-images') {
        return {
          stdout: [
            '=== before',
            LS_HEADER,
            'docker.io/library/old:1 application/vnd.oci.image.manifest.v1+json sha256:aaa 1 linux/amd64 -',
            '=== after',
            LS_HEADER,
            'docker.io/library/old:1 application/vnd.oci.image.manifest.v1+json sha256:aaa 1 linux/amd64 -',
            'registry.k8s.io/pause:3.9 application/vnd.oci.image.manifest.v1+json sha256:bbb 734 linux/amd64 x',
            'sha256:ccc application/vnd.oci.image.manifest.v1+json sha256:bbb 734 linux/amd64 x',
          ].join('\n'),
        };
      }
      return undefined;
    });
    const { context, records } = fakeStepContext(session, { recipeDir: dir, architecture: 'arm64' });
    await containerImagesStep.run(context, { archives: ['pause.tar', { guest: '/opt/images/api.tar' }] });
    const stage = '/bin/sh -c mkdir -p "$(dirname "$1")" && cat > "$1" stage';
    expect(calls.map((c) => c.argv.join(' '))).toEqual([
      '/bin/sh -c command -v containerd && command -v ctr',
      '/bin/sh -c cat /etc/containerd/config.toml 2>/dev/null || true',
      `${stage} /run/imagebuilder-containerd/config.toml`,
      `${stage} /run/imagebuilder-containerd/archives/0.tar`,
      `/bin/sh -c ${IMPORT_SCRIPT} import-images k8s.io /run/imagebuilder-containerd/archives/0.tar /opt/images/api.tar`,
    ]);
    expect(calls[2].input).toBe('version = 2\nroot = "/var/lib/containerd"\nstate = "/run/imagebuilder-containerd"\n[grpc]\n  address = "/run/imagebuilder-containerd/containerd.sock"\n');
    expect(calls[3].input).toBe('ARCHIVE-BYTES'); // the host archive is streamed on stdin
    expect(calls[4].env).toEqual({ PLATFORM: 'linux/arm64' });
    expect(IMPORT_SCRIPT).toContain('images import --no-unpack ${PLATFORM:+--platform "$PLATFORM"} "$archive"');
    expect(IMPORT_SCRIPT).toContain("trap 'kill \"$pid\" 2>/dev/null && wait \"$pid\" 2>/dev/null || true' EXIT");
    expect(records.images).toEqual([{ reference: 'registry.k8s.io/pause:3.9', digest: 'sha256:bbb', namespace: 'k8s.io' }]);
  });

  test('honours the root of the guest containerd config; a failed import fails the step', async () => {
    const { session, calls } = fakeSession((call) => {
      if (call.argv.join(' ').includes('config.toml 2>/dev/null')) return { stdout: 'version = 2\nroot = "/data/containerd"\n' };
      if (call.argv[3] === 'import-images') return { exitCode: 1 };
      return undefined;
    });
    const { context } = fakeStepContext(session, { recipeDir: dir });
    await expect(containerImagesStep.run(context, { archives: ['pause.tar'] })).rejects.toMatchObject({ code: 'STEP_FAILED' });
    expect(calls[2].input).toContain('root = "/data/containerd"');
    expect(calls.at(-1)!.env).toEqual({});
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
