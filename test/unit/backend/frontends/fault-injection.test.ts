/**
 * The test-only fault injector (src/backend/fault-injection.ts): its spec
 * parser, and what it does to frames in each direction, against a recording
 * sink (guest to stack) and FakeFramePort (stack to guest).
 */
import { expect } from 'chai';
import { FaultInjector, faultSpecFromEnvironment, parseFaultSpec, seededRandom } from '../../../../src/backend/frontends/middleware/fault-injection';
import type { FaultSpec } from '../../../../src/backend/frontends/middleware/fault-injection';
import { type FrameSink, type OffloadInfo, SegmentList } from '../../../../src/io/frame-io';
import { FakeFramePort, NO_OFFLOAD } from '../../../support/fakes/stack-fakes';

function spec(patch: Partial<FaultSpec>): FaultSpec {
  return { drop: 0, duplicate: 0, reorder: 0, seed: 1, ...patch };
}

/** Frame number n: 60..1500 bytes, first two bytes the number, the rest derived from it. */
function frame(n: number): Uint8Array {
  const bytes = new Uint8Array(60 + ((n * 37) % 1440));
  bytes[0] = n >>> 8;
  bytes[1] = n & 0xff;
  for (let i = 2; i < bytes.length; i++) bytes[i] = (n * 31 + i) & 0xff;
  return bytes;
}

function intact(bytes: Uint8Array): boolean {
  const n = (bytes[0] << 8) | bytes[1];
  const expected = frame(n);
  return expected.length === bytes.length && expected.every((b, i) => b === bytes[i]);
}

function numberOf(bytes: Uint8Array): number {
  return (bytes[0] << 8) | bytes[1];
}

/** Feeds frames as the frontend does: a reused list over a reused buffer, overwritten after each call. */
class GuestSide {
  readonly delivered: Uint8Array[] = [];
  readonly offloads: OffloadInfo[] = [];
  private readonly memory = new Uint8Array(4096);
  private readonly list = new SegmentList(4);

  private readonly sink: FrameSink;

  constructor(readonly injector: FaultInjector) {
    this.sink = injector.sink({
      receiveFrame: (f, offload) => {
        const copy = new Uint8Array(f.totalLength);
        f.copyOut(0, copy, 0, f.totalLength);
        this.delivered.push(copy);
        this.offloads.push({ ...offload });
      },
    });
  }

  send(n: number, offload: OffloadInfo = NO_OFFLOAD): void {
    const bytes = frame(n);
    // Split in two descriptors, as guest memory often is.
    const cut = 20;
    this.memory.set(bytes.subarray(0, cut), 100);
    this.memory.set(bytes.subarray(cut), 1000);
    this.list.clear();
    this.list.push(this.memory, 100, cut);
    this.list.push(this.memory, 1000, bytes.length - cut);
    this.sink.receiveFrame(this.list, offload);
    // The frontend reuses the memory at once.
    this.memory.fill(0xaa);
  }
}

/** The stack side: writes frame n into a reservation and commits it. */
function commitFrame(port: { reserve(n: number): SegmentList | null; commit(n: number, o?: OffloadInfo): void; cancel(): void }, n: number): boolean {
  const bytes = frame(n);
  const list = port.reserve(bytes.length);
  if (list === null) return false;
  list.copyIn(0, bytes, 0, bytes.length);
  port.commit(bytes.length);
  return true;
}

