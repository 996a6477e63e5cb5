/**
 * IPv4 header view (RFC 791).
 */
import { be16, internetChecksum, setBe16 } from './checksum';
import { WireView } from './view';

export const IPV4_HEADER_LENGTH = 20;

/** IP protocol / IPv6 next-header numbers (IANA) the stack looks at. */
export const IpProtocol = {
  HopByHop: 0,
  Icmp: 1,
  Tcp: 6,
  Udp: 17,
  Ipv6Route: 43,
  Ipv6Fragment: 44,
  Esp: 50,
  Ah: 51,
  Icmpv6: 58,
  Ipv6NoNext: 59,
  Ipv6DestOpts: 60,
} as const;

/** Why an IPv4 header is unusable (0 = fine). */
export enum Ipv4Error {
  Ok = 0,
  Truncated = 1,
  BadVersion = 2,
  /** IHL below 5 or the header longer than the bytes at hand. */
  BadIhl = 3,
  /** Total length below the header length or beyond the frame. */
  BadTotalLength = 4,
  BadChecksum = 5,
}

/**
 * A reusable view of an IPv4 header at bytes[offset]; length = bytes available
 * from offset (the rest of the frame, possibly padded).
 */
export class Ipv4View extends WireView {
  /** Check version, IHL, total length and header checksum; returns an Ipv4Error. */
  validate(): Ipv4Error {
    if (this.length < IPV4_HEADER_LENGTH || this.offset + this.length > this.bytes.length) return Ipv4Error.Truncated;
    if (this.version !== 4) return Ipv4Error.BadVersion;
    const headerLength = this.headerLength;
    if (headerLength < IPV4_HEADER_LENGTH || headerLength > this.length) return Ipv4Error.BadIhl;
    const total = this.totalLength;
    if (total < headerLength || total > this.length) return Ipv4Error.BadTotalLength;
    if (internetChecksum(this.bytes, this.offset, headerLength) !== 0) return Ipv4Error.BadChecksum;
    return Ipv4Error.Ok;
  }

  get version(): number {
    return this.bytes[this.offset] >>> 4;
  }

  /** Header length in bytes (IHL * 4). */
  get headerLength(): number {
    return (this.bytes[this.offset] & 0x0f) * 4;
  }

  get tos(): number {
    return this.bytes[this.offset + 1];
  }

  get totalLength(): number {
    return be16(this.bytes, this.offset + 2);
  }

  set totalLength(value: number) {
    setBe16(this.bytes, this.offset + 2, value);
  }

  get identification(): number {
    return be16(this.bytes, this.offset + 4);
  }

  get dontFragment(): boolean {
    return (this.bytes[this.offset + 6] & 0x40) !== 0;
  }

  get moreFragments(): boolean {
    return (this.bytes[this.offset + 6] & 0x20) !== 0;
  }

  /** Fragment offset in bytes. */
  get fragmentOffset(): number {
    return (be16(this.bytes, this.offset + 6) & 0x1fff) * 8;
  }

  /** True for any fragment (first, middle or last). */
  get isFragment(): boolean {
    return this.moreFragments || this.fragmentOffset !== 0;
  }

  get ttl(): number {
    return this.bytes[this.offset + 8];
  }

  set ttl(value: number) {
    this.bytes[this.offset + 8] = value;
  }

  get protocol(): number {
    return this.bytes[this.offset + 9];
  }

  get checksum(): number {
    return be16(this.bytes, this.offset + 10);
  }

  /** Absolute offset of the source address. */
  get srcOffset(): number {
    return this.offset + 12;
  }

  /** Absolute offset of the destination address. */
  get dstOffset(): number {
    return this.offset + 16;
  }

  /** Absolute offset of the payload. */
  get payloadOffset(): number {
    return this.offset + this.headerLength;
  }

  /** Payload length according to the total length field. */
  get payloadLength(): number {
    return this.totalLength - this.headerLength;
  }

  /** Recompute and store the header checksum. */
  fillChecksum(): void {
    setBe16(this.bytes, this.offset + 10, 0);
    setBe16(this.bytes, this.offset + 10, internetChecksum(this.bytes, this.offset, this.headerLength));
  }
}

/**
 * Write a 20-byte IPv4 header (no options, DF set, identification 0 as
 * RFC 6864 allows for atomic datagrams) with its checksum at bytes[offset].
 * Returns the payload offset.
 */
export function emitIpv4(
  bytes: Uint8Array,
  offset: number,
  src: Uint8Array,
  dst: Uint8Array,
  protocol: number,
  payloadLength: number,
  ttl = 64,
  tos = 0,
): number {
  bytes[offset] = 0x45;
  bytes[offset + 1] = tos;
  setBe16(bytes, offset + 2, IPV4_HEADER_LENGTH + payloadLength);
  setBe16(bytes, offset + 4, 0);
  setBe16(bytes, offset + 6, 0x4000);
  bytes[offset + 8] = ttl;
  bytes[offset + 9] = protocol;
  setBe16(bytes, offset + 10, 0);
  for (let i = 0; i < 4; i++) bytes[offset + 12 + i] = src[i];
  for (let i = 0; i < 4; i++) bytes[offset + 16 + i] = dst[i];
  setBe16(bytes, offset + 10, internetChecksum(bytes, offset, IPV4_HEADER_LENGTH));
  return offset + IPV4_HEADER_LENGTH;
}
