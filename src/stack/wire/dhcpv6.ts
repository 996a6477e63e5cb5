/**
 * DHCPv6 (RFC 8415) messages over bytes: a bounded option walker, a parser
 * that fills a reusable summary of the options a server needs, and a writer
 * with nested options (IA_NA holding IA Address) for replies.
 *
 * Offsets are relative to the UDP payload buffer passed in.
 */
import { be16, be32, setBe16, setBe32 } from './checksum';

export const DHCPV6_CLIENT_PORT = 546;
export const DHCPV6_SERVER_PORT = 547;

export const Dhcpv6MessageType = {
  SOLICIT: 1,
  ADVERTISE: 2,
  REQUEST: 3,
  CONFIRM: 4,
  RENEW: 5,
  REBIND: 6,
  REPLY: 7,
  RELEASE: 8,
  DECLINE: 9,
  RECONFIGURE: 10,
  INFORMATION_REQUEST: 11,
  RELAY_FORW: 12,
  RELAY_REPL: 13,
} as const;

export const Dhcpv6Option = {
  CLIENTID: 1,
  SERVERID: 2,
  IA_NA: 3,
  IA_TA: 4,
  IAADDR: 5,
  ORO: 6,
  PREFERENCE: 7,
  ELAPSED_TIME: 8,
  STATUS_CODE: 13,
  RAPID_COMMIT: 14,
  DNS_SERVERS: 23,
  DOMAIN_LIST: 24,
  IA_PD: 25,
} as const;

export const Dhcpv6Status = {
  SUCCESS: 0,
  UNSPEC_FAIL: 1,
  NO_ADDRS_AVAIL: 2,
  NO_BINDING: 3,
  NOT_ON_LINK: 4,
  USE_MULTICAST: 5,
} as const;

/** DUID-LL (RFC 8415 11.4) with hardware type 1 (Ethernet). */
export const DUID_TYPE_LL = 3;
export const HW_TYPE_ETHERNET = 1;

/** Why a DHCPv6 message is unusable (0 = fine). */
export enum Dhcpv6Error {
  Ok = 0,
  Truncated = 1,
  OptionOverrun = 2,
  TooManyOptions = 3,
  DuplicateOption = 4,
  BadOptionLength = 5,
  /** Relay-forward/relay-reply: ferry is the only server on its segment. */
  RelayMessage = 6,
}

export const DHCPV6_HEADER_LENGTH = 4;
/** Options are at least 4 bytes; a UDP payload cannot hold more than this many. */
export const MAX_DHCPV6_OPTIONS = 16384;

/**
 * Walks a DHCPv6 option list (top level or inside IA_NA / IA Address).
 * Reusable: `reset()` then `while (cursor.next()) { ... }`; `error` tells
 * whether the walk stopped early on an overrunning option.
 */
export class Dhcpv6OptionCursor {
  bytes: Uint8Array = new Uint8Array(0);
  private position = 0;
  private end = 0;
  private seen = 0;
  code = 0;
  /** Offset of the option's data (after code and length). */
  dataOffset = 0;
  dataLength = 0;
  error: Dhcpv6Error = Dhcpv6Error.Ok;

  /** Walk options in bytes[start, end). */
  reset(bytes: Uint8Array, start: number, end: number): this {
    this.bytes = bytes;
    this.position = start;
    this.end = Math.min(end, bytes.length);
    this.seen = 0;
    this.error = Dhcpv6Error.Ok;
    return this;
  }

  /** Advance to the next option: true when one is current, false at the end or on error. */
  next(): boolean {
    if (this.position >= this.end) return false;
    if (this.seen >= MAX_DHCPV6_OPTIONS) {
      this.error = Dhcpv6Error.TooManyOptions;
      return false;
    }
    if (this.position + 4 > this.end) {
      this.error = Dhcpv6Error.OptionOverrun;
      return false;
    }
    const b = this.bytes;
    const p = this.position;
    const length = be16(b, p + 2);
    if (p + 4 + length > this.end) {
      this.error = Dhcpv6Error.OptionOverrun;
      return false;
    }
    this.code = be16(b, p);
    this.dataOffset = p + 4;
    this.dataLength = length;
    this.position = p + 4 + length;
    this.seen++;
    return true;
  }
}

