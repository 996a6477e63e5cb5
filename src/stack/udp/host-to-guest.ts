/**
 * UDP, host to guest: FIONREAD gives the size of the next datagram. Up to
 * COPY_THRESHOLD bytes, recvmmsg takes up to BATCH_SLOTS datagrams at once
 * into scratch slots and each is copied into its own RX reservation (one
 * syscall for a burst of small datagrams; the FramePort contract allows
 * one open reservation at a time, so recvmmsg cannot fill several RX
 * reservations directly). A larger datagram gets one RX reservation of its
 * exact size and recvmsg fills it in place after the headers (no copy).
 * Headers are written afterwards (l4/guest-frame.ts), the checksum summed
 * over the data in place (partial with checksum offload). When the guest
 * has no RX buffers, the socket's EPOLLIN is disarmed (datagrams stay in
 * the kernel, or in the batch backlog) until port.onWritable.
 */
import type { IoVecList } from '../../sys/native';
import { log } from '../../sys/log';
import { UDP4_PARTIAL_CHECKSUM, UDP6_PARTIAL_CHECKSUM } from '../context';
import type { OffloadInfo, SegmentList } from '../../io/frame-io';
import { FlowProtocol, NO_FLOW } from '../flow/flow-table';
import { IpProtocol } from '../wire/ipv4';
import { UDP_HEADER_LENGTH } from '../wire/udp';
import { setBe16 } from '../wire/checksum';
import { fillL4Checksum } from '../l4/checksum';
import { emitFlowIpHeaders, flowPseudoSum } from '../l4/guest-frame';
import { iovFromSegments } from '../l4/iovec';
import { errorCode } from '../../sys/errno';
import { drainErrors } from './icmp-relay';
import { inboundFlow } from './inbound';
import { BATCH_SLOTS, BATCH_SLOT_SIZE, COPY_THRESHOLD, EPOLLIN, FIONREAD, HEADERS_V4, HEADERS_V6, MAX_PAYLOAD_V4, MAX_PAYLOAD_V6, MSG_TRUNC, READS_PER_WAKEUP, UdpEvent, type UdpFlows, block, delivered, flush } from './state';

/**
 * Read up to READS_PER_WAKEUP datagrams from fd (a flow's socket, or
 * listener `listener`) for the guest: small ones batched with recvmmsg,
 * large ones by recvmsg straight into their RX reservation.
 */
export function readSocket(c: UdpFlows, fd: number, listener: number, flowId: number): void {
  const ctx = c.ctx;
  const sockets = c.sockets;
  const port = ctx.port;
  const family = listener >= 0 ? (c.listenerFamily[listener] as 4 | 6) : (c.flows.family[flowId] as 4 | 6);
  const headers = family === 4 ? HEADERS_V4 : HEADERS_V6;
  const maxPayload = Math.min(family === 4 ? MAX_PAYLOAD_V4 : MAX_PAYLOAD_V6, port.maxFrameLength - headers);
  const meta = c.meta;
  for (let budget = READS_PER_WAKEUP; budget > 0; ) {
    if (c.backlogHead < c.backlogTail && !drainBacklog(c)) {
      block(c, fd);
      return;
    }
    let size: number;
    try {
      size = sockets.ioctlInt(fd, FIONREAD);
    } catch {
      size = 0;
    }
    if (size <= COPY_THRESHOLD) {
      // FIONREAD says 0 both for "nothing" and for an empty datagram: recvmmsg tells them apart.
      const want = Math.min(budget, BATCH_SLOTS);
      const received = receiveBatch(c, fd, listener, flowId, want);
      if (received < 0) return;
      budget -= Math.max(1, received);
      if (!drainBacklog(c)) {
        block(c, fd);
        return;
      }
      // Fewer than asked: the socket is drained (or reported an error); epoll calls again if more came.
      if (received < want) return;
      continue;
    }
    budget--;
    if (size > maxPayload) {
      // Larger than any frame the guest takes: discard it (a zero-length read drops a datagram).
      discardDatagram(c, fd);
      ctx.counters.add(UdpEvent.TooBig);
      continue;
    }
    const list = port.reserve(headers + size);
    if (list === null || list.totalLength < headers + size) {
      if (list !== null) port.cancel();
      block(c, fd);
      return;
    }
    iovFromSegments(c.rxIov, list, headers, size);
    let n: number;
    try {
      n = sockets.recvmsg(fd, c.rxIov, 0, listener >= 0 ? c.fromAddr : null, meta);
    } catch (e) {
      port.cancel();
      // A pending asynchronous error (the ICMP behind it is in the error queue).
      log.debug(`udp: recvmsg: ${errorCode(e)}`);
      drainErrors(c, fd, listener, flowId);
      continue;
    }
    if (n < 0) {
      port.cancel();
      return;
    }
    if ((meta[1] & MSG_TRUNC) !== 0) {
      port.cancel();
      ctx.counters.add(UdpEvent.TooBig);
      continue;
    }
    const id = listener >= 0 ? inboundFlow(c, listener, c.fromAddr, meta[0]) : flowId;
    if (id === NO_FLOW) {
      port.cancel();
      continue;
    }
    port.commit(headers + n, writeHeaders(c, list, id, n));
    delivered(c, id, n);
  }
}

/**
 * recvmmsg up to `count` datagrams from fd into the batch slots and queue
 * them in the backlog (empty on entry) with their flows. Returns how many
 * were received, or -1 when none were queued.
 */
