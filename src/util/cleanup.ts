import type { Logger } from './log.js';

interface Release {
  label: string;
  release: () => Promise<void> | void;
}

/** What `push` returns: the very resource's release, to run early (and only once) before the stack unwinds. */
export interface Held {
  release(): Promise<void>;
}

/**
 * The rollback stack (diskimage-builder's add_rollback): whoever acquires a resource pushes its release
 * right there, and success, failure and signals all unwind it in reverse order.
 */
export class CleanupStack {
  private readonly releases: Release[] = [];

  constructor(private readonly log: Logger) {}

  push(label: string, release: () => Promise<void> | void): Held {
    const entry: Release = { label, release };
    this.releases.push(entry);
    return {
      release: async () => {
        const index = this.releases.indexOf(entry);
        if (index < 0) return;
        this.releases.splice(index, 1);
        await entry.release();
      },
    };
  }

  /**
   * A stack of its own, unwound as one entry of this one: what is pushed on it is released together, at the
   * place in this stack where the child was made (a build's guest before its unfinished layers before its work dir).
   */
  child(label: string): CleanupStack {
    const child = new CleanupStack(this.log);
    // Its failures are logged by its own unwind, each once.
    this.push(label, async () => void (await child.unwind()));
    return child;
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
