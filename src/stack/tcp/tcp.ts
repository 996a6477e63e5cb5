/**
 * TCP between the guest and the world through ordinary host sockets, in
 * passt's way: ferry keeps no copy of the data and runs no TCP stack of its
 * own. Each guest connection is one host socket:
 *
 * Guest to host: a segment's payload goes from guest memory straight into
 * sendmsg iovecs, and the guest is ACKed only for the bytes the kernel
 * accepted, so the socket's send buffer is the window we advertise (its free
 * space, scaled by the window scale we offered in the SYN-ACK; the buffer is
 * set large, since autotuning would never grow it). What the kernel did not
 * take is not ACKed: the guest retransmits it.
 *
 * Host to guest: recv(MSG_PEEK) from the socket's peek offset (SO_PEEK_OFF;
 * without it, peek from 0 and throw the already-sent prefix into a scratch
 * iovec) straight into the frame port's reserved RX space after the headers
 * written in place. Bytes stay in the socket until the guest ACKs them, then
 * they are discarded (recv MSG_TRUNC), so the socket's receive buffer is the
 * retransmission buffer: a timeout or three duplicate ACKs rewind the peek
 * offset to the first unacknowledged byte. The guest's advertised window
 * bounds what is in flight; with no RX buffers we stop and resume from
 * port.onWritable (or the next timer tick, should that never come).
 *
 * Connections: a guest SYN opens a non-blocking socket to the same
 * destination, mapped by the rules UDP uses (udp-address-map.ts: the
 * --map-host-loopback address, the gateway by default, goes to 127.0.0.1 /
 * ::1; --map-guest-addr to the host's own address; --dns-forward port 53 to
 * the DNS host) and is answered with a SYN-ACK only once connect()
 * completes, or, when it fails, an ICMP unreachable (no route to the
 * network or host) or an RST. Inbound connections accepted by tcp-listen.ts
 * become a SYN to the guest (acceptInbound), at the address the guest last
 * sent from. FIN is carried both ways (guest FIN -> shutdown(WR) once its
 * data is in the socket; socket EOF -> FIN after the data), RST both ways
 * (SO_LINGER 0 close so the peer sees a reset).
 *
 * Flows live in the shared FlowTable (flow-table.ts) and this module keeps
 * parallel typed arrays indexed by flow id. Timers (SYN, retransmission with
 * backoff, zero-window probe, FIN, idle) are one deadline per flow, checked
 * by onTimer(), which the worker calls every STACK_TIMER_INTERVAL_MS.
 *
 * Nothing on the data path allocates: views, iovec lists and address scratch
 * are reused. Checksums are computed over the headers and the payload in
 * place (pseudo-header + fastSumSegments over the reservation), except that
 * a port with checksumOffload (the guest negotiated GUEST_CSUM) gets
 * segments marked NEEDS_CSUM with a partial (pseudo-header) checksum. Guest
 * segments marked NEEDS_CSUM (partial checksum) are not verified.
 */
import type { IoVecList, Native } from '../../sys/native';
import { defineCounter } from '../../sys/counters';
import { log, rateLimited } from '../../sys/log';
import type { IpPacket, ReadyHandler, RxFrame, StackContext } from '../context';
import { IPV4_L4_OFFSET, IPV6_L4_OFFSET, TCP4_PARTIAL_CHECKSUM, TCP6_PARTIAL_CHECKSUM } from '../context';
import type { SegmentList } from '../../io/frame-io';
import { ADDRESS_SLOT, FlowProtocol, FlowTable, NO_FLOW, defineFlowStates } from '../flow/flow-table';
import { ETHERNET_HEADER_LENGTH, EtherType, emitEthernet } from '../wire/ethernet';
import { IPV4_HEADER_LENGTH, IpProtocol, emitIpv4 } from '../wire/ipv4';
import { IPV6_HEADER_LENGTH, emitIpv6 } from '../wire/ipv6';
import { TCP_HEADER_LENGTH, TcpError, TcpFlag, TcpOption, TcpOptions, TcpView, emitTcp } from '../wire/tcp';
import { finishChecksum, foldSum, pseudoHeaderSumIpv4, pseudoHeaderSumIpv6, setBe16, setBe32, sumBytes } from '../wire/checksum';
import { fastSumSegments } from './checksum';
import { DropReason, countDrop } from '../drops';
import { isGroupOrUnspecified, mapDestination } from '../flow/address-map';
import { AF_INET, AF_INET6, SOCKADDR_IN6_LENGTH, SOCKADDR_IN_LENGTH, writeSockaddrFamily } from '../../sys/sockaddr';
import { equalAt, isIpv6LoopbackAt } from '../address';
import { errorCode } from '../../sys/errno';
import { closeSocketQuietly } from '../../sys/close';
import { LITTLE_ENDIAN, setHostU32 } from '../../sys/byte-order';

/** The addon calls TCP needs (a subset, so tests could pass a fake). */
export type TcpSockets = Pick<
  Native,
  | 'socket'
  | 'bind'
  | 'connect'
  | 'listen'
  | 'acceptFrom'
  | 'getsockname'
  | 'close'
  | 'setsockoptInt'
  | 'getsockoptInt'
  | 'setsockoptBytes'
  | 'getsockoptBytes'
  | 'shutdown'
  | 'sendmsg'
  | 'recvmsg'
  | 'ioctlInt'
>;

// ---- Linux constants (the addon passes numbers through unchanged) ----
const SOCK_STREAM = 1;
const SOL_SOCKET = 1;
const SO_ERROR = 4;
const SO_SNDBUF = 7;
const SO_LINGER = 13;
const SO_BINDTODEVICE = 25;
const SO_PEEK_OFF = 42;
const SHUT_WR = 1;
const ENETUNREACH = 101;
const EHOSTUNREACH = 113;
const ICMP4_NET_UNREACHABLE = 0;
const ICMP4_HOST_UNREACHABLE = 1;
const ICMP6_NO_ROUTE = 0;
const ICMP6_ADDRESS_UNREACHABLE = 3;
const IPPROTO_TCP = 6;
const TCP_INFO = 11;
const MSG_PEEK = 2;
const MSG_TRUNC = 32;
const SIOCOUTQ = 0x5411;
const EPOLLIN = 0x001;
const EPOLLOUT = 0x004;
const EPOLLERR = 0x008;
const EPOLLHUP = 0x010;
const EPOLLRDHUP = 0x2000;
/** Bit 31, as the int32 the Poller and epoll_event hold. */
const EPOLLET = 1 << 31;
/** Established sockets are edge-triggered: unacknowledged data stays in the receive queue, so level-triggered EPOLLIN would fire forever. */
const ESTABLISHED_EVENTS = EPOLLIN | EPOLLRDHUP | EPOLLET;

// ---- tunables ----
/** Window scale we offer: windows up to 16 MiB (socket buffers rarely exceed 4-6 MiB). */
export const OUR_WINDOW_SCALE = 8;
/** Give up on a host connect() after this long (passt: 10 s). */
export const SYN_TIMEOUT_MS = 10_000;
/** First retransmission timeout; doubled per retry. */
export const RTO_INITIAL_MS = 1000;
export const RTO_MAX_MS = 30_000;
/** Retransmissions (of data, SYN or SYN-ACK) before the connection is reset. */
export const MAX_RETRIES = 6;
/** A half-closed flow waiting for the last FIN or ACK is reset after this long. */
export const FIN_TIMEOUT_MS = 60_000;
/** An established flow without any traffic for this long is reset (passt: 2 h). */
export const IDLE_TIMEOUT_MS = 7_200_000;
/** MSS assumed when the guest's SYN carries none (RFC 9293 3.7.1). */
const DEFAULT_MSS = 536;
/** Segments sent to the guest per call, so one flow cannot starve the others. */
const SEGMENTS_PER_CALL = 128;
/** Without SO_PEEK_OFF, at most this many unacknowledged bytes (the prefix peeked again each time). */
const PEEK_PREFIX_LIMIT = 1 << 20;
/** iovec entries per socket call (the kernel's IOV_MAX). */
const IOV_ENTRIES = 1024;
/** SO_SNDBUF asked for on established sockets (tcp_wmem's default maximum; the kernel doubles it and caps it at wmem_max). */
const SEND_BUFFER_BYTES = 4 << 20;
/** Duplicate ACKs that trigger a fast retransmission. */
const DUP_ACK_THRESHOLD = 3;

/** Flow states (numbers in FlowTable.state for TCP flows). */
export const enum TcpState {
  /** Guest SYN received, host connect() in progress. */
  Connecting = 0,
  /** Host connected, SYN-ACK sent to the guest, waiting for its ACK. */
  SynAckSent = 1,
  /** Inbound connection accepted, SYN sent to the guest, waiting for its SYN-ACK. */
  SynSent = 2,
  Established = 3,
  /** A FIN went one way or the other. */
  Closing = 4,
}

/** Labels of TcpState, in order (the ferry_flows gauge). */
export const TCP_STATE_NAMES: readonly string[] = ['connecting', 'syn_ack_sent', 'syn_sent', 'established', 'closing'];
defineFlowStates(FlowProtocol.Tcp, 'tcp', TCP_STATE_NAMES);

// Per-flow flag bits.
const F_PEEK_OFF = 1 << 0; // SO_PEEK_OFF is set on the socket
const F_GUEST_FIN = 1 << 1; // the guest's FIN was received and the socket shut down for writing
const F_SOCK_EOF = 1 << 2; // the socket returned end of file
const F_FIN_SENT = 1 << 3; // our FIN is in flight (sndNxt counts it)
const F_FIN_ACKED = 1 << 4; // the guest ACKed our FIN
const F_RX_BLOCKED = 1 << 5; // waiting for guest RX buffers
const F_SND_BLOCKED = 1 << 6; // the socket refused guest data: watching EPOLLOUT for a window update
const F_READABLE = 1 << 7; // the socket may hold data not yet sent to the guest (cleared when a peek finds nothing new)
const F_EVER_FIN = 1 << 8; // finSeq is valid
const F_RECOVERY = 1 << 10; // rewound: duplicate ACKs are not counted until `recover` is ACKed
const F_NO_REBLOCK = 1 << 11; // sending a window update after EPOLLOUT
const F_PEER_CLOSED = 1 << 9; // EPOLLRDHUP/EPOLLHUP seen: the socket stays readable until the peek finds the end
/** Bound on RSTs waiting for guest buffers (beyond it they are given up, as before). */
const MAX_PENDING_RST = 256;
const F_RST_PENDING = 1 << 12; // the socket is gone; the slot waits only for its RST to reach the guest (no guest buffers when it was due)

