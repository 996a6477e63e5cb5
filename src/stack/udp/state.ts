/**
 * UDP flow state: the events counted, the tunables, the flow states, and
 * UdpFlows, the object holding the per-flow arrays, the inbound listeners,
 * the batch slots and the scratch, which the other modules of this folder
 * take as their first argument. Also what every path needs: flushing
 * frames, pausing a socket while the guest has no RX buffers, closing a
 * flow.
 */
import type { IoVecList, Native } from '../../sys/native';
import { defineCounter } from '../../sys/counters';
import type { ReadyHandler, StackContext } from '../context';
import { FlowProtocol, type FlowTable, NO_FLOW, defineFlowStates } from '../flow/flow-table';
import { ETHERNET_HEADER_LENGTH } from '../wire/ethernet';
import { IPV4_HEADER_LENGTH } from '../wire/ipv4';
import { IPV6_HEADER_LENGTH } from '../wire/ipv6';
import { UDP_HEADER_LENGTH } from '../wire/udp';
import { closeSocketQuietly } from '../../sys/close';
import { SOCKADDR_IN6_LENGTH } from '../../sys/sockaddr';
import { ExtendedError, IcmpErrorPlan, type QuotedDatagram } from '../icmp/errors';
import { HeaderWindow } from '../l4/guest-frame';
import { newIoVecList } from '../l4/iovec';
import { SeenGuestAddress } from '../l4/host-socket';
import { EPOLLERR, EPOLLIN, IPV6_RECVERR, IPV6_V6ONLY, IP_RECVERR, MSG_TRUNC, SOCK_DGRAM, SOL_IP, SOL_IPV6, SOL_SOCKET, SO_BINDTODEVICE, SO_REUSEADDR } from '../../sys/linux';
export { EPOLLERR, EPOLLIN, IPV6_RECVERR, IPV6_V6ONLY, IP_RECVERR, MSG_TRUNC, SOCK_DGRAM, SOL_IP, SOL_IPV6, SOL_SOCKET, SO_BINDTODEVICE, SO_REUSEADDR };

/** The addon calls UDP needs (a subset, so tests can wrap or fake them). */
export type UdpSockets = Pick<
  Native,
  'socket' | 'bind' | 'connect' | 'close' | 'setsockoptInt' | 'setsockoptBytes' | 'sendmsg' | 'recvmsg' | 'recvmmsg' | 'recvErrqueue' | 'ioctlInt'
>;

// ---- Linux constants (the addon passes numbers through unchanged) ----
export const FIONREAD = 0x541b;

// ---- tunables ----
/** Datagrams read per socket per readiness callback, so one flow cannot starve the others. */
export const READS_PER_WAKEUP = 64;
/** Error-queue entries handled per readiness callback. */
export const ERRORS_PER_WAKEUP = 16;
/** Largest UDP payload over IPv4 / IPv6 (65535 minus the headers). */
export const MAX_PAYLOAD_V4 = 65535 - IPV4_HEADER_LENGTH - UDP_HEADER_LENGTH;
export const MAX_PAYLOAD_V6 = 65535 - UDP_HEADER_LENGTH;
/** Ethernet + IP + UDP header bytes of a frame to the guest. */
export const HEADERS_V4 = ETHERNET_HEADER_LENGTH + IPV4_HEADER_LENGTH + UDP_HEADER_LENGTH;
export const HEADERS_V6 = ETHERNET_HEADER_LENGTH + IPV6_HEADER_LENGTH + UDP_HEADER_LENGTH;
/** Datagrams one recvmmsg takes (the batched path). */
export const BATCH_SLOTS = 32;
/** Bytes per batch slot: any UDP datagram fits, so nothing is truncated. */
export const BATCH_SLOT_SIZE = 65536;
/**
 * A next datagram of at most this many bytes goes the batched path
 * (recvmmsg into scratch, then a copy into RX buffers: one syscall for many
 * small datagrams); a larger one is read by recvmsg straight into its RX
 * reservation (no copy, where copying would cost more than the syscall).
 */
export const COPY_THRESHOLD = 8192;
/** Bound on listening sockets (-u all over two families is about 2 x 49k). */
export const MAX_LISTENERS = 131072;

/** Flow states of UDP flows in the shared table. */
export const enum UdpFlowState {
  Outbound = 0,
  Inbound = 1,
}
/** State names for the ferry_flows gauges, in UdpFlowState order. */
export const UDP_FLOW_STATE_NAMES: readonly string[] = ['outbound', 'inbound'];
defineFlowStates(FlowProtocol.Udp, 'udp', UDP_FLOW_STATE_NAMES);

