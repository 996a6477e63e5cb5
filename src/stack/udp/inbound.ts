/**
 * UDP inbound forwards (-u/--udp-ports): a bound socket per forwarded host
 * port and family; a datagram creates (or reuses) a flow to the guest's
 * mapped port, from the sender's real address (loopback senders appear as
 * the gateway), and the guest's replies go back from the forwarded port to
 * the original sender.
 */
import { log } from '../../sys/log';
import type { ForwardSpec } from '../flow/forward-spec';
import type { ListenError, ListenerInfo } from '../tcp/listen';
import { FlowProtocol, NO_FLOW } from '../flow/flow-table';
import { errorCode } from '../../sys/errno';
import { isDescriptorExhaustion } from '../l4/fd-limit';
import { closeSocketQuietly } from '../../sys/close';
import { guestVisibleSource } from '../flow/address-map';
import { AF_INET, AF_INET6, SOCKADDR_IN6_LENGTH, sockaddrAddressOffset, sockaddrFamily, sockaddrPort, writeSockaddr } from '../../sys/sockaddr';
import { EPOLLIN, IPV6_RECVERR, IPV6_V6ONLY, IP_RECVERR, MAX_LISTENERS, SOCK_DGRAM, SOL_IP, SOL_IPV6, SOL_SOCKET, SO_BINDTODEVICE, UdpEvent, UdpFlowState, type UdpFlows, closeFlow } from './state';

/**
 * listen() with the sockets marked `tag` (for closeListeners), returning
 * the sockets opened and, for specs that are not best-effort, what
 * could not be bound. Running out of descriptors (EMFILE/ENFILE) stops
 * the opening, reported last in any spec.
 */
export function listenTagged(c: UdpFlows, specs: readonly ForwardSpec[], tag: number): { opened: number; errors: ListenError[] } {
  const ctx = c.ctx;
  let opened = 0;
  const errors: ListenError[] = [];
  for (const spec of specs) {
    if (spec.mode === 'none' || spec.mode === 'auto') continue;
    const families: (4 | 6)[] = [];
    if (spec.bindAddress !== null) families.push(spec.bindAddress.length === 4 ? 4 : 6);
    else {
      if (ctx.config.ipv4 !== null) families.push(4);
      if (ctx.config.ipv6 !== null) families.push(6);
    }
    let failures = 0;
    let firstFailure = '';
    for (const mapping of spec.mappings) {
      for (let port = mapping.hostPortFirst; port <= mapping.hostPortLast; port++) {
        const guestPort = mapping.guestPortFirst + (port - mapping.hostPortFirst);
        for (const family of families) {
          if ((family === 4 ? ctx.config.ipv4 : ctx.config.ipv6) === null) continue;
          const error = openListener(c, family, spec, port, guestPort, tag);
          if (error === null) opened++;
          else if (isDescriptorExhaustion(error)) {
            // Every further socket would fail alike: stop here, the error last (l4/fd-limit.ts).
            ctx.counters.add(UdpEvent.ListenFailed, failures + 1);
            errors.push({ port, family, code: error });
            return { opened, errors };
          } else {
            if (failures === 0) firstFailure = `port ${port} (IPv${family}): ${error}`;
            failures++;
            if (!spec.bestEffort) errors.push({ port, family, code: error });
          }
        }
      }
    }
    if (failures > 0) {
      ctx.counters.add(UdpEvent.ListenFailed, failures);
      const line = `udp: -u ${spec.text}: ${failures} socket(s) not bound, first ${firstFailure}`;
      if (spec.bestEffort) log.info(line);
      else log.warn(line);
    }
  }
  return { opened, errors };
}

/**
 * Close the listening sockets `match` selects, and the inbound flows
 * that use them (their replies would go out on those sockets). Returns
 * how many sockets were closed.
 */
export function closeListeners(c: UdpFlows, match: (listener: ListenerInfo) => boolean): number {
  let closed = 0;
  for (let index = 0; index < c.listenerCount; index++) {
    const fd = c.listenerFd[index];
    if (fd < 0) continue;
    const family = c.listenerFamily[index] as 4 | 6;
    if (!match({ tag: c.listenerTag[index], hostPort: c.listenerHostPort[index], family })) continue;
    for (let id = 0; id < c.flows.capacity; id++) {
      if (c.listenerOf[id] === index && c.flows.isLive(id, FlowProtocol.Udp)) closeFlow(c, id);
    }
    c.ctx.watcher?.unwatch(fd);
    c.blocked.delete(fd);
    closeSocketQuietly(c.sockets, fd);
    c.listenerByFd.delete(fd);
    c.listenerFd[index] = -1;
    c.freeListenerSlots.push(index);
    closed++;
  }
  return closed;
}

