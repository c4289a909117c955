import { Type } from '@sinclair/typebox';
import { Enum, OneOf } from '../util/json-schema.js';
import { shellQuote } from '../util/exec.js';
import { defineCheck, firstLine, matchesPattern, type Probe, type ProbeOutput, type Verdict } from './types.js';

/*
 * The check types. Each makes probes: a shell script run inside the guest and how its output is judged. A probe
 * that reads only files runs on the mounted image too (`boot: false`); one that needs the live kernel or running
 * services (`boot: true`) runs only in the booted guest.
 */

const PATTERNS = Type.Array(Type.String({ minLength: 1 }), { minItems: 1, description: 'Each must be found: a substring, or a /regular expression/; `!` before either: must not be found.' });
const verdict = (passed: boolean, observed: string, expected: string): Verdict => ({ passed, observed, expected });

/** `systemctl is-enabled` answers that count as enabled (alias and indirect units start through another). */
const ENABLED_STATES = ['enabled', 'enabled-runtime', 'alias', 'indirect', 'generated'];

export const serviceCheck = defineCheck({
  key: 'service',
  summary: 'A systemd unit is enabled, or running',
  description: '`enabled` reads the unit files (`systemctl is-enabled`), so it is checked on the image too; `running` needs the booted guest (`systemctl is-active`).',
  schema: Type.Object(
    {
      name: Type.String({ pattern: '^[A-Za-z0-9@._:\\\\-]+$', description: 'The unit: `containerd` or `containerd.service`.' }),
      enabled: Type.Optional(Type.Boolean({ description: 'Enabled (true) or not enabled (false).' })),
      running: Type.Optional(Type.Boolean({ description: 'Active (true) or not (false) in the booted guest.' })),
    },
    { additionalProperties: false, minProperties: 2 },
  ),
  example: { name: 'containerd', enabled: true, running: true },
  describe: (spec) => `service ${spec.name}`,
  probes(spec) {
    const probes: Probe[] = [];
    if (spec.enabled !== undefined) {
      probes.push({
        attribute: 'enabled',
        script: `systemctl is-enabled -- ${shellQuote(spec.name)} 2>&1`,
        boot: false,
        judge: ({ exitCode, stdout }) => {
          if (exitCode === 127) return verdict(false, 'no systemctl in the guest', spec.enabled ? 'enabled' : 'not enabled');
          const state = firstLine(stdout) || 'unknown';
          return verdict(ENABLED_STATES.includes(state) === spec.enabled, state, spec.enabled ? 'enabled' : 'not enabled');
        },
      });
    }
    if (spec.running !== undefined) {
      probes.push({
        attribute: 'running',
        script: `systemctl is-active -- ${shellQuote(spec.name)} 2>&1`,
        boot: true,
        judge: ({ exitCode, stdout }) => {
          if (exitCode === 127) return verdict(false, 'no systemctl in the guest', spec.running ? 'active' : 'not active');
          const state = firstLine(stdout) || 'unknown';
          return verdict((state === 'active') === spec.running, state, spec.running ? 'active' : 'not active');
        },
      });
    }
    return probes;
  },
});

export const commandCheck = defineCheck({
  key: 'command',
  summary: 'A command exits as expected and prints what it should',
  description: 'Runs with `/bin/sh -c` as root in the guest. By default in the booted guest; `boot: false` runs it on the mounted image too (no network, no services).',
  schema: Type.Object(
    {
      run: Type.String({ minLength: 1, description: 'The command line.' }),
      exit_status: Type.Optional(Type.Integer({ minimum: 0, maximum: 255, default: 0, description: 'Its exit status (default 0).' })),
      stdout: Type.Optional(PATTERNS),
      boot: Type.Optional(Type.Boolean({ default: true, description: 'Needs the booted guest (default true).' })),
      timeout: Type.Optional(Type.Integer({ minimum: 1, maximum: 3600, default: 60, description: 'Seconds before it is killed (default 60).' })),
    },
    { additionalProperties: false },
  ),
  example: { run: 'crictl info', exit_status: 0, stdout: ['"RuntimeReady"'] },
  onImage: 'with `boot: false`',
  describe: (spec) => `command ${firstLine(spec.run)}`,
  probes: (spec) => [
    {
      attribute: spec.stdout ? 'exit status, stdout' : 'exit status',
      script: `timeout ${spec.timeout ?? 60} /bin/sh -c ${shellQuote(spec.run)}`,
      boot: spec.boot ?? true,
      judge: ({ exitCode, stdout }: ProbeOutput) => {
        const status = spec.exit_status ?? 0;
        const missing = (spec.stdout ?? []).filter((pattern) => !matchesPattern(stdout, pattern));
        const observed = `exit ${exitCode}${missing.length ? `; stdout lacks ${missing.map((p) => JSON.stringify(p)).join(', ')}` : ''}`;
        return verdict(exitCode === status && !missing.length, exitCode === 124 ? `timed out after ${spec.timeout ?? 60}s` : observed, `exit ${status}${spec.stdout ? ', stdout with every pattern' : ''}`);
      },
    },
  ],
});

