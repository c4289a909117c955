import { CommandTimeout, execRunner } from '../../src/util/exec.js';
import { isBlockedDestination, withNat64Forms } from '../../src/util/blocked-destinations.js';
import { GUEST_CAPABILITIES, GUEST_DNS_FORWARD, guestDns, networkRules, parseAllowedNetworks, refusedDestination, parseHostPorts, parseMemorySize, sandboxedCommand, type BuildSandbox } from '../../src/chroot/sandbox.js';

const sandbox: BuildSandbox = {
  networkNamespace: async () => '/tmp/imagebuilder-sandbox-1-ab/netns', resolvConf: 'nameserver 192.0.2.53\n', limits: { memoryBytes: 1 << 30, pids: 100 }, cgroupProcs: ['/sys/fs/cgroup/memory/x/cgroup.procs', '/sys/fs/cgroup/pids/x/cgroup.procs'],
  seccompFile: '/tmp/s/seccomp.bpf', bwrap: '/usr/bin/bwrap', lastCapability: 40, counters: async () => ({ oomKills: 0, pidsRefused: 0 }), processes: async () => [],
};

describe('sandboxedCommand: the argv of every guest command', () => {
  test('cgroups and seccomp fd, the build\'s network namespace, the bounding set, then bwrap with the allowlist', () => {
    const [file, args] = sandboxedCommand('/guest', ['apt-get', 'update'], sandbox, { netns: '/tmp/imagebuilder-sandbox-1-ab/netns' });
    expect(file).toBe('/bin/sh');
    expect(args.slice(2, 7)).toEqual(['enter-sandbox', '/tmp/s/seccomp.bpf', ...sandbox.cgroupProcs, '--']);
    expect(args.slice(7, 10)).toEqual(['nsenter', '--net=/tmp/imagebuilder-sandbox-1-ab/netns', '--']);
    expect(args[10]).toBe('capsh');
    // Every capability number up to the kernel's last but the allowlist's leaves the bounding set.
    expect(args[12]).toBe(`--drop=${[2, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 30, 32, 33, 34, 35, 36, 37, 38, 39, 40].join(',')}`);
    expect(args[13]).toBe('--shell=/usr/bin/bwrap');
    const bwrap = args.slice(15);
    expect(bwrap.slice(0, 3)).toEqual(['--dev-bind', '/guest', '/']);
    expect(bwrap).toEqual(expect.arrayContaining(['--unshare-pid', '--unshare-ipc', '--unshare-uts', '--die-with-parent', '--new-session', '--seccomp', '3']));
    expect(bwrap).not.toContain('--unshare-net');
    const added = bwrap.flatMap((arg, i) => (bwrap[i - 1] === '--cap-add' ? [arg] : []));
    expect(added.sort()).toEqual(Object.keys(GUEST_CAPABILITIES).sort());
    expect(bwrap.indexOf('--cap-drop')).toBeLessThan(bwrap.indexOf('--cap-add'));
    expect(bwrap.slice(-3)).toEqual(['--', 'apt-get', 'update']);
  });

  test('the sandboxed network needs the namespace the sandbox made for it', () => {
    expect(() => sandboxedCommand('/guest', ['apt-get', 'update'], sandbox)).toThrow(/network namespace/);
    expect(() => sandboxedCommand('/guest', ['true'], sandbox, { network: 'none' })).not.toThrow();
  });

  test('network: none is a network namespace of bwrap\'s own, without nsenter; interactive keeps the session for its pty', () => {
    const [, args] = sandboxedCommand('/guest', ['true'], sandbox, { network: 'none', interactive: true });
    expect(args).not.toContain('nsenter');
    expect(args).toContain('--unshare-net');
    expect(args).not.toContain('--new-session');
  });
});

