import { workRecordErrors } from '../bom/schema.js';
import { TOOL_VERSION } from '../version.js';
import type { Phase1Bom } from './phase1.js';

/**
 * A work record read back from an image (`apply --phases 0,1` writes it; export and inspect read it), as the
 * hostile data it may be: the record, or why it is not one this imagebuilder writes (said by the caller: export
 * refuses, inspect leaves it out). The why reads after the record's name.
 */
export function readWorkRecord(text: string): { record: Phase1Bom } | { problem: string } {
  let record: unknown;
  try {
    record = JSON.parse(text);
  } catch (error) {
    return { problem: `is not JSON (${(error as Error).message})` };
  }
  const version = (record as { bomVersion?: unknown } | null)?.bomVersion;
  if (version !== 1) return { problem: `has an unknown version (${String(JSON.stringify(version) ?? version).slice(0, 40)})` };
  const problems = workRecordErrors(record);
  if (problems.length) {
    // A record another imagebuilder wrote may lack what this one's BOM requires: say so rather than "damaged".
    const writer = (record as { tool?: { version?: unknown } }).tool?.version;
    const other = typeof writer === 'string' && writer !== TOOL_VERSION ? ` (written by imagebuilder ${writer}; this is ${TOOL_VERSION}, which reads its own records: make the work image again with it)` : '';
    return { problem: `is not a work record this imagebuilder writes (${problems.slice(0, 5).join('; ')}${problems.length > 5 ? ' …' : ''})${other}` };
  }
  return { record: record as Phase1Bom };
}
