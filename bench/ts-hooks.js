// Module hooks that let a benchmark import the test helpers (TypeScript) as they are: a `.js` specifier with no
// such file but a `.ts` beside it resolves to the `.ts`, which is transpiled on load (types dropped, nothing
// checked). import.meta.url stays the helper's own path, so the helpers find the repository and their fixture
// caches (keyed by their own source) exactly as the tests do. Registered by ts-register.js.
import { access, readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const ts = createRequire(import.meta.url)('typescript');

export async function resolve(specifier, context, next) {
  if (specifier.endsWith('.js') && (specifier.startsWith('.') || specifier.startsWith('file:')) && context.parentURL?.endsWith('.ts')) {
    const url = new URL(specifier, context.parentURL);
    const missing = await access(fileURLToPath(url)).then(() => false, () => true);
    if (missing) return next(url.href.replace(/\.js$/, '.ts'), context);
  }
  return next(specifier, context);
}

export async function load(url, context, next) {
  if (!url.endsWith('.ts')) return next(url, context);
  const source = await readFile(fileURLToPath(url), 'utf8');
  const { outputText } = ts.transpileModule(source, { fileName: fileURLToPath(url), compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 } });
  return { format: 'module', source: outputText, shortCircuit: true };
}
