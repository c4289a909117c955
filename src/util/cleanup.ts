import type { Logger } from './log.js';

interface Release {
  label: string;
  release: () => Promise<void> | void;
}

/**
 * The rollback stack (diskimage-builder's add_rollback): whoever acquires a resource pushes its release
 * right there, and success, failure and signals all unwind it in reverse order.
 */
export class CleanupStack {
  private readonly releases: Release[] = [];

  constructor(private readonly log: Logger) {}

  push(label: string, release: () => Promise<void> | void): void {
    this.releases.push({ label, release });
  }

  /** Release one resource early (and forget it), e.g. unmounting before conversion. */
  async releaseNow(label: string): Promise<void> {
    const index = this.releases.map((r) => r.label).lastIndexOf(label);
    if (index < 0) return;
    const [entry] = this.releases.splice(index, 1);
    await entry.release();
  }

  get size(): number {
    return this.releases.length;
  }

  /** Releases everything, newest first; one failure does not stop the rest. Returns the failures. */
  async unwind(): Promise<string[]> {
    const failures: string[] = [];
    while (this.releases.length > 0) {
      const entry = this.releases.pop()!;
      try {
        this.log.debug(`release: ${entry.label}`);
        await entry.release();
      } catch (error) {
        const message = `could not release ${entry.label}: ${error instanceof Error ? error.message : String(error)}`;
        failures.push(message);
        this.log.error(message);
      }
    }
    return failures;
  }
}
