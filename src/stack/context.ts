/**
 * State shared by the stack's protocol handlers (ARP, DHCP, ICMP echo,
 * NDP/DHCPv6, TCP, UDP): configuration, where frames go, counters, the
 * guest's MAC, scratch buffers, a clock, readiness registration for host
 * sockets, and helpers that build Ethernet + IPv4/IPv6 (+ UDP) frames into
 * the frontend's reserved space.
 *
 * Building a frame to the guest:
 *   const cap = ctx.openFrame(maxLength);          // 0: no guest buffers
 *   // write the L4 payload at ctx.out[ctx.outOffset + UDP4_DATA_OFFSET ...]
 *   ctx.finishUdp4(dstMac, src, dst, 67, 68, dataLength); // headers + commit
 * or, for another L4, write the L4 message at IPV4_L4_OFFSET / IPV6_L4_OFFSET
 * and call finishIpv4/finishIpv6 (the caller fills the L4 checksum; see
 * pseudoHeaderSumIpv4/6 in wire/checksum.ts). The window is the
 * reservation's first segment when it is big enough, else a scratch buffer
 * copied in at commit.
 */
import type { Native } from '../sys/native';
import type { CounterBlock } from '../sys/counters';
import type { StackConfig } from './config';
import type { FramePort, OffloadInfo, SegmentList } from '../io/frame-io';
import { OFFLOAD_F_NEEDS_CSUM } from '../io/frame-io';
import { BROADCAST_MAC, ETHERNET_HEADER_LENGTH, EtherType, emitEthernet } from './wire/ethernet';
import { IPV4_HEADER_LENGTH, IpProtocol, Ipv4View, emitIpv4 } from './wire/ipv4';
import { IPV6_HEADER_LENGTH, Ipv6View, emitIpv6 } from './wire/ipv6';
import { UDP_HEADER_LENGTH, emitUdp } from './wire/udp';
import { pseudoHeaderSumIpv4, pseudoHeaderSumIpv6 } from './wire/checksum';

/** Offset of the L4 header in a frame built with finishIpv4. */
export const IPV4_L4_OFFSET = ETHERNET_HEADER_LENGTH + IPV4_HEADER_LENGTH;
/** Offset of the L4 header in a frame built with finishIpv6. */
export const IPV6_L4_OFFSET = ETHERNET_HEADER_LENGTH + IPV6_HEADER_LENGTH;
/** Offset of UDP data in a frame built with finishUdp4. */
export const UDP4_DATA_OFFSET = IPV4_L4_OFFSET + UDP_HEADER_LENGTH;
/** Offset of UDP data in a frame built with finishUdp6. */
export const UDP6_DATA_OFFSET = IPV6_L4_OFFSET + UDP_HEADER_LENGTH;

/** Largest frame the stack handles in scratch: 64 KiB IP packet + Ethernet header. */
export const MAX_SCRATCH_FRAME = 65535 + ETHERNET_HEADER_LENGTH + IPV6_HEADER_LENGTH;

/** Bytes copied up front when a guest frame's headers are split across segments. */
export const SPLIT_HEADER_COPY = 256;

/**
 * Offload for a TCP segment or UDP datagram to the guest through a port
 * with `checksumOffload`: NEEDS_CSUM with a partial checksum (the field holds
 * the folded pseudo-header sum; csum_start/csum_offset locate it, virtio 1.x
 * 5.1.6.4). The guest kernel takes it as CHECKSUM_PARTIAL: delivered locally
 * it is not verified (ferry took the payload from a host socket intact), and
 * forwarded on by the guest the checksum is completed then, so it stays
 * correct everywhere (DATA_VALID would leave a wrong sum on forwarded
 * packets). ferry's IPv4 headers have no options, so the L4 header starts at
 * 14 + 20 (IPv4) or 14 + 40 (IPv6). Shared and frozen: ports only read them.
 */
function partialChecksumOffload(l4Start: number, checksumOffset: number): OffloadInfo {
  return Object.freeze({ flags: OFFLOAD_F_NEEDS_CSUM, gsoType: 0, hdrLen: 0, gsoSize: 0, csumStart: l4Start, csumOffset: checksumOffset });
}
export const TCP4_PARTIAL_CHECKSUM = partialChecksumOffload(IPV4_L4_OFFSET, 16);
export const TCP6_PARTIAL_CHECKSUM = partialChecksumOffload(IPV6_L4_OFFSET, 16);
export const UDP4_PARTIAL_CHECKSUM = partialChecksumOffload(IPV4_L4_OFFSET, 6);
export const UDP6_PARTIAL_CHECKSUM = partialChecksumOffload(IPV6_L4_OFFSET, 6);

