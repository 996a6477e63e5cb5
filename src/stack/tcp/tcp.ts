/**
 * TCP between the guest and the world through ordinary host sockets, in
 * passt's way: ferry keeps no copy of the data and runs no TCP stack of its
 * own. Each guest connection is one host socket. This file is the public
 * face (TcpService); the work is done by plain functions over one
 * TcpConnections object (connection.ts) in the modules beside it.
 *
 * States (connection.ts TcpState; FlowTable.state):
 *
 *   guest SYN --> Connecting --connect() done, SYN-ACK--> SynAckSent --guest ACK--> Established
 *   accept()  --> SynSent --SYN to the guest, its SYN-ACK, our ACK-----------------> Established
 *   Established --a FIN either way--> Closing --both FINs sent and ACKed--> (freed)
 *   any state --RST either way, a timeout, a socket error, closeFlow()--> (freed)
 *
 * Finer facts are flag bits per flow (F_GUEST_FIN, F_SOCK_EOF, F_FIN_SENT,
 * F_FIN_ACKED, F_RX_BLOCKED, ...). A flow reset while the guest had no RX
 * buffers for its RST keeps its slot (socket closed, F_RST_PENDING) in a
 * bounded queue until the RST goes out.
 *
 * Connecting (connect.ts): a guest SYN opens a non-blocking socket to the
 * destination mapped by the shared rules (flow/address-map.ts: the
 * --map-host-loopback address, the gateway by default, to 127.0.0.1 / ::1;
 * --map-guest-addr to the host's own address; --dns-forward port 53 to the
 * DNS host), unless it is one of ferry's own listeners (ownTcpPorts: an
 * RST). It is answered with a SYN-ACK only once connect() completes, or,
 * when it fails, with an ICMP unreachable (no route to network or host) or
 * an RST. Inbound connections accepted by listen.ts become a SYN to the
 * guest (acceptInbound) at the address the guest last sent from.
 *
 * Guest to host, hop by hop (guest-to-host.ts): the frontend's TX gather
 * list -> Stack.receiveFrame (IP validated) -> handle(): TCP header and
 * checksum checked in place -> the flow by 4-tuple -> its ACK discards the
 * acknowledged bytes from the socket's receive queue (recv MSG_TRUNC) and
 * its window bounds what we send -> its payload, as iovecs over the same
 * guest memory, to sendmsg -> an ACK for the bytes the kernel accepted
 * only, so the socket's send buffer is the window we advertise (its free
 * space, scaled; the buffer is set large, since autotuning would never
 * grow it). What the kernel did not take is not ACKed: the guest resends.
 * A guest FIN becomes shutdown(SHUT_WR) once its data is in the socket.
 *
 * Host to guest, hop by hop (host-to-guest.ts): epoll (edge-triggered)
 * says the socket is readable -> onReady -> sendData: while the guest's
 * window, its RX buffers and the data last, port.reserve(headers + MSS) ->
 * recvmsg(MSG_PEEK) from the peek offset (SO_PEEK_OFF; without it from 0,
 * the prefix the guest already has going to a scratch iovec) straight
 * into the reservation after the headers -> headers written in place
 * (output.ts), checksum summed over the payload where it lies, or partial
 * with checksum offload -> commit; one flush per batch. The bytes stay in
 * the socket until the guest ACKs them, so its receive buffer is the
 * retransmission buffer: a timeout or three duplicate ACKs rewind the peek
 * offset to the first unacknowledged byte. The socket's EOF becomes our
 * FIN after the data. With no RX buffers a flow waits for port.onWritable
 * (or the next timer tick, should that never come).
 *
 * Timers (timers.ts): one deadline per flow, walked by onTimer() every
 * STACK_TIMER_INTERVAL_MS: SYN timeout (10 s for connect()), retransmission
 * of data, SYN or SYN-ACK with exponential backoff (1 s doubling to 30 s,
 * 6 retries, then an RST), zero-window probes, the FIN timeout of a
 * half-closed flow (60 s) and the idle timeout of an established one (2 h).
 *
 * Ending: RSTs go both ways (SO_LINGER {1, 0} then close, so the peer sees
 * a reset). A flow ended from outside (FlowTable.closeFlow) is aborted the
 * same way through this state machine.
 *
 * Nothing on the data path allocates: views, iovec lists and address
 * scratch are reused. Guest segments marked NEEDS_CSUM (partial checksum)
 * are not verified.
 */
