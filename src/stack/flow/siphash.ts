/**
 * SipHash-2-4 (Aumasson and Bernstein), the keyed hash passt's flow table
 * uses too: with a secret key, a peer cannot choose flow keys that collide
 * in one bucket, which turns a plain hash table into a list to walk on
 * every packet.
 *
 * JavaScript has no 64-bit integers outside BigInt (which allocates), so
 * each 64-bit lane is two unsigned 32-bit halves held in module-level
 * variables; nothing here allocates. Not re-entrant across threads' shared
 * memory, but every worker has its own module instance.
 */

/** A 128-bit SipHash key as four little-endian 32-bit words: k0 low, k0 high, k1 low, k1 high. */
export type SipHashKey = Uint32Array;

// The state v0..v3, high (h) and low (l) halves.
let v0h = 0;
let v0l = 0;
let v1h = 0;
let v1l = 0;
let v2h = 0;
let v2l = 0;
let v3h = 0;
let v3l = 0;

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

/** One SipRound over the module state. */
function sipRound(): void {
  // v0 += v1; v1 <<<= 13; v1 ^= v0; v0 <<<= 32
  let lo = (v0l + v1l) >>> 0;
  v0h = (v0h + v1h + (lo < v0l ? 1 : 0)) >>> 0;
  v0l = lo;
  let h = ((v1h << 13) | (v1l >>> 19)) >>> 0;
  let l = ((v1l << 13) | (v1h >>> 19)) >>> 0;
  v1h = (h ^ v0h) >>> 0;
  v1l = (l ^ v0l) >>> 0;
  h = v0h;
  v0h = v0l;
  v0l = h;
  // v2 += v3; v3 <<<= 16; v3 ^= v2
  lo = (v2l + v3l) >>> 0;
  v2h = (v2h + v3h + (lo < v2l ? 1 : 0)) >>> 0;
  v2l = lo;
  h = ((v3h << 16) | (v3l >>> 16)) >>> 0;
  l = ((v3l << 16) | (v3h >>> 16)) >>> 0;
  v3h = (h ^ v2h) >>> 0;
  v3l = (l ^ v2l) >>> 0;
  // v0 += v3; v3 <<<= 21; v3 ^= v0
  lo = (v0l + v3l) >>> 0;
  v0h = (v0h + v3h + (lo < v0l ? 1 : 0)) >>> 0;
  v0l = lo;
  h = ((v3h << 21) | (v3l >>> 11)) >>> 0;
  l = ((v3l << 21) | (v3h >>> 11)) >>> 0;
  v3h = (h ^ v0h) >>> 0;
  v3l = (l ^ v0l) >>> 0;
  // v2 += v1; v1 <<<= 17; v1 ^= v2; v2 <<<= 32
  lo = (v2l + v1l) >>> 0;
  v2h = (v2h + v1h + (lo < v2l ? 1 : 0)) >>> 0;
  v2l = lo;
  h = ((v1h << 17) | (v1l >>> 15)) >>> 0;
  l = ((v1l << 17) | (v1h >>> 15)) >>> 0;
  v1h = (h ^ v2h) >>> 0;
  v1l = (l ^ v2l) >>> 0;
  h = v2h;
  v2h = v2l;
  v2l = h;
}

/** Absorb the 64-bit message word (high, low). */
function compress(high: number, low: number): void {
  v3h = (v3h ^ high) >>> 0;
  v3l = (v3l ^ low) >>> 0;
  sipRound();
  sipRound();
  v0h = (v0h ^ high) >>> 0;
  v0l = (v0l ^ low) >>> 0;
}

/** Run SipHash-2-4 over bytes[offset, offset+length); the result is left in the state (see the readers). */
function run(key: SipHashKey, bytes: Uint8Array, offset: number, length: number): void {
  const k0l = key[0];
  const k0h = key[1];
  const k1l = key[2];
  const k1h = key[3];
  v0h = (k0h ^ 0x736f6d65) >>> 0;
  v0l = (k0l ^ 0x70736575) >>> 0;
  v1h = (k1h ^ 0x646f7261) >>> 0;
  v1l = (k1l ^ 0x6e646f6d) >>> 0;
  v2h = (k0h ^ 0x6c796765) >>> 0;
  v2l = (k0l ^ 0x6e657261) >>> 0;
  v3h = (k1h ^ 0x74656462) >>> 0;
  v3l = (k1l ^ 0x79746573) >>> 0;
  const end = offset + length;
  const whole = offset + (length & ~7);
  let at = offset;
  for (; at < whole; at += 8) compress(readWordLe(bytes, at + 4), readWordLe(bytes, at));
  // The last word: the remaining 0-7 bytes, and the length's low byte on top.
  let low = 0;
  let high = (length & 0xff) << 24;
  for (let i = 0; at + i < end; i++) {
    if (i < 4) low |= bytes[at + i] << (8 * i);
    else high |= bytes[at + i] << (8 * (i - 4));
  }
  compress(high >>> 0, low >>> 0);
  v2l = (v2l ^ 0xff) >>> 0;
  sipRound();
  sipRound();
  sipRound();
  sipRound();
}

/** The low 32 bits of SipHash-2-4 of bytes[offset, offset+length) under `key` (what hash tables index with). */
export function sipHash32(key: SipHashKey, bytes: Uint8Array, offset: number, length: number): number {
  run(key, bytes, offset, length);
  return (v0l ^ v1l ^ v2l ^ v3l) >>> 0;
}

/** The whole 64-bit SipHash-2-4 into out[0] (high half) and out[1] (low half). */
export function sipHash64(key: SipHashKey, bytes: Uint8Array, offset: number, length: number, out: Uint32Array): void {
  run(key, bytes, offset, length);
  out[0] = (v0h ^ v1h ^ v2h ^ v3h) >>> 0;
  out[1] = (v0l ^ v1l ^ v2l ^ v3l) >>> 0;
}
