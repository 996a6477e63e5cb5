/**
 * TCP, host to guest: a readable socket is peeked (MSG_PEEK, from
 * SO_PEEK_OFF, or from 0 into a scratch prefix without it) straight into
 * the port's RX reservations after the headers, as far as the guest's
 * window allows; our FIN follows the socket's EOF. The bytes stay in the
 * socket until the guest ACKs them (guest-to-host.ts discards them), so a
 * rewind of the peek offset is all a retransmission takes. Flows that find
 * no RX buffers wait for port.onWritable (or the next timer tick).
 */
import { log } from '../../sys/log';
import type { SegmentList } from '../../io/frame-io';
import { FlowProtocol } from '../flow/flow-table';
import { ETHERNET_HEADER_LENGTH } from '../wire/ethernet';
import { IPV4_HEADER_LENGTH } from '../wire/ipv4';
import { IPV6_HEADER_LENGTH } from '../wire/ipv6';
import { TCP_HEADER_LENGTH, TcpFlag } from '../wire/tcp';
import { connectDone, connectFailed, soError } from './connect';
import { BYTES_TO_GUEST, EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT, EPOLLRDHUP, F_EVER_FIN, F_FIN_ACKED, F_FIN_SENT, F_NO_REBLOCK, F_PEEK_OFF, F_PEER_CLOSED, F_READABLE, F_RECOVERY, F_RX_BLOCKED, F_SND_BLOCKED, F_SOCK_EOF, MSG_PEEK, PEEK_PREFIX_LIMIT, SEGMENTS_PER_CALL, SOL_SOCKET, SO_PEEK_OFF, type TcpConnections, TcpEvent, TcpState, cancelOpen, finished, reserve, seqDiff, updateEvents } from './connection';
import { iovFromSegments } from '../l4/iovec';
import { SIOCINQ } from '../../sys/linux';
import { abort, sendFlags, socketFailed, writeSegment } from './output';

export function socketEvent(c: TcpConnections, id: number, events: number): void {
  const state = c.flows.state[id] as TcpState;
  c.activity[id] = c.ctx.clock.now();
  if (state === TcpState.Connecting) {
    if ((events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) === 0) return;
    const error = soError(c, id);
    if (error !== 0) {
      log.debug(`tcp: connect failed: errno ${error}`);
      connectFailed(c, id, error);
      return;
    }
    connectDone(c, id);
    return;
  }
  if ((events & EPOLLERR) !== 0) {
    const error = soError(c, id);
    if (error !== 0) {
      c.ctx.counters.add(TcpEvent.SocketError);
      abort(c, id, true, false);
      return;
    }
  }
  if (state === TcpState.SynAckSent || state === TcpState.SynSent) {
    if ((events & (EPOLLERR | EPOLLHUP)) !== 0) {
      // The peer went away before the guest completed the handshake.
      abort(c, id, true, true);
    }
    return;
  }
  if ((events & EPOLLOUT) !== 0 && (c.flag[id] & F_SND_BLOCKED) !== 0) {
    // Room in the send buffer again: tell the guest (window update). The
    // kernel calls this writable: do not re-arm EPOLLOUT for this update
    // even if our estimate is still small, or edge re-arming would spin.
    c.flag[id] = (c.flag[id] & ~F_SND_BLOCKED) | F_NO_REBLOCK;
    updateEvents(c, id);
    sendFlags(c, id, TcpFlag.Ack);
    c.flag[id] &= ~F_NO_REBLOCK;
  }
  if ((events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP)) !== 0) {
    c.flag[id] |= F_READABLE;
    if ((events & (EPOLLRDHUP | EPOLLHUP)) !== 0) c.flag[id] |= F_PEER_CLOSED;
    sendData(c, id, false);
  }
  if (c.flows.isLive(id, FlowProtocol.Tcp)) finished(c, id);
}

/** Guest RX buffers are available again: resume every flow that was waiting for them. */
export function resumeRxBlocked(c: TcpConnections): void {
  for (let id = 0; id < c.flows.capacity && c.rxBlocked > 0; id++) {
    if ((c.flag[id] & F_RX_BLOCKED) === 0) continue;
    c.flag[id] &= ~F_RX_BLOCKED;
    c.rxBlocked--;
    if (!c.flows.isLive(id, FlowProtocol.Tcp)) continue;
    updateEvents(c, id);
    sendData(c, id, false);
  }
}

/**
 * Send what the socket holds beyond sndNxt, as far as the guest's window
 * allows (a one-byte window when `probe`), then the FIN after EOF.
 */
