/**
 * ICMPv6 (RFC 4443) header view and the checksum over the IPv6
 * pseudo-header (RFC 8200 8.1). The view is reusable: `reset()` points it at
 * new bytes, no allocation per packet. Echo messages use IcmpView (icmp.ts).
 */
import { be16, finishChecksum, pseudoHeaderSumIpv6, setBe16, sumBytes } from './checksum';
import { WireView } from './view';

export const ICMPV6_NEXT_HEADER = 58;

export const Icmpv6Type = {
  DEST_UNREACHABLE: 1,
  PACKET_TOO_BIG: 2,
  TIME_EXCEEDED: 3,
  PARAMETER_PROBLEM: 4,
  ECHO_REQUEST: 128,
  ECHO_REPLY: 129,
  MLD_QUERY: 130,
  MLD_REPORT: 131,
  MLD_DONE: 132,
  ROUTER_SOLICITATION: 133,
  ROUTER_ADVERTISEMENT: 134,
  NEIGHBOR_SOLICITATION: 135,
  NEIGHBOR_ADVERTISEMENT: 136,
  REDIRECT: 137,
  MLDV2_REPORT: 143,
} as const;

/** Why an ICMPv6 message is unusable (0 = fine). */
export enum Icmpv6Error {
  Ok = 0,
  Truncated = 1,
  BadChecksum = 2,
}

export const ICMPV6_HEADER_LENGTH = 4;

/**
 * ICMPv6 checksum of the message at msg[offset, offset+length) between src
 * and dst (16-byte addresses at their offsets). The checksum field inside the
 * message must be zero when computing, or its current value when verifying
 * (then a correct message yields 0).
 */
export function icmpv6Checksum(src: Uint8Array, srcOffset: number, dst: Uint8Array, dstOffset: number, msg: Uint8Array, offset: number, length: number): number {
  const pseudo = pseudoHeaderSumIpv6(src, srcOffset, dst, dstOffset, ICMPV6_NEXT_HEADER, length);
  return finishChecksum(sumBytes(msg, offset, length, pseudo));
}

/** Zero-copy view of an ICMPv6 message; length = the whole message (header + body). */
export class Icmpv6View extends WireView {
  /** Point the view at msg[offset, offset+length), clamped to the bytes there are; returns this. */
  override reset(bytes: Uint8Array, offset: number, length: number): this {
    return super.reset(bytes, offset, Math.max(0, Math.min(length, bytes.length - offset)));
  }

  get type(): number {
    return this.bytes[this.offset];
  }
  set type(v: number) {
    this.bytes[this.offset] = v;
  }
  get code(): number {
    return this.bytes[this.offset + 1];
  }
  set code(v: number) {
    this.bytes[this.offset + 1] = v;
  }
  get checksum(): number {
    return be16(this.bytes, this.offset + 2);
  }
  set checksum(v: number) {
    setBe16(this.bytes, this.offset + 2, v);
  }

  /**
   * Check length and checksum against the addresses of the carrying IPv6
   * header (16 bytes each at srcOffset/dstOffset of `ip`). Returns a reason code.
   */
  validate(ip: Uint8Array, srcOffset: number, dstOffset: number): Icmpv6Error {
    if (this.length < ICMPV6_HEADER_LENGTH) return Icmpv6Error.Truncated;
    if (icmpv6Checksum(ip, srcOffset, ip, dstOffset, this.bytes, this.offset, this.length) !== 0) return Icmpv6Error.BadChecksum;
    return Icmpv6Error.Ok;
  }

  /** Compute and store the checksum for the given addresses. */
  fillChecksum(src: Uint8Array, srcOffset: number, dst: Uint8Array, dstOffset: number): void {
    this.checksum = 0;
    this.checksum = icmpv6Checksum(src, srcOffset, dst, dstOffset, this.bytes, this.offset, this.length);
  }
}
