/**
 * TCP connection state: the states and per-flow flag bits, the events
 * counted, the tunables, and TcpConnections, the object holding every
 * flow's arrays and the translator's scratch that the other modules of
 * this folder take as their first argument. Also the few operations every
 * path needs: a reservation on the port, readiness registration, closing a
 * flow's socket and its slot.
 */
import type { IoVecList, Native } from '../../sys/native';
import { defineCounter } from '../../sys/counters';
import type { ReadyHandler, StackContext } from '../context';
import type { SegmentList } from '../../io/frame-io';
import { FlowProtocol, type FlowTable, defineFlowStates } from '../flow/flow-table';
import { ETHERNET_HEADER_LENGTH } from '../wire/ethernet';
import { IPV4_HEADER_LENGTH } from '../wire/ipv4';
import { IPV6_HEADER_LENGTH } from '../wire/ipv6';
import { TCP_HEADER_LENGTH, TcpOptions, TcpView } from '../wire/tcp';
import { SOCKADDR_IN6_LENGTH, SOCKADDR_IN_LENGTH } from '../../sys/sockaddr';
import { closeSocketQuietly } from '../../sys/close';
import { setHostU32 } from '../../sys/byte-order';
import { HeaderWindow } from '../l4/guest-frame';
import { newIoVecList } from '../l4/iovec';
import { SeenGuestAddress } from '../l4/host-socket';
import { EHOSTUNREACH, ENETUNREACH, EPOLLERR, EPOLLET, EPOLLHUP, EPOLLIN, EPOLLOUT, EPOLLRDHUP, IPPROTO_TCP, MSG_PEEK, MSG_TRUNC, SIOCOUTQ, SOCK_STREAM, SOL_SOCKET, SO_ERROR, SO_LINGER, SO_PEEK_OFF, SO_SNDBUF, TCP_INFO } from '../../sys/linux';
export { EHOSTUNREACH, ENETUNREACH, EPOLLERR, EPOLLET, EPOLLHUP, EPOLLIN, EPOLLOUT, EPOLLRDHUP, IPPROTO_TCP, MSG_PEEK, MSG_TRUNC, SIOCOUTQ, SOCK_STREAM, SOL_SOCKET, SO_ERROR, SO_LINGER, SO_PEEK_OFF, SO_SNDBUF, TCP_INFO };

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

// ---- Numbers of the wire and the socket API that sys/linux.ts does not hold ----
export const SHUT_WR = 1;
export const ICMP4_NET_UNREACHABLE = 0;
export const ICMP4_HOST_UNREACHABLE = 1;
export const ICMP6_NO_ROUTE = 0;
export const ICMP6_ADDRESS_UNREACHABLE = 3;
/** Established sockets are edge-triggered: unacknowledged data stays in the receive queue, so level-triggered EPOLLIN would fire forever. */
export const ESTABLISHED_EVENTS = EPOLLIN | EPOLLRDHUP | EPOLLET;

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
export const DEFAULT_MSS = 536;
/** Segments sent to the guest per call, so one flow cannot starve the others. */
export const SEGMENTS_PER_CALL = 128;
/** Without SO_PEEK_OFF, at most this many unacknowledged bytes (the prefix peeked again each time). */
export const PEEK_PREFIX_LIMIT = 1 << 20;
/** SO_SNDBUF asked for on established sockets (tcp_wmem's default maximum; the kernel doubles it and caps it at wmem_max). */
export const SEND_BUFFER_BYTES = 4 << 20;
/** Duplicate ACKs that trigger a fast retransmission. */
export const DUP_ACK_THRESHOLD = 3;

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
export const F_PEEK_OFF = 1 << 0; // SO_PEEK_OFF is set on the socket
export const F_GUEST_FIN = 1 << 1; // the guest's FIN was received and the socket shut down for writing
export const F_SOCK_EOF = 1 << 2; // the socket returned end of file
export const F_FIN_SENT = 1 << 3; // our FIN is in flight (sndNxt counts it)
export const F_FIN_ACKED = 1 << 4; // the guest ACKed our FIN
export const F_RX_BLOCKED = 1 << 5; // waiting for guest RX buffers
export const F_SND_BLOCKED = 1 << 6; // the socket refused guest data: watching EPOLLOUT for a window update
export const F_READABLE = 1 << 7; // the socket may hold data not yet sent to the guest (cleared when a peek finds nothing new)
export const F_EVER_FIN = 1 << 8; // finSeq is valid
export const F_RECOVERY = 1 << 10; // rewound: duplicate ACKs are not counted until `recover` is ACKed
export const F_NO_REBLOCK = 1 << 11; // sending a window update after EPOLLOUT
export const F_PEER_CLOSED = 1 << 9; // EPOLLRDHUP/EPOLLHUP seen: the socket stays readable until the peek finds the end
/** Bound on RSTs waiting for guest buffers (beyond it they are given up, as before). */
export const MAX_PENDING_RST = 256;
export const F_RST_PENDING = 1 << 12; // the socket is gone; the slot waits only for its RST to reach the guest (no guest buffers when it was due)

