import { readFile, readdir } from 'node:fs/promises';
import { Ajv } from 'ajv';
import { parse } from 'yaml';
import { parseRecipe, didYouMean } from '../../src/recipe/load.js';
import { recipeSchema } from '../../src/recipe/schema.js';
import { STEP_TYPES, stepSchema } from '../../src/steps/registry.js';

const problemsOf = (text: string) => parseRecipe(text, 'r.yaml').problems.map((p) => `${p.location}: ${p.message}`);

describe('recipe validation', () => {
  test('a valid recipe parses into typed steps with their positions', () => {
    const { recipe, problems } = parseRecipe('name: demo\nsteps:\n  - packages:\n      install: [socat, "hello=2.10-3"]\n  - name: hi\n    run: echo hi\n', 'r.yaml');
    expect(problems).toEqual([]);
    expect(recipe!.steps.map((s) => [s.type.key, s.name, s.location])).toEqual([
      ['packages', undefined, 'r.yaml:3:5'],
      ['run', 'hi', 'r.yaml:5:5'],
    ]);
    expect(recipe!.sha256).toMatch(/^[0-9a-f]{64}$/);
  });

  test('unknown keys point at the key, with a suggestion', () => {
    expect(problemsOf('name: demo\nsteps:\n  - packages:\n      instal: [socat]\n')).toEqual([
      'r.yaml:4:7: steps[0].packages: unknown key "instal" (did you mean "install"?); allowed: install, remove, upgrade, hold, disable_excludes',
    ]);
  });

  test('unknown step types get a suggestion and the list of known ones', () => {
    const [problem] = problemsOf('name: demo\nsteps:\n  - pakages: {install: [a]}\n');
    expect(problem).toBe(`r.yaml:3:5: steps[0]: unknown step type "pakages" (did you mean "packages"?); expected one of: ${STEP_TYPES.map((t) => t.key).join(', ')}, include`);
  });

  test('wrong types and patterns name the exact value', () => {
    expect(problemsOf('name: demo\nsteps:\n  - file:\n      path: etc/x\n      content: 1\n')).toEqual([
      'r.yaml:4:13: steps[0].file.path must match pattern "^/" (got "etc/x")',
      'r.yaml:5:16: steps[0].file.content must be string',
    ]);
  });

  test('a missing required key points at the step', () => {
    expect(problemsOf('name: demo\nsteps:\n  - file:\n      content: x\n')).toEqual(['r.yaml:4:7: steps[0].file: missing required key "path"']);
    expect(problemsOf('name: demo\nsteps:\n  - file:\n      path: /etc/x\n')).toEqual(['r.yaml:4:7: steps[0].file: needs exactly one of the keys "content", "source", "template"']);
  });

  test('two step types in one step; an empty step list is a recipe that only converts and writes a BOM', () => {
    expect(problemsOf('name: demo\nsteps:\n  - run: a\n    file: {path: /a, content: b}\n')[0]).toContain('has more than one step type (run, file)');
    expect(problemsOf('name: demo\nsteps: []\n')).toEqual([]);
  });

  test('YAML syntax errors carry their position', () => {
    expect(problemsOf('name: demo\nsteps:\n  - run: [unclosed\n')[0]).toMatch(/^r\.yaml:\d+:\d+: YAML syntax: /);
  });

  test('the run step takes a string or an object with script or file, not both', () => {
    expect(problemsOf('name: demo\nsteps:\n  - run: {script: a, timeout: 5, env: {A: b}}\n')).toEqual([]);
    expect(problemsOf('name: demo\nsteps:\n  - run: {script: a, file: b.sh}\n')).not.toEqual([]);
    expect(problemsOf('name: demo\nsteps:\n  - run: {timeout: 5}\n')).not.toEqual([]);
  });

  test('didYouMean only suggests close words', () => {
    expect(didYouMean('instal', ['install', 'remove'])).toBe(' (did you mean "install"?)');
    expect(didYouMean('zzzzzz', ['install', 'remove'])).toBe('');
  });
});

