/**
 * The fast payload checksum (src/stack/l4/checksum.ts) agrees with the
 * reference byte loop of wire/checksum.ts for every alignment, length and
 * segmentation.
 */
import { expect } from 'chai';
import { fastSumBytes, fastSumSegments } from '../../../../src/stack/l4/checksum';
import { SegmentList } from '../../../../src/io/frame-io';
import { sumBytes, sumSegments } from '../../../../src/stack/wire/checksum';
import { patternBytes } from '../../../support/tcp-guest';

/** Sums compare modulo 0xffff (ones' complement arithmetic). */
function same(a: number, b: number): boolean {
  return a % 0xffff === b % 0xffff;
}

describe('tcp-checksum', () => {
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
});
