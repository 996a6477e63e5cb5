/**
 * iovecs over segment lists (src/stack/l4/iovec.ts): the one copier of
 * TCP's and UDP's payload ranges into sendmsg/recvmsg iovecs.
 */
import { expect } from 'chai';
import { SegmentList } from '../../../../src/io/frame-io';
import { iovFromSegments, newIoVecList } from '../../../../src/stack/l4/iovec';

/** A list of segments of the given lengths, each in its own buffer at offset 3, filled with its byte positions in the whole. */
function listOf(lengths: number[]): SegmentList {
  const list = new SegmentList(lengths.length);
  let position = 0;
  for (const length of lengths) {
    const buffer = new Uint8Array(length + 5);
    for (let i = 0; i < length; i++) buffer[3 + i] = (position + i) & 0xff;
    list.push(buffer, 3, length);
    position += length;
  }
  return list;
}

/** The bytes an iovec list points at, concatenated. */
function gathered(iov: ReturnType<typeof newIoVecList>): number[] {
  const out: number[] = [];
  for (let i = 0; i < iov.count; i++) {
    const buffer = iov.buffers[i] as Uint8Array;
    for (let j = 0; j < iov.lengths[i]; j++) out.push(buffer[iov.offsets[i] + j]);
  }
  return out;
}

describe('l4 iovec', () => {
  it('points at exactly the range asked for, across segment boundaries', () => {
    const list = listOf([10, 1, 20, 5]);
    const iov = newIoVecList(8);
    for (const [position, length] of [[0, 36], [3, 7], [9, 3], [10, 1], [11, 25], [35, 1], [0, 0]]) {
      expect(iovFromSegments(iov, list, position, length), `${position}+${length}`).to.equal(true);
      expect(gathered(iov)).to.deep.equal(Array.from({ length }, (_, i) => (position + i) & 0xff));
    }
  });

  it('fails when the range runs past the list or needs more entries than the iovec has', () => {
    const list = listOf([4, 4, 4, 4]);
    expect(iovFromSegments(newIoVecList(8), list, 10, 7)).to.equal(false);
    const small = newIoVecList(2);
    expect(iovFromSegments(small, list, 0, 12)).to.equal(false);
    expect(small.count).to.equal(2);
  });

  it('keeps the entries before `start` (the no-SO_PEEK_OFF prefix) and counts them', () => {
    const list = listOf([6, 6]);
    const iov = newIoVecList(4);
    const prefix = Uint8Array.from([0xee, 0xef]);
    iov.buffers[0] = prefix;
    iov.offsets[0] = 0;
    iov.lengths[0] = 2;
    expect(iovFromSegments(iov, list, 4, 4, 1)).to.equal(true);
    expect(iov.count).to.equal(3);
    expect(gathered(iov)).to.deep.equal([0xee, 0xef, 4, 5, 6, 7]);
  });
});