test('limits and ports as users write them', () => {
  expect(parseMemorySize('4G')).toBe(4 * 1024 ** 3);
  expect(parseMemorySize('512M')).toBe(512 * 1024 ** 2);
  expect(parseMemorySize('1.5GiB')).toBe(1.5 * 1024 ** 3);
  expect(parseMemorySize(1048576)).toBe(1048576);
  expect(() => parseMemorySize('lots')).toThrow(/not a size/);
  expect(parseHostPorts(['8080,9000', '81'])).toEqual([8080, 9000, 81]);
  expect(parseHostPorts('8080')).toEqual([8080]);
  expect(() => parseHostPorts(['70000'])).toThrow(/not a TCP port/);
});

describe('guestDns: the host\'s DNS, made reachable from the sandbox', () => {
  test('nameservers reached through the NAT are kept as they are', () => {
    const host = 'search example.com\nnameserver 10.255.255.53\nnameserver 2001:db8::53\noptions edns0\n';
    expect(guestDns(host)).toEqual({ resolvConf: host });
  });

  test('systemd-resolved\'s stub is replaced by its upstreams', () => {
    const upstream = 'nameserver 192.0.2.10\n';
    expect(guestDns('nameserver 127.0.0.53\noptions edns0 trust-ad\n', upstream)).toEqual({ resolvConf: upstream });
  });

  test('a resolver on the host\'s loopback is reached through the forwarder; other loopback ones are dropped', () => {
    const dns = guestDns('# dnsmasq\nnameserver 127.0.0.1\nnameserver ::1\nnameserver 127.0.0.2\nnameserver 192.0.2.10\nsearch corp\n');
    expect(dns.forwardTo).toBe('127.0.0.1');
    expect(dns.resolvConf).toBe(`# dnsmasq\nnameserver ${GUEST_DNS_FORWARD}\nnameserver 192.0.2.10\nsearch corp\n`);
    expect(dns.warning).toBeUndefined();
    // The stub without its upstreams file: forwarded like any loopback resolver.
    expect(guestDns('nameserver 127.0.0.53\n')).toEqual({ resolvConf: `nameserver ${GUEST_DNS_FORWARD}\n`, forwardTo: '127.0.0.53' });
  });

  test('only IPv6 loopback resolvers: no DNS, said in a warning', () => {
    const dns = guestDns('nameserver ::1\n');
    expect(dns.forwardTo).toBeUndefined();
    expect(dns.resolvConf).not.toContain('nameserver');
    expect(dns.warning).toMatch(/only nameservers \(::1\) are IPv6 addresses the sandbox cannot reach/);
  });

  test("a metadata service's resolver (Azure's 168.63.129.16, AWS's 169.254.169.253), which the sandbox refuses, is reached through the forwarder", () => {
    expect(guestDns('nameserver 168.63.129.16\nsearch internal.cloudapp.net\n')).toEqual({ resolvConf: `nameserver ${GUEST_DNS_FORWARD}\nsearch internal.cloudapp.net\n`, forwardTo: '168.63.129.16' });
    expect(guestDns('nameserver 169.254.169.253\nnameserver 10.0.0.2\n')).toEqual({ resolvConf: `nameserver ${GUEST_DNS_FORWARD}\nnameserver 10.0.0.2\n`, forwardTo: '169.254.169.253' });
    // Behind systemd-resolved's stub (Ubuntu on Azure): its upstream, forwarded the same.
    expect(guestDns('nameserver 127.0.0.53\n', 'nameserver 168.63.129.16\n')).toEqual({ resolvConf: `nameserver ${GUEST_DNS_FORWARD}\n`, forwardTo: '168.63.129.16' });
    // Nearby addresses are no metadata service's: kept.
    expect(guestDns('nameserver 168.63.129.17\n')).toEqual({ resolvConf: 'nameserver 168.63.129.17\n' });
    // AWS's IPv6 resolver (fd00:ec2::253) is refused too, and the forwarder speaks IPv4 alone: dropped, said.
    expect(guestDns('nameserver fd00:ec2::253\n').warning).toMatch(/cannot reach/);
    // Every list entry, however written: a link-local with its zone, and Azure's as an IPv4-mapped IPv6 address.
    for (const server of ['fe80::1%eth0', 'FE80::1', '::ffff:168.63.129.16', '::ffff:a9fe:a9fd']) {
      expect({ server, dns: guestDns(`nameserver ${server}\nnameserver 10.0.0.2\n`) }).toEqual({ server, dns: { resolvConf: 'nameserver 10.0.0.2\n', warning: undefined } });
    }
    expect(guestDns('nameserver fec0::1\nnameserver 2001:db8::53\n')).toEqual({ resolvConf: 'nameserver fec0::1\nnameserver 2001:db8::53\n' });
  });
});

