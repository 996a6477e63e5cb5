/**
 * Coalescing of consecutive TCP segments to the namespace into one large
 * frame for the tap (the write side of GRO): the stack sends MSS-sized
 * segments (MTU 1500: 1460 bytes each), and every frame written to a tap
 * costs a write() and a trip through the namespace's receive path. A run of
 * segments of one flow, contiguous in sequence, with the same headers
 * otherwise, is merged into one frame of up to 64 KiB described by the
 * virtio-net header as a TCP GSO packet (gso_size = the segments' payload
 * length, partial checksum): the namespace's kernel takes it as one skb,
 * as if its own GRO had merged the segments, and splits it again only if
 * it forwards it. The bytes on the wire of the namespace's TCP are the
 * same segments either way.
 *
 * Pure functions over a frame buffer; TapPort owns the buffer and decides
 * when a run ends (a frame that does not continue it, or flush()).
 *
 * Only plain data segments qualify: IPv4 without options or fragmentation,
 * or IPv6 without extension headers, TCP without options, flags ACK or
 * ACK|PSH, a non-empty payload whose length matches the IP header. Anything
 * else (handshakes, FIN, RST, pure ACKs, ICMP, UDP...) is written as is.
 */
import { setHostU16 } from '../../sys/byte-order';
import { be16, be32, foldSum, internetChecksum, pseudoHeaderSumIpv4, pseudoHeaderSumIpv6, setBe16 } from '../../stack/wire/checksum';

const ETHERNET_HEADER = 14;
const IPV4_HEADER = 20;
const IPV6_HEADER = 40;
const TCP_HEADER = 20;
const TCP_ACK = 0x10;
const TCP_PSH = 0x08;
const PROTOCOL_TCP = 6;
/** Largest IPv4 total length / IPv6 payload length. */
const MAX_L3_LENGTH = 65535;

/** virtio-net header values (virtio 1.x 5.1.6). */
export const VIRTIO_NET_HDR_F_NEEDS_CSUM = 1;
export const VIRTIO_NET_HDR_GSO_TCPV4 = 1;
export const VIRTIO_NET_HDR_GSO_TCPV6 = 4;

/** A data segment as parsed in place: offsets are relative to the buffer. */
export interface SegmentView {
  /** 4 or 6; 0 when the frame is not a coalescible data segment. */
  family: 0 | 4 | 6;
  /** Offset of the Ethernet header. */
  at: number;
  /** Frame length. */
  length: number;
  ipHeaderLength: number;
  seq: number;
  payloadLength: number;
  flags: number;
}

/** A SegmentView to fill (one per port, reused). */
export function emptySegmentView(): SegmentView {
  return { family: 0, at: 0, length: 0, ipHeaderLength: 0, seq: 0, payloadLength: 0, flags: 0 };
}

/**
 * Parse the frame at buf[at, at+length) into `out`; returns true when it
 * is a plain TCP data segment that may start or continue a run.
 */
export function parseDataSegment(buf: Uint8Array, at: number, length: number, out: SegmentView): boolean {
  out.family = 0;
  if (length < ETHERNET_HEADER + IPV4_HEADER + TCP_HEADER + 1 || at < 0 || at + length > buf.length) return false;
  const type = be16(buf, at + 12);
  const ip = at + ETHERNET_HEADER;
  let ipHeaderLength: number;
  let family: 4 | 6;
  if (type === 0x0800) {
    if (buf[ip] !== 0x45 || buf[ip + 9] !== PROTOCOL_TCP) return false;
    if ((be16(buf, ip + 6) & 0x3fff) !== 0) return false; // MF or a fragment offset
    if (be16(buf, ip + 2) !== length - ETHERNET_HEADER) return false;
    ipHeaderLength = IPV4_HEADER;
    family = 4;
  } else if (type === 0x86dd) {
    if (length < ETHERNET_HEADER + IPV6_HEADER + TCP_HEADER + 1) return false;
    if (buf[ip] >> 4 !== 6 || buf[ip + 6] !== PROTOCOL_TCP) return false;
    if (be16(buf, ip + 4) !== length - ETHERNET_HEADER - IPV6_HEADER) return false;
    ipHeaderLength = IPV6_HEADER;
    family = 6;
  } else {
    return false;
  }
  const tcp = ip + ipHeaderLength;
  if (buf[tcp + 12] >> 4 !== 5) return false; // options (or a bogus offset)
  const flags = buf[tcp + 13];
  if ((flags & ~TCP_PSH) !== TCP_ACK) return false;
  out.family = family;
  out.at = at;
  out.length = length;
  out.ipHeaderLength = ipHeaderLength;
  out.seq = be32(buf, tcp + 4);
  out.payloadLength = length - ETHERNET_HEADER - ipHeaderLength - TCP_HEADER;
  out.flags = flags;
  return true;
}

