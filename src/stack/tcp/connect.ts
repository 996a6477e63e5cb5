/**
 * TCP connection setup both ways: a guest SYN opens a non-blocking host
 * socket to the mapped destination and is answered (SYN-ACK) once
 * connect() completes, or with an ICMP unreachable or an RST when it
 * fails; an inbound connection accepted by listen.ts becomes a SYN to the
 * guest. Then the handshake's options and the established socket's setup.
 */
import { log, rateLimited } from '../../sys/log';
import type { IpPacket } from '../context';
import { FlowProtocol, NO_FLOW } from '../flow/flow-table';
import { TcpError } from '../wire/tcp';
import { DropReason, countDrop } from '../drops';
import { mapDestination } from '../flow/address-map';
import { AF_INET, AF_INET6, SOCKADDR_IN_LENGTH, writeSockaddrFamily } from '../../sys/sockaddr';
import { equalAt, isIpv6LoopbackAt } from '../address';
import { errorCode } from '../../sys/errno';
import { DEFAULT_MSS, EHOSTUNREACH, ENETUNREACH, EPOLLOUT, F_PEEK_OFF, F_READABLE, ICMP4_HOST_UNREACHABLE, ICMP4_NET_UNREACHABLE, ICMP6_ADDRESS_UNREACHABLE, ICMP6_NO_ROUTE, IDLE_TIMEOUT_MS, OUR_WINDOW_SCALE, RTO_INITIAL_MS, SEND_BUFFER_BYTES, SOCK_STREAM, SOL_SOCKET, SO_ERROR, SO_PEEK_OFF, SO_SNDBUF, SYN_TIMEOUT_MS, type TcpConnections, TcpEvent, TcpState, closeFlow, closeWithReset, flush, initFlow, randomIsn, refreshSndbuf, segmentLimit, updateEvents, watch } from './connection';
import { abort, resetUnknown, sendSyn, sendUnreachable } from './output';
import { bindToDevice, outboundAddress, outboundInterface } from '../l4/host-socket';

/**
 * An inbound connection accepted on a forwarded port (listen.ts):
 * socket `fd` from peer `peer` (4 or 16 address bytes) port `peerPort`, to
 * be delivered to the guest's port `guestPort`. Sends a SYN to the guest.
 * Returns true when the flow was created; otherwise the socket was closed
 * with a reset (table full, no address to show the guest).
 */
export function acceptInbound(c: TcpConnections, fd: number, family: 4 | 6, peer: Uint8Array, peerPort: number, guestPort: number): boolean {
  const ctx = c.ctx;
  const now = ctx.clock.now();
  const cfg = family === 4 ? ctx.config.ipv4 : ctx.config.ipv6;
  const remote = cfg === null ? null : guestVisibleSource(c, family, peer);
  if (cfg === null || remote === null) {
    closeWithReset(c, fd);
    return false;
  }
  const guest = c.seen.of(family);
  let id = c.flows.lookup(FlowProtocol.Tcp, family, guest, 0, guestPort, remote, 0, peerPort);
  if (id !== NO_FLOW) {
    // The same 4-tuple is still in use: the old flow is stale.
    abort(c, id, true, true);
  }
  // Opened from the network: bounded per source address (MAX_FLOWS_PER_SOURCE).
  id = c.flows.allocateInbound(FlowProtocol.Tcp, family, guest, 0, guestPort, remote, 0, peerPort, TcpState.SynSent, now);
  if (id === NO_FLOW) {
    ctx.counters.add(TcpEvent.TableFull);
    closeWithReset(c, fd);
    return false;
  }
  initFlow(c, id, now);
  c.flows.setFd(id, fd);
  const isn = randomIsn();
  c.sndUna[id] = isn;
  c.sndNxt[id] = (isn + 1) >>> 0;
  c.sndMax[id] = c.sndNxt[id];
  c.mss[id] = segmentLimit(c, family);
  // Errors and resets before the handshake completes are still reported (EPOLLERR/HUP need no bits).
  watch(c, id, 0);
  sendSyn(c, id, false);
  c.flows.deadline[id] = now + c.rto[id];
  flush(c);
  return true;
}

