import { expect } from 'chai';
import { SegmentList } from '../../../src/io/frame-io';
import * as fs from 'fs';
import {
  DEFAULT_MAX_GUEST_MEMORY,
  F_SEAL_SEAL,
  F_SEAL_SHRINK,
  GuestMemory,
  type GuestMemoryMapper,
  MAX_GUEST_ADDRESS,
  type MappedRegion,
  type RegionFdInspector,
  addressFromBigInt,
  checkRegionFd,
  nativeRegionFdInspector,
  totalSizeProblem,
} from '../../../src/virtqueue/guest-memory';

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

/** A mapper of plain ArrayBuffers whose fault counters the test sets. */
function faultingMapper(): { mapper: GuestMemoryMapper; faults: Map<ArrayBuffer, number>; total: { value: number }; mapped: number[] } {
  const faults = new Map<ArrayBuffer, number>();
  const total = { value: 0 };
  const mapped: number[] = [];
  const mapper: GuestMemoryMapper = {
    mmap(_fd, _offset, size, chunkSize) {
      mapped.push(size);
      const chunks: ArrayBuffer[] = [];
      for (let left = size; left > 0; left -= chunkSize) chunks.push(new ArrayBuffer(Math.min(left, chunkSize)));
      return chunks;
    },
    munmap() {},
    totalFaults: () => total.value,
    chunkFaults: (buffer) => faults.get(buffer) ?? 0,
  };
  return { mapper, faults, total, mapped };
}