function bytesEqual(buf: Uint8Array, a: number, b: number, length: number): boolean {
  for (let i = 0; i < length; i++) if (buf[a + i] !== buf[b + i]) return false;
  return true;
}

/**
 * Does segment `next` continue the run whose first frame is `head` (its
 * current length `runLength`, next expected sequence number `nextSeq`,
 * segment size `segmentSize`)? Same Ethernet and IP addresses, same
 * TOS/TTL (flow label/hop limit), same ports, ACK number and window, the
 * expected sequence number, no longer than the segment size, and room left
 * under the IP length limit.
 */
export function continuesRun(buf: Uint8Array, head: SegmentView, runLength: number, nextSeq: number, segmentSize: number, next: SegmentView): boolean {
  if (next.family !== head.family || next.seq !== nextSeq || next.payloadLength > segmentSize) return false;
  if (runLength - ETHERNET_HEADER + next.payloadLength > MAX_L3_LENGTH) return false;
  const h = head.at;
  const n = next.at;
  if (!bytesEqual(buf, h, n, ETHERNET_HEADER)) return false;
  const hip = h + ETHERNET_HEADER;
  const nip = n + ETHERNET_HEADER;
  if (head.family === 4) {
    if (buf[hip + 1] !== buf[nip + 1] || buf[hip + 8] !== buf[nip + 8] || !bytesEqual(buf, hip + 12, nip + 12, 8)) return false;
  } else if (!bytesEqual(buf, hip, nip, 4) || buf[hip + 7] !== buf[nip + 7] || !bytesEqual(buf, hip + 8, nip + 8, 32)) {
    return false;
  }
  const htcp = hip + head.ipHeaderLength;
  const ntcp = nip + next.ipHeaderLength;
  // Ports, then the ACK number, then the window.
  return bytesEqual(buf, htcp, ntcp, 4) && bytesEqual(buf, htcp + 8, ntcp + 8, 4) && bytesEqual(buf, htcp + 14, ntcp + 14, 2);
}

/**
 * Turn the run at buf[head.at, head.at+runLength) (its first segment's
 * headers followed by every merged payload) into one GSO frame: IP length
 * (and IPv4 header checksum), PSH when any segment had it, the TCP
 * checksum field set to the pseudo-header sum for a partial checksum, and
 * the 10-byte virtio-net header written at buf[head.at - 10] in host byte
 * order (tun's IFF_VNET_HDR order unless TUNSETVNETLE/BE says otherwise).
 */
export function finishRun(buf: Uint8Array, head: SegmentView, runLength: number, segmentSize: number, anyPush: boolean): void {
  const ip = head.at + ETHERNET_HEADER;
  const tcp = ip + head.ipHeaderLength;
  const l4Length = runLength - ETHERNET_HEADER - head.ipHeaderLength;
  let pseudo: number;
  if (head.family === 4) {
    setBe16(buf, ip + 2, runLength - ETHERNET_HEADER);
    setBe16(buf, ip + 10, 0);
    setBe16(buf, ip + 10, internetChecksum(buf, ip, IPV4_HEADER));
    pseudo = pseudoHeaderSumIpv4(buf, ip + 12, buf, ip + 16, PROTOCOL_TCP, l4Length);
  } else {
    setBe16(buf, ip + 4, l4Length);
    pseudo = pseudoHeaderSumIpv6(buf, ip + 8, buf, ip + 24, PROTOCOL_TCP, l4Length);
  }
  if (anyPush) buf[tcp + 13] |= TCP_PSH;
  // Partial checksum: the field holds the folded pseudo-header sum; the kernel adds the rest from csum_start.
  setBe16(buf, tcp + 16, foldSum(pseudo));
  const h = head.at - 10;
  buf[h] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
  buf[h + 1] = head.family === 4 ? VIRTIO_NET_HDR_GSO_TCPV4 : VIRTIO_NET_HDR_GSO_TCPV6;
  setHostU16(buf, h + 2, ETHERNET_HEADER + head.ipHeaderLength + TCP_HEADER); // hdr_len
  setHostU16(buf, h + 4, segmentSize); // gso_size
  setHostU16(buf, h + 6, ETHERNET_HEADER + head.ipHeaderLength); // csum_start
  setHostU16(buf, h + 8, 16); // csum_offset: TCP's checksum field
}
