import { readFileSync } from 'node:fs';
import { CHECK_TYPES, findCheckType } from '../checks/registry.js';
import { schemaValidator } from './validators.js';
import type { Check, CheckType } from '../checks/types.js';
import { ImageBuilderError } from '../util/errors.js';
import { closest } from '../util/template.js';
import { parseSource, problemsFrom, type LocatedProblem, type SourceFile } from './located-yaml.js';

/**
 * Checks as users write them: the `checks:` list of a recipe or a check file (our format, one check type per
 * item, as steps are), and goss files as goss renders them (service, command, file, kernel-param, package,
 * port, mount). Every problem is located; a goss key we do not support is an error, never skipped.
 */

const validatorFor = (type: CheckType<any>) => schemaValidator(`check-${type.key}`);

/** A `checks:` item before validation: where it is and what it says (variables already rendered). */
export interface RawCheck {
  file: SourceFile;
  at: (string | number)[];
  value: Record<string, unknown>;
}

/** Validates the items of a `checks:` list against their check types. */
export function parseChecks(raws: RawCheck[], problems: LocatedProblem[], documentName = 'the recipe'): (Check & { name?: string })[] {
  const checks: (Check & { name?: string })[] = [];
  const known = CHECK_TYPES.map((type) => type.key);
  for (const raw of raws) {
    const typeKeys = Object.keys(raw.value ?? {}).filter((key) => key !== 'name');
    const type = typeKeys.length === 1 ? findCheckType(typeKeys[0]) : undefined;
    if (!type) {
      const unknown = typeKeys.find((key) => !findCheckType(key));
      const where = `checks[${raw.at.at(-1)}]`;
      problems.push({
        location: raw.file.locate.of(raw.at, unknown),
        message: typeKeys.length === 0 ? `${where} has no check type; expected one of: ${known.join(', ')}`
          : unknown ? `${where}: unknown check type "${unknown}"${closest(unknown, known)}; expected one of: ${known.join(', ')}`
            : `${where} has more than one check type (${typeKeys.join(', ')}); split it into one check each`,
      });
      continue;
    }
    const validate = validatorFor(type);
    if (!validate(raw.value)) {
      problems.push(...problemsFrom(validate.errors ?? [], raw.at, raw.file.locate, documentName));
      continue;
    }
    checks.push({ type, spec: raw.value[type.key], location: raw.file.locate.of(raw.at), ...(raw.value.name ? { name: String(raw.value.name) } : {}) });
  }
  return checks;
}

/** goss's resource keys we read, and the check type each becomes. */
const GOSS_TYPES: Record<string, string> = { service: 'service', command: 'command', file: 'file', 'kernel-param': 'kernel_param', package: 'package', port: 'port', mount: 'mount' };

/** The attributes we read of each goss resource, as goss names them; `skip` on any. */
const GOSS_ATTRIBUTES: Record<string, string[]> = {
  service: ['enabled', 'running'],
  command: ['exit-status', 'stdout', 'exec', 'timeout'],
  file: ['exists', 'mode', 'owner', 'group', 'filetype', 'contents', 'contains'],
  'kernel-param': ['value'],
  package: ['installed', 'versions'],
  port: ['listening'],
  mount: ['exists', 'filesystem', 'opts'],
};

/** One goss resource as our check's value (goss's names and units made ours). */
function fromGoss(resource: string, name: string, attributes: Record<string, unknown>): Record<string, unknown> {
  switch (resource) {
    case 'service':
      return { name, ...attributes };
    case 'command': {
      const { exec, 'exit-status': exitStatus, timeout, ...rest } = attributes;
      // goss's timeout is in milliseconds.
      return { run: exec ?? name, ...(exitStatus !== undefined ? { exit_status: exitStatus } : {}), ...(typeof timeout === 'number' ? { timeout: Math.max(1, Math.ceil(timeout / 1000)) } : {}), ...rest };
    }
    case 'file': {
      const { contents, contains, ...rest } = attributes;
      const patterns = contents ?? contains;
      return { path: name, ...rest, ...(patterns !== undefined ? { contains: patterns } : {}) };
    }
    case 'kernel-param':
      return { name, ...attributes };
    case 'package':
      return { name, ...attributes };
    case 'port': {
      const match = /^(tcp|udp)6?:(\d+)$/.exec(name);
      return { port: match ? Number(match[2]) : name, protocol: match?.[1] ?? name, ...attributes };
    }
    case 'mount': {
      const { opts, ...rest } = attributes;
      return { path: name, ...rest, ...(opts !== undefined ? { options: opts } : {}) };
    }
    default:
      throw new Error(`no goss mapping for ${resource}`);
  }
}