/** Milliseconds from some fixed point; monotonic. */
export interface Clock {
  now(): number;
}

/** The default clock: performance.now(). */
export const monotonicClock: Clock = { now: () => performance.now() };

/** Called by the worker's event loop when a watched fd is ready. */
export interface ReadyHandler {
  onReady(fd: number, events: number): void;
}

/**
 * Readiness registration owned by the worker (which runs the Poller): the
 * stack registers its host sockets here and is called back on readiness.
 * Events are epoll bits (EPOLLIN = 1, EPOLLOUT = 4, EPOLLERR = 8, EPOLLHUP = 16).
 */
export interface FdWatcher {
  watch(fd: number, events: number, handler: ReadyHandler): void;
  modify(fd: number, events: number): void;
  unwatch(fd: number): void;
}

/** The addon calls the stack uses (a subset, so unit tests can pass a fake). */
export type StackSockets = Pick<Native, 'socket' | 'bind' | 'connect' | 'read' | 'write' | 'close' | 'getsockname' | 'setsockoptInt' | 'setsockoptBytes'>;

/**
 * One frame from the guest with its first bytes contiguous: either in place
 * (the first segment holds the whole frame) or copied into a scratch
 * buffer. `ensure(n)` extends the contiguous part without moving bytes
 * already there, so views reset on `bytes` stay valid. Reused per frame.
 */
export class RxFrame {
  /** The original gather list (valid only during receiveFrame). */
  segments: SegmentList | null = null;
  offload: OffloadInfo | null = null;
  /** Contiguous bytes of the frame: frame byte i is bytes[base + i] for i < available. */
  bytes: Uint8Array;
  base = 0;
  available = 0;
  /** Whole frame length. */
  length = 0;
  private inScratch = false;

  constructor(private readonly scratch: Uint8Array) {
    this.bytes = scratch;
  }

  /**
   * Start on a new frame: view it in place when the first segment holds it
   * all, else copy the first SPLIT_HEADER_COPY bytes. Returns false when the
   * gather list is inconsistent (a range outside its buffer).
   */
  begin(segments: SegmentList, offload: OffloadInfo): boolean {
    this.segments = segments;
    this.offload = offload;
    let total = 0;
    for (let i = 0; i < segments.count; i++) {
      const offset = segments.offsets[i];
      const len = segments.lengths[i];
      if (!(offset >= 0 && len >= 0 && offset + len <= segments.buffers[i].length)) return false;
      total += len;
    }
    this.length = total;
    if (segments.count > 0 && segments.lengths[0] === total) {
      this.bytes = segments.buffers[0];
      this.base = segments.offsets[0];
      this.available = total;
      this.inScratch = false;
      return true;
    }
    this.bytes = this.scratch;
    this.base = 0;
    this.inScratch = true;
    this.available = segments.copyOut(0, this.scratch, 0, Math.min(total, SPLIT_HEADER_COPY, this.scratch.length));
    return true;
  }

  /**
   * Make the first n bytes of the frame (at most `length`) contiguous.
   * Returns false when the frame is shorter than n or n exceeds the scratch.
   */
  ensure(n: number): boolean {
    if (n > this.length) return false;
    if (n <= this.available) return true;
    if (!this.inScratch || this.segments === null || n > this.scratch.length) return false;
    const copied = this.segments.copyOut(this.available, this.scratch, this.available, n - this.available);
    this.available += copied;
    return this.available >= n;
  }

  /** Make the whole frame contiguous; false when it does not fit the scratch. */
  ensureWhole(): boolean {
    return this.ensure(this.length);
  }

  /** True when the guest left the L4 checksum partial (VIRTIO_NET_HDR_F_NEEDS_CSUM): don't verify it. */
  get checksumPartial(): boolean {
    return this.offload !== null && (this.offload.flags & OFFLOAD_F_NEEDS_CSUM) !== 0;
  }

  /** Drop references to guest memory after the frame is handled. */
  end(): void {
    this.segments = null;
    this.offload = null;
    this.bytes = this.scratch;
  }
}

/**
 * The IP packet being dispatched: which family, its header view and where
 * the upper layer starts. Filled by the stack's dispatch, reused per frame.
 * Offsets are absolute in `frame.bytes`.
 */
export class IpPacket {
  family: 4 | 6 = 4;
  readonly ipv4 = new Ipv4View();
  readonly ipv6 = new Ipv6View();
  /** Upper-layer protocol (IpProtocol.*). */
  protocol = 0;
  l4Offset = 0;
  /** Upper-layer bytes according to the IP header (padding excluded). */
  l4Length = 0;

