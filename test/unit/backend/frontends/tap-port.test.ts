/**
 * TapPort over a SOCK_SEQPACKET socketpair, which keeps message boundaries
 * as a tap fd does (one read, one frame; one write, one frame). The real
 * tap inside a namespace is exercised by test/integration/pasta-*.test.ts.
 */
import { expect } from 'chai';
import { CounterBlock } from '../../../../src/sys/counters';
import { setLogSink } from '../../../../src/sys/log';
import { native } from '../../../../src/sys/native';
import type { FdWatcher, ReadyHandler } from '../../../../src/stack/context';
import type { FrameSink, OffloadInfo, SegmentList } from '../../../../src/io/frame-io';
import { PORT_COUNTERS } from '../../../../src/virtqueue/virtio-net-port';
import { DEFAULT_TAP_QUEUE_LENGTH, MAX_GSO_FRAME, MAX_TAP_QUEUE_LENGTH, READ_BATCH, READ_ROUNDS, TAP_DROPS, TAP_VNET_HDR_LENGTH, TapPort, tapQueueLength } from '../../../../src/backend/frontends/tap-port';

class RecordingWatcher implements FdWatcher {
  readonly events = new Map<number, number>();
  watch(fd: number, events: number, _handler: ReadyHandler): void {
    this.events.set(fd, events);
  }
  modify(fd: number, events: number): void {
    this.events.set(fd, events);
  }
  unwatch(fd: number): void {
    this.events.delete(fd);
  }
}

/** Records frames; `during` runs inside receiveFrame (e.g. to check what was read before). */
class CollectingSink implements FrameSink {
  readonly frames: number[][] = [];
  during: (() => void) | null = null;
  receiveFrame(frame: SegmentList, _offload: OffloadInfo): void {
    const bytes = new Uint8Array(frame.totalLength);
    frame.copyOut(0, bytes, 0, bytes.length);
    this.frames.push([...bytes]);
    if (this.during !== null) this.during();
  }
}

function frameBytes(length: number, seed: number): number[] {
  return Array.from({ length }, (_, i) => (seed + i) & 0xff);
}

const SOCK_SEQPACKET = native.constants.SOCK_SEQPACKET;
const open: number[] = [];

function setup(maxFrameLength = 1514, readBatch?: number, vnetHeader = false, readRounds?: number) {
  const [tapFd, peer] = native.socketpair(SOCK_SEQPACKET);
  open.push(peer);
  native.setNonBlocking(tapFd, true);
  native.setNonBlocking(peer, true);
  const watcher = new RecordingWatcher();
  const counters = new CounterBlock();
  const port = new TapPort({ fd: tapFd, counters, watcher, maxFrameLength, vnetHeader, ...(readBatch !== undefined ? { readBatch } : {}), ...(readRounds !== undefined ? { readRounds } : {}) });
  const sink = new CollectingSink();
  port.sink = sink;
  const closed: string[] = [];
  port.onClosed = (reason) => closed.push(reason);
  return { port, tapFd, peer, watcher, counters, sink, closed };
}

function send(fd: number, bytes: number[]): void {
  const buf = Uint8Array.from(bytes);
  expect(native.write(fd, buf, 0, buf.length)).to.equal(buf.length);
}

function receiveAll(fd: number): number[][] {
  const out: number[][] = [];
  const buf = new Uint8Array(70000);
  for (let i = 0; i < 10000; i++) {
    const n = native.read(fd, buf, 0, buf.length);
    if (n <= 0) break;
    out.push([...buf.subarray(0, n)]);
  }
  return out;
}