export function receiveBatch(c: UdpFlows, fd: number, listener: number, flowId: number, count: number): number {
  const ctx = c.ctx;
  const iov = c.batchIov ?? allocateBatch(c);
  let n: number;
  try {
    n = c.sockets.recvmmsg(
      fd,
      iov,
      c.batchLengths,
      listener >= 0 ? c.batchAddrs : null,
      listener >= 0 ? c.batchAddrLengths : null,
      count,
      0,
      c.batchFlags,
    );
  } catch (e) {
    log.debug(`udp: recvmmsg: ${errorCode(e)}`);
    drainErrors(c, fd, listener, flowId);
    return 0;
  }
  if (n <= 0) return -1;
  for (let j = 0; j < n; j++) {
    let id = flowId;
    if ((c.batchFlags[j] & MSG_TRUNC) !== 0) {
      ctx.counters.add(UdpEvent.TooBig);
      id = NO_FLOW;
    } else if (listener >= 0) {
      id = inboundFlow(c, listener, c.batchAddrs[j], c.batchAddrLengths[j]);
    }
    c.backlogFlow[j] = id;
    c.backlogLength[j] = c.batchLengths[j];
  }
  c.backlogHead = 0;
  c.backlogTail = n;
  return n;
}

export function allocateBatch(c: UdpFlows): IoVecList {
  const memory = new Uint8Array(BATCH_SLOTS * BATCH_SLOT_SIZE);
  const iov: IoVecList = { buffers: new Array<Uint8Array>(BATCH_SLOTS).fill(memory), offsets: new Float64Array(BATCH_SLOTS), lengths: new Float64Array(BATCH_SLOTS).fill(BATCH_SLOT_SIZE), count: BATCH_SLOTS };
  for (let j = 0; j < BATCH_SLOTS; j++) iov.offsets[j] = j * BATCH_SLOT_SIZE;
  c.batchIov = iov;
  return iov;
}

/**
 * Give backlog datagrams to the guest, in order, each copied into its own
 * RX reservation. Returns false when the guest ran out of buffers (the
 * rest stays queued for onWritable).
 */
export function drainBacklog(c: UdpFlows): boolean {
  const ctx = c.ctx;
  const port = ctx.port;
  const flows = c.flows;
  const memory = c.batchIov === null ? null : (c.batchIov.buffers[0] as Uint8Array);
  for (; c.backlogHead < c.backlogTail; c.backlogHead++) {
    const j = c.backlogHead;
    const id = c.backlogFlow[j];
    if (memory === null || id === NO_FLOW || !flows.isLive(id, FlowProtocol.Udp)) continue;
    const length = c.backlogLength[j];
    const headers = flows.family[id] === 4 ? HEADERS_V4 : HEADERS_V6;
    if (headers + length > port.maxFrameLength || length > (flows.family[id] === 4 ? MAX_PAYLOAD_V4 : MAX_PAYLOAD_V6)) {
      ctx.counters.add(UdpEvent.TooBig);
      continue;
    }
    const list = port.reserve(headers + length);
    if (list === null || list.totalLength < headers + length) {
      if (list !== null) port.cancel();
      return false;
    }
    if (length > 0) list.copyIn(headers, memory, j * BATCH_SLOT_SIZE, length);
    port.commit(headers + length, writeHeaders(c, list, id, length));
    delivered(c, id, length);
  }
  c.backlogHead = 0;
  c.backlogTail = 0;
  return true;
}

export function discardDatagram(c: UdpFlows, fd: number): void {
  c.emptyIov.lengths[0] = 0;
  try {
    c.sockets.recvmsg(fd, c.emptyIov, 0, null, c.meta);
  } catch {
    // An error was reported instead; the error queue is read on EPOLLERR.
  }
}

/**
 * Write Ethernet + IP + UDP headers for `dataLength` bytes of data already
 * in the reservation after them, from the flow's remote to the guest, with
 * the UDP checksum summed over the data in place. With checksum offload
 * the checksum is partial (pseudo-header only, NEEDS_CSUM). Returns the
 * OffloadInfo to commit the frame with (undefined: a complete checksum).
 */
export function writeHeaders(c: UdpFlows, list: SegmentList, id: number, dataLength: number): OffloadInfo | undefined {
  const flows = c.flows;
  const family = flows.family[id];
  const headerLength = family === 4 ? HEADERS_V4 : HEADERS_V6;
  const udpLength = UDP_HEADER_LENGTH + dataLength;
  const headers = c.headers;
  headers.begin(list, headerLength);
  const out = headers.out;
  const at = emitFlowIpHeaders(out, headers.at, c.ctx, flows, id, IpProtocol.Udp, udpLength);
  setBe16(out, at, flows.remotePort[id]);
  setBe16(out, at + 2, flows.guestPort[id]);
  setBe16(out, at + 4, udpLength);
  const pseudo = flowPseudoSum(flows, id, IpProtocol.Udp, udpLength);
  const partial = family === 4 ? UDP4_PARTIAL_CHECKSUM : UDP6_PARTIAL_CHECKSUM;
  const offload = fillL4Checksum(out, at, UDP_HEADER_LENGTH, 6, pseudo, list, headerLength, dataLength, c.ctx.checksumOffload, partial, true);
  headers.end(list);
  return offload;
}

/** The guest posted RX buffers: re-arm every blocked socket (level-triggered, so queued datagrams fire at once). */
export function resumeReading(c: UdpFlows): void {
  if (c.backlogHead < c.backlogTail) {
    const drained = drainBacklog(c);
    flush(c);
    if (!drained) return;
  }
  if (c.blocked.size === 0) return;
  const watcher = c.ctx.watcher;
  for (const fd of c.blocked) watcher?.modify(fd, EPOLLIN);
  c.blocked.clear();
}
