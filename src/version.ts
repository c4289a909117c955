import { readFileSync } from 'node:fs';

/**
 * The tool's own version, from package.json, recorded in every BOM. Looked for upwards from this module, which
 * runs from dist/ (one level down) or from the CLI's bundle (dist/packed/chunks/, three; a command's own file,
 * dist/packed/commands/cache/, four).
 */
export const TOOL_VERSION: string = (() => {
  for (const up of ['../', '../../', '../../../', '../../../../']) {
    try {
      const manifest = JSON.parse(readFileSync(new URL(`${up}package.json`, import.meta.url), 'utf8')) as { name?: string; version?: string };
      if (manifest.name === 'imagebuilder' && manifest.version) return manifest.version;
    } catch {
      // not at this level
    }
  }
  throw new Error(`imagebuilder's package.json was not found above ${import.meta.url}`);
})();