/** A guest SYN for a new connection: open the host socket and start connecting. */
export function openFromGuest(c: TcpConnections, packet: IpPacket, bytes: Uint8Array): void {
  const ctx = c.ctx;
  const tcp = c.tcp;
  const family = packet.family;
  const dst = packet.dstOffset;
  const now = ctx.clock.now();
  if (tcp.dstPort === 0 || tcp.srcPort === 0 || isMulticastOrBroadcast(family, bytes, dst)) {
    countDrop(ctx.counters, DropReason.TcpMalformed, () => 'TCP SYN to port 0 or a group address');
    return;
  }
  const sockaddr = connectSockaddr(c, packet, bytes, tcp.dstPort);
  if (sockaddr === null) {
    resetUnknown(c, packet, bytes);
    return;
  }
  if (isOwnListener(c, sockaddr)) {
    countDrop(ctx.counters, DropReason.TcpToOwnPort);
    rateLimited('info', 'tcp own port', () => `tcp: guest connection to ferry's own port ${(sockaddr[2] << 8) | sockaddr[3]} refused`);
    resetUnknown(c, packet, bytes);
    return;
  }
  const id = c.flows.allocate(FlowProtocol.Tcp, family, bytes, packet.srcOffset, tcp.srcPort, bytes, dst, tcp.dstPort, TcpState.Connecting, now);
  if (id === NO_FLOW) {
    ctx.counters.add(TcpEvent.TableFull);
    rateLimited('warn', 'tcp table full', () => `tcp: flow table full (--max-flows ${c.flows.capacity}): connection refused`);
    resetUnknown(c, packet, bytes);
    return;
  }
  initFlow(c, id, now);
  c.rcvNxt[id] = (tcp.seq + 1) >>> 0;
  takeSynOptions(c, id, family);
  c.sndWnd[id] = tcp.window; // never scaled in a SYN
  const isn = randomIsn();
  c.sndUna[id] = isn;
  c.sndNxt[id] = isn;
  c.sndMax[id] = isn;
  let fd: number;
  try {
    fd = c.sockets.socket(family === 4 ? AF_INET : AF_INET6, SOCK_STREAM, 0);
  } catch (e) {
    rateLimited('warn', 'tcp socket', () => `tcp: socket() failed: ${errorCode(e)}`);
    ctx.counters.add(TcpEvent.ConnectFailed);
    abort(c, id, true, false);
    return;
  }
  c.flows.setFd(id, fd);
  let connected: number;
  try {
    const loopback = sockaddr === c.sockaddr4 ? sockaddr[4] === 127 : isIpv6LoopbackAt(sockaddr, 8);
    if (!loopback) {
      const device = outboundInterface(ctx.config, family);
      if (device !== null) bindToDevice(c.sockets, fd, device, 'tcp');
      bindSource(c, fd, packet, bytes);
    }
    connected = c.sockets.connect(fd, sockaddr);
  } catch (e) {
    log.debug(`tcp: connect failed: ${errorCode(e)}`);
    connectFailed(c, id, typeof e === 'object' && e !== null && 'errno' in e ? Number((e as { errno: unknown }).errno) : 0);
    return;
  }
  c.flows.deadline[id] = now + SYN_TIMEOUT_MS;
  if (connected === 0) {
    watch(c, id, 0);
    connectDone(c, id);
  } else {
    watch(c, id, EPOLLOUT);
  }
}

/**
 * Where a guest connection to the packet's destination goes on the host,
 * by the forwarding rules shared with UDP (flow/address-map.ts
 * mapDestination: --dns-forward port 53 to the DNS host, the
 * --map-host-loopback address to 127.0.0.1 / ::1, --map-guest-addr to the
 * host's address), as a sockaddr view over reused scratch, or null when it
 * cannot be reached (IPv6 link-local other than the mapped gateway: no
 * scope to send it on; --dns-forward without a DNS host).
 */
export function connectSockaddr(c: TcpConnections, packet: IpPacket, bytes: Uint8Array, port: number): Uint8Array | null {
  const length = mapDestination(c.ctx.config, packet.family, bytes, packet.dstOffset, port, c.sockaddr6);
  if (length === 0) return null;
  return length === SOCKADDR_IN_LENGTH ? c.sockaddr4 : c.sockaddr6;
}

