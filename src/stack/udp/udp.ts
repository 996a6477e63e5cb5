/**
 * UDP between the guest and the world through ordinary host sockets, in
 * passt's way (no NAT: the guest has the host's addresses).
 *
 * Outbound flows: the first datagram from a guest (address, port) to a
 * (destination, port) opens a flow with its own non-blocking host socket,
 * bound to the guest's source port when the host allows it, and
 * connected to the destination as mapped by udp-address-map.ts (the
 * --map-host-loopback address, the gateway by default, to 127.0.0.1 / ::1;
 * --map-guest-addr to the host's address; --dns-forward port 53 to
 * --dns-host port 53). Replies are read from that socket and reach the guest
 * from the address and port it used, so DNS answers come from the
 * --dns-forward address and loopback services from the gateway.
 *
 * Inbound flows (-u/--udp-ports): a bound socket per forwarded host port
 * and family; a datagram creates (or reuses) a flow to the guest's mapped
 * port, from the sender's real address (loopback senders appear as the
 * gateway), and the guest's replies are sent back from the forwarded port
 * to the original sender (sendmsg with its address on the bound socket).
 *
 * Data path:
 * - guest to host: the payload goes from guest memory straight into
 *   sendmsg iovecs (views over the TX frame's SegmentList), one sendmsg per
 *   datagram: the stack receives one TX frame per call and guest memory
 *   must not be held after it returns, so there is nothing to sendmmsg;
 * - host to guest: FIONREAD gives the size of the next datagram. Up to
 *   COPY_THRESHOLD bytes, recvmmsg takes up to BATCH_SLOTS datagrams at
 *   once into scratch slots and each is copied into its own RX reservation
 *   (one syscall for a burst of small datagrams; the FramePort contract
 *   allows one open reservation at a time, so recvmmsg cannot fill several
 *   RX reservations directly). A larger datagram gets one RX reservation of
 *   its exact size and recvmsg fills it in place after the headers (no
 *   copy). Headers are written in place afterwards, the UDP checksum summed
 *   over the reservation (a partial pseudo-header checksum, marked
 *   NEEDS_CSUM, when the port has checksumOffload); one guest notification per readiness
 *   callback.
 *   Nothing is allocated per datagram except the short-lived views of the
 *   copy (SegmentList.copyIn).
 * - back-pressure: when the guest has no RX buffers, the socket's EPOLLIN
 *   is disarmed (datagrams stay in the kernel, or in the batch backlog)
 *   until port.onWritable.
 *
 * ICMP errors: every host socket has IP_RECVERR / IPV6_RECVERR on; errors
 * from the error queue (port/host unreachable, fragmentation needed /
 * packet too big with the MTU, time exceeded) become the matching ICMP
 * error to the guest quoting a datagram rebuilt from the flow
 * (icmp-errors.ts), so a connected guest socket sees ECONNREFUSED.
 *
 * Fragments: the stack's dispatch drops IPv4 and IPv6 fragments from the
 * guest and counts them (ipv4_fragment / ipv6_fragment); they are not
 * reassembled. The guest is given the MTU (65520 by default, larger than
 * any UDP datagram) and Linux guests fragment only datagrams above it, so
 * fragments only appear with a small -m; reassembly would hold up to 64 KiB
 * per datagram of untrusted state for that case. Counted, not silent.
 *
 * Flows live in the worker's shared FlowTable (flow-table.ts; protocol 17,
 * states 'outbound' and 'inbound'), with UDP's own per-flow arrays indexed
 * by flow id. An idle flow (no datagram either way for config.udpIdleMs)
 * is closed by onTimer(); the table's size bounds UDP flows (--max-flows),
 * refusals counted in ferry_flows_refused_total{protocol="udp"}.
 */
import type { IoVecList, Native } from '../../sys/native';
import { defineCounter } from '../../sys/counters';
import { log, rateLimited } from '../../sys/log';
import type { IpPacket, ReadyHandler, RxFrame, StackContext } from '../context';
import { UDP4_PARTIAL_CHECKSUM, UDP6_PARTIAL_CHECKSUM } from '../context';
import type { OffloadInfo, SegmentList } from '../../io/frame-io';
import type { ForwardSpec } from '../flow/forward-spec';
import type { ListenError, ListenerInfo } from '../tcp/listen';
import { ADDRESS_SLOT, FlowProtocol, FlowTable, NO_FLOW, defineFlowStates } from '../flow/flow-table';
import { ETHERNET_HEADER_LENGTH, EtherType, emitEthernet } from '../wire/ethernet';
import { IPV4_HEADER_LENGTH, IpProtocol, emitIpv4 } from '../wire/ipv4';
import { IPV6_HEADER_LENGTH, emitIpv6 } from '../wire/ipv6';
import { UDP_HEADER_LENGTH } from '../wire/udp';
import { be16, finishChecksum, foldSum, pseudoHeaderSumIpv4, pseudoHeaderSumIpv6, setBe16, sumBytes, sumSegments } from '../wire/checksum';
import { DropReason, countDrop } from '../drops';
import { errorCode } from '../../sys/errno';
import { closeSocketQuietly } from '../../sys/close';
import { guestVisibleSource, isGroupOrUnspecified, mapDestination } from '../flow/address-map';
import { equalAt, isIpv6LoopbackAt } from '../address';
import { AF_INET, AF_INET6, SOCKADDR_IN6_LENGTH, sockaddrAddressOffset, sockaddrFamily, sockaddrPort, writeSockaddr } from '../../sys/sockaddr';
import { ExtendedError, IcmpErrorPlan, type QuotedDatagram, parseExtendedError, planIcmpError, sendIcmpError } from '../icmp/errors';

/** The addon calls UDP needs (a subset, so tests can wrap or fake them). */
export type UdpSockets = Pick<
  Native,
  'socket' | 'bind' | 'connect' | 'close' | 'setsockoptInt' | 'setsockoptBytes' | 'sendmsg' | 'recvmsg' | 'recvmmsg' | 'recvErrqueue' | 'ioctlInt'
>;