describe('TapPort', () => {
  before(() => setLogSink(() => undefined));
  after(() => setLogSink((level, message) => level !== 'debug' && process.stderr.write(`${level}: ${message}\n`)));
  afterEach(() => {
    for (const fd of open.splice(0)) {
      try {
        native.close(fd);
      } catch {
        // closed by the test
      }
    }
  });

  it('watches the tap for EPOLLIN from the start', () => {
    const t = setup();
    expect(t.watcher.events.get(t.tapFd)).to.equal(native.constants.EPOLLIN);
  });

  it('reads a burst of frames in one batch, then hands them to the sink in order', () => {
    const t = setup();
    const frames = [frameBytes(60, 1), frameBytes(1514, 2), frameBytes(14, 3)];
    for (const f of frames) send(t.peer, f);
    let readBeforeFirstDelivery = -1;
    t.sink.during = () => {
      if (readBeforeFirstDelivery < 0) {
        // Nothing left in the "tap": the whole burst was read before the first frame went to the stack.
        readBeforeFirstDelivery = native.read(t.tapFd, new Uint8Array(10), 0, 10);
      }
    };
    t.port.onReady(t.tapFd, native.constants.EPOLLIN);
    expect(t.sink.frames).to.deep.equal(frames);
    expect(readBeforeFirstDelivery).to.equal(-1);
    expect(t.counters.get(PORT_COUNTERS.txFrames)).to.equal(3);
    expect(t.counters.get(PORT_COUNTERS.txBytes)).to.equal(60 + 1514 + 14);
  });

  it('a wake-up reads at most readBatch frames; the rest wait for the next one', () => {
    const t = setup(1514, 4);
    for (let i = 0; i < 10; i++) send(t.peer, frameBytes(100, i));
    expect(t.port.readFrames()).to.equal(4);
    expect(t.sink.frames).to.have.length(4);
    expect(t.port.readFrames()).to.equal(4);
    expect(t.port.readFrames()).to.equal(2);
    expect(t.port.readFrames()).to.equal(0);
    expect(t.sink.frames.map((f) => f[0])).to.deep.equal([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  });

  it('a wake-up reads further batches while each fills up, at most readRounds of them, delivering each before the next', () => {
    const t = setup(1514, 4, false, 3);
    for (let i = 0; i < 20; i++) send(t.peer, frameBytes(100, i));
    const deliveredBeforeRead: number[] = [];
    let reads = 0;
    t.sink.during = () => {
      if (t.sink.frames.length % 4 === 1) deliveredBeforeRead.push(reads);
    };
    const realRead = t.port.readFrames.bind(t.port);
    t.port.readFrames = () => {
      reads++;
      return realRead();
    };
    t.port.onReady(t.tapFd, native.constants.EPOLLIN);
    // 3 rounds of 4: 12 frames, each batch handed over before the next read.
    expect(t.sink.frames).to.have.length(12);
    expect(deliveredBeforeRead).to.deep.equal([1, 2, 3]);
    // The other 8: two full rounds, then a third that comes back empty and ends the wake-up.
    t.port.onReady(t.tapFd, native.constants.EPOLLIN);
    expect(t.sink.frames.map((f) => f[0])).to.deep.equal(Array.from({ length: 20 }, (_, i) => i));
    expect(reads).to.equal(6);
    // A short round ends it at once.
    send(t.peer, frameBytes(100, 20));
    t.port.onReady(t.tapFd, native.constants.EPOLLIN);
    expect(reads).to.equal(7);
  });

  it('tapQueueLength: a window of MTU-sized segments plus a quarter and a wake-up\'s reads, within [1000, 32768]', () => {
    expect(tapQueueLength(1500, 4 * 1024 * 1024)).to.equal(2873 + 719 + READ_BATCH * READ_ROUNDS);
    expect(tapQueueLength(65520, 4 * 1024 * 1024)).to.equal(DEFAULT_TAP_QUEUE_LENGTH);
    expect(tapQueueLength(576, 64 * 1024 * 1024)).to.equal(MAX_TAP_QUEUE_LENGTH);
    expect(tapQueueLength(1500, 0)).to.equal(DEFAULT_TAP_QUEUE_LENGTH);
  });

  it('runts and frames longer than maxFrameLength are counted and dropped', () => {
    const t = setup(1514);
    send(t.peer, frameBytes(13, 0));
    send(t.peer, frameBytes(1515, 0));
    send(t.peer, frameBytes(1514, 7));
    t.port.readFrames();
    expect(t.sink.frames).to.deep.equal([frameBytes(1514, 7)]);
    expect(t.counters.get(TAP_DROPS.runt)).to.equal(1);
    expect(t.counters.get(TAP_DROPS.oversized)).to.equal(1);
  });

  it('a frame handler that throws costs only that frame', () => {
    const t = setup();
    let calls = 0;
    t.port.sink = {
      receiveFrame: () => {
        calls++;
        if (calls === 1) throw new Error('bug');
      },
    };
    send(t.peer, frameBytes(60, 1));
    send(t.peer, frameBytes(60, 2));
    t.port.readFrames();
    expect(calls).to.equal(2);
    expect(t.counters.get(TAP_DROPS.sinkError)).to.equal(1);
  });

  it('each committed frame is one write of exactly its length', () => {
    const t = setup();
    for (const [length, seed] of [[60, 1], [1514, 2], [42, 3]]) {
      const list = t.port.reserve(9000);
      expect(list?.totalLength).to.equal(1514);
      list?.copyIn(0, Uint8Array.from(frameBytes(length, seed)), 0, length);
      t.port.commit(length);
    }
    t.port.reserve(100);
    t.port.cancel();
    t.port.flush();
    expect(receiveAll(t.peer)).to.deep.equal([frameBytes(60, 1), frameBytes(1514, 2), frameBytes(42, 3)]);
    expect(t.counters.get(PORT_COUNTERS.rxFrames)).to.equal(3);
  });

  it('a refused write costs the frame, never throws', () => {
    const t = setup();
    native.setsockoptInt(t.tapFd, native.constants.SOL_SOCKET, native.constants.SO_SNDBUF, 4096);
    let committed = 0;
    for (let i = 0; i < 200; i++) {
      const list = t.port.reserve(1514);
      list?.copyIn(0, Uint8Array.from(frameBytes(1514, i)), 0, 1514);
      t.port.commit(1514);
      committed++;
    }
    const written = t.counters.get(PORT_COUNTERS.rxFrames);
    expect(written).to.be.greaterThan(0).and.lessThan(committed);
    expect(t.counters.get(TAP_DROPS.tapBusy)).to.equal(committed - written);
    native.close(t.peer);
    open.length = 0;
    const list = t.port.reserve(100);
    list?.copyIn(0, Uint8Array.from(frameBytes(60, 1)), 0, 60);
    t.port.commit(60);
    expect(t.counters.get(TAP_DROPS.tapWriteError)).to.equal(1);
  });

  it('EOF on the tap closes the port once and unwatches it', () => {
    const t = setup();
    native.close(t.peer);
    open.length = 0;
    t.port.readFrames();
    expect(t.closed).to.deep.equal(['tap closed']);
    expect(t.port.open).to.equal(false);
    expect(t.watcher.events.has(t.tapFd)).to.equal(false);
    expect(t.port.reserve(60)).to.equal(null);
    t.port.readFrames();
    expect(t.closed).to.have.length(1);
  });

  describe('with a virtio-net header (IFF_VNET_HDR)', () => {
    /** The 10-byte legacy header in little-endian host order. */
    function header(flags: number, gsoType: number, hdrLen: number, gsoSize: number, csumStart: number, csumOffset: number): number[] {
      const b = Buffer.alloc(TAP_VNET_HDR_LENGTH);
      b[0] = flags;
      b[1] = gsoType;
      b.writeUInt16LE(hdrLen, 2);
      b.writeUInt16LE(gsoSize, 4);
      b.writeUInt16LE(csumStart, 6);
      b.writeUInt16LE(csumOffset, 8);
      return [...b];
    }

    it('the header becomes the frame\'s OffloadInfo; the frame starts after it', () => {
      const t = setup(1514, undefined, true);
      const offloads: OffloadInfo[] = [];
      const frames: number[][] = [];
      t.port.sink = {
        receiveFrame: (frame, offload) => {
          const bytes = new Uint8Array(frame.totalLength);
          frame.copyOut(0, bytes, 0, bytes.length);
          frames.push([...bytes]);
          offloads.push({ ...offload });
        },
      };
      send(t.peer, [...header(1, 4, 86, 1428, 54, 16), ...frameBytes(300, 1)]);
      send(t.peer, [...header(0, 0, 0, 0, 0, 0), ...frameBytes(60, 2)]);
      t.port.readFrames();
      expect(frames).to.deep.equal([frameBytes(300, 1), frameBytes(60, 2)]);
      expect(offloads[0]).to.deep.equal({ flags: 1, gsoType: 4, hdrLen: 86, gsoSize: 1428, csumStart: 54, csumOffset: 16 });
      expect(offloads[1]).to.deep.equal({ flags: 0, gsoType: 0, hdrLen: 0, gsoSize: 0, csumStart: 0, csumOffset: 0 });
    });

    it('accepts TSO frames up to a 64 KiB IP packet even at MTU 1500, not beyond; a read shorter than header + Ethernet is a runt', () => {
      const t = setup(1514, undefined, true);
      send(t.peer, [...header(1, 1, 54, 1448, 34, 16), ...frameBytes(MAX_GSO_FRAME, 3)]);
      send(t.peer, [...header(1, 1, 54, 1448, 34, 16), ...frameBytes(MAX_GSO_FRAME + 1, 4)]);
      send(t.peer, header(0, 0, 0, 0, 0, 0).slice(0, 8));
      t.port.readFrames();
      expect(t.sink.frames.map((f) => f.length)).to.deep.equal([MAX_GSO_FRAME]);
      expect(t.counters.get(TAP_DROPS.oversized)).to.equal(1);
      expect(t.counters.get(TAP_DROPS.runt)).to.equal(1);
    });

    it('frames to the namespace carry an all-zero header (complete checksums, no GSO) before the frame', () => {
      const t = setup(1514, undefined, true);
      const list = t.port.reserve(100);
      expect(list?.totalLength).to.equal(100);
      list?.copyIn(0, Uint8Array.from(frameBytes(100, 9)), 0, 100);
      t.port.commit(100);
      expect(receiveAll(t.peer)).to.deep.equal([[...new Array(TAP_VNET_HDR_LENGTH).fill(0), ...frameBytes(100, 9)]]);
      expect(t.counters.get(PORT_COUNTERS.rxBytes)).to.equal(100);
    });
  });
});
