import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseRecipe } from '../../src/recipe/load.js';
import { renderTemplate } from '../../src/util/template.js';
import { versionMatches, whenMismatch } from '../../src/steps/when.js';
import { debian12 } from '../helpers/fake-session.js';
import { detectDistro } from '../../src/distro/families.js';

const problemsOf = (text: string, inputs = {}) => parseRecipe(text, 'r.yaml', inputs).problems.map((p) => `${p.location}: ${p.message}`);

describe('variables', () => {
  const recipe = [
    'name: vars',
    'variables:',
    '  kubernetes_version: "1.30.2"',
    '  deb_version: "{{ kubernetes_version }}-1.1"',
    '  series: "v{{ kubernetes_version | major_minor }}"',
    'steps:',
    '  - packages:',
    '      install: ["kubelet={{ deb_version }}"]',
    '  - file:',
    '      path: /etc/series',
    '      content: "{{series}}"',
  ].join('\n');

  test('defaults, derived variables and filters are substituted into step values', () => {
    const { recipe: parsed, problems } = parseRecipe(recipe, 'r.yaml');
    expect(problems).toEqual([]);
    expect(parsed!.variables).toEqual({ kubernetes_version: '1.30.2', deb_version: '1.30.2-1.1', series: 'v1.30' });
    expect(parsed!.steps.map((s) => s.spec)).toEqual([{ install: ['kubelet=1.30.2-1.1'] }, { path: '/etc/series', content: 'v1.30' }]);
  });

  test('--vars then --set override defaults, and derived values follow', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'vars-'));
    await writeFile(join(dir, 'vars.yaml'), 'kubernetes_version: 1.29.6\n');
    const { recipe: fromFile } = parseRecipe(recipe, 'r.yaml', { varsFile: join(dir, 'vars.yaml') });
    expect(fromFile!.variables.deb_version).toBe('1.29.6-1.1');
    const { recipe: fromSet } = parseRecipe(recipe, 'r.yaml', { varsFile: join(dir, 'vars.yaml'), set: { kubernetes_version: '1.31.0' } });
    expect(fromSet!.variables.series).toBe('v1.31');
    await rm(dir, { recursive: true });
  });

  test('an undefined variable is an error at the string that uses it, with a suggestion', () => {
    expect(problemsOf('name: v\nvariables:\n  version: "1"\nsteps:\n  - run: "echo {{ verison }}"\n')).toEqual([
      'r.yaml:5:10: undefined variable "verison" (did you mean "version"?): define it under `variables:` or pass --set verison=VALUE',
    ]);
  });

  test('--set of a variable the recipe does not define is an error', () => {
    expect(problemsOf('name: v\nvariables:\n  mirror: x\nsteps:\n  - run: "true"\n', { set: { miror: 'y' } })).toEqual([
      '--set miror: unknown variable "miror" (did you mean "mirror"?); the recipe defines: mirror',
    ]);
  });

  test('a variable that refers to itself is refused; an unknown filter is named', () => {
    expect(problemsOf('name: v\nvariables:\n  a: "{{ b }}"\n  b: "{{ a }}"\nsteps:\n  - run: "true"\n')[0]).toMatch(/refers to itself/);
    expect(problemsOf('name: v\nvariables:\n  a: "1.2"\nsteps:\n  - run: "{{ a | minor }}"\n')[0]).toBe(`r.yaml:5:10: unknown filter "minor" (did you mean "major"?); filters: major_minor, major, lower, upper`);
  });

  test('templates render only {{ name }} forms', () => {
    expect(renderTemplate('{{ a }} and {{b|upper}}', (n) => ({ a: 'x', b: 'y' })[n], () => []).value).toBe('x and Y');
    expect(renderTemplate('{{ 1 + 1 }}', () => undefined, () => []).errors[0]).toMatch(/is not a variable reference/);
  });

  test('a hostile recipe: no name of an object\'s prototype, no exponential variables, no slow placeholder matching', () => {
    // {{ constructor }} rendered `function Object() { [native code] }`; a filter named so applied Object().
    const values: Record<string, string> = { a: 'x' };
    expect(renderTemplate('{{ constructor }}', (n) => values[n], () => Object.keys(values)).errors[0]).toMatch(/^undefined variable "constructor"/);
    expect(renderTemplate('{{ a | constructor }}', (n) => values[n], () => Object.keys(values)).errors[0]).toMatch(/^unknown filter "constructor"/);
    expect(problemsOf('name: v\nsteps:\n  - run: "{{ toString }}"\n')[0]).toMatch(/undefined variable "toString"/);
    // Thirty variables each twice the one before: 2^30 characters, refused at the bound instead.
    const doubling = Array.from({ length: 30 }, (_, i) => `  v${i + 1}: "{{ v${i} }}{{ v${i} }}"`).join('\n');
    const problems = problemsOf(`name: v\nvariables:\n  v0: "${'x'.repeat(1000)}"\n${doubling}\nsteps:\n  - run: "echo {{ v30 }}"\n`);
    expect(problems.some((problem) => /renders to more than 1048576 characters/.test(problem))).toBe(true);
    // A line of "{{" and spaces that never closes right: was cubic (3 s at 2,000 spaces; hours at this length), now
    // linear (the test's own deadline would end it otherwise).
    const line = `{{${' '.repeat(200_000)}x} {{ a }}`;
    expect(renderTemplate(line, (n) => values[n], () => []).value.endsWith('} x')).toBe(true);
    // Many steps each naming a large variable: bounded for the whole recipe (64 MiB), said once.
    const many = Array.from({ length: 70 }, () => '  - run: "{{ big }}"').join('\n');
    const flood = problemsOf(`name: v\nvariables:\n  big: "${'y'.repeat(1_000_000)}"\nsteps:\n${many}\n`);
    expect(flood.filter((problem) => /renders to more than 67108864 characters of steps and checks/.test(problem))).toHaveLength(1);
    // A crafted name gets no suggestion (its edit distance to a long variable's name would take hours).
    const longName = 'n'.repeat(200_000);
    expect(renderTemplate(`{{ ${longName}x }}`, () => undefined, () => [`${longName}y`]).errors[0]).toBe(`undefined variable "${longName}x": define it under \`variables:\` or pass --set ${longName}x=VALUE`);
  });
});