// ---- Linux constants (the addon passes numbers through unchanged) ----
const SOCK_DGRAM = 2;
const SOL_SOCKET = 1;
const SO_REUSEADDR = 2;
const SO_BINDTODEVICE = 25;
const SOL_IP = 0;
const SOL_IPV6 = 41;
const IP_RECVERR = 11;
const IPV6_RECVERR = 25;
const IPV6_V6ONLY = 26;
const MSG_TRUNC = 32;
const FIONREAD = 0x541b;
const EPOLLIN = 0x001;
const EPOLLERR = 0x008;

// ---- tunables ----
/** Datagrams read per socket per readiness callback, so one flow cannot starve the others. */
export const READS_PER_WAKEUP = 64;
/** Error-queue entries handled per readiness callback. */
export const ERRORS_PER_WAKEUP = 16;
/** Largest UDP payload over IPv4 / IPv6 (65535 minus the headers). */
const MAX_PAYLOAD_V4 = 65535 - IPV4_HEADER_LENGTH - UDP_HEADER_LENGTH;
const MAX_PAYLOAD_V6 = 65535 - UDP_HEADER_LENGTH;
/** Ethernet + IP + UDP header bytes of a frame to the guest. */
const HEADERS_V4 = ETHERNET_HEADER_LENGTH + IPV4_HEADER_LENGTH + UDP_HEADER_LENGTH;
const HEADERS_V6 = ETHERNET_HEADER_LENGTH + IPV6_HEADER_LENGTH + UDP_HEADER_LENGTH;
/** Iovec entries for one datagram (guest frames have few segments; the RX reservation too). */
const IOV_ENTRIES = 1024;
/** Datagrams one recvmmsg takes (the batched path). */
export const BATCH_SLOTS = 32;
/** Bytes per batch slot: any UDP datagram fits, so nothing is truncated. */
const BATCH_SLOT_SIZE = 65536;
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

const EVENT_HELP = 'UDP events, by kind';
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
function isAsyncError(code: string): boolean {
  return code === 'ECONNREFUSED' || code === 'EHOSTUNREACH' || code === 'ENETUNREACH' || code === 'EHOSTDOWN' || code === 'EMSGSIZE';
}

/** Options of UdpService. */
export interface UdpServiceOptions {
  /** Addon calls (default: the real addon). */
  sockets?: UdpSockets;
  /** The worker's flow table shared with TCP/ICMP (default: a table of config.maxFlows). */
  flows?: FlowTable;
}

/**
 * The UDP translator: one per stack (worker). Install as the stack's
 * udpHandler, open inbound forwards with listen(), call onTimer()
 * periodically and close() at the end.
 */
export class UdpService implements ReadyHandler {
  readonly flows: FlowTable;
  private readonly sockets: UdpSockets;

  // ---- per-flow UDP state, indexed by flow id ----
  /** Listener index of an inbound flow, -1 for an outbound flow (own socket in flows.fd). */
  private readonly listenerOf: Int32Array;
  /** The host-side peer as a sockaddr (SOCKADDR_IN6_LENGTH bytes per flow): the mapped destination, or the inbound sender. */
  private readonly peer: Uint8Array;

  // ---- listening sockets (inbound forwards), indexed by listener number ----
  private listenerFd: Int32Array = new Int32Array(0);
  private listenerFamily: Uint8Array = new Uint8Array(0);
  private listenerGuestPort: Uint16Array = new Uint16Array(0);
  /** Host port and listen tag of each listener (for closeListeners). */
  private listenerHostPort: Uint16Array = new Uint16Array(0);
  private listenerTag: Int32Array = new Int32Array(0);
  /** Listener slots in use or closed; closed ones (fd -1) are in freeListenerSlots. */
  private listenerCount = 0;
  private readonly freeListenerSlots: number[] = [];
  private readonly listenerByFd = new Map<number, number>();

  /**
   * The guest's address as last seen in its datagrams (passt's addr_seen),
   * initially the configured one: inbound flows go there, so a guest that
   * took another address (SLAAC next to the host's, a static one) still
   * gets them once it has sent something. IPv6 link-local sources are not
   * taken (inbound datagrams are for a global address).
   */
  private readonly seen4 = new Uint8Array(4);
  private readonly seen6 = new Uint8Array(16);

  /** Sockets whose EPOLLIN is disarmed until the guest posts RX buffers. */
  private readonly blocked = new Set<number>();

  // ---- reusable scratch ----
  private readonly txIov: IoVecList;
  private readonly rxIov: IoVecList;
  private readonly emptyIov: IoVecList;
  private readonly sockaddr = new Uint8Array(SOCKADDR_IN6_LENGTH);
  private readonly fromAddr = new Uint8Array(SOCKADDR_IN6_LENGTH);
  private readonly bindAddr = new Uint8Array(SOCKADDR_IN6_LENGTH);
  private readonly remoteScratch = new Uint8Array(16);
  private readonly headerScratch = new Uint8Array(HEADERS_V6);
  private readonly meta = new Int32Array(3);
  private readonly errControl = new Uint8Array(512);
  private readonly errAddr = new Uint8Array(SOCKADDR_IN6_LENGTH);
  private readonly errMeta = new Int32Array(3);
  private readonly extended = new ExtendedError();
  private readonly plan = new IcmpErrorPlan();
  private readonly quoted: QuotedDatagram;
  private readonly expireHandler = (id: number): void => this.expireFlow(id);
  /** Frames committed by this module since the last flush. */
  private pending = 0;

  // ---- the batched path: recvmmsg into scratch slots, then copied to RX buffers ----
  /** BATCH_SLOTS x BATCH_SLOT_SIZE bytes, allocated on first use. */
  private batchIov: IoVecList | null = null;
  private readonly batchLengths = new Int32Array(BATCH_SLOTS);
  private readonly batchFlags = new Int32Array(BATCH_SLOTS);
  private readonly batchAddrs: Uint8Array[] = Array.from({ length: BATCH_SLOTS }, () => new Uint8Array(SOCKADDR_IN6_LENGTH));
  private readonly batchAddrLengths = new Int32Array(BATCH_SLOTS);
  /**
   * Datagrams received but not yet given to the guest (it ran out of RX
   * buffers): slots [backlogHead, backlogTail) with their flow and length.
   * While it is not empty, readable sockets are paused (block()).
   */
  private readonly backlogFlow = new Int32Array(BATCH_SLOTS);
  private readonly backlogLength = new Int32Array(BATCH_SLOTS);
  private backlogHead = 0;
  private backlogTail = 0;

