import { Args, Flags } from '@oclif/core';
import { BaseCommand } from '../cli/base-command.js';
import { diskImageOptions, imageVerifyFlags } from '../cli/image-flags.js';
import { verifyImage, type VerifiedImage } from '../pipeline/verify.js';
import { execRunner } from '../util/exec.js';
import { createLogger } from '../util/log.js';
import { withInterrupts } from '../util/signals.js';

export default class Fetch extends BaseCommand {
  static override summary = 'Fetch and verify a base image into the cache without building (phase 0 alone)';
  static override description =
    'Downloads an http(s) image once (resuming and retrying), verifies it against the sums file beside it (SHA256SUMS, ' +
    'sha256sum.txt, SHA512SUMS, CHECKSUM, <image>.sha256) or --checksum, decompresses .xz/.gz/.zst, and stores it in the ' +
    'content-addressed cache ($IMAGEBUILDER_CACHE). Prints the cached path and its sha256. A local path is verified in place.';
  static override examples = [
    '<%= config.bin %> fetch https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2',
    '<%= config.bin %> fetch https://example.org/al2023.qcow2.xz --checksum sha256:0123…',
  ];

  static override args = { image: Args.string({ description: 'http(s) URL or local path of the image', required: true }) };
  static override flags = {
    ...imageVerifyFlags,
    json: Flags.boolean({ description: 'print the result as JSON on stdout', default: false }),
    verbose: Flags.boolean({ char: 'v', description: 'log every command run', default: false }),
  };

  async run(): Promise<VerifiedImage> {
    const { args, flags } = await this.parse(Fetch);
    const log = createLogger({ level: flags.verbose ? 'debug' : 'info' });
    const image = await withInterrupts(log, (signal) => verifyImage(execRunner, args.image, log, signal, diskImageOptions(flags)));
    if (flags.json) this.log(JSON.stringify(image, null, 2));
    else {
      this.log(image.path);
      this.log(`sha256 ${image.sha256}`);
    }
    return image;
  }
}
