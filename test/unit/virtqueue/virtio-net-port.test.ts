import { expect } from 'chai';
import { CounterBlock } from '../../../src/sys/counters';
import { setLogSink } from '../../../src/sys/log';
import { type FrameSink, type OffloadInfo, type SegmentList } from '../../../src/io/frame-io';
import { PORT_COUNTERS, RX_DROP_SLOTS, TX_DROP_SLOTS, VirtioNetPort } from '../../../src/virtqueue/virtio-net-port';
import { GuestMemory } from '../../../src/virtqueue/guest-memory';
import { VIRTIO_F_VERSION_1, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_RING_F_INDIRECT_DESC } from '../../../src/virtqueue/features';
import { SplitRing } from '../../../src/virtqueue/split-ring';
import { GuestArena, SplitRingDriver, USED_F_NO_NOTIFY } from '../../support/fakes/split-ring-driver';

const BASE = 0x200000;
const SIZE = 1 << 20;
const QUEUE = 16;

interface Received {
  bytes: number[];
  offload: OffloadInfo;
}

interface Fixture {
  arena: GuestArena;
  rxDriver: SplitRingDriver;
  txDriver: SplitRingDriver;
  port: VirtioNetPort;
  counters: CounterBlock;
  received: Received[];
  notified: { rx: number; tx: number };
  tapped: [string, number][];
}

function setup(features: bigint = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_INDIRECT_DESC): Fixture {
  const buffer = new ArrayBuffer(SIZE);
  const memory = new GuestMemory([{ guestPhysAddr: BASE, size: SIZE, userAddr: 0x7f0000000000, mmapOffset: 0, chunks: [buffer], chunkSize: SIZE }]);
  const arena = new GuestArena(new Uint8Array(buffer), BASE);
  const rxDriver = new SplitRingDriver(arena, QUEUE);
  const txDriver = new SplitRingDriver(arena, QUEUE);
  const fence = (): void => undefined;
  const rx = new SplitRing(memory, { fence });
  const tx = new SplitRing(memory, { fence });
  expect(rx.configure(QUEUE, rxDriver.descGpa, rxDriver.availGpa, rxDriver.usedGpa, features)).to.equal(null);
  expect(tx.configure(QUEUE, txDriver.descGpa, txDriver.availGpa, txDriver.usedGpa, features)).to.equal(null);
  const received: Received[] = [];
  const sink: FrameSink = {
    receiveFrame(frame: SegmentList, offload: OffloadInfo) {
      const bytes = new Uint8Array(frame.totalLength);
      frame.copyOut(0, bytes, 0, bytes.length);
      received.push({ bytes: Array.from(bytes), offload: { ...offload } });
    },
  };
  const notified = { rx: 0, tx: 0 };
  const tapped: [string, number][] = [];
  const counters = new CounterBlock();
  const port = new VirtioNetPort({
    rx,
    tx,
    features,
    sink,
    counters,
    notifyRx: () => notified.rx++,
    notifyTx: () => notified.tx++,
    onFrame: (direction, _segments, length) => tapped.push([direction, length]),
  });
  return { arena, rxDriver, txDriver, port, counters, received, notified, tapped };
}

/** A 12-byte header with recognisable offload fields. */
function header(): Uint8Array {
  // flags NEEDS_CSUM, gso TCPV4, hdr_len 54, gso_size 1448, csum_start 34, csum_offset 16, num_buffers 0
  return Uint8Array.of(1, 1, 54, 0, 0xa8, 0x05, 34, 0, 16, 0, 0, 0);
}

function frameBytes(length: number, seed = 0): Uint8Array {
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = (i * 7 + seed) & 0xff;
  return out;
}

/** Put bytes into freshly allocated guest buffers, one per piece; returns the TX chain descriptors. */
function readableChain(arena: GuestArena, pieces: Uint8Array[]): { gpa: number; length: number; writable: boolean }[] {
  return pieces.map((p) => {
    const gpa = arena.alloc(Math.max(1, p.length));
    arena.write(gpa, p);
    return { gpa, length: p.length, writable: false };
  });
}

/** The port logs every drop (rate-limited); keep test output clean, then put back a stderr sink like the default one. */
const quietLogs = (): void => setLogSink(() => undefined);
const stderrLogs = (): void =>
  setLogSink((level, message) => {
    if (level !== 'debug') process.stderr.write(`${level}: ${message}\n`);
  });

