/**
 * TCP frames to the guest: the segment writer (Ethernet + IP + TCP with
 * options, the checksum over the payload already in place, or partial with
 * offload), the header-only segments (ACK, SYN, SYN-ACK, RST) through one
 * sender, the window we advertise (the socket's free send space), the ICMP
 * unreachable for a failed connect, and aborting a flow with an RST to the
 * guest: when the guest has no RX buffers for it, the flow's slot waits in
 * a bounded queue of pending resets until it has.
 */
import { log } from '../../sys/log';
import type { IpPacket } from '../context';
import { IPV4_L4_OFFSET, IPV6_L4_OFFSET, TCP4_PARTIAL_CHECKSUM, TCP6_PARTIAL_CHECKSUM } from '../context';
import type { SegmentList } from '../../io/frame-io';
import { ADDRESS_SLOT, FlowProtocol, NO_FLOW } from '../flow/flow-table';
import { EtherType, emitEthernet } from '../wire/ethernet';
import { IPV4_HEADER_LENGTH, IpProtocol, emitIpv4 } from '../wire/ipv4';
import { IPV6_HEADER_LENGTH, emitIpv6 } from '../wire/ipv6';
import { TCP_HEADER_LENGTH, TcpFlag, TcpOption, emitTcp } from '../wire/tcp';
import { finishChecksum, pseudoHeaderSumIpv4, pseudoHeaderSumIpv6, setBe16, setBe32, sumBytes } from '../wire/checksum';
import { fillL4Checksum } from '../l4/checksum';
import { emitFlowIpHeaders, flowPseudoSum, ipHeadersLength } from '../l4/guest-frame';
import { DropReason, countDrop } from '../drops';
import { errorCode } from '../../sys/errno';
import { F_GUEST_FIN, F_NO_REBLOCK, F_RST_PENDING, F_SND_BLOCKED, MAX_PENDING_RST, OUR_WINDOW_SCALE, SIOCOUTQ, type TcpConnections, TcpEvent, TcpState, cancelOpen, closeFlow, closeSocket, refreshSndbuf, reserve, segmentLimit, updateEvents, usableSendSpace } from './connection';

/**
 * Write Ethernet + IP + TCP headers for flow id into list (whose payload,
 * payloadLength bytes, is already after the headers), fill the checksum
 * over headers and payload in place and commit. optionKind: 0 none, 1 SYN
 * options (MSS and, when negotiated or offered, window scale).
 */
export function writeSegment(c: TcpConnections, id: number, list: SegmentList, flags: number, seq: number, payloadLength: number, optionKind: number): void {
  const family = c.flows.family[id] as 4 | 6;
  let optionLength = 0;
  const offerScale = optionKind === 1 && (c.flows.state[id] === TcpState.SynSent || c.ourWscale[id] !== 0);
  if (optionKind === 1) optionLength = offerScale ? 8 : 4;
  let window: number;
  if ((flags & TcpFlag.Syn) !== 0) {
    window = Math.min(65535, freeSendSpace(c, id));
  } else if (c.batchFlow === id && c.batchWindow >= 0) {
    window = c.batchWindow; // one look at the send buffer per burst of segments
  } else {
    window = windowField(c, id);
    if (c.batchFlow === id) c.batchWindow = window;
  }
  emit(
    c, list, id, family, c.flows.remotePort[id], c.flows.guestPort[id], seq, c.rcvNxt[id], flags, window,
    optionLength, offerScale, segmentLimit(c, family), payloadLength,
  );
}

/**
 * Build the headers into the reservation (in place when its first segment
 * holds them, else via scratch), checksum, commit. The addresses are flow
 * id's (remote to guest), or c.srcAddr / c.dstAddr for a segment that
 * belongs to no flow (id NO_FLOW).
 */
