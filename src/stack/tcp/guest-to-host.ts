/**
 * TCP, guest to host: a validated guest segment is matched to its flow and
 * handled by state. Its ACK discards the acknowledged bytes from the
 * socket's receive queue (they were only peeked) and its window bounds
 * what we send; its payload goes from guest memory straight into sendmsg
 * iovecs, and the guest is ACKed only for what the kernel accepted. Its
 * FIN becomes shutdown(SHUT_WR) once the data before it is in the socket.
 */
import { rateLimited } from '../../sys/log';
import type { IpPacket, RxFrame } from '../context';
import type { SegmentList } from '../../io/frame-io';
import { FlowProtocol, NO_FLOW } from '../flow/flow-table';
import { TcpError, TcpFlag } from '../wire/tcp';
import { l4ChecksumValid } from '../l4/checksum';
import { iovFromSegments } from '../l4/iovec';
import { DropReason, countDrop } from '../drops';
import { establish, openFromGuest, takeSynOptions } from './connect';
import { BYTES_FROM_GUEST, DUP_ACK_THRESHOLD, F_EVER_FIN, F_FIN_ACKED, F_FIN_SENT, F_GUEST_FIN, F_RECOVERY, F_RST_PENDING, F_SND_BLOCKED, MSG_TRUNC, RTO_INITIAL_MS, SHUT_WR, type TcpConnections, TcpEvent, TcpState, finished, seqDiff, updateEvents } from './connection';
import { rewind, sendData, setPeekOffset } from './host-to-guest';
import { abort, resetUnknown, retryPendingRst, sendFlags, sendReset, sendSyn, socketFailed } from './output';
import { armTimer } from './timers';

export function handleSegment(c: TcpConnections, frame: RxFrame, packet: IpPacket): void {
  const ctx = c.ctx;
  const segments = frame.segments;
  const tcp = c.tcp.reset(frame.bytes, packet.l4Offset, packet.l4Length);
  const error = tcp.validate(null);
  if (error !== TcpError.Ok || segments === null) {
    countDrop(ctx.counters, DropReason.TcpMalformed, () => `TCP ${TcpError[error]}`);
    return;
  }
  const l4Position = packet.l4Offset - frame.base;
  if (!frame.checksumPartial && !l4ChecksumValid(segments, l4Position, packet.l4Length, packet.pseudoSum(frame.bytes))) {
    ctx.counters.add(TcpEvent.BadChecksum);
    countDrop(ctx.counters, DropReason.TcpMalformed, () => 'TCP bad checksum');
    return;
  }
  const bytes = frame.bytes;
  const family = packet.family;
  const src = packet.srcOffset;
  const dst = packet.dstOffset;
  const flags = tcp.flags;
  c.seen.note(family, bytes, src);
  const id = c.flows.lookup(FlowProtocol.Tcp, family, bytes, src, tcp.srcPort, bytes, dst, tcp.dstPort);
  if (id === NO_FLOW) {
    if ((flags & (TcpFlag.Syn | TcpFlag.Ack | TcpFlag.Rst | TcpFlag.Fin)) === TcpFlag.Syn) {
      openFromGuest(c, packet, bytes);
    } else if ((flags & TcpFlag.Rst) === 0) {
      resetUnknown(c, packet, bytes);
    }
    return;
  }
  if ((c.flag[id] & F_RST_PENDING) !== 0) {
    // The flow was reset and the guest has not heard: it has buffers now, perhaps.
    retryPendingRst(c);
    return;
  }
  c.activity[id] = ctx.clock.now();
  switch (c.flows.state[id] as TcpState) {
    case TcpState.Connecting:
      if ((flags & TcpFlag.Rst) !== 0) abort(c, id, false, true);
      // A retransmitted SYN: connect() is still in progress.
      return;
    case TcpState.SynAckSent:
      segmentInSynAckSent(c, id, flags, segments, l4Position);
      return;
    case TcpState.SynSent:
      segmentInSynSent(c, id, flags);
      return;
    default:
      segmentEstablished(c, id, flags, segments, l4Position);
  }
}

