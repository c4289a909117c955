/** A promise's outcome, held until it is awaited: the value, or what it failed with. */
export type Settled<T> = { ok: true; value: T } | { ok: false; failure: unknown };

/**
 * Work started now and awaited later: a promise that never rejects. Node ends the process on a rejection that
 * has no handler by the time it happens, which a plain promise awaited later may not have yet.
 */
export function settle<T>(promise: Promise<T>): Promise<Settled<T>> {
  return promise.then((value) => ({ ok: true, value }), (failure: unknown) => ({ ok: false, failure }));
}

/** The settled promise's value, or its failure thrown. */
export async function settledValue<T>(settled: Promise<Settled<T>>): Promise<T> {
  const outcome = await settled;
  if (outcome.ok) return outcome.value;
  throw outcome.failure;
}
