import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { locateHostPaths } from '../../src/cli/host-flags.js';
import Apply from '../../src/commands/apply.js';
import Matrix from '../../src/commands/matrix.js';
import Inspect from '../../src/commands/inspect.js';
import Fetch from '../../src/commands/fetch.js';
import { EXIT_CODES, EXIT_CODE_MEANINGS, ImageBuilderError, toImageBuilderError } from '../../src/util/errors.js';

const envOf = (flags: Record<string, { env?: string }>) => Object.fromEntries(Object.entries(flags).filter(([, f]) => f.env).map(([name, f]) => [name, f.env]));

describe('pipeline-facing CLI surface', () => {
  test('every host flag a CI system sets has its IMAGEBUILDER_* variable, the same on every command', () => {
    expect(envOf(Apply.flags as never)).toEqual({
      'disk-image': 'IMAGEBUILDER_DISK_IMAGE',
      'allow-host-path': 'IMAGEBUILDER_ALLOW_HOST_PATH',
      keyring: 'IMAGEBUILDER_KEYRING',
      offline: 'IMAGEBUILDER_OFFLINE',
      cache: 'IMAGEBUILDER_CACHE',
      sbom: 'IMAGEBUILDER_SBOM',
      'work-dir': 'IMAGEBUILDER_WORK_DIR',
      'mount-backend': 'IMAGEBUILDER_MOUNT_BACKEND',
      untrusted: 'IMAGEBUILDER_UNTRUSTED',
      sparsify: 'IMAGEBUILDER_SPARSIFY',
      'keep-work-dir': 'IMAGEBUILDER_KEEP_WORK_DIR',
      'no-cache': 'IMAGEBUILDER_NO_CACHE',
      rehash: 'IMAGEBUILDER_REHASH',
      'fetch-deadline': 'IMAGEBUILDER_FETCH_DEADLINE',
      'fetch-min-rate': 'IMAGEBUILDER_FETCH_MIN_RATE',
      'memory-limit': 'IMAGEBUILDER_MEMORY_LIMIT',
      'pids-limit': 'IMAGEBUILDER_PIDS_LIMIT',
      'host-port': 'IMAGEBUILDER_HOST_PORTS',
      'allow-network': 'IMAGEBUILDER_ALLOW_NETWORKS',
      accel: 'IMAGEBUILDER_ACCEL',
    });
    expect(envOf(Matrix.flags as never)).toMatchObject({ 'allow-network': 'IMAGEBUILDER_ALLOW_NETWORKS', jobs: 'IMAGEBUILDER_JOBS', cache: 'IMAGEBUILDER_CACHE', 'work-dir': 'IMAGEBUILDER_WORK_DIR', offline: 'IMAGEBUILDER_OFFLINE', sparsify: 'IMAGEBUILDER_SPARSIFY', 'no-cache': 'IMAGEBUILDER_NO_CACHE', rehash: 'IMAGEBUILDER_REHASH' });
    expect(envOf(Inspect.flags as never)).toMatchObject({ cache: 'IMAGEBUILDER_CACHE', 'work-dir': 'IMAGEBUILDER_WORK_DIR', 'mount-backend': 'IMAGEBUILDER_MOUNT_BACKEND', untrusted: 'IMAGEBUILDER_UNTRUSTED' });
    expect(envOf(Fetch.flags as never)).toMatchObject({
      cache: 'IMAGEBUILDER_CACHE',
      offline: 'IMAGEBUILDER_OFFLINE',
      rehash: 'IMAGEBUILDER_REHASH',
      'fetch-deadline': 'IMAGEBUILDER_FETCH_DEADLINE',
      'fetch-min-rate': 'IMAGEBUILDER_FETCH_MIN_RATE',
    });
  });

  test('oclif.manifest.json, which oclif reads instead of the commands, has exactly the commands, flags and args of the code', async () => {
    const root = fileURLToPath(new URL('../..', import.meta.url));
    const manifestPath = join(root, 'oclif.manifest.json');
    if (!existsSync(manifestPath)) throw new Error('no oclif.manifest.json: run `npm run build` (it writes the manifest after tsc)');
    const manifest = JSON.parse(readFileSync(manifestPath, 'utf8')) as { commands: Record<string, { flags: Record<string, unknown>; args: Record<string, unknown>; summary?: string }> };
    const commandsDir = join(root, 'src', 'commands');
    const files = (readdirSync(commandsDir, { recursive: true }) as string[]).filter((name) => name.endsWith('.ts'));
    const idOf = (file: string) => file.replace(/\.ts$/, '').split('/').join(':');
    expect(Object.keys(manifest.commands).sort()).toEqual(files.map(idOf).sort());
    for (const file of files) {
      const command = (await import(join(commandsDir, file))).default as { flags?: Record<string, unknown>; args?: Record<string, unknown>; summary?: string };
      const cached = manifest.commands[idOf(file)];
      expect({ flags: Object.keys(cached.flags).sort(), args: Object.keys(cached.args).sort(), summary: cached.summary }).toEqual({
        flags: Object.keys(command.flags ?? {}).sort(),
        args: Object.keys(command.args ?? {}).sort(),
        summary: command.summary,
      });
    }
  });

  test('the README exit-code table is the one --help prints, and every error code maps into it', () => {
    const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
    const rows = [...readme.matchAll(/^\| (\d+) \| (.+) \|$/gm)].map((m) => [Number(m[1]), m[2]]);
    expect(rows).toEqual(EXIT_CODE_MEANINGS);
    const documented = EXIT_CODE_MEANINGS.map(([code]) => code);
    for (const code of Object.values(EXIT_CODES)) expect(documented).toContain(code);
  });

  test('an unexpected exception is an internal error: exit code 1, asking for a report', () => {
    const failure = toImageBuilderError(new TypeError("Cannot read properties of undefined (reading 'x')"));
    expect(failure).toMatchObject({ code: 'INTERNAL', exitCode: 1 });
    expect(failure.render()).toContain('hint: this is a bug in imagebuilder; please report it');
    expect(toImageBuilderError(new ImageBuilderError('STEP_FAILED', 'x')).exitCode).toBe(4);
  });
});

describe('where this host keeps things', () => {
  test('absolute whatever was given: the cache check walks up from it, mount points are compared with the kernel\'s paths', () => {
    expect(locateHostPaths({ cache: 'rel-cache', 'work-dir': 'rel-work' }, {})).toMatchObject({ cacheDir: join(process.cwd(), 'rel-cache'), workDir: join(process.cwd(), 'rel-work') });
    expect(locateHostPaths({}, { XDG_CACHE_HOME: '/x/cache' }).cacheDir).toBe('/x/cache/imagebuilder');
  });
});
