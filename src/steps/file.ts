import { writeGuestFile } from '../chroot/guest-write.js';
import { defineStep } from './types.js';

export interface FileSpec {
  path: string;
  content: string;
  mode?: string;
  owner?: string;
  group?: string;
}

export const fileStep = defineStep<FileSpec>({
  key: 'file',
  summary: 'Write a file into the guest',
  description:
    'Writes `content` to an absolute guest path, creating parent directories, then sets mode, owner and group ' +
    "(names resolved from the guest's own /etc/passwd and /etc/group). The path is resolved inside the guest: " +
    'a symlink in the image can never make the write land on the build host.',
  example: { path: '/etc/modules-load.d/k8s.conf', content: 'overlay\nbr_netfilter\n', mode: '0644' },
  schema: {
    type: 'object',
    additionalProperties: false,
    required: ['path', 'content'],
    properties: {
      path: { type: 'string', pattern: '^/', description: 'Absolute path inside the guest.' },
      content: { type: 'string', description: 'The file content, written as is.' },
      mode: { type: 'string', pattern: '^0?[0-7]{3,4}$', default: '0644', description: 'Octal mode, e.g. "0644".' },
      owner: { type: 'string', minLength: 1, default: 'root', description: 'Owner name or uid in the guest.' },
      group: { type: 'string', minLength: 1, default: 'root', description: 'Group name or gid in the guest.' },
    },
  },
  describe: (spec) => `write ${spec.path}`,
  async run(context, spec) {
    const sha256 = await writeGuestFile(context.session, spec, `${context.label}: writing ${spec.path}`);
    context.record.file({ path: spec.path, sha256, kind: 'config' });
  },
});