  /** Absolute offset of the source address in frame.bytes. */
  get srcOffset(): number {
    return this.family === 4 ? this.ipv4.srcOffset : this.ipv6.srcOffset;
  }

  /** Absolute offset of the destination address in frame.bytes. */
  get dstOffset(): number {
    return this.family === 4 ? this.ipv4.dstOffset : this.ipv6.dstOffset;
  }

  /** Unfolded pseudo-header sum for the upper layer (l4Length bytes) of this packet. */
  pseudoSum(bytes: Uint8Array): number {
    return this.family === 4
      ? pseudoHeaderSumIpv4(bytes, this.ipv4.srcOffset, bytes, this.ipv4.dstOffset, this.protocol, this.l4Length)
      : pseudoHeaderSumIpv6(bytes, this.ipv6.srcOffset, bytes, this.ipv6.dstOffset, this.protocol, this.l4Length);
  }
}

/** What a StackContext is built from (clock, watcher and sockets optional: tests leave them out). */
export interface StackContextOptions {
  config: StackConfig;
  port: FramePort;
  counters: CounterBlock;
  clock?: Clock;
  watcher?: FdWatcher | null;
  sockets?: StackSockets | null;
}

/** Everything a protocol handler needs; one per worker (per stack). */
export class StackContext {
  readonly config: StackConfig;
  readonly port: FramePort;
  readonly counters: CounterBlock;
  readonly clock: Clock;
  /** Readiness registration for host sockets, or null (no host sockets, e.g. unit tests). */
  readonly watcher: FdWatcher | null;
  /** Addon socket calls, or null (ICMP echo and the TCP/UDP translators then drop what needs a host socket). */
  readonly sockets: StackSockets | null;
  /** The guest's MAC: from the configuration, else learnt from its frames; broadcast until known. */
  readonly guestMac = new Uint8Array(6);
  guestMacKnown = false;
  /** Scratch for split guest frames (RxFrame). */
  readonly rxScratch = new Uint8Array(MAX_SCRATCH_FRAME);
  /** Scratch for building frames when the reservation's first segment is too small. */
  readonly txScratch = new Uint8Array(MAX_SCRATCH_FRAME);
  /** General scratch for handlers (e.g. socket reads), never held across calls. */
  readonly scratch = new Uint8Array(MAX_SCRATCH_FRAME);

  /** The writable window of the open frame: frame byte i is out[outOffset + i]. */
  out: Uint8Array;
  outOffset = 0;
  outCapacity = 0;
  private reservation: SegmentList | null = null;
  private outInScratch = false;
  /** Committed frames not yet flushed. */
  private pending = 0;

  constructor(options: StackContextOptions) {
    this.config = options.config;
    this.port = options.port;
    this.counters = options.counters;
    this.clock = options.clock ?? monotonicClock;
    this.watcher = options.watcher ?? null;
    this.sockets = options.sockets ?? null;
    this.out = this.txScratch;
    if (this.config.guestMac !== null) {
      this.guestMac.set(this.config.guestMac.subarray(0, 6));
      this.guestMacKnown = true;
    } else {
      this.guestMac.set(BROADCAST_MAC);
    }
  }

  /**
   * Learn the guest's MAC from a frame's source address (unless configured).
   * Group addresses are never learnt. Returns true when it changed.
   */
  learnGuestMac(bytes: Uint8Array, offset: number): boolean {
    if (this.config.guestMac !== null || (bytes[offset] & 1) !== 0) return false;
    const mac = this.guestMac;
    if (
      this.guestMacKnown &&
      mac[0] === bytes[offset] && mac[1] === bytes[offset + 1] && mac[2] === bytes[offset + 2] &&
      mac[3] === bytes[offset + 3] && mac[4] === bytes[offset + 4] && mac[5] === bytes[offset + 5]
    ) {
      return false;
    }
    if ((bytes[offset] | bytes[offset + 1] | bytes[offset + 2] | bytes[offset + 3] | bytes[offset + 4] | bytes[offset + 5]) === 0) return false;
    for (let i = 0; i < 6; i++) mac[i] = bytes[offset + i];
    this.guestMacKnown = true;
    return true;
  }

