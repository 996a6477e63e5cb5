/**
 * Reader for classic pcap files (the format ferry's --pcap writes): global
 * header, then per-record headers, Ethernet link type only. Plus predicates
 * that recognise the first frames a booting guest sends (DHCP DISCOVER and
 * ICMPv6 router solicitation), for e2e asserts.
 */
import * as fs from 'fs';

/** Link type number for Ethernet (LINKTYPE_ETHERNET). */
export const LINKTYPE_ETHERNET = 1;

/** One captured frame. */
export interface PcapFrame {
  /** Capture time in seconds since the epoch (fraction included). */
  time: number;
  /** Length of the frame on the wire. */
  originalLength: number;
  /** The captured bytes (may be shorter than originalLength if snapped). */
  data: Uint8Array;
}

/** A parsed capture. */
export interface PcapFile {
  linkType: number;
  snapLength: number;
  nanosecond: boolean;
  frames: PcapFrame[];
  /** True when the file ended inside a record (a writer still running, or a cut file). */
  truncated: boolean;
}

const MAGIC_MICRO = 0xa1b2c3d4;
const MAGIC_NANO = 0xa1b23c4d;
const GLOBAL_HEADER_LEN = 24;
const RECORD_HEADER_LEN = 16;
/** Upper bound on a record's length, so a corrupt header cannot make us allocate wildly. */
const MAX_RECORD_LEN = 256 * 1024;

/**
 * Parses a pcap capture held in memory. Throws on a bad global header or link
 * type; a trailing partial record only sets `truncated`.
 */