/** stat's %F in our three words; other types (fifo, socket, device) as stat says them. */
const fileType = (statType: string) => (/^regular (empty )?file$/.test(statType) ? 'file' : statType === 'directory' ? 'directory' : statType === 'symbolic link' ? 'symlink' : statType);
/** Exit status of a probe that found nothing at the path (any other failure is a failure, not an absence). */
const ABSENT_STATUS = 3;

export const fileCheck = defineCheck({
  key: 'file',
  summary: 'A file exists (or not), with its type, mode, owner and content',
  description: 'Its type, mode and owner are the path\'s own (a symlink is not followed); its content is read through links, as the guest sees it. Checked on the image and in the booted guest alike.',
  schema: Type.Object(
    {
      path: Type.String({ pattern: '^/', description: 'Absolute path in the guest.' }),
      exists: Type.Optional(Type.Boolean({ default: true, description: 'It exists (default true).' })),
      filetype: Type.Optional(Enum(['file', 'directory', 'symlink'], { description: 'Its type.' })),
      mode: Type.Optional(Type.String({ pattern: '^0?[0-7]{3,4}$', description: 'Octal permission bits: `0644`.' })),
      owner: Type.Optional(Type.String({ minLength: 1, description: 'Owning user name.' })),
      group: Type.Optional(Type.String({ minLength: 1, description: 'Owning group name.' })),
      contains: Type.Optional(PATTERNS),
    },
    { additionalProperties: false },
  ),
  example: { path: '/etc/containerd/config.toml', mode: '0644', owner: 'root', contains: ['SystemdCgroup = true'] },
  describe: (spec) => `file ${spec.path}`,
  probes(spec) {
    const exists = spec.exists ?? true;
    const asked = (['filetype', 'mode', 'owner', 'group'] as const).filter((key) => spec[key] !== undefined);
    const probes: Probe[] = [
      {
        attribute: ['exists', ...asked].join(', '),
        // A dangling symlink exists too; -e alone follows links.
        script: `p=${shellQuote(spec.path)}; if [ -e "$p" ] || [ -L "$p" ]; then stat -c '%F|%a|%U|%G' -- "$p" 2>&1; else exit ${ABSENT_STATUS}; fi`,
        boot: false,
        judge: ({ exitCode, stdout }) => {
          if (exitCode === ABSENT_STATUS) return verdict(!exists, 'absent', exists ? 'present' : 'absent');
          if (exitCode !== 0) return verdict(false, `cannot tell: ${firstLine(stdout) || `exit ${exitCode}`}`, exists ? 'present' : 'absent');
          if (!exists) return verdict(false, 'present', 'absent');
          const [type = '', mode = '', owner, group] = firstLine(stdout).split('|');
          const found = { filetype: fileType(type), mode: mode.padStart(4, '0'), owner, group };
          const wanted = { filetype: spec.filetype, mode: spec.mode?.padStart(4, '0'), owner: spec.owner, group: spec.group };
          const wrong = asked.filter((key) => (key === 'mode' ? parseInt(found.mode, 8) !== parseInt(wanted.mode!, 8) : found[key] !== wanted[key]));
          return verdict(!wrong.length, asked.length ? asked.map((key) => `${key} ${found[key]}`).join(', ') : 'present', asked.length ? asked.map((key) => `${key} ${wanted[key]}`).join(', ') : 'present');
        },
      },
    ];
    if (spec.contains && exists) {
      probes.push({
        attribute: 'contains',
        // Up to 4 MiB of a regular file (configuration, not data), through links as the guest sees it
        // (/etc/os-release is one); never a FIFO (it would block) or a device.
        script: `p=${shellQuote(spec.path)}; if [ -f "$p" ]; then head -c 4194304 -- "$p"; else exit ${ABSENT_STATUS}; fi`,
        boot: false,
        judge: ({ exitCode, stdout }) => {
          if (exitCode !== 0) return verdict(false, exitCode === ABSENT_STATUS ? 'not a regular file' : 'unreadable', 'every pattern');
          const missing = spec.contains!.filter((pattern) => !matchesPattern(stdout, pattern));
          return verdict(!missing.length, missing.length ? `lacks ${missing.map((p) => JSON.stringify(p)).join(', ')}` : 'every pattern', 'every pattern');
        },
      });
    }
    return probes;
  },
});

