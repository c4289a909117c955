import { BlockList, isIPv4, isIPv6 } from 'node:net';

/**
 * Destinations nothing a recipe, a guest or a download names is let reach: link-local (metadata services, the
 * host's fe80:: addresses), AWS's IPv6 metadata range, and the metadata services that are not link-local: Azure's
 * WireServer and host agent (168.63.129.16, which only the host's root may reach) and Alibaba Cloud's
 * (100.100.100.200), and the IPv6 ones. Guest commands are refused them by policy rules in their network namespace (sandbox.ts);
 * the host's own fetches (a recipe's download, key or sums URL, a base image, and every redirect) by their
 * connector (fetch/http.ts).
 */
export const BLOCKED_DESTINATIONS = withNat64Forms([
  '169.254.0.0/16', 'fe80::/10', '168.63.129.16/32', '100.100.100.200/32',
  // The IPv6 metadata services: AWS's range, GCP's and Oracle Cloud's addresses; Oracle Cloud Classic's IPv4 one.
  'fd00:ec2::/32', 'fd20:ce::254/128', 'fd00:c1::a9fe:a9fe/128', '192.0.0.192/32',
]);

/**
 * The private networks (RFC 1918, shared address space, IPv6 unique local; the IPv4 ones under NAT64 too): the LAN, a container bridge, a cluster's
 * service and pod networks, a VPN's peers. Guest commands are refused them unless the user names one
 * (--allow-network: an internal mirror or proxy), or the host's resolver is there. The host's own fetches are not:
 * a base image or download the user names from an internal server is the user's choice.
 */
export const PRIVATE_DESTINATIONS = [
  ...withNat64Forms(['10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16', '100.64.0.0/10']),
  'fc00::/7',
  // RFC 8215's local-use NAT64 prefix: a network's own translator, which embeds IPv4 addresses where it chooses.
  '64:ff9b:1::/48',
];

/**
 * Each IPv4 network with its form under the well-known NAT64 prefix (RFC 6052's 64:ff9b::/96) beside it: on an
 * IPv6-only host behind NAT64 (AWS's DNS64 gives such addresses), 64:ff9b::a9fe:a9fe is 169.254.169.254 and
 * 64:ff9b::a00:0/104 is 10/8.
 */
export function withNat64Forms(destinations: string[]): string[] {
  return destinations.flatMap((destination) => {
    const [network, length = '32'] = destination.split('/');
    if (!isIPv4(network)) return [destination];
    const [a, b, c, d] = network.split('.').map(Number);
    const nat64 = `64:ff9b::${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}/${96 + Number(length)}`;
    return [destination, nat64];
  });
}

/**
 * Whether an address (maybe with an IPv6 zone, or in brackets as a URL writes it) is on one of `destinations`:
 * IPv4, IPv6 and IPv4-mapped IPv6 addresses alike.
 */
function destinationLookup(destinations: readonly string[]): (address: string) => boolean {
  const list = new BlockList();
  for (const destination of destinations) {
    const [network, length] = destination.split('/');
    list.addSubnet(network, Number(length), isIPv6(network) ? 'ipv6' : 'ipv4');
  }
  return (address) => {
    const bare = address.replace(/^\[(.*)\]$/, '$1').replace(/%.*$/, '');
    const family = isIPv4(bare) ? 'ipv4' : isIPv6(bare) ? 'ipv6' : undefined;
    return family !== undefined && list.check(bare, family);
  };
}

/** Whether an address is one of BLOCKED_DESTINATIONS. */
export const isBlockedDestination = destinationLookup(BLOCKED_DESTINATIONS);

/** Whether an address is on one of PRIVATE_DESTINATIONS. */
export const isPrivateDestination = destinationLookup(PRIVATE_DESTINATIONS);