import type { Native } from '../../sys/native';
import type { IpPacket, ReadyHandler, RxFrame, StackContext } from '../context';
import { FlowProtocol, FlowTable, NO_FLOW } from '../flow/flow-table';
import { DropReason, countDrop } from '../drops';
import { LITTLE_ENDIAN } from '../../sys/byte-order';
import {
  F_RST_PENDING, IPPROTO_TCP, SIOCOUTQ, TCP_INFO, TCP_STATE_NAMES, TcpConnections, TcpEvent, TcpState, type TcpSockets,
  cancelOpen, closeFlow, flush, seqDiff,
} from './connection';
import { abort, retryPendingRst } from './output';
import { acceptInbound } from './connect';
import { handleSegment } from './guest-to-host';
import { resumeRxBlocked, socketEvent } from './host-to-guest';
import { onDeadline } from './timers';
import { addWritableListener } from '../l4/guest-frame';

export {
  FIN_TIMEOUT_MS, IDLE_TIMEOUT_MS, MAX_RETRIES, OUR_WINDOW_SCALE, RTO_INITIAL_MS, RTO_MAX_MS, SYN_TIMEOUT_MS,
  TCP_STATE_NAMES, TcpEvent, TcpState, type TcpSockets,
} from './connection';

/** What TcpService.hostInfo reports (TCP_INFO of the host socket plus ferry's view). */
export interface TcpHostInfo {
  /** ferry's state of the flow (TCP_STATE_NAMES). */
  state: string;
  /** tcpi_state (the kernel's TCP_* state number). */
  kernelState: number;
  rttUs: number;
  rttVarUs: number;
  sendCwnd: number;
  totalRetransmits: number;
  /** tcpi_bytes_acked / tcpi_bytes_received (-1 on kernels without them). */
  bytesAcked: number;
  bytesReceived: number;
  /** Bytes in the socket's send queue (SIOCOUTQ). */
  sendQueue: number;
  /** Bytes sent to the guest and not yet ACKed by it. */
  inFlightToGuest: number;
  /** The guest's receive window in bytes. */
  guestWindow: number;
}

/** Options of TcpService. */
export interface TcpServiceOptions {
  /** Addon calls (default: the real addon). */
  sockets?: TcpSockets;
  /** The worker's flow table when shared with UDP/ICMP (default: a table of config.maxFlows). */
  flows?: FlowTable;
  /** Use SO_PEEK_OFF when the kernel has it (default true; false exercises the fallback). */
  usePeekOffset?: boolean;
}

/**
 * The TCP translator: one per stack (worker). Install as the stack's
 * tcpHandler; the worker calls onTimer() periodically.
 */
export class TcpService implements ReadyHandler {
  readonly flows: FlowTable;
  /** Listener sets closed with this service (adoptListeners). */
  private readonly adopted: { close(): void }[] = [];
  private readonly c: TcpConnections;
  private readonly dueHandler = (id: number): void => {
    if ((this.c.flag[id] & F_RST_PENDING) === 0) onDeadline(this.c, id);
  };