export function parsePcap(bytes: Uint8Array): PcapFile {
  if (bytes.length < GLOBAL_HEADER_LEN) throw new Error(`pcap: ${bytes.length} bytes, shorter than the global header`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let little: boolean;
  let nanosecond: boolean;
  const magicLE = view.getUint32(0, true);
  const magicBE = view.getUint32(0, false);
  if (magicLE === MAGIC_MICRO || magicLE === MAGIC_NANO) {
    little = true;
    nanosecond = magicLE === MAGIC_NANO;
  } else if (magicBE === MAGIC_MICRO || magicBE === MAGIC_NANO) {
    little = false;
    nanosecond = magicBE === MAGIC_NANO;
  } else {
    throw new Error(`pcap: bad magic 0x${magicLE.toString(16)}`);
  }
  const major = view.getUint16(4, little);
  if (major !== 2) throw new Error(`pcap: unsupported version ${major}`);
  const snapLength = view.getUint32(16, little);
  const linkType = view.getUint32(20, little) & 0x0fffffff;
  if (linkType !== LINKTYPE_ETHERNET) throw new Error(`pcap: link type ${linkType}, expected Ethernet (1)`);

  const frames: PcapFrame[] = [];
  let off = GLOBAL_HEADER_LEN;
  let truncated = false;
  while (off < bytes.length) {
    if (off + RECORD_HEADER_LEN > bytes.length) {
      truncated = true;
      break;
    }
    const sec = view.getUint32(off, little);
    const frac = view.getUint32(off + 4, little);
    const inclLen = view.getUint32(off + 8, little);
    const origLen = view.getUint32(off + 12, little);
    if (inclLen > MAX_RECORD_LEN) throw new Error(`pcap: record at ${off} claims ${inclLen} bytes`);
    const start = off + RECORD_HEADER_LEN;
    if (start + inclLen > bytes.length) {
      truncated = true;
      break;
    }
    frames.push({
      time: sec + frac / (nanosecond ? 1e9 : 1e6),
      originalLength: origLen,
      data: bytes.subarray(start, start + inclLen),
    });
    off = start + inclLen;
  }
  return { linkType, snapLength, nanosecond, frames, truncated };
}

/** Reads and parses a pcap file (see parsePcap). */
export function readPcapFile(path: string): PcapFile {
  return parsePcap(new Uint8Array(fs.readFileSync(path)));
}

const ETH_HEADER_LEN = 14;
export const ETHERTYPE_IPV4 = 0x0800;
export const ETHERTYPE_IPV6 = 0x86dd;
export const ETHERTYPE_ARP = 0x0806;

/** EtherType of a frame (0 if shorter than an Ethernet header). */
export function etherType(frame: Uint8Array): number {
  if (frame.length < ETH_HEADER_LEN) return 0;
  return (frame[12] << 8) | frame[13];
}

/** Source MAC of a frame as aa:bb:cc:dd:ee:ff ('' if too short). */
export function sourceMac(frame: Uint8Array): string {
  if (frame.length < ETH_HEADER_LEN) return '';
  return Array.from(frame.subarray(6, 12), (b) => b.toString(16).padStart(2, '0')).join(':');
}

/** Destination MAC of a frame as aa:bb:cc:dd:ee:ff ('' if too short). */
export function destinationMac(frame: Uint8Array): string {
  if (frame.length < ETH_HEADER_LEN) return '';
  return Array.from(frame.subarray(0, 6), (b) => b.toString(16).padStart(2, '0')).join(':');
}

/** Offset and protocol of an IPv4 packet's payload, or null if not a whole IPv4 header. */
function ipv4Payload(frame: Uint8Array): { offset: number; protocol: number } | null {
  if (etherType(frame) !== ETHERTYPE_IPV4 || frame.length < ETH_HEADER_LEN + 20) return null;
  const vihl = frame[ETH_HEADER_LEN];
  if (vihl >> 4 !== 4) return null;
  const ihl = (vihl & 0x0f) * 4;
  if (ihl < 20 || frame.length < ETH_HEADER_LEN + ihl) return null;
  return { offset: ETH_HEADER_LEN + ihl, protocol: frame[ETH_HEADER_LEN + 9] };
}

const DHCP_MAGIC_COOKIE = 0x63825363;
const DHCP_FIXED_LEN = 236;

/** DHCP message type (option 53) of a DHCP packet sent client-to-server (UDP 68->67), or 0. */
export function dhcpClientMessageType(frame: Uint8Array): number {
  const ip = ipv4Payload(frame);
  if (!ip || ip.protocol !== 17) return 0;
  const udp = ip.offset;
  if (frame.length < udp + 8) return 0;
  const view = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  if (view.getUint16(udp) !== 68 || view.getUint16(udp + 2) !== 67) return 0;
  const dhcp = udp + 8;
  if (frame.length < dhcp + DHCP_FIXED_LEN + 4) return 0;
  if (view.getUint32(dhcp + DHCP_FIXED_LEN) !== DHCP_MAGIC_COOKIE) return 0;
  // Walk the options (bounded by the frame) for option 53.
  let off = dhcp + DHCP_FIXED_LEN + 4;
  while (off < frame.length) {
    const code = frame[off];
    if (code === 255) break;
    if (code === 0) {
      off += 1;
      continue;
    }
    if (off + 1 >= frame.length) break;
    const len = frame[off + 1];
    if (code === 53 && len === 1 && off + 2 < frame.length) return frame[off + 2];
    off += 2 + len;
  }
  return 0;
}

/** True for a DHCP DISCOVER from a client (UDP 68->67, message type 1). */
export function isDhcpDiscover(frame: Uint8Array): boolean {
  return dhcpClientMessageType(frame) === 1;
}

/** ICMPv6 type of an IPv6 packet whose next header is ICMPv6 directly (no extension headers), or -1. */
export function icmpv6Type(frame: Uint8Array): number {
  if (etherType(frame) !== ETHERTYPE_IPV6 || frame.length < ETH_HEADER_LEN + 40 + 4) return -1;
  if (frame[ETH_HEADER_LEN] >> 4 !== 6) return -1;
  if (frame[ETH_HEADER_LEN + 6] !== 58) return -1;
  return frame[ETH_HEADER_LEN + 40];
}

/** True for an ICMPv6 router solicitation (type 133). */
export function isRouterSolicitation(frame: Uint8Array): boolean {
  return icmpv6Type(frame) === 133;
}

/** True for an ICMPv6 neighbor solicitation (type 135), e.g. the guest's DAD probe. */
export function isNeighborSolicitation(frame: Uint8Array): boolean {
  return icmpv6Type(frame) === 135;
}
