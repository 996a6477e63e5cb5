/**
 * Neighbor Discovery (RFC 4861) messages and options over bytes: a bounded
 * option walker, a validator returning reason codes, readers for the fields
 * ferry uses and writers for the messages ferry sends (RA, NA) and their
 * options (link-layer address, prefix information, MTU, RDNSS and DNSSL
 * from RFC 8106).
 *
 * Offsets are relative to the start of the ICMPv6 message (type byte).
 */
import { setBe16, setBe32 } from './checksum';
import { Icmpv6Type } from './icmpv6';

export const NdpOption = {
  SOURCE_LINK_LAYER: 1,
  TARGET_LINK_LAYER: 2,
  PREFIX_INFORMATION: 3,
  REDIRECTED_HEADER: 4,
  MTU: 5,
  RDNSS: 25,
  DNSSL: 31,
} as const;

/** Why an NDP message is unusable (0 = fine). */
export enum NdpError {
  Ok = 0,
  NotNdp = 1,
  Truncated = 2,
  BadCode = 3,
  /** Hop limit other than 255: may come from off-link (RFC 4861 6.1.1, 7.1.1). */
  BadHopLimit = 4,
  ZeroLengthOption = 5,
  OptionOverrun = 6,
  TooManyOptions = 7,
  MulticastTarget = 8,
  SourceLinkLayerWithUnspecifiedSource = 9,
}

/** Fixed part (before options) of each NDP message, in bytes. */
export const RS_LENGTH = 8;
export const RA_LENGTH = 16;
export const NS_LENGTH = 24;
export const NA_LENGTH = 24;
/** Offset of the target address in NS and NA. */
export const NDP_TARGET_OFFSET = 8;

/** A message cannot hold more options than this (an MTU of 65535 / 8 bytes). */
export const MAX_NDP_OPTIONS = 8192;

/** Length of the fixed part for an NDP message type, or -1 when it is not one ferry parses. */
export function ndpFixedLength(type: number): number {
  switch (type) {
    case Icmpv6Type.ROUTER_SOLICITATION:
      return RS_LENGTH;
    case Icmpv6Type.ROUTER_ADVERTISEMENT:
      return RA_LENGTH;
    case Icmpv6Type.NEIGHBOR_SOLICITATION:
      return NS_LENGTH;
    case Icmpv6Type.NEIGHBOR_ADVERTISEMENT:
      return NA_LENGTH;
    default:
      return -1;
  }
}

/**
 * Walks the options of one NDP message. Reusable: `reset()` then
 * `while ((r = cursor.next()) === 1) { ... }`. The walk stops with an error
 * on a zero-length option (RFC 4861 4.6: the message must be discarded), on
 * an option overrunning the message, or after MAX_NDP_OPTIONS options.
 */
export class NdpOptionCursor {
  bytes: Uint8Array = new Uint8Array(0);
  private position = 0;
  private end = 0;
  private seen = 0;
  /** Type of the current option. */
  type = 0;
  /** Offset of the current option (its type byte) in `bytes`. */
  offset = 0;
  /** Length of the current option in bytes (type and length bytes included). */
  length = 0;
  /** Why the walk stopped early (NdpError.Ok when it reached the end). */
  error: NdpError = NdpError.Ok;

  /** Walk options in bytes[start, end). */
  reset(bytes: Uint8Array, start: number, end: number): this {
    this.bytes = bytes;
    this.position = start;
    this.end = Math.min(end, bytes.length);
    this.seen = 0;
    this.error = NdpError.Ok;
    return this;
  }

  /** Advance to the next option: true when one is current, false at the end or on error (see `error`). */
  next(): boolean {
    if (this.position >= this.end) return false;
    if (this.seen >= MAX_NDP_OPTIONS) {
      this.error = NdpError.TooManyOptions;
      return false;
    }
    if (this.position + 2 > this.end) {
      this.error = NdpError.OptionOverrun;
      return false;
    }
    const units = this.bytes[this.position + 1];
    if (units === 0) {
      this.error = NdpError.ZeroLengthOption;
      return false;
    }
    const length = units * 8;
    if (this.position + length > this.end) {
      this.error = NdpError.OptionOverrun;
      return false;
    }
    this.type = this.bytes[this.position];
    this.offset = this.position;
    this.length = length;
    this.position += length;
    this.seen++;
    return true;
  }
}

const scratchCursor = new NdpOptionCursor();

/**
 * Validate an NDP message at msg[offset, offset+length) per RFC 4861 6.1/7.1
 * (code 0, hop limit 255, length, well-formed options, target not multicast,
 * no source link-layer option when the IP source is unspecified). The ICMPv6
 * checksum is checked separately (Icmpv6View.validate).
 */
