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
    const files = (await readdir(root, { recursive: true })).filter((name) => name.endsWith('.yaml')).sort();
    expect(files).toEqual(expect.arrayContaining(['kubernetes-node.yaml', 'examples/k8s-node-containerd.yaml']));
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
