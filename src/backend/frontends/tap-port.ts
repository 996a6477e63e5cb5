/**
 * The tap frontend (`ferry pasta`): Ethernet frames to and from a tap device
 * (IFF_TAP | IFF_NO_PI, no virtio-net header yet) whose fd ferry holds while
 * the device itself lives in the container's network namespace.
 *
 * A tap fd is message-oriented: one read() returns one frame, one write()
 * sends one. There is no batching system call for it (no recvmmsg/sendmmsg
 * on a character device), so:
 *
 * From the namespace: on readiness, frames are read one per read() into
 * consecutive slots of a preallocated pool, up to READ_BATCH frames or until
 * the tap is empty, and only then handed to the sink one after the other:
 * the reads of a burst are not interleaved with the stack's socket calls.
 * A batch that came back full is followed by another, up to READ_ROUNDS
 * per wake-up (the namespace's ACKs must not pile up in the tap's queue
 * while ferry writes the segments they release). Bounded, and epoll is
 * level-triggered, so a busy tap cannot starve the host sockets.
 *
 * The tap's queue itself (txqueuelen) is sized by tapQueueLength: at
 * MTU 1500 the kernel's 1000 frames are less than the window ferry
 * advertises, and frames beyond it are dropped in the namespace.
 *
 * To the namespace (FramePort): reserve() hands out one preallocated frame
 * buffer and commit() writes it at once (the tap copies it into an skb
 * during write(), so the buffer is free again right after). Writes do not
 * block; a tap that refuses a frame (interface down, queue full) costs that
 * frame, counted by reason.
 *
 * With a virtio-net header (the tap opened with IFF_VNET_HDR, offloads set
 * with TUNSETOFFLOAD) every frame is preceded by the 10-byte legacy header in
 * host byte order: frames from the namespace may then carry partial
 * checksums and be TCP segments of up to 64 KiB (TSO), which the stack takes
 * as they are (the header's fields become the frame's OffloadInfo). At
 * MTU 1500 this is what keeps the namespace from sending 1500-byte frames one
 * by one through ferry.
 *
 * The other way, the same header lets ferry write large frames: a run of
 * TCP data segments of one flow, contiguous in sequence, is held (the next
 * reservation is placed right after it, so the next segment's payload is
 * moved over its own headers onto the run's end) and written as one GSO
 * frame of up to 64 KiB when a frame that does not continue it comes, when
 * it is full, or at flush() (end of every stack call and loop batch); see
 * tap-coalesce.ts. Other frames get an all-zero header (complete checksums,
 * no GSO) and leave at commit, after any run before them.
 */
import { type CounterBlock, defineCounter } from '../../sys/counters';
import { rateLimited } from '../../sys/log';
import { native } from '../../sys/native';
import type { FdWatcher, ReadyHandler } from '../../stack/context';
import { LITTLE_ENDIAN } from '../../sys/byte-order';
import type { FramePort, FrameSink, OffloadInfo } from '../../io/frame-io';
import { SegmentList } from '../../io/frame-io';
import { closeQuietly } from '../../sys/close';
import { continuesRun, emptySegmentView, finishRun, parseDataSegment } from './tap-coalesce';
import type { FrameTap } from '../../virtqueue/virtio-net-port';
import { PORT_COUNTERS } from '../../virtqueue/virtio-net-port';

/** Frames read per round before they are handed to the stack. */
export const READ_BATCH = 64;
/**
 * Rounds of READ_BATCH per readable wake-up while the tap stays full. Every
 * ACK the stack takes from the namespace may release up to a burst of
 * segments whose writes make the namespace's kernel answer with more ACKs,
 * straight into the tap's queue: reading one batch per wake-up lets that
 * queue grow until it drops (tx_dropped in the namespace).
 */
export const READ_ROUNDS = 4;
/** Shortest frame passed to the stack: an Ethernet header. */
const MIN_FRAME_LENGTH = 14;
/** The legacy virtio-net header tun prepends with IFF_VNET_HDR (no num_buffers). */
export const TAP_VNET_HDR_LENGTH = 10;
/** Largest frame a TSO segment makes: a 65535-byte IP packet plus the Ethernet header. */
export const MAX_GSO_FRAME = 65535 + 14;