  /**
   * Reserve a frame of up to maxLength bytes and open a contiguous window
   * (out/outOffset) on it. Returns the window's capacity (<= maxLength), or
   * 0 when the guest has no buffers. Exactly one frame is open at a time.
   */
  openFrame(maxLength: number): number {
    if (this.reservation !== null) this.cancelFrame();
    const list = this.port.reserve(maxLength);
    if (list === null || list.count === 0 || list.totalLength <= 0) {
      if (list !== null) this.port.cancel();
      return 0;
    }
    this.reservation = list;
    const want = Math.min(maxLength, list.totalLength);
    if (list.lengths[0] >= want) {
      this.out = list.buffers[0];
      this.outOffset = list.offsets[0];
      this.outInScratch = false;
      this.outCapacity = want;
    } else {
      this.out = this.txScratch;
      this.outOffset = 0;
      this.outInScratch = true;
      this.outCapacity = Math.min(want, this.txScratch.length);
    }
    return this.outCapacity;
  }

  /**
   * True when TCP/UDP frames to the guest may carry a partial checksum
   * (pseudo-header only) committed with the *_PARTIAL_CHECKSUM offloads (the
   * port says so; read per frame, it follows feature renegotiation).
   */
  get checksumOffload(): boolean {
    return this.port.checksumOffload === true;
  }

  /** Publish the open frame with its real length (<= outCapacity). */
  commitFrame(length: number, offload?: OffloadInfo): void {
    const list = this.reservation;
    if (list === null) return;
    this.reservation = null;
    if (this.outInScratch) list.copyIn(0, this.txScratch, 0, length);
    this.port.commit(length, offload);
    this.pending++;
  }

  /** Give the open frame back unused. */
  cancelFrame(): void {
    if (this.reservation === null) return;
    this.reservation = null;
    this.port.cancel();
  }

  /** Flush committed frames to the guest (once per batch). */
  flush(): void {
    if (this.pending === 0) return;
    this.pending = 0;
    this.port.flush();
  }

  /** Committed frames waiting for flush(). */
  get pendingFrames(): number {
    return this.pending;
  }

  /**
   * Finish and commit an Ethernet + IPv4 frame whose L4 message of l4Length
   * bytes (checksum already filled) is at out[outOffset + IPV4_L4_OFFSET].
   */
  finishIpv4(dstMac: Uint8Array, src: Uint8Array, dst: Uint8Array, protocol: number, l4Length: number, ttl = 64): void {
    const at = emitEthernet(this.out, this.outOffset, dstMac, this.config.ourMac, EtherType.Ipv4);
    emitIpv4(this.out, at, src, dst, protocol, l4Length, ttl);
    this.commitFrame(IPV4_L4_OFFSET + l4Length);
  }

  /**
   * Finish and commit an Ethernet + IPv6 frame whose L4 message of l4Length
   * bytes (checksum already filled) is at out[outOffset + IPV6_L4_OFFSET].
   */
  finishIpv6(dstMac: Uint8Array, src: Uint8Array, dst: Uint8Array, nextHeader: number, l4Length: number, hopLimit = 64): void {
    const at = emitEthernet(this.out, this.outOffset, dstMac, this.config.ourMac, EtherType.Ipv6);
    emitIpv6(this.out, at, src, dst, nextHeader, l4Length, hopLimit);
    this.commitFrame(IPV6_L4_OFFSET + l4Length);
  }

  /**
   * Finish and commit an Ethernet + IPv4 + UDP frame whose dataLength bytes
   * of data are at out[outOffset + UDP4_DATA_OFFSET]; fills the UDP checksum.
   */
  finishUdp4(dstMac: Uint8Array, src: Uint8Array, dst: Uint8Array, srcPort: number, dstPort: number, dataLength: number): void {
    const udpLength = UDP_HEADER_LENGTH + dataLength;
    emitUdp(this.out, this.outOffset + IPV4_L4_OFFSET, srcPort, dstPort, dataLength, pseudoHeaderSumIpv4(src, 0, dst, 0, IpProtocol.Udp, udpLength));
    this.finishIpv4(dstMac, src, dst, IpProtocol.Udp, udpLength);
  }

  /**
   * Finish and commit an Ethernet + IPv6 + UDP frame whose dataLength bytes
   * of data are at out[outOffset + UDP6_DATA_OFFSET]; fills the UDP checksum.
   */
  finishUdp6(dstMac: Uint8Array, src: Uint8Array, dst: Uint8Array, srcPort: number, dstPort: number, dataLength: number, hopLimit = 64): void {
    const udpLength = UDP_HEADER_LENGTH + dataLength;
    emitUdp(this.out, this.outOffset + IPV6_L4_OFFSET, srcPort, dstPort, dataLength, pseudoHeaderSumIpv6(src, 0, dst, 0, IpProtocol.Udp, udpLength));
    this.finishIpv6(dstMac, src, dst, IpProtocol.Udp, udpLength, hopLimit);
  }
}
