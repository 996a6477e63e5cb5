/**
 * From command line overrides and host discovery to the StackConfig every
 * worker gets, with passt's option meanings (passt(1)):
 *
 * - the guest gets the host's address, prefix and gateway per family unless
 *   -a/-n/-g say otherwise; a family without an address or a gateway is
 *   disabled with one log line (so is one turned off by -4/-6);
 * - -M is ferry's own MAC (default 9a:55:9a:55:9a:55); ferry's IPv6
 *   link-local address (the router the guest learns) is the gateway when
 *   that is link-local, else the MAC's EUI-64 form;
 * - -m is the MTU announced (default 65520, 0 = announce none);
 * - DNS: -D lists resolvers verbatim ('none': no DNS); otherwise the host's
 *   resolv.conf nameservers, where a loopback resolver (e.g. systemd-resolved's
 *   127.0.0.53) or one equal to the --map-host-loopback address is replaced by
 *   the --dns-forward address, or, without --dns-forward, by the
 *   --map-host-loopback address (default: the gateway), which then becomes
 *   the DNS forward address. Forwarded queries go to --dns-host (default:
 *   the host's first resolver of that family);
 * - --map-host-loopback defaults to the gateway; --no-map-gw or 'none' turns
 *   it off; --map-guest-addr has no default.
 */
import { log } from '../../sys/log';
import { bytesEqual, formatIp, isIpv6LinkLocal, isLoopback, linkLocalFromMac, parseMac } from '../../stack/address';
import type { Ipv4Config, Ipv6Config, StackConfig } from '../../stack/config';
import type { DiscoveredFamily, DiscoveredHost } from './host-discovery';

/** An address option that also accepts 'none': null = not given (use the default). */
export type AddressOrNone = Uint8Array | 'none' | null;

/**
 * The address options, one field per passt option, declared once: the
 * option parser (src/backend/options.ts) keeps its `network` group in this
 * shape (plus options the stack does not use). Addresses are bytes (4 for
 * IPv4, 16 for IPv6); options passt accepts once per family are split into
 * ...4 / ...6 fields. null = not given.
 */
export interface NetworkAddressOptions {
  /** -4/--ipv4-only */
  ipv4Only: boolean;
  /** -6/--ipv6-only */
  ipv6Only: boolean;
  /** -a/--address (IPv4): address given to the guest instead of the host's. */
  address4: Uint8Array | null;
  /** -a/--address (IPv6). */
  address6: Uint8Array | null;
  /** -n/--netmask: IPv4 prefix length (given as bits or dotted netmask). */
  prefixLength4: number | null;
  /** -g/--gateway (IPv4): default gateway announced via DHCP. */
  gateway4: Uint8Array | null;
  /** -g/--gateway (IPv6): router announced via NDP and DHCPv6. */
  gateway6: Uint8Array | null;
  /** -i/--interface: host interface to take addresses and routes from (discovery input). */
  interface: string | null;
  /** --outbound-if4: host interface outbound IPv4 sockets are bound to. */
  outboundIf4: string | null;
  /** --outbound-if6 */
  outboundIf6: string | null;
  /** -o/--outbound (IPv4): source address of outbound sockets; absent = none. */
  outbound4?: Uint8Array | null;
  /** -o/--outbound (IPv6). */
  outbound6?: Uint8Array | null;
  /** -M/--mac-addr: ferry's own MAC, the source of frames to the guest (passt's meaning; default 9a:55:9a:55:9a:55). */
  macAddr: Uint8Array | null;
  /** -m/--mtu: MTU announced via DHCP/NDP; 0 = announce none; null = default (65520). */
  mtu: number | null;
  /** -D/--dns: resolvers given to the guest verbatim (repeatable); 'none' = no DNS; null = from /etc/resolv.conf. */
  dns: Uint8Array[] | 'none' | null;
  /** --dns-forward (IPv4): guest DNS traffic to this address goes to dnsHost4. */
  dnsForward4: Uint8Array | null;
  /** --dns-forward (IPv6) */
  dnsForward6: Uint8Array | null;
  /** --dns-host (IPv4): where forwarded DNS goes (default: first host resolver). */
  dnsHost4: Uint8Array | null;
  /** --dns-host (IPv6) */
  dnsHost6: Uint8Array | null;
  /** -S/--search: DNS search domains (space separated, repeatable); 'none' = no list; null = from /etc/resolv.conf. */
  search: string[] | 'none' | null;
  /** --map-host-loopback (IPv4): guest traffic to this address goes to the host's loopback. 'none' also implies noMapGw. */
  mapHostLoopback4: AddressOrNone;
  /** --map-host-loopback (IPv6) */
  mapHostLoopback6: AddressOrNone;
  /** --no-map-gw: don't map the gateway address to the host (the default --map-host-loopback target). */
  noMapGw: boolean;
  /** --map-guest-addr (IPv4): guest traffic to this address goes to the guest's own address on the host. */
  mapGuestAddr4: AddressOrNone;
  /** --map-guest-addr (IPv6) */
  mapGuestAddr6: AddressOrNone;
  /** -H/--hostname: host name given to the guest (DHCP option 12). */
  hostname: string | null;
  /** --fqdn: fully qualified name given to the guest (DHCP option 81, DHCPv6 option 39). */
  fqdn: string | null;
}