  constructor(private readonly ctx: StackContext, options: UdpServiceOptions = {}) {
    // eslint-disable-next-line @typescript-eslint/no-require-imports -- the addon loads only without injected sockets (unit tests run without it)
    this.sockets = options.sockets ?? (require('../../sys/native') as { native: Native }).native;
    this.flows = options.flows ?? new FlowTable(Math.max(1, ctx.config.maxFlows), ctx.counters);
    this.flows.registerCloser(FlowProtocol.Udp, (id) => this.closeFlow(id));
    const n = this.flows.capacity;
    this.listenerOf = new Int32Array(n).fill(-1);
    this.peer = new Uint8Array(n * SOCKADDR_IN6_LENGTH);
    const iov = (): IoVecList => ({ buffers: new Array<Uint8Array>(IOV_ENTRIES), offsets: new Float64Array(IOV_ENTRIES), lengths: new Float64Array(IOV_ENTRIES), count: 0 });
    this.txIov = iov();
    this.rxIov = iov();
    this.emptyIov = { buffers: [this.headerScratch], offsets: new Float64Array(1), lengths: new Float64Array(1), count: 1 };
    this.quoted = {
      family: 4,
      guest: this.flows.guestAddress,
      guestOffset: 0,
      guestPort: 0,
      remote: this.flows.remoteAddress,
      remoteOffset: 0,
      remotePort: 0,
      payloadLength: 0,
      payload: ctx.scratch,
      payloadAvailable: 0,
    };
    if (ctx.config.ipv4 !== null) this.seen4.set(ctx.config.ipv4.address.subarray(0, 4));
    if (ctx.config.ipv6 !== null) this.seen6.set(ctx.config.ipv6.address.subarray(0, 16));
    // Resume reading when the guest posts RX buffers; keep any earlier listener (TCP's).
    const previous = ctx.port.onWritable;
    ctx.port.onWritable = previous === null ? () => this.onWritable() : () => {
      previous();
      this.onWritable();
    };
  }

  /** UDP flows in use. */
  get flowCount(): number {
    return this.flows.countOf(FlowProtocol.Udp);
  }

  /** Listening sockets open for inbound forwards. */
  get listenerTotal(): number {
    return this.listenerByFd.size;
  }

  // ======================================================================
  // Guest to host
  // ======================================================================

  /**
   * TransportHandler: one UDP datagram from the guest (the stack validated
   * the header and the length field; DHCP was taken before). Sends it on
   * the flow's socket; drops are counted.
   */
  handle(ctx: StackContext, frame: RxFrame, packet: IpPacket): void {
    void ctx;
    try {
      this.fromGuest(frame, packet);
    } finally {
      this.flush();
    }
  }

