import { expect } from 'chai';
import { CounterBlock } from '../../../../src/sys/counters';
import { setLogSink } from '../../../../src/sys/log';
import { native } from '../../../../src/sys/native';
import type { FdWatcher, ReadyHandler } from '../../../../src/stack/context';
import type { FrameSink, OffloadInfo, SegmentList } from '../../../../src/io/frame-io';
import { PORT_COUNTERS } from '../../../../src/virtqueue/virtio-net-port';
import { MAX_STREAM_FRAME, STREAM_DROPS, StreamPort } from '../../../../src/backend/frontends/stream-port';

/** Records registrations instead of polling: tests call port.onReady themselves. */
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

class CollectingSink implements FrameSink {
  readonly frames: number[][] = [];
  receiveFrame(frame: SegmentList, _offload: OffloadInfo): void {
    const bytes = new Uint8Array(frame.totalLength);
    frame.copyOut(0, bytes, 0, bytes.length);
    this.frames.push([...bytes]);
  }
}

interface Fixture {
  port: StreamPort;
  peer: number;
  portFd: number;
  watcher: RecordingWatcher;
  sink: CollectingSink;
  counters: CounterBlock;
  closed: string[];
}

const open: number[] = [];

function setup(maxFrameLength = 1514, outputBytes?: number): Fixture {
  const [portFd, peer] = native.socketpair();
  open.push(peer);
  native.setNonBlocking(portFd, true);
  native.setNonBlocking(peer, true);
  const watcher = new RecordingWatcher();
  const counters = new CounterBlock();
  const port = new StreamPort({ counters, watcher, maxFrameLength, ...(outputBytes !== undefined ? { outputBytes } : {}) });
  const sink = new CollectingSink();
  port.sink = sink;
  const closed: string[] = [];
  port.onClosed = (reason) => closed.push(reason);
  port.attach(portFd);
  return { port, peer, portFd, watcher, sink, counters, closed };
}

/** A frame of `length` bytes whose byte i is (seed + i) & 0xff. */
function frameBytes(length: number, seed: number): number[] {
  return Array.from({ length }, (_, i) => (seed + i) & 0xff);
}

function prefixed(frame: number[]): number[] {
  const n = frame.length;
  return [(n >>> 24) & 0xff, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff, ...frame];
}

function send(fd: number, bytes: number[]): void {
  const buf = Uint8Array.from(bytes);
  expect(native.write(fd, buf, 0, buf.length)).to.equal(buf.length);
}

/** Everything the peer can read now. */
function drain(fd: number): number[] {
  const out: number[] = [];
  const buf = new Uint8Array(65536);
  for (let i = 0; i < 10000; i++) {
    const n = native.read(fd, buf, 0, buf.length);
    if (n <= 0) break;
    out.push(...buf.subarray(0, n));
  }
  return out;
}

const EPOLLIN = native.constants.EPOLLIN;
const EPOLLOUT = native.constants.EPOLLOUT;