/** What a server needs from a client message; offsets are -1 when absent. Reused between messages. */
export class Dhcpv6Summary {
  messageType = 0;
  transactionId = 0;
  clientIdOffset = -1;
  clientIdLength = 0;
  serverIdOffset = -1;
  serverIdLength = 0;
  /** First IA_NA: offset of its data (IAID first) and length. */
  iaNaOffset = -1;
  iaNaLength = 0;
  iaNaCount = 0;
  /** ORO data (a list of 16-bit option codes). */
  oroOffset = -1;
  oroLength = 0;
  rapidCommit = false;
  /** Elapsed time in hundredths of a second, or -1. */
  elapsedTime = -1;

  clear(): void {
    this.messageType = 0;
    this.transactionId = 0;
    this.clientIdOffset = -1;
    this.clientIdLength = 0;
    this.serverIdOffset = -1;
    this.serverIdLength = 0;
    this.iaNaOffset = -1;
    this.iaNaLength = 0;
    this.iaNaCount = 0;
    this.oroOffset = -1;
    this.oroLength = 0;
    this.rapidCommit = false;
    this.elapsedTime = -1;
  }
}

const topCursor = new Dhcpv6OptionCursor();
const innerCursor = new Dhcpv6OptionCursor();

/**
 * Parse a client message at bytes[offset, offset+length) into `out`.
 * Returns a reason code: every option (and every option inside IA_NA) must
 * fit, client/server id must appear at most once with a sane length
 * (RFC 8415 11.1: DUID 3..130 bytes), fixed-size options must have their size.
 * Relay messages are rejected: ferry is the only server on its segment.
 */
export function parseDhcpv6(bytes: Uint8Array, offset: number, length: number, out: Dhcpv6Summary): Dhcpv6Error {
  out.clear();
  if (length < DHCPV6_HEADER_LENGTH || offset + length > bytes.length) return Dhcpv6Error.Truncated;
  out.messageType = bytes[offset];
  out.transactionId = be32(bytes, offset) & 0xffffff;
  if (out.messageType === Dhcpv6MessageType.RELAY_FORW || out.messageType === Dhcpv6MessageType.RELAY_REPL) return Dhcpv6Error.RelayMessage;
  const cursor = topCursor.reset(bytes, offset + DHCPV6_HEADER_LENGTH, offset + length);
  while (cursor.next()) {
    const dataLength = cursor.dataLength;
    switch (cursor.code) {
      case Dhcpv6Option.CLIENTID:
        if (out.clientIdOffset >= 0) return Dhcpv6Error.DuplicateOption;
        if (dataLength < 3 || dataLength > 130) return Dhcpv6Error.BadOptionLength;
        out.clientIdOffset = cursor.dataOffset;
        out.clientIdLength = dataLength;
        break;
      case Dhcpv6Option.SERVERID:
        if (out.serverIdOffset >= 0) return Dhcpv6Error.DuplicateOption;
        if (dataLength < 3 || dataLength > 130) return Dhcpv6Error.BadOptionLength;
        out.serverIdOffset = cursor.dataOffset;
        out.serverIdLength = dataLength;
        break;
      case Dhcpv6Option.IA_NA: {
        if (dataLength < 12) return Dhcpv6Error.BadOptionLength;
        // The nested options must be well formed too.
        const inner = innerCursor.reset(bytes, cursor.dataOffset + 12, cursor.dataOffset + dataLength);
        while (inner.next()) {
          // The IA Address option carries 24 fixed bytes (RFC 8415 21.6).
          if (inner.code === Dhcpv6Option.IAADDR && inner.dataLength < 24) return Dhcpv6Error.BadOptionLength;
        }
        if (inner.error !== Dhcpv6Error.Ok) return inner.error;
        if (out.iaNaCount === 0) {
          out.iaNaOffset = cursor.dataOffset;
          out.iaNaLength = dataLength;
        }
        out.iaNaCount++;
        break;
      }
      case Dhcpv6Option.ORO:
        if ((dataLength & 1) !== 0) return Dhcpv6Error.BadOptionLength;
        out.oroOffset = cursor.dataOffset;
        out.oroLength = dataLength;
        break;
      case Dhcpv6Option.ELAPSED_TIME:
        if (dataLength !== 2) return Dhcpv6Error.BadOptionLength;
        out.elapsedTime = be16(bytes, cursor.dataOffset);
        break;
      case Dhcpv6Option.RAPID_COMMIT:
        if (dataLength !== 0) return Dhcpv6Error.BadOptionLength;
        out.rapidCommit = true;
        break;
      default:
        break; // unknown options are ignored (RFC 8415 16)
    }
  }
  return cursor.error;
}

