/**
 * One error type for everything the user can act on. `code` is stable (tests and pipelines match on it);
 * `hint` says how to fix it; `detail` carries the failing command and the tail of its output.
 */
export type ErrorCode =
  | 'BAD_RECIPE'
  | 'BAD_INPUT'
  | 'VERIFY_FAILED'
  | 'STEP_FAILED'
  | 'CHECK_FAILED'
  | 'MISSING_TOOL'
  | 'ENVIRONMENT'
  | 'COMMAND_FAILED'
  | 'INTERRUPTED'
  | 'INTERNAL';

/** Exit codes, documented in README.md: pipelines branch on them. */
export const EXIT_CODES: Record<ErrorCode, number> = {
  INTERNAL: 1,
  BAD_RECIPE: 2,
  BAD_INPUT: 2,
  VERIFY_FAILED: 3,
  STEP_FAILED: 4,
  MISSING_TOOL: 5,
  ENVIRONMENT: 5,
  COMMAND_FAILED: 6,
  CHECK_FAILED: 7,
  INTERRUPTED: 130,
};

/** What each exit code means, in order: `--help` and the README table show this. */
export const EXIT_CODE_MEANINGS: [number, string][] = [
  [0, 'success'],
  [1, 'internal error (a bug: please report it)'],
  [2, 'bad recipe, matrix or input (recipe problems come with file:line:column)'],
  [3, 'verification failed (checksum mismatch, unverifiable image, bad signature)'],
  [4, 'a step failed'],
  [5, 'the host lacks a tool or capability (the message says which package)'],
  [6, 'a host command failed (mounting, converting …)'],
  [7, 'a check failed (`imagebuilder test`, `apply --test`, or a recipe\'s checks at the end of `apply`), or the booted image did not come up'],
  [130, 'interrupted (SIGINT, SIGTERM, SIGHUP or SIGQUIT); everything was released'],
];

export class ImageBuilderError extends Error {
  readonly code: ErrorCode;
  readonly hint?: string;
  readonly detail?: string;

  constructor(code: ErrorCode, message: string, options: { hint?: string; detail?: string; cause?: unknown } = {}) {
    super(message, { cause: options.cause });
    this.name = 'ImageBuilderError';
    this.code = code;
    this.hint = options.hint;
    this.detail = options.detail;
  }

  get exitCode(): number {
    return EXIT_CODES[this.code];
  }

  /** The full text shown to a user: what failed, the command output, how to fix it. */
  render(): string {
    const parts = [`error [${this.code}]: ${this.message}`];
    if (this.detail) parts.push(this.detail.replace(/^/gm, '  | '));
    if (this.hint) parts.push(`hint: ${this.hint}`);
    return parts.join('\n');
  }
}

export function isImageBuilderError(error: unknown): error is ImageBuilderError {
  return error instanceof ImageBuilderError;
}

export function toImageBuilderError(error: unknown): ImageBuilderError {
  if (isImageBuilderError(error)) return error;
  const message = error instanceof Error ? error.message : String(error);
  return new ImageBuilderError('INTERNAL', message, {
    cause: error,
    detail: error instanceof Error ? error.stack : undefined,
    hint: 'this is a bug in imagebuilder; please report it with the command line and this output',
  });
}

/** The message of anything thrown, for logs and events. */
export function errorMessage(error: unknown): string {
  // Not instanceof: an error of another realm (a vm context, jest's) is an Error all the same.
  const message = (error as { message?: unknown } | null | undefined)?.message;
  return typeof message === 'string' ? message : String(error);
}