describe('fault injection (tests only)', () => {
  describe('parseFaultSpec', () => {
    it('reads drop, dup, reorder and seed in any order, defaults the rest', () => {
      expect(parseFaultSpec('drop=0.02,dup=0.01,reorder=0.02,seed=7')).to.deep.equal({ drop: 0.02, duplicate: 0.01, reorder: 0.02, seed: 7 });
      expect(parseFaultSpec('seed=3, reorder=1')).to.deep.equal({ drop: 0, duplicate: 0, reorder: 1, seed: 3 });
      expect(parseFaultSpec('')).to.deep.equal({ drop: 0, duplicate: 0, reorder: 0, seed: 1 });
    });

    for (const bad of ['loss=0.1', 'drop=1.5', 'drop=-0.1', 'drop=abc', 'drop=0.6,dup=0.6', 'seed=1.5', 'seed=-1', 'drop']) {
      it(`rejects '${bad}'`, () => {
        expect(() => parseFaultSpec(bad)).to.throw(/FERRY_TEST_FAULTS/);
      });
    }

    it('is off without FERRY_TEST_FAULTS (or with it empty), on with it', () => {
      expect(faultSpecFromEnvironment({})).to.equal(null);
      expect(faultSpecFromEnvironment({ FERRY_TEST_FAULTS: ' ' })).to.equal(null);
      expect(faultSpecFromEnvironment({ FERRY_TEST_FAULTS: 'drop=0.5' })?.drop).to.equal(0.5);
      expect(FaultInjector.fromEnvironment(new FakeFramePort(), {})).to.equal(null);
    });
  });

  it('seededRandom repeats for a seed and differs between seeds', () => {
    const a = seededRandom(42);
    const b = seededRandom(42);
    const c = seededRandom(43);
    const sa = Array.from({ length: 100 }, () => a());
    expect(Array.from({ length: 100 }, () => b())).to.deep.equal(sa);
    expect(Array.from({ length: 100 }, () => c())).to.not.deep.equal(sa);
    expect(sa.every((x) => x >= 0 && x < 1)).to.equal(true);
  });

  describe('guest to stack', () => {
    it('drop=1 loses every frame and counts it', () => {
      const g = new GuestSide(new FaultInjector(spec({ drop: 1 }), new FakeFramePort()));
      for (let i = 0; i < 10; i++) g.send(i);
      expect(g.delivered).to.have.length(0);
      expect(g.injector.toStack.dropped).to.equal(10);
      expect(g.injector.toStack.frames).to.equal(10);
    });

    it('dup=1 delivers every frame twice, the copy intact after the frontend reused its memory, offload kept', () => {
      const g = new GuestSide(new FaultInjector(spec({ duplicate: 1 }), new FakeFramePort()));
      const offload: OffloadInfo = { flags: 1, gsoType: 0, hdrLen: 0, gsoSize: 0, csumStart: 34, csumOffset: 16 };
      for (let i = 0; i < 5; i++) g.send(i, offload);
      expect(g.delivered.map(numberOf)).to.deep.equal([0, 0, 1, 1, 2, 2, 3, 3, 4, 4]);
      expect(g.delivered.every(intact)).to.equal(true);
      expect(g.offloads.every((o) => o.csumStart === 34 && o.flags === 1)).to.equal(true);
      expect(g.injector.toStack.duplicated).to.equal(5);
    });

    it('reorder: a held frame goes after the next one, or at tick()', () => {
      const injector = new FaultInjector(spec({ reorder: 1 }), new FakeFramePort());
      const g = new GuestSide(injector);
      g.send(1);
      g.send(2);
      expect(g.delivered).to.have.length(0);
      injector.tick();
      expect(g.delivered.map(numberOf)).to.deep.equal([1, 2]);
      expect(g.delivered.every(intact)).to.equal(true);
    });

    it('with the copy pool exhausted, frames pass untouched and count as skipped', () => {
      const injector = new FaultInjector(spec({ reorder: 1 }), new FakeFramePort(), 2);
      const g = new GuestSide(injector);
      for (let i = 0; i < 4; i++) g.send(i);
      // Two held (pool of 2); the third passes and releases them after it; the fourth is held again.
      expect(g.delivered.map(numberOf)).to.deep.equal([2, 0, 1]);
      expect(injector.toStack.skipped).to.equal(1);
      injector.tick();
      expect(g.delivered.map(numberOf)).to.deep.equal([2, 0, 1, 3]);
    });

    it('mixed faults: every delivered frame intact, counts add up, the same seed gives the same run', () => {
      const run = (seed: number): GuestSide => {
        const g = new GuestSide(new FaultInjector(spec({ drop: 0.1, duplicate: 0.1, reorder: 0.1, seed }), new FakeFramePort()));
        for (let i = 0; i < 2000; i++) g.send(i);
        g.injector.tick();
        return g;
      };
      const g = run(9);
      const c = g.injector.toStack;
      expect(g.delivered.every(intact)).to.equal(true);
      expect(c.dropped).to.be.within(120, 280);
      expect(c.duplicated).to.be.within(120, 280);
      expect(c.reordered).to.be.within(120, 280);
      expect(g.delivered.length).to.equal(2000 - c.dropped + c.duplicated);
      let inversions = 0;
      for (let i = 1; i < g.delivered.length; i++) if (numberOf(g.delivered[i]) < numberOf(g.delivered[i - 1])) inversions++;
      // Frames held in a row come out together after the next one: at least one inversion per two held.
      expect(inversions).to.be.at.least(c.reordered / 2);
      expect(run(9).delivered.map(numberOf)).to.deep.equal(g.delivered.map(numberOf));
      expect(run(10).delivered.map(numberOf)).to.not.deep.equal(g.delivered.map(numberOf));
    });
  });

  describe('stack to guest', () => {
    it('passes everything through untouched without faults; onWritable and maxFrameLength are the frontend\'s', () => {
      const inner = new FakeFramePort();
      const injector = new FaultInjector(spec({}), inner);
      const handler = (): void => undefined;
      injector.port.onWritable = handler;
      expect(inner.onWritable).to.equal(handler);
      expect(injector.port.maxFrameLength).to.equal(inner.maxFrameLength);
      for (let i = 0; i < 5; i++) commitFrame(injector.port, i);
      injector.port.flush();
      expect(inner.frames.map(numberOf)).to.deep.equal([0, 1, 2, 3, 4]);
      expect(inner.flushes).to.equal(1);
    });

    it('drop=1 cancels every reservation (the guest keeps its buffers)', () => {
      const inner = new FakeFramePort();
      const injector = new FaultInjector(spec({ drop: 1 }), inner);
      for (let i = 0; i < 5; i++) commitFrame(injector.port, i);
      expect(inner.frames).to.have.length(0);
      expect(inner.cancelled).to.equal(5);
      expect(injector.toGuest.dropped).to.equal(5);
    });

    it('dup=1 commits every frame twice, intact', () => {
      const inner = new FakeFramePort();
      const injector = new FaultInjector(spec({ duplicate: 1 }), inner);
      for (let i = 0; i < 3; i++) commitFrame(injector.port, i);
      expect(inner.frames.map(numberOf)).to.deep.equal([0, 0, 1, 1, 2, 2]);
      expect(inner.frames.every(intact)).to.equal(true);
    });

    it('reorder: a held frame is written after the next commit, or at tick() (which flushes)', () => {
      const inner = new FakeFramePort();
      const injector = new FaultInjector(spec({ reorder: 0.5, seed: 3 }), inner);
      for (let i = 0; i < 200; i++) commitFrame(injector.port, i);
      injector.tick();
      const got = inner.frames.map(numberOf);
      expect(got.slice().sort((a, b) => a - b)).to.deep.equal(Array.from({ length: 200 }, (_, i) => i));
      expect(inner.frames.every(intact)).to.equal(true);
      expect(injector.toGuest.reordered).to.be.above(50);
      expect(got).to.not.deep.equal(Array.from({ length: 200 }, (_, i) => i));
    });

    it('tick() writes a frame still held and flushes it to the guest', () => {
      const inner = new FakeFramePort();
      const injector = new FaultInjector(spec({ reorder: 1 }), inner);
      commitFrame(injector.port, 7);
      expect(inner.frames).to.have.length(0);
      injector.tick();
      expect(inner.frames.map(numberOf)).to.deep.equal([7]);
      expect(inner.flushes).to.equal(1);
    });

    it('a held frame the guest has no buffer for is lost and counted', () => {
      const inner = new FakeFramePort();
      const injector = new FaultInjector(spec({ reorder: 1 }), inner);
      commitFrame(injector.port, 1);
      inner.available = false;
      injector.tick();
      expect(inner.frames).to.have.length(0);
      expect(injector.toGuest.lost).to.equal(1);
    });

    it('summary() names both directions', () => {
      const injector = new FaultInjector(spec({ drop: 1 }), new FakeFramePort());
      commitFrame(injector.port, 1);
      expect(injector.summary()).to.equal(
        'test-faults: to-stack frames 0 dropped 0 duplicated 0 reordered 0 skipped 0 lost 0; to-guest frames 1 dropped 1 duplicated 0 reordered 0 skipped 0 lost 0',
      );
    });
  });
});
