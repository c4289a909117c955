import { existsSync, readdirSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { createSocket } from 'node:dgram';
import { readFile, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { execa } from 'execa';
import { stringify } from 'yaml';
import { BOX_UIDS } from '../../src/util/box-uid.js';
import { fixtureImage } from '../helpers/fixtures.js';
import { CLI, runCli } from '../helpers/host.js';
import { expectHostUntouched, snapshotHost } from '../helpers/hostile.js';
import { writeRecipe } from '../helpers/recipes.js';
import { hostSeccompArch, seccompBytes } from '../../src/chroot/seccomp.js';
import { SETFILES_CAPABILITIES } from '../../src/distro/selinux.js';
import { confinedRootCommand, unprivilegedCommand } from '../../src/util/unprivileged.js';

/**
 * The sandbox of guest commands (src/chroot/sandbox.ts), attacked for real from inside a Debian guest: what
 * it can reach on the network, its capabilities, the syscalls it is denied, the limits, its terminal. Each
 * test checks the host is as it was (and that no namespace, cgroup or pasta is left).
 */

/** The capability allowlist, by number (linux/capability.h), written out here independently of the code. */
const ALLOWED_CAPABILITIES = { chown: 0, dac_override: 1, fowner: 3, fsetid: 4, kill: 5, setgid: 6, setuid: 7, audit_write: 29, setfcap: 31 };
const ALLOWED_MASK = Object.values(ALLOWED_CAPABILITIES).reduce((mask, bit) => mask | (1n << BigInt(bit)), 0n);

const LINK_LOCAL = '169.254.169.254';
/** Metadata services that are not link-local: Azure's WireServer and Alibaba Cloud's (not addresses of this host). */
const METADATA_ADDRESSES = ['168.63.129.16', '100.100.100.200'];
/** 169.254.169.254 and 10.0.0.1 under the well-known NAT64 prefix. */
const NAT64_FORMS = ['64:ff9b::a9fe:a9fe', '64:ff9b::a00:1'];
/** A host address besides its own NIC's (as a second NIC, a bridge or a service address would be); on lo, as this host has no dummy interfaces. */
const HOST_ADDRESS = '10.213.7.1';

async function serve(host: string): Promise<{ server: Server; port: number }> {
  const server = createServer((_, response) => response.end('host service\n'));
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, resolve);
  });
  return { server, port: (server.address() as AddressInfo).port };
}

/**
 * A DNS resolver on the host's loopback, as dnsmasq or unbound would be: answers every A query with `answer`.
 * Enough of RFC 1035 for getent: the question echoed, one answer pointing at it.
 */
async function serveDns(address: string, answer: string) {
  const socket = createSocket('udp4');
  const queries: string[] = [];
  socket.on('message', (query, peer) => {
    let offset = 12;
    const labels: string[] = [];
    while (query[offset]) {
      labels.push(query.subarray(offset + 1, offset + 1 + query[offset]).toString());
      offset += query[offset] + 1;
    }
    const question = query.subarray(12, offset + 5);
    const type = query.readUInt16BE(offset + 1);
    queries.push(`${labels.join('.')}/${type}`);
    const header = Buffer.from([query[0], query[1], 0x81, 0x80, 0, 1, 0, type === 1 ? 1 : 0, 0, 0, 0, 0]);
    const record = Buffer.concat([Buffer.from([0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]), Buffer.from(answer.split('.').map(Number))]);
    socket.send(Buffer.concat([header, question, type === 1 ? record : Buffer.alloc(0)]), peer.port, peer.address);
  });
  await new Promise<void>((resolve, reject) => {
    socket.once('error', reject);
    socket.bind(53, address, resolve);
  });
  return { queries, close: () => socket.close() };
}

/** bash inside the guest opens a TCP connection; prints CONNECTED or bash's error. */
const connect = (host: string, port: number) => `timeout 5 bash -c 'exec 3<>/dev/tcp/${host}/${port} && echo ${host}:CONNECTED' 2>&1 | sed 's/^/${host}: /'; true`;