export function validateNdp(msg: Uint8Array, offset: number, length: number, hopLimit: number, sourceUnspecified: boolean): NdpError {
  if (length < 4 || offset + length > msg.length) return NdpError.Truncated;
  const type = msg[offset];
  const fixed = ndpFixedLength(type);
  if (fixed < 0) return NdpError.NotNdp;
  if (msg[offset + 1] !== 0) return NdpError.BadCode;
  // Off-link senders cannot forge a hop limit of 255 (RFC 4861 6.1.1, 7.1.1).
  if (hopLimit !== 255) return NdpError.BadHopLimit;
  if (length < fixed) return NdpError.Truncated;
  if ((type === Icmpv6Type.NEIGHBOR_SOLICITATION || type === Icmpv6Type.NEIGHBOR_ADVERTISEMENT) && msg[offset + NDP_TARGET_OFFSET] === 0xff) {
    return NdpError.MulticastTarget;
  }
  const cursor = scratchCursor.reset(msg, offset + fixed, offset + length);
  let hasSourceLinkLayer = false;
  while (cursor.next()) {
    if (cursor.type === NdpOption.SOURCE_LINK_LAYER) hasSourceLinkLayer = true;
  }
  if (cursor.error !== NdpError.Ok) return cursor.error;
  if (sourceUnspecified && hasSourceLinkLayer && (type === Icmpv6Type.NEIGHBOR_SOLICITATION || type === Icmpv6Type.ROUTER_SOLICITATION)) {
    return NdpError.SourceLinkLayerWithUnspecifiedSource;
  }
  return NdpError.Ok;
}

/**
 * Offset of the 6-byte MAC in the first link-layer option of `optionType`
 * (source or target) of the message at msg[offset, offset+length), or -1.
 * Assumes the message already passed validateNdp.
 */
export function findLinkLayerAddress(msg: Uint8Array, offset: number, length: number, optionType: number): number {
  const fixed = ndpFixedLength(msg[offset]);
  if (fixed < 0) return -1;
  const cursor = scratchCursor.reset(msg, offset + fixed, offset + length);
  while (cursor.next()) {
    // Ethernet link-layer options are exactly 8 bytes (RFC 2464 6).
    if (cursor.type === optionType && cursor.length >= 8) return cursor.offset + 2;
  }
  return -1;
}

// ---------------------------------------------------------------- writers

/** Router Advertisement fixed-part fields (RFC 4861 4.2). */
export interface RaFields {
  curHopLimit: number;
  managed: boolean;
  other: boolean;
  routerLifetimeSeconds: number;
  reachableTimeMs: number;
  retransTimerMs: number;
}

export const RA_FLAG_MANAGED = 0x80;
export const RA_FLAG_OTHER = 0x40;

/** Write the RA fixed part at out[offset] (checksum left zero). Returns RA_LENGTH. */
export function writeRaHeader(out: Uint8Array, offset: number, fields: RaFields): number {
  out[offset] = Icmpv6Type.ROUTER_ADVERTISEMENT;
  out[offset + 1] = 0;
  setBe16(out, offset + 2, 0);
  out[offset + 4] = fields.curHopLimit;
  out[offset + 5] = (fields.managed ? RA_FLAG_MANAGED : 0) | (fields.other ? RA_FLAG_OTHER : 0);
  setBe16(out, offset + 6, fields.routerLifetimeSeconds);
  setBe32(out, offset + 8, fields.reachableTimeMs);
  setBe32(out, offset + 12, fields.retransTimerMs);
  return RA_LENGTH;
}

export const NA_FLAG_ROUTER = 0x80;
export const NA_FLAG_SOLICITED = 0x40;
export const NA_FLAG_OVERRIDE = 0x20;

/** Write a Neighbor Advertisement fixed part (flags: NA_FLAG_*) for `target` (16 bytes). Returns NA_LENGTH. */
export function writeNaHeader(out: Uint8Array, offset: number, flags: number, target: Uint8Array): number {
  out[offset] = Icmpv6Type.NEIGHBOR_ADVERTISEMENT;
  out[offset + 1] = 0;
  setBe16(out, offset + 2, 0);
  out[offset + 4] = flags;
  out[offset + 5] = 0;
  out[offset + 6] = 0;
  out[offset + 7] = 0;
  out.set(target.subarray(0, 16), offset + NDP_TARGET_OFFSET);
  return NA_LENGTH;
}

/** Write a source/target link-layer address option (8 bytes) for an Ethernet MAC. Returns 8. */
export function writeLinkLayerOption(out: Uint8Array, offset: number, optionType: number, mac: Uint8Array): number {
  out[offset] = optionType;
  out[offset + 1] = 1;
  out.set(mac.subarray(0, 6), offset + 2);
  return 8;
}

export const PREFIX_FLAG_ON_LINK = 0x80;
export const PREFIX_FLAG_AUTONOMOUS = 0x40;

