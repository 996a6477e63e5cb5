/**
 * The stream frontend: Ethernet frames over a connected UNIX stream socket,
 * each preceded by its length as a 4-byte big-endian number. This is what
 * QEMU speaks with `-netdev stream,addr.type=unix,...` and `-netdev
 * socket,connect=...`, and what passt speaks without --vhost-user.
 *
 * To the guest (FramePort): frames are built in place in one preallocated
 * output pool, each right after its 4-byte length, so a whole batch is one
 * contiguous range and leaves with a single write. When the socket is full
 * the unsent tail stays in the pool (a stream cannot drop half a frame) and
 * EPOLLOUT is watched; when the pool has no room, reserve() returns null and
 * onWritable fires once the socket has drained.
 *
 * From the guest: bytes are read into an input buffer and cut into frames
 * (partial reads are kept until the rest arrives); each frame goes to the
 * sink as a view into that buffer. A length of 0 or above MAX_STREAM_FRAME
 * means the peer lost framing: the connection is closed with one log line.
 * Frames shorter than an Ethernet header are counted and dropped.
 */
import { type CounterBlock, defineCounter } from '../../sys/counters';
import { log, rateLimited } from '../../sys/log';
import { native } from '../../sys/native';
import { closeQuietly } from '../../sys/close';
import type { FdWatcher, ReadyHandler } from '../../stack/context';
import type { FramePort, FrameSink, OffloadInfo } from '../../io/frame-io';
import { SegmentList } from '../../io/frame-io';
import type { FrameTap } from '../../virtqueue/virtio-net-port';
import { PORT_COUNTERS } from '../../virtqueue/virtio-net-port';

/** Bytes of the length prefix. */
export const STREAM_PREFIX_LENGTH = 4;
/** Longest frame accepted from the peer (passt's bound: 65535 + Ethernet and VLAN headers, rounded). */
export const MAX_STREAM_FRAME = 65550;
/** Shortest frame passed to the stack: an Ethernet header. */
const MIN_FRAME_LENGTH = 14;
/** Frames handed to the sink per readable wake-up before yielding (level-triggered epoll calls again). */
const READ_FRAME_BUDGET = 512;
/** read() calls per readable wake-up. */
const READ_CALL_BUDGET = 16;

const DROPS_HELP = 'Frames or descriptor chains dropped, by direction and reason';
/** Drop reasons of the stream frontend. */
export const STREAM_DROPS = {
  runt: defineCounter('ferry_drops_total', DROPS_HELP, { direction: 'tx', reason: 'runt' }),
  badLength: defineCounter('ferry_drops_total', DROPS_HELP, { direction: 'tx', reason: 'stream_bad_length' }),
  sinkError: defineCounter('ferry_drops_total', DROPS_HELP, { direction: 'tx', reason: 'sink_error' }),
  notConnected: defineCounter('ferry_drops_total', DROPS_HELP, { direction: 'rx', reason: 'not_connected' }),
};

const OFFLOAD_NONE: OffloadInfo = { flags: 0, gsoType: 0, hdrLen: 0, gsoSize: 0, csumStart: 0, csumOffset: 0 };

/** What a StreamPort is made from. */
export interface StreamPortOptions {
  counters: CounterBlock;
  /** Registers the connected fd for readiness (the frontend loop). */
  watcher: FdWatcher;
  /** Largest frame the stack may build (MTU + 14). */
  maxFrameLength: number;
  /** Output pool size in bytes; at least two largest frames with prefixes (default 1 MiB). */
  outputBytes?: number;
  /** Input buffer size in bytes; at least one largest frame with its prefix (default 256 KiB). */
  inputBytes?: number;
  onFrame?: FrameTap | null;
}

/** Why a connection ended, for the owner's log and its decision to accept another one. */
export type StreamCloseReason = string;

/** One stream connection at a time as a FramePort (to the guest) and frame source (from it). */
export class StreamPort implements FramePort, ReadyHandler {
  sink: FrameSink | null = null;
  onWritable: (() => void) | null = null;
  /** Called once per connection when it ends (peer closed, error, framing lost). */
  onClosed: ((reason: StreamCloseReason) => void) | null = null;
  readonly maxFrameLength: number;

  private readonly counters: CounterBlock;
  private readonly watcher: FdWatcher;
  private readonly onFrame: FrameTap | null;
  private fd = -1;

  private readonly output: Uint8Array;
  private readonly outputView: DataView;
  /** Unsent bytes are output[sendHead, tail). */
  private sendHead = 0;
  private tail = 0;
  /** Offset of the reserved frame's length prefix, or -1. */
  private reservedAt = -1;
  private readonly reserved = new SegmentList(1);
  private starved = false;
  private watchingOut = false;

