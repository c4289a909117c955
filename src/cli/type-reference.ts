import { Flags } from '@oclif/core';
import { stringify } from 'yaml';

/** A registry entry as `imagebuilder steps` and `imagebuilder checks` print it. */
interface DocumentedType {
  key: string;
  summary: string;
  description: string;
  example: unknown;
}

/** `--markdown`, for the `step` or `check` reference. */
export const typeReferenceFlags = (noun: string) => ({
  markdown: Flags.boolean({ description: `print the README's ${noun} reference table`, default: false }),
});

/** Each type with its description and an example as a list item, or (markdown) the README's table. */
export function typeReference(types: readonly DocumentedType[], markdown: () => string, asMarkdown: boolean): string[] {
  if (asMarkdown) return [markdown()];
  return types.flatMap((type) => [
    `${type.key}: ${type.summary}`,
    `  ${type.description}`,
    stringify([{ [type.key]: type.example }]).replace(/^/gm, '    ').trimEnd(),
    '',
  ]);
}