/** True when the ORO at bytes[offset, offset+length) lists `code`. */
export function oroRequests(bytes: Uint8Array, offset: number, length: number, code: number): boolean {
  for (let i = offset; i + 1 < offset + length; i += 2) if (be16(bytes, i) === code) return true;
  return false;
}

/** DUID-LL bytes for an Ethernet MAC: type 3, hardware type 1, the MAC. */
export function duidLlFromMac(mac: Uint8Array): Uint8Array {
  const out = new Uint8Array(10);
  out[1] = DUID_TYPE_LL;
  out[3] = HW_TYPE_ETHERNET;
  out.set(mac.subarray(0, 6), 4);
  return out;
}

/** Longest nesting the writer supports (IA_NA > IAADDR > STATUS_CODE). */
const MAX_NESTING = 4;

/**
 * Writes a DHCPv6 message into a caller's buffer. Every write checks the
 * capacity; on overflow nothing more is written and `overflow` is set, so
 * the caller checks once at the end. Nested options: `begin(code)` ...
 * `end()` fills in the length.
 */
export class Dhcpv6Writer {
  out: Uint8Array = new Uint8Array(0);
  start = 0;
  position = 0;
  limit = 0;
  overflow = false;
  private readonly openOptions = new Int32Array(MAX_NESTING);
  private depth = 0;

  /** Start writing at out[offset], at most `capacity` bytes. */
  reset(out: Uint8Array, offset: number, capacity: number): this {
    this.out = out;
    this.start = offset;
    this.position = offset;
    this.limit = Math.min(out.length, offset + capacity);
    this.overflow = false;
    this.depth = 0;
    return this;
  }

  /** Bytes written so far. */
  get length(): number {
    return this.position - this.start;
  }

  private room(n: number): boolean {
    if (this.overflow || this.position + n > this.limit) {
      this.overflow = true;
      return false;
    }
    return true;
  }

  /** Message type and 24-bit transaction id. */
  header(messageType: number, transactionId: number): this {
    if (!this.room(4)) return this;
    this.out[this.position] = messageType;
    this.out[this.position + 1] = (transactionId >> 16) & 0xff;
    this.out[this.position + 2] = (transactionId >> 8) & 0xff;
    this.out[this.position + 3] = transactionId & 0xff;
    this.position += 4;
    return this;
  }

  u8(v: number): this {
    if (!this.room(1)) return this;
    this.out[this.position++] = v & 0xff;
    return this;
  }

  u16(v: number): this {
    if (!this.room(2)) return this;
    setBe16(this.out, this.position, v);
    this.position += 2;
    return this;
  }

  u32(v: number): this {
    if (!this.room(4)) return this;
    setBe32(this.out, this.position, v);
    this.position += 4;
    return this;
  }

  /** Copy src[offset, offset+length) (defaults: all of src). */
  bytes(src: Uint8Array, offset = 0, length = src.length - offset): this {
    if (length < 0 || offset + length > src.length || !this.room(length)) {
      this.overflow = true;
      return this;
    }
    this.out.set(src.subarray(offset, offset + length), this.position);
    this.position += length;
    return this;
  }

  /** A whole option whose data is src[offset, offset+length). */
  option(code: number, src: Uint8Array, offset = 0, length = src.length - offset): this {
    return this.u16(code).u16(length).bytes(src, offset, length);
  }

  /** A zero-length option (e.g. Rapid Commit). */
  emptyOption(code: number): this {
    return this.u16(code).u16(0);
  }

  /** Open a nested option; close it with end(). */
  begin(code: number): this {
    if (this.depth >= MAX_NESTING) {
      this.overflow = true;
      return this;
    }
    this.openOptions[this.depth++] = this.position;
    return this.u16(code).u16(0);
  }

  /** Close the innermost open option, writing its length. */
  end(): this {
    if (this.depth === 0) {
      this.overflow = true;
      return this;
    }
    const at = this.openOptions[--this.depth];
    if (this.overflow) return this;
    const length = this.position - at - 4;
    setBe16(this.out, at + 2, length);
    return this;
  }

  /** A Status Code option (RFC 8415 21.13) with an ASCII message. */
  status(code: number, message: string): this {
    this.begin(Dhcpv6Option.STATUS_CODE).u16(code);
    for (let i = 0; i < message.length && !this.overflow; i++) this.u8(message.charCodeAt(i) & 0x7f);
    return this.end();
  }
}
