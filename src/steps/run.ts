import { statSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { Type, type Static } from '@sinclair/typebox';
import { Dictionary, OneOf } from '../util/json-schema.js';
import { ImageBuilderError } from '../util/errors.js';
import { defineStep } from './types.js';
import { confinedHostPath, hostTreeDigest } from './host-inputs.js';

const runSchema = OneOf([
  Type.String({ minLength: 1, description: 'The script, run with /bin/sh -e.' }),
  Type.Object(
    {
      script: Type.Optional(Type.String({ minLength: 1, description: 'The script text.' })),
      file: Type.Optional(Type.String({ minLength: 1, description: 'A script file on the host, relative to the recipe.' })),
      env: Type.Optional(Dictionary(Type.String(), { description: 'Extra environment variables.' })),
      timeout: Type.Optional(Type.Integer({ minimum: 1, description: 'Seconds before the script is killed.' })),
      shell: Type.Optional(Type.String({ pattern: '^/', description: 'Interpreter inside the guest (default /bin/sh).' })),
    },
    { additionalProperties: false, oneOf: [{ required: ['script'] }, { required: ['file'] }] },
  ),
]);

export type RunSpec = Static<typeof runSchema>;

export const runStep = defineStep({
  key: 'run',
  summary: 'Run a shell script inside the guest',
  description:
    'Runs an inline script, or a script file from the host (relative to the recipe), inside the guest with `sh -e` ' +
    '(or the given shell). A non-zero exit stops the build. Output goes to the build log. `timeout` is in seconds ' +
    '(default: the recipe\'s `limits.timeout`, else 30 minutes).',
  example: 'echo "net.ipv4.ip_forward = 1" > /etc/sysctl.d/99-forward.conf',
  schema: runSchema,
  hostPaths: (spec) => (typeof spec === 'string' || spec.file === undefined ? [] : [{ at: ['file'], path: spec.file }]),
  async cacheInputs(spec, environment) {
    if (typeof spec === 'string' || spec.file === undefined) return {};
    return { digests: { file: await hostTreeDigest(confinedHostPath(environment, spec.file)) } };
  },
  check(spec, environment) {
    if (typeof spec === 'string' || spec.file === undefined) return [];
    const path = confinedHostPath(environment, spec.file);
    return statSync(path, { throwIfNoEntry: false })?.isFile() ? [] : [`cannot read script file ${path}; host paths are relative to the recipe`];
  },
  describe: (spec) => {
    const text = typeof spec === 'string' ? spec : (spec.script ?? spec.file ?? '');
    const first = text.trim().split('\n')[0];
    return `run ${first.length > 60 ? `${first.slice(0, 57)}...` : first}`;
  },
  async run(context, spec) {
    const options = typeof spec === 'string' ? { script: spec } : spec;
    let script = options.script;
    if (options.file !== undefined) {
      const path = confinedHostPath(context, options.file);
      script = await readFile(path, 'utf8').catch((error: NodeJS.ErrnoException) => {
        throw new ImageBuilderError('BAD_RECIPE', `${context.label}: cannot read script file ${path}: ${error.code ?? error.message}`);
      });
    }
    const shell = options.shell ?? '/bin/sh';
    // The script arrives on stdin so no temporary file is left in the image.
    const timeout = options.timeout ?? context.runTimeoutSeconds;
    await context.session.exec([shell, ...(shell.endsWith('sh') ? ['-e'] : []), '-s'], {
      input: script,
      env: options.env,
      timeoutMs: timeout ? timeout * 1000 : undefined,
      log: context.log,
      streamOutput: true,
      errorCode: 'STEP_FAILED',
      purpose: `${context.label} failed`,
      hint: `fix the script, or debug it inside the image with \`imagebuilder shell\`${timeout ? ` (a script taking more than ${timeout} s is killed: its timeout, or the recipe's limits.timeout, raises that)` : ''}`,
    });
  },
});
