/**
 * ICMP header view (RFC 792), also used for ICMPv6 echo messages (RFC 4443
 * 4.1/4.2 have the same layout: type, code, checksum, identifier, sequence).
 * ICMPv6's other messages have their own views in icmpv6.ts.
 */
import { be16, internetChecksum, setBe16, sumBytes, finishChecksum } from './checksum';
import { WireView } from './view';

export const ICMP_HEADER_LENGTH = 8;

/** ICMPv4 types (RFC 792). */
export const IcmpType = {
  EchoReply: 0,
  DestinationUnreachable: 3,
  EchoRequest: 8,
  TimeExceeded: 11,
} as const;

/** ICMPv6 echo types (RFC 4443 4.1/4.2). */
export const Icmpv6EchoType = {
  EchoRequest: 128,
  EchoReply: 129,
} as const;

/** Why an ICMP message is unusable (0 = fine). */
export enum IcmpError {
  Ok = 0,
  Truncated = 1,
  BadChecksum = 2,
}

/** A reusable view of an ICMP message at bytes[offset] spanning length bytes. */
export class IcmpView extends WireView {
  /**
   * Check the 8-byte header fits and, when pseudoSum is given (ICMPv6) or
   * verify is true (ICMPv4, pseudoSum 0), the checksum over the message.
   * Returns an IcmpError.
   */
  validate(verify: boolean, pseudoSum = 0): IcmpError {
    if (this.length < ICMP_HEADER_LENGTH || this.offset + this.length > this.bytes.length) return IcmpError.Truncated;
    if (verify && internetChecksum(this.bytes, this.offset, this.length, pseudoSum) !== 0) return IcmpError.BadChecksum;
    return IcmpError.Ok;
  }

  get type(): number {
    return this.bytes[this.offset];
  }

  set type(value: number) {
    this.bytes[this.offset] = value;
  }

  get code(): number {
    return this.bytes[this.offset + 1];
  }

  get checksum(): number {
    return be16(this.bytes, this.offset + 2);
  }

  set checksum(value: number) {
    setBe16(this.bytes, this.offset + 2, value);
  }

  /** Echo identifier. */
  get identifier(): number {
    return be16(this.bytes, this.offset + 4);
  }

  set identifier(value: number) {
    setBe16(this.bytes, this.offset + 4, value);
  }

  /** Echo sequence number. */
  get sequence(): number {
    return be16(this.bytes, this.offset + 6);
  }

  /** Absolute offset of the data after the 8-byte header. */
  get dataOffset(): number {
    return this.offset + ICMP_HEADER_LENGTH;
  }

  /** Recompute and store the checksum over length bytes (pseudoSum for ICMPv6). */
  fillChecksum(pseudoSum = 0): void {
    setBe16(this.bytes, this.offset + 2, 0);
    setBe16(this.bytes, this.offset + 2, finishChecksum(sumBytes(this.bytes, this.offset, this.length, pseudoSum)));
  }
}
