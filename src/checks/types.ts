import type { Static, TSchema } from '@sinclair/typebox';
import { plainSchema, type JsonSchema } from '../util/json-schema.js';

/** What one probe's script gave, inside the guest (booted or mounted). */
export interface ProbeOutput {
  exitCode: number;
  stdout: string;
}

export interface Verdict {
  passed: boolean;
  /** What was found, in words or as the guest printed it. */
  observed: string;
  /** What the check asked for. */
  expected: string;
}

/**
 * One assertion of a check ("enabled", "mode 0644"): a shell script run inside the guest, the same script
 * booted or on the mounted image, and how its result is judged. So the offline run and the booted run of a
 * check agree wherever both apply.
 */
export interface Probe {
  /** The attribute asserted, for the report: "enabled", "running", "mode". */
  attribute: string;
  /** Run with `/bin/sh -c` in the guest; its exit status and stdout are what `judge` sees. */
  script: string;
  /** Needs a booted system (a live kernel, running services), not just the image's files. */
  boot: boolean;
  judge(output: ProbeOutput): Verdict;
}

/**
 * One check type, defined once like a step type: its schema (the type derived from it), its documentation,
 * and the probes a value of it makes. The registry (registry.ts) drives recipe validation, check files, the
 * schema and the README table.
 */
export interface CheckType<Spec = unknown> {
  /** The key in a recipe's `checks:` list and in a check file. */
  key: string;
  summary: string;
  description: string;
  schema: JsonSchema;
  example: Spec;
  /** For the docs, when whether it is judged on the image depends on its value (command: `boot: false`). */
  onImage?: string;
  /** A one-line name of one check: "service containerd". */
  describe(spec: Spec): string;
  probes(spec: Spec): Probe[];
}

export function defineCheck<Schema extends TSchema>(type: Omit<CheckType<Static<Schema>>, 'schema'> & { schema: Schema }): CheckType<Static<Schema>> {
  return { ...type, schema: plainSchema(type.schema) };
}

/** A check as declared: its type, its value, and where it was written (file:line:column or a suite's name). */
export interface Check {
  type: CheckType<any>;
  spec: unknown;
  location: string;
}

/** Whether `text` matches a pattern: a substring, a /regular expression/, or either after `!` (must not match), as goss reads them. */
export function matchesPattern(text: string, pattern: string): boolean {
  if (pattern.startsWith('!')) return !matchesPattern(text, pattern.slice(1));
  const regex = /^\/(.*)\/([imsu]*)$/s.exec(pattern);
  return regex ? new RegExp(regex[1], `${regex[2]}m`).test(text) : text.includes(pattern);
}

/** The first line of what a probe printed, short enough for a table. */
export function firstLine(text: string): string {
  const line = text.trim().split('\n')[0] ?? '';
  return line.length > 120 ? `${line.slice(0, 117)}...` : line;
}