describe('includes', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'include-'));
    await mkdir(join(dir, 'parts'));
    await writeFile(join(dir, 'parts/runtime.yaml'), 'variables:\n  runtime: containerd\n  version: "0"\nsteps:\n  - packages:\n      install: ["{{ runtime }}"]\n  - include: tools.yaml\n');
    await writeFile(join(dir, 'parts/tools.yaml'), 'steps:\n  - run: "echo {{ version }}"\n');
    await writeFile(join(dir, 'parts/loop-a.yaml'), 'steps:\n  - include: loop-b.yaml\n');
    await writeFile(join(dir, 'parts/loop-b.yaml'), 'steps:\n  - include: loop-a.yaml\n');
    await writeFile(join(dir, 'parts/bad.yaml'), 'steps:\n  - run: 3\n');
    await writeFile(join(dir, 'parts/offline.yaml'), 'network: none\nlimits:\n  pids: 64\n  timeout: 60\nsteps:\n  - run: offline\n  - run: online\n    network: sandboxed\n  - include: tools.yaml\n');
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  test('steps are inlined in place, relative to the including file; the includer\'s variables win', () => {
    const path = join(dir, 'node.yaml');
    const { recipe, problems } = parseRecipe('name: node\nvariables:\n  version: "7"\nsteps:\n  - run: first\n  - include: parts/runtime.yaml\n  - run: last\n', path);
    expect(problems).toEqual([]);
    expect(recipe!.steps.map((s) => [s.type.key, s.spec])).toEqual([
      ['run', 'first'],
      ['packages', { install: ['containerd'] }],
      ['run', 'echo 7'],
      ['run', 'last'],
    ]);
    expect(recipe!.steps[2].location).toMatch(/parts\/tools\.yaml:2:5$/);
    expect(recipe!.includes.map((i) => i.path)).toEqual(['parts/runtime.yaml', 'parts/tools.yaml']);
  });

  test('an include\'s network is the default of its own steps and of what it includes; its limits fill what the includer leaves unset', () => {
    const { recipe, problems } = parseRecipe('name: node\nvariables:\n  version: "0"\nlimits:\n  pids: 512\nsteps:\n  - run: first\n  - include: parts/offline.yaml\n  - run: last\n', join(dir, 'node.yaml'));
    expect(problems).toEqual([]);
    expect(recipe!.steps.map((s) => [s.spec, s.network])).toEqual([
      ['first', undefined],
      ['offline', 'none'],
      ['online', 'sandboxed'],
      ['echo 0', 'none'],
      ['last', undefined],
    ]);
    expect(recipe!.limits).toEqual({ pids: 512, timeout: 60 });
    // The recipe's own network is its steps' default too, and an include's own overrides it.
    const offline = parseRecipe('name: node\nvariables:\n  version: "0"\nnetwork: none\nsteps:\n  - run: first\n  - include: parts/tools.yaml\n', join(dir, 'node.yaml')).recipe!;
    expect(offline.steps.map((s) => s.network)).toEqual(['none', 'none']);
  });

  test('a missing include, a cycle and an error inside an include each point at the right file and line', () => {
    const path = join(dir, 'node.yaml');
    const messages = (text: string) => parseRecipe(text, path).problems.map((p) => `${p.location}: ${p.message}`);
    expect(messages('name: n\nsteps:\n  - include: parts/nope.yaml\n')[0]).toBe(
      `${path}:3:14: cannot include "parts/nope.yaml": no such file (${join(dir, 'parts/nope.yaml')}); include paths are relative to the file that includes them`,
    );
    expect(messages('name: n\nsteps:\n  - include: parts/loop-a.yaml\n')[0]).toMatch(/parts\/loop-b\.yaml:2:14: include cycle: node\.yaml → parts\/loop-a\.yaml → parts\/loop-b\.yaml → parts\/loop-a\.yaml$/);
    expect(messages('name: n\nsteps:\n  - include: parts/bad.yaml\n')[0]).toMatch(/parts\/bad\.yaml:2:10: steps\[0\]\.run must be string/);
  });
});

