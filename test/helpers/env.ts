/** Runs `body` with SOURCE_DATE_EPOCH set to `value` (unset for undefined), restoring the caller's value after. */
export async function withSourceDateEpoch<T>(value: string | undefined, body: () => Promise<T>): Promise<T> {
  const previous = process.env.SOURCE_DATE_EPOCH;
  if (value === undefined) delete process.env.SOURCE_DATE_EPOCH;
  else process.env.SOURCE_DATE_EPOCH = value;
  try {
    return await body();
  } finally {
    if (previous === undefined) delete process.env.SOURCE_DATE_EPOCH;
    else process.env.SOURCE_DATE_EPOCH = previous;
  }
}