/** Events counted by the TCP translator (ferry_tcp_events_total{event}). */
const EVENT_HELP = 'TCP translation events, by kind';
export const TcpEvent = {
  ConnectFailed: defineCounter('ferry_tcp_events_total', EVENT_HELP, { event: 'connect_failed' }),
  RstToGuest: defineCounter('ferry_tcp_events_total', EVENT_HELP, { event: 'rst_to_guest' }),
  RstFromGuest: defineCounter('ferry_tcp_events_total', EVENT_HELP, { event: 'rst_from_guest' }),
  TableFull: defineCounter('ferry_tcp_events_total', EVENT_HELP, { event: 'table_full' }),
  BadChecksum: defineCounter('ferry_tcp_events_total', EVENT_HELP, { event: 'bad_checksum' }),
  Retransmit: defineCounter('ferry_tcp_events_total', EVENT_HELP, { event: 'retransmit_timeout' }),
  FastRetransmit: defineCounter('ferry_tcp_events_total', EVENT_HELP, { event: 'fast_retransmit' }),
  PartialSend: defineCounter('ferry_tcp_events_total', EVENT_HELP, { event: 'partial_send' }),
  OutOfOrder: defineCounter('ferry_tcp_events_total', EVENT_HELP, { event: 'out_of_order' }),
  RxBlocked: defineCounter('ferry_tcp_events_total', EVENT_HELP, { event: 'rx_blocked' }),
  Timeout: defineCounter('ferry_tcp_events_total', EVENT_HELP, { event: 'timeout' }),
  SocketError: defineCounter('ferry_tcp_events_total', EVENT_HELP, { event: 'socket_error' }),
  IcmpToGuest: defineCounter('ferry_tcp_events_total', EVENT_HELP, { event: 'icmp_unreachable_to_guest' }),
  /** A flow ended from outside (FlowTable.closeFlow), reset both ways. */
  ClosedFromOutside: defineCounter('ferry_tcp_events_total', EVENT_HELP, { event: 'closed_from_outside' }),
} as const;
const BYTES_HELP = 'TCP payload bytes moved, by direction';
const BYTES_FROM_GUEST = defineCounter('ferry_tcp_bytes_total', BYTES_HELP, { direction: 'from_guest' });
const BYTES_TO_GUEST = defineCounter('ferry_tcp_bytes_total', BYTES_HELP, { direction: 'to_guest' });