/** The kernel's default tap queue length (never go below it). */
export const DEFAULT_TAP_QUEUE_LENGTH = 1000;
/** Upper bound on the queue length ferry sets (each entry is one frame the namespace may park there). */
export const MAX_TAP_QUEUE_LENGTH = 32768;

/**
 * The tap's transmit queue length (txqueuelen: the ring the namespace's
 * frames wait in until ferry reads them) for an MTU: room for a whole
 * window of the largest ferry advertises (`maxWindowBytes`, its host
 * sockets' largest send buffer) in MTU-sized segments, should the
 * namespace not use TSO, plus a quarter for the ACKs of the other
 * direction and for a read batch that is still being handled, at least
 * the kernel's 1000. Pure.
 */
export function tapQueueLength(mtu: number, maxWindowBytes: number): number {
  const segment = Math.max(536, mtu - 40);
  const frames = Math.ceil(Math.max(0, maxWindowBytes) / segment);
  const wanted = frames + Math.ceil(frames / 4) + READ_BATCH * READ_ROUNDS;
  return Math.min(MAX_TAP_QUEUE_LENGTH, Math.max(DEFAULT_TAP_QUEUE_LENGTH, wanted));
}

const DROPS_HELP = 'Frames or descriptor chains dropped, by direction and reason';
/** Drop reasons of the tap frontend. */
export const TAP_DROPS = {
  runt: defineCounter('ferry_drops_total', DROPS_HELP, { direction: 'tx', reason: 'runt' }),
  oversized: defineCounter('ferry_drops_total', DROPS_HELP, { direction: 'tx', reason: 'oversized' }),
  sinkError: defineCounter('ferry_drops_total', DROPS_HELP, { direction: 'tx', reason: 'sink_error' }),
  tapBusy: defineCounter('ferry_drops_total', DROPS_HELP, { direction: 'rx', reason: 'tap_busy' }),
  tapWriteError: defineCounter('ferry_drops_total', DROPS_HELP, { direction: 'rx', reason: 'tap_write_error' }),
};

const COALESCE_HELP = 'TCP segments to the namespace merged into large (GSO) tap frames, and the frames they made';
/** What coalescing did (see tap-coalesce.ts). */
export const TAP_COALESCE = {
  segments: defineCounter('ferry_tap_coalesced_total', COALESCE_HELP, { event: 'segments' }),
  frames: defineCounter('ferry_tap_coalesced_total', COALESCE_HELP, { event: 'frames' }),
};

const OFFLOAD_NONE: OffloadInfo = { flags: 0, gsoType: 0, hdrLen: 0, gsoSize: 0, csumStart: 0, csumOffset: 0 };

/** What a TapPort is made from. */
export interface TapPortOptions {
  /** The tap fd (non-blocking); the port owns it from now on. */
  fd: number;
  counters: CounterBlock;
  watcher: FdWatcher;
  /** Largest frame either way (the tap's MTU + 14). */
  maxFrameLength: number;
  /** Frames read per round (default READ_BATCH). */
  readBatch?: number;
  /** Rounds per wake-up while each one fills its batch (default READ_ROUNDS). */
  readRounds?: number;
  /** The tap was opened with IFF_VNET_HDR: a 10-byte virtio-net header precedes every frame. */
  vnetHeader?: boolean;
  /** Merge runs of TCP segments to the namespace into GSO frames (default: with vnetHeader; needs it). */
  coalesce?: boolean;
  onFrame?: FrameTap | null;
}

/** A tap fd as the stack's FramePort and frame source. */
export class TapPort implements FramePort, ReadyHandler {
  sink: FrameSink | null = null;
  onWritable: (() => void) | null = null;
  /** Called once when the tap fails for good (read error or EOF: the namespace is gone). */
  onClosed: ((reason: string) => void) | null = null;
  readonly maxFrameLength: number;