export const kernelParamCheck = defineCheck({
  key: 'kernel_param',
  summary: 'A kernel parameter has its value in the booted guest',
  description: 'Reads /proc/sys in the booted guest (what sysctl.d files and modules made of it); whitespace is normalized.',
  schema: Type.Object(
    {
      name: Type.String({ pattern: '^[A-Za-z0-9_][A-Za-z0-9_./-]*$', description: '`net.ipv4.ip_forward`.' }),
      value: OneOf([Type.String(), Type.Number()], { description: 'Its value: `1`, `4096 87380 6291456`.' }),
    },
    { additionalProperties: false },
  ),
  example: { name: 'net.ipv4.ip_forward', value: 1 },
  describe: (spec) => `kernel parameter ${spec.name}`,
  probes: (spec) => [
    {
      attribute: 'value',
      // sysctl(8)'s name → path: dots are separators, slashes stand for dots (as in interface names).
      script: `cat ${shellQuote(`/proc/sys/${spec.name.replace(/\./g, '\0').replace(/\//g, '.').replace(/\0/g, '/')}`)} 2>&1`,
      boot: true,
      judge: ({ exitCode, stdout }) => {
        const normalize = (text: string) => text.trim().split(/\s+/).join(' ');
        return verdict(exitCode === 0 && normalize(stdout) === normalize(String(spec.value)), exitCode === 0 ? normalize(stdout) : `unreadable: ${firstLine(stdout)}`, String(spec.value));
      },
    },
  ],
});

export const kernelModuleCheck = defineCheck({
  key: 'kernel_module',
  summary: 'A kernel module is loaded (or not) in the booted guest',
  description: 'Loaded means it has a /sys/module entry: every loaded module has one, and so has a built-in one with parameters.',
  schema: Type.Object(
    {
      name: Type.String({ pattern: '^[A-Za-z0-9_-]+$', description: '`br_netfilter`.' }),
      loaded: Type.Optional(Type.Boolean({ default: true, description: 'Loaded (default true).' })),
    },
    { additionalProperties: false },
  ),
  example: { name: 'br_netfilter', loaded: true },
  describe: (spec) => `kernel module ${spec.name}`,
  probes(spec) {
    const name = spec.name.replace(/-/g, '_');
    return [
      {
        attribute: 'loaded',
        // The shell's own test: nothing from the guest's programs decides.
        script: `if [ -d ${shellQuote(`/sys/module/${name}`)} ]; then echo loaded; else echo 'not loaded'; fi`,
        boot: true,
        judge: ({ stdout }) => {
          const loaded = firstLine(stdout) === 'loaded';
          return verdict(loaded === (spec.loaded ?? true), loaded ? 'loaded' : 'not loaded', spec.loaded ?? true ? 'loaded' : 'not loaded');
        },
      },
    ];
  },
});

export const packageCheck = defineCheck({
  key: 'package',
  summary: 'A package is installed (or not), at one of the versions given',
  description: "Asks the guest's own package database (dpkg, or rpm), on the image and in the booted guest alike.",
  schema: Type.Object(
    {
      name: Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9+._-]*$', description: 'The package name.' }),
      installed: Type.Optional(Type.Boolean({ default: true, description: 'Installed (default true).' })),
      versions: Type.Optional(Type.Array(Type.String({ minLength: 1 }), { minItems: 1, description: 'Its version is one of these (as dpkg or rpm prints it; an rpm epoch only when it has one).' })),
    },
    { additionalProperties: false },
  ),
  example: { name: 'kubelet', versions: ['1.34.2-1.1'] },
  describe: (spec) => `package ${spec.name}`,
  probes(spec) {
    const name = shellQuote(spec.name);
    return [
      {
        attribute: spec.versions ? 'installed, version' : 'installed',
        // Both databases are asked: a guest may carry dpkg and rpm (Debian's rpm, alien) and install with either.
        script: [
          `state=$(dpkg-query -W -f '\${db:Status-Status} \${Version}\\n' ${name} 2>/dev/null | head -n 1)`,
          'case "$state" in installed\\ *) echo "$state"; exit 0;; esac',
          `if command -v rpm >/dev/null 2>&1 && rpm -q ${name} >/dev/null 2>&1; then rpm -q --qf 'installed %{EPOCH}:%{VERSION}-%{RELEASE}\\n' ${name} | head -n 1; exit 0; fi`,
          'if command -v dpkg-query >/dev/null 2>&1 || command -v rpm >/dev/null 2>&1; then echo not-installed; exit 0; fi',
          'echo "no package database"; exit 2',
        ].join('\n'),
        boot: false,
        judge: ({ exitCode, stdout }) => {
          if (exitCode === 2 && stdout.includes('no package database')) return verdict(false, 'no dpkg or rpm in the guest', 'a package database');
          const [status, rawVersion = ''] = firstLine(stdout).split(' ');
          const installed = status === 'installed';
          const version = rawVersion.replace(/^\(none\):/, '');
          const wantInstalled = spec.installed ?? true;
          if (installed !== wantInstalled) return verdict(false, installed ? `installed ${version}` : 'not installed', wantInstalled ? 'installed' : 'not installed');
          if (!installed || !spec.versions) return verdict(true, installed ? `installed ${version}` : 'not installed', wantInstalled ? 'installed' : 'not installed');
          return verdict(spec.versions.includes(version), `installed ${version}`, `version ${spec.versions.join(' or ')}`);
        },
      },
    ];
  },
});

/** Listening sockets on `port` in /proc/net's tables (tcp: state 0A LISTEN; udp: bound, state 07). */
export function listening(tables: string, port: number, protocol: 'tcp' | 'udp'): boolean {
  const state = protocol === 'tcp' ? '0A' : '07';
  return tables.split('\n').some((line) => {
    const fields = line.trim().split(/\s+/);
    const local = fields[1]?.split(':');
    return local?.length === 2 && parseInt(local[1], 16) === port && fields[3] === state;
  });
}

export const portCheck = defineCheck({
  key: 'port',
  summary: 'Something listens on a port in the booted guest',
  description: "Reads the guest kernel's socket tables (/proc/net/tcp, tcp6, udp, udp6): no tool needed in the guest.",
  schema: Type.Object(
    {
      port: Type.Integer({ minimum: 1, maximum: 65535, description: 'The port.' }),
      protocol: Type.Optional(Enum(['tcp', 'udp'], { default: 'tcp', description: 'tcp (default) or udp.' })),
      listening: Type.Optional(Type.Boolean({ default: true, description: 'Listening (default true).' })),
    },
    { additionalProperties: false },
  ),
  example: { port: 22, protocol: 'tcp', listening: true },
  describe: (spec) => `port ${spec.protocol ?? 'tcp'}/${spec.port}`,
  probes(spec) {
    const protocol = spec.protocol ?? 'tcp';
    return [
      {
        attribute: 'listening',
        script: `cat /proc/net/${protocol} /proc/net/${protocol}6 2>/dev/null`,
        boot: true,
        judge: ({ stdout }) => {
          const found = listening(stdout, spec.port, protocol);
          return verdict(found === (spec.listening ?? true), found ? 'listening' : 'not listening', spec.listening ?? true ? 'listening' : 'not listening');
        },
      },
    ];
  },
});

/** /proc/mounts escapes spaces and the like as octal (\040). */
const unescapeMount = (text: string) => text.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)));

