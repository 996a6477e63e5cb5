/**
 * The L4 checksum of TCP segments and UDP datagrams, one path for both.
 *
 * A faster Internet checksum sum for payloads (every byte moved is summed
 * once per direction, so this is the translators' main CPU cost).
 *
 * The ones' complement sum can be taken over 32-bit words and folded at the
 * end (RFC 1071 2(C)): a little-endian 32-bit word c0 c1 c2 c3 is congruent
 * modulo 0xffff to the 16-bit little-endian words (c0 c1) + (c2 c3), and the
 * sum of little-endian words is the byte-swapped sum of big-endian words
 * (RFC 1071 2(B)). So the aligned middle of a range is summed through a
 * Uint32Array view (cached per ArrayBuffer: no allocation per call) and
 * swapped once; the unaligned head and tail bytes go through sumBytes.
 *
 * Results are "unfolded" sums like those of wire/checksum.ts: add them and
 * fold once. Big-endian hosts use the plain byte loop.
 */
import { endianness } from 'os';
import type { OffloadInfo, SegmentList } from '../../io/frame-io';
import { finishChecksum, foldSum, setBe16, sumBytes } from '../wire/checksum';

const LITTLE_ENDIAN = endianness() === 'LE';
/** Below this many bytes the plain loop is as fast. */
const FAST_THRESHOLD = 64;

const views = new WeakMap<ArrayBufferLike, Uint32Array>();
let lastBuffer: ArrayBufferLike | null = null;
let lastView: Uint32Array | null = null;

/** A Uint32Array over the whole of buffer (its length rounded down to 4 bytes), cached. */
function wordsOf(buffer: ArrayBufferLike): Uint32Array {
  if (buffer === lastBuffer && lastView !== null) return lastView;
  let view = views.get(buffer);
  if (view === undefined) {
    view = new Uint32Array(buffer, 0, Math.floor(buffer.byteLength / 4));
    views.set(buffer, view);
  }
  lastBuffer = buffer;
  lastView = view;
  return view;
}

function swap16(value: number): number {
  return ((value & 0xff) << 8) | (value >>> 8);
}

/**
 * Unfolded sum of bytes[offset, offset+length) read as big-endian 16-bit
 * words from offset (the same value as sumBytes, modulo 0xffff).
 */
export function fastSumBytes(bytes: Uint8Array, offset: number, length: number): number {
  if (!LITTLE_ENDIAN || length < FAST_THRESHOLD) return sumBytes(bytes, offset, length);
  const absolute = bytes.byteOffset + offset;
  const head = (4 - (absolute & 3)) & 3;
  let sum = sumBytes(bytes, offset, head);
  const middleLength = (length - head) & ~3;
  const words = wordsOf(bytes.buffer);
  const first = (absolute + head) >>> 2;
  const end = first + (middleLength >>> 2);
  let middle = 0;
  for (let i = first; i < end; i++) middle += words[i];
  const folded = foldSum(middle);
  // After an odd head the middle starts at an odd position: its little-endian sum is already the big-endian one.
  sum += (head & 1) === 1 ? folded : swap16(folded);
  const tailAt = offset + head + middleLength;
  const tail = length - head - middleLength;
  if (tail > 0) {
    const tailSum = sumBytes(bytes, tailAt, tail);
    sum += (head & 1) === 1 ? swap16(foldSum(tailSum)) : tailSum;
  }
  return sum;
}

/**
 * Unfolded sum of bytes [from, from+length) of a SegmentList's
 * concatenation, as wire/checksum.ts sumSegments computes it, but with the
 * fast word loop for each piece.
 */
export function fastSumSegments(list: SegmentList, from: number, length: number, initial = 0): number {
  let sum = initial;
  let skip = from;
  let position = 0;
  for (let i = 0; i < list.count && position < length; i++) {
    const segLength = list.lengths[i];
    if (skip >= segLength) {
      skip -= segLength;
      continue;
    }
    const n = Math.min(segLength - skip, length - position);
    const part = fastSumBytes(list.buffers[i], list.offsets[i] + skip, n);
    sum += (position & 1) === 0 ? part : swap16(foldSum(part));
    position += n;
    skip = 0;
  }
  return sum;
}

/**
 * Fill the checksum field of an L4 header to the guest: headerLength bytes
 * at out[l4] (the checksum field at out[l4 + checksumOffset], any value on
 * entry), its payload the payloadLength bytes at payloadAt of the
 * reservation `list`, `pseudo` the pseudo-header sum. With `partial` (the
 * port has checksum offload) the field gets the folded pseudo-header sum and
 * `partialOffload` is returned for the commit (NEEDS_CSUM, see context.ts);
 * otherwise the full checksum, and undefined. UDP sets `zeroIsNone`: a
 * computed 0 is sent as 0xffff (RFC 768), 0 meaning "no checksum".
 */
export function fillL4Checksum(
  out: Uint8Array, l4: number, headerLength: number, checksumOffset: number, pseudo: number,
  list: SegmentList, payloadAt: number, payloadLength: number,
  partial: boolean, partialOffload: OffloadInfo, zeroIsNone: boolean,
): OffloadInfo | undefined {
  const field = l4 + checksumOffset;
  if (partial) {
    setBe16(out, field, foldSum(pseudo));
    return partialOffload;
  }
  setBe16(out, field, 0);
  let sum = sumBytes(out, l4, headerLength, pseudo);
  if (payloadLength > 0) sum += fastSumSegments(list, payloadAt, payloadLength);
  const checksum = finishChecksum(sum);
  setBe16(out, field, checksum === 0 && zeroIsNone ? 0xffff : checksum);
  return undefined;
}

/**
 * True when a guest's L4 message (length bytes at `from` of its frame's
 * segments, `pseudo` its pseudo-header sum) has a correct checksum: the
 * one check of TCP and UDP from the guest.
 */
export function l4ChecksumValid(segments: SegmentList, from: number, length: number, pseudo: number): boolean {
  return finishChecksum(fastSumSegments(segments, from, length, pseudo)) === 0;
}
