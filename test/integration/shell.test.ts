import { readFile } from 'node:fs/promises';
import { execa } from 'execa';
import { fixtureImage } from '../helpers/fixtures.js';
import { CLI, expectNothingLeft, hostState, runCli, sha256 } from '../helpers/host.js';

/** Phase 0's shell inside the mounted root filesystem: read-only by default, everything released at exit. */
describe('imagebuilder shell', () => {
  test('--command prints the guest\'s own file, passes its exit code, writes nothing, leaves nothing', async () => {
    const input = await fixtureImage('separate-boot');
    const inputSha = await sha256(input);
    const before = await hostState();
    const result = await runCli(['shell', '--disk-image', input, '--command', 'cat /etc/os-release; ls /boot | grep -c vmlinuz']);
    expect(result.exitCode).toBe(0);
    expect(result.stdout).toContain('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"');
    expect(result.stdout.trim().split('\n').pop()).toBe('1'); // /boot from fstab is mounted too
    expect(result.stdout).not.toBe(await readFile('/etc/os-release', 'utf8'));

    const readOnly = await runCli(['shell', '--disk-image', input, '--command', 'touch /etc/new-file']);
    expect(readOnly.exitCode).toBe(1);
    expect(readOnly.stderr).toContain('Read-only file system');

    const writable = await runCli(['shell', '--disk-image', input, '--writable', '--command', 'touch /etc/new-file && exit 7']);
    expect(writable.exitCode).toBe(7);
    expect(await sha256(input)).toBe(inputSha);
    await expectNothingLeft(before);
  });

  test('the interactive shell reads the user\'s terminal (here: stdin) and its exit ends the session', async () => {
    const input = await fixtureImage('gpt-esp');
    const before = await hostState();
    const result = await execa('node', [CLI, 'shell', '--disk-image', input], { input: 'hostname\ncat /etc/hostname\nexit 3\n', reject: false });
    expect(result.exitCode).toBe(3);
    expect(result.stdout).toContain('debian-gpt-esp');
    expect(result.stderr).toContain('exit the shell to release the image');
    await expectNothingLeft(before);
  });
});