describe('networkRules: policy rules of the sandbox', () => {
  const blocked = ['169.254.0.0/16', 'fe80::/10', 'fd00:ec2::/32', '192.0.2.2/32', '2001:db8::2/128'];
  test('one family at a time: the refused first, then what is allowed through the main table, then every private network refused', () => {
    // A repeat (an address given twice, a nameserver listed twice) is one rule: ip would stop the batch at it.
    expect(networkRules([...blocked, '192.0.2.2/32'], ['10.20.0.0/16', '10.20.0.0/16', '10.96.0.10/32'], 4, ['10.96.0.10/32', '10.96.0.10/32'])).toEqual([
      'rule add to 169.254.0.0/16 prohibit pref 100', 'rule add to 192.0.2.2/32 prohibit pref 100',
      'rule add to 10.20.0.0/16 lookup main pref 150', 'rule add to 10.96.0.10/32 lookup main pref 150',
      // The host's nameservers: their DNS port alone.
      'rule add to 10.96.0.10/32 ipproto udp dport 53 lookup main pref 150', 'rule add to 10.96.0.10/32 ipproto tcp dport 53 lookup main pref 150',
      'rule add to 10.0.0.0/8 prohibit pref 200', 'rule add to 172.16.0.0/12 prohibit pref 200', 'rule add to 192.168.0.0/16 prohibit pref 200', 'rule add to 100.64.0.0/10 prohibit pref 200',
    ]);
    // IPv6: the private networks under the well-known NAT64 prefix too, RFC 8215's local-use one whole.
    expect(networkRules(blocked, [], 6)).toEqual([
      'rule add to fe80::/10 prohibit pref 100', 'rule add to fd00:ec2::/32 prohibit pref 100', 'rule add to 2001:db8::2/128 prohibit pref 100',
      'rule add to 64:ff9b::a00:0/104 prohibit pref 200', 'rule add to 64:ff9b::ac10:0/108 prohibit pref 200', 'rule add to 64:ff9b::c0a8:0/112 prohibit pref 200',
      'rule add to 64:ff9b::6440:0/106 prohibit pref 200', 'rule add to fc00::/7 prohibit pref 200', 'rule add to 64:ff9b:1::/48 prohibit pref 200',
    ]);
  });

  test('every refused IPv4 network is refused under the well-known NAT64 prefix too (an IPv6-only host behind NAT64)', () => {
    expect(withNat64Forms(['169.254.0.0/16', '168.63.129.16/32', 'fe80::/10', '10.20.0.0/16'])).toEqual([
      '169.254.0.0/16', '64:ff9b::a9fe:0/112', '168.63.129.16/32', '64:ff9b::a83f:8110/128', 'fe80::/10', '10.20.0.0/16', '64:ff9b::a14:0/112',
    ]);
    for (const address of ['64:ff9b::a9fe:a9fe', '64:ff9b::169.254.169.254', '[64:ff9b::a83f:8110]', '64:ff9b::c000:c0']) expect({ address, blocked: isBlockedDestination(address) }).toEqual({ address, blocked: true });
    for (const address of ['64:ff9b::5db8:d822', '64:ff9b::a00:1']) expect({ address, blocked: isBlockedDestination(address) }).toEqual({ address, blocked: false });
  });

  test('--allow-network takes addresses and CIDR networks, and names what it does not take', () => {
    expect(parseAllowedNetworks(['10.20.0.0/16,192.168.1.5', 'fd12::/64'])).toEqual(['10.20.0.0/16', '192.168.1.5/32', 'fd12::/64']);
    expect(parseAllowedNetworks('10.1.0.0/16, 10.2.0.0/16')).toEqual(['10.1.0.0/16', '10.2.0.0/16']);
    expect(parseAllowedNetworks()).toEqual([]);
    // IPv6 as ip writes it, so one network in two spellings (or an IPv4 one's NAT64 form) makes one rule.
    expect(parseAllowedNetworks(['64:ff9b:0::0A14:0/112', 'FD12:0:0::1'])).toEqual(['64:ff9b::a14:0/112', 'fd12::1/128']);
    expect(networkRules([], [...withNat64Forms(['10.20.0.0/16']), ...parseAllowedNetworks('64:ff9b::0a14:0/112')], 6).filter((rule) => rule.includes('pref 150'))).toEqual(['rule add to 64:ff9b::a14:0/112 lookup main pref 150']);
    for (const bad of ['mirror.internal', '10.0.0.0/33', '10.0.0.0/8/1', '10.0.0.0/x', '10.0.0.0/-1; reboot']) {
      expect(() => parseAllowedNetworks([bad])).toThrow(expect.objectContaining({ code: 'BAD_INPUT', message: `--allow-network ${bad}: not an address or a network` }));
    }
  });
});