export const mountCheck = defineCheck({
  key: 'mount',
  summary: 'A path is mounted in the booted guest, with its filesystem and options',
  description: "Reads the booted guest's /proc/mounts; the last mount on the path counts.",
  schema: Type.Object(
    {
      path: Type.String({ pattern: '^/', description: 'The mount point.' }),
      exists: Type.Optional(Type.Boolean({ default: true, description: 'Mounted (default true).' })),
      filesystem: Type.Optional(Type.String({ minLength: 1, description: '`ext4`, `vfat` …' })),
      options: Type.Optional(Type.Array(Type.String({ minLength: 1 }), { minItems: 1, description: 'Options it must have: `ro`, `nodev` …' })),
    },
    { additionalProperties: false },
  ),
  example: { path: '/boot/efi', filesystem: 'vfat' },
  describe: (spec) => `mount ${spec.path}`,
  probes: (spec) => [
    {
      attribute: ['mounted', ...(spec.filesystem ? ['filesystem'] : []), ...(spec.options ? ['options'] : [])].join(', '),
      script: 'cat /proc/mounts',
      boot: true,
      judge: ({ stdout }) => {
        const entry = stdout.split('\n').map((line) => line.split(' ')).filter((fields) => fields.length >= 4 && unescapeMount(fields[1]) === spec.path).at(-1);
        const wanted = spec.exists ?? true;
        if (!entry || !wanted) return verdict(!entry === !wanted, entry ? `mounted (${entry[2]})` : 'not mounted', wanted ? 'mounted' : 'not mounted');
        const options = entry[3].split(',');
        const missing = (spec.options ?? []).filter((option) => !options.includes(option));
        const typeOk = !spec.filesystem || entry[2] === spec.filesystem;
        return verdict(typeOk && !missing.length, `${entry[2]} ${entry[3]}`, [spec.filesystem, ...(spec.options ?? [])].filter(Boolean).join(' ') || 'mounted');
      },
    },
  ],
});

