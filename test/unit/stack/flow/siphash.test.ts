/**
 * SipHash-2-4 against the reference test vectors (key 00..0f, message
 * 00..len-1, digest bytes little-endian), and -2-4 and -1-3 against a
 * straightforward BigInt transcription of the algorithm for random keys
 * and lengths.
 */
import { expect } from 'chai';
import { randomBytes } from 'crypto';
import { sipHash13Words, sipHash32, sipHash32Words, sipHash64, sipHashKey } from '../../../../src/stack/flow/siphash';

/** vectors_sip64 of the reference implementation: digest of message length i. */
const VECTORS: Record<number, number[]> = {
  0: [0x31, 0x0e, 0x0e, 0xdd, 0x47, 0xdb, 0x6f, 0x72],
  1: [0xfd, 0x67, 0xdc, 0x93, 0xc5, 0x39, 0xf8, 0x74],
  2: [0x5a, 0x4f, 0xa9, 0xd9, 0x09, 0x80, 0x6c, 0x0d],
  3: [0x2d, 0x7e, 0xfb, 0xd7, 0x96, 0x66, 0x67, 0x85],
  4: [0xb7, 0x87, 0x71, 0x27, 0xe0, 0x94, 0x27, 0xcf],
  5: [0x8d, 0xa6, 0x99, 0xcd, 0x64, 0x55, 0x76, 0x18],
  6: [0xce, 0xe3, 0xfe, 0x58, 0x6e, 0x46, 0xc9, 0xcb],
  7: [0x37, 0xd1, 0x01, 0x8b, 0xf5, 0x00, 0x02, 0xab],
  8: [0x62, 0x24, 0x93, 0x9a, 0x79, 0xf5, 0xf5, 0x93],
  9: [0xb0, 0xe4, 0xa9, 0x0b, 0xdf, 0x82, 0x00, 0x9e],
  15: [0xe5, 0x45, 0xbe, 0x49, 0x61, 0xca, 0x29, 0xa1],
};

const MASK = (1n << 64n) - 1n;
const rotl = (x: bigint, b: bigint): bigint => ((x << b) | (x >> (64n - b))) & MASK;

/** The algorithm as the paper writes it, with BigInt lanes (c rounds per block, d at the end). */
function referenceSipHash(key: Uint8Array, message: Uint8Array, c = 2, d = 4): bigint {
  const le = (bytes: Uint8Array, at: number, n: number): bigint => {
    let value = 0n;
    for (let i = n - 1; i >= 0; i--) value = (value << 8n) | BigInt(bytes[at + i]);
    return value;
  };
  const k0 = le(key, 0, 8);
  const k1 = le(key, 8, 8);
  let v0 = k0 ^ 0x736f6d6570736575n;
  let v1 = k1 ^ 0x646f72616e646f6dn;
  let v2 = k0 ^ 0x6c7967656e657261n;
  let v3 = k1 ^ 0x7465646279746573n;
  const round = (): void => {
    v0 = (v0 + v1) & MASK; v1 = rotl(v1, 13n); v1 ^= v0; v0 = rotl(v0, 32n);
    v2 = (v2 + v3) & MASK; v3 = rotl(v3, 16n); v3 ^= v2;
    v0 = (v0 + v3) & MASK; v3 = rotl(v3, 21n); v3 ^= v0;
    v2 = (v2 + v1) & MASK; v1 = rotl(v1, 17n); v1 ^= v2; v2 = rotl(v2, 32n);
  };
  const blocks = Math.floor(message.length / 8);
  for (let i = 0; i <= blocks; i++) {
    const m = i < blocks ? le(message, i * 8, 8) : (BigInt(message.length & 0xff) << 56n) | le(message, i * 8, message.length - i * 8);
    v3 ^= m;
    for (let r = 0; r < c; r++) round();
    v0 ^= m;
  }
  v2 ^= 0xffn;
  for (let i = 0; i < d; i++) round();
  return v0 ^ v1 ^ v2 ^ v3;
}

function digestBytes(out: Uint32Array): number[] {
  const bytes: number[] = [];
  for (const word of [out[1], out[0]]) for (let i = 0; i < 4; i++) bytes.push((word >>> (8 * i)) & 0xff);
  return bytes;
}

describe('SipHash-2-4', () => {
  const key = sipHashKey(Uint8Array.from({ length: 16 }, (_, i) => i));
  const message = Uint8Array.from({ length: 64 }, (_, i) => i);

  for (const [length, digest] of Object.entries(VECTORS)) {
    it(`matches the reference vector for a ${length}-byte message`, () => {
      const out = new Uint32Array(2);
      sipHash64(key, message, 0, Number(length), out);
      expect(digestBytes(out)).to.deep.equal(digest);
    });
  }

  it('matches a BigInt transcription for random keys, lengths 0-63 and offsets', () => {
    const out = new Uint32Array(2);
    for (let trial = 0; trial < 200; trial++) {
      const keyBytes = randomBytes(16);
      const length = trial % 64;
      const offset = trial % 7;
      const buffer = randomBytes(offset + length);
      sipHash64(sipHashKey(keyBytes), buffer, offset, length, out);
      const expected = referenceSipHash(keyBytes, buffer.subarray(offset, offset + length));
      expect((BigInt(out[0]) << 32n) | BigInt(out[1])).to.equal(expected);
      expect(sipHash32(sipHashKey(keyBytes), buffer, offset, length)).to.equal(Number(expected & 0xffffffffn));
    }
  });

  it('hashes a message of words as the same SipHash of their little-endian bytes', () => {
    const keyBytes = randomBytes(16);
    const words = new Int32Array(10);
    for (let count = 0; count <= 10; count++) {
      for (let i = 0; i < count; i++) words[i] = randomBytes(4).readInt32LE(0);
      const bytes = Buffer.alloc(4 * count);
      for (let i = 0; i < count; i++) bytes.writeInt32LE(words[i], 4 * i);
      expect(sipHash32Words(sipHashKey(keyBytes), words, count)).to.equal(Number(referenceSipHash(keyBytes, bytes) & 0xffffffffn));
      expect(sipHash13Words(sipHashKey(keyBytes), words, count), 'SipHash-1-3').to.equal(Number(referenceSipHash(keyBytes, bytes, 1, 3) & 0xffffffffn));
    }
  });

  it('depends on the key', () => {
    const other = sipHashKey(Uint8Array.from({ length: 16 }, (_, i) => 15 - i));
    expect(sipHash32(key, message, 0, 14)).to.not.equal(sipHash32(other, message, 0, 14));
  });

  it('rejects a short key', () => {
    expect(() => sipHashKey(new Uint8Array(8))).to.throw(RangeError);
  });
});
