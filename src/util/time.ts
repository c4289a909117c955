import { ImageBuilderError } from './errors.js';

/**
 * SOURCE_DATE_EPOCH (https://reproducible-builds.org/specs/source-date-epoch/): the build's date when set,
 * undefined when unset or empty. A malformed value is an error, as the specification asks, rather than a
 * silent fall back to the current time.
 */
export function sourceDateEpoch(env: NodeJS.ProcessEnv = process.env): Date | undefined {
  const value = env.SOURCE_DATE_EPOCH?.trim();
  if (!value) return undefined;
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(Number(value)) || Number(value) > 253402300799) {
    throw new ImageBuilderError('BAD_INPUT', `SOURCE_DATE_EPOCH="${env.SOURCE_DATE_EPOCH}" is not a number of seconds since 1970-01-01 UTC`, {
      hint: 'set it to an integer such as $(git log -1 --format=%ct), or unset it',
    });
  }
  return new Date(Number(value) * 1000);
}

/** The build's time: SOURCE_DATE_EPOCH when set (reproducible builds), else now. */
export function buildTime(env: NodeJS.ProcessEnv = process.env): Date {
  return sourceDateEpoch(env) ?? new Date();
}

/**
 * A modification time as reproducible builds want it written: never later than SOURCE_DATE_EPOCH
 * (`tar --clamp-mtime` semantics: older times are kept, they are the inputs' own). Unchanged without it.
 */
export function clampTime(time: Date, epoch: Date | undefined): Date {
  return epoch && time.getTime() > epoch.getTime() ? epoch : time;
}