describe('StreamPort', () => {
  const logged: string[] = [];
  before(() => setLogSink((_level, message) => logged.push(message)));
  after(() => setLogSink((level, message) => level !== 'debug' && process.stderr.write(`${level}: ${message}\n`)));
  afterEach(() => {
    for (const fd of open.splice(0)) {
      try {
        native.close(fd);
      } catch {
        // closed by the test
      }
    }
    logged.length = 0;
  });

  describe('from the peer', () => {
    it('cuts a read holding several frames and a partial one into frames; the rest completes the last', () => {
      const f = setup();
      const frames = [frameBytes(60, 1), frameBytes(1514, 2), frameBytes(14, 3), frameBytes(300, 4)];
      const stream = frames.flatMap(prefixed);
      const cut = stream.length - 100;
      send(f.peer, stream.slice(0, cut));
      f.port.onReady(f.portFd, EPOLLIN);
      expect(f.sink.frames).to.deep.equal(frames.slice(0, 3));
      send(f.peer, stream.slice(cut));
      f.port.onReady(f.portFd, EPOLLIN);
      expect(f.sink.frames).to.deep.equal(frames);
      expect(f.counters.get(PORT_COUNTERS.txFrames)).to.equal(4);
      expect(f.counters.get(PORT_COUNTERS.txBytes)).to.equal(60 + 1514 + 14 + 300);
      expect(f.port.connected).to.equal(true);
    });

    it('a length prefix split across reads', () => {
      const f = setup();
      const stream = prefixed(frameBytes(100, 9));
      send(f.peer, stream.slice(0, 2));
      f.port.onReady(f.portFd, EPOLLIN);
      expect(f.sink.frames).to.have.length(0);
      send(f.peer, stream.slice(2, 50));
      f.port.onReady(f.portFd, EPOLLIN);
      expect(f.sink.frames).to.have.length(0);
      send(f.peer, stream.slice(50));
      f.port.onReady(f.portFd, EPOLLIN);
      expect(f.sink.frames).to.deep.equal([frameBytes(100, 9)]);
    });

    it('the largest frame, across many reads and a full input buffer', () => {
      const f = setup(MAX_STREAM_FRAME);
      const big = frameBytes(MAX_STREAM_FRAME, 5);
      const stream = [...prefixed(frameBytes(1000, 1)), ...prefixed(big), ...prefixed(big), ...prefixed(frameBytes(20, 7))];
      // Bounded: the socket buffer takes a part at a time.
      for (let at = 0, rounds = 0; at < stream.length && rounds < 1000; rounds++) {
        const chunk = Uint8Array.from(stream.slice(at, at + 30000));
        const n = native.write(f.peer, chunk, 0, chunk.length);
        if (n > 0) at += n;
        f.port.onReady(f.portFd, EPOLLIN);
      }
      f.port.onReady(f.portFd, EPOLLIN);
      expect(f.sink.frames.map((x) => x.length)).to.deep.equal([1000, MAX_STREAM_FRAME, MAX_STREAM_FRAME, 20]);
      expect(f.sink.frames[2]).to.deep.equal(big);
    });

    it('a runt frame is counted and dropped; the connection stays', () => {
      const f = setup();
      send(f.peer, [...prefixed(frameBytes(13, 0)), ...prefixed(frameBytes(14, 1))]);
      f.port.onReady(f.portFd, EPOLLIN);
      expect(f.sink.frames).to.deep.equal([frameBytes(14, 1)]);
      expect(f.counters.get(STREAM_DROPS.runt)).to.equal(1);
      expect(f.closed).to.deep.equal([]);
    });

    for (const [what, length] of [['0', 0], ['above the limit', MAX_STREAM_FRAME + 1], ['2^32 - 1', 0xffffffff]] as const) {
      it(`a frame length of ${what} closes the connection with a log line`, () => {
        const f = setup();
        send(f.peer, [...prefixed(frameBytes(20, 1)), (length >>> 24) & 0xff, (length >>> 16) & 0xff, (length >>> 8) & 0xff, length & 0xff, 1, 2, 3]);
        f.port.onReady(f.portFd, EPOLLIN);
        expect(f.sink.frames).to.deep.equal([frameBytes(20, 1)]);
        expect(f.closed).to.have.length(1);
        expect(f.closed[0]).to.include(`bad frame length ${length}`);
        expect(logged.some((l) => l.includes(`frame length ${length}`))).to.equal(true);
        expect(f.port.connected).to.equal(false);
        expect(f.watcher.events.has(f.portFd)).to.equal(false);
        expect(f.counters.get(STREAM_DROPS.badLength)).to.equal(1);
        // The port's end is closed: the peer sees EOF.
        expect(native.read(f.peer, new Uint8Array(8), 0, 8)).to.equal(0);
      });
    }

    it('the peer closing ends the connection once', () => {
      const f = setup();
      send(f.peer, prefixed(frameBytes(40, 3)).slice(0, 10));
      native.close(f.peer);
      f.port.onReady(f.portFd, EPOLLIN);
      expect(f.closed).to.deep.equal(['peer closed the connection mid-frame']);
      f.port.onReady(f.portFd, EPOLLIN);
      expect(f.closed).to.have.length(1);
    });
  });

  describe('to the peer', () => {
    function commitFrame(port: StreamPort, bytes: number[]): boolean {
      const list = port.reserve(bytes.length);
      if (list === null) return false;
      expect(list.totalLength).to.equal(bytes.length);
      list.copyIn(0, Uint8Array.from(bytes), 0, bytes.length);
      port.commit(bytes.length);
      return true;
    }

    it('committed frames leave with their length prefixes at flush, in order', () => {
      const f = setup();
      const frames = [frameBytes(60, 1), frameBytes(1514, 2)];
      for (const frame of frames) expect(commitFrame(f.port, frame)).to.equal(true);
      expect(drain(f.peer)).to.deep.equal([]);
      f.port.flush();
      expect(drain(f.peer)).to.deep.equal(frames.flatMap(prefixed));
      expect(f.counters.get(PORT_COUNTERS.rxFrames)).to.equal(2);
    });

    it('commit with a shorter length sends only that; cancel sends nothing', () => {
      const f = setup();
      const list = f.port.reserve(1000);
      list?.copyIn(0, Uint8Array.from(frameBytes(100, 4)), 0, 100);
      f.port.commit(100);
      f.port.reserve(500);
      f.port.cancel();
      f.port.flush();
      expect(drain(f.peer)).to.deep.equal(prefixed(frameBytes(100, 4)));
    });

    it('reservations are bounded by maxFrameLength', () => {
      const f = setup(1514);
      expect(f.port.reserve(65535)?.totalLength).to.equal(1514);
    });

    it('a full socket keeps the tail in the pool, watches EPOLLOUT, refuses reservations, then drains and calls onWritable', () => {
      const f = setup(1514, 64 * 1024);
      native.setsockoptInt(f.portFd, native.constants.SOL_SOCKET, native.constants.SO_SNDBUF, 4096);
      let writable = 0;
      f.port.onWritable = () => writable++;
      const sent: number[][] = [];
      // Bounded: the pool (64 KiB) fills after about 43 frames.
      for (let i = 0; i < 1000; i++) {
        const frame = frameBytes(1500, i);
        if (!commitFrame(f.port, frame)) break;
        sent.push(frame);
        f.port.flush();
      }
      expect(sent.length).to.be.greaterThan(10).and.lessThan(1000);
      expect(f.port.unsentBytes).to.be.greaterThan(0);
      expect((f.watcher.events.get(f.portFd) ?? 0) & EPOLLOUT).to.equal(EPOLLOUT);
      expect(writable).to.equal(0);
      const received: number[] = [];
      for (let rounds = 0; rounds < 1000 && f.port.unsentBytes > 0; rounds++) {
        received.push(...drain(f.peer));
        f.port.onReady(f.portFd, EPOLLOUT);
      }
      received.push(...drain(f.peer));
      expect(f.port.unsentBytes).to.equal(0);
      expect(writable).to.equal(1);
      expect((f.watcher.events.get(f.portFd) ?? 0) & EPOLLOUT).to.equal(0);
      expect(received).to.deep.equal(sent.flatMap(prefixed));
    });

    it('without a peer reserve returns null; a new connection calls onWritable', () => {
      const f = setup();
      f.port.close('test');
      let writable = 0;
      f.port.onWritable = () => writable++;
      expect(f.port.reserve(100)).to.equal(null);
      const [a, b] = native.socketpair();
      open.push(b);
      native.setNonBlocking(a, true);
      f.port.attach(a);
      expect(writable).to.equal(1);
      expect(commitFrame(f.port, frameBytes(30, 1))).to.equal(true);
      f.port.flush();
      native.setNonBlocking(b, true);
      expect(drain(b)).to.deep.equal(prefixed(frameBytes(30, 1)));
    });

    it('a write error (peer gone) closes the connection instead of throwing', () => {
      const f = setup();
      native.close(f.peer);
      expect(commitFrame(f.port, frameBytes(60, 1))).to.equal(true);
      f.port.flush();
      expect(f.port.connected).to.equal(false);
      expect(f.closed[0]).to.match(/write failed/);
    });
  });
});
