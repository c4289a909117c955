/**
 * `{{ name }}` and `{{ name | filter }}` in recipe strings. Deliberately small: no logic, no loops — a recipe
 * stays readable, and a derived value (the package version from the Kubernetes version) is one filter away.
 */
export const TEMPLATE_FILTERS: Record<string, (value: string) => string> = {
  /** 1.30.2 → 1.30 (the pkgs.k8s.io repository series) */
  major_minor: (value) => value.split('.').slice(0, 2).join('.'),
  /** 1.30.2 → 1 */
  major: (value) => value.split('.')[0],
  lower: (value) => value.toLowerCase(),
  upper: (value) => value.toUpperCase(),
};

/** Braces never inside: matched in linear time (a lazy match with trimmed spaces backtracked cubically on a long line). */
const PLACEHOLDER = /\{\{([^{}]*)\}\}/g;
/**
 * The longest a rendered string may be: variables that double each other (`v2: "{{v1}}{{v1}}"`, thirty times)
 * would otherwise build a string of 2^30 characters before anything is said.
 */
export const MAX_RENDERED_CHARS = 1 << 20;

export interface TemplateResult {
  value: string;
  /** Names used, for "unused variable" checks and the BOM. */
  used: string[];
  errors: string[];
}

export function hasTemplate(text: string): boolean {
  const open = text.indexOf('{{');
  return open >= 0 && text.indexOf('}}', open + 2) >= 0;
}

export function renderTemplate(text: string, lookup: (name: string) => string | undefined, known: () => string[]): TemplateResult {
  const used: string[] = [];
  const errors: string[] = [];
  let length = text.length;
  let tooLong = false;
  const value = text.replace(PLACEHOLDER, (whole, expression: string) => {
    const rendered = renderOne(whole, expression);
    length += rendered.length - whole.length;
    if (length <= MAX_RENDERED_CHARS) return rendered;
    // Said once (a scan of the errors for it, at every placeholder past the bound, was quadratic).
    if (!tooLong) errors.push(`renders to more than ${MAX_RENDERED_CHARS} characters (variables that repeat each other?)`);
    tooLong = true;
    return '';
  });
  return { value, used, errors };

  function renderOne(whole: string, expression: string): string {
    const [name, ...filters] = expression.split('|').map((part) => part.trim());
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) {
      errors.push(`"${whole}" is not a variable reference: write {{ name }} or {{ name | filter }}`);
      return whole;
    }
    // Only a value: a name such as `constructor` is not looked up on an object's prototype.
    let current: unknown = lookup(name);
    if (typeof current !== 'string') {
      const suggestion = closest(name, known());
      errors.push(`undefined variable "${name}"${suggestion}: define it under \`variables:\` or pass --set ${name}=VALUE`);
      return whole;
    }
    used.push(name);
    for (const filter of filters) {
      const apply = Object.hasOwn(TEMPLATE_FILTERS, filter) ? TEMPLATE_FILTERS[filter] : undefined;
      if (!apply) {
        errors.push(`unknown filter "${filter}"${closest(filter, Object.keys(TEMPLATE_FILTERS))}; filters: ${Object.keys(TEMPLATE_FILTERS).join(', ')}`);
        return whole;
      }
      current = apply(current as string);
    }
    return current as string;
  }
}

function editDistance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let previous = row[0];
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const current = row[j];
      row[j] = Math.min(row[j] + 1, row[j - 1] + 1, previous + (a[i - 1] === b[j - 1] ? 0 : 1));
      previous = current;
    }
  }
  return row[b.length];
}

/** ` (did you mean "x"?)` when a candidate is close enough to be a typo, else empty. */
/**
 * A suggestion costs a word's length times each candidate's: offered for names a person types (up to 64
 * characters, among up to 1,000 of the same length give or take the distance allowed), never for a crafted one.
 */
const MAX_SUGGESTED_LENGTH = 64;
const MAX_SUGGESTION_CANDIDATES = 1000;

export function closest(word: string, candidates: readonly string[]): string {
  const allowed = Math.max(2, Math.floor(word.length / 3));
  const near = candidates.filter((candidate) => candidate.length <= MAX_SUGGESTED_LENGTH && Math.abs(candidate.length - word.length) <= allowed);
  if (word.length > MAX_SUGGESTED_LENGTH || near.length > MAX_SUGGESTION_CANDIDATES) return '';
  const best = near
    .map((candidate) => ({ candidate, distance: editDistance(word.toLowerCase(), candidate.toLowerCase()) }))
    .sort((a, b) => a.distance - b.distance)[0];
  return best && best.distance <= allowed ? ` (did you mean "${best.candidate}"?)` : '';
}
