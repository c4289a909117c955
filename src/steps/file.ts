import { Type, type Static } from '@sinclair/typebox';
import { ABSENT } from '../util/json-schema.js';
import { writeGuestFile } from '../chroot/guest-write.js';
import { renderTemplate } from '../util/template.js';
import { sha256Text } from '../util/digest.js';
import { ImageBuilderError } from '../util/errors.js';
import { FileTooLarge, NotRegularFile, readRegularFileSync } from '../util/fs.js';
import { confinedHostPath } from './host-inputs.js';
import { defineStep, type StepEnvironment } from './types.js';

const exactlyOne = (key: string, others: string[]) => ({ required: [key], properties: Object.fromEntries(others.map((other) => [other, ABSENT])) });

const fileSchema = Type.Object(
  {
    path: Type.String({ pattern: '^/', description: 'Absolute path inside the guest.' }),
    /** Exactly one of content, source and template. */
    content: Type.Optional(Type.String({ description: 'The file content, written as is.' })),
    source: Type.Optional(Type.String({ minLength: 1, description: 'A host file to copy as it is (relative to the recipe).' })),
    template: Type.Optional(Type.String({ minLength: 1, description: 'A host file whose {{ variables }} are filled in (relative to the recipe).' })),
    mode: Type.Optional(Type.String({ pattern: '^0?[0-7]{3,4}$', default: '0644', description: 'Octal mode, e.g. "0644".' })),
    owner: Type.Optional(Type.String({ minLength: 1, default: 'root', description: 'Owner name or uid in the guest.' })),
    group: Type.Optional(Type.String({ minLength: 1, default: 'root', description: 'Group name or gid in the guest.' })),
  },
  {
    additionalProperties: false,
    oneOf: [exactlyOne('content', ['source', 'template']), exactlyOne('source', ['content', 'template']), exactlyOne('template', ['content', 'source'])],
  },
);

export type FileSpec = Static<typeof fileSchema>;

/** The most a source or template may hold: it is read into memory, more than once (checked, keyed, written). */
const MAX_FILE_SOURCE_BYTES = 64 * 2 ** 20;

/** The bytes to write: inline, a host file as it is, or a host file with the recipe's {{ variables }} filled in. */
function fileContent(spec: FileSpec, environment: StepEnvironment): { content?: string | Buffer; problems: string[] } {
  if (spec.content !== undefined) return { content: spec.content, problems: [] };
  const hostPath = confinedHostPath(environment, (spec.source ?? spec.template)!);
  const what = spec.source !== undefined ? 'source' : 'template';
  let bytes: Buffer | undefined;
  try {
    bytes = readRegularFileSync(hostPath, MAX_FILE_SOURCE_BYTES);
  } catch (error) {
    if (error instanceof NotRegularFile) return { problems: [`${what} ${hostPath} is not a regular file (a directory, FIFO, socket or device): name a file`] };
    if (error instanceof FileTooLarge) return { problems: [`${what} ${hostPath} is larger than a file step takes (${MAX_FILE_SOURCE_BYTES / 2 ** 20} MiB, read into memory): use a copy step for it`] };
    return { problems: [`cannot read ${what} ${hostPath}: ${(error as NodeJS.ErrnoException).code}; host paths are relative to the recipe`] };
  }
  if (!bytes) return { problems: [`cannot read ${what} ${hostPath}: ENOENT; host paths are relative to the recipe`] };
  if (spec.source !== undefined) return { content: bytes, problems: [] };
  const problems: string[] = [];
  const lines = bytes.toString('utf8').split('\n');
  const rendered = lines.map((line, index) => {
    const result = renderTemplate(line, (name) => environment.variables[name], () => Object.keys(environment.variables));
    problems.push(...result.errors.map((message) => `${hostPath}:${index + 1}: ${message}`));
    return result.value;
  });
  return { content: rendered.join('\n'), problems };
}

export const fileStep = defineStep({
  key: 'file',
  hostPaths: (spec) => (['source', 'template'] as const).flatMap((key) => (spec[key] === undefined ? [] : [{ at: [key], path: spec[key]! }])),
  summary: 'Write a file into the guest: inline content, a host file, or a template',
  description:
    'Writes `content`, or the host file `source` as it is, or the host file `template` with the recipe\'s ' +
    '{{ variables }} filled in (host paths are relative to the recipe), to an absolute guest path, creating ' +
    "parent directories, then sets mode, owner and group (names resolved from the guest's own /etc/passwd and " +
    '/etc/group). The path is resolved inside the guest: a symlink in the image can never make the write land ' +
    'on the build host.',
  example: { path: '/etc/modules-load.d/k8s.conf', content: 'overlay\nbr_netfilter\n', mode: '0644' },
  async cacheInputs(spec, environment) {
    // A template's output depends on the variables too: the rendered bytes say it all.
    const { content, problems } = fileContent(spec, environment);
    return spec.content !== undefined ? {} : { digests: { content: content === undefined ? `unreadable: ${problems.join('; ')}` : sha256Text(content) } };
  },
  schema: fileSchema,
  describe: (spec) => `write ${spec.path}`,
  // The file and the parents `mkdir -p` makes (on its own path), and its temporary sibling, which the guest's
  // `cat >`, `chown` and `chmod` reach through a link of the guest's there (guest-write's WRITE_FILE_SCRIPT).
  writesOnly: (spec) => [spec.path, `${spec.path}.imagebuilder-new`],
  check: (spec, environment) => fileContent(spec, environment).problems,
  async run(context, spec) {
    const { content, problems } = fileContent(spec, context);
    if (content === undefined || problems.length) {
      throw new ImageBuilderError('BAD_RECIPE', `${context.label}: ${problems[0]}`, { detail: problems.slice(1).join('\n') || undefined });
    }
    const sha256 = await writeGuestFile(context.session, { ...spec, content }, `${context.label}: writing ${spec.path}`);
    context.record.file({ path: spec.path, sha256, kind: spec.source ? 'copy' : 'config', ...(spec.source || spec.template ? { source: confinedHostPath(context, (spec.source ?? spec.template)!) } : {}) });
  },
});