/** Which built-in services answer the guest (all on by default; --no-dhcp etc. turn them off). */
export interface ServiceSwitches {
  /** --no-dhcp, --no-dhcpv6, --no-ndp, --no-ra turn these off. */
  dhcp: boolean;
  dhcpv6: boolean;
  ndp: boolean;
  ra: boolean;
  /** false with --no-dhcp-dns: resolvers are not announced via DHCP/DHCPv6/NDP (forwarding still works). */
  dhcpDns: boolean;
  /** false with --no-dhcp-search: the search list is not announced. */
  dhcpSearch: boolean;
}

/**
 * What the command line can override: the address options, the service
 * switches and two bounds. The backend builds it from its parsed option
 * groups (src/backend/stack-setup.ts addressOverridesFrom) and resolves:
 *
 *   const host = discoverHost(native, { interfaceName: options.network.interface });
 *   const config = resolveStackConfig(addressOverridesFrom(options), host);
 */
export interface AddressOverrides extends NetworkAddressOptions, ServiceSwitches {
  /** --max-flows */
  maxFlows: number;
  /** UDP flow idle timeout in milliseconds. */
  udpIdleMs: number;
}

/** passt's defaults. */
export const DEFAULT_MAC = parseMac('9a:55:9a:55:9a:55')!;
/** 65535 - 14 (Ethernet header), rounded down to a multiple of 4 (passt). */
export const DEFAULT_MTU = 65520;
export const DEFAULT_MAX_FLOWS = 16384;
export const DEFAULT_UDP_IDLE_MS = 180_000;
/** Resolvers announced per family (resolv.conf's MAXNS). */
export const MAX_ANNOUNCED_RESOLVERS = 3;

/** Address options with nothing given: everything from the host. */
export function defaultNetworkAddressOptions(): NetworkAddressOptions {
  return {
    ipv4Only: false,
    ipv6Only: false,
    address4: null,
    address6: null,
    prefixLength4: null,
    gateway4: null,
    gateway6: null,
    interface: null,
    outboundIf4: null,
    outboundIf6: null,
    macAddr: null,
    mtu: null,
    dns: null,
    dnsForward4: null,
    dnsForward6: null,
    dnsHost4: null,
    dnsHost6: null,
    search: null,
    mapHostLoopback4: null,
    mapHostLoopback6: null,
    noMapGw: false,
    mapGuestAddr4: null,
    mapGuestAddr6: null,
    hostname: null,
    fqdn: null,
  };
}

/** Every built-in service on. */
export function defaultServiceSwitches(): ServiceSwitches {
  return { dhcp: true, dhcpv6: true, ndp: true, ra: true, dhcpDns: true, dhcpSearch: true };
}

/** Overrides with nothing given: everything from the host, every service on. */
export function defaultAddressOverrides(): AddressOverrides {
  return { ...defaultNetworkAddressOptions(), ...defaultServiceSwitches(), maxFlows: DEFAULT_MAX_FLOWS, udpIdleMs: DEFAULT_UDP_IDLE_MS };
}

/** Receives the few lines resolution wants logged (one per disabled family, DNS warnings). */
export type ConfigReporter = (level: 'info' | 'warn', line: string) => void;

const defaultReporter: ConfigReporter = (level, line) => log[level](line);

/** IPv4 classful prefix when neither the host nor -n gives one (passt does the same). */
function classfulPrefix(address: Uint8Array): number {
  if (address[0] < 128) return 8;
  if (address[0] < 192) return 16;
  if (address[0] < 224) return 24;
  return 32;
}

