/**
 * Fakes and frame builders for unit tests of the stack: a FramePort that
 * collects committed frames, a test StackConfig on documentation addresses,
 * and helpers that build guest frames with correct checksums.
 */
import { type FramePort, type OffloadInfo, SegmentList } from '../../../src/io/frame-io';
import type { StackConfig } from '../../../src/stack/config';
import { internetChecksum, pseudoHeaderSumIpv4, pseudoHeaderSumIpv6, setBe16, finishChecksum, sumBytes } from '../../../src/stack/wire/checksum';

/** A FramePort whose reservations are `segmentSizes` chunks; committed frames are copied into `frames`. */
export class FakeFramePort implements FramePort {
  frames: Uint8Array[] = [];
  flushes = 0;
  reserved = 0;
  cancelled = 0;
  /** When false, reserve() returns null (guest has no buffers). */
  available = true;
  onWritable: (() => void) | null = null;
  readonly maxFrameLength = 65535 + 14;
  private list = new SegmentList(16);
  private open = false;

  constructor(public segmentSizes: number[] = [65536 + 64]) {}

  reserve(maxLength: number): SegmentList | null {
    if (this.open) throw new Error('reserve() while a frame is open');
    if (!this.available) return null;
    this.list.clear();
    let left = maxLength;
    for (const size of this.segmentSizes) {
      if (left <= 0) break;
      const n = Math.min(size, left);
      // A larger buffer than the range, at a non-zero offset, like guest memory.
      const buffer = new Uint8Array(n + 32).fill(0xee);
      this.list.push(buffer, 16, n);
      left -= n;
    }
    this.open = true;
    this.reserved++;
    return this.list;
  }

  commit(length: number, _offload?: OffloadInfo): void {
    if (!this.open) throw new Error('commit() without reserve()');
    if (length > this.list.totalLength) throw new Error('commit() longer than the reservation');
    const frame = new Uint8Array(length);
    this.list.copyOut(0, frame, 0, length);
    this.frames.push(frame);
    this.open = false;
  }

  cancel(): void {
    this.open = false;
    this.cancelled++;
  }

  flush(): void {
    this.flushes++;
  }
}

export const NO_OFFLOAD: OffloadInfo = { flags: 0, gsoType: 0, hdrLen: 0, gsoSize: 0, csumStart: 0, csumOffset: 0 };