describe('VirtioNetPort', () => {
  before(quietLogs);
  after(stderrLogs);

  describe('TX', () => {
    it('strips a header split across descriptors and passes the frame without copying it', () => {
      const f = setup();
      const hdr = header();
      const frame = frameBytes(60);
      const all = new Uint8Array(72);
      all.set(hdr);
      all.set(frame, 12);
      // header in 5 + 7 bytes, the second descriptor also carries 30 frame bytes
      const head = f.txDriver.addChain(readableChain(f.arena, [all.subarray(0, 5), all.subarray(5, 42), all.subarray(42)]));
      f.txDriver.publish();
      expect(f.port.processTx(64)).to.equal(false);
      expect(f.received.length).to.equal(1);
      expect(f.received[0].bytes).to.deep.equal(Array.from(frame));
      expect(f.received[0].offload).to.deep.equal({ flags: 1, gsoType: 1, hdrLen: 54, gsoSize: 1448, csumStart: 34, csumOffset: 16 });
      expect(f.txDriver.drainUsed()).to.deep.equal([{ id: head, length: 0 }]);
      expect(f.notified.tx).to.equal(1);
      expect(f.counters.get(PORT_COUNTERS.txFrames)).to.equal(1);
      expect(f.counters.get(PORT_COUNTERS.txBytes)).to.equal(60);
      expect(f.tapped).to.deep.equal([['tx', 60]]);
    });

    it('hands the sink views into guest memory (no copy)', () => {
      const f = setup();
      const all = new Uint8Array(12 + 20);
      all.set(frameBytes(20), 12);
      const chain = readableChain(f.arena, [all]);
      f.txDriver.addChain(chain);
      f.txDriver.publish();
      let seen: { buffer: ArrayBufferLike; offset: number } | null = null;
      f.port.sink = {
        receiveFrame(frame) {
          seen = { buffer: frame.buffers[0].buffer, offset: frame.offsets[0] };
        },
      };
      f.port.processTx(8);
      expect(seen).to.deep.equal({ buffer: f.arena.memory.buffer, offset: chain[0].gpa - BASE + 12 });
    });

    it('notifies once per batch and stops at the budget', () => {
      const f = setup();
      for (let i = 0; i < 5; i++) {
        const all = new Uint8Array(12 + 14);
        all.set(frameBytes(14, i), 12);
        f.txDriver.addChain(readableChain(f.arena, [all]));
      }
      f.txDriver.publish();
      expect(f.port.processTx(2)).to.equal(true); // more to do
      expect(f.received.length).to.equal(2);
      expect(f.notified.tx).to.equal(1);
      expect(f.txDriver.usedFlags).to.equal(USED_F_NO_NOTIFY); // still polling: no kicks wanted
      expect(f.port.processTx(10)).to.equal(false);
      expect(f.received.length).to.equal(5);
      expect(f.notified.tx).to.equal(2);
      expect(f.txDriver.usedFlags).to.equal(0); // drained: kicks wanted again
    });

    it('holds the RX flushes of the frames it hands over until the batch ends: one RX notification', () => {
      const f = setup();
      for (let i = 0; i < 3; i++) {
        const all = new Uint8Array(12 + 14);
        all.set(frameBytes(14, i), 12);
        f.txDriver.addChain(readableChain(f.arena, [all]));
        f.rxDriver.addChain([{ gpa: f.arena.alloc(64), length: 64, writable: true }]);
      }
      f.txDriver.publish();
      f.rxDriver.publish();
      let published = 0;
      f.port.sink = {
        receiveFrame() {
          // A reply per frame, flushed at once as a stack does.
          f.port.reserve(20);
          f.port.commit(20);
          f.port.flush();
          published += f.rxDriver.drainUsed().length;
        },
      };
      expect(f.port.processTx(10)).to.equal(false);
      expect(published).to.equal(0);
      expect(f.notified.rx).to.equal(1);
      expect(f.rxDriver.drainUsed().length).to.equal(3);
      // An outer batch (a loop's batch of ready fds) holds them past processTx too.
      f.port.beginBatch();
      f.port.reserve(20);
      f.port.flush();
      expect(f.port.processTx(10)).to.equal(false);
      expect(f.notified.rx).to.equal(1);
      f.port.endBatch();
      expect(f.notified.rx).to.equal(1); // nothing was committed: nothing to publish
    });

    it('drops malformed chains by reason, returns them with length 0, and carries on', () => {
      const f = setup();
      const good = new Uint8Array(12 + 20);
      good.set(frameBytes(20), 12);
      const runt = f.txDriver.addChain(readableChain(f.arena, [new Uint8Array(12 + 5)]));
      const short = f.txDriver.addChain(readableChain(f.arena, [new Uint8Array(8)]));
      const withWritable = f.txDriver.addChain([...readableChain(f.arena, [good]), { gpa: f.arena.alloc(64), length: 64, writable: true }]);
      f.txDriver.putAvail(QUEUE + 3); // head out of range
      const ok = f.txDriver.addChain(readableChain(f.arena, [good]));
      f.txDriver.publish();
      expect(f.port.processTx(64)).to.equal(false);
      expect(f.received.length).to.equal(1);
      const used = f.txDriver.drainUsed();
      expect(used).to.deep.equal([
        { id: runt, length: 0 },
        { id: short, length: 0 },
        { id: withWritable, length: 0 },
        { id: QUEUE + 3, length: 0 },
        { id: ok, length: 0 },
      ]);
      expect(f.counters.get(TX_DROP_SLOTS.get('runt') as number)).to.equal(1);
      expect(f.counters.get(TX_DROP_SLOTS.get('short_header') as number)).to.equal(1);
      expect(f.counters.get(TX_DROP_SLOTS.get('writable_in_tx') as number)).to.equal(1);
      expect(f.counters.get(TX_DROP_SLOTS.get('head_out_of_range') as number)).to.equal(1);
      expect(f.counters.get(PORT_COUNTERS.txFrames)).to.equal(1);
    });

    it('reports a broken TX ring once and stops', () => {
      const f = setup();
      let broken = 0;
      const port = new VirtioNetPort({
        rx: f.port.rx,
        tx: f.port.tx,
        features: VIRTIO_F_VERSION_1,
        counters: f.counters,
        notifyRx: () => undefined,
        notifyTx: () => undefined,
        onRingBroken: (d) => {
          expect(d).to.equal('tx');
          broken++;
        },
      });
      f.txDriver.setAvailIdx(QUEUE + 1);
      expect(port.processTx(8)).to.equal(false);
      expect(port.processTx(8)).to.equal(false);
      expect(broken).to.equal(1);
    });
  });

  describe('RX without MRG_RXBUF', () => {
    it('reserves one chain after the header and commits header + frame', () => {
      const f = setup();
      const buf = f.arena.alloc(2048);
      const head = f.rxDriver.addChain([{ gpa: buf, length: 2048, writable: true }]);
      f.rxDriver.publish();
      const space = f.port.reserve(1514);
      expect(space).to.not.equal(null);
      expect(space!.totalLength).to.equal(1514);
      const frame = frameBytes(100, 3);
      space!.copyIn(0, frame, 0, 100);
      f.port.commit(100, { flags: 2, gsoType: 0, hdrLen: 0, gsoSize: 0, csumStart: 0, csumOffset: 0 });
      expect(f.rxDriver.usedIdx).to.equal(0); // published at flush
      f.port.flush();
      expect(f.rxDriver.drainUsed()).to.deep.equal([{ id: head, length: 112 }]);
      const written = f.arena.read(buf, 112);
      expect(Array.from(written.subarray(0, 12))).to.deep.equal([2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]); // num_buffers 1
      expect(Array.from(written.subarray(12))).to.deep.equal(Array.from(frame));
      expect(f.notified.rx).to.equal(1);
      expect(f.counters.get(PORT_COUNTERS.rxFrames)).to.equal(1);
      expect(f.counters.get(PORT_COUNTERS.rxBytes)).to.equal(100);
      expect(f.tapped).to.deep.equal([['rx', 100]]);
    });

    it('returns a shorter list when the guest buffer is smaller than asked', () => {
      const f = setup();
      f.rxDriver.addChain([{ gpa: f.arena.alloc(100), length: 100, writable: true }]);
      f.rxDriver.addChain([{ gpa: f.arena.alloc(100), length: 100, writable: true }]);
      f.rxDriver.publish();
      const space = f.port.reserve(1514);
      expect(space!.totalLength).to.equal(88); // one chain only without MRG_RXBUF
    });

    it('writes a header split across descriptors', () => {
      const f = setup();
      const a = f.arena.alloc(5);
      const b = f.arena.alloc(100);
      f.rxDriver.addChain([
        { gpa: a, length: 5, writable: true },
        { gpa: b, length: 100, writable: true },
      ]);
      f.rxDriver.publish();
      const space = f.port.reserve(50)!;
      expect(space.totalLength).to.equal(50);
      space.copyIn(0, frameBytes(20), 0, 20);
      f.port.commit(20);
      f.port.flush();
      expect(Array.from(f.arena.read(a, 5))).to.deep.equal([0, 0, 0, 0, 0]);
      expect(Array.from(f.arena.read(b, 7))).to.deep.equal([0, 0, 0, 0, 0, 1, 0]); // num_buffers = 1 at header bytes 10..11
      expect(Array.from(f.arena.read(b + 7, 20))).to.deep.equal(Array.from(frameBytes(20)));
      expect(f.rxDriver.drainUsed()[0].length).to.equal(32);
    });

    it('cancel puts the chain back for the next reserve', () => {
      const f = setup();
      const head = f.rxDriver.addChain([{ gpa: f.arena.alloc(2048), length: 2048, writable: true }]);
      f.rxDriver.publish();
      expect(f.port.reserve(1514)).to.not.equal(null);
      f.port.cancel();
      expect(f.port.rx.lastAvailIdx).to.equal(0);
      f.port.flush();
      expect(f.rxDriver.usedIdx).to.equal(0);
      expect(f.port.reserve(1514)).to.not.equal(null);
      f.port.commit(60);
      f.port.flush();
      expect(f.rxDriver.drainUsed()).to.deep.equal([{ id: head, length: 72 }]);
      expect(f.counters.get(PORT_COUNTERS.rxFrames)).to.equal(1);
    });

    it('quiesce gives back an open reservation and publishes what was committed', () => {
      const f = setup();
      const h1 = f.rxDriver.addChain([{ gpa: f.arena.alloc(256), length: 256, writable: true }]);
      f.rxDriver.addChain([{ gpa: f.arena.alloc(256), length: 256, writable: true }]);
      f.rxDriver.publish();
      f.port.reserve(200);
      f.port.commit(50);
      f.port.reserve(200);
      f.port.quiesce();
      expect(f.port.rx.lastAvailIdx).to.equal(1); // the second chain is not counted as consumed
      expect(f.rxDriver.drainUsed()).to.deep.equal([{ id: h1, length: 62 }]);
      expect(f.notified.rx).to.equal(1);
    });

    it('returns null when the guest has no buffers and calls onWritable after its kick', () => {
      const f = setup();
      let writable = 0;
      f.port.onWritable = () => writable++;
      f.port.rx.disableNotifications();
      expect(f.port.reserve(1514)).to.equal(null);
      expect(f.port.rxWaiting).to.equal(true);
      expect(f.rxDriver.usedFlags).to.equal(0); // asks the guest to kick when it refills
      f.rxDriver.addChain([{ gpa: f.arena.alloc(2048), length: 2048, writable: true }]);
      f.rxDriver.publish();
      f.port.rxKicked();
      expect(writable).to.equal(1);
      expect(f.rxDriver.usedFlags).to.equal(USED_F_NO_NOTIFY);
      expect(f.port.reserve(1514)).to.not.equal(null);
      f.port.rxKicked(); // not starved: no callback
      expect(writable).to.equal(1);
    });

    it('forgetGuest: a starvation seen by one guest is not carried to the next; dispose drops sink and listener', () => {
      const f = setup();
      let writable = 0;
      f.port.onWritable = () => writable++;
      expect(f.port.reserve(1514)).to.equal(null);
      expect(f.port.rxWaiting).to.equal(true);
      f.port.forgetGuest();
      expect(f.port.rxWaiting).to.equal(false);
      f.port.rxKicked();
      expect(writable).to.equal(0, 'the next guest\'s first kick wakes nobody on behalf of the old one');
      f.port.dispose();
      expect(f.port.onWritable).to.equal(null);
      expect(f.port.sink).to.equal(null);
    });

    it('drops unusable RX chains by reason and reserves the next good one', () => {
      const f = setup();
      const readable = f.rxDriver.addChain([{ gpa: f.arena.alloc(64), length: 64, writable: false }]);
      const tiny = f.rxDriver.addChain([{ gpa: f.arena.alloc(8), length: 8, writable: true }]);
      const good = f.rxDriver.addChain([{ gpa: f.arena.alloc(2048), length: 2048, writable: true }]);
      f.rxDriver.publish();
      expect(f.port.reserve(1514)).to.not.equal(null);
      f.port.commit(64);
      f.port.flush();
      expect(f.rxDriver.drainUsed()).to.deep.equal([
        { id: readable, length: 0 },
        { id: tiny, length: 0 },
        { id: good, length: 76 },
      ]);
      expect(f.counters.get(RX_DROP_SLOTS.get('readable_in_rx') as number)).to.equal(1);
      expect(f.counters.get(RX_DROP_SLOTS.get('short_buffer') as number)).to.equal(1);
    });
  });

  describe('RX with several reservations open', () => {
    it('holds many reservations, commits them oldest first and cancels the rest as one run', () => {
      const f = setup();
      const bufs: number[] = [];
      const heads: number[] = [];
      for (let i = 0; i < 5; i++) {
        bufs.push(f.arena.alloc(112));
        heads.push(f.rxDriver.addChain([{ gpa: bufs[i], length: 112, writable: true }]));
      }
      f.rxDriver.publish();
      const lists = [f.port.reserve(100)!];
      for (let i = 1; i < 4; i++) lists.push(f.port.reserveAnother(100)!);
      expect(f.port.rx.lastAvailIdx).to.equal(4);
      for (let i = 0; i < 4; i++) lists[i].copyIn(0, frameBytes(100, i), 0, 100);
      f.port.commit(100);
      f.port.commit(60);
      f.port.cancel(); // the third and fourth go back
      expect(f.port.rx.lastAvailIdx).to.equal(2);
      f.port.flush();
      expect(f.rxDriver.drainUsed()).to.deep.equal([
        { id: heads[0], length: 112 },
        { id: heads[1], length: 72 },
      ]);
      expect(Array.from(f.arena.read(bufs[1] + 12, 60))).to.deep.equal(Array.from(frameBytes(60, 1)));
      expect(f.notified.rx).to.equal(1);
      // The next reservation starts with the first chain given back.
      f.port.reserve(10);
      f.port.commit(10);
      f.port.flush();
      expect(f.rxDriver.drainUsed()).to.deep.equal([{ id: heads[2], length: 22 }]);
    });

    it('returns null from reserveAnother when the guest runs out, keeping the open ones', () => {
      const f = setup();
      const heads = [0, 1].map(() => f.rxDriver.addChain([{ gpa: f.arena.alloc(80), length: 80, writable: true }]));
      f.rxDriver.publish();
      expect(f.port.reserve(60)).to.not.equal(null);
      expect(f.port.reserveAnother(60)).to.not.equal(null);
      expect(f.port.reserveAnother(60)).to.equal(null);
      f.port.commit(60);
      f.port.commit(60);
      f.port.commit(60); // nothing open: ignored
      f.port.flush();
      expect(f.rxDriver.drainUsed()).to.deep.equal(heads.map((id) => ({ id, length: 72 })));
    });

    it('leaves a bad chain behind an open reservation for the next reserve to drop', () => {
      const f = setup();
      const good = f.rxDriver.addChain([{ gpa: f.arena.alloc(80), length: 80, writable: true }]);
      const bad = f.rxDriver.addChain([{ gpa: f.arena.alloc(80), length: 80, writable: false }]);
      const next = f.rxDriver.addChain([{ gpa: f.arena.alloc(80), length: 80, writable: true }]);
      f.rxDriver.publish();
      expect(f.port.reserve(60)).to.not.equal(null);
      expect(f.port.reserveAnother(60)).to.equal(null);
      f.port.cancel();
      expect(f.port.rx.lastAvailIdx).to.equal(0);
      expect(f.port.reserve(60)).to.not.equal(null);
      expect(f.port.reserveAnother(60)).to.equal(null); // stops before the bad chain again
      f.port.commit(60);
      expect(f.port.reserve(60)).to.not.equal(null); // nothing open now: drops it, takes the next
      f.port.commit(60);
      f.port.flush();
      expect(f.rxDriver.drainUsed()).to.deep.equal([
        { id: good, length: 72 },
        { id: bad, length: 0 },
        { id: next, length: 72 },
      ]);
    });

    it('with MRG_RXBUF, a short commit before later reservations gives back its spare buffers and theirs', () => {
      const f = setup(VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF);
      const heads: number[] = [];
      for (let i = 0; i < 6; i++) heads.push(f.rxDriver.addChain([{ gpa: f.arena.alloc(40), length: 40, writable: true }]));
      f.rxDriver.publish();
      f.port.reserve(100); // three buffers
      f.port.reserveAnother(50); // two more
      expect(f.port.rx.lastAvailIdx).to.equal(5);
      f.port.commit(20); // one buffer: the rest go back
      expect(f.port.rx.lastAvailIdx).to.equal(1);
      f.port.commit(20); // the second reservation was cancelled: nothing to commit
      f.port.flush();
      expect(f.rxDriver.drainUsed()).to.deep.equal([{ id: heads[0], length: 32 }]);
    });
  });

  describe('RX with MRG_RXBUF', () => {
    const features = VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF;

    it('spreads a frame over several small buffers and gives back the unused ones', () => {
      const f = setup(features);
      const bufs: number[] = [];
      const heads: number[] = [];
      for (let i = 0; i < 6; i++) {
        bufs.push(f.arena.alloc(40));
        heads.push(f.rxDriver.addChain([{ gpa: bufs[i], length: 40, writable: true }]));
      }
      f.rxDriver.publish();
      const space = f.port.reserve(100)!;
      expect(space.totalLength).to.equal(100); // 28 + 40 + 32 of a third buffer
      expect(f.port.rx.lastAvailIdx).to.equal(3);
      const frame = frameBytes(60, 9);
      space.copyIn(0, frame, 0, 60);
      f.port.commit(60); // 72 bytes with the header: two buffers
      expect(f.port.rx.lastAvailIdx).to.equal(2); // the third went back
      f.port.flush();
      expect(f.rxDriver.drainUsed()).to.deep.equal([
        { id: heads[0], length: 40 },
        { id: heads[1], length: 32 },
      ]);
      const first = f.arena.read(bufs[0], 40);
      expect(first[10] | (first[11] << 8)).to.equal(2); // num_buffers
      expect([...first.subarray(12), ...f.arena.read(bufs[1], 32)]).to.deep.equal(Array.from(frame));
      // the next frame starts with the buffer that was given back
      f.port.reserve(10);
      f.port.commit(10);
      f.port.flush();
      expect(f.rxDriver.drainUsed()).to.deep.equal([{ id: heads[2], length: 22 }]);
      expect(f.counters.get(PORT_COUNTERS.rxFrames)).to.equal(2);
      expect(f.counters.get(PORT_COUNTERS.rxBytes)).to.equal(70);
    });

    it('returns what there is when the guest runs short, and cancel gives it all back', () => {
      const f = setup(features);
      for (let i = 0; i < 2; i++) f.rxDriver.addChain([{ gpa: f.arena.alloc(100), length: 100, writable: true }]);
      f.rxDriver.publish();
      const space = f.port.reserve(1514)!;
      expect(space.totalLength).to.equal(188);
      f.port.cancel();
      expect(f.port.rx.lastAvailIdx).to.equal(0);
      expect(f.port.reserve(150)!.totalLength).to.equal(150);
      f.port.commit(150);
      f.port.flush();
      expect(f.rxDriver.drainUsed().map((u) => u.length)).to.deep.equal([100, 62]);
    });

    it('follows features set after construction (legacy 10-byte header, then MRG_RXBUF)', () => {
      const f = setup(0n);
      expect(f.port.headerLength).to.equal(10);
      const legacy = f.arena.alloc(100);
      f.rxDriver.addChain([{ gpa: legacy, length: 100, writable: true }]);
      f.rxDriver.publish();
      expect(f.port.reserve(200)!.totalLength).to.equal(90);
      f.port.commit(20);
      f.port.flush();
      expect(f.rxDriver.drainUsed()[0].length).to.equal(30);
      f.port.setFeatures(features);
      expect(f.port.headerLength).to.equal(12);
      for (let i = 0; i < 3; i++) f.rxDriver.addChain([{ gpa: f.arena.alloc(40), length: 40, writable: true }]);
      f.rxDriver.publish();
      expect(f.port.reserve(100)!.totalLength).to.equal(100); // several chains: MRG_RXBUF now on
    });

    it('does not take a bad chain into a multi-buffer frame', () => {
      const f = setup(features);
      const h1 = f.rxDriver.addChain([{ gpa: f.arena.alloc(40), length: 40, writable: true }]);
      const bad = f.rxDriver.addChain([{ gpa: f.arena.alloc(40), length: 40, writable: false }]);
      f.rxDriver.publish();
      const space = f.port.reserve(100)!;
      expect(space.totalLength).to.equal(28); // stopped before the bad chain
      f.port.commit(28);
      f.port.flush();
      expect(f.port.reserve(100)).to.equal(null); // the bad chain is dropped now, then empty
      expect(f.rxDriver.drainUsed()).to.deep.equal([
        { id: h1, length: 40 },
        { id: bad, length: 0 },
      ]);
      expect(f.counters.get(RX_DROP_SLOTS.get('readable_in_rx') as number)).to.equal(1);
    });
  });
});
