/**
 * TCP header view (RFC 9293) with a bounded option walk. The stack only
 * parses here; TCP translation lives in its own module.
 */
import { be16, be32, finishChecksum, setBe16, setBe32, sumBytes } from './checksum';
import { WireView } from './view';

export const TCP_HEADER_LENGTH = 20;

/** TCP header flag bits (byte 13). */
export const TcpFlag = {
  Fin: 0x01,
  Syn: 0x02,
  Rst: 0x04,
  Psh: 0x08,
  Ack: 0x10,
  Urg: 0x20,
  Ece: 0x40,
  Cwr: 0x80,
} as const;

/** TCP option kinds (IANA). */
export const TcpOption = {
  End: 0,
  Nop: 1,
  Mss: 2,
  WindowScale: 3,
  SackPermitted: 4,
  Sack: 5,
  Timestamps: 8,
} as const;

/** Why a TCP segment is unusable (0 = fine). */
export enum TcpError {
  Ok = 0,
  Truncated = 1,
  /** Data offset below 5 or beyond the IP payload. */
  BadDataOffset = 2,
  BadChecksum = 3,
  /** An option's length runs past the header or is below 2. */
  BadOption = 4,
}

/** Options found by TcpView.parseOptions (-1 = absent). Reused, not per packet. */
export class TcpOptions {
  mss = -1;
  windowScale = -1;
  sackPermitted = false;
  tsVal = -1;
  tsEcr = -1;

  /** Forget everything. */
  clear(): void {
    this.mss = -1;
    this.windowScale = -1;
    this.sackPermitted = false;
    this.tsVal = -1;
    this.tsEcr = -1;
  }
}

/** A reusable view of a TCP segment at bytes[offset]; length = IP payload bytes. */
export class TcpView extends WireView {
  /**
   * Check the header fits and, when pseudoSum is not null, the checksum over
   * the whole segment (pseudoSum = pseudo-header sum for `length`). Returns a TcpError.
   */
  validate(pseudoSum: number | null): TcpError {
    if (this.length < TCP_HEADER_LENGTH || this.offset + this.length > this.bytes.length) return TcpError.Truncated;
    const headerLength = this.headerLength;
    if (headerLength < TCP_HEADER_LENGTH || headerLength > this.length) return TcpError.BadDataOffset;
    if (pseudoSum !== null && finishChecksum(sumBytes(this.bytes, this.offset, this.length, pseudoSum)) !== 0) return TcpError.BadChecksum;
    return TcpError.Ok;
  }

  /**
   * Walk the options (at most 40 bytes, so the loop is bounded) into out.
   * Returns TcpError.Ok or TcpError.BadOption.
   */
  parseOptions(out: TcpOptions): TcpError {
    out.clear();
    const b = this.bytes;
    const end = this.offset + this.headerLength;
    let at = this.offset + TCP_HEADER_LENGTH;
    while (at < end) {
      const kind = b[at];
      if (kind === TcpOption.End) break;
      if (kind === TcpOption.Nop) {
        at++;
        continue;
      }
      if (at + 1 >= end) return TcpError.BadOption;
      const len = b[at + 1];
      if (len < 2 || at + len > end) return TcpError.BadOption;
      if (kind === TcpOption.Mss && len === 4) out.mss = be16(b, at + 2);
      else if (kind === TcpOption.WindowScale && len === 3) out.windowScale = b[at + 2];
      else if (kind === TcpOption.SackPermitted && len === 2) out.sackPermitted = true;
      else if (kind === TcpOption.Timestamps && len === 10) {
        out.tsVal = be32(b, at + 2);
        out.tsEcr = be32(b, at + 6);
      }
      at += len;
    }
    return TcpError.Ok;
  }

  get srcPort(): number {
    return be16(this.bytes, this.offset);
  }

  get dstPort(): number {
    return be16(this.bytes, this.offset + 2);
  }

  get seq(): number {
    return be32(this.bytes, this.offset + 4);
  }

  get ack(): number {
    return be32(this.bytes, this.offset + 8);
  }

  /** Header length in bytes (data offset * 4). */
  get headerLength(): number {
    return (this.bytes[this.offset + 12] >>> 4) * 4;
  }

  get flags(): number {
    return this.bytes[this.offset + 13];
  }

  get window(): number {
    return be16(this.bytes, this.offset + 14);
  }

  get checksum(): number {
    return be16(this.bytes, this.offset + 16);
  }

  get urgentPointer(): number {
    return be16(this.bytes, this.offset + 18);
  }

  /** Absolute offset of the payload. */
  get dataOffset(): number {
    return this.offset + this.headerLength;
  }

  /** Payload length (IP payload minus TCP header). */
  get dataLength(): number {
    return this.length - this.headerLength;
  }
}

/**
 * Write a TCP header of headerLength bytes (options, if any, are written by
 * the caller at offset+20 before or after) at bytes[offset]. The checksum is
 * left 0: call fillTcpChecksum once header and payload are in place.
 * Returns the payload offset.
 */
export function emitTcp(
  bytes: Uint8Array,
  offset: number,
  srcPort: number,
  dstPort: number,
  seq: number,
  ack: number,
  flags: number,
  window: number,
  headerLength = TCP_HEADER_LENGTH,
): number {
  setBe16(bytes, offset, srcPort);
  setBe16(bytes, offset + 2, dstPort);
  setBe32(bytes, offset + 4, seq);
  setBe32(bytes, offset + 8, ack);
  bytes[offset + 12] = (headerLength / 4) << 4;
  bytes[offset + 13] = flags;
  setBe16(bytes, offset + 14, window);
  setBe16(bytes, offset + 16, 0);
  setBe16(bytes, offset + 18, 0);
  return offset + headerLength;
}

/** Compute and store the TCP checksum over segmentLength contiguous bytes. */
export function fillTcpChecksum(bytes: Uint8Array, offset: number, segmentLength: number, pseudoSum: number): void {
  setBe16(bytes, offset + 16, 0);
  setBe16(bytes, offset + 16, finishChecksum(sumBytes(bytes, offset, segmentLength, pseudoSum)));
}