/** Sequence number comparison: (a - b) as a signed 32-bit number. */
function seqDiff(a: number, b: number): number {
  return (a - b) | 0;
}

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
  private readonly sockets: TcpSockets;
  private readonly usePeekOffset: boolean;

  // ---- per-flow TCP state, indexed by flow id ----
  /** Oldest sequence number sent to the guest and not yet ACKed. */
  private readonly sndUna: Uint32Array;
  /** Next sequence number to send to the guest. */
  private readonly sndNxt: Uint32Array;
  /** Highest sequence number sent so far (sndNxt before a rewind). */
  private readonly sndMax: Uint32Array;
  /** sndMax when we last rewound: duplicate ACKs before it is ACKed are echoes of the old flight. */
  private readonly recover: Uint32Array;
  /** Sequence number of our FIN (valid with F_EVER_FIN). */
  private readonly finSeq: Uint32Array;
  /** Next sequence number expected from the guest (what we ACK). */
  private readonly rcvNxt: Uint32Array;
  /** The guest's receive window in bytes (scaled). */
  private readonly sndWnd: Float64Array;
  private readonly guestWscale: Uint8Array;
  /** Shift applied to the window we advertise (0 when scaling was not negotiated). */
  private readonly ourWscale: Uint8Array;
  /** Largest payload per segment to the guest. */
  private readonly mss: Uint32Array;
  private readonly flag: Uint16Array;
  /** epoll events currently watched for the flow's socket. */
  private readonly events: Int32Array;
  private readonly retries: Uint8Array;
  private readonly dupAcks: Uint8Array;
  private readonly rto: Float64Array;
  /** Last time anything happened on the flow. */
  private readonly activity: Float64Array;
  /** SO_SNDBUF of the socket, refreshed on window computations. */
  private readonly sndbuf: Int32Array;

  // ---- reusable scratch ----
  private readonly tcp = new TcpView();
  private readonly options = new TcpOptions();
  private readonly iov: IoVecList;
  private readonly discardIov: IoVecList;
  /** Backing for MSG_TRUNC discards (never written by the kernel) and the no-SO_PEEK_OFF prefix. */
  private readonly discard = new Uint8Array(PEEK_PREFIX_LIMIT);
  private readonly headerScratch = new Uint8Array(128);
  private readonly srcAddr = new Uint8Array(16);
  private readonly dstAddr = new Uint8Array(16);
  /** Connect destinations: one scratch, viewed as a sockaddr_in or a whole sockaddr_in6. */
  private readonly sockaddr6 = new Uint8Array(SOCKADDR_IN6_LENGTH);
  private readonly sockaddr4 = this.sockaddr6.subarray(0, SOCKADDR_IN_LENGTH);
  private readonly bindSockaddr4 = new Uint8Array(16);
  private readonly bindSockaddr6 = new Uint8Array(28);
  private readonly linger = new Uint8Array(8);
  private readonly tcpInfo = new Uint8Array(256);
  private readonly meta = new Int32Array(3);
  private readonly dueHandler = (id: number): void => {
    if ((this.flag[id] & F_RST_PENDING) === 0) this.onDeadline(id);
  };
  /**
   * Flows reset while the guest had no RX buffers for the RST: their slot
   * (addresses, ports, sequence numbers) is kept, without a socket, until
   * the RST goes out (retried on onWritable, every timer tick and when the
   * guest sends on the flow). Bounded: beyond it the RST is given up.
   */
  private readonly pendingRst: number[] = [];
  /** Frames committed by this module since the last flush. */
  private pending = 0;
  /** Flow whose burst of segments sendData is building (-1: none), and the window computed for it (-1: not yet). */
  private batchFlow = -1;
  private batchWindow = -1;
  /** The time onTimer() runs for. */
  private timerNow = 0;
  /** A reservation is open on the port. */
  private open = false;
  /** Flows with F_RX_BLOCKED. */
  private rxBlocked = 0;
  /**
   * The guest's address as last seen in its segments (passt's addr_seen),
   * initially the configured one: inbound connections go there, so a guest
   * with another address (SLAAC next to the host's, a static one) still
   * gets -t connections once it has sent something. IPv6 link-local sources
   * are not taken (inbound connections are for a global address).
   */
  private readonly seen4 = new Uint8Array(4);
  private readonly seen6 = new Uint8Array(16);
  /** 1 at index p when TCP port p is one of ferry's own listeners (config.ownTcpPorts). */
  private readonly ownPorts = new Uint8Array(65536);

  constructor(private readonly ctx: StackContext, options: TcpServiceOptions = {}) {
    // eslint-disable-next-line @typescript-eslint/no-require-imports -- the addon loads only without injected sockets (unit tests run without it)
    this.sockets = options.sockets ?? (require('../../sys/native') as { native: Native }).native;
    this.flows = options.flows ?? new FlowTable(Math.max(1, ctx.config.maxFlows), ctx.counters);
    this.flows.registerCloser(FlowProtocol.Tcp, (id) => this.closeFromOutside(id));
    for (const port of ctx.config.ownTcpPorts ?? []) if (port > 0 && port < 65536) this.ownPorts[port] = 1;
    this.usePeekOffset = options.usePeekOffset ?? true;
    const n = this.flows.capacity;
    this.sndUna = new Uint32Array(n);
    this.sndNxt = new Uint32Array(n);
    this.sndMax = new Uint32Array(n);
    this.finSeq = new Uint32Array(n);
    this.recover = new Uint32Array(n);
    this.rcvNxt = new Uint32Array(n);
    this.sndWnd = new Float64Array(n);
    this.guestWscale = new Uint8Array(n);
    this.ourWscale = new Uint8Array(n);
    this.mss = new Uint32Array(n);
    this.flag = new Uint16Array(n);
    this.events = new Int32Array(n);
    this.retries = new Uint8Array(n);
    this.dupAcks = new Uint8Array(n);
    this.rto = new Float64Array(n);
    this.activity = new Float64Array(n);
    this.sndbuf = new Int32Array(n);
    this.iov = { buffers: new Array<Uint8Array>(IOV_ENTRIES), offsets: new Float64Array(IOV_ENTRIES), lengths: new Float64Array(IOV_ENTRIES), count: 0 };
    this.discardIov = { buffers: [this.discard], offsets: new Float64Array(1), lengths: new Float64Array(1), count: 1 };
    setHostU32(this.linger, 0, 1); // struct linger { int l_onoff = 1; int l_linger = 0; }
    if (ctx.config.ipv4 !== null) this.seen4.set(ctx.config.ipv4.address.subarray(0, 4));
    if (ctx.config.ipv6 !== null) this.seen6.set(ctx.config.ipv6.address.subarray(0, 16));
    // Resume flows blocked on guest RX buffers; keep any earlier listener.
    const previous = ctx.port.onWritable;
    ctx.port.onWritable = previous === null ? () => this.onWritable() : () => {
      previous();
      this.onWritable();
    };
  }

  // ======================================================================
  // Entry points
  // ======================================================================

  /** TransportHandler: one TCP segment from the guest. */
  handle(ctx: StackContext, frame: RxFrame, packet: IpPacket): void {
    void ctx;
    try {
      this.handleSegment(frame, packet);
    } finally {
      this.cancelOpen();
      this.flush();
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
      this.socketEvent(id, events);
    } catch (e) {
      countDrop(this.ctx.counters, DropReason.InternalError, () => `tcp: ${String(e instanceof Error ? e.stack ?? e.message : e)}`);
      this.cancelOpen();
      if (this.flows.isLive(id, FlowProtocol.Tcp)) this.abort(id, true, true);
    } finally {
      this.cancelOpen();
      this.flush();
    }
  }

  /** Timers: retransmissions, SYN/FIN/idle timeouts. Call every STACK_TIMER_INTERVAL_MS or sooner. */
  onTimer(now = this.ctx.clock.now()): void {
    this.timerNow = now;
    try {
      if (this.pendingRst.length > 0) this.retryPendingRst();
      this.flows.forEachDue(now, FlowProtocol.Tcp, this.dueHandler);
    } finally {
      this.cancelOpen();
      this.flush();
    }
    // A flow blocked on guest RX buffers has no timer of its own (nothing in
    // flight) and, with edge-triggered sockets, no socket event to come: if
    // the port's onWritable never fires (another reservation found buffers
    // before the guest's kick arrived, which a port may take as the end of
    // the starvation), the flow would stall for good. Retry on every tick.
    if (this.rxBlocked > 0) this.onWritable();
  }

  /**
   * End a flow from outside (FlowTable.closeFlow: the control API, eviction)
   * through the state machine: an RST to the guest (queued with the other
   * pending resets when it has no RX buffers), an RST to the peer (SO_LINGER
   * {1, 0} and close), the flow freed. A flow already reset and waiting for
   * its RST to reach the guest is left to that queue.
   */
  private closeFromOutside(id: number): void {
    if (!this.flows.isLive(id, FlowProtocol.Tcp) || (this.flag[id] & F_RST_PENDING) !== 0) return;
    this.ctx.counters.add(TcpEvent.ClosedFromOutside);
    try {
      this.abort(id, true, true);
    } finally {
      this.cancelOpen();
      this.flush();
    }
  }

  /** Reset every connection (RST both ways), close the sockets and the listeners given to adoptListeners. */
  close(): void {
    for (const listeners of this.adopted.splice(0)) listeners.close();
    for (let id = 0; id < this.flows.capacity; id++) {
      if (this.flows.isLive(id, FlowProtocol.Tcp)) this.abort(id, true, true);
    }
    this.flush();
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
    if (!this.flows.isLive(id, FlowProtocol.Tcp) || this.flows.fd[id] < 0) return null;
    const info = this.tcpInfo;
    let length: number;
    try {
      length = this.sockets.getsockoptBytes(this.flows.fd[id], IPPROTO_TCP, TCP_INFO, info);
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
      inFlightToGuest: seqDiff(this.sndNxt[id], this.sndUna[id]),
      guestWindow: this.sndWnd[id],
    };
  }

  private queuedBytes(id: number): number {
    try {
      return this.sockets.ioctlInt(this.flows.fd[id], SIOCOUTQ);
    } catch {
      return -1;
    }
  }

  /** The addon calls in use (shared with tcp-listen.ts). */
  get socketCalls(): TcpSockets {
    return this.sockets;
  }

  /** TCP flows in use. */
  get flowCount(): number {
    return this.flows.countOf(FlowProtocol.Tcp);
  }

  /**
   * An inbound connection accepted on a forwarded port (tcp-listen.ts):
   * socket `fd` from peer `peer` (4 or 16 address bytes) port `peerPort`, to
   * be delivered to the guest's port `guestPort`. Sends a SYN to the guest.
   * Returns true when the flow was created; otherwise the socket was closed
   * with a reset (table full, no address to show the guest).
   */
  acceptInbound(fd: number, family: 4 | 6, peer: Uint8Array, peerPort: number, guestPort: number): boolean {
    const ctx = this.ctx;
    const now = ctx.clock.now();
    const cfg = family === 4 ? ctx.config.ipv4 : ctx.config.ipv6;
    const remote = cfg === null ? null : this.guestVisibleSource(family, peer);
    if (cfg === null || remote === null) {
      this.closeWithReset(fd);
      return false;
    }
    const guest = family === 4 ? this.seen4 : this.seen6;
    let id = this.flows.lookup(FlowProtocol.Tcp, family, guest, 0, guestPort, remote, 0, peerPort);
    if (id !== NO_FLOW) {
      // The same 4-tuple is still in use: the old flow is stale.
      this.abort(id, true, true);
    }
    id = this.flows.allocate(FlowProtocol.Tcp, family, guest, 0, guestPort, remote, 0, peerPort, TcpState.SynSent, now);
    if (id === NO_FLOW) {
      ctx.counters.add(TcpEvent.TableFull);
      this.closeWithReset(fd);
      return false;
    }
    this.initFlow(id, now);
    this.flows.setFd(id, fd);
    const isn = randomIsn();
    this.sndUna[id] = isn;
    this.sndNxt[id] = (isn + 1) >>> 0;
    this.sndMax[id] = this.sndNxt[id];
    this.mss[id] = this.segmentLimit(family);
    // Errors and resets before the handshake completes are still reported (EPOLLERR/HUP need no bits).
    this.watch(id, 0);
    this.sendSyn(id, false);
    this.flows.deadline[id] = now + this.rto[id];
    this.flush();
    return true;
  }

  // ======================================================================
  // Segments from the guest
  // ======================================================================

  private handleSegment(frame: RxFrame, packet: IpPacket): void {
    const ctx = this.ctx;
    const segments = frame.segments;
    const tcp = this.tcp.reset(frame.bytes, packet.l4Offset, packet.l4Length);
    const error = tcp.validate(null);
    if (error !== TcpError.Ok || segments === null) {
      countDrop(ctx.counters, DropReason.TcpMalformed, () => `TCP ${TcpError[error]}`);
      return;
    }
    const l4Position = packet.l4Offset - frame.base;
    if (!frame.checksumPartial && finishChecksum(fastSumSegments(segments, l4Position, packet.l4Length, packet.pseudoSum(frame.bytes))) !== 0) {
      ctx.counters.add(TcpEvent.BadChecksum);
      countDrop(ctx.counters, DropReason.TcpMalformed, () => 'TCP bad checksum');
      return;
    }
    const bytes = frame.bytes;
    const family = packet.family;
    const src = packet.srcOffset;
    const dst = packet.dstOffset;
    const flags = tcp.flags;
    this.noteGuestAddress(family, bytes, src);
    const id = this.flows.lookup(FlowProtocol.Tcp, family, bytes, src, tcp.srcPort, bytes, dst, tcp.dstPort);
    if (id === NO_FLOW) {
      if ((flags & (TcpFlag.Syn | TcpFlag.Ack | TcpFlag.Rst | TcpFlag.Fin)) === TcpFlag.Syn) {
        this.openFromGuest(packet, bytes);
      } else if ((flags & TcpFlag.Rst) === 0) {
        this.resetUnknown(packet, bytes);
      }
      return;
    }
    if ((this.flag[id] & F_RST_PENDING) !== 0) {
      // The flow was reset and the guest has not heard: it has buffers now, perhaps.
      this.retryPendingRst();
      return;
    }
    this.activity[id] = ctx.clock.now();
    switch (this.flows.state[id] as TcpState) {
      case TcpState.Connecting:
        if ((flags & TcpFlag.Rst) !== 0) this.abort(id, false, true);
        // A retransmitted SYN: connect() is still in progress.
        return;
      case TcpState.SynAckSent:
        this.segmentInSynAckSent(id, flags, segments, l4Position);
        return;
      case TcpState.SynSent:
        this.segmentInSynSent(id, flags);
        return;
      default:
        this.segmentEstablished(id, flags, segments, l4Position);
    }
  }

  /** Remember the guest's source address (not unspecified, not IPv6 link-local or multicast) for inbound connections. */
  private noteGuestAddress(family: 4 | 6, bytes: Uint8Array, src: number): void {
    if (family === 4) {
      if ((bytes[src] | bytes[src + 1] | bytes[src + 2] | bytes[src + 3]) === 0 || equalAt(bytes, src, this.seen4, 4)) return;
      for (let i = 0; i < 4; i++) this.seen4[i] = bytes[src + i];
      return;
    }
    if (equalAt(bytes, src, this.seen6, 16)) return;
    if ((bytes[src] === 0xfe && (bytes[src + 1] & 0xc0) === 0x80) || isGroupOrUnspecified(6, bytes, src)) return;
    for (let i = 0; i < 16; i++) this.seen6[i] = bytes[src + i];
  }

  /** A guest SYN for a new connection: open the host socket and start connecting. */
  private openFromGuest(packet: IpPacket, bytes: Uint8Array): void {
    const ctx = this.ctx;
    const tcp = this.tcp;
    const family = packet.family;
    const dst = packet.dstOffset;
    const now = ctx.clock.now();
    if (tcp.dstPort === 0 || tcp.srcPort === 0 || isMulticastOrBroadcast(family, bytes, dst)) {
      countDrop(ctx.counters, DropReason.TcpMalformed, () => 'TCP SYN to port 0 or a group address');
      return;
    }
    const sockaddr = this.connectSockaddr(packet, bytes, tcp.dstPort);
    if (sockaddr === null) {
      this.resetUnknown(packet, bytes);
      return;
    }
    if (this.isOwnListener(sockaddr)) {
      countDrop(ctx.counters, DropReason.TcpToOwnPort);
      rateLimited('info', 'tcp own port', () => `tcp: guest connection to ferry's own port ${(sockaddr[2] << 8) | sockaddr[3]} refused`);
      this.resetUnknown(packet, bytes);
      return;
    }
    const id = this.flows.allocate(FlowProtocol.Tcp, family, bytes, packet.srcOffset, tcp.srcPort, bytes, dst, tcp.dstPort, TcpState.Connecting, now);
    if (id === NO_FLOW) {
      ctx.counters.add(TcpEvent.TableFull);
      rateLimited('warn', 'tcp table full', () => `tcp: flow table full (--max-flows ${this.flows.capacity}): connection refused`);
      this.resetUnknown(packet, bytes);
      return;
    }
    this.initFlow(id, now);
    this.rcvNxt[id] = (tcp.seq + 1) >>> 0;
    this.takeSynOptions(id, family);
    this.sndWnd[id] = tcp.window; // never scaled in a SYN
    const isn = randomIsn();
    this.sndUna[id] = isn;
    this.sndNxt[id] = isn;
    this.sndMax[id] = isn;
    let fd: number;
    try {
      fd = this.sockets.socket(family === 4 ? AF_INET : AF_INET6, SOCK_STREAM, 0);
    } catch (e) {
      rateLimited('warn', 'tcp socket', () => `tcp: socket() failed: ${errorCode(e)}`);
      ctx.counters.add(TcpEvent.ConnectFailed);
      this.abort(id, true, false);
      return;
    }
    this.flows.setFd(id, fd);
    let connected: number;
    try {
      const loopback = sockaddr === this.sockaddr4 ? sockaddr[4] === 127 : isIpv6LoopbackAt(sockaddr, 8);
      if (!loopback) {
        if (ctx.config.interfaceName !== null) this.bindToDevice(fd, ctx.config.interfaceName);
        this.bindToGuestAddress(fd, packet, bytes);
      }
      connected = this.sockets.connect(fd, sockaddr);
    } catch (e) {
      log.debug(`tcp: connect failed: ${errorCode(e)}`);
      this.connectFailed(id, typeof e === 'object' && e !== null && 'errno' in e ? Number((e as { errno: unknown }).errno) : 0);
      return;
    }
    this.flows.deadline[id] = now + SYN_TIMEOUT_MS;
    if (connected === 0) {
      this.watch(id, 0);
      this.connectDone(id);
    } else {
      this.watch(id, EPOLLOUT);
    }
  }

  /** Reset per-flow TCP state for a newly allocated flow. */
  private initFlow(id: number, now: number): void {
    this.flag[id] = 0;
    this.events[id] = 0;
    this.retries[id] = 0;
    this.dupAcks[id] = 0;
    this.rto[id] = RTO_INITIAL_MS;
    this.activity[id] = now;
    this.guestWscale[id] = 0;
    this.ourWscale[id] = 0;
    this.sndbuf[id] = 0;
    this.sndWnd[id] = 0;
    this.mss[id] = DEFAULT_MSS;
  }

  /** Window scale and MSS from the guest's SYN or SYN-ACK (this.tcp). */
  private takeSynOptions(id: number, family: 4 | 6): void {
    const options = this.options;
    if (this.tcp.parseOptions(options) !== TcpError.Ok) options.clear();
    if (options.windowScale >= 0) {
      this.guestWscale[id] = Math.min(14, options.windowScale);
      this.ourWscale[id] = OUR_WINDOW_SCALE;
    } else {
      this.guestWscale[id] = 0;
      this.ourWscale[id] = 0;
    }
    const guestMss = options.mss > 0 ? options.mss : DEFAULT_MSS;
    this.mss[id] = Math.max(1, Math.min(guestMss, this.segmentLimit(family)));
  }

  /** The largest payload that fits one frame to the guest. */
  private segmentLimit(family: 4 | 6): number {
    const ipHeader = family === 4 ? IPV4_HEADER_LENGTH : IPV6_HEADER_LENGTH;
    const byMtu = this.ctx.config.mtu - ipHeader - TCP_HEADER_LENGTH;
    const byFrame = this.ctx.port.maxFrameLength - ETHERNET_HEADER_LENGTH - ipHeader - TCP_HEADER_LENGTH;
    // IPv4's total length and IPv6's payload length are 16-bit fields.
    const byField = family === 4 ? 65535 - ipHeader - TCP_HEADER_LENGTH : 65535 - TCP_HEADER_LENGTH;
    return Math.max(1, Math.min(byMtu, byFrame, byField));
  }

  /** SynAckSent: the guest's ACK completes the handshake (it may carry data). */
  private segmentInSynAckSent(id: number, flags: number, segments: SegmentList, l4Position: number): void {
    const tcp = this.tcp;
    if ((flags & TcpFlag.Rst) !== 0) {
      this.abort(id, false, true);
      return;
    }
    if ((flags & TcpFlag.Syn) !== 0) {
      // The guest did not see our SYN-ACK: send it again.
      this.sendSyn(id, true);
      return;
    }
    if ((flags & TcpFlag.Ack) === 0 || tcp.ack !== this.sndNxt[id]) {
      if ((flags & TcpFlag.Ack) !== 0) this.sendReset(id, tcp.ack);
      return;
    }
    this.sndUna[id] = this.sndNxt[id];
    this.establish(id);
    this.segmentEstablished(id, flags, segments, l4Position);
  }

  /** SynSent (inbound): the guest's SYN-ACK, or its RST when nothing listens. */
  private segmentInSynSent(id: number, flags: number): void {
    const tcp = this.tcp;
    if ((flags & TcpFlag.Rst) !== 0) {
      this.abort(id, false, true);
      return;
    }
    if ((flags & (TcpFlag.Syn | TcpFlag.Ack)) !== (TcpFlag.Syn | TcpFlag.Ack) || tcp.ack !== this.sndNxt[id]) return;
    this.rcvNxt[id] = (tcp.seq + 1) >>> 0;
    this.takeSynOptions(id, this.flows.family[id] as 4 | 6);
    this.sndWnd[id] = tcp.window;
    this.sndUna[id] = this.sndNxt[id];
    this.establish(id);
    this.sendFlags(id, TcpFlag.Ack);
    this.sendData(id, false);
  }

  /** Both handshakes done: socket options, timers, readiness for data. */
  private establish(id: number): void {
    const fd = this.flows.fd[id];
    this.flows.setState(id, TcpState.Established);
    this.retries[id] = 0;
    this.rto[id] = RTO_INITIAL_MS;
    this.enlargeSendBuffer(fd);
    if (this.usePeekOffset) {
      try {
        this.sockets.setsockoptInt(fd, SOL_SOCKET, SO_PEEK_OFF, 0);
        this.flag[id] |= F_PEEK_OFF;
      } catch {
        // Old kernel: peek from the start and skip what the guest already has.
      }
    }
    this.refreshSndbuf(id);
    this.flag[id] |= F_READABLE; // data may have arrived before the handshake completed
    this.flows.deadline[id] = this.activity[id] + IDLE_TIMEOUT_MS;
    this.updateEvents(id);
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
  private enlargeSendBuffer(fd: number): void {
    try {
      this.sockets.setsockoptInt(fd, SOL_SOCKET, SO_SNDBUF, SEND_BUFFER_BYTES);
    } catch {
      // Autotuning stays in charge: slower, still correct.
    }
  }

  /** Established or closing: ACK processing, payload to the socket, FIN. */
  private segmentEstablished(id: number, flags: number, segments: SegmentList, l4Position: number): void {
    const tcp = this.tcp;
    if ((flags & TcpFlag.Rst) !== 0) {
      // Accept a reset anywhere near the expected sequence number (RFC 5961 would challenge; the guest is trusted that far).
      this.ctx.counters.add(TcpEvent.RstFromGuest);
      this.abort(id, false, true);
      return;
    }
    if ((flags & TcpFlag.Syn) !== 0) {
      // A new SYN on a live 4-tuple: challenge ACK (RFC 5961 4.2); the guest answers with RST if it lost the connection.
      this.sendFlags(id, TcpFlag.Ack);
      return;
    }
    if ((flags & TcpFlag.Ack) === 0) return;
    const dataLength = tcp.dataLength;
    const fin = (flags & TcpFlag.Fin) !== 0;
    this.processAck(id, tcp.ack, tcp.window, dataLength > 0 || fin);
    if (!this.flows.isLive(id, FlowProtocol.Tcp)) return;

    if (dataLength > 0 || fin || tcp.seq !== this.rcvNxt[id]) {
      // Zero-length segments before rcvNxt are keepalive probes: receivePayload ACKs them.
      this.receivePayload(id, tcp.seq, dataLength, fin, segments, l4Position + tcp.headerLength);
      if (!this.flows.isLive(id, FlowProtocol.Tcp)) return;
    }
    if (this.finished(id)) return;
    this.sendData(id, false);
  }

  /** The ACK and window fields of a guest segment. */
  private processAck(id: number, ack: number, rawWindow: number, carriesData: boolean): void {
    const window = rawWindow * (1 << this.guestWscale[id]);
    const una = this.sndUna[id];
    const acked = seqDiff(ack, una);
    const maxAckable = seqDiff(this.sndMax[id], una);
    if (acked < 0 || acked > maxAckable) {
      // Old or from the future: the window is not trusted either.
      return;
    }
    if (acked > 0) {
      let dataAcked = acked;
      if ((this.flag[id] & F_EVER_FIN) !== 0 && seqDiff(ack, this.finSeq[id]) > 0) {
        dataAcked--;
        this.flag[id] |= F_FIN_ACKED;
      }
      if (dataAcked > 0 && !this.discardAcked(id, dataAcked)) return;
      this.sndUna[id] = ack;
      if (seqDiff(ack, this.sndNxt[id]) > 0) {
        // ACK for data sent before a rewind: continue after it.
        this.sndNxt[id] = ack;
        if ((this.flag[id] & F_FIN_ACKED) !== 0) this.flag[id] |= F_FIN_SENT;
        this.setPeekOffset(id);
      }
      this.dupAcks[id] = 0;
      this.retries[id] = 0;
      this.rto[id] = RTO_INITIAL_MS;
      if ((this.flag[id] & F_RECOVERY) !== 0 && seqDiff(ack, this.recover[id]) >= 0) this.flag[id] &= ~F_RECOVERY;
      this.sndWnd[id] = window;
      this.armTimer(id);
      return;
    }
    // acked === 0
    if (!carriesData && window === this.sndWnd[id] && this.sndNxt[id] !== una && (this.flag[id] & F_RECOVERY) === 0) {
      if (++this.dupAcks[id] === DUP_ACK_THRESHOLD) {
        this.ctx.counters.add(TcpEvent.FastRetransmit);
        this.rewind(id);
      }
    }
    this.sndWnd[id] = window;
  }

  /** Drop `count` ACKed bytes from the socket's receive queue. Returns false when the flow was reset. */
  private discardAcked(id: number, count: number): boolean {
    const fd = this.flows.fd[id];
    const iov = this.discardIov;
    let left = count;
    // Bounded: each pass discards up to PEEK_PREFIX_LIMIT bytes of what the guest ACKed (at most a window).
    for (let pass = 0; left > 0 && pass < 64; pass++) {
      iov.lengths[0] = Math.min(left, this.discard.length);
      let n: number;
      try {
        n = this.sockets.recvmsg(fd, iov, MSG_TRUNC, null, this.meta);
      } catch (e) {
        this.socketFailed(id, e);
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
  private receivePayload(id: number, seq: number, dataLength: number, fin: boolean, segments: SegmentList, payloadPosition: number): void {
    const ctx = this.ctx;
    if ((this.flag[id] & F_GUEST_FIN) !== 0) {
      // Nothing more can come after the guest's FIN: a retransmission; ACK it.
      this.sendFlags(id, TcpFlag.Ack);
      return;
    }
    const skip = seqDiff(this.rcvNxt[id], seq);
    if (skip < 0) {
      // A gap: everything before it is missing. A duplicate ACK makes the guest retransmit.
      ctx.counters.add(TcpEvent.OutOfOrder);
      this.sendFlags(id, TcpFlag.Ack);
      return;
    }
    if (skip > dataLength || (skip === dataLength && !fin)) {
      // Entirely old (retransmission or keepalive probe): ACK what we have.
      this.sendFlags(id, TcpFlag.Ack);
      return;
    }
    const toSend = dataLength - skip;
    let sent = 0;
    if (toSend > 0) {
      sent = this.sendToSocket(id, segments, payloadPosition + skip, toSend);
      if (sent < 0) return; // flow reset
      this.rcvNxt[id] = (this.rcvNxt[id] + sent) >>> 0;
      this.flows.bytesFromGuest[id] += sent;
      ctx.counters.add(BYTES_FROM_GUEST, sent);
      if (sent < toSend) {
        ctx.counters.add(TcpEvent.PartialSend);
        this.flag[id] |= F_SND_BLOCKED;
        this.updateEvents(id);
      }
    }
    if (fin && sent === toSend) {
      try {
        this.sockets.shutdown(this.flows.fd[id], SHUT_WR);
      } catch (e) {
        this.socketFailed(id, e);
        return;
      }
      this.rcvNxt[id] = (this.rcvNxt[id] + 1) >>> 0;
      this.flag[id] |= F_GUEST_FIN;
      this.flows.setState(id, TcpState.Closing);
      this.armTimer(id);
    }
    this.sendFlags(id, TcpFlag.Ack);
  }

  /** sendmsg payload bytes [position, position+length) of the segments. Returns bytes accepted, or -1 when the flow was reset. */
  private sendToSocket(id: number, segments: SegmentList, position: number, length: number): number {
    const iov = this.iov;
    if (!this.iovFrom(segments, position, length, 0)) {
      countDrop(this.ctx.counters, DropReason.TcpMalformed, () => 'TCP payload spans too many segments');
      return 0;
    }
    let n: number;
    try {
      n = this.sockets.sendmsg(this.flows.fd[id], iov, null, 0);
    } catch (e) {
      this.socketFailed(id, e);
      return -1;
    }
    return n < 0 ? 0 : n;
  }

  /** Fill this.iov from entry `start` on with bytes [position, position+length) of list; false when it does not fit. */
  private iovFrom(list: SegmentList, position: number, length: number, start: number): boolean {
    const iov = this.iov;
    let count = start;
    let skip = position;
    let left = length;
    for (let i = 0; i < list.count && left > 0; i++) {
      const segLength = list.lengths[i];
      if (skip >= segLength) {
        skip -= segLength;
        continue;
      }
      if (count >= iov.offsets.length) return false;
      const n = Math.min(segLength - skip, left);
      iov.buffers[count] = list.buffers[i];
      iov.offsets[count] = list.offsets[i] + skip;
      iov.lengths[count] = n;
      count++;
      left -= n;
      skip = 0;
    }
    iov.count = count;
    return left === 0;
  }

  // ======================================================================
  // Socket events
  // ======================================================================

  private socketEvent(id: number, events: number): void {
    const state = this.flows.state[id] as TcpState;
    this.activity[id] = this.ctx.clock.now();
    if (state === TcpState.Connecting) {
      if ((events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) === 0) return;
      const error = this.soError(id);
      if (error !== 0) {
        log.debug(`tcp: connect failed: errno ${error}`);
        this.connectFailed(id, error);
        return;
      }
      this.connectDone(id);
      return;
    }
    if ((events & EPOLLERR) !== 0) {
      const error = this.soError(id);
      if (error !== 0) {
        this.ctx.counters.add(TcpEvent.SocketError);
        this.abort(id, true, false);
        return;
      }
    }
    if (state === TcpState.SynAckSent || state === TcpState.SynSent) {
      if ((events & (EPOLLERR | EPOLLHUP)) !== 0) {
        // The peer went away before the guest completed the handshake.
        this.abort(id, true, true);
      }
      return;
    }
    if ((events & EPOLLOUT) !== 0 && (this.flag[id] & F_SND_BLOCKED) !== 0) {
      // Room in the send buffer again: tell the guest (window update). The
      // kernel calls this writable: do not re-arm EPOLLOUT for this update
      // even if our estimate is still small, or edge re-arming would spin.
      this.flag[id] = (this.flag[id] & ~F_SND_BLOCKED) | F_NO_REBLOCK;
      this.updateEvents(id);
      this.sendFlags(id, TcpFlag.Ack);
      this.flag[id] &= ~F_NO_REBLOCK;
    }
    if ((events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP)) !== 0) {
      this.flag[id] |= F_READABLE;
      if ((events & (EPOLLRDHUP | EPOLLHUP)) !== 0) this.flag[id] |= F_PEER_CLOSED;
      this.sendData(id, false);
    }
    if (this.flows.isLive(id, FlowProtocol.Tcp)) this.finished(id);
  }

  /**
   * The host connect() failed with errno: an unreachable network or host
   * becomes the matching ICMP/ICMPv6 error quoting the guest's SYN (so the
   * guest reports "no route to host"); anything else (refused, timed out)
   * an RST.
   */
  private connectFailed(id: number, errno: number): void {
    this.ctx.counters.add(TcpEvent.ConnectFailed);
    const v6 = this.flows.family[id] === 6;
    let code = -1;
    if (errno === ENETUNREACH) code = v6 ? ICMP6_NO_ROUTE : ICMP4_NET_UNREACHABLE;
    else if (errno === EHOSTUNREACH) code = v6 ? ICMP6_ADDRESS_UNREACHABLE : ICMP4_HOST_UNREACHABLE;
    if (code >= 0 && this.sendUnreachable(id, code)) {
      this.ctx.counters.add(TcpEvent.IcmpToGuest);
      this.closeFlow(id, false);
      return;
    }
    this.abort(id, true, false);
  }

  /**
   * ICMP destination unreachable (IPv4 type 3, ICMPv6 type 1) with `code`
   * from the remote to the guest, quoting the guest's SYN: its IP header
   * and the first 8 bytes of TCP (ports and sequence number), which is all
   * RFC 792 asks for and all the guest needs to find its socket. Returns
   * false when the guest had no buffer for it.
   */
  private sendUnreachable(id: number, code: number): boolean {
    const ctx = this.ctx;
    const v6 = this.flows.family[id] === 6;
    const addressLength = v6 ? 16 : 4;
    const base = id * ADDRESS_SLOT;
    for (let i = 0; i < addressLength; i++) {
      this.srcAddr[i] = this.flows.remoteAddress[base + i];
      this.dstAddr[i] = this.flows.guestAddress[base + i];
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
      ? emitIpv6(out, icmp + 8, this.dstAddr, this.srcAddr, IpProtocol.Tcp, TCP_HEADER_LENGTH)
      : emitIpv4(out, icmp + 8, this.dstAddr, this.srcAddr, IpProtocol.Tcp, TCP_HEADER_LENGTH);
    setBe16(out, inner, this.flows.guestPort[id]);
    setBe16(out, inner + 2, this.flows.remotePort[id]);
    setBe32(out, inner + 4, (this.rcvNxt[id] - 1) >>> 0);
    const pseudo = v6 ? pseudoHeaderSumIpv6(this.srcAddr, 0, this.dstAddr, 0, IpProtocol.Icmpv6, icmpLength) : 0;
    setBe16(out, icmp + 2, finishChecksum(sumBytes(out, icmp, icmpLength, pseudo)));
    if (v6) ctx.finishIpv6(ctx.guestMac, this.srcAddr, this.dstAddr, IpProtocol.Icmpv6, icmpLength);
    else ctx.finishIpv4(ctx.guestMac, this.srcAddr, this.dstAddr, IpProtocol.Icmp, icmpLength);
    return true;
  }

  /** The host connect() completed: SYN-ACK to the guest. */
  private connectDone(id: number): void {
    this.flows.setState(id, TcpState.SynAckSent);
    this.sndNxt[id] = (this.sndUna[id] + 1) >>> 0;
    this.sndMax[id] = this.sndNxt[id];
    this.updateEvents(id);
    this.sendSyn(id, true);
    this.flows.deadline[id] = this.ctx.clock.now() + this.rto[id];
  }

  private soError(id: number): number {
    try {
      return this.sockets.getsockoptInt(this.flows.fd[id], SOL_SOCKET, SO_ERROR);
    } catch {
      return -1;
    }
  }

  /** A socket call failed: ECONNRESET and friends reset the guest's side. */
  private socketFailed(id: number, e: unknown): void {
    log.debug(`tcp: socket error ${errorCode(e)}`);
    this.ctx.counters.add(TcpEvent.SocketError);
    this.abort(id, true, false);
  }

  /** Guest RX buffers are available again: resume flows that were waiting. */
  private onWritable(): void {
    if (this.pendingRst.length > 0) {
      this.retryPendingRst();
      this.flush();
    }
    if (this.rxBlocked === 0) return;
    try {
      for (let id = 0; id < this.flows.capacity && this.rxBlocked > 0; id++) {
        if ((this.flag[id] & F_RX_BLOCKED) === 0) continue;
        this.flag[id] &= ~F_RX_BLOCKED;
        this.rxBlocked--;
        if (!this.flows.isLive(id, FlowProtocol.Tcp)) continue;
        this.updateEvents(id);
        this.sendData(id, false);
      }
    } finally {
      this.cancelOpen();
      this.flush();
    }
  }

  // ======================================================================
  // Data to the guest
  // ======================================================================

  /**
   * Send what the socket holds beyond sndNxt, as far as the guest's window
   * allows (a one-byte window when `probe`), then the FIN after EOF.
   */
  private sendData(id: number, probe: boolean): void {
    const state = this.flows.state[id] as TcpState;
    if (state !== TcpState.Established && state !== TcpState.Closing) return;
    const family = this.flows.family[id] as 4 | 6;
    const headerLength = ETHERNET_HEADER_LENGTH + (family === 4 ? IPV4_HEADER_LENGTH : IPV6_HEADER_LENGTH) + TCP_HEADER_LENGTH;
    const fd = this.flows.fd[id];
    this.batchFlow = id;
    this.batchWindow = -1;
    try {
      this.sendSegments(id, probe, headerLength, fd);
    } finally {
      this.batchFlow = -1;
    }
    this.updateEvents(id);
  }

  /** The loop of sendData: peek and commit segments while window, buffers and data last. */
  private sendSegments(id: number, probe: boolean, headerLength: number, fd: number): void {
    for (let count = 0; count < SEGMENTS_PER_CALL; count++) {
      const flag = this.flag[id];
      if ((flag & (F_FIN_SENT | F_RX_BLOCKED)) !== 0 || (flag & F_READABLE) === 0) break;
      const inFlight = seqDiff(this.sndNxt[id], this.sndUna[id]);
      let window = this.sndWnd[id] - inFlight;
      if (probe && window <= 0 && inFlight === 0) window = 1;
      if ((flag & F_PEEK_OFF) === 0) window = Math.min(window, PEEK_PREFIX_LIMIT - inFlight);
      // The FIN waits for window too: only a peek can tell that no data is left before it.
      if (window <= 0) break;
      const length = Math.min(this.mss[id], window);
      const list = this.reserve(headerLength + length);
      if (list === null || list.totalLength <= headerLength) {
        if (list !== null) this.cancelOpen();
        this.blockOnRx(id);
        break;
      }
      const room = Math.min(length, list.totalLength - headerLength);
      // Peek straight into the reservation after the headers; without
      // SO_PEEK_OFF the bytes the guest already has go to a scratch first.
      let prefix = 0;
      if ((flag & F_PEEK_OFF) === 0 && inFlight > 0) {
        prefix = inFlight;
        this.iov.buffers[0] = this.discard;
        this.iov.offsets[0] = 0;
        this.iov.lengths[0] = prefix;
      }
      if (!this.iovFrom(list, headerLength, room, prefix > 0 ? 1 : 0)) {
        this.cancelOpen();
        break;
      }
      let n: number;
      try {
        n = this.sockets.recvmsg(fd, this.iov, MSG_PEEK, null, this.meta);
      } catch (e) {
        this.cancelOpen();
        this.socketFailed(id, e);
        return;
      }
      if (n < 0 || (prefix > 0 && n <= prefix)) {
        // Nothing new: EAGAIN, or only what the guest already has (at EOF,
        // the FIN goes once everything is ACKed and the peek returns 0).
        this.cancelOpen();
        if ((this.flag[id] & F_PEER_CLOSED) === 0) this.flag[id] &= ~F_READABLE;
        break;
      }
      n -= prefix;
      if (n === 0) {
        // End of file: everything the peer sent is with the guest.
        this.cancelOpen();
        this.flag[id] |= F_SOCK_EOF;
        this.sendFin(id);
        break;
      }
      this.commitData(id, list, n);
      if (n < room && (this.flag[id] & (F_SOCK_EOF | F_PEER_CLOSED)) === 0) {
        // Drained for now: with EPOLLET, new data or the EOF brings a new event.
        this.flag[id] &= ~F_READABLE;
        break;
      }
    }
  }

  /** Headers for `n` payload bytes already in list after the headers; commit. */
  private commitData(id: number, list: SegmentList, n: number): void {
    const seq = this.sndNxt[id];
    this.writeSegment(id, list, TcpFlag.Ack | TcpFlag.Psh, seq, n, 0);
    this.sndNxt[id] = (seq + n) >>> 0;
    const fresh = seqDiff(this.sndNxt[id], this.sndMax[id]);
    if (fresh > 0) {
      this.sndMax[id] = this.sndNxt[id];
      this.flows.bytesToGuest[id] += fresh;
      this.ctx.counters.add(BYTES_TO_GUEST, fresh);
    }
    if (seq === this.sndUna[id]) this.flows.deadline[id] = this.ctx.clock.now() + this.rto[id];
  }

  /** Our FIN (after all data), once. */
  private sendFin(id: number): void {
    if ((this.flag[id] & F_FIN_SENT) !== 0) return;
    const seq = this.sndNxt[id];
    if (!this.sendFlags(id, TcpFlag.Fin | TcpFlag.Ack)) {
      this.blockOnRx(id);
      return;
    }
    this.flag[id] |= F_FIN_SENT | F_EVER_FIN;
    this.finSeq[id] = seq;
    this.sndNxt[id] = (seq + 1) >>> 0;
    if (seqDiff(this.sndNxt[id], this.sndMax[id]) > 0) this.sndMax[id] = this.sndNxt[id];
    this.flows.setState(id, TcpState.Closing);
    this.flows.deadline[id] = this.ctx.clock.now() + this.rto[id];
  }

  private blockOnRx(id: number): void {
    if ((this.flag[id] & F_RX_BLOCKED) !== 0) return;
    this.flag[id] |= F_RX_BLOCKED;
    this.rxBlocked++;
    this.ctx.counters.add(TcpEvent.RxBlocked);
    this.updateEvents(id);
  }

  /** Go back to the first unacknowledged byte (timeout or duplicate ACKs). */
  private rewind(id: number): void {
    this.sndNxt[id] = this.sndUna[id];
    this.dupAcks[id] = 0;
    this.recover[id] = this.sndMax[id];
    this.flag[id] |= F_READABLE | F_RECOVERY;
    if ((this.flag[id] & F_FIN_ACKED) === 0) this.flag[id] &= ~F_FIN_SENT;
    this.setPeekOffset(id);
    this.sendData(id, false);
  }

  /** Set SO_PEEK_OFF to the bytes between sndUna and sndNxt. */
  private setPeekOffset(id: number): void {
    if ((this.flag[id] & F_PEEK_OFF) === 0) return;
    let offset = seqDiff(this.sndNxt[id], this.sndUna[id]);
    if ((this.flag[id] & F_FIN_SENT) !== 0 && (this.flag[id] & F_EVER_FIN) !== 0 && seqDiff(this.sndNxt[id], this.finSeq[id]) > 0) offset--;
    try {
      this.sockets.setsockoptInt(this.flows.fd[id], SOL_SOCKET, SO_PEEK_OFF, Math.max(0, offset));
    } catch (e) {
      this.socketFailed(id, e);
    }
  }

  // ======================================================================
  // Frames to the guest
  // ======================================================================

  /**
   * Write Ethernet + IP + TCP headers for flow id into list (whose payload,
   * payloadLength bytes, is already after the headers), fill the checksum
   * over headers and payload in place and commit. optionKind: 0 none, 1 SYN
   * options (MSS and, when negotiated or offered, window scale).
   */
  private writeSegment(id: number, list: SegmentList, flags: number, seq: number, payloadLength: number, optionKind: number): void {
    const family = this.flows.family[id] as 4 | 6;
    const base = id * ADDRESS_SLOT;
    const addressLength = family === 4 ? 4 : 16;
    for (let i = 0; i < addressLength; i++) {
      this.srcAddr[i] = this.flows.remoteAddress[base + i];
      this.dstAddr[i] = this.flows.guestAddress[base + i];
    }
    let optionLength = 0;
    const offerScale = optionKind === 1 && (this.flows.state[id] === TcpState.SynSent || this.ourWscale[id] !== 0);
    if (optionKind === 1) optionLength = offerScale ? 8 : 4;
    let window: number;
    if ((flags & TcpFlag.Syn) !== 0) {
      window = Math.min(65535, this.freeSendSpace(id));
    } else if (this.batchFlow === id && this.batchWindow >= 0) {
      window = this.batchWindow; // one look at the send buffer per burst of segments
    } else {
      window = this.windowField(id);
      if (this.batchFlow === id) this.batchWindow = window;
    }
    this.emit(
      list, family, this.flows.remotePort[id], this.flows.guestPort[id], seq, this.rcvNxt[id], flags, window,
      optionLength, offerScale, this.segmentLimit(family), payloadLength,
    );
  }

  /**
   * Build the headers into the reservation (in place when its first segment
   * holds them, else via scratch), checksum, commit.
   */
  private emit(
    list: SegmentList, family: 4 | 6, srcPort: number, dstPort: number, seq: number, ack: number, flags: number, window: number,
    optionLength: number, offerScale: boolean, mss: number, payloadLength: number,
  ): void {
    const ipHeader = family === 4 ? IPV4_HEADER_LENGTH : IPV6_HEADER_LENGTH;
    const tcpHeader = TCP_HEADER_LENGTH + optionLength;
    const headerLength = ETHERNET_HEADER_LENGTH + ipHeader + tcpHeader;
    const inPlace = list.lengths[0] >= headerLength;
    const out = inPlace ? list.buffers[0] : this.headerScratch;
    const at = inPlace ? list.offsets[0] : 0;
    const l4Length = tcpHeader + payloadLength;
    let l4 = emitEthernet(out, at, this.ctx.guestMac, this.ctx.config.ourMac, family === 4 ? EtherType.Ipv4 : EtherType.Ipv6);
    l4 = family === 4
      ? emitIpv4(out, l4, this.srcAddr, this.dstAddr, IpProtocol.Tcp, l4Length)
      : emitIpv6(out, l4, this.srcAddr, this.dstAddr, IpProtocol.Tcp, l4Length);
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
    const pseudo = family === 4
      ? pseudoHeaderSumIpv4(this.srcAddr, 0, this.dstAddr, 0, IpProtocol.Tcp, l4Length)
      : pseudoHeaderSumIpv6(this.srcAddr, 0, this.dstAddr, 0, IpProtocol.Tcp, l4Length);
    // With checksum offload the segment carries a partial checksum (the folded
    // pseudo-header sum, NEEDS_CSUM: see context.ts): no per-byte sum in ferry.
    const offload = this.ctx.checksumOffload;
    if (offload) {
      setBe16(out, l4 + 16, foldSum(pseudo));
    } else {
      let sum = sumBytes(out, l4, tcpHeader, pseudo);
      if (payloadLength > 0) sum += fastSumSegments(list, headerLength, payloadLength);
      setBe16(out, l4 + 16, finishChecksum(sum));
    }
    if (!inPlace) list.copyIn(0, this.headerScratch, 0, headerLength);
    this.open = false;
    const partial = family === 4 ? TCP4_PARTIAL_CHECKSUM : TCP6_PARTIAL_CHECKSUM;
    this.ctx.port.commit(headerLength + payloadLength, offload ? partial : undefined);
    this.pending++;
  }

  /** A segment without payload for flow id. Returns false when the guest had no buffers. */
  private sendFlags(id: number, flags: number): boolean {
    const family = this.flows.family[id];
    const length = ETHERNET_HEADER_LENGTH + (family === 4 ? IPV4_HEADER_LENGTH : IPV6_HEADER_LENGTH) + TCP_HEADER_LENGTH;
    const list = this.reserve(length);
    if (list === null || list.totalLength < length) {
      if (list !== null) this.cancelOpen();
      countDrop(this.ctx.counters, DropReason.NoGuestBuffers);
      return false;
    }
    this.writeSegment(id, list, flags, this.sndNxt[id], 0, 0);
    return true;
  }

  /** SYN (inbound) or SYN-ACK (guest-initiated) with options; sequence number sndUna (our ISN). */
  private sendSyn(id: number, withAck: boolean): void {
    const family = this.flows.family[id];
    const length = ETHERNET_HEADER_LENGTH + (family === 4 ? IPV4_HEADER_LENGTH : IPV6_HEADER_LENGTH) + TCP_HEADER_LENGTH + 8;
    const list = this.reserve(length);
    if (list === null || list.totalLength < length) {
      // The timer sends it again.
      if (list !== null) this.cancelOpen();
      countDrop(this.ctx.counters, DropReason.NoGuestBuffers);
      return;
    }
    this.writeSegment(id, list, withAck ? TcpFlag.Syn | TcpFlag.Ack : TcpFlag.Syn, this.sndUna[id], 0, 1);
  }

  /** RST for flow id with sequence number seq (answer to an unacceptable ACK). */
  private sendReset(id: number, seq: number): void {
    const family = this.flows.family[id];
    const length = ETHERNET_HEADER_LENGTH + (family === 4 ? IPV4_HEADER_LENGTH : IPV6_HEADER_LENGTH) + TCP_HEADER_LENGTH;
    const list = this.reserve(length);
    if (list === null || list.totalLength < length) {
      if (list !== null) this.cancelOpen();
      return;
    }
    this.ctx.counters.add(TcpEvent.RstToGuest);
    this.writeSegment(id, list, TcpFlag.Rst, seq, 0, 0);
  }

  /**
   * RST for a guest segment that belongs to no flow (RFC 9293 3.10.7.1): with
   * its ACK number as our sequence number, else RST|ACK acknowledging it.
   */
  private resetUnknown(packet: IpPacket, bytes: Uint8Array): void {
    const tcp = this.tcp;
    const family = packet.family;
    const length = ETHERNET_HEADER_LENGTH + (family === 4 ? IPV4_HEADER_LENGTH : IPV6_HEADER_LENGTH) + TCP_HEADER_LENGTH;
    const addressLength = family === 4 ? 4 : 16;
    for (let i = 0; i < addressLength; i++) {
      this.srcAddr[i] = bytes[packet.dstOffset + i];
      this.dstAddr[i] = bytes[packet.srcOffset + i];
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
    const list = this.reserve(length);
    if (list === null || list.totalLength < length) {
      if (list !== null) this.cancelOpen();
      return;
    }
    this.ctx.counters.add(TcpEvent.RstToGuest);
    this.emit(list, family, tcp.dstPort, tcp.srcPort, seq, ack, outFlags, 0, 0, false, 0, 0);
  }

  /**
   * The window field we advertise: free send buffer space, scaled. When it
   * is small (below a segment or a quarter of the buffer), EPOLLOUT is
   * watched so the guest hears when the socket drains (a window update)
   * instead of waiting for its persist timer.
   */
  private windowField(id: number): number {
    const free = this.freeSendSpace(id);
    const flag = this.flag[id];
    const small = free < Math.min(this.mss[id], this.usableSendSpace(id) / 4);
    if (small && (flag & (F_SND_BLOCKED | F_NO_REBLOCK | F_GUEST_FIN)) === 0 && this.flows.state[id] >= TcpState.Established) {
      this.flag[id] |= F_SND_BLOCKED;
      this.updateEvents(id);
    }
    const shift = this.ourWscale[id];
    let field = Math.floor(free / (1 << shift));
    if (field === 0 && free > 0) field = 1;
    return Math.min(65535, field);
  }

  /** Bytes the socket's send buffer can still take (SO_SNDBUF minus SIOCOUTQ, with headroom for the kernel's overhead). */
  private freeSendSpace(id: number): number {
    const fd = this.flows.fd[id];
    if (fd < 0) return 0;
    if (this.sndbuf[id] === 0) this.refreshSndbuf(id);
    let queued: number;
    try {
      queued = this.sockets.ioctlInt(fd, SIOCOUTQ);
    } catch {
      return 0;
    }
    // Autotuning grows the buffer with the congestion window: look again.
    this.refreshSndbuf(id);
    return Math.max(0, this.usableSendSpace(id) - queued);
  }

  /**
   * Payload bytes the send buffer holds: SO_SNDBUF counts the kernel's
   * per-skb overhead too, small for large segments; keep 1/16 for it, so
   * the space the kernel calls writable (a third of the buffer free) is
   * always above the "small window" threshold in windowField.
   */
  private usableSendSpace(id: number): number {
    return this.sndbuf[id] - (this.sndbuf[id] >>> 4);
  }

  private refreshSndbuf(id: number): void {
    try {
      this.sndbuf[id] = this.sockets.getsockoptInt(this.flows.fd[id], SOL_SOCKET, SO_SNDBUF);
    } catch {
      this.sndbuf[id] = 65536;
    }
  }

  /** port.reserve, remembering that a frame is open (so an exception cannot leave it open). */
  private reserve(length: number): SegmentList | null {
    const list = this.ctx.port.reserve(length);
    this.open = list !== null;
    return list;
  }

  /** Give back the open reservation, if any. */
  private cancelOpen(): void {
    if (!this.open) return;
    this.open = false;
    this.ctx.port.cancel();
  }

  /** Publish frames committed by this module. */
  private flush(): void {
    // Frames built through the context (ICMP errors) are counted there.
    this.ctx.flush();
    if (this.pending === 0) return;
    this.pending = 0;
    this.ctx.port.flush();
  }

  // ======================================================================
  // Timers and teardown
  // ======================================================================

  /** Set the flow's deadline from its state: retransmission while data is unacknowledged, else FIN or idle timeout. */
  private armTimer(id: number): void {
    const now = this.ctx.clock.now();
    if (this.sndNxt[id] !== this.sndUna[id] || seqDiff(this.sndMax[id], this.sndUna[id]) > 0) {
      this.flows.deadline[id] = now + this.rto[id];
    } else if (this.flows.state[id] === TcpState.Closing) {
      this.flows.deadline[id] = now + FIN_TIMEOUT_MS;
    } else {
      this.flows.deadline[id] = this.activity[id] + IDLE_TIMEOUT_MS;
    }
  }

  private onDeadline(id: number): void {
    const now = this.timerNow;
    const state = this.flows.state[id] as TcpState;
    switch (state) {
      case TcpState.Connecting:
        this.ctx.counters.add(TcpEvent.Timeout);
        this.abort(id, true, true);
        return;
      case TcpState.SynAckSent:
      case TcpState.SynSent:
        if (!this.backoff(id)) return;
        this.sendSyn(id, state === TcpState.SynAckSent);
        this.flows.deadline[id] = now + this.rto[id];
        return;
      default:
    }
    if (seqDiff(this.sndMax[id], this.sndUna[id]) > 0) {
      if (!this.backoff(id)) return;
      this.ctx.counters.add(TcpEvent.Retransmit);
      this.rewind(id);
      this.flows.deadline[id] = now + this.rto[id];
      return;
    }
    if (state === TcpState.Closing) {
      if (now - this.activity[id] >= FIN_TIMEOUT_MS) {
        this.ctx.counters.add(TcpEvent.Timeout);
        this.abort(id, true, true);
        return;
      }
    } else if (now - this.activity[id] >= IDLE_TIMEOUT_MS) {
      this.ctx.counters.add(TcpEvent.Timeout);
      this.abort(id, true, true);
      return;
    }
    if (this.sndWnd[id] === 0 && (this.flag[id] & F_FIN_SENT) === 0) {
      // Zero window: probe with one byte (or the FIN) so the guest reports when it opens.
      this.flag[id] |= F_READABLE;
      this.sendData(id, true);
      this.rto[id] = Math.min(RTO_MAX_MS, this.rto[id] * 2);
      this.flows.deadline[id] = now + this.rto[id];
      return;
    }
    this.armTimer(id);
  }

  /** One more retry with a doubled timeout; false (and the flow reset) when retries are exhausted. */
  private backoff(id: number): boolean {
    if (++this.retries[id] > MAX_RETRIES) {
      this.ctx.counters.add(TcpEvent.Timeout);
      this.abort(id, true, true);
      return false;
    }
    this.rto[id] = Math.min(RTO_MAX_MS, this.rto[id] * 2);
    return true;
  }

  /** Close a flow whose FINs went both ways and were ACKed. Returns true when it was closed. */
  private finished(id: number): boolean {
    const flag = this.flag[id];
    if ((flag & F_RST_PENDING) !== 0) return false;
    if ((flag & F_GUEST_FIN) === 0 || (flag & F_FIN_ACKED) === 0) return false;
    this.closeFlow(id, false);
    return true;
  }

  /**
   * Tear a flow down: RST to the guest (rstToGuest), reset to the peer
   * (resetPeer: SO_LINGER 0 close) or a plain close.
   */
  private abort(id: number, rstToGuest: boolean, resetPeer: boolean): void {
    if (rstToGuest) {
      this.ctx.counters.add(TcpEvent.RstToGuest);
      if (!this.sendRst(id) && this.pendingRst.length < MAX_PENDING_RST) {
        // No guest buffer for the RST now: the guest must still learn of the
        // reset, so keep the slot until it goes out; the socket goes now.
        this.closeSocket(id, resetPeer);
        this.flag[id] = F_RST_PENDING;
        this.pendingRst.push(id);
        return;
      }
    }
    this.closeFlow(id, resetPeer);
  }

  /** RST|ACK to the guest for flow id (for the guest's SYN while connecting); returns false when it had no buffer. */
  private sendRst(id: number): boolean {
    const seq = (this.flows.state[id] as TcpState) === TcpState.Connecting ? 0 : this.sndNxt[id];
    return this.sendFlagsWithSeq(id, TcpFlag.Rst | TcpFlag.Ack, seq);
  }

  /** Send the RSTs that found no guest buffer before, in order; stops at the first that still finds none. */
  private retryPendingRst(): void {
    const pending = this.pendingRst;
    let sent = 0;
    while (sent < pending.length) {
      const id = pending[sent];
      if ((this.flag[id] & F_RST_PENDING) !== 0 && this.flows.isLive(id, FlowProtocol.Tcp)) {
        if (!this.sendRst(id)) break;
        this.closeFlow(id, false);
      }
      sent++;
    }
    if (sent > 0) pending.splice(0, sent);
  }

  private sendFlagsWithSeq(id: number, flags: number, seq: number): boolean {
    const family = this.flows.family[id];
    const length = ETHERNET_HEADER_LENGTH + (family === 4 ? IPV4_HEADER_LENGTH : IPV6_HEADER_LENGTH) + TCP_HEADER_LENGTH;
    const list = this.reserve(length);
    if (list === null || list.totalLength < length) {
      if (list !== null) this.cancelOpen();
      return false;
    }
    this.writeSegment(id, list, flags, seq, 0, 0);
    return true;
  }

  private closeFlow(id: number, resetPeer: boolean): void {
    this.closeSocket(id, resetPeer);
    this.flag[id] = 0;
    this.flows.release(id);
  }

  /** Close flow id's host socket (if it still has one) and forget its RX-blocked mark; the slot stays. */
  private closeSocket(id: number, resetPeer: boolean): void {
    const fd = this.flows.fd[id];
    if ((this.flag[id] & F_RX_BLOCKED) !== 0) this.rxBlocked--;
    this.flag[id] &= ~F_RX_BLOCKED;
    if (fd < 0) return;
    this.flows.setFd(id, -1);
    this.ctx.watcher?.unwatch(fd);
    this.events[id] = 0;
    if (resetPeer) this.closeWithReset(fd);
    else closeSocketQuietly(this.sockets, fd);
  }

  /** Close with SO_LINGER 0: the peer sees a reset instead of a FIN. */
  private closeWithReset(fd: number): void {
    try {
      this.sockets.setsockoptBytes(fd, SOL_SOCKET, SO_LINGER, this.linger);
    } catch {
      // Closing is all that is left either way.
    }
    closeSocketQuietly(this.sockets, fd);
  }

  // ======================================================================
  // Readiness and addresses
  // ======================================================================

  private watch(id: number, events: number): void {
    const watcher = this.ctx.watcher;
    if (watcher === null) return;
    watcher.watch(this.flows.fd[id], events, this);
    this.events[id] = events;
  }

  /** Watch what the flow can act on: connect completion, then (edge-triggered) new data, EOF and room to send. */
  private updateEvents(id: number): void {
    if (!this.flows.isLive(id, FlowProtocol.Tcp) || this.flows.fd[id] < 0) return;
    const flag = this.flag[id];
    const state = this.flows.state[id] as TcpState;
    let want = 0;
    if (state === TcpState.Connecting) {
      want = EPOLLOUT;
    } else if (state === TcpState.Established || state === TcpState.Closing) {
      want = (flag & F_SOCK_EOF) === 0 ? ESTABLISHED_EVENTS : EPOLLET;
      if ((flag & F_SND_BLOCKED) !== 0) want |= EPOLLOUT;
    }
    if (want === this.events[id]) return;
    this.events[id] = want;
    this.ctx.watcher?.modify(this.flows.fd[id], want);
  }

  /**
   * When the guest's source address is the host's own (passt's model), bind
   * the socket to it (port chosen by the kernel), so the connection leaves
   * from that address even on a host with several. A failure (the address
   * was overridden with -a and is not local) is ignored: the kernel picks.
   */
  private bindToGuestAddress(fd: number, packet: IpPacket, bytes: Uint8Array): void {
    const v6 = packet.family === 6;
    const cfg = v6 ? this.ctx.config.ipv6 : this.ctx.config.ipv4;
    const length = v6 ? 16 : 4;
    if (cfg === null || !equalAt(bytes, packet.srcOffset, cfg.address, length)) return;
    const sa = v6 ? this.bindSockaddr6 : this.bindSockaddr4;
    sa.fill(0);
    writeSockaddrFamily(sa, v6 ? AF_INET6 : AF_INET);
    sa.set(cfg.address.subarray(0, length), v6 ? 8 : 4);
    try {
      this.sockets.bind(fd, sa);
    } catch {
      // Not a local address: let the kernel choose the source.
    }
  }

  /** SO_BINDTODEVICE to the outbound interface; a failure is logged once and ignored. */
  private bindToDevice(fd: number, name: string): void {
    try {
      this.sockets.setsockoptBytes(fd, SOL_SOCKET, SO_BINDTODEVICE, Buffer.from(name + '\0', 'latin1'));
    } catch (e) {
      rateLimited('warn', 'tcp bind', () => `tcp: SO_BINDTODEVICE ${name}: ${errorCode(e)}`, 1, 600_000);
    }
  }

  /**
   * Where a guest connection to the packet's destination goes on the host,
   * by the forwarding rules shared with UDP (udp-address-map.ts
   * mapDestination: --dns-forward port 53 to the DNS host, the
   * --map-host-loopback address to 127.0.0.1 / ::1, --map-guest-addr to the
   * host's address), as a sockaddr view over reused scratch, or null when it
   * cannot be reached (IPv6 link-local other than the mapped gateway: no
   * scope to send it on; --dns-forward without a DNS host).
   */
  private connectSockaddr(packet: IpPacket, bytes: Uint8Array, port: number): Uint8Array | null {
    const length = mapDestination(this.ctx.config, packet.family, bytes, packet.dstOffset, port, this.sockaddr6);
    if (length === 0) return null;
    return length === SOCKADDR_IN_LENGTH ? this.sockaddr4 : this.sockaddr6;
  }

  /**
   * True when a connect destination is one of ferry's own listening sockets
   * (config.ownTcpPorts) on the host's loopback or the host's own address,
   * which the loopback and guest-address maps would otherwise hand the guest.
   */
  private isOwnListener(sockaddr: Uint8Array): boolean {
    if (this.ownPorts[(sockaddr[2] << 8) | sockaddr[3]] !== 1) return false;
    if (sockaddr === this.sockaddr4) {
      const ipv4 = this.ctx.config.ipv4;
      return sockaddr[4] === 127 || (ipv4 !== null && equalAt(sockaddr, 4, ipv4.address, 4));
    }
    const ipv6 = this.ctx.config.ipv6;
    return isIpv6LoopbackAt(sockaddr, 8) || (ipv6 !== null && equalAt(sockaddr, 8, ipv6.address, 16));
  }

  /**
   * The source address the guest sees for an inbound peer: the peer itself,
   * except the host's loopback (-> the --map-host-loopback address) and the
   * host's own address (-> --map-guest-addr, else the loopback mapping).
   * null when there is no mapping to show.
   *
   * Deliberately not udp-address-map's guestVisibleSource: that one also
   * maps an IPv4-mapped loopback peer (::ffff:127.x.y.z, which an IPv6 UDP
   * socket can see) to the loopback mapping, where this one shows such a
   * peer as it is; it also copies the peer into scratch where this returns
   * `peer` itself. TCP listeners are IPV6_V6ONLY, so no such peer reaches
   * acceptInbound today, but switching would change what acceptInbound
   * does with one: a decision to make on its own, not in a cleanup.
   */
  private guestVisibleSource(family: 4 | 6, peer: Uint8Array): Uint8Array | null {
    if (family === 4) {
      const ipv4 = this.ctx.config.ipv4!;
      if (peer[0] === 127) return ipv4.mapHostLoopback;
      if (equalAt(peer, 0, ipv4.address, 4)) return ipv4.mapGuestAddr ?? ipv4.mapHostLoopback;
      return peer;
    }
    const ipv6 = this.ctx.config.ipv6!;
    if (isIpv6LoopbackAt(peer, 0)) return ipv6.mapHostLoopback;
    if (equalAt(peer, 0, ipv6.address, 16)) return ipv6.mapGuestAddr ?? ipv6.mapHostLoopback;
    return peer;
  }
}

/** A fresh initial sequence number. */
function randomIsn(): number {
  return (Math.random() * 0x100000000) >>> 0;
}

function isMulticastOrBroadcast(family: number, bytes: Uint8Array, offset: number): boolean {
  if (family === 6) return bytes[offset] === 0xff;
  if (bytes[offset] >= 224) return true;
  return bytes[offset] === 0 && bytes[offset + 1] === 0 && bytes[offset + 2] === 0 && bytes[offset + 3] === 0;
}
