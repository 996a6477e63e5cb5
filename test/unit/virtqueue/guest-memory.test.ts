import { expect } from 'chai';
import { SegmentList } from '../../../src/io/frame-io';
import { GuestMemory, type GuestMemoryMapper, MAX_GUEST_ADDRESS, type MappedRegion, addressFromBigInt } from '../../../src/virtqueue/guest-memory';

const CHUNK = 4096;

/** Region A: gpa 0x10000, 3 chunks of 4 KiB (12 KiB); region B directly after it: 8 KiB in 2 chunks; region C far away. */
function layout(): { memory: GuestMemory; a: ArrayBuffer[]; b: ArrayBuffer[]; c: ArrayBuffer[] } {
  const a = [new ArrayBuffer(CHUNK), new ArrayBuffer(CHUNK), new ArrayBuffer(CHUNK)];
  const b = [new ArrayBuffer(CHUNK), new ArrayBuffer(CHUNK)];
  const c = [new ArrayBuffer(CHUNK)];
  const regions: MappedRegion[] = [
    { guestPhysAddr: 0x10000, size: 3 * CHUNK, userAddr: 0x7f0000000000, mmapOffset: 0, chunks: a, chunkSize: CHUNK },
    { guestPhysAddr: 0x13000, size: 2 * CHUNK, userAddr: 0x7f0000100000, mmapOffset: 0, chunks: b, chunkSize: CHUNK },
    { guestPhysAddr: 0x100000000, size: CHUNK, userAddr: 0x7f0000200000, mmapOffset: 0, chunks: c, chunkSize: CHUNK },
  ];
  return { memory: new GuestMemory(regions), a, b, c };
}