describe('the committed schema and shipped recipes', () => {
  test('schemas/recipe.schema.json is what the step registry generates (run `npm run docs` after changing a step)', async () => {
    const committed = JSON.parse(await readFile(new URL('../../schemas/recipe.schema.json', import.meta.url), 'utf8'));
    expect(committed).toEqual(recipeSchema());
  });

  test('schemas/bom.schema.json is what src/bom/schema.ts generates (run `npm run docs`)', async () => {
    const { bomSchema } = await import('../../src/bom/schema.js');
    const committed = JSON.parse(await readFile(new URL('../../schemas/bom.schema.json', import.meta.url), 'utf8'));
    expect(committed).toEqual(bomSchema());
  });

  test('every step type documents itself and its example validates', () => {
    for (const type of STEP_TYPES) {
      expect(type.summary.length).toBeGreaterThan(10);
      expect(type.description.length).toBeGreaterThan(20);
      // Examples name illustrative host files: their schema is what is checked here.
      const { problems } = parseRecipe(JSON.stringify({ name: 'example', steps: [{ [type.key]: type.example }] }), 'example.json', { schemaOnly: true });
      expect(problems).toEqual([]);
    }
  });

  test('every step schema is plain JSON: none of the symbol keys TypeBox marks its schemas with reaches ajv or the docs', () => {
    const hasSymbolKeys = (node: unknown): boolean =>
      !!node && typeof node === 'object' && (Object.getOwnPropertySymbols(node).length > 0 || Object.values(node).some(hasSymbolKeys));
    for (const type of STEP_TYPES) expect([type.key, hasSymbolKeys(stepSchema(type))]).toEqual([type.key, false]);
  });

  test('every shipped recipe validates, both with our loader and with the full schema through ajv', async () => {
    const validate = new Ajv({ strict: false }).compile(recipeSchema());
    const root = new URL('../../recipes/', import.meta.url).pathname;
    // Matrix files (`bases:`) are not recipes: test/unit/matrix.test.ts checks the shipped one.
    const all = (await readdir(root, { recursive: true })).filter((name) => name.endsWith('.yaml')).sort();
    const files: string[] = [];
    for (const name of all) if (!('bases' in (parse(await readFile(`${root}${name}`, 'utf8')) ?? {}))) files.push(name);
    expect(files).toEqual(expect.arrayContaining(['kubernetes-node.yaml', 'examples/k8s-node-containerd.yaml']));
    expect(all.filter((name) => !files.includes(name))).toEqual(['examples/matrix.yaml']);
    for (const name of files) {
      const text = await readFile(`${root}${name}`, 'utf8');
      const { recipe, problems } = parseRecipe(text, `recipes/${name}`);
      expect(problems).toEqual([]);
      expect(validate(parse(text))).toBe(true);
      expect(recipe!.steps.length).toBeGreaterThan(0);
    }
  });

  test('the full schema rejects what the loader rejects', () => {
    const validate = new Ajv({ strict: false }).compile(recipeSchema());
    expect(validate({ name: 'x', steps: [{ pakages: { install: ['a'] } }] })).toBe(false);
    expect(validate({ name: 'x', steps: [{ run: 'a', file: { path: '/a', content: '' } }] })).toBe(false);
    expect(validate({ name: 'x', steps: [{ run: 'a' }] })).toBe(true);
  });
});

describe('the README references', () => {
  test.each([
    ['step', async () => import('../../src/steps/docs.js').then((m) => ({ table: m.stepReferenceMarkdown(), start: m.STEP_REFERENCE_START, end: m.STEP_REFERENCE_END }))],
    ['check', async () => import('../../src/checks/docs.js').then((m) => ({ table: m.checkReferenceMarkdown(), start: m.CHECK_REFERENCE_START, end: m.CHECK_REFERENCE_END }))],
  ])('the %s table is the one the registry generates (`npm run docs` writes it between the markers)', async (_, reference) => {
    const { table, start, end } = await reference();
    const readme = await readFile(new URL('../../README.md', import.meta.url), 'utf8');
    expect(readme.indexOf(start)).toBeGreaterThan(0);
    expect(readme.slice(readme.indexOf(start) + start.length, readme.indexOf(end)).trim()).toBe(table);
  });
});