/** A goss file (`goss render` form): each resource becomes a check of ours, located at its name. */
export function gossChecks(file: SourceFile, problems: LocatedProblem[]): Check[] {
  const raws: RawCheck[] = [];
  const gossProblems: LocatedProblem[] = [];
  for (const [resource, entries] of Object.entries(file.data)) {
    const type = GOSS_TYPES[resource];
    if (!type) {
      gossProblems.push({ location: file.locate.of([], resource), message: `goss resource "${resource}" is not supported${closest(resource, Object.keys(GOSS_TYPES))}; supported: ${Object.keys(GOSS_TYPES).join(', ')}` });
      continue;
    }
    if (!entries || typeof entries !== 'object' || Array.isArray(entries)) {
      gossProblems.push({ location: file.locate.of([resource]), message: `${resource}: expected a map of names to attributes, as goss writes it` });
      continue;
    }
    for (const [name, value] of Object.entries(entries as Record<string, unknown>)) {
      const attributes = (value ?? {}) as Record<string, unknown>;
      if (typeof attributes !== 'object' || Array.isArray(attributes)) {
        gossProblems.push({ location: file.locate.of([resource, name]), message: `${resource} ${name}: expected a map of attributes` });
        continue;
      }
      if (attributes.skip === true) continue;
      const unsupported = Object.keys(attributes).filter((key) => key !== 'skip' && !GOSS_ATTRIBUTES[resource].includes(key));
      for (const key of unsupported) {
        gossProblems.push({ location: file.locate.of([resource, name], key), message: `${resource} ${name}: goss attribute "${key}" is not supported${closest(key, GOSS_ATTRIBUTES[resource])}; supported: ${GOSS_ATTRIBUTES[resource].join(', ')}` });
      }
      const matchers = Object.entries(attributes).filter(([key, item]) => item !== null && typeof item === 'object' && !Array.isArray(item));
      for (const [key] of matchers) gossProblems.push({ location: file.locate.of([resource, name], key), message: `${resource} ${name}: goss matchers (${key}: {…}) are not supported; give the value itself` });
      if (unsupported.length || matchers.length) continue;
      const { skip: _, ...rest } = attributes;
      raws.push({ file, at: [resource, name], value: { [type]: fromGoss(resource, name, rest) } });
    }
  }
  problems.push(...gossProblems);
  // Validated as ours; an error's path is ours too, so it is located at the goss resource.
  const ownProblems: LocatedProblem[] = [];
  const checks = parseChecks(raws, ownProblems, 'the goss file');
  problems.push(...ownProblems.map((problem) => ({ ...problem, message: problem.message.replace(/^(service|command|file|kernel_param|package|port|mount)\./, '') })));
  return checks;
}

/** A check file: ours (`checks:` list) or goss's (its resource keys at the top). */
export function loadCheckFile(path: string): Check[] {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    throw new ImageBuilderError('BAD_INPUT', `cannot read check file ${path}: ${(error as NodeJS.ErrnoException).code}`, { hint: 'give the path of a YAML check file (ours, or goss\'s)' });
  }
  const parsed = parseSource(text, path);
  const problems = [...parsed.problems];
  let checks: Check[] = [];
  const data = parsed.file?.data;
  if (parsed.file && (!data || typeof data !== 'object' || Array.isArray(data))) {
    problems.push({ location: `${path}:1:1`, message: 'a check file is a YAML map: `checks:` with a list, or goss resources (service:, command:, file: …)' });
  } else if (parsed.file && 'checks' in data!) {
    const extra = Object.keys(data!).filter((key) => key !== 'checks');
    for (const key of extra) problems.push({ location: parsed.file.locate.of([], key), message: `unknown key "${key}" in a check file; it holds \`checks:\`` });
    const items = Array.isArray(data!.checks) ? (data!.checks as Record<string, unknown>[]) : [];
    if (!Array.isArray(data!.checks)) problems.push({ location: parsed.file.locate.of(['checks']), message: 'checks: expected a list' });
    checks = parseChecks(items.map((value, i) => ({ file: parsed.file!, at: ['checks', i], value })), problems, 'the check file');
  } else if (parsed.file) {
    checks = gossChecks(parsed.file, problems);
  }
  if (problems.length) {
    const [first, ...rest] = problems;
    throw new ImageBuilderError('BAD_INPUT', `${first.location}: ${first.message}`, {
      detail: rest.length ? rest.map((p) => `${p.location}: ${p.message}`).join('\n') : undefined,
      hint: 'see `imagebuilder checks` for every check type and its keys; goss files are read as `goss render` writes them',
    });
  }
  return checks;
}