export const EVENT_HELP = 'UDP events, by kind';
/** Counter slots of ferry_udp_events_total{event}. */
export const UdpEvent = {
  DatagramsFromGuest: defineCounter('ferry_udp_events_total', EVENT_HELP, { event: 'datagram_from_guest' }),
  DatagramsToGuest: defineCounter('ferry_udp_events_total', EVENT_HELP, { event: 'datagram_to_guest' }),
  /** Table full (--max-flows): the datagram was dropped. */
  TableFull: defineCounter('ferry_udp_events_total', EVENT_HELP, { event: 'table_full' }),
  /** No host address for the destination (family disabled, foreign IPv6 link-local, DNS forward without resolver). */
  Unreachable: defineCounter('ferry_udp_events_total', EVENT_HELP, { event: 'unreachable' }),
  /** Multicast, broadcast or unspecified destination. */
  GroupDestination: defineCounter('ferry_udp_events_total', EVENT_HELP, { event: 'group_destination' }),
  /** Port 0 on either side. */
  PortZero: defineCounter('ferry_udp_events_total', EVENT_HELP, { event: 'port_zero' }),
  SocketFailed: defineCounter('ferry_udp_events_total', EVENT_HELP, { event: 'socket_failed' }),
  /** sendmsg failed (buffer full, or a synchronous error). */
  SendFailed: defineCounter('ferry_udp_events_total', EVENT_HELP, { event: 'send_failed' }),
  /** A datagram too large for the guest's frames (or its buffers) was discarded. */
  TooBig: defineCounter('ferry_udp_events_total', EVENT_HELP, { event: 'too_big' }),
  /** An inbound datagram from a peer the guest cannot be shown (loopback without a mapping). */
  UnmappableSource: defineCounter('ferry_udp_events_total', EVENT_HELP, { event: 'unmappable_source' }),
  IcmpErrorRelayed: defineCounter('ferry_udp_events_total', EVENT_HELP, { event: 'icmp_error_relayed' }),
  IcmpErrorIgnored: defineCounter('ferry_udp_events_total', EVENT_HELP, { event: 'icmp_error_ignored' }),
  /** Reading paused because the guest had no RX buffers. */
  RxBlocked: defineCounter('ferry_udp_events_total', EVENT_HELP, { event: 'rx_blocked' }),
  ListenFailed: defineCounter('ferry_udp_events_total', EVENT_HELP, { event: 'listen_failed' }),
  FlowExpired: defineCounter('ferry_udp_events_total', EVENT_HELP, { event: 'flow_expired' }),
  /** The guest's source port could not be kept on the host (in use, or below 1024 without privilege). */
  SourcePortChanged: defineCounter('ferry_udp_events_total', EVENT_HELP, { event: 'source_port_changed' }),
} as const;

/** Errors a socket reports asynchronously (from an earlier ICMP): the send is retried once. */
export function isAsyncError(code: string): boolean {
  return code === 'ECONNREFUSED' || code === 'EHOSTUNREACH' || code === 'ENETUNREACH' || code === 'EHOSTDOWN' || code === 'EMSGSIZE';
}

/**
 * Everything the UDP translator keeps: the per-flow arrays (indexed by flow
 * id, beside the FlowTable's), the inbound listeners, the batch slots and
 * backlog of the recvmmsg path, and the scratch reused for every datagram.
 * The modules of this folder are plain functions over it.
 */
export class UdpFlows {
  readonly ctx: StackContext;
  /** Called back on readiness of every UDP socket (the UdpService). */
  readonly handler: ReadyHandler;
  readonly flows: FlowTable;
  readonly sockets: UdpSockets;

  // ---- per-flow UDP state, indexed by flow id ----
  /** Listener index of an inbound flow, -1 for an outbound flow (own socket in flows.fd). */
  readonly listenerOf: Int32Array;
  /** The host-side peer as a sockaddr (SOCKADDR_IN6_LENGTH bytes per flow): the mapped destination, or the inbound sender. */
  readonly peer: Uint8Array;

  // ---- listening sockets (inbound forwards), indexed by listener number ----
  listenerFd: Int32Array = new Int32Array(0);
  listenerFamily: Uint8Array = new Uint8Array(0);
  listenerGuestPort: Uint16Array = new Uint16Array(0);
  /** Host port and listen tag of each listener (for closeListeners). */
  listenerHostPort: Uint16Array = new Uint16Array(0);
  listenerTag: Int32Array = new Int32Array(0);
  /** Listener slots in use or closed; closed ones (fd -1) are in freeListenerSlots. */
  listenerCount = 0;
  readonly freeListenerSlots: number[] = [];
  readonly listenerByFd = new Map<number, number>();

  /** Where inbound flows go: the guest's address as last seen in its datagrams. */
  readonly seen: SeenGuestAddress;

  /** Sockets whose EPOLLIN is disarmed until the guest posts RX buffers. */
  readonly blocked = new Set<number>();