function emit(
  c: TcpConnections, list: SegmentList, id: number, family: 4 | 6, srcPort: number, dstPort: number, seq: number, ack: number, flags: number,
  window: number, optionLength: number, offerScale: boolean, mss: number, payloadLength: number,
): void {
  const tcpHeader = TCP_HEADER_LENGTH + optionLength;
  const headerLength = ipHeadersLength(family) + tcpHeader;
  const l4Length = tcpHeader + payloadLength;
  const headers = c.headers;
  headers.begin(list, headerLength);
  const out = headers.out;
  let l4: number;
  let pseudo: number;
  if (id !== NO_FLOW) {
    l4 = emitFlowIpHeaders(out, headers.at, c.ctx, c.flows, id, IpProtocol.Tcp, l4Length);
    pseudo = flowPseudoSum(c.flows, id, IpProtocol.Tcp, l4Length);
  } else {
    l4 = emitEthernet(out, headers.at, c.ctx.guestMac, c.ctx.config.ourMac, family === 4 ? EtherType.Ipv4 : EtherType.Ipv6);
    l4 = family === 4
      ? emitIpv4(out, l4, c.srcAddr, c.dstAddr, IpProtocol.Tcp, l4Length)
      : emitIpv6(out, l4, c.srcAddr, c.dstAddr, IpProtocol.Tcp, l4Length);
    pseudo = family === 4
      ? pseudoHeaderSumIpv4(c.srcAddr, 0, c.dstAddr, 0, IpProtocol.Tcp, l4Length)
      : pseudoHeaderSumIpv6(c.srcAddr, 0, c.dstAddr, 0, IpProtocol.Tcp, l4Length);
  }
  emitTcp(out, l4, srcPort, dstPort, seq, ack, flags, window, tcpHeader);
  if (optionLength > 0) {
    const o = l4 + TCP_HEADER_LENGTH;
    out[o] = TcpOption.Mss;
    out[o + 1] = 4;
    setBe16(out, o + 2, Math.min(65535, mss));
    if (offerScale) {
      out[o + 4] = TcpOption.Nop;
      out[o + 5] = TcpOption.WindowScale;
      out[o + 6] = 3;
      out[o + 7] = OUR_WINDOW_SCALE;
    }
  }
  const partial = family === 4 ? TCP4_PARTIAL_CHECKSUM : TCP6_PARTIAL_CHECKSUM;
  const offload = fillL4Checksum(out, l4, tcpHeader, 16, pseudo, list, headerLength, payloadLength, c.ctx.checksumOffload, partial, false);
  headers.end(list);
  c.open = false;
  c.ctx.port.commit(headerLength + payloadLength, offload);
  c.pending++;
}

/** Reserve a frame for a segment without payload (optionLength bytes of options); null, nothing left open, when the guest has no buffer. */
function reserveBare(c: TcpConnections, family: number, optionLength: number): SegmentList | null {
  const length = ipHeadersLength(family) + TCP_HEADER_LENGTH + optionLength;
  const list = reserve(c, length);
  if (list !== null && list.totalLength >= length) return list;
  if (list !== null) cancelOpen(c);
  return null;
}

/**
 * A segment without payload for flow id, with sequence number seq: the one
 * sender of ACKs, FINs, SYNs, SYN-ACKs (optionKind 1) and RSTs. Returns
 * false when the guest had no buffer.
 */
function sendBare(c: TcpConnections, id: number, flags: number, seq: number, optionKind: number): boolean {
  const list = reserveBare(c, c.flows.family[id], optionKind === 1 ? 8 : 0);
  if (list === null) return false;
  writeSegment(c, id, list, flags, seq, 0, optionKind);
  return true;
}

/** A segment without payload at sndNxt (ACK, FIN). Returns false (counted) when the guest had no buffers. */
export function sendFlags(c: TcpConnections, id: number, flags: number): boolean {
  if (sendBare(c, id, flags, c.sndNxt[id], 0)) return true;
  countDrop(c.ctx.counters, DropReason.NoGuestBuffers);
  return false;
}

/** SYN (inbound) or SYN-ACK (guest-initiated) with options; sequence number sndUna (our ISN). Without buffers the timer sends it again. */
export function sendSyn(c: TcpConnections, id: number, withAck: boolean): void {
  if (!sendBare(c, id, withAck ? TcpFlag.Syn | TcpFlag.Ack : TcpFlag.Syn, c.sndUna[id], 1)) countDrop(c.ctx.counters, DropReason.NoGuestBuffers);
}

