import { statSync } from 'node:fs';
import { Type, type Static } from '@sinclair/typebox';
import { Dictionary, OneOf } from '../util/json-schema.js';
import { ImageBuilderError } from '../util/errors.js';
import { FileTooLarge, NotRegularFile, readRegularFileSync } from '../util/fs.js';
import { defineStep } from './types.js';
import { confinedHostPath, hostTreeDigest } from './host-inputs.js';

/** A script file is read into memory and sent on the guest shell's stdin. */
const MAX_SCRIPT_FILE_BYTES = 64 * 2 ** 20;

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
      // A regular file only, as validate checked: a FIFO put there since would block the build on its open.
      let bytes: Buffer | undefined;
      try {
        bytes = readRegularFileSync(path, MAX_SCRIPT_FILE_BYTES);
      } catch (error) {
        const why = error instanceof NotRegularFile ? 'not a regular file' : error instanceof FileTooLarge ? `larger than ${MAX_SCRIPT_FILE_BYTES / 2 ** 20} MiB` : ((error as NodeJS.ErrnoException).code ?? (error as Error).message);
        throw new ImageBuilderError('BAD_RECIPE', `${context.label}: cannot read script file ${path}: ${why}`);
      }
      if (!bytes) throw new ImageBuilderError('BAD_RECIPE', `${context.label}: cannot read script file ${path}: ENOENT`);
      script = bytes.toString('utf8');
    }
    const shell = options.shell ?? '/bin/sh';
    // The script arrives on stdin so no temporary file is left in the image.
    const timeout = options.timeout ?? context.runTimeout?.seconds;
    await context.session.exec([shell, ...(shell.endsWith('sh') ? ['-e'] : []), '-s'], {
      input: script,
      env: options.env,
      timeoutMs: timeout ? timeout * 1000 : undefined,
      timeoutSource: options.timeout ? "the step's timeout" : context.runTimeout?.source,
      log: context.log,
      streamOutput: true,
      errorCode: 'STEP_FAILED',
      purpose: `${context.label} failed`,
      hint: 'fix the script, or debug it inside the image with `imagebuilder shell`',
      timeoutHint: `a script taking more than ${timeout} s is killed: if it is merely slow, its timeout (or the recipe's limits.timeout) raises that`,
    });
  },
});