  private fd: number;
  private readonly counters: CounterBlock;
  private readonly watcher: FdWatcher;
  private readonly onFrame: FrameTap | null;

  /** Read slots: frame i of a batch is read into pool[i * slotLength ...]. */
  private readonly pool: Uint8Array;
  private readonly slotLength: number;
  private readonly readBatch: number;
  private readonly readRounds: number;
  private readonly batchLengths: Int32Array;
  private readonly frame = new SegmentList(1);
  /** Bytes of virtio-net header before every frame (0 or TAP_VNET_HDR_LENGTH). */
  private readonly headerLength: number;
  /** Longest frame accepted from the namespace (larger with TSO). */
  private readonly maxReadFrame: number;
  private readonly poolView: DataView;
  private readonly offload: OffloadInfo = { flags: 0, gsoType: 0, hdrLen: 0, gsoSize: 0, csumStart: 0, csumOffset: 0 };

  private readonly output: Uint8Array;
  private readonly reserved = new SegmentList(1);
  private reservedOpen = false;

  // The run being coalesced: its frame is at output[headerLength, headerLength + runLength).
  private readonly coalesce: boolean;
  private runLength = 0;
  private readonly runHead = emptySegmentView();
  private readonly nextSegment = emptySegmentView();
  private runNextSeq = 0;
  private runSegmentSize = 0;
  private runSegments = 0;
  /** Length of the stack's frames in the run (for the frame counters). */
  private runFrameBytes = 0;
  private runPush = false;
  /** The last segment was shorter than the segment size: the run cannot grow (GSO needs equal segments but the last). */
  private runClosed = false;

  constructor(options: TapPortOptions) {
    this.fd = options.fd;
    this.counters = options.counters;
    this.watcher = options.watcher;
    this.onFrame = options.onFrame ?? null;
    this.maxFrameLength = options.maxFrameLength;
    this.readBatch = Math.max(1, options.readBatch ?? READ_BATCH);
    this.readRounds = Math.max(1, options.readRounds ?? READ_ROUNDS);
    this.headerLength = options.vnetHeader === true ? TAP_VNET_HDR_LENGTH : 0;
    this.maxReadFrame = options.vnetHeader === true ? Math.max(this.maxFrameLength, MAX_GSO_FRAME) : this.maxFrameLength;
    // One spare byte: a read that fills the slot completely was a frame longer than we accept.
    this.slotLength = this.headerLength + this.maxReadFrame + 1;
    this.pool = new Uint8Array(this.slotLength * this.readBatch);
    this.poolView = new DataView(this.pool.buffer);
    this.batchLengths = new Int32Array(this.readBatch);
    this.coalesce = options.vnetHeader === true && options.coalesce !== false;
    // The header in front is all zero (complete checksums, no GSO) except while a coalesced run is written.
    // With coalescing: room for a run of up to 64 KiB and, after it, the next frame being reserved.
    this.output = new Uint8Array(this.headerLength + (this.coalesce ? MAX_GSO_FRAME : 0) + this.maxFrameLength);
    this.watcher.watch(this.fd, native.constants.EPOLLIN, this);
  }

  /** True until the tap failed or close() was called. */
  get open(): boolean {
    return this.fd >= 0;
  }

  /** Stop watching and close the tap fd (the device goes with its namespace, or with this fd). Idempotent. */
  close(reason = 'closed'): void {
    if (this.fd < 0) return;
    this.runLength = 0;
    const fd = this.fd;
    this.fd = -1;
    this.watcher.unwatch(fd);
    closeQuietly(fd);
    if (this.onClosed !== null) this.onClosed(reason);
  }

  /**
   * The port's dispose step: close the fd, and drop the sink, the writable
   * listener and the close callback, so nothing the port was given stays
   * reachable from it. Idempotent.
   */
  dispose(): void {
    this.close('disposed');
    this.sink = null;
    this.onWritable = null;
    this.onClosed = null;
  }

  /** Readiness of the tap fd (ReadyHandler). */
  onReady(fd: number, events: number): void {
    if (fd !== this.fd) return;
    if ((events & (native.constants.EPOLLIN | native.constants.EPOLLERR | native.constants.EPOLLHUP)) !== 0) this.readWhileFull();
  }