  // ---- reusable scratch ----
  readonly txIov: IoVecList;
  readonly rxIov: IoVecList;
  readonly emptyIov: IoVecList;
  readonly sockaddr = new Uint8Array(SOCKADDR_IN6_LENGTH);
  readonly sockaddr4View = this.sockaddr.subarray(0, 16);
  readonly fromAddr = new Uint8Array(SOCKADDR_IN6_LENGTH);
  readonly bindAddr = new Uint8Array(SOCKADDR_IN6_LENGTH);
  readonly remoteScratch = new Uint8Array(16);
  /** Where a datagram's headers are written (in place or through scratch). */
  readonly headers = new HeaderWindow();
  /** Backing of emptyIov (zero-length reads that drop a datagram). */
  readonly emptyBuffer = new Uint8Array(1);
  readonly meta = new Int32Array(3);
  readonly errControl = new Uint8Array(512);
  readonly errAddr = new Uint8Array(SOCKADDR_IN6_LENGTH);
  readonly errMeta = new Int32Array(3);
  readonly extended = new ExtendedError();
  readonly plan = new IcmpErrorPlan();
  readonly quoted: QuotedDatagram;
  /** Frames the translator committed since the last flush. */
  pending = 0;

  // ---- the batched path: recvmmsg into scratch slots, then copied to RX buffers ----
  /** BATCH_SLOTS x BATCH_SLOT_SIZE bytes, allocated on first use. */
  batchIov: IoVecList | null = null;
  readonly batchLengths = new Int32Array(BATCH_SLOTS);
  readonly batchFlags = new Int32Array(BATCH_SLOTS);
  readonly batchAddrs: Uint8Array[] = Array.from({ length: BATCH_SLOTS }, () => new Uint8Array(SOCKADDR_IN6_LENGTH));
  readonly batchAddrLengths = new Int32Array(BATCH_SLOTS);
  /**
   * Datagrams received but not yet given to the guest (it ran out of RX
   * buffers): slots [backlogHead, backlogTail) with their flow and length.
   * While it is not empty, readable sockets are paused (block()).
   */
  readonly backlogFlow = new Int32Array(BATCH_SLOTS);
  readonly backlogLength = new Int32Array(BATCH_SLOTS);
  backlogHead = 0;
  backlogTail = 0;

  constructor(ctx: StackContext, sockets: UdpSockets, flows: FlowTable, handler: ReadyHandler) {
    this.ctx = ctx;
    this.handler = handler;
    this.sockets = sockets;
    this.flows = flows;
    const n = flows.capacity;
    this.listenerOf = new Int32Array(n).fill(-1);
    this.peer = new Uint8Array(n * SOCKADDR_IN6_LENGTH);
    this.txIov = newIoVecList();
    this.rxIov = newIoVecList();
    this.emptyIov = { buffers: [this.emptyBuffer], offsets: new Float64Array(1), lengths: new Float64Array(1), count: 1 };
    this.quoted = {
      family: 4,
      guest: flows.guestAddress,
      guestOffset: 0,
      guestPort: 0,
      remote: flows.remoteAddress,
      remoteOffset: 0,
      remotePort: 0,
      payloadLength: 0,
      payload: ctx.scratch,
      payloadAvailable: 0,
    };
    this.seen = new SeenGuestAddress(ctx.config);
  }
}

/** Publish frames committed by this module (one notification per batch). */
export function flush(c: UdpFlows): void {
  if (c.pending === 0) return;
  c.pending = 0;
  c.ctx.port.flush();
}

/** Stop reading fd until the guest posts RX buffers. */
export function block(c: UdpFlows, fd: number): void {
  if (c.blocked.has(fd)) return;
  c.blocked.add(fd);
  c.ctx.counters.add(UdpEvent.RxBlocked);
  c.ctx.watcher?.modify(fd, 0);
}

/** Close one flow (its socket, unless it shares a listener's). */
export function closeFlow(c: UdpFlows, id: number): void {
  if (!c.flows.isLive(id, FlowProtocol.Udp)) return;
  if (c.listenerOf[id] < 0) {
    const fd = c.flows.fd[id];
    if (fd >= 0) {
      c.ctx.watcher?.unwatch(fd);
      c.blocked.delete(fd);
      closeSocketQuietly(c.sockets, fd);
    }
  }
  for (let j = c.backlogHead; j < c.backlogTail; j++) if (c.backlogFlow[j] === id) c.backlogFlow[j] = NO_FLOW;
  c.listenerOf[id] = -1;
  c.flows.release(id);
}

/** The stored host peer of a flow as a sockaddr view (allocation-free: reuses this.sockaddr). */
export function peerSockaddr(c: UdpFlows, id: number): Uint8Array {
  const base = id * SOCKADDR_IN6_LENGTH;
  const length = c.flows.family[id] === 4 ? 16 : SOCKADDR_IN6_LENGTH;
  for (let i = 0; i < length; i++) c.sockaddr[i] = c.peer[base + i];
  return length === SOCKADDR_IN6_LENGTH ? c.sockaddr : c.sockaddr4View;
}

/** Count a datagram given to the guest and refresh its flow's idle deadline. */
export function delivered(c: UdpFlows, id: number, length: number): void {
  const ctx = c.ctx;
  c.pending++;
  ctx.counters.add(UdpEvent.DatagramsToGuest);
  c.flows.bytesToGuest[id] += length;
  c.flows.deadline[id] = ctx.clock.now() + ctx.config.udpIdleMs;
}