export function sendData(c: TcpConnections, id: number, probe: boolean): void {
  const state = c.flows.state[id] as TcpState;
  if (state !== TcpState.Established && state !== TcpState.Closing) return;
  const family = c.flows.family[id] as 4 | 6;
  const headerLength = ETHERNET_HEADER_LENGTH + (family === 4 ? IPV4_HEADER_LENGTH : IPV6_HEADER_LENGTH) + TCP_HEADER_LENGTH;
  const fd = c.flows.fd[id];
  c.batchFlow = id;
  c.batchWindow = -1;
  try {
    sendSegments(c, id, probe, headerLength, fd);
  } finally {
    c.batchFlow = -1;
  }
  updateEvents(c, id);
}

/** Frames filled by one peek: as many RX reservations as the port holds open at once. */
export const FRAMES_PER_PEEK = 64;

/** Per frame of the current peek: its reservation and the payload room in it. */
const peekLists = new Array<SegmentList>(FRAMES_PER_PEEK);
const peekRooms = new Float64Array(FRAMES_PER_PEEK);
/** Reservations open for the current peek: the frames, and possibly one that could not take payload. */
let peekReserved = 0;

/**
 * The loop of sendData: while window, buffers and data last, reserve as
 * many frames as the window and the port allow, peek into all of their
 * payload areas with one recvmsg, then write each filled frame's headers
 * and commit it (oldest first); the frames the data did not reach go back.
 */
export function sendSegments(c: TcpConnections, id: number, probe: boolean, headerLength: number, fd: number): void {
  for (let sent = 0; sent < SEGMENTS_PER_CALL;) {
    const flag = c.flag[id];
    if ((flag & (F_FIN_SENT | F_RX_BLOCKED)) !== 0 || (flag & F_READABLE) === 0) break;
    const inFlight = seqDiff(c.sndNxt[id], c.sndUna[id]);
    let window = c.sndWnd[id] - inFlight;
    if (probe && window <= 0 && inFlight === 0) window = 1;
    if ((flag & F_PEEK_OFF) === 0) window = Math.min(window, PEEK_PREFIX_LIMIT - inFlight);
    // The FIN waits for window too: only a peek can tell that no data is left before it.
    if (window <= 0) break;
    // Without SO_PEEK_OFF the bytes the guest already has go to a scratch first.
    let prefix = 0;
    if ((flag & F_PEEK_OFF) === 0 && inFlight > 0) {
      prefix = inFlight;
      c.iov.buffers[0] = c.discard;
      c.iov.offsets[0] = 0;
      c.iov.lengths[0] = prefix;
    }
    // Reserve for what the socket holds, not the whole window: guest buffers
    // taken and then given back cost as much as the ones that carry data.
    const plan = Math.min(window, Math.max(1, unsentBytes(c, fd, inFlight)));
    const frames = reserveFrames(c, id, headerLength, plan, prefix > 0 ? 1 : 0, Math.min(FRAMES_PER_PEEK, SEGMENTS_PER_CALL - sent));
    if (frames === 0) break;
    let room = 0;
    for (let i = 0; i < frames; i++) room += peekRooms[i];
    let n: number;
    try {
      n = c.sockets.recvmsg(fd, c.iov, MSG_PEEK, null, c.meta);
    } catch (e) {
      cancelOpen(c);
      socketFailed(c, id, e);
      return;
    }
    if (n < 0 || (prefix > 0 && n <= prefix)) {
      // Nothing new: EAGAIN, or only what the guest already has (at EOF,
      // the FIN goes once everything is ACKed and the peek returns 0).
      cancelOpen(c);
      if ((c.flag[id] & F_PEER_CLOSED) === 0) c.flag[id] &= ~F_READABLE;
      break;
    }
    n -= prefix;
    if (n === 0) {
      // End of file: everything the peer sent is with the guest.
      cancelOpen(c);
      c.flag[id] |= F_SOCK_EOF;
      sendFin(c, id);
      break;
    }
    sent += commitPeeked(c, id, frames, n);
    if (n < room && (c.flag[id] & (F_SOCK_EOF | F_PEER_CLOSED)) === 0) {
      // Drained for now: with new data or the EOF brings a new event.
      c.flag[id] &= ~F_READABLE;
      break;
    }
  }
}

/**
 * Bytes in the socket beyond those the guest already has (SIOCINQ counts
 * every byte not yet discarded, peeked or not); 0 at EOF or when the ioctl
 * fails, so that one frame still goes to the peek that tells.
 */
function unsentBytes(c: TcpConnections, fd: number, inFlight: number): number {
  let queued: number;
  try {
    queued = c.sockets.ioctlInt(fd, SIOCINQ);
  } catch {
    return 0;
  }
  return queued - inFlight;
}

/**
 * Reserve up to `most` frames for flow id's next `window` bytes (an MSS
 * each) and point c.iov from entry `start` on at their payload areas.
 * Returns how many were reserved (peekLists/peekRooms); 0 after blocking
 * the flow on RX buffers or when c.iov has no room.
 */