/** --map-host-loopback / --map-guest-addr value -> address or null; 'none' and not given -> null. */
function addressOrNull(value: AddressOrNone): Uint8Array | null {
  return value === null || value === 'none' ? null : value;
}

/** The host resolver loopback/mapped rules for one family; returns what the guest is told and the forward address. */
function resolveFamilyDns(
  hostResolvers: Uint8Array[],
  explicit: Uint8Array[] | null,
  dnsForward: Uint8Array | null,
  mapHostLoopback: Uint8Array | null,
): { announced: Uint8Array[]; dnsForward: Uint8Array | null } {
  if (explicit !== null) return { announced: explicit.slice(0, MAX_ANNOUNCED_RESOLVERS), dnsForward };
  const announced: Uint8Array[] = [];
  let forward = dnsForward;
  for (const resolver of hostResolvers) {
    let told = resolver;
    // The guest cannot reach the host's loopback, and an address ferry maps to the host's loopback is not the resolver it looks like.
    if (isLoopback(resolver) || (mapHostLoopback !== null && bytesEqual(resolver, mapHostLoopback))) {
      if (forward === null) {
        if (mapHostLoopback === null) continue; // unreachable from the guest
        forward = mapHostLoopback;
      }
      told = forward;
    }
    if (!announced.some((a) => bytesEqual(a, told))) announced.push(told);
    if (announced.length >= MAX_ANNOUNCED_RESOLVERS) break;
  }
  return { announced, dnsForward: forward };
}

/**
 * The link-local address ferry answers as on the guest segment (RA source,
 * DHCPv6 server, the router the guest learns): the gateway itself when it
 * is link-local, as real hosts' IPv6 default routes are and as passt does,
 * so guest and host see the same router and traffic to it follows the
 * gateway's mapping; otherwise ferry's own EUI-64 address from its MAC.
 */
export function routerAddress(gateway: Uint8Array, ourMac: Uint8Array): Uint8Array {
  return isIpv6LinkLocal(gateway) ? gateway : linkLocalFromMac(ourMac);
}

interface FamilyBase {
  address: Uint8Array;
  prefixLength: number;
  gateway: Uint8Array;
}

/** Address, prefix and gateway for one family, or null (with the reason) when it cannot be enabled. */
function familyBase(name: string, discovered: DiscoveredFamily | null, address: Uint8Array | null, prefixLength: number | null, gateway: Uint8Array | null, defaultPrefix: (a: Uint8Array) => number): FamilyBase | string {
  const chosenAddress = address ?? discovered?.address ?? null;
  if (chosenAddress === null) return `${name}: no address on the host and none given (-a); ${name} disabled`;
  const chosenGateway = gateway ?? discovered?.gateway ?? null;
  if (chosenGateway === null) return `${name}: no default route on the host and no gateway given (-g); ${name} disabled`;
  // The host's prefix only applies to the host's address.
  const hostPrefix = discovered !== null && (address === null || bytesEqual(address, discovered.address)) ? discovered.prefixLength : null;
  return { address: chosenAddress, prefixLength: prefixLength ?? hostPrefix ?? defaultPrefix(chosenAddress), gateway: chosenGateway };
}

/**
 * Merge command line overrides with what discovery found into the
 * StackConfig workers use. Logs one line per family that ends up disabled
 * (through `report`). Never throws for missing host networking.
 */
