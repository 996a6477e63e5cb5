/**
 * UDP, guest to host: a datagram from the guest (the stack validated the
 * IP header; DHCP was taken before) is checked, matched to its flow (an
 * outbound flow is opened for a new one, outbound.ts) and its payload goes
 * from guest memory straight into sendmsg iovecs: on the flow's own
 * connected socket, or on the listener's with the original sender's
 * address for an inbound flow. One sendmsg per datagram: the stack hands
 * over one TX frame per call and guest memory must not be held after it
 * returns, so there is nothing to batch into a sendmmsg.
 */
import { rateLimited } from '../../sys/log';
import type { IpPacket, RxFrame } from '../context';
import { FlowProtocol, NO_FLOW } from '../flow/flow-table';
import { IpProtocol } from '../wire/ipv4';
import { UDP_HEADER_LENGTH } from '../wire/udp';
import { be16, pseudoHeaderSumIpv4, pseudoHeaderSumIpv6 } from '../wire/checksum';
import { l4ChecksumValid } from '../l4/checksum';
import { DropReason, countDrop } from '../drops';
import { iovFromSegments } from '../l4/iovec';
import { errorCode } from '../../sys/errno';
import { isGroupOrUnspecified } from '../flow/address-map';
import { openOutbound } from './outbound';
import { UdpEvent, type UdpFlows, isAsyncError, peerSockaddr } from './state';

export function fromGuest(c: UdpFlows, frame: RxFrame, packet: IpPacket): void {
  const ctx = c.ctx;
  const bytes = frame.bytes;
  const udp = packet.l4Offset;
  const family = packet.family;
  const srcPort = be16(bytes, udp);
  const dstPort = be16(bytes, udp + 2);
  const udpLength = be16(bytes, udp + 4);
  const segments = frame.segments;
  if (segments === null || udpLength < UDP_HEADER_LENGTH || udpLength > packet.l4Length) {
    countDrop(ctx.counters, DropReason.UdpMalformed, () => `UDP length ${udpLength} over IP payload ${packet.l4Length}`);
    return;
  }
  const checksum = be16(bytes, udp + 6);
  if (!frame.checksumPartial && (checksum !== 0 || family === 6)) {
    // RFC 8200 8.1: a zero UDP checksum is invalid over IPv6.
    const pseudo = family === 4
      ? pseudoHeaderSumIpv4(bytes, packet.ipv4.srcOffset, bytes, packet.ipv4.dstOffset, IpProtocol.Udp, udpLength)
      : pseudoHeaderSumIpv6(bytes, packet.ipv6.srcOffset, bytes, packet.ipv6.dstOffset, IpProtocol.Udp, udpLength);
    if (checksum === 0 || !l4ChecksumValid(segments, udp - frame.base, udpLength, pseudo)) {
      countDrop(ctx.counters, DropReason.UdpBadChecksum);
      return;
    }
  }
  if (srcPort === 0 || dstPort === 0) {
    ctx.counters.add(UdpEvent.PortZero);
    return;
  }
  const src = packet.srcOffset;
  const dst = packet.dstOffset;
  if (isGroupOrUnspecified(family, bytes, dst)) {
    ctx.counters.add(UdpEvent.GroupDestination);
    return;
  }
  c.seen.note(family, bytes, src);
  const flows = c.flows;
  let id = flows.lookup(FlowProtocol.Udp, family, bytes, src, srcPort, bytes, dst, dstPort);
  if (id === NO_FLOW) {
    id = openOutbound(c, family, bytes, src, srcPort, dst, dstPort);
    if (id === NO_FLOW) return;
  }
  const dataLength = udpLength - UDP_HEADER_LENGTH;
  if (!iovFromSegments(c.txIov, segments, udp - frame.base + UDP_HEADER_LENGTH, dataLength)) {
    countDrop(ctx.counters, DropReason.SplitHeadersTooLong, () => 'UDP payload in too many segments');
    return;
  }
  const listener = c.listenerOf[id];
  const fd = listener >= 0 ? c.listenerFd[listener] : flows.fd[id];
  const to = listener >= 0 ? peerSockaddr(c, id) : null;
  if (!send(c, fd, to)) {
    ctx.counters.add(UdpEvent.SendFailed);
    return;
  }
  ctx.counters.add(UdpEvent.DatagramsFromGuest);
  flows.bytesFromGuest[id] += dataLength;
  flows.deadline[id] = ctx.clock.now() + ctx.config.udpIdleMs;
}

/** sendmsg of txIov; one retry after an asynchronous error (which the failed call consumed). Returns true when sent. */
export function send(c: UdpFlows, fd: number, to: Uint8Array | null): boolean {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      return c.sockets.sendmsg(fd, c.txIov, to, 0) >= 0;
    } catch (e) {
      const code = errorCode(e);
      if (attempt === 0 && isAsyncError(code)) continue;
      rateLimited('warn', 'udp send', () => `udp: sendmsg failed: ${code}`);
      return false;
    }
  }
  return false;
}
