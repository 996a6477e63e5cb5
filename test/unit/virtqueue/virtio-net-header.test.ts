import { expect } from 'chai';
import { SegmentList } from '../../../src/io/frame-io';
import {
  VIRTIO_F_VERSION_1,
  VIRTIO_NET_F_MRG_RXBUF,
  VIRTIO_NET_F_MQ,
  VIRTIO_RING_F_EVENT_IDX,
  featureName,
  featureNames,
  hasFeature,
} from '../../../src/virtqueue/features';
import { VirtioNetHeader, emptyOffload, virtioNetHeaderLength } from '../../../src/virtqueue/virtio-net-header';

/** A list over consecutive slices of `buffer`, cut at the given offsets. */
function split(buffer: Uint8Array, cuts: number[]): SegmentList {
  const list = new SegmentList(8);
  let start = 0;
  for (const end of [...cuts, buffer.length]) {
    list.push(buffer, start, end - start);
    start = end;
  }
  return list;
}

const BYTES = Uint8Array.of(0x01, 0x04, 0x36, 0x00, 0xa8, 0x05, 0x22, 0x00, 0x10, 0x00, 0x03, 0x00, 0xee);

describe('virtqueue virtio-net header', () => {
  it('has 12 bytes with VERSION_1 or MRG_RXBUF, 10 otherwise', () => {
    expect(virtioNetHeaderLength(VIRTIO_F_VERSION_1)).to.equal(12);
    expect(virtioNetHeaderLength(VIRTIO_NET_F_MRG_RXBUF)).to.equal(12);
    expect(virtioNetHeaderLength(0n)).to.equal(10);
    expect(() => new VirtioNetHeader(11)).to.throw(RangeError);
  });

  it('reads the fields in place and through a split', () => {
    const header = new VirtioNetHeader(12);
    for (const cuts of [[], [1], [5, 6], [11], [2, 4, 6, 8, 10]]) {
      const out = emptyOffload();
      expect(header.read(split(BYTES.slice(), cuts), out), `cuts ${cuts}`).to.equal(3);
      expect(out).to.deep.equal({ flags: 1, gsoType: 4, hdrLen: 0x36, gsoSize: 1448, csumStart: 0x22, csumOffset: 0x10 });
    }
  });

  it('refuses a list shorter than the header', () => {
    const header = new VirtioNetHeader(12);
    expect(header.read(split(BYTES.slice(0, 11), [4]), emptyOffload())).to.equal(-1);
    expect(header.write(split(new Uint8Array(11), [4]), null, 1)).to.equal(false);
  });

  it('writes the fields in place and through a split, leaving bytes after the header alone', () => {
    const header = new VirtioNetHeader(12);
    const offload = { flags: 1, gsoType: 4, hdrLen: 0x36, gsoSize: 1448, csumStart: 0x22, csumOffset: 0x10 };
    for (const cuts of [[], [3], [7, 12]]) {
      const target = new Uint8Array(13).fill(0xee);
      expect(header.write(split(target, cuts), offload, 3)).to.equal(true);
      expect(Array.from(target), `cuts ${cuts}`).to.deep.equal(Array.from(BYTES));
    }
    const zeroed = new Uint8Array(12).fill(0x55);
    header.write(split(zeroed, [6]), undefined, 1);
    expect(Array.from(zeroed)).to.deep.equal([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
  });

  it('legacy 10-byte header has no num_buffers', () => {
    const header = new VirtioNetHeader(10);
    const target = new Uint8Array(12).fill(0xee);
    header.write(split(target, []), null, 5);
    expect(Array.from(target)).to.deep.equal([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xee, 0xee]);
    expect(header.read(split(BYTES.slice(0, 10), []), emptyOffload())).to.equal(0);
  });
});

describe('virtqueue features', () => {
  it('names bits and tests masks', () => {
    expect(featureName(15)).to.equal('MRG_RXBUF');
    expect(featureName(4)).to.equal('bit4');
    expect(featureNames(VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MQ | VIRTIO_RING_F_EVENT_IDX)).to.deep.equal(['MQ', 'EVENT_IDX', 'VERSION_1']);
    expect(hasFeature(VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MQ, VIRTIO_NET_F_MQ)).to.equal(true);
    expect(hasFeature(VIRTIO_F_VERSION_1, VIRTIO_NET_F_MQ | VIRTIO_F_VERSION_1)).to.equal(false);
  });
});