describe('the DNS forwarder lets standard queries through, and nothing else', () => {
  // A query for example.com A, as a stub sends it: id 0x1234, RD, one question, an EDNS OPT record.
  const question = Buffer.from([7, ...Buffer.from('example'), 3, ...Buffer.from('com'), 0, 0, 1, 0, 1]);
  const query = (flags: number, counts: [number, number, number, number], qtype = 1) =>
    Buffer.concat([Buffer.from([0x12, 0x34, flags >> 8, flags & 0xff, 0, counts[0], 0, counts[1], 0, counts[2], 0, counts[3]]), question.subarray(0, -4), Buffer.from([0, qtype, 0, 1])]);
  test('a standard query passes; updates, notifies, responses, transfers and malformed messages do not', async () => {
    const { isStandardQuery, refused } = await import('../../src/chroot/dns-forward.js');
    expect(isStandardQuery(query(0x0100, [1, 0, 0, 1]))).toBe(true);
    expect(isStandardQuery(query(0x2800, [1, 0, 1, 0]))).toBe(false); // UPDATE (opcode 5)
    expect(isStandardQuery(query(0x2000, [1, 0, 0, 0]))).toBe(false); // NOTIFY (opcode 4)
    expect(isStandardQuery(query(0x8180, [1, 1, 0, 0]))).toBe(false); // a response
    expect(isStandardQuery(query(0x0000, [1, 0, 0, 0], 252))).toBe(false); // AXFR
    expect(isStandardQuery(query(0x0000, [1, 0, 0, 0], 251))).toBe(false); // IXFR
    expect(isStandardQuery(query(0x0100, [2, 0, 0, 0]))).toBe(false);
    expect(isStandardQuery(Buffer.from([0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 60]))).toBe(false); // a label past the end
    const answer = refused(query(0x2800, [1, 0, 1, 0]));
    expect([...answer]).toEqual([0x12, 0x34, 0x80 | 0x28, 5, 0, 0, 0, 0, 0, 0, 0, 0]);
  });
});

