/**
 * SipHash (Aumasson and Bernstein), -2-4 and -1-3, the keyed hash passt's
 * flow table uses too (its 2-4): with a secret key, a peer cannot choose flow keys that collide
 * in one bucket, which turns a plain hash table into a list to walk on
 * every packet.
 *
 * JavaScript has no 64-bit integers outside BigInt (which allocates), so
 * each 64-bit lane is two unsigned 32-bit halves in local variables (as
 * module-level variables, values past the small-integer range would be
 * boxed: an allocation per step); nothing here allocates. Every worker
 * thread has its own module instance and result buffer.
 */

/** A 128-bit SipHash key as four little-endian 32-bit words: k0 low, k0 high, k1 low, k1 high. */
export type SipHashKey = Uint32Array;

/** The final state v0..v3 of the last run, high (even) and low (odd) halves: typed storage, so nothing is boxed. */
const state = new Uint32Array(8);

/** A key from 16 bytes (bytes 0-7 are k0, 8-15 k1, both little-endian, as in the reference code). */
export function sipHashKey(bytes: Uint8Array): SipHashKey {
  if (bytes.length < 16) throw new RangeError('a SipHash key is 16 bytes');
  const key = new Uint32Array(4);
  for (let i = 0; i < 4; i++) key[i] = readWordLe(bytes, i * 4);
  return key;
}

function readWordLe(bytes: Uint8Array, at: number): number {
  return (bytes[at] | (bytes[at + 1] << 8) | (bytes[at + 2] << 16) | (bytes[at + 3] << 24)) >>> 0;
}

/**
 * Run SipHash-2-4 over `pairs` blocks of two little-endian words (low word
 * first) and a last block (lastLow, lastHigh: the remaining bytes and the
 * message length's low byte on top), leaving v0..v3 in `state`. One function with the lanes in locals, as signed 32-bit values
 * (`| 0`: an optimising compiler keeps them as machine integers; unsigned
 * ones past 2^31 would be doubles); the carry of a low-half addition is
 * the top bit of (a & b) | ((a | b) & ~sum).
 * Each SipRound is written out once, in a loop run compressionRounds times
 * per block and finalRounds at the end (2 and 4 for SipHash-2-4).
 */
function runCore(key: SipHashKey, words: Int32Array, pairs: number, lastLow: number, lastHigh: number, compressionRounds: number, finalRounds: number): void {
  const k0l = key[0] | 0;
  const k0h = key[1] | 0;
  const k1l = key[2] | 0;
  const k1h = key[3] | 0;
  let v0h = (k0h ^ 0x736f6d65) | 0;
  let v0l = (k0l ^ 0x70736575) | 0;
  let v1h = (k1h ^ 0x646f7261) | 0;
  let v1l = (k1l ^ 0x6e646f6d) | 0;
  let v2h = (k0h ^ 0x6c796765) | 0;
  let v2l = (k0l ^ 0x6e657261) | 0;
  let v3h = (k1h ^ 0x74656462) | 0;
  let v3l = (k1l ^ 0x79746573) | 0;
  let pair = 0;
  // Blocks: the whole ones (two words each), then the last (lastLow, lastHigh), then finalisation.
  for (let phase = 0; phase < 3; ) {
    let mh = 0;
    let ml = 0;
    let rounds = compressionRounds;
    if (phase === 0 && pair < pairs) {
      ml = words[2 * pair];
      mh = words[2 * pair + 1];
      pair++;
    } else if (phase === 0 || phase === 1) {
      phase = 1;
      ml = lastLow | 0;
      mh = lastHigh | 0;
    } else {
      v2l = (v2l ^ 0xff) | 0;
      rounds = finalRounds;
    }
    if (phase !== 2) {
      v3h = (v3h ^ mh) | 0;
      v3l = (v3l ^ ml) | 0;
    }
    for (let r = 0; r < rounds; r++) {
      // v0 += v1; v1 <<<= 13; v1 ^= v0; v0 <<<= 32
      let lo = (v0l + v1l) | 0;
      v0h = (v0h + v1h + (((v0l & v1l) | ((v0l | v1l) & ~lo)) >>> 31)) | 0;
      v0l = lo;
      let h = ((v1h << 13) | (v1l >>> 19)) | 0;
      let l = ((v1l << 13) | (v1h >>> 19)) | 0;
      v1h = (h ^ v0h) | 0;
      v1l = (l ^ v0l) | 0;
      h = v0h;
      v0h = v0l;
      v0l = h;
      // v2 += v3; v3 <<<= 16; v3 ^= v2
      lo = (v2l + v3l) | 0;
      v2h = (v2h + v3h + (((v2l & v3l) | ((v2l | v3l) & ~lo)) >>> 31)) | 0;
      v2l = lo;
      h = ((v3h << 16) | (v3l >>> 16)) | 0;
      l = ((v3l << 16) | (v3h >>> 16)) | 0;
      v3h = (h ^ v2h) | 0;
      v3l = (l ^ v2l) | 0;
      // v0 += v3; v3 <<<= 21; v3 ^= v0
      lo = (v0l + v3l) | 0;
      v0h = (v0h + v3h + (((v0l & v3l) | ((v0l | v3l) & ~lo)) >>> 31)) | 0;
      v0l = lo;
      h = ((v3h << 21) | (v3l >>> 11)) | 0;
      l = ((v3l << 21) | (v3h >>> 11)) | 0;
      v3h = (h ^ v0h) | 0;
      v3l = (l ^ v0l) | 0;
      // v2 += v1; v1 <<<= 17; v1 ^= v2; v2 <<<= 32
      lo = (v2l + v1l) | 0;
      v2h = (v2h + v1h + (((v2l & v1l) | ((v2l | v1l) & ~lo)) >>> 31)) | 0;
      v2l = lo;
      h = ((v1h << 17) | (v1l >>> 15)) | 0;
      l = ((v1l << 17) | (v1h >>> 15)) | 0;
      v1h = (h ^ v2h) | 0;
      v1l = (l ^ v2l) | 0;
      h = v2h;
      v2h = v2l;
      v2l = h;
    }
    if (phase !== 2) {
      v0h = (v0h ^ mh) | 0;
      v0l = (v0l ^ ml) | 0;
    }
    if (phase !== 0) phase++;
  }
  state[0] = v0h;
  state[1] = v0l;
  state[2] = v1h;
  state[3] = v1l;
  state[4] = v2h;
  state[5] = v2l;
  state[6] = v3h;
  state[7] = v3l;
}