  private readonly input: Uint8Array;
  private readonly inputView: DataView;
  /** Unparsed input is input[inStart, inEnd). */
  private inStart = 0;
  private inEnd = 0;
  private readonly frame = new SegmentList(1);

  constructor(options: StreamPortOptions) {
    this.counters = options.counters;
    this.watcher = options.watcher;
    this.onFrame = options.onFrame ?? null;
    this.maxFrameLength = Math.min(options.maxFrameLength, MAX_STREAM_FRAME);
    const slot = STREAM_PREFIX_LENGTH + this.maxFrameLength;
    this.output = new Uint8Array(Math.max(options.outputBytes ?? 1 << 20, 2 * slot));
    this.outputView = new DataView(this.output.buffer);
    this.input = new Uint8Array(Math.max(options.inputBytes ?? 256 << 10, STREAM_PREFIX_LENGTH + MAX_STREAM_FRAME));
    this.inputView = new DataView(this.input.buffer);
  }

  /** True while a peer is connected. */
  get connected(): boolean {
    return this.fd >= 0;
  }

  /** Bytes committed but not yet accepted by the socket. */
  get unsentBytes(): number {
    return this.tail - this.sendHead;
  }

  /** Take a connected, non-blocking socket (the port closes it when the connection ends). */
  attach(fd: number): void {
    if (this.fd >= 0) this.close('replaced by a new connection');
    this.fd = fd;
    this.watchingOut = false;
    this.watcher.watch(fd, native.constants.EPOLLIN | native.constants.EPOLLRDHUP, this);
    // Frames the stack held back while nobody was connected can go now.
    this.wakeWriter();
  }

  /** End the connection (if any): unwatch and close the fd, forget buffered bytes, tell onClosed. */
  close(reason: StreamCloseReason): void {
    if (this.fd < 0) return;
    const fd = this.fd;
    this.fd = -1;
    this.watcher.unwatch(fd);
    closeQuietly(fd);
    this.sendHead = this.tail = 0;
    this.reservedAt = -1;
    this.inStart = this.inEnd = 0;
    if (this.onClosed !== null) this.onClosed(reason);
  }

  /**
   * The port's dispose step: end the connection, and drop the sink, the
   * writable listener and the close callback, so nothing the port was given
   * stays reachable from it. Idempotent.
   */
  dispose(): void {
    this.close('disposed');
    this.sink = null;
    this.onWritable = null;
    this.onClosed = null;
  }

  /** Readiness of the connected fd (ReadyHandler). */
  onReady(fd: number, events: number): void {
    if (fd !== this.fd) return;
    const c = native.constants;
    if ((events & c.EPOLLOUT) !== 0) this.flush();
    if (this.fd >= 0 && (events & (c.EPOLLIN | c.EPOLLHUP | c.EPOLLERR | c.EPOLLRDHUP)) !== 0) this.readFrames();
  }

  // ---------------------------------------------------------------- to the guest

  /**
   * Reserve contiguous pool space for a frame of up to min(maxLength,
   * maxFrameLength) bytes, after room for its length prefix (FramePort).
   * Returns null when nobody is connected or the pool is full of unsent
   * bytes; onWritable fires when that changes.
   */
  reserve(maxLength: number): SegmentList | null {
    if (this.reservedAt >= 0) this.cancel();
    if (this.fd < 0) {
      this.starved = true;
      return null;
    }
    const length = Math.max(0, Math.min(maxLength, this.maxFrameLength));
    const needed = STREAM_PREFIX_LENGTH + length;
    if (this.tail + needed > this.output.length) {
      // Make room: push out what the socket takes now, then move the rest to the front.
      this.writeOut();
      if (this.fd < 0) return null;
      if (this.sendHead > 0) this.compactOutput();
    }
    if (this.tail + needed > this.output.length) {
      this.starved = true;
      return null;
    }
    this.reservedAt = this.tail;
    const list = this.reserved;
    list.clear();
    list.push(this.output, this.tail + STREAM_PREFIX_LENGTH, length);
    return list;
  }

  /** Seal the reserved frame with its length prefix; it leaves at the next flush (FramePort). */
  commit(length: number, _offload?: OffloadInfo): void {
    const at = this.reservedAt;
    if (at < 0) return;
    this.reservedAt = -1;
    const frameLength = Math.min(Math.max(0, length), this.reserved.totalLength);
    if (frameLength === 0) return;
    this.outputView.setUint32(at, frameLength, false);
    this.tail = at + STREAM_PREFIX_LENGTH + frameLength;
    this.counters.add(PORT_COUNTERS.rxFrames);
    this.counters.add(PORT_COUNTERS.rxBytes, frameLength);
    if (this.onFrame !== null) {
      this.reserved.lengths[0] = frameLength;
      this.onFrame('rx', this.reserved, frameLength);
    }
  }

  /** Give the reservation back (FramePort). */
  cancel(): void {
    this.reservedAt = -1;
  }

