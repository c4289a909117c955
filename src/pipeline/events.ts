/**
 * Machine-readable progress of a build (`--json` prints one per line on stdout, logs stay on stderr). Steps are
 * numbered from 1, as the logs number them.
 */
export type BuildEvent =
  | { event: 'phase-started'; phase: 0 | 1 | 2 }
  | { event: 'step-started'; step: number; of: number; type: string; name?: string; description: string }
  | { event: 'step-finished'; step: number; durationMs: number; layer?: string }
  | { event: 'step-cached'; step: number; layer: string; unpinned?: string }
  | { event: 'step-skipped'; step: number; reason: string }
  | { event: 'step-failed'; step: number; durationMs: number; error: string }
  | { event: 'artifact-written'; path: string; format: string; sha256: string };

export type EventSink = (event: BuildEvent) => void;

export const ignoreEvents: EventSink = () => undefined;
