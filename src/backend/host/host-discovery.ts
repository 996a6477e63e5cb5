/**
 * What the guest will be given, learnt from the host (passt's model): for
 * IPv4 and IPv6 separately, the interface holding the default route (or,
 * without one, the first interface with a global address), its address,
 * prefix length, gateway and MTU; plus the resolvers and search domains of
 * resolv.conf. Runs once at startup on the main thread.
 */
import { log } from '../../sys/log';
import type { Native } from '../../sys/native';
import { formatIp, isIpv6LinkLocal } from '../../stack/address';
import {
  AF_INET,
  AF_INET6,
  type AddressInfo,
  IFA_F_DADFAILED,
  IFA_F_DEPRECATED,
  IFA_F_TEMPORARY,
  IFA_F_TENTATIVE,
  IFF_LOOPBACK,
  IFF_UP,
  type LinkInfo,
  RTN_UNICAST,
  RT_SCOPE_UNIVERSE,
  RT_TABLE_MAIN,
  type RtnetlinkSnapshot,
  dumpRtnetlink,
} from './netlink';
import { readResolvConf } from './resolv-conf';

/** One address family as found on the host. */
export interface DiscoveredFamily {
  interfaceName: string;
  interfaceIndex: number;
  /** The host's address on that interface (4 or 16 bytes). */
  address: Uint8Array;
  prefixLength: number;
  /** Next hop of the default route; null when the host has none for this family. */
  gateway: Uint8Array | null;
  /** The interface's MTU (0 if unknown). */
  mtu: number;
}

/** Everything discovery found; a family is null when the host has no usable address for it. */
export interface DiscoveredHost {
  ipv4: DiscoveredFamily | null;
  ipv6: DiscoveredFamily | null;
  /** resolv.conf nameservers, both families, file order. */
  nameservers: Uint8Array[];
  searchDomains: string[];
}

function isUsableLink(link: LinkInfo | undefined): link is LinkInfo {
  return link !== undefined && (link.flags & IFF_LOOPBACK) === 0 && (link.flags & IFF_UP) !== 0;
}

/** Global, settled addresses of `family` on interface `index`, best first (stable, non-temporary, then kernel order). */
function globalAddresses(snapshot: RtnetlinkSnapshot, family: number, index: number): AddressInfo[] {
  const candidates = snapshot.addresses.filter(
    (a) =>
      a.family === family &&
      a.index === index &&
      a.scope === RT_SCOPE_UNIVERSE &&
      (a.flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED)) === 0 &&
      !(family === AF_INET6 && isIpv6LinkLocal(a.address)),
  );
  const rank = (a: AddressInfo): number => ((a.flags & IFA_F_DEPRECATED) !== 0 ? 2 : 0) + ((a.flags & IFA_F_TEMPORARY) !== 0 ? 1 : 0);
  return candidates.map((a, i) => ({ a, i })).sort((x, y) => rank(x.a) - rank(y.a) || x.i - y.i).map((x) => x.a);
}

/**
 * Pick the interface, address and gateway for one family from a netlink
 * snapshot. `interfaceName` (-i) forces the interface. Pure: tested on
 * synthetic snapshots. Returns null when there is nothing usable.
 */
export function chooseFamily(snapshot: RtnetlinkSnapshot, family: number, interfaceName: string | null = null): DiscoveredFamily | null {
  const links = new Map<number, LinkInfo>();
  for (const link of snapshot.links) links.set(link.index, link);
  const defaultRoutes = snapshot.routes
    .filter((r) => r.family === family && r.dstLength === 0 && r.type === RTN_UNICAST && r.table === RT_TABLE_MAIN && r.oif !== 0)
    .sort((a, b) => a.priority - b.priority);

  let link: LinkInfo | undefined;
  if (interfaceName !== null) {
    link = snapshot.links.find((l) => l.name === interfaceName);
    if (link === undefined) return null;
  } else {
    for (const route of defaultRoutes) {
      const candidate = links.get(route.oif);
      if (isUsableLink(candidate) && globalAddresses(snapshot, family, candidate.index).length > 0) {
        link = candidate;
        break;
      }
    }
    if (link === undefined) {
      link = snapshot.links.find((l) => isUsableLink(l) && globalAddresses(snapshot, family, l.index).length > 0);
    }
    if (link === undefined) return null;
  }
  const address = globalAddresses(snapshot, family, link.index)[0];
  if (address === undefined) return null;
  const route = defaultRoutes.find((r) => r.oif === link!.index);
  return {
    interfaceName: link.name,
    interfaceIndex: link.index,
    address: address.address,
    prefixLength: address.prefixLength,
    gateway: route?.gateway ?? null,
    mtu: link.mtu,
  };
}

/** Describe a discovered family in one line, for the startup log. */
export function describeFamily(name: string, found: DiscoveredFamily | null): string {
  if (found === null) return `${name}: no usable address on the host`;
  const gateway = found.gateway === null ? 'no default route' : `gateway ${formatIp(found.gateway)}`;
  return `${name}: ${found.interfaceName} ${formatIp(found.address)}/${found.prefixLength}, ${gateway}, mtu ${found.mtu}`;
}

/** Options for discoverHost. */
export interface DiscoveryOptions {
  /** -i/--interface: use this host interface for both families. */
  interfaceName?: string | null;
  resolvConfPath?: string;
  /** Bound on the whole netlink exchange. */
  timeoutMs?: number;
}

/**
 * Ask the kernel (rtnetlink) and resolv.conf what the guest should get.
 * Never throws for a host without networking: a failed netlink exchange
 * is logged once and both families come back null.
 */
export function discoverHost(native: Native, options: DiscoveryOptions = {}): DiscoveredHost {
  const resolv = readResolvConf(options.resolvConfPath);
  let snapshot: RtnetlinkSnapshot;
  try {
    snapshot = dumpRtnetlink(native, options.timeoutMs ?? 2000);
  } catch (e) {
    log.error(`host discovery: rtnetlink failed: ${(e as Error).message}; no addresses from the host`);
    return { ipv4: null, ipv6: null, nameservers: resolv.nameservers, searchDomains: resolv.searchDomains };
  }
  const interfaceName = options.interfaceName ?? null;
  return {
    ipv4: chooseFamily(snapshot, AF_INET, interfaceName),
    ipv6: chooseFamily(snapshot, AF_INET6, interfaceName),
    nameservers: resolv.nameservers,
    searchDomains: resolv.searchDomains,
  };
}