  /** Up to readRounds batches, the next only when the last one filled up (bounded: readRounds x readBatch frames). */
  private readWhileFull(): void {
    for (let round = 0; round < this.readRounds; round++) {
      if (this.readFrames() < this.readBatch) break;
    }
  }

  // ---------------------------------------------------------------- from the namespace

  /** Read up to readBatch frames, then hand them to the sink; returns how many were read. */
  readFrames(): number {
    let count = 0;
    for (; count < this.readBatch && this.fd >= 0; count++) {
      let n: number;
      try {
        n = native.read(this.fd, this.pool, count * this.slotLength, this.slotLength);
      } catch (e) {
        this.close(`tap read failed: ${(e as Error).message}`);
        break;
      }
      if (n < 0) break; // EAGAIN: the tap is empty
      if (n === 0) {
        this.close('tap closed');
        break;
      }
      this.batchLengths[count] = n;
    }
    for (let i = 0; i < count; i++) this.deliver(i * this.slotLength, this.batchLengths[i]);
    return count;
  }

  /** One read (header, if any, then the frame) at pool[start, start+readLength). */
  private deliver(start: number, readLength: number): void {
    const length = readLength - this.headerLength;
    const offload = this.headerLength > 0 ? this.readHeader(start) : OFFLOAD_NONE;
    if (length < MIN_FRAME_LENGTH) {
      this.counters.add(TAP_DROPS.runt);
      rateLimited('warn', 'tap runt', () => `tap: dropped a ${length}-byte frame (shorter than an Ethernet header)`);
      return;
    }
    if (length > this.maxReadFrame) {
      this.counters.add(TAP_DROPS.oversized);
      rateLimited('warn', 'tap oversized', () => `tap: dropped a frame longer than ${this.maxReadFrame} bytes (is the tap's MTU above ferry's?)`);
      return;
    }
    const frame = this.frame;
    frame.clear();
    frame.push(this.pool, start + this.headerLength, length);
    this.counters.add(PORT_COUNTERS.txFrames);
    this.counters.add(PORT_COUNTERS.txBytes, length);
    if (this.onFrame !== null) this.onFrame('tx', frame, length);
    if (this.sink === null) return;
    try {
      this.sink.receiveFrame(frame, offload);
    } catch (e) {
      this.counters.add(TAP_DROPS.sinkError);
      rateLimited('error', 'tap sink_error', () => `tap: frame handler threw: ${String(e)}`);
    }
  }

  /** The virtio-net header at pool[start] as OffloadInfo (one object, reused per frame). */
  private readHeader(start: number): OffloadInfo {
    const view = this.poolView;
    const out = this.offload;
    out.flags = this.pool[start];
    out.gsoType = this.pool[start + 1];
    out.hdrLen = view.getUint16(start + 2, LITTLE_ENDIAN);
    out.gsoSize = view.getUint16(start + 4, LITTLE_ENDIAN);
    out.csumStart = view.getUint16(start + 6, LITTLE_ENDIAN);
    out.csumOffset = view.getUint16(start + 8, LITTLE_ENDIAN);
    return out;
  }

  // ---------------------------------------------------------------- to the namespace

  /** The frame buffer, up to min(maxLength, maxFrameLength) bytes (FramePort); null once the tap is closed. */
  reserve(maxLength: number): SegmentList | null {
    if (this.fd < 0) return null;
    this.reservedOpen = true;
    const list = this.reserved;
    list.clear();
    // While a run is open the next frame goes right after it, where its payload can join it.
    const start = this.headerLength + this.runLength;
    list.push(this.output, start, Math.max(0, Math.min(maxLength, this.maxFrameLength)));
    return list;
  }

