import type { ErrorObject } from 'ajv';
import { isMap, isPair, isScalar, LineCounter, parseDocument, type Document, type Node } from 'yaml';
import { closest } from '../util/template.js';

/**
 * YAML read with positions, and ajv errors turned into `file:line:column: message` problems. Shared by every
 * file a user writes (recipes, includes, --vars files, matrix files) so they all point at the same kind of place.
 */
export interface LocatedProblem {
  location: string;
  message: string;
}

export class Locator {
  constructor(
    readonly file: string,
    private readonly doc: Document,
    private readonly lines: LineCounter,
  ) {}

  at(offset: number | undefined): string {
    if (offset === undefined) return `${this.file}:1:1`;
    const { line, col } = this.lines.linePos(offset);
    return `${this.file}:${line}:${col}`;
  }

  /** Position of the value at a JSON path; with `key`, of that key inside the map at the path. */
  of(path: (string | number)[], key?: string): string {
    const node = (path.length ? this.doc.getIn(path, true) : this.doc.contents) as Node | undefined;
    if (key !== undefined && isMap(node)) {
      const pair = node.items.find((item) => isPair(item) && isScalar(item.key) && item.key.value === key);
      if (pair && isScalar(pair.key)) return this.at(pair.key.range?.[0]);
    }
    return this.at(node?.range?.[0]);
  }

  /** A scalar as written: `1.30` stays "1.30" (YAML would read the number 1.3), `true` stays "true". */
  text(path: (string | number)[]): string | undefined {
    const node = this.doc.getIn(path, true) as Node | undefined;
    if (!isScalar(node)) return undefined;
    return typeof node.source === 'string' && typeof node.value !== 'string' ? node.source : String(node.value);
  }
}

export interface SourceFile {
  path: string;
  text: string;
  locate: Locator;
  data: Record<string, unknown>;
}

export function pathOf(instancePath: string): (string | number)[] {
  return instancePath
    .split('/')
    .slice(1)
    .map((part) => part.replace(/~1/g, '/').replace(/~0/g, '~'))
    .map((part) => (/^\d+$/.test(part) ? Number(part) : part));
}

export function dotted(path: (string | number)[]): string {
  return path.map((part, i) => (typeof part === 'number' ? `[${part}]` : i === 0 ? part : `.${part}`)).join('');
}

function describeAjvError(error: ErrorObject, where: string, allowedKeys: () => string[], documentName: string): string {
  const subject = where || documentName;
  switch (error.keyword) {
    case 'additionalProperties': {
      const extra = (error.params as { additionalProperty: string }).additionalProperty;
      return `${subject}: unknown key "${extra}"${closest(extra, allowedKeys())}; allowed: ${allowedKeys().join(', ')}`;
    }
    case 'required':
      return `${subject}: missing required key "${(error.params as { missingProperty: string }).missingProperty}"`;
    case 'enum':
      return `${subject} must be one of ${(error.params as { allowedValues: unknown[] }).allowedValues.map((v) => JSON.stringify(v)).join(', ')}`;
    case 'pattern':
      return `${subject} ${error.message} (got ${JSON.stringify(error.data)})`;
    case 'not':
      return `${subject} cannot be used together with the other keys given here (see \`imagebuilder steps\` for which keys go together)`;
    default:
      return `${subject} ${error.message}`;
  }
}

/** Converts ajv errors to problems with positions, dropping the noise of oneOf branches that were not meant. */
export function problemsFrom(errors: ErrorObject[], prefix: (string | number)[], locate: Locator, documentName = 'the recipe'): LocatedProblem[] {
  const relevant = errors.filter((e) => e.keyword !== 'oneOf' && e.keyword !== 'if');
  // For a oneOf between a string and an object form, keep the errors of the branch whose type matched.
  const typeMatched = relevant.filter((e) => e.keyword !== 'type' || !relevant.some((o) => o !== e && o.instancePath === e.instancePath && o.keyword !== 'type'));
  const chosen = typeMatched.length ? typeMatched : relevant;
  const seen = new Set<string>();
  const problems: LocatedProblem[] = [];
  // "one of these keys" schemas fail with one `required` per branch: say it once, naming them all.
  const alternatives = new Map<string, string[]>();
  for (const error of chosen) {
    if (error.keyword === 'required' && error.schemaPath.includes('/oneOf/')) {
      alternatives.set(error.instancePath, [...(alternatives.get(error.instancePath) ?? []), (error.params as { missingProperty: string }).missingProperty]);
    }
  }
  for (const [instancePath, keys] of alternatives) {
    if (keys.length < 2) continue;
    const path = [...prefix, ...pathOf(instancePath)];
    problems.push({ location: locate.of(path), message: `${dotted(path)}: needs exactly one of the keys ${keys.map((k) => `"${k}"`).join(', ')}` });
  }
  for (const error of chosen) {
    if (error.keyword === 'required' && (alternatives.get(error.instancePath)?.length ?? 0) > 1) continue;
    const path = [...prefix, ...pathOf(error.instancePath)];
    const key = error.keyword === 'additionalProperties' ? (error.params as { additionalProperty: string }).additionalProperty : undefined;
    const allowed = () => Object.keys((error.parentSchema?.properties as object | undefined) ?? {});
    const problem = { location: locate.of(path, key), message: describeAjvError(error, dotted(path), allowed, documentName) };
    const id = `${problem.location} ${problem.message}`;
    if (!seen.has(id)) problems.push(problem);
    seen.add(id);
  }
  return problems;
}

export function parseSource(text: string, path: string): { file?: SourceFile; problems: LocatedProblem[] } {
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: true });
  const locate = new Locator(path, doc, lines);
  if (doc.errors.length) {
    return { problems: doc.errors.map((error) => ({ location: locate.at(error.pos[0]), message: `YAML syntax: ${error.message.split('\n')[0]}` })) };
  }
  const data = doc.toJS() as Record<string, unknown>;
  return { file: { path, text, locate, data }, problems: [] };
}