describe('the sandbox of guest commands', () => {
  let work: string;
  let input: string;
  const servers: Server[] = [];
  const ports: Record<string, number> = {};

  beforeAll(async () => {
    work = await mkdtemp('/var/tmp/ib-sandbox-');
    input = await fixtureImage('gpt-esp');
    // A metadata service's address and a second host address, each with a server the host itself reaches.
    for (const address of [LINK_LOCAL, HOST_ADDRESS]) await execa('ip', ['address', 'add', `${address}/32`, 'dev', 'lo']);
    for (const host of ['127.0.0.1', LINK_LOCAL, HOST_ADDRESS]) {
      const { server, port } = await serve(host);
      servers.push(server);
      ports[host] = port;
    }
  });
  afterAll(async () => {
    for (const server of servers) server.close();
    for (const address of [LINK_LOCAL, HOST_ADDRESS]) await execa('ip', ['address', 'delete', `${address}/32`, 'dev', 'lo'], { reject: false });
    await rm(work, { recursive: true, force: true });
  });

  test('the network reaches the outside (by name, through the host\'s DNS) and none of the host\'s loopback, link-local or own addresses', async () => {
    // Each server answers the host itself: the guest's failures below are the sandbox's doing.
    for (const host of Object.keys(ports)) expect((await execa('curl', ['-sS', `http://${host}:${ports[host]}/`])).stdout).toBe('host service');
    const before = await snapshotHost();
    const script = [...Object.entries(ports).map(([host, port]) => connect(host, port)), ...[...METADATA_ADDRESSES, ...NAT64_FORMS].map((host) => connect(host, 80)), connect('deb.debian.org', 80)].join('\n');
    const result = await runCli(['shell', '--disk-image', input, '--writable', '--command', script]);
    expect(result.exitCode).toBe(0);
    const lines = result.stdout.split('\n').map((line) => line.trim());
    expect(lines).toContain('deb.debian.org: deb.debian.org:CONNECTED');
    // The guest's own loopback: no one listens there.
    expect(lines.find((line) => line.startsWith('127.0.0.1:'))).toMatch(/Connection refused/);
    // Routes inside the sandbox refuse them; pasta never sees the connection.
    expect(lines.find((line) => line.startsWith(`${LINK_LOCAL}:`))).toMatch(/Permission denied/);
    expect(lines.find((line) => line.startsWith(`${HOST_ADDRESS}:`))).toMatch(/Permission denied/);
    // The metadata services that are not link-local (Azure's WireServer, Alibaba Cloud's): refused the same, at once.
    for (const metadata of METADATA_ADDRESSES) expect(lines.find((line) => line.startsWith(`${metadata}:`))).toMatch(/Permission denied/);
    // The metadata service and a private network through NAT64 (as an IPv6-only host behind it reaches them):
    // refused by the rules, not merely unrouted here (that would be "Network is unreachable").
    for (const nat64 of NAT64_FORMS) expect(lines.find((line) => line.startsWith(`${nat64}:`))).toMatch(/Permission denied/);
    expect(result.stdout).not.toMatch(/(127\.0\.0\.1|169\.254\.169\.254|10\.213\.7\.1|168\.63\.129\.16|100\.100\.100\.200):CONNECTED/);
    await expectHostUntouched(before);
  }, 120_000);

  test('a private network (a LAN host, a container bridge, a cluster) is refused unless --allow-network names it; the host itself reaches it', async () => {
    // A LAN host: a network namespace of its own behind a veth pair, serving at 10.77.0.2 (the host is 10.77.0.1).
    // Kept by a bind mount on a file of the test's own (unshare --net=FILE), as the sandbox keeps its own: `ip netns
    // add` would mount /run/netns on first use, and nothing ever unmounts that.
    const netnsMounts = async () => (await readFile('/proc/self/mountinfo', 'utf8')).split('\n').filter((line) => line.includes(join(work, 'lan-netns')) || / \/run\/netns /.test(line));
    const runNetnsBefore = await netnsMounts();
    const lan = { netns: join(work, 'lan-netns'), host: `iblan${process.pid % 10000}a`, peer: `iblan${process.pid % 10000}b`, address: '10.77.0.2', port: 8077 };
    const ip = (...args: string[]) => execa('ip', args);
    const inLan = (...command: string[]) => execa('nsenter', [`--net=${lan.netns}`, '--', ...command]);
    await writeFile(lan.netns, '');
    await execa('unshare', [`--net=${lan.netns}`, 'true']);
    // nsenter execs its command: the holder's pid is a process in the namespace, where the veth's end is moved.
    const holder = execa('nsenter', [`--net=${lan.netns}`, '--', 'sleep', '600'], { reject: false });
    let server: ReturnType<typeof execa> | undefined;
    try {
      await ip('link', 'add', lan.host, 'type', 'veth', 'peer', 'name', lan.peer);
      await ip('link', 'set', lan.peer, 'netns', String(holder.pid));
      await ip('address', 'add', '10.77.0.1/24', 'dev', lan.host);
      await ip('link', 'set', lan.host, 'up');
      await inLan('ip', 'address', 'add', `${lan.address}/24`, 'dev', lan.peer);
      await inLan('ip', 'link', 'set', lan.peer, 'up');
      server = execa('nsenter', [`--net=${lan.netns}`, '--', 'node', '-e', `require('http').createServer((q, r) => r.end('lan service\\n')).listen(${lan.port}, '${lan.address}')`], { reject: false });
      let answer = '';
      for (const until = Date.now() + 10_000; answer !== 'lan service' && Date.now() < until; await new Promise((resolve) => setTimeout(resolve, 200))) {
        answer = (await execa('curl', ['-sS', '--max-time', '2', `http://${lan.address}:${lan.port}/`], { reject: false })).stdout;
      }
      expect(answer).toBe('lan service');
      const before = await snapshotHost();
      const recipe = await writeRecipe(work, 'lan', [{ run: connect(lan.address, lan.port) }]);
      const build = (extra: string[]) => runCli(['apply', recipe, '--disk-image', input, '--output', join(work, 'lan-out.qcow2'), '--sparsify', 'none', '--sbom', 'none', '--no-cache', ...extra]);
      const refused = await build([]);
      expect(refused.exitCode).toBe(0);
      expect(refused.all).toMatch(/10\.77\.0\.2: .*Permission denied/);
      expect(refused.all).not.toContain('10.77.0.2:CONNECTED');
      await rm(join(work, 'lan-out.qcow2'), { force: true });
      const allowed = await build(['--allow-network', '10.77.0.0/24']);
      expect(allowed.exitCode).toBe(0);
      expect(allowed.all).toContain('10.77.0.2:CONNECTED');
      await rm(join(work, 'lan-out.qcow2'), { force: true });
      // A value that is no network is said before anything is built.
      const bad = await build(['--allow-network', 'mirror.internal']);
      expect(bad.exitCode).toBe(2);
      expect(bad.stderr).toContain('--allow-network mirror.internal: not an address or a network');
      // A step that fails on the refusal is told which flag would let it through.
      const failing = await writeRecipe(work, 'lan-failing', [{ run: `bash -c 'exec 3<>/dev/tcp/${lan.address}/${lan.port}'` }]);
      const failed = await runCli(['apply', failing, '--disk-image', input, '--output', join(work, 'lan-out.qcow2'), '--sparsify', 'none', '--sbom', 'none', '--no-cache']);
      expect(failed.exitCode).toBe(4);
      expect(failed.stderr).toContain('hint: 10.77.0.2 is on a private network, which guest commands are refused');
      expect(failed.stderr).toContain('--allow-network 10.77.0.2');
      // An address of this host's own (refused whatever --allow-network says) is told of --host-port instead.
      const own = await writeRecipe(work, 'own-failing', [{ run: `bash -c 'exec 3<>/dev/tcp/${HOST_ADDRESS}/${ports[HOST_ADDRESS]}'` }]);
      const ownFailed = await runCli(['apply', own, '--disk-image', input, '--output', join(work, 'lan-out.qcow2'), '--sparsify', 'none', '--sbom', 'none', '--no-cache', '--allow-network', '10.213.7.0/24']);
      expect(ownFailed.exitCode).toBe(4);
      expect(ownFailed.stderr).toContain(`hint: ${HOST_ADDRESS} is this host's own address, which guest commands are refused whatever --allow-network says: a mirror served on this host is reached with --host-port PORT`);
      // shell takes the flag too.
      const shell = (extra: string[]) => runCli(['shell', '--disk-image', input, ...extra, '--command', connect(lan.address, lan.port)]);
      expect((await shell([])).stdout).toMatch(/10\.77\.0\.2: .*Permission denied/);
      expect((await shell(['--allow-network', '10.77.0.0/24'])).stdout).toContain('10.77.0.2:CONNECTED');
      await expectHostUntouched(before);
    } finally {
      for (const process of [server, holder]) {
        process?.kill();
        await process;
      }
      await execa('ip', ['link', 'delete', lan.host], { reject: false });
      await execa('umount', [lan.netns], { reject: false });
    }
    // Nothing of it is left mounted: not its namespace, nor a /run/netns it did not find.
    expect(await netnsMounts()).toEqual(runNetnsBefore);
  }, 240_000);

  test('the host\'s IPv6 link-local addresses are refused too', async () => {
    const interfaces = JSON.parse((await execa('ip', ['-j', '-6', 'address', 'show', 'scope', 'link'])).stdout) as { ifname: string; addr_info: { local?: string }[] }[];
    const nic = interfaces.find((entry) => entry.ifname !== 'lo' && entry.addr_info.some((address) => address.local));
    if (!nic) throw new Error('this test needs a host interface with an IPv6 link-local address (ip -6 address show scope link)');
    const linkLocal = `${nic.addr_info.find((address) => address.local)!.local}%${nic.ifname}`;
    const { server, port } = await serve('::');
    servers.push(server);
    expect((await execa('curl', ['-sS', '-g', `http://[${linkLocal.replace('%', '%25')}]:${port}/`])).stdout).toBe('host service');
    const before = await snapshotHost();
    const result = await runCli(['shell', '--disk-image', input, '--writable', '--command', connect(linkLocal, port)]);
    expect(result.exitCode).toBe(0);
    expect(result.stdout).toMatch(/: .*Permission denied/);
    expect(result.stdout).not.toContain('CONNECTED');
    await expectHostUntouched(before);
  }, 120_000);

  test('a host whose resolver is on its own loopback: the guest resolves through it, and reaches nothing else of it', async () => {
    // This host's /etc/resolv.conf, as a dnsmasq host's would be, in a mount namespace of the build's own.
    const resolver = '127.0.0.7';
    const dns = await serveDns(resolver, '192.0.2.77');
    const resolvConf = join(work, 'resolv.conf');
    await writeFile(resolvConf, `search imagebuilder.test\nnameserver ${resolver}\noptions timeout:2\n`);
    // A DNS UPDATE (opcode 5) adding a record under update.imagebuilder.test, as a guest would send it to a resolver
    // that trusts localhost: it must be answered REFUSED by the forwarder, never reach the resolver.
    const update = `perl -MIO::Socket::INET -e '
      my $s = IO::Socket::INET->new(PeerAddr => "169.254.1.1:53", Proto => "udp") or die "socket: $!";
      my $name = join("", map { chr(length) . $_ } qw(update imagebuilder test)) . chr(0);
      $s->send(pack("nnnnnn", 0x4242, 0x2800, 1, 0, 1, 0) . $name . pack("nn", 6, 1) . $name . pack("nnNn", 1, 1, 60, 4) . pack("C4", 10, 0, 0, 66));
      my $r = ""; $s->recv($r, 512); my ($id, $flags) = unpack("nn", $r); printf "UPDATE-ANSWER id=%x rcode=%d\\n", $id, $flags & 15;'`;
    // The guest waits a little at the end, while the relay is looked at from the host.
    const script = ['cat /etc/resolv.conf', 'getent hosts mirror.imagebuilder.test || echo NO-ANSWER', 'RES_OPTIONS=use-vc getent hosts tcp.imagebuilder.test || echo NO-TCP-ANSWER', connect('169.254.1.1', 80), update, 'sleep 3'].join('\n');
    const before = await snapshotHost();
    try {
      const running = execa('unshare', ['--mount', '--propagation', 'private', 'sh', '-c', 'mount --bind "$1" /etc/resolv.conf && shift && exec "$@"', 'dns-host', resolvConf,
        'node', CLI, 'shell', '--disk-image', input, '--writable', '--command', script], { reject: false });
      // The relay takes the guest's traffic in the host's PID namespace: it runs as a uid of its own, not nobody's.
      let relayUid: number | undefined;
      for (const until = Date.now() + 60_000; relayUid === undefined && Date.now() < until; await new Promise((resolve) => setTimeout(resolve, 100))) {
        const relay = (await execa('ps', ['-eo', 'uid=,args=', '--no-headers'])).stdout.split('\n').map((line) => line.trim()).find((line) => / -e .*169\.254\.1\.1$/.test(line));
        if (relay) relayUid = Number(relay.split(/\s+/)[0]);
      }
      const result = await running;
      expect(relayUid).toBeGreaterThanOrEqual(BOX_UIDS.first);
      expect(relayUid).toBeLessThan(BOX_UIDS.first + BOX_UIDS.count);
      expect(result.exitCode).toBe(0);
      expect(result.stdout).toContain('nameserver 169.254.1.1');
      expect(result.stdout).not.toContain(`nameserver ${resolver}`);
      expect(result.stdout).toMatch(/^192\.0\.2\.77\s+mirror\.imagebuilder\.test$/m);
      // Over TCP too (glibc's use-vc): the relay carries DNS over TCP as it is.
      expect(result.stdout).toMatch(/^192\.0\.2\.77\s+tcp\.imagebuilder\.test$/m);
      expect(dns.queries).toEqual(expect.arrayContaining(['mirror.imagebuilder.test/1', 'tcp.imagebuilder.test/1']));
      expect(result.stdout).toContain('UPDATE-ANSWER id=4242 rcode=5');
      expect(dns.queries.filter((query) => query.startsWith('update.'))).toEqual([]);
      // The relay answers DNS and nothing else: another port of that address has no one listening.
      expect(result.stdout).toMatch(/169\.254\.1\.1: .*Connection refused/);
    } finally {
      dns.close();
    }
    await expectHostUntouched(before);
  }, 120_000);

  test('a step with network: none has no route, and apt fails saying why; a build whose steps need no network (a file, a service) makes no network namespace', async () => {
    const recipe = await writeRecipe(work, 'offline', [
      { name: 'a file', file: { path: '/etc/motd', content: 'written without a network\n' } },
      // The guest's own systemctl, as the user, swap and sysprep steps run the guest's programs: they need no network.
      { name: 'a unit', service: { mask: ['apt-daily.timer'] } },
      { name: 'no route', network: 'none', run: `${connect('deb.debian.org', 80)}\n${connect('1.1.1.1', 80)}\ngrep -c . /proc/net/route || true` },
      { name: 'offline apt', network: 'none', packages: { install: ['hello'] } },
    ]);
    const before = await snapshotHost();
    const result = await runCli(['apply', recipe, '--disk-image', input, '--output', join(work, 'offline-out.qcow2'), '--sparsify', 'none', '--no-cache', '--verbose']);
    expect(result.exitCode).toBe(4);
    expect(result.stderr).toContain('step 1/4 (a file) done');
    expect(result.stderr).toContain('step 2/4 (a unit) done');
    // The sandbox's network is made on first use: a file write, a service step and steps with network: none never ask for it.
    expect(result.stderr).toContain('network on first use');
    expect(result.stderr).not.toMatch(/\$ (pasta|unshare --net)/);
    expect(result.stderr).not.toContain('sandbox network ready');
    expect(result.stderr).not.toContain('CONNECTED');
    expect(result.stderr).toMatch(/1\.1\.1\.1: .*Network is unreachable/);
    expect(result.stderr).toMatch(/error \[STEP_FAILED\]: installing packages: .* exited with 100 \(this step has no network: network: none\)/);
    expect(result.stderr).toContain('hint: the step runs with network: none');
    await expectHostUntouched(before);
  }, 180_000);

  test('--host-port opts one port of the host\'s loopback in, and only that one', async () => {
    const other = await serve('127.0.0.1');
    servers.push(other.server);
    const recipe = await writeRecipe(work, 'host-port', [{ name: 'mirror on the host', run: `${connect('127.0.0.1', ports['127.0.0.1'])}\n${connect('127.0.0.1', other.port)}\nexit 9` }]);
    const before = await snapshotHost();
    const result = await runCli(['apply', recipe, '--disk-image', input, '--output', join(work, 'host-port-out.qcow2'), '--sparsify', 'none', '--no-cache', '--host-port', String(ports['127.0.0.1'])]);
    expect(result.exitCode).toBe(4);
    expect(result.stderr).toContain('127.0.0.1: 127.0.0.1:CONNECTED');
    expect(result.stderr).toContain(`/dev/tcp/127.0.0.1/${other.port}: Connection refused`);
    await expectHostUntouched(before);
  }, 120_000);

  test('effective, permitted, inheritable, ambient and bounding sets are exactly the allowlist; no_new_privs; seccomp on', async () => {
    const before = await snapshotHost();
    const result = await runCli(['shell', '--disk-image', input, '--command', 'grep -E "^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs|Seccomp):" /proc/self/status']);
    expect(result.exitCode).toBe(0);
    const status = Object.fromEntries(result.stdout.trim().split('\n').map((line) => line.split(':').map((part) => part.trim())));
    for (const set of ['CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb']) expect({ set, mask: BigInt(`0x${status[set]}`) }).toEqual({ set, mask: ALLOWED_MASK });
    expect(status.NoNewPrivs).toBe('1');
    expect(status.Seccomp).toBe('2');
    await expectHostUntouched(before);
  }, 60_000);

  test("the fresh /proc's knobs on the host's kernel and devices (/proc/sys, /proc/fs, /proc/acpi, /proc/driver, /proc/scsi) are read-only", async () => {
    const before = await snapshotHost();
    const script = `awk '$5 ~ /^\\/proc\\/(sys|fs|acpi|driver|scsi|sysrq-trigger)$/ { split($6, options, ","); print $5, options[1] }' /proc/self/mountinfo`;
    const result = await runCli(['shell', '--disk-image', input, '--command', script]);
    expect(result.exitCode).toBe(0);
    const mounts = Object.fromEntries(result.stdout.trim().split('\n').map((line) => line.trim().split(' ')));
    // Each one this kernel has (it has no /proc/scsi without CONFIG_SCSI_PROC_FS) is bound read-only over itself.
    const present = ['/proc/sys', '/proc/fs', '/proc/acpi', '/proc/driver', '/proc/scsi', '/proc/sysrq-trigger'].filter((path) => existsSync(path));
    expect(present).toEqual(expect.arrayContaining(['/proc/sys', '/proc/fs']));
    expect(mounts).toEqual(Object.fromEntries(present.map((path) => [path, 'ro'])));
    await expectHostUntouched(before);
  }, 60_000);

  test("the session's /sys shows none of the host's interfaces, nor its firmware's tables and identity; its /dev and /run are sized tmpfs", async () => {
    const before = await snapshotHost();
    // What says which machine this is, written out here independently of the code; at least the ACPI tables on this host.
    const identity = ['firmware/acpi/tables', 'firmware/dmi', 'firmware/qemu_fw_cfg', 'firmware/ibft', 'firmware/devicetree', 'devices/virtual/dmi/id', 'hypervisor'].filter((path) => existsSync(join('/sys', path)));
    if (!identity.includes('firmware/acpi/tables') || !readdirSync('/sys/firmware/acpi/tables').length) throw new Error('this test needs a host with ACPI tables in /sys/firmware/acpi/tables');
    const script = [
      'echo "sys: $(stat -f -c %T /sys) acpi: $(stat -f -c %T /sys/firmware/acpi)"',
      ...identity.map((path) => `echo "${path}: $(stat -f -c %T /sys/${path}) $(ls -A /sys/${path} | wc -l) entries"`),
      'cat /sys/firmware/acpi/tables/DSDT 2>&1 | head -c 200 | grep -o "No such file or directory"',
      // EFI detection stays as the host's: packages ask it.
      `echo "efi: $(test -d /sys/firmware/efi && echo yes || echo no)"`,
      'echo "net: $(ls /sys/class/net | tr "\\n" " ")"',
      'df -k --output=size,target /dev /run | tail -n +2',
      'dd if=/dev/zero of=/dev/shm/fill bs=1M count=80 2>&1 | grep -o "No space left on device" | head -1',
    ].join('\n');
    const result = await runCli(['shell', '--disk-image', input, '--command', script]);
    expect(result.exitCode).toBe(0);
    // sysfs shows its mounter's network namespace: a throwaway one, gone once mounted, so no interface at all.
    expect(readdirSync('/sys/class/net').filter((name) => name !== 'lo').length).toBeGreaterThan(0);
    expect(result.stdout).toMatch(/^net: $/m);
    // The kernel's sysfs, with what says which machine this is covered by empty tmpfs mounts, and the rest kept.
    expect(result.stdout).toContain('sys: sysfs acpi: sysfs');
    for (const path of identity) expect(result.stdout).toContain(`${path}: tmpfs 0 entries`);
    expect(result.stdout).toContain('No such file or directory');
    expect(result.stdout).toContain(`efi: ${existsSync('/sys/firmware/efi') ? 'yes' : 'no'}`);
    expect(result.stdout).toMatch(/^\s*65536 \/dev$/m);
    // /run as large as the build's memory limit (4 GiB by default): a container-images step stages its archives there.
    expect(result.stdout).toMatch(/^\s*4194304 \/run$/m);
    expect(result.stdout).toContain('No space left on device');
    await expectHostUntouched(before);
  }, 60_000);

  test("a read-only guest command (a recipe's check on the image, the components probe) gets a read-only /dev and a /dev/shm and /tmp sized as the session's", async () => {
    const before = await snapshotHost();
    const probe = [
      'df -k --output=size,target /dev/shm /tmp | tail -n +2 | tr -s " "',
      'if touch /dev/imagebuilder-probe 2>/dev/null; then echo DEV-WRITABLE; else echo DEV-READ-ONLY; fi',
      'dd if=/dev/zero of=/dev/shm/fill bs=1M count=80 2>&1 | grep -o "No space left on device" | head -1',
    ].join('; ');
    const recipe = join(work, 'read-only-box.yaml');
    await writeFile(recipe, stringify({ name: 'read-only-box', steps: [{ file: { path: '/etc/motd', content: 'x' } }], checks: [{ command: { run: probe, boot: false, stdout: [' 65536 /dev/shm', ' 4194304 /tmp', 'DEV-READ-ONLY', 'No space left on device'] } }] }));
    const output = join(work, 'read-only-box.qcow2');
    const result = await runCli(['apply', recipe, '--disk-image', input, '--output', output, '--sparsify', 'none', '--sbom', 'none', '--no-cache']);
    expect(result.stderr).not.toContain('stdout lacks');
    expect(result.exitCode).toBe(0);
    const bom = JSON.parse(await readFile(`${output}.bom.json`, 'utf8')) as { checks: { status: string }[] };
    expect(bom.checks.map((check) => check.status)).toEqual(['passed']);
    await rm(output, { force: true });
    await expectHostUntouched(before);
  }, 120_000);

  test("the boxes host programs parse hostile data in (qemu-img's probe as uid 0, setfiles as root): exactly their capabilities, /proc's host knobs read-only, no mount, no fanotify, no kernel log, none of the host's files", async () => {
    const box = await mkdtemp('/var/tmp/ib-box-');
    try {
      const seccompFile = join(box, 'seccomp.bpf');
      await writeFile(seccompFile, seccompBytes(hostSeccompArch()!, 'host-tool'));
      await writeFile(join(box, 'owned-by-42'), 'x');
      await execa('chown', ['42', join(box, 'owned-by-42')]);
      const probe = [
        'grep -E "^Cap(Eff|Bnd):" /proc/self/status',
        'awk \'$5 == "/proc/sys" { split($6, o, ","); print "procsys", o[1] }\' /proc/self/mountinfo',
        'mount -t tmpfs none /tmp >/dev/null 2>&1 && echo mount=ok || echo mount=refused',
        'test -e /etc/shadow && echo shadow=seen || echo shadow=absent',
        'test -e /dev/null && echo dev=present || echo dev=absent',
        'echo kmsg=$(head -c 16 /proc/kmsg 2>/dev/null | wc -c)',
        // A file, not -e: perl -e opens /dev/null, which setfiles' box does not have.
        `perl ${box}/fanotify.pl`,
        `perl ${box}/getflags.pl`,
      ].join('; ');
      // FS_IOC_GETFLAGS on a file of the host's /usr: a filesystem ioctl, harmless, standing for FIFREEZE and the rest.
      await writeFile(join(box, 'getflags.pl'), 'open my $f, "<", "/usr/bin/env" or die; my $b = pack("L!", 0); $! = 0; my $r = ioctl($f, 0x80086601, $b); print "getflags=", (defined $r ? "ok" : $!+0), "\\n";\n');
      // fanotify_init(FAN_CLASS_NOTIF, O_RDONLY): an fd with CAP_SYS_ADMIN unless the filter denies it.
      await writeFile(join(box, 'fanotify.pl'), `$! = 0; my $r = syscall(${process.arch === 'arm64' ? 262 : 300}, 0, 0); print "fanotify=", ($r == -1 ? $!+0 : "ok"), "\\n";\n`);
      const setfilesBox = confinedRootCommand(['/bin/sh', '-c', `${probe}; setfattr -n security.selinux -v system_u:object_r:etc_t:s0 ${box}/owned-by-42 && echo label=set`], {
        capabilities: SETFILES_CAPABILITIES,
        seccompFile,
        binds: [{ host: box, inside: box, writable: true }],
      });
      const probeBox = unprivilegedCommand(['/bin/sh', '-c', probe], { keepRootUid: true, binds: [{ host: box, inside: box }] });
      const mask = (names: number[]) => names.reduce((bits, bit) => bits | (1n << BigInt(bit)), 0n);
      // Where the host's /usr answers FS_IOC_GETFLAGS itself (ext4, xfs, btrfs: 'ok'), only the filter refuses it in the box.
      const hostGetflags = (await execa('perl', [join(box, 'getflags.pl')])).stdout.trim();
      for (const [[file, args], capabilities, labels, dev, getflags] of [
        // dac_override, fowner, sys_admin; no /dev (the host's devtmpfs); no filesystem ioctl (ENOTTY)
        [setfilesBox, mask([1, 3, 21]), true, 'dev=absent', 'getflags=25'],
        [probeBox, 0n, false, 'dev=present', hostGetflags],
      ] as const) {
        const { stdout } = await execa(file, [...args]);
        const lines = stdout.split('\n').map((line) => line.trim());
        for (const set of ['CapEff', 'CapBnd']) expect({ set, mask: BigInt(`0x${lines.find((line) => line.startsWith(set))!.split(/\s+/)[1]}`) }).toEqual({ set, mask: capabilities });
        // The host's kernel log is not read (covered, or no capability to), and fanotify is denied (EPERM).
        expect(lines).toEqual(expect.arrayContaining(['procsys ro', 'mount=refused', 'shadow=absent', dev, 'kmsg=0', 'fanotify=1', getflags]));
        if (labels) expect(lines).toContain('label=set');
      }
    } finally {
      await rm(box, { recursive: true, force: true });
    }
  });

  test('bpf, perf_event_open, keyctl, mount, a user namespace, TIOCSTI and TIOCSETD fail with EPERM; clone3 and io_uring with ENOSYS; AF_VSOCK with EAFNOSUPPORT', async () => {
    if (process.arch !== 'x64') return;
    // x86_64 numbers; keyctl(GET_KEYRING_ID, SESSION) and perf_event_open(NULL) would otherwise answer an id
    // and EFAULT, unshare(CLONE_NEWUSER) would succeed, TIOCSTI on the shell's own pty would type.
    const probe = `
      my @calls = ([bpf => 321, 5, 0, 0], [perf_event_open => 298, 0, 0, -1, -1, 0], [keyctl => 250, 0, -3, 0],
                   [mount => 165, 0, 0, 0, 0, 0], [unshare_newuser => 272, 0x10000000], [clone3 => 435, 0, 0], [io_uring_setup => 425, 1, 0],
                   [vsock => 41, 40, 5, 0], [unix => 41, 1, 1, 0], [inet => 41, 2, 1, 0], [inet6 => 41, 10, 2, 0], [netlink => 41, 16, 3, 0],
                   [genetlink => 41, 16, 3, 16], [nfnetlink => 41, 16, 3, 12]);
      for my $call (@calls) { my ($name, $nr, @args) = @$call; $! = 0; my $r = syscall($nr, @args); printf "%s=%s\\n", $name, $r == -1 ? $!+0 : "ok"; }
      my $c = "x"; $! = 0; my $r = ioctl(STDIN, 0x5412, $c); printf "tiocsti=%s\\n", defined $r ? "ok" : $!+0;
      my $d = pack("i", 0); $! = 0; $r = ioctl(STDIN, 0x5423, $d); printf "tiocsetd=%s\\n", defined $r ? "ok" : $!+0;`;
    const before = await snapshotHost();
    const result = await runCli(['shell', '--disk-image', input, '--command', `perl -e '${probe.replace(/'/g, `'\\''`)}'`]);
    expect(result.exitCode).toBe(0);
    expect(Object.fromEntries(result.stdout.trim().split('\n').filter((l) => l.includes('=')).map((l) => l.trim().split('=')))).toEqual({
      bpf: '1', perf_event_open: '1', keyctl: '1', mount: '1', unshare_newuser: '1', clone3: '38', io_uring_setup: '38', tiocsti: '1', tiocsetd: '1',
      // socket(AF_VSOCK, SOCK_SEQPACKET) opens on this host (the hypervisor's vsock transport) but not in the sandbox;
      // nor do netlink's generic and netfilter protocols (both open on this host).
      vsock: '97', unix: 'ok', inet: 'ok', inet6: 'ok', netlink: 'ok', genetlink: '93', nfnetlink: '93',
    });
    await expectHostUntouched(before);
  }, 60_000);

  test('a descriptor imagebuilder inherits (a CI runner\'s redirection on a host directory) reaches no guest command', async () => {
    // Through it a guest command (root, with CAP_DAC_OVERRIDE) would read and write the host's /etc by openat,
    // whatever its mounts: bwrap and the chain before it pass on what they get. Node's spawn passes only the
    // descriptors it is given (stdio, qemu's image), which this holds it to.
    const probe = 'test -e /proc/self/fd/7 && echo fd7=inherited && ls /proc/self/fd/7/ | head -3 || echo fd7=closed';
    const result = await execa('bash', ['-c', 'exec 7</etc; exec "$@"', 'bash', 'node', CLI, 'shell', '--disk-image', input, '--command', probe], { reject: false });
    expect(result.exitCode).toBe(0);
    expect(result.stdout.trim().split('\n')).toEqual(['fd7=closed']);
  });

  test('a fork bomb and a memory hog each end as a failed step naming the limit, everything released', async () => {
    const bomb = await writeRecipe(work, 'bomb', [{ name: 'fork bomb', run: { script: 'bomb() { bomb | bomb & }; bomb; sleep 60', timeout: 20 } }]);
    const before = await snapshotHost();
    const started = Date.now();
    const forked = await runCli(['apply', bomb, '--disk-image', input, '--output', join(work, 'bomb-out.qcow2'), '--sparsify', 'none', '--no-cache', '--pids-limit', '200']);
    expect(forked.exitCode).toBe(4);
    expect(forked.stderr).toContain('error [STEP_FAILED]: step 1/1 (fork bomb) failed');
    expect(forked.stderr).toContain('it hit the pids limit (200 processes)');
    expect(Date.now() - started).toBeLessThan(90_000);
    await expectHostUntouched(before);

    const hog = await writeRecipe(work, 'hog', [{ name: 'memory hog', run: 'perl -e \'my @a; push @a, "x" x (16 << 20) while 1\'' }]);
    const again = await snapshotHost();
    const hogged = await runCli(['apply', hog, '--disk-image', input, '--output', join(work, 'hog-out.qcow2'), '--sparsify', 'none', '--no-cache'], { env: { ...process.env, IMAGEBUILDER_MEMORY_LIMIT: '256M' } as Record<string, string> });
    expect(hogged.exitCode).toBe(4);
    expect(hogged.stderr).toContain('error [STEP_FAILED]: step 1/1 (memory hog) failed');
    expect(hogged.stderr).toContain('it hit the memory limit (256 MiB)');
    await expectHostUntouched(again);
  }, 300_000);

  test('shell --command trying TIOCSTI: the user\'s shell afterwards receives nothing', async () => {
    // The user's terminal: a pty (script) whose shell runs imagebuilder, then reads what is waiting on it.
    const typeIntoTerminal = `perl -e 'ioctl(STDIN, 0x5412, $_) for split //, "echo INJECTED\\n"; print "tried\\n"'`;
    const userShell = (command: string) => execa('script', ['--quiet', '--return', '--command', `${command}; read -t 2 line; echo "HOST-READ:[$line]"`, '/dev/null'], {
      reject: false, stdin: 'pipe', env: { ...process.env, SHELL: '/bin/bash' },
    });
    // Control: the same program run directly on that terminal does type into the user's shell (the harness sees it).
    if ((await execa('cat', ['/proc/sys/dev/tty/legacy_tiocsti'], { reject: false })).stdout.trim() !== '0') {
      const control = await userShell(typeIntoTerminal);
      expect(control.stdout).toContain('HOST-READ:[echo INJECTED]');
    }
    const before = await snapshotHost();
    const attacked = await userShell(`node ${CLI} shell --disk-image ${input} --command ${`'${typeIntoTerminal.replace(/'/g, `'\\''`)}'`}`);
    expect(attacked.stdout).toContain('tried');
    expect(attacked.stdout).toContain('HOST-READ:[]');
    expect(attacked.stdout).not.toContain('INJECTED]');
    // Not interactive (stdin not a terminal) but printing to one: the guest's escape sequences reach it as text.
    const titled = await userShell(`node ${CLI} shell --disk-image ${input} --command 'printf "\\033]0;pwned\\007visible\\n"; printf "\\033[2Jto stderr\\n" >&2' </dev/null`);
    expect(titled.stdout).toContain('\\x1b]0;pwned\\x07visible');
    expect(titled.stdout).toContain('\\x1b[2Jto stderr');
    expect(titled.stdout).not.toContain('\x1b]0;pwned');
    expect(titled.stdout).not.toContain('\x1b[2J');
    await expectHostUntouched(before);
  }, 120_000);
});