describe('when', () => {
  test('conditions on family, distro, version and architecture', () => {
    const ubuntu = detectDistro({ ID: 'ubuntu', ID_LIKE: 'debian', VERSION_ID: '24.04' });
    expect(whenMismatch({ family: 'debian' }, ubuntu, 'amd64')).toBeUndefined();
    expect(whenMismatch({ distro: ['debian'] }, ubuntu, 'amd64')).toBe('distro is ubuntu, not debian');
    expect(whenMismatch({ version: '>=22.04' }, ubuntu, 'amd64')).toBeUndefined();
    expect(whenMismatch({ version: '<24.04' }, ubuntu, 'amd64')).toBe('version is 24.04, not <24.04');
    expect(whenMismatch({ architecture: 'arm64', family: 'debian' }, debian12, 'amd64')).toBe('architecture is amd64, not arm64');
    expect(versionMatches('12', '12')).toBe(true);
    expect(versionMatches('9', '>=12')).toBe(false);
  });

  test('enabled switches a step from a variable; anything but true or false is refused', () => {
    const text = 'name: w\nvariables:\n  import_images: "false"\nsteps:\n  - run: "true"\n    when: {enabled: "{{ import_images }}"}\n';
    const off = parseRecipe(text, 'r.yaml').recipe!.steps[0].when;
    expect(whenMismatch(off, debian12, 'amd64')).toBe('enabled is false');
    const on = parseRecipe(text, 'r.yaml', { set: { import_images: 'true' } }).recipe!.steps[0].when;
    expect(whenMismatch(on, debian12, 'amd64')).toBeUndefined();
    expect(problemsOf(text, { set: { import_images: 'yes' } })[0]).toMatch(/^r\.yaml:6:21: steps\[0\]\.when\.enabled must be/);
  });

  test('is validated like any step key', () => {
    expect(problemsOf('name: w\nsteps:\n  - run: "true"\n    when: {famly: debian}\n')[0]).toMatch(/^r\.yaml:4:12: steps\[0\]\.when: unknown key "famly" \(did you mean "family"\?\)/);
    const { recipe } = parseRecipe('name: w\nsteps:\n  - run: "true"\n    when: {family: [debian, redhat], version: ">=12"}\n', 'r.yaml');
    expect(recipe!.steps[0].when).toEqual({ family: ['debian', 'redhat'], version: '>=12' });
    // A blank version (from a variable, say) or one of two lines is a located error, not a crash at the step.
    expect(problemsOf('name: w\nsteps:\n  - run: "true"\n    when: {version: " "}\n')[0]).toMatch(/^r\.yaml:4:21: steps\[0\]\.when\.version must (match pattern|match exactly one)/);
    expect(problemsOf('name: w\nsteps:\n  - run: "true"\n    when: {version: [">= 12\\n13"]}\n')[0]).toMatch(/^r\.yaml:4:\d+: steps\[0\]\.when\.version/);
    expect(versionMatches('12.5', ' >= 12 ')).toBe(true);
  });
});
