/**
 * UDP header view (RFC 768).
 */
import { be16, finishChecksum, setBe16, sumBytes } from './checksum';
import { WireView } from './view';

export const UDP_HEADER_LENGTH = 8;

/** Why a UDP datagram is unusable (0 = fine). */
export enum UdpError {
  Ok = 0,
  Truncated = 1,
  /** Length field below 8 or beyond the IP payload. */
  BadLength = 2,
  BadChecksum = 3,
}

/** A reusable view of a UDP datagram at bytes[offset]; length = IP payload bytes. */
export class UdpView extends WireView {
  /**
   * Check the header and length field; when pseudoSum is not null, also the
   * checksum (pseudoSum = pseudo-header sum for the UDP length). An IPv4
   * checksum of 0 means "none" and passes when zeroMeansNone. Returns a UdpError.
   */
  validate(pseudoSum: number | null, zeroMeansNone = true): UdpError {
    if (this.length < UDP_HEADER_LENGTH || this.offset + this.length > this.bytes.length) return UdpError.Truncated;
    const udpLength = this.udpLength;
    if (udpLength < UDP_HEADER_LENGTH || udpLength > this.length) return UdpError.BadLength;
    if (pseudoSum !== null) {
      if (this.checksum === 0) return zeroMeansNone ? UdpError.Ok : UdpError.BadChecksum;
      if (finishChecksum(sumBytes(this.bytes, this.offset, udpLength, pseudoSum)) !== 0) return UdpError.BadChecksum;
    }
    return UdpError.Ok;
  }

  get srcPort(): number {
    return be16(this.bytes, this.offset);
  }

  set srcPort(value: number) {
    setBe16(this.bytes, this.offset, value);
  }

  get dstPort(): number {
    return be16(this.bytes, this.offset + 2);
  }

  set dstPort(value: number) {
    setBe16(this.bytes, this.offset + 2, value);
  }

  /** The length field (header + data). */
  get udpLength(): number {
    return be16(this.bytes, this.offset + 4);
  }

  get checksum(): number {
    return be16(this.bytes, this.offset + 6);
  }

  /** Absolute offset of the data. */
  get dataOffset(): number {
    return this.offset + UDP_HEADER_LENGTH;
  }

  /** Data length according to the length field. */
  get dataLength(): number {
    return this.udpLength - UDP_HEADER_LENGTH;
  }
}

/**
 * Write a UDP header at bytes[offset] for dataLength bytes of data that are
 * already in place after it, with the checksum over header and data
 * (pseudoSum = pseudo-header sum for the UDP length; 0 is sent as 0xffff).
 * Returns the data offset.
 */
export function emitUdp(bytes: Uint8Array, offset: number, srcPort: number, dstPort: number, dataLength: number, pseudoSum: number): number {
  const udpLength = UDP_HEADER_LENGTH + dataLength;
  setBe16(bytes, offset, srcPort);
  setBe16(bytes, offset + 2, dstPort);
  setBe16(bytes, offset + 4, udpLength);
  setBe16(bytes, offset + 6, 0);
  const checksum = finishChecksum(sumBytes(bytes, offset, udpLength, pseudoSum));
  setBe16(bytes, offset + 6, checksum === 0 ? 0xffff : checksum);
  return offset + UDP_HEADER_LENGTH;
}
