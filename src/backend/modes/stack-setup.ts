/**
 * Turns the command line's network options and what host discovery finds
 * into the StackConfig every worker gets.
 */
import { native } from '../../sys/native';
import { log } from '../../sys/log';
import type { StackConfig } from '../../stack/config';
import { discoverHost } from '../host/host-discovery';
import { type AddressOverrides, describeStackConfig, resolveStackConfig } from '../host/resolve-config';
import type { DaemonOptions, MetricsEndpoint } from '../cli/options';
import { isLoopback, isUnspecified, parseIp } from '../../stack/address';

/** The address-related subset of the parsed options, in resolve-config's terms. */
export function addressOverridesFrom(options: DaemonOptions): AddressOverrides {
  return { ...options.network, ...options.services, maxFlows: options.maxFlows, udpIdleMs: options.udpTimeoutSeconds * 1000 };
}

/**
 * The TCP ports ferry itself listens on where the guest could reach them
 * through the gateway-to-loopback map (or the guest-address map): --metrics
 * on a loopback address, 'localhost' or a wildcard. Port 0 (the kernel
 * picks) is not known here and is left out.
 */
export function ownTcpPortsOf(metrics: MetricsEndpoint | null): number[] {
  if (metrics === null || metrics.kind !== 'tcp' || metrics.port === 0) return [];
  const address = parseIp(metrics.host);
  const reachable = address === null ? metrics.host.toLowerCase() === 'localhost' : isLoopback(address) || isUnspecified(address);
  return reachable ? [metrics.port] : [];
}

/** A resolved stack configuration and the host interface it came from (pasta names its tap after it). */
export interface ResolvedStack {
  config: StackConfig;
  /** -i, else the interface holding the IPv4 (or IPv6) default route, else null. */
  hostInterface: string | null;
}

/** Discover the host's addresses and apply the options: the configuration every stack gets, and its interface. */
export function resolveStack(options: DaemonOptions): ResolvedStack {
  const discovered = discoverHost(native, { interfaceName: options.network.interface });
  const config = resolveStackConfig(addressOverridesFrom(options), discovered, (level, line) => log[level](line));
  // -t/-u specs: the inbound listeners of the stack that owns them.
  if (options.forwards.tcp.length > 0) config.tcpForwards = options.forwards.tcp;
  if (options.forwards.udp.length > 0) config.udpForwards = options.forwards.udp;
  const ownTcpPorts = ownTcpPortsOf(options.metrics);
  if (ownTcpPorts.length > 0) config.ownTcpPorts = ownTcpPorts;
  for (const line of describeStackConfig(config)) log.info(line);
  const hostInterface = options.network.interface ?? discovered.ipv4?.interfaceName ?? discovered.ipv6?.interfaceName ?? null;
  return { config, hostInterface };
}

/** The stack configuration alone (see resolveStack). */
export async function resolveDaemonStackConfig(options: DaemonOptions): Promise<StackConfig> {
  return resolveStack(options).config;
}
