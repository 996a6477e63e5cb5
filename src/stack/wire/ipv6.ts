/**
 * IPv6 header view (RFC 8200) with a bounded walk over extension headers to
 * find the upper-layer protocol.
 */
import { be16, be32, setBe16, setBe32 } from './checksum';
import { IpProtocol } from './ipv4';
import { WireView } from './view';

export const IPV6_HEADER_LENGTH = 40;

/** At most this many extension headers are walked before giving up. */
export const MAX_EXTENSION_HEADERS = 8;

/** Why an IPv6 packet is unusable (0 = fine). */
export enum Ipv6Error {
  Ok = 0,
  Truncated = 1,
  BadVersion = 2,
  /** Payload length beyond the frame. */
  BadPayloadLength = 3,
  /** An extension header runs past the payload. */
  ExtensionTruncated = 4,
  /** More than MAX_EXTENSION_HEADERS extension headers. */
  TooManyExtensions = 5,
}

/** A reusable view of an IPv6 header at bytes[offset]. */
export class Ipv6View extends WireView {
  /** Set by findUpperLayer: the upper-layer protocol (IpProtocol.*). */
  upperProtocol = 0;
  /** Set by findUpperLayer: absolute offset of the upper-layer header. */
  upperOffset = 0;
  /** Set by findUpperLayer: true when a Fragment header was seen. */
  fragmented = false;

  /** Point the view at a new packet and forget findUpperLayer's results; returns this. */
  override reset(bytes: Uint8Array, offset: number, length: number): this {
    super.reset(bytes, offset, length);
    this.upperProtocol = 0;
    this.upperOffset = 0;
    this.fragmented = false;
    return this;
  }

  /** Check size, version and payload length; returns an Ipv6Error. */
  validate(): Ipv6Error {
    if (this.length < IPV6_HEADER_LENGTH || this.offset + this.length > this.bytes.length) return Ipv6Error.Truncated;
    if (this.version !== 6) return Ipv6Error.BadVersion;
    // Jumbograms (payload length 0 with a Hop-by-Hop option) are not carried.
    if (IPV6_HEADER_LENGTH + this.payloadLength > this.length) return Ipv6Error.BadPayloadLength;
    return Ipv6Error.Ok;
  }

  /**
   * Walk the extension headers (Hop-by-Hop, Routing, Fragment, Destination
   * Options, AH) and set upperProtocol/upperOffset/fragmented. Stops at the
   * first other next-header value (ESP and No Next Header included). Call
   * after validate(). Returns an Ipv6Error.
   */
  findUpperLayer(): Ipv6Error {
    const end = this.offset + IPV6_HEADER_LENGTH + this.payloadLength;
    let next = this.nextHeader;
    let at = this.offset + IPV6_HEADER_LENGTH;
    this.fragmented = false;
    for (let count = 0; ; count++) {
      let headerLength: number;
      switch (next) {
        case IpProtocol.HopByHop:
        case IpProtocol.Ipv6Route:
        case IpProtocol.Ipv6DestOpts:
          if (at + 2 > end) return Ipv6Error.ExtensionTruncated;
          headerLength = (this.bytes[at + 1] + 1) * 8;
          break;
        case IpProtocol.Ipv6Fragment:
          headerLength = 8;
          this.fragmented = true;
          break;
        case IpProtocol.Ah:
          if (at + 2 > end) return Ipv6Error.ExtensionTruncated;
          headerLength = (this.bytes[at + 1] + 2) * 4;
          break;
        default:
          this.upperProtocol = next;
          this.upperOffset = at;
          return Ipv6Error.Ok;
      }
      if (count >= MAX_EXTENSION_HEADERS) return Ipv6Error.TooManyExtensions;
      if (at + headerLength > end) return Ipv6Error.ExtensionTruncated;
      next = this.bytes[at];
      at += headerLength;
    }
  }

  get version(): number {
    return this.bytes[this.offset] >>> 4;
  }

  get trafficClass(): number {
    return (be16(this.bytes, this.offset) >>> 4) & 0xff;
  }

  get flowLabel(): number {
    return be32(this.bytes, this.offset) & 0xfffff;
  }

  get payloadLength(): number {
    return be16(this.bytes, this.offset + 4);
  }

  set payloadLength(value: number) {
    setBe16(this.bytes, this.offset + 4, value);
  }

  get nextHeader(): number {
    return this.bytes[this.offset + 6];
  }

  get hopLimit(): number {
    return this.bytes[this.offset + 7];
  }

  /** Absolute offset of the source address. */
  get srcOffset(): number {
    return this.offset + 8;
  }

  /** Absolute offset of the destination address. */
  get dstOffset(): number {
    return this.offset + 24;
  }

  /** Upper-layer length (from upperOffset to the end of the payload). */
  get upperLength(): number {
    return this.offset + IPV6_HEADER_LENGTH + this.payloadLength - this.upperOffset;
  }
}

/**
 * Write a 40-byte IPv6 header (no extension headers) at bytes[offset].
 * Returns the payload offset.
 */
export function emitIpv6(
  bytes: Uint8Array,
  offset: number,
  src: Uint8Array,
  dst: Uint8Array,
  nextHeader: number,
  payloadLength: number,
  hopLimit = 64,
  trafficClass = 0,
  flowLabel = 0,
): number {
  setBe32(bytes, offset, ((6 << 28) | ((trafficClass & 0xff) << 20) | (flowLabel & 0xfffff)) >>> 0);
  setBe16(bytes, offset + 4, payloadLength);
  bytes[offset + 6] = nextHeader;
  bytes[offset + 7] = hopLimit;
  for (let i = 0; i < 16; i++) bytes[offset + 8 + i] = src[i];
  for (let i = 0; i < 16; i++) bytes[offset + 24 + i] = dst[i];
  return offset + IPV6_HEADER_LENGTH;
}