/**
 * True when a connect destination is one of ferry's own listening sockets
 * (config.ownTcpPorts) on the host's loopback or the host's own address,
 * which the loopback and guest-address maps would otherwise hand the guest.
 */
export function isOwnListener(c: TcpConnections, sockaddr: Uint8Array): boolean {
  if (c.ownPorts[(sockaddr[2] << 8) | sockaddr[3]] !== 1) return false;
  if (sockaddr === c.sockaddr4) {
    const ipv4 = c.ctx.config.ipv4;
    return sockaddr[4] === 127 || (ipv4 !== null && equalAt(sockaddr, 4, ipv4.address, 4));
  }
  const ipv6 = c.ctx.config.ipv6;
  return isIpv6LoopbackAt(sockaddr, 8) || (ipv6 !== null && equalAt(sockaddr, 8, ipv6.address, 16));
}

/**
 * Bind the socket's source address (port chosen by the kernel) before
 * connect: the -o/--outbound address when given, else, when the guest's
 * source address is the host's own (passt's model), that one, so the
 * connection leaves from it even on a host with several. A failure (the
 * address is not local) is ignored: the kernel picks.
 */
export function bindSource(c: TcpConnections, fd: number, packet: IpPacket, bytes: Uint8Array): void {
  const v6 = packet.family === 6;
  const cfg = v6 ? c.ctx.config.ipv6 : c.ctx.config.ipv4;
  const length = v6 ? 16 : 4;
  let source = outboundAddress(c.ctx.config, packet.family);
  if (source === null) {
    if (cfg === null || !equalAt(bytes, packet.srcOffset, cfg.address, length)) return;
    source = cfg.address;
  }
  const sa = v6 ? c.bindSockaddr6 : c.bindSockaddr4;
  sa.fill(0);
  writeSockaddrFamily(sa, v6 ? AF_INET6 : AF_INET);
  sa.set(source.subarray(0, length), v6 ? 8 : 4);
  try {
    c.sockets.bind(fd, sa);
  } catch {
    // Not a local address: let the kernel choose the source.
  }
}

/** The host connect() completed: SYN-ACK to the guest. */
export function connectDone(c: TcpConnections, id: number): void {
  c.flows.setState(id, TcpState.SynAckSent);
  c.sndNxt[id] = (c.sndUna[id] + 1) >>> 0;
  c.sndMax[id] = c.sndNxt[id];
  updateEvents(c, id);
  sendSyn(c, id, true);
  c.flows.deadline[id] = c.ctx.clock.now() + c.rto[id];
}

/**
 * The host connect() failed with errno: an unreachable network or host
 * becomes the matching ICMP/ICMPv6 error quoting the guest's SYN (so the
 * guest reports "no route to host"); anything else (refused, timed out)
 * an RST.
 */
export function connectFailed(c: TcpConnections, id: number, errno: number): void {
  c.ctx.counters.add(TcpEvent.ConnectFailed);
  const v6 = c.flows.family[id] === 6;
  let code = -1;
  if (errno === ENETUNREACH) code = v6 ? ICMP6_NO_ROUTE : ICMP4_NET_UNREACHABLE;
  else if (errno === EHOSTUNREACH) code = v6 ? ICMP6_ADDRESS_UNREACHABLE : ICMP4_HOST_UNREACHABLE;
  if (code >= 0 && sendUnreachable(c, id, code)) {
    c.ctx.counters.add(TcpEvent.IcmpToGuest);
    closeFlow(c, id, false);
    return;
  }
  abort(c, id, true, false);
}

export function soError(c: TcpConnections, id: number): number {
  try {
    return c.sockets.getsockoptInt(c.flows.fd[id], SOL_SOCKET, SO_ERROR);
  } catch {
    return -1;
  }
}