describe('virtqueue GuestMemory: hostile tables and faults', () => {
  it('refuses a table above the bound before mapping anything', () => {
    const { mapper, mapped } = faultingMapper();
    const huge = { fd: 3, guestPhysAddr: 0, size: 60 * 2 ** 40, userAddr: 0, mmapOffset: 0 };
    expect(() => GuestMemory.map([huge], 2 ** 30, mapper)).to.throw(RangeError, /exceed the 1099511627776-byte bound/);
    const two = [
      { fd: 3, guestPhysAddr: 0, size: 3 * CHUNK, userAddr: 0, mmapOffset: 0 },
      { fd: 4, guestPhysAddr: 0x100000, size: 2 * CHUNK, userAddr: 0x100000, mmapOffset: 0 },
    ];
    expect(() => GuestMemory.map(two, CHUNK, mapper, 4 * CHUNK)).to.throw(RangeError, /bound/);
    expect(mapped, 'no mmap for a refused table').to.deep.equal([]);
    GuestMemory.map(two, CHUNK, mapper, 5 * CHUNK).unmap();
    expect(mapped).to.deep.equal([3 * CHUNK, 2 * CHUNK]);
  });

  it('totalSizeProblem sums exactly in bigint', () => {
    expect(totalSizeProblem([], 0)).to.equal(null);
    expect(totalSizeProblem([2n ** 62n, 2n ** 62n], DEFAULT_MAX_GUEST_MEMORY)).to.match(/9223372036854775808 bytes/);
    expect(totalSizeProblem([DEFAULT_MAX_GUEST_MEMORY / 2, BigInt(DEFAULT_MAX_GUEST_MEMORY / 2)], DEFAULT_MAX_GUEST_MEMORY)).to.equal(null);
    expect(totalSizeProblem([DEFAULT_MAX_GUEST_MEMORY, 1], DEFAULT_MAX_GUEST_MEMORY)).to.not.equal(null);
  });

  it('faulted turns true once a chunk of this memory reports a fault, not for faults elsewhere', () => {
    const { mapper, faults, total } = faultingMapper();
    total.value = 5; // faults before this memory existed do not count
    const memory = GuestMemory.map([{ fd: 3, guestPhysAddr: 0, size: 4 * CHUNK, userAddr: 0, mmapOffset: 0 }], 2 * CHUNK, mapper);
    expect(memory.faulted).to.equal(false);
    total.value = 6; // another memory's chunk faulted
    expect(memory.faulted).to.equal(false);
    const out = new SegmentList(1);
    expect(memory.translate(3 * CHUNK, 1, out)).to.equal(true);
    faults.set(out.buffers[0].buffer as ArrayBuffer, 1);
    total.value = 7;
    expect(memory.faulted).to.equal(true);
    faults.clear();
    expect(memory.faulted, 'stays broken').to.equal(true);
    // Memory built from plain buffers has no guard and never faults.
    expect(layout().memory.faulted).to.equal(false);
  });

  /** An inspector over a fake file: mode, size and seals the test chooses; records added seals. */
  function fakeFile(mode: number, size: number, seals: number, refuseSeal = false): RegionFdInspector & { added: number[] } {
    const added: number[] = [];
    return {
      added,
      fstat: () => [mode, size],
      getSeals: () => seals,
      addSeals: (_fd, bits) => {
        if (refuseSeal) throw new Error('EPERM');
        added.push(bits);
        seals |= bits;
      },
    };
  }

  it('checkRegionFd: a regular file long enough is accepted and its shrinking sealed', () => {
    const file = fakeFile(0o100600, 2 * 1024 * 1024, 0);
    expect(checkRegionFd(5, 0n, 2n * 1024n * 1024n, file)).to.deep.equal({ ok: true, shrinkSealed: true, fileSize: 2 * 1024 * 1024 });
    expect(file.added).to.deep.equal([F_SEAL_SHRINK]);
    // Already sealed (QEMU's memfd backend: grow+shrink+seal): nothing to add.
    const qemu = fakeFile(0o100600, 8192, F_SEAL_SEAL | F_SEAL_SHRINK | 0x4);
    expect(checkRegionFd(5, 4096n, 4096n, qemu)).to.include({ ok: true, shrinkSealed: true });
    expect(qemu.added).to.deep.equal([]);
    // Not sealable (F_SEAL_SEAL set without SHRINK, or no seal support): accepted, the SIGBUS guard covers it.
    const locked = fakeFile(0o100600, 8192, F_SEAL_SEAL);
    expect(checkRegionFd(5, 0n, 8192n, locked)).to.include({ ok: true, shrinkSealed: false });
    expect(locked.added).to.deep.equal([]);
    expect(checkRegionFd(5, 0n, 8192n, fakeFile(0o100600, 8192, -1))).to.include({ ok: true, shrinkSealed: false });
    expect(checkRegionFd(5, 0n, 8192n, fakeFile(0o100600, 8192, 0, true))).to.include({ ok: true, shrinkSealed: false });
  });

  it('checkRegionFd: refuses a region past the file end, a non-regular fd, and an fd fstat rejects', () => {
    const small = fakeFile(0o100600, 4096, 0);
    const past = checkRegionFd(5, 0n, 2n * 1024n * 1024n, small);
    expect(past).to.deep.equal({ ok: false, problem: 'region needs file bytes up to 2097152, the file has 4096' });
    expect(small.added, 'nothing sealed on a refused region').to.deep.equal([]);
    expect(checkRegionFd(5, 4096n, 1n, fakeFile(0o100600, 4096, 0)).ok).to.equal(false);
    expect(checkRegionFd(5, 2n ** 64n - 1n, 2n, fakeFile(0o100600, 4096, 0)).ok).to.equal(false);
    for (const mode of [0o140777 /* socket */, 0o010600 /* fifo */, 0o020666 /* char device */, 0o040700 /* directory */, 0o600 /* anon inode */]) {
      const result = checkRegionFd(5, 0n, 4096n, fakeFile(mode, 1 << 30, 0));
      expect(result.ok, `mode 0o${mode.toString(8)}`).to.equal(false);
      expect(!result.ok && result.problem).to.match(/not a regular file or memfd/);
    }
    const closed: RegionFdInspector = { fstat: () => { throw new Error('fstat: EBADF'); }, getSeals: () => -1, addSeals: () => undefined };
    expect(checkRegionFd(99, 0n, 4096n, closed)).to.deep.equal({ ok: false, problem: 'fstat failed: fstat: EBADF' });
  });

  it('checkRegionFd over real fds: a sealable memfd gets F_SEAL_SHRINK, a pipe is refused', function () {
    let inspector: RegionFdInspector;
    let native: typeof import('../../../src/sys/native').native;
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports -- the addon may be missing on a developer's machine: the test then skips
      native = (require('../../../src/sys/native') as typeof import('../../../src/sys/native')).native;
      inspector = nativeRegionFdInspector();
    } catch {
      if (process.env.CI === 'true') throw new Error('the addon is not built');
      this.skip();
    }
    const sealable = native.memfdCreateSealable('ferry-seal-test', 8192);
    const plain = native.memfdCreate('ferry-plain-test', 8192);
    const [readEnd, writeEnd] = native.pipe();
    try {
      expect(checkRegionFd(sealable, 0n, 8192n, inspector)).to.deep.equal({ ok: true, shrinkSealed: true, fileSize: 8192 });
      expect(native.getSeals(sealable) & F_SEAL_SHRINK).to.equal(F_SEAL_SHRINK);
      expect(() => fs.ftruncateSync(sealable, 0), 'the front-end can no longer shrink it').to.throw(/EPERM/);
      expect(checkRegionFd(plain, 0n, 8192n, inspector)).to.deep.equal({ ok: true, shrinkSealed: false, fileSize: 8192 });
      expect(checkRegionFd(plain, 0n, 8193n, inspector).ok).to.equal(false);
      const pipe = checkRegionFd(readEnd, 0n, 4096n, inspector);
      expect(!pipe.ok && pipe.problem).to.match(/not a regular file or memfd/);
    } finally {
      for (const fd of [sealable, plain, readEnd, writeEnd]) native.close(fd);
    }
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

  it('a memfd truncated under the mapping: reads give zeros and faulted turns true', function () {
    const native = addon();
    if (native === null) this.skip();
    const page = 4096;
    const fd = native!.memfdCreate('ferry-guest-memory-truncate', 8 * page);
    try {
      const memory = GuestMemory.map([{ fd, guestPhysAddr: 0x100000, size: 8 * page, userAddr: 0, mmapOffset: 0 }], 4 * page);
      const ring = memory.contiguous(0x100000 + 6 * page, 4);
      expect(ring).to.not.equal(null);
      ring!.view.setUint16(ring!.offset + 2, 77, true); // an avail idx the front-end wrote
      expect(memory.faulted).to.equal(false);
      fs.ftruncateSync(fd, 2 * page);
      expect(ring!.view.getUint16(ring!.offset + 2, true), 'the ring now reads as empty').to.equal(0);
      expect(memory.faulted).to.equal(true);
      memory.unmap();
    } finally {
      native!.close(fd);
    }
  });
});