  /** Write the reserved frame to the tap now, or add it to the run being coalesced (FramePort). */
  commit(length: number, _offload?: OffloadInfo): void {
    if (!this.reservedOpen) return;
    this.reservedOpen = false;
    const frameLength = Math.min(Math.max(0, length), this.reserved.totalLength);
    if (frameLength === 0 || this.fd < 0) return;
    if (this.onFrame !== null) {
      // Captures show the segments as the stack made them, before coalescing.
      this.reserved.lengths[0] = frameLength;
      this.onFrame('rx', this.reserved, frameLength);
    }
    if (!this.coalesce) {
      this.writeOut(this.headerLength + frameLength, 1, frameLength);
      return;
    }
    let start = this.reserved.offsets[0];
    if (this.runLength > 0) {
      if (!this.runClosed && parseDataSegment(this.output, start, frameLength, this.nextSegment) && continuesRun(this.output, this.runHead, this.runLength, this.runNextSeq, this.runSegmentSize, this.nextSegment)) {
        this.appendToRun(start, frameLength);
        return;
      }
      this.writeRun();
      // The frame now starts the buffer (a copy of at most one frame).
      this.output.copyWithin(this.headerLength, start, start + frameLength);
      start = this.headerLength;
    }
    if (parseDataSegment(this.output, start, frameLength, this.runHead)) {
      this.runLength = frameLength;
      this.runNextSeq = (this.runHead.seq + this.runHead.payloadLength) >>> 0;
      this.runSegmentSize = this.runHead.payloadLength;
      this.runSegments = 1;
      this.runFrameBytes = frameLength;
      this.runPush = (this.runHead.flags & 0x08) !== 0;
      this.runClosed = false;
      return;
    }
    this.writeOut(this.headerLength + frameLength, 1, frameLength);
  }

  /** The payload of the segment just committed at output[start] joins the run (moved over its own headers). */
  private appendToRun(start: number, frameLength: number): void {
    const next = this.nextSegment;
    const headers = frameLength - next.payloadLength;
    this.output.copyWithin(start, start + headers, start + frameLength);
    this.runLength += next.payloadLength;
    this.runNextSeq = (next.seq + next.payloadLength) >>> 0;
    this.runSegments++;
    this.runFrameBytes += frameLength;
    if ((next.flags & 0x08) !== 0) this.runPush = true;
    if (next.payloadLength < this.runSegmentSize) this.runClosed = true;
    // Full (another segment would pass the IP length limit), or closed: out it goes.
    if (this.runClosed || this.runLength - 14 + this.runSegmentSize > 65535) this.writeRun();
  }

  /** Write the open run: as one GSO frame when it merged segments, as the plain frame otherwise. */
  private writeRun(): void {
    if (this.runLength === 0) return;
    const length = this.runLength;
    this.runLength = 0;
    if (this.runSegments > 1) {
      finishRun(this.output, this.runHead, length, this.runSegmentSize, this.runPush);
      this.counters.add(TAP_COALESCE.frames);
      this.counters.add(TAP_COALESCE.segments, this.runSegments);
    }
    this.writeOut(this.headerLength + length, this.runSegments, this.runFrameBytes);
    // Back to the all-zero header of plain frames.
    this.output.fill(0, 0, this.headerLength);
  }

  /**
   * One write of output[0, total): the virtio-net header (if any) and a
   * frame carrying `frames` of the stack's frames (`bytes` long in all),
   * counted as sent or, refused, as dropped.
   */
  private writeOut(total: number, frames: number, bytes: number): void {
    if (this.fd < 0) return;
    let written: number;
    try {
      written = native.write(this.fd, this.output, 0, total);
    } catch (e) {
      this.counters.add(TAP_DROPS.tapWriteError, frames);
      rateLimited('warn', 'tap write', () => `tap: frame to the namespace dropped: ${(e as Error).message}`);
      return;
    }
    if (written < 0) {
      this.counters.add(TAP_DROPS.tapBusy, frames);
      return;
    }
    this.counters.add(PORT_COUNTERS.rxFrames, frames);
    this.counters.add(PORT_COUNTERS.rxBytes, bytes);
  }

  /** Give the reservation back (FramePort). */
  cancel(): void {
    this.reservedOpen = false;
  }

  /** Write the coalesced run, if one is open (FramePort; plain frames left at commit). */
  flush(): void {
    this.writeRun();
  }
}