describe('a guest command that failed on a refused address is told which flag opens it', () => {
  const host = ['192.0.2.2/32', '172.17.0.1/32', '2001:db8::2/128'];
  test('a private address on a "Permission denied" line (apt, curl, wget, bash; IPv4 and IPv6, NAT64): --allow-network', () => {
    const privately = (address: string) => ({ address, hostOwn: false });
    expect(refusedDestination('Err:1 http://mirror.lan bookworm InRelease\n  Could not connect to 10.77.0.2:8077 (10.77.0.2). - connect (13: Permission denied)\nE: Unable to locate package x', host)).toEqual(privately('10.77.0.2'));
    expect(refusedDestination('curl: (7) Failed to connect to 192.168.1.20 port 3128 after 0 ms: Permission denied', host)).toEqual(privately('192.168.1.20'));
    expect(refusedDestination('Connecting to 10.8.0.4:3142... failed: Permission denied.', host)).toEqual(privately('10.8.0.4'));
    expect(refusedDestination('bash: line 1: /dev/tcp/172.20.0.5/80: Permission denied', host)).toEqual(privately('172.20.0.5'));
    expect(refusedDestination('  Could not connect to fd12:3456::1:80 (fd12:3456::1). - connect (13: Permission denied)', host)).toEqual(privately('fd12:3456::1'));
    expect(refusedDestination('curl: (7) Failed to connect to fd12:3456::1 port 80 after 0 ms: Permission denied', host)).toEqual(privately('fd12:3456::1'));
    expect(refusedDestination('Curl error (7): Couldn\'t connect to server for http://[64:ff9b::a00:1]/repo [Failed to connect to 64:ff9b::a00:1 port 80: Permission denied]', host)).toEqual(privately('64:ff9b::a00:1'));
  });

  test("this host's own address (a mirror on docker0 or its LAN address): --host-port, as --allow-network cannot open it", () => {
    expect(refusedDestination('Could not connect to 172.17.0.1:3142 (172.17.0.1). - connect (13: Permission denied)', host)).toEqual({ address: '172.17.0.1', hostOwn: true });
    expect(refusedDestination('Failed to connect to 192.0.2.2 port 80: Permission denied', host)).toEqual({ address: '192.0.2.2', hostOwn: true });
  });

  test('nothing for a metadata service, a public address, a private one on a line that says something else, a dotted file name, a file\'s permissions', () => {
    for (const output of [
      'Could not connect to 100.100.100.200:80 (100.100.100.200). - connect (13: Permission denied)',
      'Could not connect to 64:ff9b::a9fe:a9fe port 80: Permission denied',
      'Could not connect to 203.0.113.80:80 (203.0.113.80). - connect (13: Permission denied)',
      'Could not connect to 10.0.0.1:80 - connect (111: Connection refused)\n/etc/shadow: Permission denied',
      '/usr/lib/libfoo.so.10.0.0.1: Permission denied',
    ]) expect({ output, refused: refusedDestination(output, host) }).toEqual({ output, refused: undefined });
  });
});

describe('a command killed at its time limit', () => {
  test('says the limit, what set it, and the timeout hint instead of the failure hint; it is a CommandTimeout', async () => {
    const running = execRunner('sleep', ['5'], { timeoutMs: 300, timeoutSource: "the recipe's limits.timeout", timeoutHint: 'raise it', hint: 'check the package name', purpose: 'installing x' });
    await expect(running).rejects.toThrow(CommandTimeout);
    await expect(running).rejects.toThrow(expect.objectContaining({ message: "installing x: `sleep 5` did not finish within 0.3 s (the recipe's limits.timeout)", hint: 'raise it' }));
    // Without a timeout hint, none: the failure hint is not about a timeout.
    await expect(execRunner('sleep', ['5'], { timeoutMs: 300, hint: 'check the package name' })).rejects.toThrow(expect.objectContaining({ message: '`sleep 5` did not finish within 0.3 s', hint: undefined }));
    // A failure of its own keeps its hint.
    await expect(execRunner('false', [], { timeoutMs: 5000, timeoutHint: 'raise it', hint: 'check the package name' })).rejects.toThrow(expect.objectContaining({ message: '`false` exited with 1', hint: 'check the package name' }));
  });
});