  constructor(private readonly ctx: StackContext, options: TcpServiceOptions = {}) {
    // eslint-disable-next-line @typescript-eslint/no-require-imports -- the addon loads only without injected sockets (unit tests run without it)
    const sockets = options.sockets ?? (require('../../sys/native') as { native: Native }).native;
    this.flows = options.flows ?? new FlowTable(Math.max(1, ctx.config.maxFlows), ctx.counters);
    this.c = new TcpConnections(ctx, sockets, this.flows, options.usePeekOffset ?? true, this);
    this.flows.registerCloser(FlowProtocol.Tcp, (id) => this.closeFromOutside(id));
    this.flows.registerEvictor(FlowProtocol.Tcp, (id) => this.evictHalfOpen(id));
    // Resume flows blocked on guest RX buffers.
    addWritableListener(ctx.port, () => this.onWritable());
  }

  /** TransportHandler: one TCP segment from the guest. */
  handle(ctx: StackContext, frame: RxFrame, packet: IpPacket): void {
    void ctx;
    try {
      handleSegment(this.c, frame, packet);
    } finally {
      cancelOpen(this.c);
      flush(this.c);
    }
  }

  /** ReadyHandler: readiness of a flow's socket. */
  onReady(fd: number, events: number): void {
    const id = this.flows.flowOfFd(fd);
    if (id === NO_FLOW || !this.flows.isLive(id, FlowProtocol.Tcp)) {
      this.ctx.watcher?.unwatch(fd);
      return;
    }
    try {
      socketEvent(this.c, id, events);
    } catch (e) {
      countDrop(this.ctx.counters, DropReason.InternalError, () => `tcp: ${String(e instanceof Error ? e.stack ?? e.message : e)}`);
      cancelOpen(this.c);
      if (this.flows.isLive(id, FlowProtocol.Tcp)) abort(this.c, id, true, true);
    } finally {
      cancelOpen(this.c);
      flush(this.c);
    }
  }

  /** Timers: retransmissions, SYN/FIN/idle timeouts. Call every STACK_TIMER_INTERVAL_MS or sooner. */
  onTimer(now = this.ctx.clock.now()): void {
    this.c.timerNow = now;
    try {
      if (this.c.pendingRst.length > 0) retryPendingRst(this.c);
      this.flows.forEachDue(now, FlowProtocol.Tcp, this.dueHandler);
    } finally {
      cancelOpen(this.c);
      flush(this.c);
    }
    // A flow blocked on guest RX buffers has no timer of its own (nothing in
    // flight) and, with edge-triggered sockets, no socket event to come: if
    // the port's onWritable never fires (another reservation found buffers
    // before the guest's kick arrived, which a port may take as the end of
    // the starvation), the flow would stall for good. Retry on every tick.
    if (this.c.rxBlocked > 0) this.onWritable();
  }

  /** Guest RX buffers are available again: send the pending RSTs, resume flows that were waiting. */
  private onWritable(): void {
    if (this.c.pendingRst.length > 0) {
      retryPendingRst(this.c);
      flush(this.c);
    }
    if (this.c.rxBlocked === 0) return;
    try {
      resumeRxBlocked(this.c);
    } finally {
      cancelOpen(this.c);
      flush(this.c);
    }
  }

  /**
   * End a flow from outside (FlowTable.closeFlow: the control API, eviction)
   * through the state machine: an RST to the guest (queued with the other
   * pending resets when it has no RX buffers), an RST to the peer (SO_LINGER
   * {1, 0} and close), the flow freed. A flow already reset and waiting for
   * its RST to reach the guest is left to that queue.
   */
  /**
   * The flow table is full and offers flow id for room (FlowEvictor): only
   * a handshake that has not completed is given up, and at once (the peer
   * reset, the slot freed): no frame is sent from inside the allocation
   * that asked for room; the guest's next segment for it meets the reset
   * every unknown flow gets.
   */
  private evictHalfOpen(id: number): boolean {
    const state = this.flows.state[id] as TcpState;
    const halfOpen = state === TcpState.Connecting || state === TcpState.SynAckSent || state === TcpState.SynSent;
    if (!halfOpen || (this.c.flag[id] & F_RST_PENDING) !== 0) return false;
    closeFlow(this.c, id, true);
    return true;
  }

