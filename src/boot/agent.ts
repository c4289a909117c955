import { writeGuestFileFromHost, writeGuestSymlink } from '../util/guest-fs.js';
import { CHANNEL_NAME } from './channel.js';

/** Where the check and its runner go in the throw-away overlay (never in an image anyone keeps). */
export const AGENT_DIR = '/etc/imagebuilder-boot';
export const AGENT_UNIT = 'imagebuilder-boot-check.service';
/** The same runner, when the boot stops short of multi-user.target (emergency or rescue mode: a bad fstab line). */
export const EMERGENCY_UNIT = 'imagebuilder-boot-emergency.service';

/**
 * The runner, POSIX sh: finds the results port (udev's /dev/virtio-ports/<name> link, or, without udev, the
 * vportNpM device whose sysfs name is ours), runs the check with its output to a file, sends
 * `imagebuilder-boot-result status=<status> bytes=<n>\n` and the output on the port, and powers off. A port that
 * never appears is said on the console, and the guest powers off all the same: the host then fails at once,
 * naming the console log, instead of waiting out its deadline.
 */
export function agentScript(channelName = CHANNEL_NAME): string {
  return `#!/bin/sh
# Written by imagebuilder into a throw-away overlay of the image being tested: runs ${AGENT_DIR}/check, sends its
# output and exit status to the host on the virtio-serial port ${channelName}, and powers the machine off.
name=${channelName}
port=
# Once per boot, whichever unit starts first (the normal one, or the emergency one).
mkdir /run/imagebuilder-boot.started 2>/dev/null || exit 0
find_port() {
	if [ -e "/dev/virtio-ports/$name" ]; then port=/dev/virtio-ports/$name; return 0; fi
	for p in /sys/class/virtio-ports/*; do
		[ -r "$p/name" ] || continue
		if [ "$(cat "$p/name")" = "$name" ] && [ -c "/dev/\${p##*/}" ]; then port=/dev/\${p##*/}; return 0; fi
	done
	return 1
}
modprobe virtio_console 2>/dev/null
i=0
until find_port; do
	i=$((i + 1))
	if [ $i -gt 600 ]; then
		echo "imagebuilder-boot: no virtio-serial port named $name after 60 s; powering off" >/dev/console
		systemctl poweroff --no-block || poweroff -f
		exit 1
	fi
	sleep 0.1
done
out=/run/imagebuilder-boot.out
/bin/sh ${AGENT_DIR}/check </dev/null >"$out" 2>&1
status=$?
echo "imagebuilder-boot: the check exited with $status; reporting on $port" >/dev/console
{ printf 'imagebuilder-boot-result status=%d bytes=%d\\n' "$status" "$(wc -c <"$out")"; cat "$out"; } >"$port"
systemctl poweroff --no-block || poweroff -f
`;
}

/** A unit that runs the runner; written only into throw-away overlays. */
function runnerUnit(description: string, ordering: string, wantedBy: string): string {
  return `# Written by imagebuilder into a throw-away overlay of the image being tested.
[Unit]
Description=${description}
${ordering}
# A runner already under way is not stopped when systemd isolates emergency.target: the once-per-boot guard
# would keep the emergency runner from taking over, and nobody would report.
IgnoreOnIsolate=yes

[Service]
Type=simple
ExecStart=/bin/sh ${AGENT_DIR}/report
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=${wantedBy}
`;
}

/**
 * A plain service wanted by multi-user.target (not Type=oneshot: it is part of the boot only in being started,
 * so a check that waits for the boot to finish, `systemctl is-system-running --wait`, does not wait on itself).
 */
export const agentUnit = () => runnerUnit('imagebuilder boot check (reports to the host, then powers off)', 'After=basic.target', 'multi-user.target');

/**
 * The runner started when systemd gives up on the normal boot and isolates emergency.target (a mount that
 * fails: a bad fstab line) or rescue.target: no default dependencies (sysinit.target is what failed), so the
 * checks still run and report what broke, instead of the host waiting out its deadline.
 */
export const emergencyUnit = () =>
  runnerUnit('imagebuilder boot check, when the boot stopped in emergency or rescue mode', 'DefaultDependencies=no\nAfter=systemd-udevd.service', 'emergency.target rescue.target');

/**
 * Puts the check and its runner into a mounted guest root, with the unit that runs it in emergency or rescue
 * mode, and (`onBoot`, unless cloud-init starts it) the unit that runs it once the boot is up.
 */
export async function installAgent(root: string, script: string, onBoot = true): Promise<void> {
  await writeGuestFileFromHost(root, `${AGENT_DIR}/check`, script.endsWith('\n') ? script : `${script}\n`, { mode: 0o755, uid: 0, gid: 0 });
  await writeGuestFileFromHost(root, `${AGENT_DIR}/report`, agentScript(), { mode: 0o755, uid: 0, gid: 0 });
  const units: [string, string, string[]][] = [[EMERGENCY_UNIT, emergencyUnit(), ['emergency.target', 'rescue.target']]];
  if (onBoot) units.push([AGENT_UNIT, agentUnit(), ['multi-user.target']]);
  for (const [name, text, targets] of units) {
    await writeGuestFileFromHost(root, `/etc/systemd/system/${name}`, text, { mode: 0o644, uid: 0, gid: 0 });
    for (const target of targets) await writeGuestSymlink(root, `/etc/systemd/system/${target}.wants/${name}`, `/etc/systemd/system/${name}`);
  }
}

/**
 * A cloud-init NoCloud seed's user-data that does what installAgent does, from inside the guest: the check and
 * its runner written by cloud-init (write_files), the runner started as a transient unit of its own (runcmd runs
 * in cloud-final.service, part of the boot: started there directly, a check waiting for the boot to finish
 * would wait on itself). JSON is YAML, so nothing the script holds needs YAML quoting.
 */
export function agentUserData(script: string): string {
  const file = (path: string, content: string) => ({ path, permissions: '0755', owner: 'root:root', encoding: 'b64', content: Buffer.from(content).toString('base64') });
  const config = {
    write_files: [file(`${AGENT_DIR}/check`, script.endsWith('\n') ? script : `${script}\n`), file(`${AGENT_DIR}/report`, agentScript())],
    runcmd: [['systemd-run', '--no-block', `--unit=${AGENT_UNIT.replace(/\.service$/, '')}`, '/bin/sh', `${AGENT_DIR}/report`]],
  };
  return `#cloud-config\n${JSON.stringify(config, null, 1)}\n`;
}

/** The seed's meta-data: a fresh instance id, so cloud-init treats this boot as an instance's first. */
export function agentMetaData(instanceId: string): string {
  return `instance-id: ${instanceId}\n`;
}