/** Events counted by the TCP translator (ferry_tcp_events_total{event}). */
export const EVENT_HELP = 'TCP translation events, by kind';
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
export const BYTES_HELP = 'TCP payload bytes moved, by direction';
export const BYTES_FROM_GUEST = defineCounter('ferry_tcp_bytes_total', BYTES_HELP, { direction: 'from_guest' });
export const BYTES_TO_GUEST = defineCounter('ferry_tcp_bytes_total', BYTES_HELP, { direction: 'to_guest' });

/** Sequence number comparison: (a - b) as a signed 32-bit number. */
export function seqDiff(a: number, b: number): number {
  return (a - b) | 0;
}

/**
 * Everything the TCP translator keeps: the per-flow arrays (indexed by flow
 * id, parallel to the FlowTable's), the scratch reused for every segment,
 * and the few counters of the translator as a whole. The modules of this
 * folder are plain functions over it: nothing is allocated per segment and
 * no closure is made per call.
 */
export class TcpConnections {
  readonly ctx: StackContext;
  /** Called back on readiness of every flow's socket (the TcpService). */
  readonly handler: ReadyHandler;
  readonly flows: FlowTable;
  readonly sockets: TcpSockets;
  readonly usePeekOffset: boolean;

  // ---- per-flow TCP state, indexed by flow id ----
  /** Oldest sequence number sent to the guest and not yet ACKed. */
  readonly sndUna: Uint32Array;
  /** Next sequence number to send to the guest. */
  readonly sndNxt: Uint32Array;
  /** Highest sequence number sent so far (sndNxt before a rewind). */
  readonly sndMax: Uint32Array;
  /** sndMax when we last rewound: duplicate ACKs before it is ACKed are echoes of the old flight. */
  readonly recover: Uint32Array;
  /** Sequence number of our FIN (valid with F_EVER_FIN). */
  readonly finSeq: Uint32Array;
  /** Next sequence number expected from the guest (what we ACK). */
  readonly rcvNxt: Uint32Array;
  /** The guest's receive window in bytes (scaled). */
  readonly sndWnd: Float64Array;
  readonly guestWscale: Uint8Array;
  /** Shift applied to the window we advertise (0 when scaling was not negotiated). */
  readonly ourWscale: Uint8Array;
  /** Largest payload per segment to the guest. */
  readonly mss: Uint32Array;
  readonly flag: Uint16Array;
  /** epoll events currently watched for the flow's socket. */
  readonly events: Int32Array;
  readonly retries: Uint8Array;
  readonly dupAcks: Uint8Array;
  readonly rto: Float64Array;
  /** Last time anything happened on the flow. */
  readonly activity: Float64Array;
  /** SO_SNDBUF of the socket, refreshed on window computations. */
  readonly sndbuf: Int32Array;

