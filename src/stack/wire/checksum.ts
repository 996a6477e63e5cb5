/**
 * The Internet checksum (RFC 1071) and the big-endian byte helpers every wire
 * view uses.
 *
 * Sums are kept "unfolded": plain JS numbers that add 16-bit words without
 * carry folding (exact up to 2^53, i.e. far beyond any packet), so partial
 * sums over several ranges can simply be added and folded once at the end.
 */
import type { SegmentList } from '../../io/frame-io';

export { be16, be32, setBe16, setBe32 } from '../../sys/byte-order';

/**
 * Unfolded one's-complement sum of bytes[offset, offset+length) read as
 * big-endian 16-bit words (an odd trailing byte is padded with zero), added
 * to `initial`.
 */
export function sumBytes(bytes: Uint8Array, offset: number, length: number, initial = 0): number {
  let sum = initial;
  const end = offset + length;
  const evenEnd = offset + (length & ~1);
  let i = offset;
  for (; i < evenEnd; i += 2) sum += (bytes[i] << 8) | bytes[i + 1];
  if (i < end) sum += bytes[i] << 8;
  return sum;
}

/** Fold an unfolded sum into 16 bits with end-around carry. */
export function foldSum(sum: number): number {
  // Two steps of the folding loop suffice below 2^32; larger sums go through
  // division first (still exact in doubles).
  while (sum > 0xffff) sum = (sum % 0x10000) + Math.floor(sum / 0x10000);
  return sum;
}

/** The checksum field value for an unfolded sum: ~fold(sum) & 0xffff. */
export function finishChecksum(sum: number): number {
  return ~foldSum(sum) & 0xffff;
}

/** Internet checksum of bytes[offset, offset+length) (the value to store). */
export function internetChecksum(bytes: Uint8Array, offset: number, length: number, initial = 0): number {
  return finishChecksum(sumBytes(bytes, offset, length, initial));
}

/** Swap the two bytes of a folded 16-bit sum. */
function swap16(value: number): number {
  return ((value & 0xff) << 8) | (value >>> 8);
}

/**
 * Unfolded sum of bytes [from, from+length) of a SegmentList's concatenation,
 * as if they were contiguous. A segment that starts at an odd position of
 * the stream is summed on its own and byte-swapped (RFC 1071 2(B)), so
 * segment boundaries may fall anywhere.
 */
export function sumSegments(list: SegmentList, from: number, length: number, initial = 0): number {
  let sum = initial;
  let skip = from;
  let position = 0; // bytes of the requested range already summed
  for (let i = 0; i < list.count && position < length; i++) {
    const segLen = list.lengths[i];
    if (skip >= segLen) {
      skip -= segLen;
      continue;
    }
    const n = Math.min(segLen - skip, length - position);
    const part = sumBytes(list.buffers[i], list.offsets[i] + skip, n);
    sum += (position & 1) === 0 ? part : swap16(foldSum(part));
    position += n;
    skip = 0;
  }
  return sum;
}

/** Unfolded sum of the IPv4 pseudo-header (RFC 768/793) for an upper-layer length. */
export function pseudoHeaderSumIpv4(src: Uint8Array, srcOffset: number, dst: Uint8Array, dstOffset: number, protocol: number, length: number): number {
  return sumBytes(src, srcOffset, 4) + sumBytes(dst, dstOffset, 4) + protocol + length;
}

/** Unfolded sum of the IPv6 pseudo-header (RFC 8200 8.1) for an upper-layer length. */
export function pseudoHeaderSumIpv6(src: Uint8Array, srcOffset: number, dst: Uint8Array, dstOffset: number, nextHeader: number, length: number): number {
  return sumBytes(src, srcOffset, 16) + sumBytes(dst, dstOffset, 16) + Math.floor(length / 0x10000) + (length & 0xffff) + nextHeader;
}

/**
 * Incremental update (RFC 1624 eqn. 3) of a stored checksum when one 16-bit
 * word of the covered data changes from oldWord to newWord. Returns the new
 * checksum field value.
 */
export function updateChecksum16(checksum: number, oldWord: number, newWord: number): number {
  const sum = (~checksum & 0xffff) + (~oldWord & 0xffff) + (newWord & 0xffff);
  return ~foldSum(sum) & 0xffff;
}