/**
 * What the failed-units probe runs: waits for the boot to finish, says the system's state (`state: running`),
 * lists the failed units one per line, and, when the boot did not come up (emergency or rescue mode:
 * `maintenance`), why, from the journal (`why: Dependency failed for ...`): units whose dependency failed are
 * inactive, not failed, so the list alone would not show a boot stopped by a bad fstab line.
 */
export const FAILED_UNITS_SCRIPT = [
  // Bounded: a unit that never finishes starting must not keep the report from the host (its deadline is longer).
  'state=$(timeout 300 systemctl is-system-running --wait 2>/dev/null)',
  '[ -n "$state" ] || state="starting (not up after 300 s)"',
  'echo "state: $state"',
  // A systemctl that cannot answer says so as a reason, never as a unit name.
  'if units=$(systemctl list-units --state=failed --no-legend --plain --no-pager 2>/dev/null); then printf "%s\\n" "$units" | sed "/^$/d; s/^[^[:alnum:]]* //"; else echo "why: systemctl list-units failed"; fi',
  'case $state in',
  '  running|degraded) ;;',
  '  starting*) systemctl list-jobs --no-legend --no-pager 2>/dev/null | head -n 10 | sed "s/^/why: still waiting on: /" ;;',
  '  *) journalctl -b -q --no-pager -o cat 2>/dev/null | grep -E "^(Dependency failed for|Timed out waiting for|Failed to (mount|start)) " | head -n 10 | sed "s/^/why: /" ;;',
  'esac',
].join('\n');

/** FAILED_UNITS_SCRIPT's output: the system state, the failed units, and why a boot that did not come up stopped. */
export function bootOutcome(stdout: string): { state: string; failed: string[]; why: string[] } {
  const lines = stdout.split('\n').map((line) => line.trim()).filter(Boolean);
  const state = lines.find((line) => line.startsWith('state:'))?.slice('state:'.length).trim() || 'unknown';
  const why = lines.filter((line) => line.startsWith('why: ')).map((line) => line.slice('why: '.length));
  const failed = lines.filter((line) => !line.startsWith('state:') && !line.startsWith('why: ')).map((line) => line.split(/\s+/)[0]);
  return { state, failed, why };
}

/** The failed units in FAILED_UNITS_SCRIPT's output. */
export const failedUnits = (stdout: string): string[] => bootOutcome(stdout).failed;

export const failedUnitsCheck = defineCheck({
  key: 'failed_units',
  summary: 'The boot came up (running, or degraded only by allowed units) and no systemd unit failed beyond those allowed',
  description:
    'Waits for the boot to finish (`systemctl is-system-running --wait`): it must reach `running`, or `degraded` by allowed units only; a boot that stopped in emergency or rescue mode fails, with the journal\'s reason (a mount that timed out, a dependency that failed). Then lists failed units; the base image\'s own failures go in `allowed` (`imagebuilder test --base` and `apply --test` add them).',
  schema: Type.Object(
    {
      allowed: Type.Optional(Type.Array(Type.String({ minLength: 1 }), { description: 'Units that may have failed: `systemd-networkd-wait-online.service`.' })),
    },
    { additionalProperties: false },
  ),
  example: { allowed: [] },
  describe: () => 'failed units',
  probes: (spec) => [
    {
      attribute: 'none failed',
      script: FAILED_UNITS_SCRIPT,
      boot: true,
      judge: ({ stdout }) => {
        const outcome = bootOutcome(stdout);
        const allowed = new Set(spec.allowed ?? []);
        const failed = outcome.failed.filter((unit) => !allowed.has(unit));
        const expected = spec.allowed?.length ? `running, no failed unit beyond ${spec.allowed.join(' ')}` : 'running, no failed unit';
        if (outcome.state !== 'running' && outcome.state !== 'degraded') {
          const observed = [`the boot stopped in state ${outcome.state}`, ...(failed.length ? [`failed: ${failed.join(' ')}`] : []), ...outcome.why].join('; ');
          return verdict(false, observed, expected);
        }
        // Up, but the failed units could not be listed: not a pass.
        if (outcome.why.length) return verdict(false, [outcome.state, ...outcome.why].join('; '), expected);
        return verdict(!failed.length, failed.length ? `${outcome.state}, failed: ${failed.join(' ')}` : outcome.state, expected);
      },
    },
  ],
});
