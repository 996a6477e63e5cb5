/**
 * The shared L4 checksum (src/stack/l4/checksum.ts): the fast payload sum
 * agrees with the reference byte loop of wire/checksum.ts for every
 * alignment, length and segmentation; the filler writes a full checksum
 * (UDP's 0 as 0xffff) or a partial one with the offload to commit; the
 * guest-side check accepts what the filler wrote and rejects a flipped bit.
 */
import { expect } from 'chai';
import { fastSumBytes, fastSumSegments, fillL4Checksum, l4ChecksumValid } from '../../../../src/stack/l4/checksum';
import { OFFLOAD_F_NEEDS_CSUM, type OffloadInfo, SegmentList } from '../../../../src/io/frame-io';
import { be16, foldSum, sumBytes, sumSegments } from '../../../../src/stack/wire/checksum';
import { patternBytes } from '../../../support/fakes/tcp-guest';

/** Sums compare modulo 0xffff (ones' complement arithmetic). */
function same(a: number, b: number): boolean {
  return a % 0xffff === b % 0xffff;
}

describe('l4 checksum', () => {
  it('matches sumBytes for every buffer alignment, offset parity and length', () => {
    const backing = patternBytes(9000, 3);
    for (let byteOffset = 0; byteOffset < 4; byteOffset++) {
      const bytes = new Uint8Array(backing.buffer, byteOffset, backing.length - 8);
      for (let offset = 0; offset < 8; offset++) {
        for (const length of [0, 1, 2, 3, 63, 64, 65, 66, 67, 100, 1001, 4096, 8191]) {
          expect(same(fastSumBytes(bytes, offset, length), sumBytes(bytes, offset, length)), `byteOffset ${byteOffset} offset ${offset} length ${length}`).to.equal(true);
        }
      }
    }
  });

  it('handles all-ones data (sums that fold to 0xffff) like the reference', () => {
    const bytes = new Uint8Array(4096).fill(0xff);
    expect(same(fastSumBytes(bytes, 1, 4000), sumBytes(bytes, 1, 4000))).to.equal(true);
  });

  it('matches sumSegments over segment lists cut at odd and even places', () => {
    const data = patternBytes(20000, 5);
    for (const cuts of [[], [1], [7, 100, 101, 5000], [64, 65, 130, 131, 19999]]) {
      const points = [0, ...cuts, data.length];
      const list = new SegmentList(points.length);
      for (let i = 0; i + 1 < points.length; i++) {
        const backing = new Uint8Array(points[i + 1] - points[i] + 16);
        const at = 1 + (i % 4);
        backing.set(data.subarray(points[i], points[i + 1]), at);
        list.push(backing, at, points[i + 1] - points[i]);
      }
      for (const [from, length] of [[0, 20000], [54, 19946], [3, 1000], [99, 15000]]) {
        expect(same(fastSumSegments(list, from, length, 17), sumSegments(list, from, length, 17)), `cuts ${cuts} from ${from}`).to.equal(true);
      }
    }
  });

  /** A frame as one segment list: an 8-byte "header" at 0 (checksum field at 6) then the payload, cut at `cut`. */
  function frame(payload: Uint8Array, cut: number): { list: SegmentList; header: Uint8Array } {
    const header = new Uint8Array(8 + cut);
    header.set([0x12, 0x34, 0x00, 0x35, 0, 8 + payload.length, 0xaa, 0xbb], 0);
    header.set(payload.subarray(0, cut), 8);
    const rest = payload.slice(cut);
    const list = new SegmentList(2);
    list.push(header, 0, header.length);
    list.push(rest, 0, rest.length);
    return { list, header };
  }
  const PARTIAL: OffloadInfo = { flags: OFFLOAD_F_NEEDS_CSUM, gsoType: 0, hdrLen: 0, gsoSize: 0, csumStart: 0, csumOffset: 6 };

  it('fills a full checksum over header and payload that the guest-side check accepts, and a flipped bit fails it', () => {
    for (const cut of [0, 1, 7, 100]) {
      const payload = patternBytes(301, cut + 1);
      const { list, header } = frame(payload, cut);
      const pseudo = 0x1234 + 0x4321;
      const result = fillL4Checksum(header, 0, 8, 6, pseudo, list, 8, payload.length, false, PARTIAL, false);
      expect(result).to.equal(undefined);
      expect(l4ChecksumValid(list, 0, 8 + payload.length, pseudo), `cut ${cut}`).to.equal(true);
      header[2] ^= 0x10;
      expect(l4ChecksumValid(list, 0, 8 + payload.length, pseudo)).to.equal(false);
    }
  });

  it('with offload writes the folded pseudo-header sum and returns the partial offload', () => {
    const payload = patternBytes(64, 9);
    const { list, header } = frame(payload, 10);
    const pseudo = 0x2ffff;
    expect(fillL4Checksum(header, 0, 8, 6, pseudo, list, 8, payload.length, true, PARTIAL, true)).to.equal(PARTIAL);
    expect(be16(header, 6)).to.equal(foldSum(pseudo));
  });

  it('sends a computed zero as 0xffff for UDP (zero means no checksum) but as zero for TCP', () => {
    // A header whose words sum to 0xffff with the checksum field zero: its checksum is 0.
    const header = Uint8Array.from([0xff, 0x00, 0x00, 0xff, 0, 0, 0, 0]);
    const list = new SegmentList(1);
    list.push(header, 0, 8);
    fillL4Checksum(header, 0, 8, 6, 0, list, 8, 0, false, PARTIAL, true);
    expect(be16(header, 6)).to.equal(0xffff);
    fillL4Checksum(header, 0, 8, 6, 0, list, 8, 0, false, PARTIAL, false);
    expect(be16(header, 6)).to.equal(0);
  });
});