/** Bind one listening socket; returns null, or why it failed. */
export function openListener(c: UdpFlows, family: 4 | 6, spec: ForwardSpec, port: number, guestPort: number, tag = 0): string | null {
  const ctx = c.ctx;
  const sockets = c.sockets;
  if (ctx.watcher === null) return 'no fd watcher';
  if (c.listenerCount >= MAX_LISTENERS && c.freeListenerSlots.length === 0) return `more than ${MAX_LISTENERS} listening sockets`;
  let fd: number;
  try {
    fd = sockets.socket(family === 4 ? AF_INET : AF_INET6, SOCK_DGRAM, 0);
  } catch (e) {
    return errorCode(e);
  }
  try {
    sockets.setsockoptInt(fd, family === 4 ? SOL_IP : SOL_IPV6, family === 4 ? IP_RECVERR : IPV6_RECVERR, 1);
    if (family === 6) sockets.setsockoptInt(fd, SOL_IPV6, IPV6_V6ONLY, 1);
    // --freebind: IP_FREEBIND (15) / IPV6_FREEBIND (78), the bind address need not be on the host yet.
    if (spec.freebind === true) sockets.setsockoptInt(fd, family === 4 ? SOL_IP : SOL_IPV6, family === 4 ? 15 : 78, 1);
    if (spec.interfaceName !== null) {
      sockets.setsockoptBytes(fd, SOL_SOCKET, SO_BINDTODEVICE, Buffer.from(spec.interfaceName + '\0', 'latin1'));
    }
    const any = new Uint8Array(16);
    const length = writeSockaddr(c.sockaddr, family, spec.bindAddress ?? any, 0, port);
    sockets.bind(fd, c.sockaddr.subarray(0, length));
  } catch (e) {
    closeSocketQuietly(c.sockets, fd);
    return errorCode(e);
  }
  const index = c.freeListenerSlots.pop() ?? c.listenerCount++;
  if (index >= c.listenerFd.length) growListeners(c, Math.min(MAX_LISTENERS, Math.max(16, c.listenerFd.length * 2)));
  c.listenerFd[index] = fd;
  c.listenerFamily[index] = family;
  c.listenerGuestPort[index] = guestPort;
  c.listenerHostPort[index] = port;
  c.listenerTag[index] = tag;
  c.listenerByFd.set(fd, index);
  ctx.watcher.watch(fd, EPOLLIN, c.handler);
  return null;
}

export function growListeners(c: UdpFlows, capacity: number): void {
  const fds = new Int32Array(capacity);
  fds.set(c.listenerFd);
  const families = new Uint8Array(capacity);
  families.set(c.listenerFamily);
  const ports = new Uint16Array(capacity);
  ports.set(c.listenerGuestPort);
  c.listenerFd = fds;
  c.listenerFamily = families;
  c.listenerGuestPort = ports;
  const hostPorts = new Uint16Array(capacity);
  hostPorts.set(c.listenerHostPort);
  c.listenerHostPort = hostPorts;
  const tags = new Int32Array(capacity);
  tags.set(c.listenerTag);
  c.listenerTag = tags;
}

/**
 * The flow for a datagram from the sender `from` (a sockaddr of fromLength bytes) on listener `index`
 * (created when new), or NO_FLOW (counted).
 */
export function inboundFlow(c: UdpFlows, index: number, from: Uint8Array, fromLength: number): number {
  const ctx = c.ctx;
  const family = c.listenerFamily[index] as 4 | 6;
  if (fromLength < (family === 4 ? 16 : 24) || sockaddrFamily(from) !== family) return NO_FLOW;
  const remote = guestVisibleSource(ctx.config, family, from, sockaddrAddressOffset(family), c.remoteScratch);
  const cfg = family === 4 ? ctx.config.ipv4 : ctx.config.ipv6;
  if (remote === null || cfg === null) {
    ctx.counters.add(UdpEvent.UnmappableSource);
    return NO_FLOW;
  }
  const peerPort = sockaddrPort(from);
  const guestPort = c.listenerGuestPort[index];
  const flows = c.flows;
  const guest = c.seen.of(family);
  let id = flows.lookup(FlowProtocol.Udp, family, guest, 0, guestPort, remote, 0, peerPort);
  if (id !== NO_FLOW) return id;
  // Opened from the network: bounded per source address (MAX_FLOWS_PER_SOURCE).
  id = flows.allocateInbound(FlowProtocol.Udp, family, guest, 0, guestPort, remote, 0, peerPort, UdpFlowState.Inbound, ctx.clock.now());
  if (id === NO_FLOW) {
    ctx.counters.add(UdpEvent.TableFull);
    return NO_FLOW;
  }
  c.listenerOf[id] = index;
  c.peer.fill(0, id * SOCKADDR_IN6_LENGTH, (id + 1) * SOCKADDR_IN6_LENGTH);
  c.peer.set(from.subarray(0, family === 4 ? 16 : SOCKADDR_IN6_LENGTH), id * SOCKADDR_IN6_LENGTH);
  return id;
}

/** The inbound flow an error on a listener belongs to (errAddr = the datagram's destination, the peer). */
export function flowOfListenerError(c: UdpFlows, listener: number): number {
  const family = c.listenerFamily[listener] as 4 | 6;
  const length = c.errMeta[2];
  if (length < (family === 4 ? 16 : 24) || sockaddrFamily(c.errAddr) !== family) return NO_FLOW;
  const cfg = family === 4 ? c.ctx.config.ipv4 : c.ctx.config.ipv6;
  const remote = guestVisibleSource(c.ctx.config, family, c.errAddr, sockaddrAddressOffset(family), c.remoteScratch);
  if (cfg === null || remote === null) return NO_FLOW;
  return c.flows.lookup(FlowProtocol.Udp, family, c.seen.of(family), 0, c.listenerGuestPort[listener], remote, 0, sockaddrPort(c.errAddr));
}