/** Write a Prefix Information option (32 bytes, RFC 4861 4.6.2). Returns 32. */
export function writePrefixInfoOption(out: Uint8Array, offset: number, prefix: Uint8Array, prefixLength: number, flags: number, validLifetime: number, preferredLifetime: number): number {
  out[offset] = NdpOption.PREFIX_INFORMATION;
  out[offset + 1] = 4;
  out[offset + 2] = prefixLength;
  out[offset + 3] = flags;
  setBe32(out, offset + 4, validLifetime);
  setBe32(out, offset + 8, preferredLifetime);
  setBe32(out, offset + 12, 0);
  out.set(prefix.subarray(0, 16), offset + 16);
  return 32;
}

/** Write an MTU option (8 bytes, RFC 4861 4.6.4). Returns 8. */
export function writeMtuOption(out: Uint8Array, offset: number, mtu: number): number {
  out[offset] = NdpOption.MTU;
  out[offset + 1] = 1;
  setBe16(out, offset + 2, 0);
  setBe32(out, offset + 4, mtu);
  return 8;
}

/** Bytes an RDNSS option with `count` servers takes. */
export function rdnssOptionLength(count: number): number {
  return 8 + 16 * count;
}

/** Write an RDNSS option (RFC 8106 5.1) listing `servers` (16 bytes each). Returns its length. */
export function writeRdnssOption(out: Uint8Array, offset: number, lifetime: number, servers: readonly Uint8Array[]): number {
  const length = rdnssOptionLength(servers.length);
  out[offset] = NdpOption.RDNSS;
  out[offset + 1] = length / 8;
  setBe16(out, offset + 2, 0);
  setBe32(out, offset + 4, lifetime);
  for (let i = 0; i < servers.length; i++) out.set(servers[i].subarray(0, 16), offset + 8 + 16 * i);
  return length;
}

/** Bytes a DNSSL option carrying the already encoded `domains` takes (padded to 8). */
export function dnsslOptionLength(encodedDomains: Uint8Array): number {
  return 8 + Math.ceil(encodedDomains.length / 8) * 8;
}

/** Write a DNSSL option (RFC 8106 5.2) with domain names already encoded by encodeDomainList. Returns its length. */
export function writeDnsslOption(out: Uint8Array, offset: number, lifetime: number, encodedDomains: Uint8Array): number {
  const length = dnsslOptionLength(encodedDomains);
  out[offset] = NdpOption.DNSSL;
  out[offset + 1] = length / 8;
  setBe16(out, offset + 2, 0);
  setBe32(out, offset + 4, lifetime);
  out.set(encodedDomains, offset + 8);
  out.fill(0, offset + 8 + encodedDomains.length, offset + length);
  return length;
}

/**
 * Encode domain names in DNS wire format without compression (RFC 1035
 * 3.1), as RFC 8106 DNSSL, DHCPv6 option 24 and DHCP option 119 accept.
 * Names that cannot be encoded (empty label, label > 63 bytes, name > 255
 * bytes, non-ASCII) are skipped. A trailing dot is accepted.
 */
export function encodeDomainList(names: readonly string[]): Uint8Array {
  const parts: number[] = [];
  for (const raw of names) {
    const name = raw.endsWith('.') ? raw.slice(0, -1) : raw;
    if (name.length === 0) continue;
    const labels = name.split('.');
    const encoded: number[] = [];
    let ok = true;
    for (const label of labels) {
      if (label.length === 0 || label.length > 63 || !/^[\x21-\x7e]+$/.test(label)) {
        ok = false;
        break;
      }
      encoded.push(label.length);
      for (let i = 0; i < label.length; i++) encoded.push(label.charCodeAt(i));
    }
    encoded.push(0);
    if (!ok || encoded.length > 255) continue;
    parts.push(...encoded);
  }
  return Uint8Array.from(parts);
}

/**
 * Decode an uncompressed DNS name list (inverse of encodeDomainList) from
 * bytes[offset, offset+length). Returns null when malformed (compression
 * pointers, label overrunning the data, missing terminator). Bounded by
 * `length`. For tests and for reading options from peers.
 */
export function decodeDomainList(bytes: Uint8Array, offset: number, length: number): string[] | null {
  const end = Math.min(offset + length, bytes.length);
  const names: string[] = [];
  let position = offset;
  let labels: string[] = [];
  while (position < end) {
    const labelLength = bytes[position++];
    if (labelLength === 0) {
      if (labels.length === 0) {
        // Padding after the last name (DNSSL pads with zeros).
        continue;
      }
      names.push(labels.join('.'));
      labels = [];
      continue;
    }
    if (labelLength > 63 || position + labelLength > end) return null;
    labels.push(String.fromCharCode(...bytes.subarray(position, position + labelLength)));
    position += labelLength;
  }
  if (labels.length !== 0) return null;
  return names;
}