/** Window scale and MSS from the guest's SYN or SYN-ACK (c.tcp). */
export function takeSynOptions(c: TcpConnections, id: number, family: 4 | 6): void {
  const options = c.options;
  if (c.tcp.parseOptions(options) !== TcpError.Ok) options.clear();
  if (options.windowScale >= 0) {
    c.guestWscale[id] = Math.min(14, options.windowScale);
    c.ourWscale[id] = OUR_WINDOW_SCALE;
  } else {
    c.guestWscale[id] = 0;
    c.ourWscale[id] = 0;
  }
  const guestMss = options.mss > 0 ? options.mss : DEFAULT_MSS;
  c.mss[id] = Math.max(1, Math.min(guestMss, segmentLimit(c, family)));
}

/** Both handshakes done: socket options, timers, readiness for data. */
export function establish(c: TcpConnections, id: number): void {
  const fd = c.flows.fd[id];
  c.flows.setState(id, TcpState.Established);
  c.retries[id] = 0;
  c.rto[id] = RTO_INITIAL_MS;
  enlargeSendBuffer(c, fd);
  if (c.usePeekOffset) {
    try {
      c.sockets.setsockoptInt(fd, SOL_SOCKET, SO_PEEK_OFF, 0);
      c.flag[id] |= F_PEEK_OFF;
    } catch {
      // Old kernel: peek from the start and skip what the guest already has.
    }
  }
  refreshSndbuf(c, id);
  c.flag[id] |= F_READABLE; // data may have arrived before the handshake completed
  c.flows.deadline[id] = c.activity[id] + IDLE_TIMEOUT_MS;
  updateEvents(c, id);
}

/**
 * A fixed, large send buffer (the kernel caps it at net.core.wmem_max).
 * The guest's window is the buffer's free space, so the guest never makes
 * a sendmsg come up short, and the kernel grows an autotuned buffer only
 * after a writer ran out of room: left alone it stays at its initial size
 * (about 87 KB over a 1500-byte link) and bulk guest uploads crawl at one
 * such window per round trip (100 MB took 20 s with a TCG guest, 6 s
 * with this). passt sets its socket buffers the same way.
 */
export function enlargeSendBuffer(c: TcpConnections, fd: number): void {
  try {
    c.sockets.setsockoptInt(fd, SOL_SOCKET, SO_SNDBUF, SEND_BUFFER_BYTES);
  } catch {
    // Autotuning stays in charge: slower, still correct.
  }
}

/**
 * The source address the guest sees for an inbound peer: the peer itself,
 * except the host's loopback (-> the --map-host-loopback address) and the
 * host's own address (-> --map-guest-addr, else the loopback mapping).
 * null when there is no mapping to show.
 *
 * Deliberately not flow/address-map's guestVisibleSource: that one also
 * maps an IPv4-mapped loopback peer (::ffff:127.x.y.z, which an IPv6 UDP
 * socket can see) to the loopback mapping, where this one shows such a
 * peer as it is; it also copies the peer into scratch where this returns
 * `peer` itself. TCP listeners are IPV6_V6ONLY, so no such peer reaches
 * acceptInbound today, but switching would change what acceptInbound
 * does with one: a decision to make on its own, not in a cleanup.
 */
export function guestVisibleSource(c: TcpConnections, family: 4 | 6, peer: Uint8Array): Uint8Array | null {
  if (family === 4) {
    const ipv4 = c.ctx.config.ipv4!;
    if (peer[0] === 127) return ipv4.mapHostLoopback;
    if (equalAt(peer, 0, ipv4.address, 4)) return ipv4.mapGuestAddr ?? ipv4.mapHostLoopback;
    return peer;
  }
  const ipv6 = c.ctx.config.ipv6!;
  if (isIpv6LoopbackAt(peer, 0)) return ipv6.mapHostLoopback;
  if (equalAt(peer, 0, ipv6.address, 16)) return ipv6.mapGuestAddr ?? ipv6.mapHostLoopback;
  return peer;
}

function isMulticastOrBroadcast(family: number, bytes: Uint8Array, offset: number): boolean {
  if (family === 6) return bytes[offset] === 0xff;
  if (bytes[offset] >= 224) return true;
  return bytes[offset] === 0 && bytes[offset + 1] === 0 && bytes[offset + 2] === 0 && bytes[offset + 3] === 0;
}