  // ---- reusable scratch ----
  readonly tcp = new TcpView();
  readonly options = new TcpOptions();
  readonly iov: IoVecList;
  readonly discardIov: IoVecList;
  /** Backing for MSG_TRUNC discards (never written by the kernel) and the no-SO_PEEK_OFF prefix. */
  readonly discard = new Uint8Array(PEEK_PREFIX_LIMIT);
  /** Where a segment's headers are written (in place or through scratch). */
  readonly headers = new HeaderWindow();
  /** Addresses of a segment built without a flow (resetUnknown) and of quoted SYNs. */
  readonly srcAddr = new Uint8Array(16);
  readonly dstAddr = new Uint8Array(16);
  /** Connect destinations: one scratch, viewed as a sockaddr_in or a whole sockaddr_in6. */
  readonly sockaddr6 = new Uint8Array(SOCKADDR_IN6_LENGTH);
  readonly sockaddr4 = this.sockaddr6.subarray(0, SOCKADDR_IN_LENGTH);
  readonly bindSockaddr4 = new Uint8Array(16);
  readonly bindSockaddr6 = new Uint8Array(28);
  readonly linger = new Uint8Array(8);
  readonly tcpInfo = new Uint8Array(256);
  readonly meta = new Int32Array(3);
  /**
   * Flows reset while the guest had no RX buffers for the RST: their slot
   * (addresses, ports, sequence numbers) is kept, without a socket, until
   * the RST goes out (retried on onWritable, every timer tick and when the
   * guest sends on the flow). Bounded: beyond it the RST is given up.
   */
  readonly pendingRst: number[] = [];
  /** Frames the translator committed since the last flush. */
  pending = 0;
  /** Flow whose burst of segments sendData is building (-1: none), and the window computed for it (-1: not yet). */
  batchFlow = -1;
  batchWindow = -1;
  /** The time onTimer() runs for. */
  timerNow = 0;
  /** A reservation is open on the port. */
  open = false;
  /** Flows with F_RX_BLOCKED. */
  rxBlocked = 0;
  /** Where inbound connections go: the guest's address as last seen in its segments. */
  readonly seen: SeenGuestAddress;
  /** 1 at index p when TCP port p is one of ferry's own listeners (config.ownTcpPorts). */
  readonly ownPorts = new Uint8Array(65536);

  constructor(ctx: StackContext, sockets: TcpSockets, flows: FlowTable, usePeekOffset: boolean, handler: ReadyHandler) {
    this.ctx = ctx;
    this.handler = handler;
    this.sockets = sockets;
    this.flows = flows;
    this.usePeekOffset = usePeekOffset;
    const n = flows.capacity;
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
    this.iov = newIoVecList();
    this.discardIov = { buffers: [this.discard], offsets: new Float64Array(1), lengths: new Float64Array(1), count: 1 };
    setHostU32(this.linger, 0, 1); // struct linger { int l_onoff = 1; int l_linger = 0; }
    this.seen = new SeenGuestAddress(ctx.config);
    for (const port of ctx.config.ownTcpPorts ?? []) if (port > 0 && port < 65536) this.ownPorts[port] = 1;
  }
}

/** A fresh initial sequence number. */
export function randomIsn(): number {
  return (Math.random() * 0x100000000) >>> 0;
}

/** Reset per-flow TCP state for a newly allocated flow. */
export function initFlow(c: TcpConnections, id: number, now: number): void {
  c.flag[id] = 0;
  c.events[id] = 0;
  c.retries[id] = 0;
  c.dupAcks[id] = 0;
  c.rto[id] = RTO_INITIAL_MS;
  c.activity[id] = now;
  c.guestWscale[id] = 0;
  c.ourWscale[id] = 0;
  c.sndbuf[id] = 0;
  c.sndWnd[id] = 0;
  c.mss[id] = DEFAULT_MSS;
}

/** The largest payload that fits one frame to the guest. */
export function segmentLimit(c: TcpConnections, family: 4 | 6): number {
  const ipHeader = family === 4 ? IPV4_HEADER_LENGTH : IPV6_HEADER_LENGTH;
  const byMtu = c.ctx.config.mtu - ipHeader - TCP_HEADER_LENGTH;
  const byFrame = c.ctx.port.maxFrameLength - ETHERNET_HEADER_LENGTH - ipHeader - TCP_HEADER_LENGTH;
  // IPv4's total length and IPv6's payload length are 16-bit fields.
  const byField = family === 4 ? 65535 - ipHeader - TCP_HEADER_LENGTH : 65535 - TCP_HEADER_LENGTH;
  return Math.max(1, Math.min(byMtu, byFrame, byField));
}

