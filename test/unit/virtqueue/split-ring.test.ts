import { expect } from 'chai';
import { GuestMemory } from '../../../src/virtqueue/guest-memory';
import { VIRTIO_F_NOTIFY_ON_EMPTY, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC } from '../../../src/virtqueue/features';
import { DescriptorChain, PopResult, SplitRing, popResultReason, vringNeedEvent } from '../../../src/virtqueue/split-ring';
import { AVAIL_F_NO_INTERRUPT, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, GuestArena, SplitRingDriver, USED_F_NO_NOTIFY } from '../../support/fakes/split-ring-driver';

const BASE = 0x100000;
const ARENA_SIZE = 1 << 20;
/** A second region made of two 4 KiB chunks, to put buffers across a chunk boundary. */
const SPLIT_BASE = 0x40000000;
const SPLIT_CHUNK = 4096;

interface Fixture {
  arena: GuestArena;
  memory: GuestMemory;
  driver: SplitRingDriver;
  ring: SplitRing;
  chain: DescriptorChain;
  fences: { count: number };
  splitChunks: ArrayBuffer[];
}

function setup(size = 8, features: bigint = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_INDIRECT_DESC, maxChainBytes?: number): Fixture {
  const buffer = new ArrayBuffer(ARENA_SIZE);
  const splitChunks = [new ArrayBuffer(SPLIT_CHUNK), new ArrayBuffer(SPLIT_CHUNK)];
  const memory = new GuestMemory([
    { guestPhysAddr: BASE, size: ARENA_SIZE, userAddr: 0x7f0000000000, mmapOffset: 0, chunks: [buffer], chunkSize: ARENA_SIZE },
    { guestPhysAddr: SPLIT_BASE, size: 2 * SPLIT_CHUNK, userAddr: 0x7f1000000000, mmapOffset: 0, chunks: splitChunks, chunkSize: SPLIT_CHUNK },
  ]);
  const arena = new GuestArena(new Uint8Array(buffer), BASE);
  const driver = new SplitRingDriver(arena, size);
  const fences = { count: 0 };
  const ring = new SplitRing(memory, { fence: () => fences.count++, maxChainBytes });
  expect(ring.configure(size, driver.descGpa, driver.availGpa, driver.usedGpa, features)).to.equal(null);
  return { arena, memory, driver, ring, chain: new DescriptorChain(64), fences, splitChunks };
}

function bytesOf(list: { count: number; buffers: Uint8Array[]; offsets: Float64Array; lengths: Float64Array; totalLength: number }): number[] {
  const out: number[] = [];
  for (let i = 0; i < list.count; i++) out.push(...list.buffers[i].subarray(list.offsets[i], list.offsets[i] + list.lengths[i]));
  return out;
}