export const OUR_MAC = Uint8Array.from([0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55]);
export const GUEST_MAC = Uint8Array.from([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
export const GUEST_V4 = Uint8Array.from([192, 0, 2, 1]);
export const GATEWAY_V4 = Uint8Array.from([192, 0, 2, 254]);
export const DNS_V4 = Uint8Array.from([198, 51, 100, 53]);
export const GUEST_V6 = Uint8Array.from([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
export const GATEWAY_V6 = Uint8Array.from([0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);

/** A StackConfig on documentation addresses; override fields with `patch`. */
export function testConfig(patch: Partial<StackConfig> = {}): StackConfig {
  return {
    ourMac: OUR_MAC,
    guestMac: null,
    mtu: 65520,
    ipv4: {
      address: GUEST_V4,
      prefixLength: 24,
      gateway: GATEWAY_V4,
      dns: [DNS_V4],
      mapHostLoopback: GATEWAY_V4,
      mapGuestAddr: null,
      dnsForward: null,
      dnsHost: null,
    },
    ipv6: {
      address: GUEST_V6,
      prefixLength: 64,
      gateway: GATEWAY_V6,
      linkLocal: GATEWAY_V6,
      dns: [],
      mapHostLoopback: GATEWAY_V6,
      mapGuestAddr: null,
      dnsForward: null,
      dnsHost: null,
    },
    searchDomains: ['example.com', 'lab.example.com'],
    interfaceName: null,
    dhcp: true,
    dhcpv6: true,
    ndp: true,
    ra: true,
    maxFlows: 1024,
    udpIdleMs: 180_000,
    ...patch,
  };
}

/** Concatenate byte arrays. */
export function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Ethernet header + payload. */
export function ethernetFrame(dst: Uint8Array, src: Uint8Array, etherType: number, payload: Uint8Array): Uint8Array {
  const h = new Uint8Array(14);
  h.set(dst, 0);
  h.set(src, 6);
  setBe16(h, 12, etherType);
  return concat(h, payload);
}

/** An IPv4 header (no options) with checksum, followed by payload. */
export function ipv4Packet(src: Uint8Array, dst: Uint8Array, protocol: number, payload: Uint8Array, ttl = 64): Uint8Array {
  const h = new Uint8Array(20);
  h[0] = 0x45;
  setBe16(h, 2, 20 + payload.length);
  setBe16(h, 6, 0x4000);
  h[8] = ttl;
  h[9] = protocol;
  h.set(src, 12);
  h.set(dst, 16);
  setBe16(h, 10, internetChecksum(h, 0, 20));
  return concat(h, payload);
}

/** An IPv6 header followed by payload. */
export function ipv6Packet(src: Uint8Array, dst: Uint8Array, nextHeader: number, payload: Uint8Array, hopLimit = 64): Uint8Array {
  const h = new Uint8Array(40);
  h[0] = 0x60;
  setBe16(h, 4, payload.length);
  h[6] = nextHeader;
  h[7] = hopLimit;
  h.set(src, 8);
  h.set(dst, 24);
  return concat(h, payload);
}

/** A UDP datagram with checksum for the given family's pseudo-header. */
export function udpDatagram(src: Uint8Array, dst: Uint8Array, srcPort: number, dstPort: number, data: Uint8Array): Uint8Array {
  const d = new Uint8Array(8 + data.length);
  setBe16(d, 0, srcPort);
  setBe16(d, 2, dstPort);
  setBe16(d, 4, d.length);
  d.set(data, 8);
  const pseudo = src.length === 4 ? pseudoHeaderSumIpv4(src, 0, dst, 0, 17, d.length) : pseudoHeaderSumIpv6(src, 0, dst, 0, 17, d.length);
  const c = finishChecksum(sumBytes(d, 0, d.length, pseudo));
  setBe16(d, 6, c === 0 ? 0xffff : c);
  return d;
}

/** An ICMP (v4: pseudo null) or ICMPv6 echo message with checksum. */
export function icmpEcho(type: number, id: number, seq: number, data: Uint8Array, v6?: { src: Uint8Array; dst: Uint8Array }): Uint8Array {
  const m = new Uint8Array(8 + data.length);
  m[0] = type;
  setBe16(m, 4, id);
  setBe16(m, 6, seq);
  m.set(data, 8);
  const pseudo = v6 ? pseudoHeaderSumIpv6(v6.src, 0, v6.dst, 0, 58, m.length) : 0;
  setBe16(m, 2, finishChecksum(sumBytes(m, 0, m.length, pseudo)));
  return m;
}

/**
 * A SegmentList over `frame`, split at the given cut points, each piece in
 * its own larger buffer at a non-zero offset (as guest memory would be).
 */
export function segmentsOf(frame: Uint8Array, cuts: number[] = []): SegmentList {
  const points = [0, ...cuts.filter((c) => c > 0 && c < frame.length), frame.length];
  const list = new SegmentList(points.length);
  for (let i = 0; i + 1 < points.length; i++) {
    const piece = frame.subarray(points[i], points[i + 1]);
    const buffer = new Uint8Array(piece.length + 40).fill(0xcc);
    buffer.set(piece, 24);
    list.push(buffer, 24, piece.length);
  }
  return list;
}

/** Frames captured with tcpdump between two namespaces (veth with tx checksum offload off, so checksums are complete). */
export const CAPTURED = {
  udp4:
    '8e0ee3063e496aa5c806ec0308004500003275b7400040114100c0000201c00002029bcf14e9001e62e6666572727920636865636b73756d20766563746f7221',
  icmpEchoRequest:
    '8e0ee3063e496aa5c806ec0308004500002d76f3400040013fd9c0000201c00002020800ae1a959800016162636465666768696a6b6c6d6e6f7071',
  icmpv6PortUnreachable:
    '6aa5c806ec038e0ee3063e4986dd6001dbd7003b3a4020010db800000000000000000000000220010db80000000000000000000000010104f1f40000000060013fec000b114020010db800000000000000000000000120010db80000000000000000000000029ff50007000b31026f6464',
  tcpSyn:
    '8e0ee3063e496aa5c806ec0308004500003c64114000400652a7c0000201c000020291b800093d2960f300000000a002faf044d90000020405b40402080a16803dd1000000000103030a',
};

/** Bytes from a hex string. */
export function hex(text: string): Uint8Array {
  return Uint8Array.from(Buffer.from(text, 'hex'));
}

/** An Ethernet/IPv4 ARP packet (28 bytes). */
export function arpPacket(op: number, senderMac: Uint8Array, senderIp: Uint8Array, targetMac: Uint8Array, targetIp: Uint8Array): Uint8Array {
  const b = new Uint8Array(28);
  setBe16(b, 0, 1);
  setBe16(b, 2, 0x0800);
  b[4] = 6;
  b[5] = 4;
  setBe16(b, 6, op);
  b.set(senderMac, 8);
  b.set(senderIp, 14);
  b.set(targetMac, 18);
  b.set(targetIp, 24);
  return b;
}
