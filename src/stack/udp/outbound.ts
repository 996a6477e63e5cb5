/**
 * UDP outbound flows: the first datagram from a guest (address, port) to a
 * (destination, port) opens a flow with its own non-blocking host socket,
 * bound to the guest's source port when the host allows it and connected
 * to the destination as mapped by flow/address-map.ts (the
 * --map-host-loopback address, the gateway by default, to 127.0.0.1 / ::1;
 * --map-guest-addr to the host's address; --dns-forward port 53 to
 * --dns-host). Replies come back on that socket.
 */
import { rateLimited } from '../../sys/log';
import { FlowProtocol, NO_FLOW } from '../flow/flow-table';
import { bindToDevice, outboundAddress, outboundInterface } from '../l4/host-socket';
import { errorCode } from '../../sys/errno';
import { closeSocketQuietly } from '../../sys/close';
import { mapDestination } from '../flow/address-map';
import { isIpv6LoopbackAt } from '../address';
import { AF_INET, AF_INET6, SOCKADDR_IN6_LENGTH, sockaddrAddressOffset, writeSockaddr } from '../../sys/sockaddr';
import { EPOLLIN, IPV6_RECVERR, IPV6_V6ONLY, IP_RECVERR, SOCK_DGRAM, SOL_IP, SOL_IPV6, SOL_SOCKET, SO_REUSEADDR, UdpEvent, UdpFlowState, type UdpFlows } from './state';

/** Open an outbound flow for a guest datagram; returns its id, or NO_FLOW (counted). */
export function openOutbound(c: UdpFlows, family: 4 | 6, bytes: Uint8Array, src: number, srcPort: number, dst: number, dstPort: number): number {
  const ctx = c.ctx;
  const flows = c.flows;
  const sockets = c.sockets;
  if (ctx.watcher === null) {
    ctx.counters.add(UdpEvent.SocketFailed);
    return NO_FLOW;
  }
  if (flows.full) {
    flows.countRefused(FlowProtocol.Udp);
    ctx.counters.add(UdpEvent.TableFull);
    rateLimited('warn', 'udp table full', () => `udp: flow table full (${flows.capacity} flows, --max-flows); datagram dropped`);
    return NO_FLOW;
  }
  const sockaddr = c.sockaddr;
  const sockaddrLength = mapDestination(ctx.config, family, bytes, dst, dstPort, sockaddr);
  if (sockaddrLength === 0) {
    ctx.counters.add(UdpEvent.Unreachable);
    return NO_FLOW;
  }
  const target = sockaddr.subarray(0, sockaddrLength);
  let fd: number;
  try {
    fd = sockets.socket(family === 4 ? AF_INET : AF_INET6, SOCK_DGRAM, 0);
  } catch (e) {
    rateLimited('warn', 'udp socket', () => `udp: socket() failed: ${errorCode(e)}`);
    ctx.counters.add(UdpEvent.SocketFailed);
    return NO_FLOW;
  }
  try {
    sockets.setsockoptInt(fd, family === 4 ? SOL_IP : SOL_IPV6, family === 4 ? IP_RECVERR : IPV6_RECVERR, 1);
    const loopback = family === 4 ? sockaddr[4] === 127 : isIpv6LoopbackAt(sockaddr, sockaddrAddressOffset(6));
    const device = loopback ? null : outboundInterface(ctx.config, family);
    if (device !== null) bindToDevice(c.sockets, fd, device, 'udp');
    keepSourcePort(c, fd, family, srcPort, loopback ? null : outboundAddress(ctx.config, family));
    sockets.connect(fd, target);
  } catch (e) {
    rateLimited('warn', 'udp connect', () => `udp: connect failed: ${errorCode(e)}`);
    closeSocketQuietly(c.sockets, fd);
    ctx.counters.add(UdpEvent.Unreachable);
    return NO_FLOW;
  }
  const id = flows.allocate(FlowProtocol.Udp, family, bytes, src, srcPort, bytes, dst, dstPort, UdpFlowState.Outbound, ctx.clock.now());
  if (id === NO_FLOW) {
    closeSocketQuietly(c.sockets, fd);
    ctx.counters.add(UdpEvent.TableFull);
    return NO_FLOW;
  }
  c.listenerOf[id] = -1;
  c.peer.set(target, id * SOCKADDR_IN6_LENGTH);
  flows.setFd(id, fd);
  flows.deadline[id] = ctx.clock.now() + ctx.config.udpIdleMs;
  ctx.watcher.watch(fd, EPOLLIN, c.handler);
  return id;
}

/**
 * Bind the flow's socket to the guest's source port, as passt does, so
 * the world sees the port the guest chose (protocols that carry or check
 * ports keep working). SO_REUSEADDR lets several connected flows from one
 * guest port share it (the kernel prefers the connected 4-tuple). When the
 * port cannot be had (a host service holds it, or a port below 1024
 * without privilege) connect() picks an ephemeral one: counted, not fatal.
 * `source` is the -o/--outbound address (bound with the port), or null.
 */
export function keepSourcePort(c: UdpFlows, fd: number, family: 4 | 6, port: number, source: Uint8Array | null = null): void {
  const sockets = c.sockets;
  try {
    sockets.setsockoptInt(fd, SOL_SOCKET, SO_REUSEADDR, 1);
    // A wildcard IPv6 bind would also claim the IPv4 port.
    if (family === 6) sockets.setsockoptInt(fd, SOL_IPV6, IPV6_V6ONLY, 1);
    const length = writeSockaddr(c.bindAddr, family, source ?? ZERO16, 0, port);
    sockets.bind(fd, c.bindAddr.subarray(0, length));
  } catch {
    c.ctx.counters.add(UdpEvent.SourcePortChanged);
    // The -o address still applies with a port the kernel picks.
    if (source !== null) bindQuietly(c, fd, family, source);
  }
}

function bindQuietly(c: UdpFlows, fd: number, family: 4 | 6, source: Uint8Array): void {
  try {
    const length = writeSockaddr(c.bindAddr, family, source, 0, 0);
    c.sockets.bind(fd, c.bindAddr.subarray(0, length));
  } catch {
    // Not a local address: the kernel chooses the source.
  }
}
const ZERO16 = new Uint8Array(16);
