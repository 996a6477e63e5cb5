/**
 * Frames around fuzzer bytes: an Ethernet + IPv4/IPv6 envelope with correct
 * header and L4 checksums, so the fuzzer's bytes reach the protocol parsers
 * behind those checks instead of being dropped at them.
 */
import { finishChecksum, pseudoHeaderSumIpv4, pseudoHeaderSumIpv6, setBe16, sumBytes } from '../src/stack/wire/checksum';
import { GUEST_MAC, GUEST_V4, GUEST_V6, OUR_MAC, ethernetFrame, ipv4Packet, ipv6Packet } from '../test/support/fakes/stack-fakes';

export const ETHERTYPE_IPV4 = 0x0800;
export const ETHERTYPE_ARP = 0x0806;
export const ETHERTYPE_IPV6 = 0x86dd;
export const BROADCAST_MAC = Uint8Array.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);

/** Byte offset of the checksum field in an L4 header, or -1 when the protocol has none the stack checks. */
function checksumOffset(protocol: number): number {
  if (protocol === 6) return 16;
  if (protocol === 17) return 6;
  if (protocol === 1 || protocol === 58) return 2;
  return -1;
}

/** Set the L4 checksum of `l4` (IPv4 when src has 4 bytes); ICMPv4 has no pseudo-header. */
export function fixChecksum(l4: Uint8Array, protocol: number, src: Uint8Array, dst: Uint8Array): void {
  const at = checksumOffset(protocol);
  if (at < 0 || l4.length < at + 2) return;
  l4[at] = 0;
  l4[at + 1] = 0;
  let pseudo = 0;
  if (protocol !== 1) {
    pseudo = src.length === 4 ? pseudoHeaderSumIpv4(src, 0, dst, 0, protocol, l4.length) : pseudoHeaderSumIpv6(src, 0, dst, 0, protocol, l4.length);
  }
  const sum = finishChecksum(sumBytes(l4, 0, l4.length, pseudo));
  setBe16(l4, at, protocol === 17 && sum === 0 ? 0xffff : sum);
}

/** For UDP, make the length field match the datagram. */
function fixLength(l4: Uint8Array, protocol: number): void {
  if (protocol === 17 && l4.length >= 8) setBe16(l4, 4, l4.length);
}

export function ipv4Frame(protocol: number, l4: Uint8Array, dst: Uint8Array, dstMac: Uint8Array = OUR_MAC, src: Uint8Array = GUEST_V4): Uint8Array {
  const copy = Uint8Array.from(l4);
  fixLength(copy, protocol);
  fixChecksum(copy, protocol, src, dst);
  return ethernetFrame(dstMac, GUEST_MAC, ETHERTYPE_IPV4, ipv4Packet(src, dst, protocol, copy));
}

export function ipv6Frame(nextHeader: number, l4: Uint8Array, dst: Uint8Array, dstMac: Uint8Array = OUR_MAC, hopLimit = 64, src: Uint8Array = GUEST_V6): Uint8Array {
  const copy = Uint8Array.from(l4);
  fixLength(copy, nextHeader);
  fixChecksum(copy, nextHeader, src, dst);
  return ethernetFrame(dstMac, GUEST_MAC, ETHERTYPE_IPV6, ipv6Packet(src, dst, nextHeader, copy, hopLimit));
}
