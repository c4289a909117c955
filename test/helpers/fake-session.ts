import { tmpdir } from 'node:os';
import type { ChrootSession } from '../../src/chroot/session.js';
import type { ExecResult } from '../../src/util/exec.js';
import type { Distro } from '../../src/distro/families.js';
import { detectDistro } from '../../src/distro/families.js';
import { createRecorder, type StepContext } from '../../src/steps/types.js';
import { createLogger } from '../../src/util/log.js';
import { ImageBuilderError } from '../../src/util/errors.js';

export interface FakeCall {
  argv: string[];
  input?: string;
  env?: Record<string, string>;
}

/**
 * A chroot session that runs nothing and records every command with its stdin: for unit tests that prove
 * the exact commands a step runs. Integration tests run the same steps in a real guest.
 */
export function fakeSession(answer: (call: FakeCall) => Partial<ExecResult> | undefined = () => undefined, root = '/fake/root') {
  const calls: FakeCall[] = [];
  const session: ChrootSession = {
    root,
    async exec(argv, options = {}) {
      let input: string | undefined;
      if (typeof options.input === 'string') input = options.input;
      else if (Buffer.isBuffer(options.input)) input = options.input.toString('latin1');
      else if (options.input) {
        const chunks: Buffer[] = [];
        for await (const chunk of options.input) chunks.push(Buffer.from(chunk as Buffer));
        input = Buffer.concat(chunks).toString('latin1');
      }
      const call = { argv, input, env: options.env };
      calls.push(call);
      const result = { command: argv.join(' '), exitCode: 0, stdout: '', stderr: '', output: '', ...answer(call) };
      // Like the real runner: a failure throws unless the caller allows it.
      if (result.exitCode !== 0 && !options.allowFailure) {
        throw new ImageBuilderError(options.errorCode ?? 'COMMAND_FAILED', `${options.purpose ? `${options.purpose}: ` : ''}\`${result.command}\` exited with ${result.exitCode}`, { hint: options.hint });
      }
      return result;
    },
    interactive: async (argv) => {
      calls.push({ argv });
      return 0;
    },
    sweep: async () => 0,
    close: async () => undefined,
  };
  return { session, calls };
}

export const debian12: Distro = detectDistro({ ID: 'debian', VERSION_ID: '12', PRETTY_NAME: 'Debian GNU/Linux 12 (bookworm)' });

/** A step context over a fake session; `records` holds what the step reported for the BOM. */
export function fakeStepContext(session: ChrootSession, overrides: Partial<StepContext> = {}) {
  const records = createRecorder();
  const context: StepContext = {
    session,
    distro: debian12,
    log: createLogger({ write: () => undefined }),
    recipeDir: '/recipes',
    variables: {},
    label: 'step 1/1 (test)',
    record: records.recorder,
    workDir: tmpdir(),
    ...overrides,
  };
  return { context, records };
}
