/**
 * Turns the command line's network options and what host discovery finds
 * into the StackConfig every worker gets.
 */
import { native } from '../native';
import { log } from '../log';
import type { StackConfig } from '../stack/config';
import { discoverHost } from '../stack/host-discovery';
import { AddressOverrides, describeStackConfig, resolveStackConfig } from '../stack/resolve-config';
import type { DaemonOptions } from './options';

/** The address-related subset of the parsed options, in resolve-config's terms. */
export function addressOverridesFrom(options: DaemonOptions): AddressOverrides {
  const n = options.network;
  return {
    ipv4Only: n.ipv4Only,
    ipv6Only: n.ipv6Only,
    address4: n.address4,
    address6: n.address6,
    prefixLength4: n.prefixLength4,
    gateway4: n.gateway4,
    gateway6: n.gateway6,
    interface: n.interface,
    outboundIf4: n.outboundIf4,
    outboundIf6: n.outboundIf6,
    macAddr: n.macAddr,
    mtu: n.mtu,
    dns: n.dns,
    dnsForward4: n.dnsForward4,
    dnsForward6: n.dnsForward6,
    dnsHost4: n.dnsHost4,
    dnsHost6: n.dnsHost6,
    search: n.search,
    mapHostLoopback4: n.mapHostLoopback4,
    mapHostLoopback6: n.mapHostLoopback6,
    noMapGw: n.noMapGw,
    mapGuestAddr4: n.mapGuestAddr4,
    mapGuestAddr6: n.mapGuestAddr6,
    dhcp: options.services.dhcp,
    dhcpv6: options.services.dhcpv6,
    ndp: options.services.ndp,
    ra: options.services.ra,
    dhcpDns: options.services.dhcpDns,
    dhcpSearch: options.services.dhcpSearch,
    maxFlows: options.maxFlows,
    udpIdleMs: options.udpTimeoutSeconds * 1000,
  };
}

/** Discover the host's addresses and apply the options: the configuration every worker's stack gets. */
export async function resolveDaemonStackConfig(options: DaemonOptions): Promise<StackConfig> {
  const discovered = discoverHost(native, { interfaceName: options.network.interface });
  const config = resolveStackConfig(addressOverridesFrom(options), discovered, (level, line) => log[level](line));
  // -u specs go to every worker's UDP service (inbound forwards).
  if (options.forwards.tcp.length > 0) config.tcpForwards = options.forwards.tcp;
  if (options.forwards.udp.length > 0) config.udpForwards = options.forwards.udp;
  for (const line of describeStackConfig(config)) log.info(line);
  return config;
}
