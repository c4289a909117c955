import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Ajv } from 'ajv';
import { REPO, runCli } from '../helpers/host.js';

/** `imagebuilder validate` as users run it: no root, no image; exit 2 and file:line:column on every problem. */
describe('imagebuilder validate', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'validate-'));
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  test('the built CLI carries every schema compiled to code, and each judges as ajv compiling it at run time does', async () => {
    type Validate = ((data: unknown) => boolean) & { errors?: unknown };
    const { PRECOMPILED } = (await import(join(REPO, 'dist/recipe/precompiled.js'))) as { PRECOMPILED: Record<string, Validate> };
    const { AJV_OPTIONS, validatorSchemas } = (await import(join(REPO, 'dist/recipe/validators.js'))) as { AJV_OPTIONS: object; validatorSchemas: () => Record<string, () => object> };
    const schemas = validatorSchemas();
    expect(Object.keys(PRECOMPILED).sort()).toEqual(Object.keys(schemas).sort());
    expect(Object.keys(schemas)).toEqual(expect.arrayContaining(['envelope-true', 'step-packages', 'step-file', 'check-service']));
    const samples = [{}, { name: 'x', steps: [{}], extra: 1 }, { install: 'socat', instal: [1] }, { path: 'relative', content: 2, mode: '999' }, { unit: 1, state: 'up' }, { images: [{ url: 'x' }], builds: 'no' }];
    for (const [key, schema] of Object.entries(schemas)) {
      const atRunTime = new Ajv(AJV_OPTIONS).compile(schema());
      for (const sample of samples) {
        expect([key, PRECOMPILED[key](sample), PRECOMPILED[key].errors]).toEqual([key, atRunTime(sample), atRunTime.errors]);
      }
    }
  });

  test('every shipped recipe is valid', async () => {
    const result = await runCli(['validate', `${REPO}/recipes/kubernetes-node.yaml`, `${REPO}/recipes/examples/k8s-node-containerd.yaml`, `${REPO}/recipes/examples/hardened-node.yaml`]);
    expect(result.stderr).toBe('');
    expect(result.exitCode).toBe(0);
    expect(result.stdout.trim()).toBe('3 recipe(s) valid');
  });

  test('a typo in a key, a wrong type, an undefined variable and a missing include: each located, each with its fix', async () => {
    const recipe = join(dir, 'broken.yaml');
    await writeFile(
      recipe,
      [
        'name: broken',
        'variables:',
        '  version: "1.30.2"',
        'steps:',
        '  - packages:',
        '      instal: [kubelet]',
        '  - sysctl:',
        '      settings: [net.ipv4.ip_forward]',
        '  - run: "echo {{ verion }}"',
        '  - include: parts/missing.yaml',
      ].join('\n'),
    );
    const result = await runCli(['validate', recipe]);
    expect(result.exitCode).toBe(2);
    const lines = result.stderr.trim().split('\n');
    expect(lines).toEqual([
      `${recipe}:10:14: cannot include "parts/missing.yaml": no such file (${join(dir, 'parts/missing.yaml')}); include paths are relative to the file that includes them`,
      `${recipe}:6:7: steps[0].packages: unknown key "instal" (did you mean "install"?); allowed: install, remove, upgrade, hold, disable_excludes`,
      `${recipe}:8:17: steps[1].sysctl.settings must be object`,
      `${recipe}:9:10: undefined variable "verion" (did you mean "version"?): define it under \`variables:\` or pass --set verion=VALUE`,
      'error [BAD_RECIPE]: 4 problem(s) in 1 recipe(s)',
      'hint: see `imagebuilder steps` for each step type and its keys',
    ]);
  });

  test('--set of an unknown variable is refused', async () => {
    const result = await runCli(['validate', `${REPO}/recipes/kubernetes-node.yaml`, '--set', 'kubernetes_verison=1.31.0']);
    expect(result.exitCode).toBe(2);
    expect(result.stderr).toContain('--set kubernetes_verison: unknown variable "kubernetes_verison" (did you mean "kubernetes_version"?)');
  });
});
