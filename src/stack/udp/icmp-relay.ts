/**
 * ICMP errors for UDP flows: every host socket has IP_RECVERR /
 * IPV6_RECVERR on; errors from the error queue (port or host unreachable,
 * fragmentation needed / packet too big with the MTU, time exceeded)
 * become the matching ICMP error to the guest quoting a datagram rebuilt
 * from the flow (icmp/errors.ts), so a connected guest socket sees
 * ECONNREFUSED.
 */
import { log } from '../../sys/log';
import { ADDRESS_SLOT, NO_FLOW } from '../flow/flow-table';
import { DropReason, countDrop } from '../drops';
import { errorCode } from '../../sys/errno';
import { equalAt, isIpv6LoopbackAt } from '../address';
import { SOCKADDR_IN6_LENGTH, sockaddrAddressOffset } from '../../sys/sockaddr';
import { parseExtendedError, planIcmpError, sendIcmpError } from '../icmp/errors';
import { flowOfListenerError } from './inbound';
import { ERRORS_PER_WAKEUP, UdpEvent, type UdpFlows } from './state';

/** Read the socket's error queue and relay what means something to the guest. */
export function drainErrors(c: UdpFlows, fd: number, listener: number, flowId: number): void {
  const ctx = c.ctx;
  const data = ctx.scratch;
  for (let i = 0; i < ERRORS_PER_WAKEUP; i++) {
    let n: number;
    try {
      n = c.sockets.recvErrqueue(fd, data, c.errControl, c.errMeta, c.errAddr);
    } catch (e) {
      log.debug(`udp: error queue: ${errorCode(e)}`);
      return;
    }
    if (n < 0) return;
    const id = listener >= 0 ? flowOfListenerError(c, listener) : flowId;
    if (id === NO_FLOW || !parseExtendedError(c.errControl, c.errMeta[0], c.extended)) {
      ctx.counters.add(UdpEvent.IcmpErrorIgnored);
      continue;
    }
    const family = c.flows.family[id] as 4 | 6;
    if (!planIcmpError(family, c.extended, c.plan)) {
      ctx.counters.add(UdpEvent.IcmpErrorIgnored);
      continue;
    }
    const source = icmpSource(c, id);
    if (source === null) {
      ctx.counters.add(UdpEvent.IcmpErrorIgnored);
      continue;
    }
    const quoted = c.quoted;
    const base = id * ADDRESS_SLOT;
    quoted.family = family;
    quoted.guestOffset = base;
    quoted.remoteOffset = base;
    quoted.guestPort = c.flows.guestPort[id];
    quoted.remotePort = c.flows.remotePort[id];
    quoted.payloadLength = n;
    quoted.payloadAvailable = Math.min(n, data.length);
    if (sendIcmpError(ctx, c.plan, source, quoted)) {
      c.pending++;
      ctx.counters.add(UdpEvent.IcmpErrorRelayed);
    } else {
      countDrop(ctx.counters, DropReason.NoGuestBuffers);
    }
  }
}

/**
 * The source of an ICMP error to the guest: the destination it used when
 * the host's peer itself (or loopback) answered; the gateway for local
 * errors and errors the host's own stack generated; else the real
 * offender (a router on the path, as the guest would see it without us).
 */
export function icmpSource(c: UdpFlows, id: number): Uint8Array | null {
  const config = c.ctx.config;
  const family = c.flows.family[id] as 4 | 6;
  const cfg = family === 4 ? config.ipv4 : config.ipv6;
  if (cfg === null) return null;
  const length = family === 4 ? 4 : 16;
  const base = id * ADDRESS_SLOT;
  const remote = c.remoteScratch;
  for (let i = 0; i < length; i++) remote[i] = c.flows.remoteAddress[base + i];
  const error = c.extended;
  if (c.plan.fromGateway || error.offenderFamily !== family) return c.plan.fromGateway ? cfg.gateway : remote;
  const offender = error.offender;
  const peerAddress = id * SOCKADDR_IN6_LENGTH + sockaddrAddressOffset(family);
  if (equalAt(c.peer, peerAddress, offender, length)) return remote;
  if (family === 4 ? offender[0] === 127 : isIpv6LoopbackAt(offender, 0)) return remote;
  if (equalAt(offender, 0, cfg.address, length)) return cfg.gateway;
  return offender;
}