/** Whole blocks of a byte message as words, for runCore (grown on demand: not for the hot path). */
let blockWords = new Int32Array(32);

/** SipHash-2-4 of bytes[offset, offset+length) into `state`. */
function runBytes(key: SipHashKey, bytes: Uint8Array, offset: number, length: number): void {
  const pairs = length >>> 3;
  if (blockWords.length < 2 * pairs) blockWords = new Int32Array(2 * pairs);
  for (let i = 0; i < 2 * pairs; i++) blockWords[i] = readWordLe(bytes, offset + 4 * i) | 0;
  let low = 0;
  let high = (length & 0xff) << 24;
  const at = offset + 8 * pairs;
  for (let i = 0; at + i < offset + length; i++) {
    if (i < 4) low |= bytes[at + i] << (8 * i);
    else high |= bytes[at + i] << (8 * (i - 4));
  }
  runCore(key, blockWords, pairs, low, high, 2, 4);
}

/**
 * The low 32 bits of SipHash-2-4 of a message of `count` 32-bit words
 * (words[0, count), each taken as its 4 little-endian bytes): what the
 * flow table hashes, with no byte packing on the packet path.
 */
export function sipHash32Words(key: SipHashKey, words: Int32Array, count: number): number {
  runCore(key, words, count >>> 1, (count & 1) !== 0 ? words[count - 1] : 0, ((4 * count) & 0xff) << 24, 2, 4);
  return (state[1] ^ state[3] ^ state[5] ^ state[7]) >>> 0;
}

/**
 * sipHash32Words with SipHash-1-3 (one round per block, three at the
 * end): the variant Rust's and Python's hash tables use against flooding,
 * at about 60% of 2-4's rounds for a flow key; what the flow table uses on
 * every packet.
 */
export function sipHash13Words(key: SipHashKey, words: Int32Array, count: number): number {
  runCore(key, words, count >>> 1, (count & 1) !== 0 ? words[count - 1] : 0, ((4 * count) & 0xff) << 24, 1, 3);
  return (state[1] ^ state[3] ^ state[5] ^ state[7]) >>> 0;
}

/** The low 32 bits of SipHash-2-4 of bytes[offset, offset+length) under `key` (what hash tables index with). */
export function sipHash32(key: SipHashKey, bytes: Uint8Array, offset: number, length: number): number {
  runBytes(key, bytes, offset, length);
  return (state[1] ^ state[3] ^ state[5] ^ state[7]) >>> 0;
}

/** The whole 64-bit SipHash-2-4 into out[0] (high half) and out[1] (low half). */
export function sipHash64(key: SipHashKey, bytes: Uint8Array, offset: number, length: number, out: Uint32Array): void {
  runBytes(key, bytes, offset, length);
  out[0] = (state[0] ^ state[2] ^ state[4] ^ state[6]) >>> 0;
  out[1] = (state[1] ^ state[3] ^ state[5] ^ state[7]) >>> 0;
}