function reserveFrames(c: TcpConnections, id: number, headerLength: number, window: number, start: number, most: number): number {
  const port = c.ctx.port;
  let frames = 0;
  let planned = 0;
  let iovCount = start;
  peekReserved = 0;
  while (frames < most && planned < window) {
    const length = Math.min(c.mss[id], window - planned);
    const list = frames === 0 ? reserve(c, headerLength + length) : port.reserveAnother?.(headerLength + length) ?? null;
    if (list === null) break;
    peekReserved++;
    const room = Math.min(length, list.totalLength - headerLength);
    // A reservation that cannot take this payload ends the batch; it goes back with those after it.
    if (room <= 0 || !iovFromSegments(c.iov, list, headerLength, room, iovCount)) {
      c.iov.count = iovCount;
      peekLists[frames] = list;
      peekRooms[frames] = 0;
      if (frames === 0) {
        cancelOpen(c);
        if (room <= 0) blockOnRx(c, id);
        return 0;
      }
      break;
    }
    iovCount = c.iov.count;
    peekLists[frames] = list;
    peekRooms[frames] = room;
    planned += room;
    frames++;
  }
  if (frames === 0 && !c.open) blockOnRx(c, id);
  return frames;
}

/** Headers and commit for the first of `frames` reservations that the `n` peeked bytes reached; the rest go back. */
function commitPeeked(c: TcpConnections, id: number, frames: number, n: number): number {
  let left = n;
  let committed = 0;
  while (committed < frames && left > 0) {
    const take = Math.min(peekRooms[committed], left);
    commitData(c, id, peekLists[committed], take);
    committed++;
    left -= take;
    // writeSegment closed "the" open frame; later reservations are still open.
    c.open = committed < peekReserved;
    if (take < peekRooms[committed - 1]) break;
  }
  cancelOpen(c);
  return committed;
}

/** Headers for `n` payload bytes already in list after the headers; commit. */
export function commitData(c: TcpConnections, id: number, list: SegmentList, n: number): void {
  const seq = c.sndNxt[id];
  writeSegment(c, id, list, TcpFlag.Ack | TcpFlag.Psh, seq, n, 0);
  c.sndNxt[id] = (seq + n) >>> 0;
  const fresh = seqDiff(c.sndNxt[id], c.sndMax[id]);
  if (fresh > 0) {
    c.sndMax[id] = c.sndNxt[id];
    c.flows.bytesToGuest[id] += fresh;
    c.ctx.counters.add(BYTES_TO_GUEST, fresh);
  }
  if (seq === c.sndUna[id]) c.flows.deadline[id] = c.ctx.clock.now() + c.rto[id];
}

/** Our FIN (after all data), once. */
export function sendFin(c: TcpConnections, id: number): void {
  if ((c.flag[id] & F_FIN_SENT) !== 0) return;
  const seq = c.sndNxt[id];
  if (!sendFlags(c, id, TcpFlag.Fin | TcpFlag.Ack)) {
    blockOnRx(c, id);
    return;
  }
  c.flag[id] |= F_FIN_SENT | F_EVER_FIN;
  c.finSeq[id] = seq;
  c.sndNxt[id] = (seq + 1) >>> 0;
  if (seqDiff(c.sndNxt[id], c.sndMax[id]) > 0) c.sndMax[id] = c.sndNxt[id];
  c.flows.setState(id, TcpState.Closing);
  c.flows.deadline[id] = c.ctx.clock.now() + c.rto[id];
}

export function blockOnRx(c: TcpConnections, id: number): void {
  if ((c.flag[id] & F_RX_BLOCKED) !== 0) return;
  c.flag[id] |= F_RX_BLOCKED;
  c.rxBlocked++;
  c.ctx.counters.add(TcpEvent.RxBlocked);
  updateEvents(c, id);
}

/** Go back to the first unacknowledged byte (timeout or duplicate ACKs). */
export function rewind(c: TcpConnections, id: number): void {
  c.sndNxt[id] = c.sndUna[id];
  c.dupAcks[id] = 0;
  c.recover[id] = c.sndMax[id];
  c.flag[id] |= F_READABLE | F_RECOVERY;
  if ((c.flag[id] & F_FIN_ACKED) === 0) c.flag[id] &= ~F_FIN_SENT;
  setPeekOffset(c, id);
  sendData(c, id, false);
}

/** Set SO_PEEK_OFF to the bytes between sndUna and sndNxt. */
export function setPeekOffset(c: TcpConnections, id: number): void {
  if ((c.flag[id] & F_PEEK_OFF) === 0) return;
  let offset = seqDiff(c.sndNxt[id], c.sndUna[id]);
  if ((c.flag[id] & F_FIN_SENT) !== 0 && (c.flag[id] & F_EVER_FIN) !== 0 && seqDiff(c.sndNxt[id], c.finSeq[id]) > 0) offset--;
  try {
    c.sockets.setsockoptInt(c.flows.fd[id], SOL_SOCKET, SO_PEEK_OFF, Math.max(0, offset));
  } catch (e) {
    socketFailed(c, id, e);
  }
}