describe('virtqueue GuestMemory', () => {
  it('translates a range inside one chunk to one segment', () => {
    const { memory, a } = layout();
    const out = new SegmentList(8);
    expect(memory.translate(0x10010, 100, out)).to.equal(true);
    expect(out.count).to.equal(1);
    expect(out.buffers[0].buffer).to.equal(a[0]);
    expect(out.offsets[0]).to.equal(0x10);
    expect(out.lengths[0]).to.equal(100);
    expect(out.totalLength).to.equal(100);
  });

  it('splits a range at chunk boundaries', () => {
    const { memory, a } = layout();
    const out = new SegmentList(8);
    expect(memory.translate(0x10000 + CHUNK - 10, CHUNK + 20, out)).to.equal(true);
    expect(out.count).to.equal(3);
    expect([out.buffers[0].buffer, out.buffers[1].buffer, out.buffers[2].buffer]).to.deep.equal([a[0], a[1], a[2]]);
    expect(Array.from(out.offsets.subarray(0, 3))).to.deep.equal([CHUNK - 10, 0, 0]);
    expect(Array.from(out.lengths.subarray(0, 3))).to.deep.equal([10, CHUNK, 10]);
  });

  it('splits a range across adjacent regions', () => {
    const { memory, a, b } = layout();
    const out = new SegmentList(8);
    expect(memory.translate(0x13000 - 4, 8, out)).to.equal(true);
    expect(out.count).to.equal(2);
    expect(out.buffers[0].buffer).to.equal(a[2]);
    expect(out.offsets[0]).to.equal(CHUNK - 4);
    expect(out.buffers[1].buffer).to.equal(b[0]);
    expect(out.offsets[1]).to.equal(0);
    expect(out.totalLength).to.equal(8);
  });

  it('writes through the segments land in the mapped buffers', () => {
    const { memory, a, b } = layout();
    const out = new SegmentList(8);
    memory.translate(0x13000 - 2, 4, out);
    out.copyIn(0, Uint8Array.of(1, 2, 3, 4), 0, 4);
    expect(Array.from(new Uint8Array(a[2]).subarray(CHUNK - 2))).to.deep.equal([1, 2]);
    expect(Array.from(new Uint8Array(b[0]).subarray(0, 2))).to.deep.equal([3, 4]);
  });

  it('rejects ranges outside guest memory and leaves the list unchanged', () => {
    const { memory } = layout();
    const out = new SegmentList(8);
    memory.translate(0x10000, 16, out);
    const cases: [number, number][] = [
      [0x0, 16], // below everything
      [0xfff0, 32], // starts before region A
      [0x15000 - 8, 16], // runs past region B into a hole
      [0x100000000 + CHUNK, 1], // just past region C
      [MAX_GUEST_ADDRESS - 4, 16], // overflow past 2^53
      [-16, 32],
      [0x10000, -1],
    ];
    for (const [gpa, length] of cases) {
      expect(memory.translate(gpa, length, out), `${gpa}+${length}`).to.equal(false);
      expect(out.count).to.equal(1);
      expect(out.totalLength).to.equal(16);
    }
  });

  it('rejects when the segment list runs out of room, appending nothing', () => {
    const { memory } = layout();
    const out = new SegmentList(2);
    expect(memory.translate(0x10000, 3 * CHUNK, out)).to.equal(false);
    expect(out.count).to.equal(0);
    expect(out.totalLength).to.equal(0);
  });

  it('accepts a zero-length range without appending', () => {
    const { memory } = layout();
    const out = new SegmentList(2);
    expect(memory.translate(0x0, 0, out)).to.equal(true);
    expect(out.count).to.equal(0);
  });

  it('locates contiguous structures within one chunk only', () => {
    const { memory, a } = layout();
    expect(memory.locate(0x10000 + CHUNK + 16, 64)).to.equal(true);
    expect(memory.hitBytes.buffer).to.equal(a[1]);
    expect(memory.hitOffset).to.equal(16);
    expect(memory.hitView.buffer).to.equal(a[1]);
    expect(memory.locate(0x10000 + CHUNK - 8, 16)).to.equal(false); // crosses a chunk
    expect(memory.locate(0x13000 - 8, 16)).to.equal(false); // crosses a region
    expect(memory.locate(0x20000, 16)).to.equal(false);
    expect(memory.contiguous(0x100000000, 32)).to.not.equal(null);
    expect(memory.contiguous(0x100000000 + CHUNK - 1, 2)).to.equal(null);
  });

  it('contains() spans regions but not holes', () => {
    const { memory } = layout();
    expect(memory.contains(0x10000, 5 * CHUNK)).to.equal(true);
    expect(memory.contains(0x10000, 5 * CHUNK + 1)).to.equal(false);
  });

  it('translates front-end virtual addresses to guest physical ones', () => {
    const { memory } = layout();
    expect(memory.uvaToGpa(0x7f0000000000 + 0x123)).to.equal(0x10123);
    expect(memory.uvaToGpa(0x7f0000200000 + 5)).to.equal(0x100000005);
    expect(memory.uvaToGpa(0x7f0000200000 + CHUNK)).to.equal(-1);
    expect(memory.uvaToGpa(0x1000)).to.equal(-1);
    expect(memory.uvaToGpa(2 ** 64)).to.equal(-1);
  });

  it('converts wire addresses, refusing those at or above 2^53', () => {
    expect(addressFromBigInt(0x7f0000000000n)).to.equal(0x7f0000000000);
    expect(addressFromBigInt(1n << 53n)).to.equal(-1);
    expect(addressFromBigInt(0xffffffffffffffffn)).to.equal(-1);
  });

  it('refuses malformed region tables', () => {
    const chunk = (): ArrayBuffer[] => [new ArrayBuffer(CHUNK)];
    const base = { userAddr: 0, mmapOffset: 0, chunkSize: CHUNK };
    expect(() => new GuestMemory([{ ...base, guestPhysAddr: 0, size: 0, chunks: chunk() }])).to.throw(RangeError, /size 0/);
    expect(() => new GuestMemory([{ ...base, guestPhysAddr: 0, size: CHUNK + 1, chunks: chunk() }])).to.throw(RangeError, /needs/);
    expect(() => new GuestMemory([{ ...base, guestPhysAddr: 2 ** 53 - 16, size: CHUNK, chunks: chunk() }])).to.throw(RangeError);
    expect(() =>
      new GuestMemory([
        { ...base, guestPhysAddr: 0, size: CHUNK, chunks: chunk() },
        { ...base, guestPhysAddr: CHUNK - 1, size: CHUNK, userAddr: 0x100000, chunks: chunk() },
      ]),
    ).to.throw(RangeError, /overlap/);
    expect(() =>
      new GuestMemory([
        { ...base, guestPhysAddr: 0, size: CHUNK, chunks: chunk() },
        { ...base, guestPhysAddr: 0x100000, size: CHUNK, chunks: chunk() },
      ]),
    ).to.throw(RangeError, /front-end/);
    // a middle chunk shorter than chunkSize
    expect(() => new GuestMemory([{ ...base, guestPhysAddr: 0, size: 100, chunks: [new ArrayBuffer(64), new ArrayBuffer(64)] }])).to.throw(RangeError, /chunk 0/);
  });

  it('maps regions from fds at page-aligned offsets and unmaps every chunk', () => {
    const calls: [number, number, number, number][] = [];
    const unmapped: ArrayBuffer[] = [];
    const mapper: GuestMemoryMapper = {
      mmap(fd, offset, size, chunkSize) {
        calls.push([fd, offset, size, chunkSize]);
        const chunks: ArrayBuffer[] = [];
        for (let left = size; left > 0; left -= chunkSize) chunks.push(new ArrayBuffer(Math.min(left, chunkSize)));
        return chunks;
      },
      munmap(buffer) {
        unmapped.push(buffer);
      },
    };
    const memory = GuestMemory.map(
      [
        { fd: 7, guestPhysAddr: 0, size: 3 * CHUNK, userAddr: 0x1000000, mmapOffset: 0 },
        { fd: 8, guestPhysAddr: 0x100000, size: CHUNK, userAddr: 0x2000000, mmapOffset: 0x1800 },
      ],
      2 * CHUNK,
      mapper,
    );
    expect(calls).to.deep.equal([
      [7, 0, 3 * CHUNK, 2 * CHUNK],
      [8, 0x1000, 0x800 + CHUNK, 2 * CHUNK],
    ]);
    const out = new SegmentList(4);
    expect(memory.translate(0x100000, 16, out)).to.equal(true);
    expect(out.offsets[0]).to.equal(0x800); // the region starts 0x800 into its mapping
    expect(memory.translate(2 * CHUNK - 8, 16, out)).to.equal(true); // crosses the 2-page chunk
    expect(out.count).to.equal(3);
    memory.unmap();
    expect(unmapped.length).to.equal(3);
    memory.unmap(); // idempotent
    expect(unmapped.length).to.equal(3);
  });

  it('unmaps what it mapped when a later region fails', () => {
    const unmapped: ArrayBuffer[] = [];
    const mapper: GuestMemoryMapper = {
      mmap(fd, _offset, size) {
        if (fd === 2) throw new Error('EBADF');
        return [new ArrayBuffer(size)];
      },
      munmap(buffer) {
        unmapped.push(buffer);
      },
    };
    expect(() =>
      GuestMemory.map(
        [
          { fd: 1, guestPhysAddr: 0, size: CHUNK, userAddr: 0, mmapOffset: 0 },
          { fd: 2, guestPhysAddr: CHUNK, size: CHUNK, userAddr: CHUNK, mmapOffset: 0 },
        ],
        CHUNK,
        mapper,
      ),
    ).to.throw('EBADF');
    expect(unmapped.length).to.equal(1);
  });
});