/** SynAckSent: the guest's ACK completes the handshake (it may carry data). */
export function segmentInSynAckSent(c: TcpConnections, id: number, flags: number, segments: SegmentList, l4Position: number): void {
  const tcp = c.tcp;
  if ((flags & TcpFlag.Rst) !== 0) {
    abort(c, id, false, true);
    return;
  }
  if ((flags & TcpFlag.Syn) !== 0) {
    // The guest did not see our SYN-ACK: send it again.
    sendSyn(c, id, true);
    return;
  }
  if ((flags & TcpFlag.Ack) === 0 || tcp.ack !== c.sndNxt[id]) {
    if ((flags & TcpFlag.Ack) !== 0) sendReset(c, id, tcp.ack);
    return;
  }
  c.sndUna[id] = c.sndNxt[id];
  establish(c, id);
  segmentEstablished(c, id, flags, segments, l4Position);
}

/** SynSent (inbound): the guest's SYN-ACK, or its RST when nothing listens. */
export function segmentInSynSent(c: TcpConnections, id: number, flags: number): void {
  const tcp = c.tcp;
  if ((flags & TcpFlag.Rst) !== 0) {
    abort(c, id, false, true);
    return;
  }
  if ((flags & (TcpFlag.Syn | TcpFlag.Ack)) !== (TcpFlag.Syn | TcpFlag.Ack) || tcp.ack !== c.sndNxt[id]) return;
  c.rcvNxt[id] = (tcp.seq + 1) >>> 0;
  takeSynOptions(c, id, c.flows.family[id] as 4 | 6);
  c.sndWnd[id] = tcp.window;
  c.sndUna[id] = c.sndNxt[id];
  establish(c, id);
  sendFlags(c, id, TcpFlag.Ack);
  sendData(c, id, false);
}

/** Established or closing: ACK processing, payload to the socket, FIN. */
export function segmentEstablished(c: TcpConnections, id: number, flags: number, segments: SegmentList, l4Position: number): void {
  const tcp = c.tcp;
  if ((flags & TcpFlag.Rst) !== 0) {
    // Accept a reset anywhere near the expected sequence number (RFC 5961 would challenge; the guest is trusted that far).
    c.ctx.counters.add(TcpEvent.RstFromGuest);
    abort(c, id, false, true);
    return;
  }
  if ((flags & TcpFlag.Syn) !== 0) {
    // A new SYN on a live 4-tuple: challenge ACK (RFC 5961 4.2); the guest answers with RST if it lost the connection.
    sendFlags(c, id, TcpFlag.Ack);
    return;
  }
  if ((flags & TcpFlag.Ack) === 0) return;
  const dataLength = tcp.dataLength;
  const fin = (flags & TcpFlag.Fin) !== 0;
  processAck(c, id, tcp.ack, tcp.window, dataLength > 0 || fin);
  if (!c.flows.isLive(id, FlowProtocol.Tcp)) return;

  if (dataLength > 0 || fin || tcp.seq !== c.rcvNxt[id]) {
    // Zero-length segments before rcvNxt are keepalive probes: receivePayload ACKs them.
    receivePayload(c, id, tcp.seq, dataLength, fin, segments, l4Position + tcp.headerLength);
    if (!c.flows.isLive(id, FlowProtocol.Tcp)) return;
  }
  if (finished(c, id)) return;
  sendData(c, id, false);
}

/** The ACK and window fields of a guest segment. */
export function processAck(c: TcpConnections, id: number, ack: number, rawWindow: number, carriesData: boolean): void {
  const window = rawWindow * (1 << c.guestWscale[id]);
  const una = c.sndUna[id];
  const acked = seqDiff(ack, una);
  const maxAckable = seqDiff(c.sndMax[id], una);
  if (acked < 0 || acked > maxAckable) {
    // Old or from the future: the window is not trusted either.
    return;
  }
  if (acked > 0) {
    let dataAcked = acked;
    if ((c.flag[id] & F_EVER_FIN) !== 0 && seqDiff(ack, c.finSeq[id]) > 0) {
      dataAcked--;
      c.flag[id] |= F_FIN_ACKED;
    }
    if (dataAcked > 0 && !discardAcked(c, id, dataAcked)) return;
    c.sndUna[id] = ack;
    if (seqDiff(ack, c.sndNxt[id]) > 0) {
      // ACK for data sent before a rewind: continue after it.
      c.sndNxt[id] = ack;
      if ((c.flag[id] & F_FIN_ACKED) !== 0) c.flag[id] |= F_FIN_SENT;
      setPeekOffset(c, id);
    }
    c.dupAcks[id] = 0;
    c.retries[id] = 0;
    c.rto[id] = RTO_INITIAL_MS;
    if ((c.flag[id] & F_RECOVERY) !== 0 && seqDiff(ack, c.recover[id]) >= 0) c.flag[id] &= ~F_RECOVERY;
    c.sndWnd[id] = window;
    armTimer(c, id);
    return;
  }
  // acked === 0
  if (!carriesData && window === c.sndWnd[id] && c.sndNxt[id] !== una && (c.flag[id] & F_RECOVERY) === 0) {
    if (++c.dupAcks[id] === DUP_ACK_THRESHOLD) {
      c.ctx.counters.add(TcpEvent.FastRetransmit);
      rewind(c, id);
    }
  }
  c.sndWnd[id] = window;
}