/** RST for flow id with sequence number seq (answer to an unacceptable ACK); the flow stays. */
export function sendReset(c: TcpConnections, id: number, seq: number): void {
  if (sendBare(c, id, TcpFlag.Rst, seq, 0)) c.ctx.counters.add(TcpEvent.RstToGuest);
}

/**
 * RST for a guest segment that belongs to no flow (RFC 9293 3.10.7.1): with
 * its ACK number as our sequence number, else RST|ACK acknowledging it.
 */
export function resetUnknown(c: TcpConnections, packet: IpPacket, bytes: Uint8Array): void {
  const tcp = c.tcp;
  const family = packet.family;
  const addressLength = family === 4 ? 4 : 16;
  for (let i = 0; i < addressLength; i++) {
    c.srcAddr[i] = bytes[packet.dstOffset + i];
    c.dstAddr[i] = bytes[packet.srcOffset + i];
  }
  const flags = tcp.flags;
  let seq = 0;
  let ack = 0;
  let outFlags = TcpFlag.Rst;
  if ((flags & TcpFlag.Ack) !== 0) {
    seq = tcp.ack;
  } else {
    outFlags |= TcpFlag.Ack;
    ack = (tcp.seq + tcp.dataLength + ((flags & TcpFlag.Syn) !== 0 ? 1 : 0) + ((flags & TcpFlag.Fin) !== 0 ? 1 : 0)) >>> 0;
  }
  const list = reserveBare(c, family, 0);
  if (list === null) return;
  c.ctx.counters.add(TcpEvent.RstToGuest);
  emit(c, list, NO_FLOW, family, tcp.dstPort, tcp.srcPort, seq, ack, outFlags, 0, 0, false, 0, 0);
}

/**
 * The window field we advertise: free send buffer space, scaled. When it
 * is small (below a segment or a quarter of the buffer), EPOLLOUT is
 * watched so the guest hears when the socket drains (a window update)
 * instead of waiting for its persist timer.
 */
export function windowField(c: TcpConnections, id: number): number {
  const free = freeSendSpace(c, id);
  const flag = c.flag[id];
  const small = free < Math.min(c.mss[id], usableSendSpace(c, id) / 4);
  if (small && (flag & (F_SND_BLOCKED | F_NO_REBLOCK | F_GUEST_FIN)) === 0 && c.flows.state[id] >= TcpState.Established) {
    c.flag[id] |= F_SND_BLOCKED;
    updateEvents(c, id);
  }
  const shift = c.ourWscale[id];
  let field = Math.floor(free / (1 << shift));
  if (field === 0 && free > 0) field = 1;
  return Math.min(65535, field);
}

/** Bytes the socket's send buffer can still take (SO_SNDBUF minus SIOCOUTQ, with headroom for the kernel's overhead). */
export function freeSendSpace(c: TcpConnections, id: number): number {
  const fd = c.flows.fd[id];
  if (fd < 0) return 0;
  if (c.sndbuf[id] === 0) refreshSndbuf(c, id);
  let queued: number;
  try {
    queued = c.sockets.ioctlInt(fd, SIOCOUTQ);
  } catch {
    return 0;
  }
  // Autotuning grows the buffer with the congestion window: look again.
  refreshSndbuf(c, id);
  return Math.max(0, usableSendSpace(c, id) - queued);
}

/**
 * ICMP destination unreachable (IPv4 type 3, ICMPv6 type 1) with `code`
 * from the remote to the guest, quoting the guest's SYN: its IP header
 * and the first 8 bytes of TCP (ports and sequence number), which is all
 * RFC 792 asks for and all the guest needs to find its socket. Returns
 * false when the guest had no buffer for it.
 */