describe('virtqueue SplitRing', () => {
  describe('configure', () => {
    it('rejects bad sizes, misaligned and out-of-memory areas', () => {
      const { driver, ring } = setup();
      const f = VIRTIO_F_VERSION_1;
      for (const size of [0, 3, 6, 65536, 1.5]) expect(ring.configure(size, driver.descGpa, driver.availGpa, driver.usedGpa, f), `size ${size}`).to.match(/power of two/);
      expect(ring.configure(8, driver.descGpa + 8, driver.availGpa, driver.usedGpa, f)).to.match(/16-byte/);
      expect(ring.configure(8, driver.descGpa, driver.availGpa + 1, driver.usedGpa, f)).to.match(/2-byte/);
      expect(ring.configure(8, driver.descGpa, driver.availGpa, driver.usedGpa + 2, f)).to.match(/4-byte/);
      expect(ring.configure(8, 0x1000, driver.availGpa, driver.usedGpa, f)).to.match(/descriptor table/);
      expect(ring.configure(8, driver.descGpa, BASE + ARENA_SIZE - 4, driver.usedGpa, f)).to.match(/available ring/);
      expect(ring.configure(8, driver.descGpa, driver.availGpa, BASE + ARENA_SIZE - 8, f)).to.match(/used ring/);
      // the used ring crossing the chunk boundary of the split region
      expect(ring.configure(8, driver.descGpa, driver.availGpa, SPLIT_BASE + SPLIT_CHUNK - 16, f)).to.match(/used ring/);
      expect(ring.isReady).to.equal(false);
      expect(ring.popChain(new DescriptorChain(4))).to.equal(PopResult.RingBroken);
      expect(ring.configure(8, driver.descGpa, driver.availGpa, driver.usedGpa, f)).to.equal(null);
      expect(ring.isReady).to.equal(true);
    });

    it('takes front-end virtual addresses and translates them again for a new memory table', () => {
      const { driver, ring, memory } = setup();
      const UVA = 0x7f0000000000;
      const uva = (gpa: number): number => gpa - BASE + UVA;
      expect(ring.configureUserAddresses(8, uva(driver.descGpa), uva(driver.availGpa), uva(driver.usedGpa), VIRTIO_F_VERSION_1)).to.equal(null);
      expect(ring.configureUserAddresses(8, 0x1000, uva(driver.availGpa), uva(driver.usedGpa), VIRTIO_F_VERSION_1)).to.match(/descriptor table/);
      expect(ring.configureUserAddresses(8, uva(driver.descGpa), uva(driver.availGpa), uva(driver.usedGpa), VIRTIO_F_VERSION_1)).to.equal(null);
      // same front-end mapping, now at another guest physical address
      const buffer = memory.contiguous(BASE, 16)!.bytes.buffer as ArrayBuffer;
      const moved = new GuestMemory([{ guestPhysAddr: 0x80000000, size: ARENA_SIZE, userAddr: UVA, mmapOffset: 0, chunks: [buffer], chunkSize: ARENA_SIZE }]);
      expect(ring.setMemory(moved)).to.equal(null);
      expect(ring.isReady).to.equal(true);
      ring.pushUsed(3, 9);
      ring.publishUsed();
      expect(driver.usedIdx).to.equal(1); // still writes the same used ring
      const elsewhere = new GuestMemory([{ guestPhysAddr: 0, size: ARENA_SIZE, userAddr: 0x1000000, mmapOffset: 0, chunks: [buffer], chunkSize: ARENA_SIZE }]);
      expect(ring.setMemory(elsewhere)).to.match(/not in the new memory table/);
      expect(ring.isReady).to.equal(false);
    });

    it('keeps lastAvailIdx across configure and takes used.idx from the ring', () => {
      const { driver, arena, ring } = setup();
      ring.lastAvailIdx = 70000; // 16-bit
      expect(ring.lastAvailIdx).to.equal(70000 & 0xffff);
      arena.view.setUint16(arena.offsetOf(driver.usedGpa + 2), 1234, true);
      expect(ring.configure(8, driver.descGpa, driver.availGpa, driver.usedGpa, VIRTIO_F_VERSION_1)).to.equal(null);
      expect(ring.lastAvailIdx).to.equal(70000 & 0xffff);
      expect(ring.lastUsedIdx).to.equal(1234);
    });
  });

  describe('popChain', () => {
    it('reports Empty on an empty ring', () => {
      const { ring, chain } = setup();
      expect(ring.popChain(chain)).to.equal(PopResult.Empty);
    });

    it('walks a direct chain into readable then writable segments', () => {
      const { arena, driver, ring, chain } = setup();
      const r1 = arena.alloc(10);
      const r2 = arena.alloc(20);
      const w1 = arena.alloc(30);
      arena.write(r1, Uint8Array.of(1, 2, 3));
      const head = driver.addChain([
        { gpa: r1, length: 10, writable: false },
        { gpa: r2, length: 20, writable: false },
        { gpa: w1, length: 30, writable: true },
      ]);
      driver.publish();
      expect(ring.popChain(chain)).to.equal(PopResult.Ok);
      expect(chain.head).to.equal(head);
      expect(chain.descriptorCount).to.equal(3);
      expect(chain.readable.count).to.equal(2);
      expect(chain.readable.totalLength).to.equal(30);
      expect(chain.writable.count).to.equal(1);
      expect(chain.writable.totalLength).to.equal(30);
      expect(bytesOf(chain.readable).slice(0, 3)).to.deep.equal([1, 2, 3]);
      expect(ring.lastAvailIdx).to.equal(1);
      expect(ring.popChain(chain)).to.equal(PopResult.Empty);
    });

    it('splits a buffer that crosses a mapping chunk into two segments', () => {
      const { driver, ring, chain, splitChunks } = setup();
      driver.addChain([{ gpa: SPLIT_BASE + SPLIT_CHUNK - 6, length: 10, writable: true }]);
      driver.publish();
      expect(ring.popChain(chain)).to.equal(PopResult.Ok);
      expect(chain.writable.count).to.equal(2);
      expect(chain.writable.buffers[0].buffer).to.equal(splitChunks[0]);
      expect(chain.writable.buffers[1].buffer).to.equal(splitChunks[1]);
      expect(Array.from(chain.writable.lengths.subarray(0, 2))).to.deep.equal([6, 4]);
    });

    it('walks an indirect chain', () => {
      const { arena, driver, ring, chain } = setup();
      const a = arena.alloc(12);
      const b = arena.alloc(100);
      const c = arena.alloc(200);
      const head = driver.addChain(
        [
          { gpa: a, length: 12, writable: false },
          { gpa: b, length: 100, writable: false },
          { gpa: c, length: 200, writable: true },
        ],
        { indirect: true },
      );
      driver.publish();
      expect(ring.popChain(chain)).to.equal(PopResult.Ok);
      expect(chain.head).to.equal(head);
      expect(chain.descriptorCount).to.equal(3);
      expect(chain.readable.totalLength).to.equal(112);
      expect(chain.writable.totalLength).to.equal(200);
    });

    it('walks a direct descriptor followed by an indirect table (mixed)', () => {
      const { arena, driver, ring, chain } = setup();
      const hdr = arena.alloc(12);
      const data = arena.alloc(64);
      const table = arena.alloc(16);
      driver.writeDescriptor(0, table, 16, 0, 0, table); // placeholder, overwritten below
      driver.writeDescriptor(0, data, 64, 0, 0, table);
      driver.writeDescriptor(3, hdr, 12, DESC_F_NEXT, 5);
      driver.writeDescriptor(5, table, 16, DESC_F_INDIRECT, 0);
      driver.putAvail(3);
      driver.publish();
      expect(ring.popChain(chain)).to.equal(PopResult.Ok);
      expect(chain.head).to.equal(3);
      expect(chain.readable.count).to.equal(2);
      expect(chain.readable.totalLength).to.equal(76);
    });

    it('accepts zero-length buffers without adding segments', () => {
      const { arena, driver, ring, chain } = setup();
      const a = arena.alloc(8);
      driver.addChain([
        { gpa: a, length: 0, writable: false },
        { gpa: a, length: 8, writable: false },
      ]);
      driver.publish();
      expect(ring.popChain(chain)).to.equal(PopResult.Ok);
      expect(chain.readable.count).to.equal(1);
      expect(chain.descriptorCount).to.equal(2);
    });

    it('follows avail and used indices across the 16-bit wrap', () => {
      const { arena, driver, ring, chain } = setup(4);
      ring.lastAvailIdx = 65534;
      driver.setAvailIdx(65534);
      const buf = arena.alloc(16);
      const heads: number[] = [];
      for (let i = 0; i < 4; i++) heads.push(driver.addChain([{ gpa: buf, length: 16, writable: true }]));
      driver.publish();
      expect(driver.availIdx).to.equal(2);
      const popped: number[] = [];
      for (let i = 0; i < 4; i++) {
        expect(ring.popChain(chain)).to.equal(PopResult.Ok);
        popped.push(chain.head);
      }
      expect(popped).to.deep.equal(heads);
      expect(ring.popChain(chain)).to.equal(PopResult.Empty);
      expect(ring.lastAvailIdx).to.equal(2);
    });

    it('unpop rewinds so the same chains come again', () => {
      const { arena, driver, ring, chain } = setup();
      const buf = arena.alloc(16);
      const h1 = driver.addChain([{ gpa: buf, length: 16, writable: true }]);
      const h2 = driver.addChain([{ gpa: buf, length: 16, writable: true }]);
      driver.publish();
      ring.popChain(chain);
      ring.popChain(chain);
      ring.unpop(2);
      expect(ring.popChain(chain)).to.equal(PopResult.Ok);
      expect(chain.head).to.equal(h1);
      expect(ring.popChain(chain)).to.equal(PopResult.Ok);
      expect(chain.head).to.equal(h2);
    });

    describe('malformed chains are rejected with a reason, consume their head, and never throw', () => {
      interface Case {
        name: string;
        expected: PopResult;
        features?: bigint;
        maxChainBytes?: number;
        /** Build the bad chain; return the head it put in the avail ring. */
        build: (f: Fixture) => number;
      }
      const buffer = (f: Fixture, n = 32): number => f.arena.alloc(n);
      const cases: Case[] = [
        {
          name: 'loop in the descriptor table',
          expected: PopResult.Loop,
          build: (f) => {
            const b = buffer(f);
            f.driver.writeDescriptor(0, b, 8, DESC_F_NEXT, 1);
            f.driver.writeDescriptor(1, b, 8, DESC_F_NEXT, 0);
            f.driver.putAvail(0);
            return 0;
          },
        },
        {
          name: 'self loop',
          expected: PopResult.Loop,
          build: (f) => {
            f.driver.writeDescriptor(2, buffer(f), 8, DESC_F_NEXT, 2);
            f.driver.putAvail(2);
            return 2;
          },
        },
        {
          name: 'head index out of range',
          expected: PopResult.HeadOutOfRange,
          build: (f) => {
            f.driver.putAvail(8);
            return 8;
          },
        },
        {
          name: 'next index out of range',
          expected: PopResult.NextOutOfRange,
          build: (f) => {
            f.driver.writeDescriptor(0, buffer(f), 8, DESC_F_NEXT, 9);
            f.driver.putAvail(0);
            return 0;
          },
        },
        {
          name: 'buffer outside guest memory',
          expected: PopResult.BufferOutOfMemory,
          build: (f) => {
            f.driver.writeDescriptor(0, 0x1000, 8, 0, 0);
            f.driver.putAvail(0);
            return 0;
          },
        },
        {
          name: 'buffer running past the end of guest memory',
          expected: PopResult.BufferOutOfMemory,
          build: (f) => {
            f.driver.writeDescriptor(0, BASE + ARENA_SIZE - 4, 8, 0, 0);
            f.driver.putAvail(0);
            return 0;
          },
        },
        {
          name: 'buffer address beyond 2^53',
          expected: PopResult.BufferOutOfMemory,
          build: (f) => {
            f.driver.writeDescriptor(0, 2 ** 60, 8, 0, 0);
            f.driver.putAvail(0);
            return 0;
          },
        },
        {
          name: 'writable descriptor before a readable one',
          expected: PopResult.ReadableAfterWritable,
          build: (f) =>
            f.driver.addChain([
              { gpa: buffer(f), length: 8, writable: true },
              { gpa: buffer(f), length: 8, writable: false },
            ]),
        },
        {
          name: 'indirect without INDIRECT_DESC negotiated',
          expected: PopResult.IndirectNotNegotiated,
          features: VIRTIO_F_VERSION_1,
          build: (f) => f.driver.addChain([{ gpa: buffer(f), length: 8, writable: false }], { indirect: true }),
        },
        {
          name: 'zero-length indirect table',
          expected: PopResult.IndirectBadLength,
          build: (f) => {
            f.driver.writeDescriptor(1, buffer(f), 0, DESC_F_INDIRECT, 0);
            f.driver.putAvail(1);
            return 1;
          },
        },
        {
          name: 'indirect table length not a multiple of 16',
          expected: PopResult.IndirectBadLength,
          build: (f) => {
            f.driver.writeDescriptor(1, buffer(f, 64), 24, DESC_F_INDIRECT, 0);
            f.driver.putAvail(1);
            return 1;
          },
        },
        {
          name: 'indirect table outside guest memory',
          expected: PopResult.IndirectOutOfMemory,
          build: (f) => {
            f.driver.writeDescriptor(1, 0x2000, 32, DESC_F_INDIRECT, 0);
            f.driver.putAvail(1);
            return 1;
          },
        },
        {
          name: 'indirect table crossing a mapping chunk',
          expected: PopResult.IndirectOutOfMemory,
          build: (f) => {
            f.driver.writeDescriptor(1, SPLIT_BASE + SPLIT_CHUNK - 16, 32, DESC_F_INDIRECT, 0);
            f.driver.putAvail(1);
            return 1;
          },
        },
        {
          name: 'nested indirect',
          expected: PopResult.NestedIndirect,
          build: (f) => {
            const table = buffer(f, 32);
            f.driver.writeDescriptor(0, table, 32, DESC_F_INDIRECT, 0, table);
            f.driver.writeDescriptor(1, table, 32, DESC_F_INDIRECT, 0);
            f.driver.putAvail(1);
            return 1;
          },
        },
        {
          name: 'indirect with NEXT',
          expected: PopResult.IndirectWithNext,
          build: (f) => {
            const table = buffer(f, 16);
            f.driver.writeDescriptor(0, buffer(f), 8, 0, 0, table);
            f.driver.writeDescriptor(1, table, 16, DESC_F_INDIRECT | DESC_F_NEXT, 2);
            f.driver.putAvail(1);
            return 1;
          },
        },
        {
          name: 'next beyond the indirect table',
          expected: PopResult.IndirectNextOutOfRange,
          build: (f) => {
            const table = buffer(f, 32);
            f.driver.writeDescriptor(0, buffer(f), 8, DESC_F_NEXT, 2, table);
            f.driver.writeDescriptor(1, table, 32, DESC_F_INDIRECT, 0);
            f.driver.putAvail(1);
            return 1;
          },
        },
        {
          name: 'loop inside an indirect table',
          expected: PopResult.Loop,
          build: (f) => {
            const table = buffer(f, 32);
            f.driver.writeDescriptor(0, buffer(f), 8, DESC_F_NEXT, 1, table);
            f.driver.writeDescriptor(1, buffer(f), 8, DESC_F_NEXT, 0, table);
            f.driver.writeDescriptor(1, table, 32, DESC_F_INDIRECT, 0);
            f.driver.putAvail(1);
            return 1;
          },
        },
        {
          name: 'indirect chain longer than the queue size',
          expected: PopResult.ChainTooLong,
          build: (f) => {
            const entries = 9; // queue size 8
            const table = buffer(f, 16 * entries);
            const b = buffer(f);
            for (let i = 0; i < entries; i++) f.driver.writeDescriptor(i, b, 4, i < entries - 1 ? DESC_F_NEXT : 0, i + 1, table);
            f.driver.writeDescriptor(1, table, 16 * entries, DESC_F_INDIRECT, 0);
            f.driver.putAvail(1);
            return 1;
          },
        },
        {
          name: 'more bytes than the chain byte bound',
          expected: PopResult.ChainTooLong,
          maxChainBytes: 1000,
          build: (f) =>
            f.driver.addChain([
              { gpa: buffer(f, 600), length: 600, writable: false },
              { gpa: buffer(f, 600), length: 600, writable: true },
            ]),
        },
        {
          name: 'more segments than the chain holds',
          expected: PopResult.ChainTooLong,
          build: (f) => {
            // 8 descriptors, each split across the chunk boundary (2 segments): 16 segments > 12
            const chain: { gpa: number; length: number; writable: boolean }[] = [];
            for (let i = 0; i < 8; i++) chain.push({ gpa: SPLIT_BASE + SPLIT_CHUNK - 4, length: 8, writable: true });
            return f.driver.addChain(chain);
          },
        },
      ];

      for (const c of cases) {
        it(`${c.name} -> ${popResultReason(c.expected)}`, () => {
          const f = setup(8, c.features ?? VIRTIO_F_VERSION_1 | VIRTIO_RING_F_INDIRECT_DESC, c.maxChainBytes);
          const chain = c.name.startsWith('more segments') ? new DescriptorChain(12) : f.chain;
          const head = c.build(f);
          // a good chain after the bad one: it must still come out
          const good = f.arena.alloc(64);
          f.driver.writeDescriptor(7, good, 64, DESC_F_WRITE, 0);
          f.driver.putAvail(7);
          f.driver.publish();
          expect(f.ring.popChain(chain)).to.equal(c.expected);
          expect(chain.head).to.equal(head);
          expect(f.ring.lastAvailIdx).to.equal(1); // the bad head was consumed
          expect(f.ring.pushUsed(chain.head, 0)).to.equal(true);
          expect(f.ring.popChain(chain)).to.equal(PopResult.Ok);
          expect(chain.head).to.equal(7);
          expect(chain.writable.totalLength).to.equal(64);
          expect(f.ring.isReady).to.equal(true);
        });
      }

      it('an avail index more than the ring size ahead breaks the ring', () => {
        const { driver, ring, chain } = setup();
        driver.setAvailIdx(9); // size 8, lastAvailIdx 0
        expect(ring.popChain(chain)).to.equal(PopResult.RingBroken);
        expect(ring.isBroken).to.equal(true);
        expect(ring.lastAvailIdx).to.equal(0);
        driver.setAvailIdx(1);
        expect(ring.popChain(chain)).to.equal(PopResult.RingBroken); // stays broken
        expect(ring.enableNotifications()).to.equal(false);
        expect(ring.configure(8, driver.descGpa, driver.availGpa, driver.usedGpa, VIRTIO_F_VERSION_1)).to.equal(null);
        expect(ring.isBroken).to.equal(false);
      });

      it('an avail index moving backwards (ahead by 65535) breaks the ring', () => {
        const { driver, ring, chain } = setup();
        ring.lastAvailIdx = 5;
        driver.setAvailIdx(4);
        expect(ring.popChain(chain)).to.equal(PopResult.RingBroken);
      });

      it('reads avail.idx once per batch', () => {
        const { arena, driver, ring, chain } = setup();
        const buf = arena.alloc(16);
        driver.addChain([{ gpa: buf, length: 16, writable: true }]);
        driver.addChain([{ gpa: buf, length: 16, writable: true }]);
        driver.publish();
        expect(ring.popChain(chain)).to.equal(PopResult.Ok);
        // the guest now moves avail.idx wildly: the batch read before is still used
        driver.setAvailIdx(200);
        expect(ring.popChain(chain)).to.equal(PopResult.Ok);
        expect(ring.popChain(chain)).to.equal(PopResult.RingBroken);
      });
    });
  });

  describe('used ring', () => {
    it('publishes used entries and the index after them', () => {
      const { arena, driver, ring, chain } = setup();
      const buf = arena.alloc(100);
      const h1 = driver.addChain([{ gpa: buf, length: 100, writable: true }]);
      const h2 = driver.addChain([{ gpa: buf, length: 100, writable: true }]);
      driver.publish();
      ring.popChain(chain);
      ring.pushUsed(chain.head, 42);
      ring.popChain(chain);
      ring.pushUsed(chain.head, 7);
      expect(driver.usedIdx).to.equal(0); // not published yet
      expect(ring.pendingUsedCount).to.equal(2);
      ring.publishUsed();
      expect(driver.usedIdx).to.equal(2);
      expect(driver.drainUsed()).to.deep.equal([
        { id: h1, length: 42 },
        { id: h2, length: 7 },
      ]);
    });

    it('refuses to push more than a ring of entries before publishing', () => {
      const { ring } = setup(4);
      for (let i = 0; i < 4; i++) expect(ring.pushUsed(i, 0)).to.equal(true);
      expect(ring.pushUsed(0, 0)).to.equal(false);
    });
  });

  describe('notifications', () => {
    it('vringNeedEvent follows the spec formula, including 16-bit wrap', () => {
      expect(vringNeedEvent(0, 1, 0)).to.equal(true);
      expect(vringNeedEvent(5, 5, 0)).to.equal(false); // event 5 not yet passed (new idx 5 means entries 0..4)
      expect(vringNeedEvent(4, 5, 0)).to.equal(true);
      expect(vringNeedEvent(16, 20, 15)).to.equal(true); // event in [old, new)
      expect(vringNeedEvent(10, 20, 11)).to.equal(false); // already passed before old
      expect(vringNeedEvent(65535, 2, 65534)).to.equal(true); // crossing 65535 across the wrap
      expect(vringNeedEvent(1, 2, 65534)).to.equal(true);
      expect(vringNeedEvent(2, 2, 65534)).to.equal(false);
      expect(vringNeedEvent(65533, 2, 65534)).to.equal(false);
    });

    it('without EVENT_IDX honours VIRTQ_AVAIL_F_NO_INTERRUPT', () => {
      const { ring, driver, fences } = setup();
      expect(ring.needsNotify()).to.equal(false); // nothing published
      ring.pushUsed(0, 0);
      ring.publishUsed();
      expect(ring.needsNotify()).to.equal(true);
      expect(fences.count).to.be.greaterThan(0);
      expect(ring.needsNotify()).to.equal(false); // nothing new
      driver.setAvailFlags(AVAIL_F_NO_INTERRUPT);
      ring.pushUsed(1, 0);
      ring.publishUsed();
      expect(ring.needsNotify()).to.equal(false);
    });

    it('NOTIFY_ON_EMPTY notifies when the ring ran empty despite NO_INTERRUPT', () => {
      const { ring, driver } = setup(8, VIRTIO_F_VERSION_1 | VIRTIO_F_NOTIFY_ON_EMPTY);
      driver.setAvailFlags(AVAIL_F_NO_INTERRUPT);
      ring.pushUsed(0, 0);
      ring.publishUsed();
      expect(ring.needsNotify()).to.equal(true);
    });

    it('with EVENT_IDX notifies only when used.idx passes used_event, across the wrap', () => {
      const features = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX;
      const { ring, driver, arena } = setup(8, features);
      // start the used ring just below the wrap
      arena.view.setUint16(arena.offsetOf(driver.usedGpa + 2), 65533, true);
      expect(ring.configure(8, driver.descGpa, driver.availGpa, driver.usedGpa, features)).to.equal(null);
      driver.setUsedEvent(65533);
      ring.pushUsed(0, 0);
      ring.publishUsed(); // used 65533 -> 65534
      expect(ring.needsNotify()).to.equal(true); // first decision after configure: always
      driver.setUsedEvent(0); // guest: interrupt me once entry 0 (after the wrap) is used
      ring.pushUsed(1, 0);
      ring.publishUsed(); // 65534 -> 65535: entry 65534 used, not yet 0
      expect(ring.needsNotify()).to.equal(false);
      ring.pushUsed(2, 0);
      ring.publishUsed(); // 65535 -> 0
      expect(ring.needsNotify()).to.equal(false);
      ring.pushUsed(3, 0);
      ring.pushUsed(4, 0);
      ring.publishUsed(); // 0 -> 2: entry 0 used
      expect(driver.usedIdx).to.equal(2);
      expect(ring.needsNotify()).to.equal(true);
      ring.pushUsed(5, 0);
      ring.publishUsed(); // 2 -> 3: used_event 0 already passed
      expect(ring.needsNotify()).to.equal(false);
    });

    it('without EVENT_IDX disable/enable toggles VIRTQ_USED_F_NO_NOTIFY and re-checks for new buffers', () => {
      const { ring, driver, arena, fences } = setup();
      ring.disableNotifications();
      expect(driver.usedFlags).to.equal(USED_F_NO_NOTIFY);
      const before = fences.count;
      expect(ring.enableNotifications()).to.equal(false);
      expect(driver.usedFlags).to.equal(0);
      expect(fences.count).to.equal(before + 1);
      // buffers added while notifications were off: enable reports them (the race)
      ring.disableNotifications();
      driver.addChain([{ gpa: arena.alloc(8), length: 8, writable: true }]);
      driver.publish();
      expect(ring.enableNotifications()).to.equal(true);
    });

    it('with EVENT_IDX enable writes avail_event = next index to read', () => {
      const features = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX;
      const { ring, driver, arena, chain } = setup(8, features);
      const buf = arena.alloc(8);
      driver.addChain([{ gpa: buf, length: 8, writable: true }]);
      driver.addChain([{ gpa: buf, length: 8, writable: true }]);
      driver.publish();
      ring.disableNotifications();
      expect(driver.usedFlags).to.equal(0); // no flag with EVENT_IDX
      ring.popChain(chain);
      ring.popChain(chain);
      expect(ring.enableNotifications()).to.equal(false);
      expect(driver.availEvent).to.equal(2);
      const old = driver.availIdx;
      driver.addChain([{ gpa: buf, length: 8, writable: true }]);
      driver.publish();
      expect(driver.shouldKick(old, true)).to.equal(true);
      expect(ring.enableNotifications()).to.equal(true);
    });
  });
});
