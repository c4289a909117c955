import { Flags } from '@oclif/core';
import { BaseCommand } from '../cli/base-command.js';
import { createLogger } from '../util/log.js';
import { withInterrupts } from '../util/signals.js';
import { allowNetworkFlag, hostPaths, hostPortFlag, mountBackendFlag, mountBackendOf, workDirFlag } from '../cli/host-flags.js';
import { parseAllowedNetworks, parseHostPorts } from '../chroot/sandbox.js';
import { shell } from '../pipeline/shell.js';
import { diskImageOptions, diskImageFlags } from '../cli/image-flags.js';

export default class Shell extends BaseCommand {
  static override summary = 'A shell (or one command) inside a disk image, natively mounted; read-only by default';
  static override description =
    "Mounts the image as the guest mounts itself and opens a shell in a chroot on your terminal. Exit the shell and " +
    'everything is released. The image is never written: --writable lets you change files in a throw-away overlay.';
  static override examples = [
    "<%= config.bin %> shell --disk-image debian-12.qcow2 --command 'cat /etc/os-release'",
    '<%= config.bin %> shell --disk-image debian-12.qcow2 --writable',
  ];
  static override flags = {
    ...diskImageFlags,
    command: Flags.string({ char: 'c', description: 'run this with /bin/sh -c instead of an interactive shell; its exit code is ours' }),
    writable: Flags.boolean({ description: 'mount writable; changes go to a throw-away overlay', default: false }),
    ...mountBackendFlag,
    ...workDirFlag,
    ...hostPortFlag,
    ...allowNetworkFlag,
    verbose: Flags.boolean({ char: 'v', description: 'log every command run', default: false }),
  };

  async run(): Promise<void> {
    const { flags } = await this.parse(Shell);
    const paths = hostPaths(flags);
    const interactive = flags.command === undefined;
    // With --command, stderr stays the command's own but for warnings.
    const log = createLogger({ level: flags.verbose ? 'debug' : interactive ? 'info' : 'warn' });
    const exitCode = await withInterrupts(
      log,
      (signal) =>
        shell({
          diskImage: flags['disk-image'],
          image: diskImageOptions(flags),
          command: flags.command,
          writable: flags.writable,
          mountBackend: mountBackendOf(flags),
          hostPorts: parseHostPorts(flags['host-port']),
          allowNetworks: parseAllowedNetworks(flags['allow-network']),
          ...paths,
          log,
          signal,
        }),
      interactive ? ['SIGTERM', 'SIGHUP'] : undefined,
    );
    process.exitCode = exitCode;
  }
}