  private fromGuest(frame: RxFrame, packet: IpPacket): void {
    const ctx = this.ctx;
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
      if (checksum === 0 || finishChecksum(sumSegments(segments, udp - frame.base, udpLength, pseudo)) !== 0) {
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
    this.noteGuestAddress(family, bytes, src);
    const flows = this.flows;
    let id = flows.lookup(FlowProtocol.Udp, family, bytes, src, srcPort, bytes, dst, dstPort);
    if (id === NO_FLOW) {
      id = this.openOutbound(family, bytes, src, srcPort, dst, dstPort);
      if (id === NO_FLOW) return;
    }
    const dataLength = udpLength - UDP_HEADER_LENGTH;
    if (!this.gather(segments, udp - frame.base + UDP_HEADER_LENGTH, dataLength)) {
      countDrop(ctx.counters, DropReason.SplitHeadersTooLong, () => 'UDP payload in too many segments');
      return;
    }
    const listener = this.listenerOf[id];
    const fd = listener >= 0 ? this.listenerFd[listener] : flows.fd[id];
    const to = listener >= 0 ? this.peerSockaddr(id) : null;
    if (!this.send(fd, to)) {
      ctx.counters.add(UdpEvent.SendFailed);
      return;
    }
    ctx.counters.add(UdpEvent.DatagramsFromGuest);
    flows.bytesFromGuest[id] += dataLength;
    flows.deadline[id] = ctx.clock.now() + ctx.config.udpIdleMs;
  }

  /**
   * Bind the flow's socket to the guest's source port, as passt does, so
   * the world sees the port the guest chose (protocols that carry or check
   * ports keep working). SO_REUSEADDR lets several connected flows from one
   * guest port share it (the kernel prefers the connected 4-tuple). When the
   * port cannot be had (a host service holds it, or a port below 1024
   * without privilege) connect() picks an ephemeral one: counted, not fatal.
   */
  private keepSourcePort(fd: number, family: 4 | 6, port: number): void {
    const sockets = this.sockets;
    try {
      sockets.setsockoptInt(fd, SOL_SOCKET, SO_REUSEADDR, 1);
      // A wildcard IPv6 bind would also claim the IPv4 port.
      if (family === 6) sockets.setsockoptInt(fd, SOL_IPV6, IPV6_V6ONLY, 1);
      const length = writeSockaddr(this.bindAddr, family, ZERO16, 0, port);
      sockets.bind(fd, this.bindAddr.subarray(0, length));
    } catch {
      this.ctx.counters.add(UdpEvent.SourcePortChanged);
    }
  }

  /** Remember the guest's source address (not unspecified, not IPv6 link-local) for inbound flows. */
  private noteGuestAddress(family: 4 | 6, bytes: Uint8Array, src: number): void {
    if (family === 4) {
      if ((bytes[src] | bytes[src + 1] | bytes[src + 2] | bytes[src + 3]) === 0) return;
      if (!equalAt(bytes, src, this.seen4, 4)) for (let i = 0; i < 4; i++) this.seen4[i] = bytes[src + i];
      return;
    }
    if ((bytes[src] === 0xfe && (bytes[src + 1] & 0xc0) === 0x80) || isGroupOrUnspecified(6, bytes, src)) return;
    if (!equalAt(bytes, src, this.seen6, 16)) for (let i = 0; i < 16; i++) this.seen6[i] = bytes[src + i];
  }

  /** sendmsg of txIov; one retry after an asynchronous error (which the failed call consumed). Returns true when sent. */
  private send(fd: number, to: Uint8Array | null): boolean {
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        return this.sockets.sendmsg(fd, this.txIov, to, 0) >= 0;
      } catch (e) {
        const code = errorCode(e);
        if (attempt === 0 && isAsyncError(code)) continue;
        rateLimited('warn', 'udp send', () => `udp: sendmsg failed: ${code}`);
        return false;
      }
    }
    return false;
  }

  /** Point txIov at bytes [from, from+length) of the guest frame; false when it needs too many entries. */
  private gather(segments: SegmentList, from: number, length: number): boolean {
    const iov = this.txIov;
    iov.count = 0;
    let skip = from;
    let left = length;
    for (let i = 0; i < segments.count && left > 0; i++) {
      const segLength = segments.lengths[i];
      if (skip >= segLength) {
        skip -= segLength;
        continue;
      }
      if (iov.count >= IOV_ENTRIES) return false;
      const n = Math.min(segLength - skip, left);
      iov.buffers[iov.count] = segments.buffers[i];
      iov.offsets[iov.count] = segments.offsets[i] + skip;
      iov.lengths[iov.count] = n;
      iov.count++;
      left -= n;
      skip = 0;
    }
    return left === 0;
  }

  /** Open an outbound flow for a guest datagram; returns its id, or NO_FLOW (counted). */
  private openOutbound(family: 4 | 6, bytes: Uint8Array, src: number, srcPort: number, dst: number, dstPort: number): number {
    const ctx = this.ctx;
    const flows = this.flows;
    const sockets = this.sockets;
    if (ctx.watcher === null) {
      ctx.counters.add(UdpEvent.SocketFailed);
      return NO_FLOW;
    }
    if (flows.full) {
      flows.countRefused(FlowProtocol.Udp);
      ctx.counters.add(UdpEvent.TableFull);
      rateLimited('warn', 'udp table full', () => `udp: flow table full (${flows.capacity} flows, --max-flows); datagram dropped`);
      return NO_FLOW;
    }
    const sockaddr = this.sockaddr;
    const sockaddrLength = mapDestination(ctx.config, family, bytes, dst, dstPort, sockaddr);
    if (sockaddrLength === 0) {
      ctx.counters.add(UdpEvent.Unreachable);
      return NO_FLOW;
    }
    const target = sockaddr.subarray(0, sockaddrLength);
    let fd: number;
    try {
      fd = sockets.socket(family === 4 ? AF_INET : AF_INET6, SOCK_DGRAM, 0);
    } catch (e) {
      rateLimited('warn', 'udp socket', () => `udp: socket() failed: ${errorCode(e)}`);
      ctx.counters.add(UdpEvent.SocketFailed);
      return NO_FLOW;
    }
    try {
      sockets.setsockoptInt(fd, family === 4 ? SOL_IP : SOL_IPV6, family === 4 ? IP_RECVERR : IPV6_RECVERR, 1);
      const loopback = family === 4 ? sockaddr[4] === 127 : isIpv6LoopbackAt(sockaddr, sockaddrAddressOffset(6));
      if (ctx.config.interfaceName !== null && !loopback) this.bindToDevice(fd, ctx.config.interfaceName);
      this.keepSourcePort(fd, family, srcPort);
      sockets.connect(fd, target);
    } catch (e) {
      rateLimited('warn', 'udp connect', () => `udp: connect failed: ${errorCode(e)}`);
      closeSocketQuietly(this.sockets, fd);
      ctx.counters.add(UdpEvent.Unreachable);
      return NO_FLOW;
    }
    const id = flows.allocate(FlowProtocol.Udp, family, bytes, src, srcPort, bytes, dst, dstPort, UdpFlowState.Outbound, ctx.clock.now());
    if (id === NO_FLOW) {
      closeSocketQuietly(this.sockets, fd);
      ctx.counters.add(UdpEvent.TableFull);
      return NO_FLOW;
    }
    this.listenerOf[id] = -1;
    this.peer.set(target, id * SOCKADDR_IN6_LENGTH);
    flows.setFd(id, fd);
    flows.deadline[id] = ctx.clock.now() + ctx.config.udpIdleMs;
    ctx.watcher.watch(fd, EPOLLIN, this);
    return id;
  }

  // ======================================================================
  // Inbound forwards
  // ======================================================================

  /**
   * Open listening sockets for -u specs: one per forwarded host port and
   * family (the spec's bind address picks the family, else both enabled
   * ones, IPv6 with V6ONLY). Ports that cannot be bound are logged (one
   * line per spec) and skipped. Returns the number of sockets opened.
   */
  listen(specs: readonly ForwardSpec[]): number {
    return this.listenTagged(specs, 0).opened;
  }

  /**
   * listen() with the sockets marked `tag` (for closeListeners), returning
   * the sockets opened and, for specs that are not best-effort, what
   * could not be bound.
   */
  listenTagged(specs: readonly ForwardSpec[], tag: number): { opened: number; errors: ListenError[] } {
    const ctx = this.ctx;
    let opened = 0;
    const errors: ListenError[] = [];
    for (const spec of specs) {
      if (spec.mode === 'none' || spec.mode === 'auto') continue;
      const families: (4 | 6)[] = [];
      if (spec.bindAddress !== null) families.push(spec.bindAddress.length === 4 ? 4 : 6);
      else {
        if (ctx.config.ipv4 !== null) families.push(4);
        if (ctx.config.ipv6 !== null) families.push(6);
      }
      let failures = 0;
      let firstFailure = '';
      for (const mapping of spec.mappings) {
        for (let port = mapping.hostPortFirst; port <= mapping.hostPortLast; port++) {
          const guestPort = mapping.guestPortFirst + (port - mapping.hostPortFirst);
          for (const family of families) {
            if ((family === 4 ? ctx.config.ipv4 : ctx.config.ipv6) === null) continue;
            const error = this.openListener(family, spec, port, guestPort, tag);
            if (error === null) opened++;
            else {
              if (failures === 0) firstFailure = `port ${port} (IPv${family}): ${error}`;
              failures++;
              if (!spec.bestEffort) errors.push({ port, family, code: error });
            }
          }
        }
      }
      if (failures > 0) {
        ctx.counters.add(UdpEvent.ListenFailed, failures);
        const line = `udp: -u ${spec.text}: ${failures} socket(s) not bound, first ${firstFailure}`;
        if (spec.bestEffort) log.info(line);
        else log.warn(line);
      }
    }
    return { opened, errors };
  }

  /**
   * Close the listening sockets `match` selects, and the inbound flows
   * that use them (their replies would go out on those sockets). Returns
   * how many sockets were closed.
   */
  closeListeners(match: (listener: ListenerInfo) => boolean): number {
    let closed = 0;
    for (let index = 0; index < this.listenerCount; index++) {
      const fd = this.listenerFd[index];
      if (fd < 0) continue;
      const family = this.listenerFamily[index] as 4 | 6;
      if (!match({ tag: this.listenerTag[index], hostPort: this.listenerHostPort[index], family })) continue;
      for (let id = 0; id < this.flows.capacity; id++) {
        if (this.listenerOf[id] === index && this.flows.isLive(id, FlowProtocol.Udp)) this.closeFlow(id);
      }
      this.ctx.watcher?.unwatch(fd);
      this.blocked.delete(fd);
      closeSocketQuietly(this.sockets, fd);
      this.listenerByFd.delete(fd);
      this.listenerFd[index] = -1;
      this.freeListenerSlots.push(index);
      closed++;
    }
    return closed;
  }

  /** Bind one listening socket; returns null, or why it failed. */
  private openListener(family: 4 | 6, spec: ForwardSpec, port: number, guestPort: number, tag = 0): string | null {
    const ctx = this.ctx;
    const sockets = this.sockets;
    if (ctx.watcher === null) return 'no fd watcher';
    if (this.listenerCount >= MAX_LISTENERS && this.freeListenerSlots.length === 0) return `more than ${MAX_LISTENERS} listening sockets`;
    let fd: number;
    try {
      fd = sockets.socket(family === 4 ? AF_INET : AF_INET6, SOCK_DGRAM, 0);
    } catch (e) {
      return errorCode(e);
    }
    try {
      sockets.setsockoptInt(fd, family === 4 ? SOL_IP : SOL_IPV6, family === 4 ? IP_RECVERR : IPV6_RECVERR, 1);
      if (family === 6) sockets.setsockoptInt(fd, SOL_IPV6, IPV6_V6ONLY, 1);
      if (spec.interfaceName !== null) {
        sockets.setsockoptBytes(fd, SOL_SOCKET, SO_BINDTODEVICE, Buffer.from(spec.interfaceName + '\0', 'latin1'));
      }
      const any = new Uint8Array(16);
      const length = writeSockaddr(this.sockaddr, family, spec.bindAddress ?? any, 0, port);
      sockets.bind(fd, this.sockaddr.subarray(0, length));
    } catch (e) {
      closeSocketQuietly(this.sockets, fd);
      return errorCode(e);
    }
    const index = this.freeListenerSlots.pop() ?? this.listenerCount++;
    if (index >= this.listenerFd.length) this.growListeners(Math.min(MAX_LISTENERS, Math.max(16, this.listenerFd.length * 2)));
    this.listenerFd[index] = fd;
    this.listenerFamily[index] = family;
    this.listenerGuestPort[index] = guestPort;
    this.listenerHostPort[index] = port;
    this.listenerTag[index] = tag;
    this.listenerByFd.set(fd, index);
    ctx.watcher.watch(fd, EPOLLIN, this);
    return null;
  }

  private growListeners(capacity: number): void {
    const fds = new Int32Array(capacity);
    fds.set(this.listenerFd);
    const families = new Uint8Array(capacity);
    families.set(this.listenerFamily);
    const ports = new Uint16Array(capacity);
    ports.set(this.listenerGuestPort);
    this.listenerFd = fds;
    this.listenerFamily = families;
    this.listenerGuestPort = ports;
    const hostPorts = new Uint16Array(capacity);
    hostPorts.set(this.listenerHostPort);
    this.listenerHostPort = hostPorts;
    const tags = new Int32Array(capacity);
    tags.set(this.listenerTag);
    this.listenerTag = tags;
  }

  /**
   * The flow for a datagram from the sender `from` (a sockaddr of fromLength bytes) on listener `index`
   * (created when new), or NO_FLOW (counted).
   */
  private inboundFlow(index: number, from: Uint8Array, fromLength: number): number {
    const ctx = this.ctx;
    const family = this.listenerFamily[index] as 4 | 6;
    if (fromLength < (family === 4 ? 16 : 24) || sockaddrFamily(from) !== family) return NO_FLOW;
    const remote = guestVisibleSource(ctx.config, family, from, sockaddrAddressOffset(family), this.remoteScratch);
    const cfg = family === 4 ? ctx.config.ipv4 : ctx.config.ipv6;
    if (remote === null || cfg === null) {
      ctx.counters.add(UdpEvent.UnmappableSource);
      return NO_FLOW;
    }
    const peerPort = sockaddrPort(from);
    const guestPort = this.listenerGuestPort[index];
    const flows = this.flows;
    const guest = family === 4 ? this.seen4 : this.seen6;
    let id = flows.lookup(FlowProtocol.Udp, family, guest, 0, guestPort, remote, 0, peerPort);
    if (id !== NO_FLOW) return id;
    id = flows.allocate(FlowProtocol.Udp, family, guest, 0, guestPort, remote, 0, peerPort, UdpFlowState.Inbound, ctx.clock.now());
    if (id === NO_FLOW) {
      ctx.counters.add(UdpEvent.TableFull);
      return NO_FLOW;
    }
    this.listenerOf[id] = index;
    flows.markInbound(id);
    this.peer.fill(0, id * SOCKADDR_IN6_LENGTH, (id + 1) * SOCKADDR_IN6_LENGTH);
    this.peer.set(from.subarray(0, family === 4 ? 16 : SOCKADDR_IN6_LENGTH), id * SOCKADDR_IN6_LENGTH);
    return id;
  }

  /** The stored host peer of a flow as a sockaddr view (allocation-free: reuses this.sockaddr). */
  private peerSockaddr(id: number): Uint8Array {
    const base = id * SOCKADDR_IN6_LENGTH;
    const length = this.flows.family[id] === 4 ? 16 : SOCKADDR_IN6_LENGTH;
    for (let i = 0; i < length; i++) this.sockaddr[i] = this.peer[base + i];
    return length === SOCKADDR_IN6_LENGTH ? this.sockaddr : this.sockaddr4View;
  }

  private readonly sockaddr4View = this.sockaddr.subarray(0, 16);

  // ======================================================================
  // Host to guest
  // ======================================================================

  /** Socket readiness: errors from the error queue first, then datagrams to the guest. */
  onReady(fd: number, events: number): void {
    const listener = this.listenerByFd.get(fd);
    let id = NO_FLOW;
    if (listener === undefined) {
      id = this.flows.flowOfFd(fd);
      if (!this.flows.isLive(id, FlowProtocol.Udp)) {
        this.ctx.watcher?.unwatch(fd);
        return;
      }
    }
    try {
      if ((events & EPOLLERR) !== 0) this.drainErrors(fd, listener ?? -1, id);
      if ((events & EPOLLIN) !== 0) this.readSocket(fd, listener ?? -1, id);
    } finally {
      this.flush();
    }
  }

  /**
   * Read up to READS_PER_WAKEUP datagrams from fd (a flow's socket, or
   * listener `listener`) for the guest: small ones batched with recvmmsg,
   * large ones by recvmsg straight into their RX reservation.
   */
  private readSocket(fd: number, listener: number, flowId: number): void {
    const ctx = this.ctx;
    const sockets = this.sockets;
    const port = ctx.port;
    const family = listener >= 0 ? (this.listenerFamily[listener] as 4 | 6) : (this.flows.family[flowId] as 4 | 6);
    const headers = family === 4 ? HEADERS_V4 : HEADERS_V6;
    const maxPayload = Math.min(family === 4 ? MAX_PAYLOAD_V4 : MAX_PAYLOAD_V6, port.maxFrameLength - headers);
    const meta = this.meta;
    for (let budget = READS_PER_WAKEUP; budget > 0; ) {
      if (this.backlogHead < this.backlogTail && !this.drainBacklog()) {
        this.block(fd);
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
        const received = this.receiveBatch(fd, listener, flowId, want);
        if (received < 0) return;
        budget -= Math.max(1, received);
        if (!this.drainBacklog()) {
          this.block(fd);
          return;
        }
        // Fewer than asked: the socket is drained (or reported an error); epoll calls again if more came.
        if (received < want) return;
        continue;
      }
      budget--;
      if (size > maxPayload) {
        // Larger than any frame the guest takes: discard it (a zero-length read drops a datagram).
        this.discardDatagram(fd);
        ctx.counters.add(UdpEvent.TooBig);
        continue;
      }
      const list = port.reserve(headers + size);
      if (list === null || list.totalLength < headers + size) {
        if (list !== null) port.cancel();
        this.block(fd);
        return;
      }
      this.scatter(list, headers, size);
      let n: number;
      try {
        n = sockets.recvmsg(fd, this.rxIov, 0, listener >= 0 ? this.fromAddr : null, meta);
      } catch (e) {
        port.cancel();
        // A pending asynchronous error (the ICMP behind it is in the error queue).
        log.debug(`udp: recvmsg: ${errorCode(e)}`);
        this.drainErrors(fd, listener, flowId);
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
      const id = listener >= 0 ? this.inboundFlow(listener, this.fromAddr, meta[0]) : flowId;
      if (id === NO_FLOW) {
        port.cancel();
        continue;
      }
      port.commit(headers + n, this.writeHeaders(list, id, n));
      this.delivered(id, n);
    }
  }

  /** Count a datagram given to the guest and refresh its flow's idle deadline. */
  private delivered(id: number, length: number): void {
    const ctx = this.ctx;
    this.pending++;
    ctx.counters.add(UdpEvent.DatagramsToGuest);
    this.flows.bytesToGuest[id] += length;
    this.flows.deadline[id] = ctx.clock.now() + ctx.config.udpIdleMs;
  }

  /**
   * recvmmsg up to `count` datagrams from fd into the batch slots and queue
   * them in the backlog (empty on entry) with their flows. Returns how many
   * were received, or -1 when none were queued.
   */
  private receiveBatch(fd: number, listener: number, flowId: number, count: number): number {
    const ctx = this.ctx;
    const iov = this.batchIov ?? this.allocateBatch();
    let n: number;
    try {
      n = this.sockets.recvmmsg(
        fd,
        iov,
        this.batchLengths,
        listener >= 0 ? this.batchAddrs : null,
        listener >= 0 ? this.batchAddrLengths : null,
        count,
        0,
        this.batchFlags,
      );
    } catch (e) {
      log.debug(`udp: recvmmsg: ${errorCode(e)}`);
      this.drainErrors(fd, listener, flowId);
      return 0;
    }
    if (n <= 0) return -1;
    for (let j = 0; j < n; j++) {
      let id = flowId;
      if ((this.batchFlags[j] & MSG_TRUNC) !== 0) {
        ctx.counters.add(UdpEvent.TooBig);
        id = NO_FLOW;
      } else if (listener >= 0) {
        id = this.inboundFlow(listener, this.batchAddrs[j], this.batchAddrLengths[j]);
      }
      this.backlogFlow[j] = id;
      this.backlogLength[j] = this.batchLengths[j];
    }
    this.backlogHead = 0;
    this.backlogTail = n;
    return n;
  }

  private allocateBatch(): IoVecList {
    const memory = new Uint8Array(BATCH_SLOTS * BATCH_SLOT_SIZE);
    const iov: IoVecList = { buffers: new Array<Uint8Array>(BATCH_SLOTS).fill(memory), offsets: new Float64Array(BATCH_SLOTS), lengths: new Float64Array(BATCH_SLOTS).fill(BATCH_SLOT_SIZE), count: BATCH_SLOTS };
    for (let j = 0; j < BATCH_SLOTS; j++) iov.offsets[j] = j * BATCH_SLOT_SIZE;
    this.batchIov = iov;
    return iov;
  }

  /**
   * Give backlog datagrams to the guest, in order, each copied into its own
   * RX reservation. Returns false when the guest ran out of buffers (the
   * rest stays queued for onWritable).
   */
  private drainBacklog(): boolean {
    const ctx = this.ctx;
    const port = ctx.port;
    const flows = this.flows;
    const memory = this.batchIov === null ? null : (this.batchIov.buffers[0] as Uint8Array);
    for (; this.backlogHead < this.backlogTail; this.backlogHead++) {
      const j = this.backlogHead;
      const id = this.backlogFlow[j];
      if (memory === null || id === NO_FLOW || !flows.isLive(id, FlowProtocol.Udp)) continue;
      const length = this.backlogLength[j];
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
      port.commit(headers + length, this.writeHeaders(list, id, length));
      this.delivered(id, length);
    }
    this.backlogHead = 0;
    this.backlogTail = 0;
    return true;
  }

  private discardDatagram(fd: number): void {
    this.emptyIov.lengths[0] = 0;
    try {
      this.sockets.recvmsg(fd, this.emptyIov, 0, null, this.meta);
    } catch {
      // An error was reported instead; the error queue is read on EPOLLERR.
    }
  }

  /** Point rxIov at bytes [from, from+length) of the reservation. */
  private scatter(list: SegmentList, from: number, length: number): void {
    const iov = this.rxIov;
    iov.count = 0;
    let skip = from;
    let left = length;
    for (let i = 0; i < list.count && iov.count < IOV_ENTRIES; i++) {
      const segLength = list.lengths[i];
      if (skip >= segLength) {
        skip -= segLength;
        continue;
      }
      const n = left > 0 ? Math.min(segLength - skip, left) : 0;
      iov.buffers[iov.count] = list.buffers[i];
      iov.offsets[iov.count] = list.offsets[i] + skip;
      iov.lengths[iov.count] = n;
      iov.count++;
      left -= n;
      skip = 0;
      if (left <= 0) break;
    }
  }

  /**
   * Write Ethernet + IP + UDP headers for `dataLength` bytes of data already
   * in the reservation after them, from the flow's remote to the guest, with
   * the UDP checksum summed over the data in place. With checksum offload
   * the checksum is partial (pseudo-header only, NEEDS_CSUM). Returns the
   * OffloadInfo to commit the frame with (undefined: a complete checksum).
   */
  private writeHeaders(list: SegmentList, id: number, dataLength: number): OffloadInfo | undefined {
    const ctx = this.ctx;
    const flows = this.flows;
    const family = flows.family[id];
    const headers = family === 4 ? HEADERS_V4 : HEADERS_V6;
    const inPlace = list.lengths[0] >= headers;
    const out = inPlace ? list.buffers[0] : this.headerScratch;
    const base = inPlace ? list.offsets[0] : 0;
    const addressBase = id * ADDRESS_SLOT;
    const remote = flows.remoteAddress;
    const guest = flows.guestAddress;
    const udpLength = UDP_HEADER_LENGTH + dataLength;
    let at: number;
    let pseudo: number;
    if (family === 4) {
      at = emitEthernet(out, base, ctx.guestMac, ctx.config.ourMac, EtherType.Ipv4);
      at = emitIpv4Flow(out, at, remote, guest, addressBase, udpLength);
      pseudo = pseudoHeaderSumIpv4(remote, addressBase, guest, addressBase, IpProtocol.Udp, udpLength);
    } else {
      at = emitEthernet(out, base, ctx.guestMac, ctx.config.ourMac, EtherType.Ipv6);
      at = emitIpv6Flow(out, at, remote, guest, addressBase, udpLength);
      pseudo = pseudoHeaderSumIpv6(remote, addressBase, guest, addressBase, IpProtocol.Udp, udpLength);
    }
    setBe16(out, at, flows.remotePort[id]);
    setBe16(out, at + 2, flows.guestPort[id]);
    setBe16(out, at + 4, udpLength);
    setBe16(out, at + 6, 0);
    const offload = ctx.checksumOffload;
    if (offload) {
      // Partial checksum: the folded pseudo-header sum, completed by whoever needs it (see context.ts).
      setBe16(out, at + 6, foldSum(pseudo));
    } else {
      const checksum = finishChecksum(sumSegments(list, headers, dataLength, sumBytes(out, at, UDP_HEADER_LENGTH, pseudo)));
      setBe16(out, at + 6, checksum === 0 ? 0xffff : checksum);
    }
    if (!inPlace) list.copyIn(0, out, 0, headers);
    if (!offload) return undefined;
    return family === 4 ? UDP4_PARTIAL_CHECKSUM : UDP6_PARTIAL_CHECKSUM;
  }

  // ======================================================================
  // ICMP errors
  // ======================================================================

  /** Read the socket's error queue and relay what means something to the guest. */
  private drainErrors(fd: number, listener: number, flowId: number): void {
    const ctx = this.ctx;
    const data = ctx.scratch;
    for (let i = 0; i < ERRORS_PER_WAKEUP; i++) {
      let n: number;
      try {
        n = this.sockets.recvErrqueue(fd, data, this.errControl, this.errMeta, this.errAddr);
      } catch (e) {
        log.debug(`udp: error queue: ${errorCode(e)}`);
        return;
      }
      if (n < 0) return;
      const id = listener >= 0 ? this.flowOfListenerError(listener) : flowId;
      if (id === NO_FLOW || !parseExtendedError(this.errControl, this.errMeta[0], this.extended)) {
        ctx.counters.add(UdpEvent.IcmpErrorIgnored);
        continue;
      }
      const family = this.flows.family[id] as 4 | 6;
      if (!planIcmpError(family, this.extended, this.plan)) {
        ctx.counters.add(UdpEvent.IcmpErrorIgnored);
        continue;
      }
      const source = this.icmpSource(id);
      if (source === null) {
        ctx.counters.add(UdpEvent.IcmpErrorIgnored);
        continue;
      }
      const quoted = this.quoted;
      const base = id * ADDRESS_SLOT;
      quoted.family = family;
      quoted.guestOffset = base;
      quoted.remoteOffset = base;
      quoted.guestPort = this.flows.guestPort[id];
      quoted.remotePort = this.flows.remotePort[id];
      quoted.payloadLength = n;
      quoted.payloadAvailable = Math.min(n, data.length);
      if (sendIcmpError(ctx, this.plan, source, quoted)) {
        this.pending++;
        ctx.counters.add(UdpEvent.IcmpErrorRelayed);
      } else {
        countDrop(ctx.counters, DropReason.NoGuestBuffers);
      }
    }
  }

  /** The inbound flow an error on a listener belongs to (errAddr = the datagram's destination, the peer). */
  private flowOfListenerError(listener: number): number {
    const family = this.listenerFamily[listener] as 4 | 6;
    const length = this.errMeta[2];
    if (length < (family === 4 ? 16 : 24) || sockaddrFamily(this.errAddr) !== family) return NO_FLOW;
    const cfg = family === 4 ? this.ctx.config.ipv4 : this.ctx.config.ipv6;
    const remote = guestVisibleSource(this.ctx.config, family, this.errAddr, sockaddrAddressOffset(family), this.remoteScratch);
    if (cfg === null || remote === null) return NO_FLOW;
    return this.flows.lookup(FlowProtocol.Udp, family, family === 4 ? this.seen4 : this.seen6, 0, this.listenerGuestPort[listener], remote, 0, sockaddrPort(this.errAddr));
  }

  /**
   * The source of an ICMP error to the guest: the destination it used when
   * the host's peer itself (or loopback) answered; the gateway for local
   * errors and errors the host's own stack generated; else the real
   * offender (a router on the path, as the guest would see it without us).
   */
  private icmpSource(id: number): Uint8Array | null {
    const config = this.ctx.config;
    const family = this.flows.family[id] as 4 | 6;
    const cfg = family === 4 ? config.ipv4 : config.ipv6;
    if (cfg === null) return null;
    const length = family === 4 ? 4 : 16;
    const base = id * ADDRESS_SLOT;
    const remote = this.remoteScratch;
    for (let i = 0; i < length; i++) remote[i] = this.flows.remoteAddress[base + i];
    const error = this.extended;
    if (this.plan.fromGateway || error.offenderFamily !== family) return this.plan.fromGateway ? cfg.gateway : remote;
    const offender = error.offender;
    const peerAddress = id * SOCKADDR_IN6_LENGTH + sockaddrAddressOffset(family);
    if (equalAt(this.peer, peerAddress, offender, length)) return remote;
    if (family === 4 ? offender[0] === 127 : isIpv6LoopbackAt(offender, 0)) return remote;
    if (equalAt(offender, 0, cfg.address, length)) return cfg.gateway;
    return offender;
  }

  // ======================================================================
  // Flow control, timers, teardown
  // ======================================================================

  /** Stop reading fd until the guest posts RX buffers. */
  private block(fd: number): void {
    if (this.blocked.has(fd)) return;
    this.blocked.add(fd);
    this.ctx.counters.add(UdpEvent.RxBlocked);
    this.ctx.watcher?.modify(fd, 0);
  }

  /** The guest posted RX buffers: re-arm every blocked socket (level-triggered, so queued datagrams fire at once). */
  onWritable(): void {
    if (this.backlogHead < this.backlogTail) {
      const drained = this.drainBacklog();
      this.flush();
      if (!drained) return;
    }
    if (this.blocked.size === 0) return;
    const watcher = this.ctx.watcher;
    for (const fd of this.blocked) watcher?.modify(fd, EPOLLIN);
    this.blocked.clear();
  }

  /** Close UDP flows idle for config.udpIdleMs; call every STACK_TIMER_INTERVAL_MS. */
  onTimer(now = this.ctx.clock.now()): void {
    if (this.flows.countOf(FlowProtocol.Udp) === 0) return;
    this.flows.forEachDue(now, FlowProtocol.Udp, this.expireHandler);
  }

  private expireFlow(id: number): void {
    this.ctx.counters.add(UdpEvent.FlowExpired);
    this.closeFlow(id);
  }

  /** Close one flow (its socket, unless it shares a listener's). */
  closeFlow(id: number): void {
    if (!this.flows.isLive(id, FlowProtocol.Udp)) return;
    if (this.listenerOf[id] < 0) {
      const fd = this.flows.fd[id];
      if (fd >= 0) {
        this.ctx.watcher?.unwatch(fd);
        this.blocked.delete(fd);
        closeSocketQuietly(this.sockets, fd);
      }
    }
    for (let j = this.backlogHead; j < this.backlogTail; j++) if (this.backlogFlow[j] === id) this.backlogFlow[j] = NO_FLOW;
    this.listenerOf[id] = -1;
    this.flows.release(id);
  }

  /** Close every UDP flow and listening socket. */
  close(): void {
    for (let id = 0; id < this.flows.capacity; id++) this.closeFlow(id);
    for (let i = 0; i < this.listenerCount; i++) {
      const fd = this.listenerFd[i];
      if (fd < 0) continue;
      this.ctx.watcher?.unwatch(fd);
      this.blocked.delete(fd);
      closeSocketQuietly(this.sockets, fd);
    }
    this.listenerByFd.clear();
    this.listenerCount = 0;
    this.freeListenerSlots.length = 0;
  }

  /** Publish frames committed by this module (one notification per batch). */
  private flush(): void {
    if (this.pending === 0) return;
    this.pending = 0;
    this.ctx.port.flush();
  }

  /** SO_BINDTODEVICE to the outbound interface; a failure is logged rarely and ignored. */
  private bindToDevice(fd: number, name: string): void {
    try {
      this.sockets.setsockoptBytes(fd, SOL_SOCKET, SO_BINDTODEVICE, Buffer.from(name + '\0', 'latin1'));
    } catch (e) {
      rateLimited('warn', 'udp bind', () => `udp: SO_BINDTODEVICE ${name}: ${errorCode(e)}`, 1, 600_000);
    }
  }
}