/** Drop `count` ACKed bytes from the socket's receive queue. Returns false when the flow was reset. */
export function discardAcked(c: TcpConnections, id: number, count: number): boolean {
  const fd = c.flows.fd[id];
  const iov = c.discardIov;
  let left = count;
  // Bounded: each pass discards up to PEEK_PREFIX_LIMIT bytes of what the guest ACKed (at most a window).
  for (let pass = 0; left > 0 && pass < 64; pass++) {
    iov.lengths[0] = Math.min(left, c.discard.length);
    let n: number;
    try {
      n = c.sockets.recvmsg(fd, iov, MSG_TRUNC, null, c.meta);
    } catch (e) {
      socketFailed(c, id, e);
      return false;
    }
    if (n <= 0) break;
    left -= n;
  }
  if (left > 0) {
    // The guest ACKed bytes that are not in the socket: cannot happen unless the socket lost data.
    rateLimited('warn', 'tcp discard', () => `tcp: guest ACKed ${left} bytes more than the socket holds`);
  }
  return true;
}

/** Guest payload (and FIN) starting at sequence number seq, at payloadPosition in the frame's segments. */
export function receivePayload(c: TcpConnections, id: number, seq: number, dataLength: number, fin: boolean, segments: SegmentList, payloadPosition: number): void {
  const ctx = c.ctx;
  if ((c.flag[id] & F_GUEST_FIN) !== 0) {
    // Nothing more can come after the guest's FIN: a retransmission; ACK it.
    sendFlags(c, id, TcpFlag.Ack);
    return;
  }
  const skip = seqDiff(c.rcvNxt[id], seq);
  if (skip < 0) {
    // A gap: everything before it is missing. A duplicate ACK makes the guest retransmit.
    ctx.counters.add(TcpEvent.OutOfOrder);
    sendFlags(c, id, TcpFlag.Ack);
    return;
  }
  if (skip > dataLength || (skip === dataLength && !fin)) {
    // Entirely old (retransmission or keepalive probe): ACK what we have.
    sendFlags(c, id, TcpFlag.Ack);
    return;
  }
  const toSend = dataLength - skip;
  let sent = 0;
  if (toSend > 0) {
    sent = sendToSocket(c, id, segments, payloadPosition + skip, toSend);
    if (sent < 0) return; // flow reset
    c.rcvNxt[id] = (c.rcvNxt[id] + sent) >>> 0;
    c.flows.bytesFromGuest[id] += sent;
    ctx.counters.add(BYTES_FROM_GUEST, sent);
    if (sent < toSend) {
      ctx.counters.add(TcpEvent.PartialSend);
      c.flag[id] |= F_SND_BLOCKED;
      updateEvents(c, id);
    }
  }
  if (fin && sent === toSend) {
    try {
      c.sockets.shutdown(c.flows.fd[id], SHUT_WR);
    } catch (e) {
      socketFailed(c, id, e);
      return;
    }
    c.rcvNxt[id] = (c.rcvNxt[id] + 1) >>> 0;
    c.flag[id] |= F_GUEST_FIN;
    c.flows.setState(id, TcpState.Closing);
    armTimer(c, id);
  }
  sendFlags(c, id, TcpFlag.Ack);
}

/** sendmsg payload bytes [position, position+length) of the segments. Returns bytes accepted, or -1 when the flow was reset. */
export function sendToSocket(c: TcpConnections, id: number, segments: SegmentList, position: number, length: number): number {
  const iov = c.iov;
  if (!iovFromSegments(c.iov, segments, position, length, 0)) {
    countDrop(c.ctx.counters, DropReason.TcpMalformed, () => 'TCP payload spans too many segments');
    return 0;
  }
  let n: number;
  try {
    n = c.sockets.sendmsg(c.flows.fd[id], iov, null, 0);
  } catch (e) {
    socketFailed(c, id, e);
    return -1;
  }
  return n < 0 ? 0 : n;
}