  /**
   * Write committed frames (FramePort): as much as the socket takes. What
   * it does not take stays in the pool, and EPOLLOUT is watched until it does.
   */
  flush(): void {
    if (this.fd < 0) return;
    if (!this.writeOut()) this.wakeWriter();
  }

  /** Write as much as the socket takes; returns true when bytes remain unsent (EPOLLOUT then watched). */
  private writeOut(): boolean {
    // Bounded: each pass either writes at least one byte or stops.
    while (this.sendHead < this.tail) {
      let n: number;
      try {
        n = native.write(this.fd, this.output, this.sendHead, this.tail - this.sendHead);
      } catch (e) {
        this.close(`write failed: ${(e as Error).message}`);
        return false;
      }
      if (n <= 0) break;
      this.sendHead += n;
    }
    if (this.sendHead === this.tail && this.reservedAt < 0) this.sendHead = this.tail = 0;
    const pending = this.sendHead < this.tail;
    if (pending !== this.watchingOut) {
      this.watchingOut = pending;
      const c = native.constants;
      this.watcher.modify(this.fd, c.EPOLLIN | c.EPOLLRDHUP | (pending ? c.EPOLLOUT : 0));
    }
    return pending;
  }

  private wakeWriter(): void {
    if (!this.starved || this.fd < 0) return;
    this.starved = false;
    if (this.onWritable !== null) this.onWritable();
  }

  /** Move the unsent bytes to the start of the pool (rare: only when the socket fell behind). */
  private compactOutput(): void {
    this.output.copyWithin(0, this.sendHead, this.tail);
    this.tail -= this.sendHead;
    this.sendHead = 0;
  }

  // ---------------------------------------------------------------- from the guest

  /**
   * Read what the socket has (bounded per call) and hand every complete
   * frame to the sink. Closes the connection on EOF, errors and bad lengths.
   */
  readFrames(): void {
    let frames = 0;
    for (let calls = 0; calls < READ_CALL_BUDGET && this.fd >= 0 && frames < READ_FRAME_BUDGET; calls++) {
      if (this.inEnd === this.input.length) this.compactInput();
      let n: number;
      try {
        n = native.read(this.fd, this.input, this.inEnd, this.input.length - this.inEnd);
      } catch (e) {
        this.close(`read failed: ${(e as Error).message}`);
        return;
      }
      if (n < 0) return; // EAGAIN: drained
      if (n === 0) {
        this.close(this.inEnd > this.inStart ? 'peer closed the connection mid-frame' : 'peer closed the connection');
        return;
      }
      this.inEnd += n;
      frames += this.deliverFrames();
    }
  }

  /** Hand the complete frames in the input buffer to the sink; returns how many. */
  private deliverFrames(): number {
    let delivered = 0;
    while (this.fd >= 0 && this.inEnd - this.inStart >= STREAM_PREFIX_LENGTH) {
      const length = this.inputView.getUint32(this.inStart, false);
      if (length === 0 || length > MAX_STREAM_FRAME) {
        this.counters.add(STREAM_DROPS.badLength);
        log.warn(`stream: frame length ${length} from the peer is outside 1-${MAX_STREAM_FRAME}: closing the connection`);
        this.close(`bad frame length ${length}`);
        return delivered;
      }
      if (this.inEnd - this.inStart < STREAM_PREFIX_LENGTH + length) break;
      const start = this.inStart + STREAM_PREFIX_LENGTH;
      this.inStart = start + length;
      delivered++;
      this.deliver(start, length);
    }
    if (this.inStart === this.inEnd) this.inStart = this.inEnd = 0;
    return delivered;
  }

  private deliver(start: number, length: number): void {
    if (length < MIN_FRAME_LENGTH) {
      this.counters.add(STREAM_DROPS.runt);
      rateLimited('warn', 'stream runt', () => `stream: dropped a ${length}-byte frame (shorter than an Ethernet header)`);
      return;
    }
    const frame = this.frame;
    frame.clear();
    frame.push(this.input, start, length);
    this.counters.add(PORT_COUNTERS.txFrames);
    this.counters.add(PORT_COUNTERS.txBytes, length);
    if (this.onFrame !== null) this.onFrame('tx', frame, length);
    if (this.sink === null) return;
    try {
      this.sink.receiveFrame(frame, OFFLOAD_NONE);
    } catch (e) {
      this.counters.add(STREAM_DROPS.sinkError);
      rateLimited('error', 'stream sink_error', () => `stream: frame handler threw: ${String(e)}`);
    }
  }

  /** Move a partial frame to the start of the input buffer so the rest fits after it. */
  private compactInput(): void {
    this.input.copyWithin(0, this.inStart, this.inEnd);
    this.inEnd -= this.inStart;
    this.inStart = 0;
  }
}