  private closeFromOutside(id: number): void {
    if (!this.flows.isLive(id, FlowProtocol.Tcp) || (this.c.flag[id] & F_RST_PENDING) !== 0) return;
    this.ctx.counters.add(TcpEvent.ClosedFromOutside);
    try {
      abort(this.c, id, true, true);
    } finally {
      cancelOpen(this.c);
      flush(this.c);
    }
  }

  /**
   * Reset every connection (RST both ways), close the sockets and the
   * listeners given to adoptListeners. RSTs that still find no guest
   * buffers are given up with their slots: nothing outlives the service.
   */
  close(): void {
    const c = this.c;
    for (const listeners of this.adopted.splice(0)) listeners.close();
    try {
      if (c.pendingRst.length > 0) retryPendingRst(c);
      for (let id = 0; id < this.flows.capacity; id++) {
        if (this.flows.isLive(id, FlowProtocol.Tcp) && (c.flag[id] & F_RST_PENDING) === 0) abort(c, id, true, true);
      }
    } finally {
      cancelOpen(c);
      flush(c);
    }
    for (const id of c.pendingRst.splice(0)) {
      if (this.flows.isLive(id, FlowProtocol.Tcp) && (c.flag[id] & F_RST_PENDING) !== 0) closeFlow(c, id, false);
    }
  }

  /** Close `listeners` (e.g. TcpListeners feeding this service) when this service closes. */
  adoptListeners(listeners: { close(): void }): void {
    this.adopted.push(listeners);
  }

  /**
   * The host socket's view of a TCP flow (TCP_INFO), for the control API;
   * null when id is not a TCP flow or the kernel said nothing. Allocates.
   */
  hostInfo(id: number): TcpHostInfo | null {
    const c = this.c;
    if (!this.flows.isLive(id, FlowProtocol.Tcp) || this.flows.fd[id] < 0) return null;
    const info = c.tcpInfo;
    let length: number;
    try {
      length = c.sockets.getsockoptBytes(this.flows.fd[id], IPPROTO_TCP, TCP_INFO, info);
    } catch {
      return null;
    }
    if (length < 104) return null;
    const view = new DataView(info.buffer, info.byteOffset, length);
    const u32 = (offset: number): number => view.getUint32(offset, LITTLE_ENDIAN);
    const u64 = (offset: number): number => (length >= offset + 8 ? Number(view.getBigUint64(offset, LITTLE_ENDIAN)) : -1);
    return {
      state: TCP_STATE_NAMES[this.flows.state[id]],
      kernelState: info[0],
      rttUs: u32(68),
      rttVarUs: u32(72),
      sendCwnd: u32(80),
      totalRetransmits: u32(100),
      bytesAcked: u64(120),
      bytesReceived: u64(128),
      sendQueue: this.queuedBytes(id),
      inFlightToGuest: seqDiff(c.sndNxt[id], c.sndUna[id]),
      guestWindow: c.sndWnd[id],
    };
  }

  private queuedBytes(id: number): number {
    try {
      return this.c.sockets.ioctlInt(this.flows.fd[id], SIOCOUTQ);
    } catch {
      return -1;
    }
  }

  /** The addon calls in use (shared with listen.ts). */
  get socketCalls(): TcpSockets {
    return this.c.sockets;
  }

  /** TCP flows in use. */
  get flowCount(): number {
    return this.flows.countOf(FlowProtocol.Tcp);
  }

  /**
   * An inbound connection accepted on a forwarded port (listen.ts): socket
   * `fd` from peer `peer` (4 or 16 address bytes) port `peerPort`, to be
   * delivered to the guest's port `guestPort`. Sends a SYN to the guest.
   * Returns true when the flow was created; otherwise the socket was closed
   * with a reset (table full, no address to show the guest).
   */
  acceptInbound(fd: number, family: 4 | 6, peer: Uint8Array, peerPort: number, guestPort: number): boolean {
    return acceptInbound(this.c, fd, family, peer, peerPort, guestPort);
  }
}