describe('the README\'s supported versions', () => {
  test('the table is the node recipe\'s kubernetes_release table, row for row, and names the default series', async () => {
    const readme = await readFile(new URL('../../README.md', import.meta.url), 'utf8');
    const recipe = parse(await readFile(new URL('../../recipes/kubernetes-node.yaml', import.meta.url), 'utf8'));
    const rows = recipe.tables.kubernetes_release.rows as Record<string, Record<string, string>>;
    const columns = ['cri_tools_deb_version', 'kubernetes_cni_deb_version', 'containerd_version', 'runc_version', 'crictl_version', 'cni_plugins_version', 'pause_image'];
    const start = readme.indexOf('<!-- versions:start');
    const section = readme.slice(readme.indexOf('\n', start) + 1, readme.indexOf('<!-- versions:end -->'));
    const documented = section.trim().split('\n').slice(2).map((line) => line.split('|').slice(1, -1).map((cell) => cell.trim()));
    expect(documented).toEqual(Object.entries(rows).map(([series, row]) => [series, ...columns.map((column) => row[column])]));
    expect(readme).toContain(`the default is ${recipe.variables.kubernetes_version};`);
  });
});

describe('tables: variables that come in consistent sets', () => {
  const text = [
    'name: t',
    'variables:',
    '  kubernetes_version: "1.36.3"',
    'tables:',
    '  release:',
    '    key: "{{ kubernetes_version | major_minor }}"',
    '    rows:',
    '      "1.36": { containerd_version: "2.3.2", crictl_version: "1.36.0" }',
    '      "1.35": { containerd_version: "2.3.1", crictl_version: "1.35.0" }',
    'steps:',
    '  - run: "echo {{ containerd_version }} {{ crictl_version }}"',
    '',
  ].join('\n');
  const run = (recipe: { steps: { spec: unknown }[] }) => (recipe.steps[0].spec as { command?: string; run?: string }).run ?? JSON.stringify(recipe.steps[0].spec);

  test('the key picks the row; its columns are variables', () => {
    const { recipe, problems } = parseRecipe(text, 'r.yaml');
    expect(problems).toEqual([]);
    expect(recipe!.variables).toMatchObject({ containerd_version: '2.3.2', crictl_version: '1.36.0' });
    expect(run(recipe!)).toContain('2.3.2 1.36.0');
    const older = parseRecipe(text, 'r.yaml', { set: { kubernetes_version: '1.35.7' } });
    expect(older.problems).toEqual([]);
    expect(older.recipe!.variables).toMatchObject({ containerd_version: '2.3.1', crictl_version: '1.35.0' });
  });
  test('--set of one column overrides the table for it alone', () => {
    const { recipe, problems } = parseRecipe(text, 'r.yaml', { set: { containerd_version: '2.3.9' } });
    expect(problems).toEqual([]);
    expect(recipe!.variables).toMatchObject({ containerd_version: '2.3.9', crictl_version: '1.36.0' });
  });
  test('a key with no row: one error, where the choice was made, naming the rows there are', () => {
    const { problems } = parseRecipe(text, 'r.yaml', { set: { kubernetes_version: '1.33.1' } });
    expect(problems.map((p) => `${p.location}: ${p.message}`)).toEqual(['--set kubernetes_version: kubernetes_version = "1.33.1" selects "1.33" in table release (r.yaml:6:10), which has no such row; it has: 1.36, 1.35']);
    // A key that cannot be rendered: its own error, once, not one per column.
    expect(problemsOf(text.replace('{{ kubernetes_version | major_minor }}', '{{ kubernetes_versoin | major_minor }}'))).toEqual([
      'r.yaml:6:10: undefined variable "kubernetes_versoin" (did you mean "kubernetes_version"?): define it under `variables:` or pass --set kubernetes_versoin=VALUE',
    ]);
    // The default chosen in the recipe itself: located at its line.
    expect(problemsOf(text.replace('"1.36.3"', '"1.20.0"'))).toEqual(['r.yaml:3:23: kubernetes_version = "1.20.0" selects "1.20" in table release (r.yaml:6:10), which has no such row; it has: 1.36, 1.35']);
  });
  test('a row missing a column, and a name that is both a variable and a column, are errors at their lines', () => {
    // Only the row the key picks must be whole.
    expect(problemsOf(text.replace(', crictl_version: "1.35.0"', ''))).toEqual([]);
    expect(parseRecipe(text.replace(', crictl_version: "1.35.0"', ''), 'r.yaml', { set: { kubernetes_version: '1.35.7' } }).problems.map((p) => `${p.location}: ${p.message}`)).toEqual([
      'r.yaml:9:15: row "1.35" of table release has no "crictl_version", which other rows have',
    ]);
    expect(problemsOf(text.replace('  kubernetes_version: "1.36.3"', '  kubernetes_version: "1.36.3"\n  crictl_version: x'))).toEqual(['r.yaml:7:10: "crictl_version" is both a variable and a column of table release: give it one home']);
  });
});