export function resolveStackConfig(overrides: AddressOverrides, discovered: DiscoveredHost, report: ConfigReporter = defaultReporter): StackConfig {
  const ourMac = overrides.macAddr ?? DEFAULT_MAC;
  const explicitDns = overrides.dns === 'none' ? [] : overrides.dns;
  const explicit4 = explicitDns === null ? null : explicitDns.filter((a) => a.length === 4);
  const explicit6 = explicitDns === null ? null : explicitDns.filter((a) => a.length === 16);
  const host4 = discovered.nameservers.filter((a) => a.length === 4);
  const host6 = discovered.nameservers.filter((a) => a.length === 16);

  let ipv4: Ipv4Config | null = null;
  if (overrides.ipv6Only) {
    report('info', 'IPv4: disabled (-6/--ipv6-only)');
  } else {
    const base = familyBase('IPv4', discovered.ipv4, overrides.address4, overrides.prefixLength4, overrides.gateway4, classfulPrefix);
    if (typeof base === 'string') {
      report('warn', base);
    } else {
      const mapHostLoopback = overrides.mapHostLoopback4 === 'none' ? null : (overrides.mapHostLoopback4 ?? (overrides.noMapGw ? null : base.gateway));
      const dns = resolveFamilyDns(host4, explicit4, overrides.dnsForward4, mapHostLoopback);
      ipv4 = {
        address: base.address,
        prefixLength: base.prefixLength,
        gateway: base.gateway,
        dns: overrides.dhcpDns ? dns.announced : [],
        mapHostLoopback,
        mapGuestAddr: addressOrNull(overrides.mapGuestAddr4),
        dnsForward: dns.dnsForward,
        dnsHost: overrides.dnsHost4 ?? host4[0] ?? null,
      };
    }
  }

  let ipv6: Ipv6Config | null = null;
  if (overrides.ipv4Only) {
    report('info', 'IPv6: disabled (-4/--ipv4-only)');
  } else {
    const base = familyBase('IPv6', discovered.ipv6, overrides.address6, null, overrides.gateway6, () => 64);
    if (typeof base === 'string') {
      report('warn', base);
    } else {
      const mapHostLoopback = overrides.mapHostLoopback6 === 'none' ? null : (overrides.mapHostLoopback6 ?? (overrides.noMapGw ? null : base.gateway));
      const dns = resolveFamilyDns(host6, explicit6, overrides.dnsForward6, mapHostLoopback);
      ipv6 = {
        address: base.address,
        prefixLength: base.prefixLength,
        gateway: base.gateway,
        linkLocal: Uint8Array.from(routerAddress(base.gateway, ourMac)),
        dns: overrides.dhcpDns ? dns.announced : [],
        mapHostLoopback,
        mapGuestAddr: addressOrNull(overrides.mapGuestAddr6),
        dnsForward: dns.dnsForward,
        dnsHost: overrides.dnsHost6 ?? host6[0] ?? null,
      };
    }
  }

  if (ipv4 === null && ipv6 === null) report('warn', 'neither IPv4 nor IPv6 is usable: the guest gets no addresses');
  if (explicitDns === null && overrides.dhcpDns && (ipv4?.dns.length ?? 0) + (ipv6?.dns.length ?? 0) === 0 && (ipv4 !== null || ipv6 !== null)) {
    report('warn', 'DNS: no usable resolver from the host (resolv.conf); the guest gets none');
  }

  const searchDomains = !overrides.dhcpSearch || overrides.search === 'none' ? [] : (overrides.search ?? discovered.searchDomains);
  return {
    ourMac,
    guestMac: null,
    mtu: overrides.mtu ?? DEFAULT_MTU,
    ipv4,
    ipv6,
    searchDomains: [...searchDomains],
    hostname: overrides.hostname,
    fqdn: overrides.fqdn,
    interfaceName: overrides.outboundIf4 ?? overrides.outboundIf6 ?? null,
    outboundIf4: overrides.outboundIf4,
    outboundIf6: overrides.outboundIf6,
    outbound4: overrides.outbound4 ?? null,
    outbound6: overrides.outbound6 ?? null,
    dhcp: overrides.dhcp,
    dhcpv6: overrides.dhcpv6,
    ndp: overrides.ndp,
    ra: overrides.ra,
    maxFlows: overrides.maxFlows,
    udpIdleMs: overrides.udpIdleMs,
  };
}

/** One line per family describing the resolved configuration, for the startup log. */
export function describeStackConfig(config: StackConfig): string[] {
  const lines: string[] = [];
  const dns = (list: Uint8Array[]): string => (list.length === 0 ? 'none' : list.map(formatIp).join(', '));
  if (config.ipv4 !== null) {
    const v4 = config.ipv4;
    lines.push(`IPv4: guest ${formatIp(v4.address)}/${v4.prefixLength} via ${formatIp(v4.gateway)}, DNS ${dns(v4.dns)}` + (v4.dnsForward ? `, DNS forward ${formatIp(v4.dnsForward)} -> ${v4.dnsHost ? formatIp(v4.dnsHost) : 'none'}` : ''));
  }
  if (config.ipv6 !== null) {
    const v6 = config.ipv6;
    lines.push(`IPv6: guest ${formatIp(v6.address)}/${v6.prefixLength} via ${formatIp(v6.gateway)}, router ${formatIp(v6.linkLocal)}, DNS ${dns(v6.dns)}` + (v6.dnsForward ? `, DNS forward ${formatIp(v6.dnsForward)} -> ${v6.dnsHost ? formatIp(v6.dnsHost) : 'none'}` : ''));
  }
  return lines;
}