export function sendUnreachable(c: TcpConnections, id: number, code: number): boolean {
  const ctx = c.ctx;
  const v6 = c.flows.family[id] === 6;
  const addressLength = v6 ? 16 : 4;
  const base = id * ADDRESS_SLOT;
  for (let i = 0; i < addressLength; i++) {
    c.srcAddr[i] = c.flows.remoteAddress[base + i];
    c.dstAddr[i] = c.flows.guestAddress[base + i];
  }
  const ipHeader = v6 ? IPV6_HEADER_LENGTH : IPV4_HEADER_LENGTH;
  const icmpLength = 8 + ipHeader + 8;
  const l4 = v6 ? IPV6_L4_OFFSET : IPV4_L4_OFFSET;
  if (ctx.openFrame(l4 + icmpLength) < l4 + icmpLength) {
    ctx.cancelFrame();
    return false;
  }
  const out = ctx.out;
  const icmp = ctx.outOffset + l4;
  out.fill(0, icmp, icmp + 8);
  out[icmp] = v6 ? 1 : 3;
  out[icmp + 1] = code;
  // The quoted SYN as the guest sent it: guest -> remote, sequence number rcvNxt - 1.
  const inner = v6
    ? emitIpv6(out, icmp + 8, c.dstAddr, c.srcAddr, IpProtocol.Tcp, TCP_HEADER_LENGTH)
    : emitIpv4(out, icmp + 8, c.dstAddr, c.srcAddr, IpProtocol.Tcp, TCP_HEADER_LENGTH);
  setBe16(out, inner, c.flows.guestPort[id]);
  setBe16(out, inner + 2, c.flows.remotePort[id]);
  setBe32(out, inner + 4, (c.rcvNxt[id] - 1) >>> 0);
  const pseudo = v6 ? pseudoHeaderSumIpv6(c.srcAddr, 0, c.dstAddr, 0, IpProtocol.Icmpv6, icmpLength) : 0;
  setBe16(out, icmp + 2, finishChecksum(sumBytes(out, icmp, icmpLength, pseudo)));
  if (v6) ctx.finishIpv6(ctx.guestMac, c.srcAddr, c.dstAddr, IpProtocol.Icmpv6, icmpLength);
  else ctx.finishIpv4(ctx.guestMac, c.srcAddr, c.dstAddr, IpProtocol.Icmp, icmpLength);
  return true;
}

/**
 * Tear a flow down: RST to the guest (rstToGuest), reset to the peer
 * (resetPeer: SO_LINGER 0 close) or a plain close.
 */
export function abort(c: TcpConnections, id: number, rstToGuest: boolean, resetPeer: boolean): void {
  if (rstToGuest) {
    c.ctx.counters.add(TcpEvent.RstToGuest);
    if (!sendRst(c, id) && c.pendingRst.length < MAX_PENDING_RST) {
      // No guest buffer for the RST now: the guest must still learn of the
      // reset, so keep the slot until it goes out; the socket goes now.
      closeSocket(c, id, resetPeer);
      c.flag[id] = F_RST_PENDING;
      c.pendingRst.push(id);
      return;
    }
  }
  closeFlow(c, id, resetPeer);
}

/** RST|ACK to the guest for flow id (for the guest's SYN while connecting); returns false when it had no buffer. */
export function sendRst(c: TcpConnections, id: number): boolean {
  const seq = (c.flows.state[id] as TcpState) === TcpState.Connecting ? 0 : c.sndNxt[id];
  return sendBare(c, id, TcpFlag.Rst | TcpFlag.Ack, seq, 0);
}

/** Send the RSTs that found no guest buffer before, in order; stops at the first that still finds none. */
export function retryPendingRst(c: TcpConnections): void {
  const pending = c.pendingRst;
  let sent = 0;
  while (sent < pending.length) {
    const id = pending[sent];
    if ((c.flag[id] & F_RST_PENDING) !== 0 && c.flows.isLive(id, FlowProtocol.Tcp)) {
      if (!sendRst(c, id)) break;
      closeFlow(c, id, false);
    }
    sent++;
  }
  if (sent > 0) pending.splice(0, sent);
}

/** A socket call failed: ECONNRESET and friends reset the guest's side. */
export function socketFailed(c: TcpConnections, id: number, e: unknown): void {
  log.debug(`tcp: socket error ${errorCode(e)}`);
  c.ctx.counters.add(TcpEvent.SocketError);
  abort(c, id, true, false);
}