/** port.reserve, remembering that a frame is open (so an exception cannot leave it open). */
export function reserve(c: TcpConnections, length: number): SegmentList | null {
  const list = c.ctx.port.reserve(length);
  c.open = list !== null;
  return list;
}

/** Give back the open reservation, if any. */
export function cancelOpen(c: TcpConnections): void {
  if (!c.open) return;
  c.open = false;
  c.ctx.port.cancel();
}

/** Publish the frames the translator committed (and those built through the context). */
export function flush(c: TcpConnections): void {
  // Frames built through the context (ICMP errors) are counted there.
  c.ctx.flush();
  if (c.pending === 0) return;
  c.pending = 0;
  c.ctx.port.flush();
}

export function watch(c: TcpConnections, id: number, events: number): void {
  const watcher = c.ctx.watcher;
  if (watcher === null) return;
  watcher.watch(c.flows.fd[id], events, c.handler);
  c.events[id] = events;
}

/** Watch what the flow can act on: connect completion, then (edge-triggered) new data, EOF and room to send. */
export function updateEvents(c: TcpConnections, id: number): void {
  if (!c.flows.isLive(id, FlowProtocol.Tcp) || c.flows.fd[id] < 0) return;
  const flag = c.flag[id];
  const state = c.flows.state[id] as TcpState;
  let want = 0;
  if (state === TcpState.Connecting) {
    want = EPOLLOUT;
  } else if (state === TcpState.Established || state === TcpState.Closing) {
    want = (flag & F_SOCK_EOF) === 0 ? ESTABLISHED_EVENTS : EPOLLET;
    if ((flag & F_SND_BLOCKED) !== 0) want |= EPOLLOUT;
  }
  if (want === c.events[id]) return;
  c.events[id] = want;
  c.ctx.watcher?.modify(c.flows.fd[id], want);
}

/** Close a flow whose FINs went both ways and were ACKed. Returns true when it was closed. */
export function finished(c: TcpConnections, id: number): boolean {
  const flag = c.flag[id];
  if ((flag & F_RST_PENDING) !== 0) return false;
  if ((flag & F_GUEST_FIN) === 0 || (flag & F_FIN_ACKED) === 0) return false;
  closeFlow(c, id, false);
  return true;
}

export function closeFlow(c: TcpConnections, id: number, resetPeer: boolean): void {
  closeSocket(c, id, resetPeer);
  c.flag[id] = 0;
  c.flows.release(id);
}

/** Close flow id's host socket (if it still has one) and forget its RX-blocked mark; the slot stays. */
export function closeSocket(c: TcpConnections, id: number, resetPeer: boolean): void {
  const fd = c.flows.fd[id];
  if ((c.flag[id] & F_RX_BLOCKED) !== 0) c.rxBlocked--;
  c.flag[id] &= ~F_RX_BLOCKED;
  if (fd < 0) return;
  c.flows.setFd(id, -1);
  c.ctx.watcher?.unwatch(fd);
  c.events[id] = 0;
  if (resetPeer) closeWithReset(c, fd);
  else closeSocketQuietly(c.sockets, fd);
}

/** Close with SO_LINGER 0: the peer sees a reset instead of a FIN. */
export function closeWithReset(c: TcpConnections, fd: number): void {
  try {
    c.sockets.setsockoptBytes(fd, SOL_SOCKET, SO_LINGER, c.linger);
  } catch {
    // Closing is all that is left either way.
  }
  closeSocketQuietly(c.sockets, fd);
}

export function refreshSndbuf(c: TcpConnections, id: number): void {
  try {
    c.sndbuf[id] = c.sockets.getsockoptInt(c.flows.fd[id], SOL_SOCKET, SO_SNDBUF);
  } catch {
    c.sndbuf[id] = 65536;
  }
}

/**
 * Payload bytes the send buffer holds: SO_SNDBUF counts the kernel's
 * per-skb overhead too, small for large segments; keep 1/16 for it, so
 * the space the kernel calls writable (a third of the buffer free) is
 * always above the "small window" threshold in windowField.
 */
export function usableSendSpace(c: TcpConnections, id: number): number {
  return c.sndbuf[id] - (c.sndbuf[id] >>> 4);
}