describe('virtqueue GuestMemory over the addon (memfd)', () => {
  /** The addon, or null when it is not built with mmap yet (this block is then skipped). */
  function addon(): typeof import('../../../src/sys/native').native | null {
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports -- the addon may be missing on a developer's machine: the test then skips
      const { native } = require('../../../src/sys/native') as typeof import('../../../src/sys/native');
      return typeof native.mmap === 'function' && typeof native.memfdCreate === 'function' ? native : null;
    } catch {
      return null;
    }
  }

  it('maps a region at a non-page-aligned offset in chunks, shares writes, and unmaps', function () {
    const native = addon();
    if (native === null) this.skip();
    const page = 4096;
    const fd = native!.memfdCreate('ferry-guest-memory-test', 4 * page);
    try {
      const region = { fd, guestPhysAddr: 0x40000, size: 3 * page, userAddr: 0x7f0000000000, mmapOffset: page + 256 };
      const first = GuestMemory.map([region], 2 * page);
      const second = GuestMemory.map([region], 4 * page);
      const out = new SegmentList(4);
      // straddles the 2-page chunk boundary of the first mapping (mapping starts 256 bytes before the region)
      const gpa = 0x40000 + 2 * page - 256 - 3;
      expect(first.translate(gpa, 6, out)).to.equal(true);
      expect(out.count).to.equal(2);
      out.copyIn(0, Uint8Array.of(1, 2, 3, 4, 5, 6), 0, 6);
      const back = new SegmentList(4);
      expect(second.translate(gpa, 6, back)).to.equal(true);
      expect(back.count).to.equal(1);
      const seen = new Uint8Array(6);
      back.copyOut(0, seen, 0, 6);
      expect(Array.from(seen)).to.deep.equal([1, 2, 3, 4, 5, 6]);
      // the byte is at fd offset mmapOffset + (gpa - guestPhysAddr)
      const direct = new Uint8Array(1);
      expect(native!.fstat(fd)[1]).to.equal(4 * page);
      const probe = GuestMemory.map([{ fd, guestPhysAddr: 0, size: 4 * page, userAddr: 0, mmapOffset: 0 }], 4 * page);
      const at = new SegmentList(1);
      probe.translate(page + 256 + (gpa - 0x40000), 1, at);
      at.copyOut(0, direct, 0, 1);
      expect(direct[0]).to.equal(1);
      first.unmap();
      second.unmap();
      probe.unmap();
    } finally {
      native!.close(fd);
    }
  });
});
