/**
 * What the stack needs to know about the host and the guest's network:
 * resolved once by the backend (host discovery over rtnetlink plus command
 * line overrides) and posted to every worker as plain data.
 *
 * Addresses are kept as bytes (4 for IPv4, 16 for IPv6) so the hot path can
 * compare them against packet bytes without parsing strings.
 */
import type { ForwardSpec } from './flow/forward-spec';

export interface Ipv4Config {
  /** The address the guest is given (the host's own, passt's model). */
  address: Uint8Array; // 4 bytes
  prefixLength: number;
  /** Default gateway given to the guest. */
  gateway: Uint8Array; // 4 bytes
  /** Resolvers announced to the guest (DHCP option 6), after --dns-forward mapping. */
  dns: Uint8Array[];
  /** Address whose traffic maps to the host's loopback (--map-host-loopback; default: gateway unless --no-map-gw). null = none. */
  mapHostLoopback: Uint8Array | null;
  /** Address whose traffic maps to the host's own address as seen by the guest (--map-guest-addr). null = none. */
  mapGuestAddr: Uint8Array | null;
  /** --dns-forward: DNS sent by the guest to this address goes to dnsHost. null = none. */
  dnsForward: Uint8Array | null;
  /** Where forwarded DNS goes (--dns-host or the host's first resolver). */
  dnsHost: Uint8Array | null;
}

export interface Ipv6Config {
  /** Global address given to the guest (the host's own). */
  address: Uint8Array; // 16 bytes
  prefixLength: number;
  /** Default gateway (router) announced to the guest. Usually link-local or the host's gateway. */
  gateway: Uint8Array; // 16 bytes
  /** ferry's link-local address on the guest segment (source of RAs, DHCPv6 server). */
  linkLocal: Uint8Array; // 16 bytes
  dns: Uint8Array[];
  mapHostLoopback: Uint8Array | null;
  mapGuestAddr: Uint8Array | null;
  dnsForward: Uint8Array | null;
  dnsHost: Uint8Array | null;
}

export interface StackConfig {
  /** ferry's own MAC on the segment (source of every frame ferry sends). */
  ourMac: Uint8Array; // 6 bytes
  /** The guest's MAC if configured (-M); otherwise learnt from its frames. */
  guestMac: Uint8Array | null;
  /** MTU given to the guest (DHCP option 26, RA MTU option). */
  mtu: number;
  /** null: IPv4 disabled. */
  ipv4: Ipv4Config | null;
  /** null: IPv6 disabled. */
  ipv6: Ipv6Config | null;
  /** DNS search domains (DHCP option 119, DNSSL, DHCPv6 domain list). */
  searchDomains: string[];
  /** -H/--hostname: the guest's host name (DHCP option 12); absent or null = none. */
  hostname?: string | null;
  /** --fqdn: the guest's fully qualified name (DHCP option 81, DHCPv6 option 39); absent or null = none. */
  fqdn?: string | null;
  /**
   * Host interface outbound sockets are bound to when no per-family one is
   * given (SO_BINDTODEVICE): --outbound-if4, else --outbound-if6, or null.
   */
  interfaceName: string | null;
  /** --outbound-if4: interface of outbound IPv4 sockets; absent = interfaceName. */
  outboundIf4?: string | null;
  /** --outbound-if6: interface of outbound IPv6 sockets; absent = interfaceName. */
  outboundIf6?: string | null;
  /** -o/--outbound (IPv4): source address outbound IPv4 sockets bind to (passt's addr_out); absent or null = the kernel's choice. */
  outbound4?: Uint8Array | null;
  /** -o/--outbound (IPv6), 16 bytes. */
  outbound6?: Uint8Array | null;
  dhcp: boolean;
  dhcpv6: boolean;
  ndp: boolean;
  ra: boolean;
  /** Bound on flows per worker (--max-flows). */
  maxFlows: number;
  /** UDP flow idle timeout in milliseconds. */
  udpIdleMs: number;
  /** Parsed -t/--tcp-ports specs (inbound TCP forwarding); absent or empty = none. */
  tcpForwards?: ForwardSpec[];
  /** Parsed -u/--udp-ports specs (inbound UDP forwarding); absent or empty = none. */
  udpForwards?: ForwardSpec[];
  /**
   * TCP ports ferry itself listens on at the host's loopback or on all of
   * its addresses (--metrics HOST:PORT): the gateway-to-loopback map would
   * otherwise let the guest reach them. A guest SYN whose mapped destination
   * is a host loopback address or the host's own address, port in this list,
   * is answered with an RST. Absent or empty = none.
   */
  ownTcpPorts?: number[];
}