/** emitIpv4 from addresses stored at a flow's slot offset (no subarray per datagram). */
function emitIpv4Flow(out: Uint8Array, at: number, src: Uint8Array, dst: Uint8Array, base: number, udpLength: number): number {
  const end = emitIpv4(out, at, ZERO16, ZERO16, IpProtocol.Udp, udpLength);
  for (let i = 0; i < 4; i++) {
    out[at + 12 + i] = src[base + i];
    out[at + 16 + i] = dst[base + i];
  }
  // The header checksum was computed over zero addresses: add them in.
  const old = be16(out, at + 10);
  const sum = (~old & 0xffff) + sumBytes(out, at + 12, 8);
  setBe16(out, at + 10, finishChecksum(sum));
  return end;
}

/** emitIpv6 from addresses stored at a flow's slot offset. */
function emitIpv6Flow(out: Uint8Array, at: number, src: Uint8Array, dst: Uint8Array, base: number, udpLength: number): number {
  const end = emitIpv6(out, at, ZERO16, ZERO16, IpProtocol.Udp, udpLength);
  for (let i = 0; i < 16; i++) {
    out[at + 8 + i] = src[base + i];
    out[at + 24 + i] = dst[base + i];
  }
  return end;
}

const ZERO16 = new Uint8Array(16);
