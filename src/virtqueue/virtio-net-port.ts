/**
 * Joins one virtio-net queue pair (an RX and a TX split ring) to the frame
 * interface of the stack (src/stack/frame-io.ts).
 *
 * TX (guest -> ferry): chains popped from the TX ring are handed to the
 * sink as views into guest memory, minus the virtio-net header, then given
 * back with length 0; used entries are published and the guest notified
 * once per batch.
 *
 * RX (ferry -> guest): this is the stack's FramePort. `reserve` takes one
 * chain (or, with MRG_RXBUF, as many as the frame needs) and returns the
 * writable space after the header; `reserveAnother` does the same while
 * earlier reservations stay open (up to RX_RESERVATIONS), so the stack can
 * fill many frames with one socket call; `commit` writes the oldest open
 * frame's header and pushes its used entries; `flush` publishes and
 * notifies once per batch.
 *
 * Chains the guest got wrong are returned with length 0, counted by reason
 * and logged (rate-limited); nothing the guest writes can make this throw.
 */
import { type CounterBlock, defineCounter } from '../sys/counters';
import { rateLimited } from '../sys/log';
import type { FramePort, FrameSink, OffloadInfo } from '../io/frame-io';
import { SegmentList } from '../io/frame-io';
import { VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_MRG_RXBUF, hasFeature } from './features';
import { CHAIN_REJECTIONS, DEFAULT_CHAIN_CAPACITY, DescriptorChain, PopResult, type SplitRing, popResultReason } from './split-ring';
import { VIRTIO_NET_HDR_LENGTH, VirtioNetHeader, emptyOffload, virtioNetHeaderLength } from './virtio-net-header';

/** Direction as virtio names it: 'tx' = guest to ferry, 'rx' = ferry to guest. */
export type FrameDirection = 'tx' | 'rx';

/** Drop reasons of the port itself (chain rejections add popResultReason names). */
export const TX_DROP_WRITABLE = 'writable_in_tx';
export const TX_DROP_SHORT_HEADER = 'short_header';
export const TX_DROP_RUNT = 'runt';
export const TX_DROP_SINK_ERROR = 'sink_error';
export const RX_DROP_READABLE = 'readable_in_rx';
export const RX_DROP_SHORT_BUFFER = 'short_buffer';

/** RX reservations held open at once (a 64 KiB TCP window in MSS-sized frames, and some). */
export const RX_RESERVATIONS = 64;
/** Segment capacity of every reservation but the first (a longer frame just gets a shorter list). */
const EXTRA_RESERVATION_SEGMENTS = 64;

/** Shortest frame passed to the stack: an Ethernet header. */
const MIN_FRAME_LENGTH = 14;

const FRAMES_HELP = 'Ethernet frames carried over virtqueues (tx: from the guest, rx: to the guest)';
const BYTES_HELP = 'Bytes of Ethernet frames carried over virtqueues, without the virtio-net header';
const DROPS_HELP = 'Frames or descriptor chains dropped, by direction and reason';

/** Counter slots, declared at module load so every thread has the same layout. */
export const PORT_COUNTERS = {
  txFrames: defineCounter('ferry_frames_total', FRAMES_HELP, { direction: 'tx' }),
  rxFrames: defineCounter('ferry_frames_total', FRAMES_HELP, { direction: 'rx' }),
  txBytes: defineCounter('ferry_bytes_total', BYTES_HELP, { direction: 'tx' }),
  rxBytes: defineCounter('ferry_bytes_total', BYTES_HELP, { direction: 'rx' }),
};

function dropSlots(direction: FrameDirection, extra: string[]): Map<string, number> {
  const slots = new Map<string, number>();
  for (const reason of [...CHAIN_REJECTIONS.map(popResultReason), ...extra]) {
    slots.set(reason, defineCounter('ferry_drops_total', DROPS_HELP, { direction, reason }));
  }
  return slots;
}

/** Drop counter slot per reason, per direction. */
export const TX_DROP_SLOTS: ReadonlyMap<string, number> = dropSlots('tx', [TX_DROP_WRITABLE, TX_DROP_SHORT_HEADER, TX_DROP_RUNT, TX_DROP_SINK_ERROR]);
export const RX_DROP_SLOTS: ReadonlyMap<string, number> = dropSlots('rx', [RX_DROP_READABLE, RX_DROP_SHORT_BUFFER]);

/** Slot arrays indexed by PopResult, so the hot path does no string lookups. */
function popSlotTable(slots: ReadonlyMap<string, number>): Int32Array {
  const table = new Int32Array(POP_RESULT_COUNT).fill(-1);
  for (const result of CHAIN_REJECTIONS) table[result] = slots.get(popResultReason(result)) as number;
  return table;
}
const POP_RESULT_COUNT = Math.max(...CHAIN_REJECTIONS) + 1;
const TX_POP_SLOTS = popSlotTable(TX_DROP_SLOTS);
const RX_POP_SLOTS = popSlotTable(RX_DROP_SLOTS);

/** Observer of every frame that passes (e.g. a pcap writer); segments are valid only during the call. */
export type FrameTap = (direction: FrameDirection, segments: SegmentList, length: number) => void;

export interface VirtioNetPortOptions {
  rx: SplitRing;
  tx: SplitRing;
  /** Negotiated virtio features (MRG_RXBUF and VERSION_1 shape the header). */
  features: bigint;
  /** Where TX frames go; may be set later through the `sink` property. */
  sink?: FrameSink | null;
  counters: CounterBlock;
  /** Signal the RX queue's call eventfd. */
  notifyRx: () => void;
  /** Signal the TX queue's call eventfd. */
  notifyTx: () => void;
  /** Largest frame (MTU + 14) the stack may build; default 1514. */
  maxFrameLength?: number;
  /** Optional frame tap (pcap). */
  onFrame?: FrameTap | null;
  /** Called once when a ring turns out broken (corrupt avail index), e.g. to signal the err eventfd. */
  onRingBroken?: ((direction: FrameDirection) => void) | null;
  /** Segment capacity per chain and per reserved frame; default 1024 (IOV_MAX). */
  segmentCapacity?: number;
}

/** One queue pair of a virtio-net device as a frame port (RX) and frame source (TX). */
export class VirtioNetPort implements FramePort {
  readonly rx: SplitRing;
  readonly tx: SplitRing;
  sink: FrameSink | null;
  onFrame: FrameTap | null;
  onWritable: (() => void) | null = null;
  readonly maxFrameLength: number;
  /**
   * FramePort: the guest negotiated VIRTIO_NET_F_GUEST_CSUM, so frames may
   * carry VIRTIO_NET_HDR_F_NEEDS_CSUM and a partial checksum.
   */
  checksumOffload: boolean;

  private readonly counters: CounterBlock;
  private readonly notifyRx: () => void;
  private readonly notifyTx: () => void;
  private readonly onRingBroken: ((direction: FrameDirection) => void) | null;
  private mergeable: boolean;
  private header: VirtioNetHeader;

  private readonly txChain: DescriptorChain;
  private readonly txFrame: SegmentList;
  private readonly txOffload: OffloadInfo = emptyOffload();
  private txBrokenReported = false;

  private readonly rxChain: DescriptorChain;
  /** Per reservation: the first header-length bytes of the reserved space (possibly split). */
  private readonly rxHeaders: SegmentList[] = [];
  /** Per reservation: the space after the header, as returned by reserve(). */
  private readonly rxFrames: SegmentList[] = [];
  /** Per reservation: its first chain's index in rxHeads and its chain count. */
  private readonly rxFirstChain = new Uint32Array(RX_RESERVATIONS);
  private readonly rxChainCount = new Uint32Array(RX_RESERVATIONS);
  /** Heads and writable lengths of every chain taken by the open reservations, in pop order. */
  private readonly rxHeads: Uint32Array;
  private readonly rxChainLengths: Float64Array;
  /** Chains taken by this batch of reservations (popped, not yet used or given back). */
  private rxTaken = 0;
  /** Reservations made in this batch; those from rxNext on are open. */
  private rxCount = 0;
  private rxNext = 0;
  private rxStarved = false;
  private rxBrokenReported = false;
  /** Between beginBatch and endBatch: flush() only notes that the RX ring has something to publish. */
  private batching = false;
  private rxFlushHeld = false;

  constructor(options: VirtioNetPortOptions) {
    this.rx = options.rx;
    this.tx = options.tx;
    this.sink = options.sink ?? null;
    this.counters = options.counters;
    this.notifyRx = options.notifyRx;
    this.notifyTx = options.notifyTx;
    this.onFrame = options.onFrame ?? null;
    this.onRingBroken = options.onRingBroken ?? null;
    this.maxFrameLength = options.maxFrameLength ?? 1514;
    this.mergeable = hasFeature(options.features, VIRTIO_NET_F_MRG_RXBUF);
    this.checksumOffload = hasFeature(options.features, VIRTIO_NET_F_GUEST_CSUM);
    this.header = new VirtioNetHeader(virtioNetHeaderLength(options.features));
    const capacity = options.segmentCapacity ?? DEFAULT_CHAIN_CAPACITY;
    this.txChain = new DescriptorChain(capacity);
    this.txFrame = new SegmentList(capacity);
    this.rxChain = new DescriptorChain(capacity);
    for (let i = 0; i < RX_RESERVATIONS; i++) {
      this.rxHeaders.push(new SegmentList(VIRTIO_NET_HDR_LENGTH));
      this.rxFrames.push(new SegmentList(i === 0 ? capacity : Math.min(capacity, EXTRA_RESERVATION_SEGMENTS)));
    }
    this.rxHeads = new Uint32Array(capacity);
    this.rxChainLengths = new Float64Array(capacity);
  }

  /**
   * Take newly negotiated features (SET_FEATURES may come after the port was
   * made, and again on every device start): MRG_RXBUF, the header length and
   * checksumOffload (GUEST_CSUM) follow them. An open RX reservation is
   * given back first, so no frame built for the old features is committed.
   */
  setFeatures(features: bigint): void {
    this.cancel();
    this.mergeable = hasFeature(features, VIRTIO_NET_F_MRG_RXBUF);
    this.checksumOffload = hasFeature(features, VIRTIO_NET_F_GUEST_CSUM);
    const length = virtioNetHeaderLength(features);
    if (length !== this.header.length) this.header = new VirtioNetHeader(length);
  }

  /** Bytes of virtio-net header per frame (12, or 10 for a legacy device). */
  get headerLength(): number {
    return this.header.length;
  }

  // ---------------------------------------------------------------- TX

  /**
   * Handle up to `budget` chains from the TX ring: each frame goes to the
   * sink, each chain back to the guest with length 0; then publish and
   * notify once. Returns true when work may remain (budget used up: call
   * again soon), false when the ring is drained and guest kicks are enabled
   * again (wait for the next kick).
   */
  processTx(budget: number): boolean {
    const ring = this.tx;
    const chain = this.txChain;
    let drained = false;
    const outer = !this.batching;
    if (outer) this.beginBatch();
    try {
      drained = this.popTxChains(ring, chain, budget);
    } finally {
      // Inside an outer batch its end publishes the TX used entries too.
      if (outer) this.endBatch();
    }
    return !drained;
  }

  /** The loop of processTx: true when the ring is drained (or broken). */
  private popTxChains(ring: SplitRing, chain: DescriptorChain, budget: number): boolean {
    let handled = 0;
    ring.disableNotifications();
    // Bounded by budget; the Empty retry happens only when enableNotifications found new chains.
    while (handled < budget) {
      const result = ring.popChain(chain);
      if (result === PopResult.Empty) {
        if (ring.enableNotifications()) {
          ring.disableNotifications();
          continue;
        }
        return true;
      }
      if (result === PopResult.RingBroken) {
        this.reportBroken('tx');
        return true;
      }
      handled++;
      this.txBrokenReported = false;
      if (result !== PopResult.Ok) {
        this.dropTx(TX_POP_SLOTS[result], popResultReason(result), chain.head);
        continue;
      }
      this.forwardTxChain(chain);
    }
    return false;
  }

  /**
   * From here to endBatch (a batch of ready fds, or one processTx), flush()
   * publishes nothing: the guest gets one RX notification for the whole
   * batch, whichever flows and kicks produced frames in it.
   */
  beginBatch(): void {
    this.batching = true;
  }

  /** The end of a batch: publish TX and RX used entries, each ring notified once if the guest asks. */
  endBatch(): void {
    this.batching = false;
    this.flushTx();
    if (this.rxFlushHeld) {
      this.rxFlushHeld = false;
      this.flush();
    }
  }

  /** Publish TX used entries and notify the guest if it asked for it. */
  private flushTx(): void {
    if (this.tx.pendingUsedCount === 0) return;
    this.tx.publishUsed();
    if (this.tx.needsNotify()) this.notifyTx();
  }

  private forwardTxChain(chain: DescriptorChain): void {
    if (chain.writable.count > 0) return this.dropTx(TX_DROP_SLOTS.get(TX_DROP_WRITABLE) as number, TX_DROP_WRITABLE, chain.head);
    const readable = chain.readable;
    if (this.header.read(readable, this.txOffload) < 0) {
      return this.dropTx(TX_DROP_SLOTS.get(TX_DROP_SHORT_HEADER) as number, TX_DROP_SHORT_HEADER, chain.head);
    }
    const frame = this.txFrame;
    skipInto(readable, this.header.length, frame);
    const length = frame.totalLength;
    if (length < MIN_FRAME_LENGTH) return this.dropTx(TX_DROP_SLOTS.get(TX_DROP_RUNT) as number, TX_DROP_RUNT, chain.head);
    this.counters.add(PORT_COUNTERS.txFrames);
    this.counters.add(PORT_COUNTERS.txBytes, length);
    if (this.onFrame !== null) this.onFrame('tx', frame, length);
    const sink = this.sink;
    if (sink !== null) {
      try {
        sink.receiveFrame(frame, this.txOffload);
      } catch (e) {
        this.counters.add(TX_DROP_SLOTS.get(TX_DROP_SINK_ERROR) as number);
        rateLimited('error', 'virtio-net tx sink_error', () => `virtio-net: frame handler threw: ${String(e)}`);
      }
    }
    this.tx.pushUsed(chain.head, 0);
  }

  private dropTx(slot: number, reason: string, head: number): void {
    this.counters.add(slot);
    rateLimited('warn', `virtio-net tx ${reason}`, () => `virtio-net: dropped guest TX chain (head ${head}): ${reason}`);
    this.tx.pushUsed(head, 0);
  }

  // ---------------------------------------------------------------- RX

  /**
   * Reserve space for a frame of up to maxLength bytes (FramePort), giving
   * back any open reservation first. Without MRG_RXBUF one chain is taken;
   * with it, chains until the frame fits (a shorter list when the guest
   * runs out). Returns null when the guest has no buffers; onWritable fires
   * after its next RX kick.
   */
  reserve(maxLength: number): SegmentList | null {
    this.cancel();
    return this.reserveAnother(maxLength);
  }

  /**
   * Reserve one more frame while the open ones stay (FramePort). Null when
   * the guest has no more buffers, RX_RESERVATIONS are open, or the next
   * chain is one to drop (it is dropped by the next reserve(), so that
   * cancel can still rewind the taken chains as one contiguous run).
   */
  reserveAnother(maxLength: number): SegmentList | null {
    if (this.rxNext === this.rxCount) {
      this.rxCount = 0;
      this.rxNext = 0;
      this.rxTaken = 0;
    }
    const slot = this.rxCount;
    if (slot >= RX_RESERVATIONS) return null;
    const ring = this.rx;
    const chain = this.rxChain;
    const headerLength = this.header.length;
    const header = this.rxHeaders[slot];
    const frame = this.rxFrames[slot];
    const capacity = this.rxHeads.length;
    const othersOpen = slot > 0;
    const wanted = Math.max(0, maxLength);
    header.clear();
    frame.clear();
    const first = this.rxTaken;
    let taken = 0;
    let retriedAfterEnable = false;
    // Bounded: each pass consumes an avail entry (at most ring size of them) or ends the loop.
    for (let passes = 0; passes <= ring.size + 1; passes++) {
      if (taken > 0 && (!this.mergeable || frame.totalLength >= wanted)) break;
      if (this.rxTaken >= capacity) break;
      const result = ring.popChain(chain);
      if (result === PopResult.Empty || result === PopResult.RingBroken) {
        if (result === PopResult.RingBroken) this.reportBroken('rx');
        if (taken > 0) break;
        if (result === PopResult.Empty && !retriedAfterEnable && ring.enableNotifications()) {
          // The guest added buffers while we looked: go on without its kick.
          ring.disableNotifications();
          retriedAfterEnable = true;
          continue;
        }
        this.rxStarved = true;
        if (!othersOpen) this.flush(); // publish any chains dropped above
        return null;
      }
      this.rxBrokenReported = false;
      const reason = this.rxChainProblem(result, chain, taken);
      if (reason !== null) {
        if (taken > 0 || othersOpen) {
          // Keep the taken chains contiguous so cancel/commit can rewind: deal with this one next time.
          ring.unpop(1);
          break;
        }
        this.dropRx(reason, result, chain.head);
        continue;
      }
      if (frame.count + chain.writable.count > frame.capacity) {
        ring.unpop(1);
        break;
      }
      this.takeRxChain(chain, header, frame, headerLength, wanted);
      taken++;
    }
    if (taken === 0) {
      if (!othersOpen) this.flush();
      return null;
    }
    this.rxFirstChain[slot] = first;
    this.rxChainCount[slot] = taken;
    this.rxCount = slot + 1;
    if (this.rxStarved) {
      // Buffers came back without a kick reaching rxKicked() first (e.g. found
      // by the re-check after enabling notifications). Whoever was told "no
      // buffers" earlier is waiting for onWritable: wake it soon, outside this call.
      this.rxStarved = false;
      this.scheduleWritable();
    }
    return frame;
  }

  /** Why an RX chain cannot be used, or null when it can. */
  private rxChainProblem(result: PopResult, chain: DescriptorChain, taken: number): string | null {
    if (result !== PopResult.Ok) return popResultReason(result);
    if (chain.readable.count > 0) return RX_DROP_READABLE;
    const needed = taken === 0 ? this.header.length + 1 : 1;
    if (chain.writable.totalLength < needed) return RX_DROP_SHORT_BUFFER;
    return null;
  }

  /** Append a chain's writable space: header bytes first, the rest (up to `wanted` frame bytes) to the frame list. */
  private takeRxChain(chain: DescriptorChain, header: SegmentList, frame: SegmentList, headerLength: number, wanted: number): void {
    const writable = chain.writable;
    for (let i = 0; i < writable.count; i++) {
      const buffer = writable.buffers[i];
      let offset = writable.offsets[i];
      let length = writable.lengths[i];
      const headerMissing = headerLength - header.totalLength;
      if (headerMissing > 0) {
        const n = Math.min(length, headerMissing);
        header.push(buffer, offset, n);
        offset += n;
        length -= n;
      }
      const room = wanted - frame.totalLength;
      if (length > 0 && room > 0) frame.push(buffer, offset, Math.min(length, room));
    }
    this.rxHeads[this.rxTaken] = chain.head;
    this.rxChainLengths[this.rxTaken] = writable.totalLength;
    this.rxTaken++;
  }

  private dropRx(reason: string, result: PopResult, head: number): void {
    const slot = result === PopResult.Ok ? (RX_DROP_SLOTS.get(reason) as number) : RX_POP_SLOTS[result];
    this.counters.add(slot);
    rateLimited('warn', `virtio-net rx ${reason}`, () => `virtio-net: dropped guest RX chain (head ${head}): ${reason}`);
    this.rx.pushUsed(head, 0);
  }

  /**
   * Publish the oldest open reservation (FramePort): write the virtio-net
   * header with num_buffers, push one used entry per buffer filled and give
   * back the chains the frame did not need (with the later reservations,
   * which then are cancelled: only the last chains taken can be rewound).
   * `length` is clamped to the reserved space.
   */
  commit(length: number, offload?: OffloadInfo): void {
    const slot = this.rxNext;
    if (slot >= this.rxCount) return;
    this.rxNext = slot + 1;
    const frame = this.rxFrames[slot];
    const first = this.rxFirstChain[slot];
    const taken = this.rxChainCount[slot];
    const frameLength = Math.min(Math.max(0, length), frame.totalLength);
    let remaining = this.header.length + frameLength;
    let buffers = 0;
    while (buffers < taken && remaining > 0) {
      remaining -= Math.min(this.rxChainLengths[first + buffers], remaining);
      buffers++;
    }
    if (buffers < taken) {
      this.rx.unpop(this.rxTaken - (first + buffers));
      this.rxTaken = first + buffers;
      this.rxCount = this.rxNext;
    }
    this.header.write(this.rxHeaders[slot], offload, buffers);
    remaining = this.header.length + frameLength;
    for (let i = 0; i < buffers; i++) {
      const n = Math.min(this.rxChainLengths[first + i], remaining);
      this.rx.pushUsed(this.rxHeads[first + i], n);
      remaining -= n;
    }
    this.counters.add(PORT_COUNTERS.rxFrames);
    this.counters.add(PORT_COUNTERS.rxBytes, frameLength);
    if (this.onFrame !== null) this.onFrame('rx', frame, frameLength);
  }

  /** Give every open reservation back (FramePort): their chains will be taken again by the next reserve. */
  cancel(): void {
    if (this.rxNext < this.rxCount) this.rx.unpop(this.rxTaken - this.rxFirstChain[this.rxNext]);
    this.rxCount = 0;
    this.rxNext = 0;
    this.rxTaken = 0;
  }

  /** Publish committed frames and notify the guest once if it wants it (FramePort). */
  flush(): void {
    if (this.batching) {
      this.rxFlushHeld = true;
      return;
    }
    this.publishRx();
  }

  private publishRx(): void {
    if (this.rx.pendingUsedCount === 0) return;
    this.rx.publishUsed();
    if (this.rx.needsNotify()) this.notifyRx();
  }

  /**
   * The owner saw the guest kick the RX queue. If reserve() had found the
   * ring empty, stop asking for kicks and tell the stack it can write again.
   */
  rxKicked(): void {
    this.rx.disableNotifications();
    if (!this.rxStarved) return;
    this.rxStarved = false;
    if (this.onWritable !== null) this.onWritable();
  }

  /**
   * Before the rings stop (GET_VRING_BASE) or the port is dropped: give back
   * an open RX reservation and publish every pending used entry (notifying
   * the guest), so lastAvailIdx counts exactly the chains the guest got back.
   */
  quiesce(): void {
    this.cancel();
    this.rxFlushHeld = false;
    this.publishRx();
    this.flushTx();
  }

  /**
   * The guest is gone (disconnect, RESET_OWNER): give back an open
   * reservation and forget what this guest's rings told us (starved,
   * broken), so the next guest starts from a clean port.
   */
  forgetGuest(): void {
    this.cancel();
    this.rxStarved = false;
    this.txBrokenReported = false;
    this.rxBrokenReported = false;
  }

  /** The end of the port: forgetGuest, and drop the sink, the tap and the writable listener. */
  dispose(): void {
    this.forgetGuest();
    this.sink = null;
    this.onFrame = null;
    this.onWritable = null;
  }

  private writableScheduled = false;

  /** Call onWritable once from the event loop (never re-entrantly from reserve). */
  private scheduleWritable(): void {
    if (this.writableScheduled) return;
    this.writableScheduled = true;
    setImmediate(() => {
      this.writableScheduled = false;
      if (this.onWritable !== null) this.onWritable();
    });
  }

  /** True while the stack is waiting for RX buffers. */
  get rxWaiting(): boolean {
    return this.rxStarved;
  }

  /** Log and report a corrupt ring once (a ring that is merely not configured yet is not reported). */
  private reportBroken(direction: FrameDirection): void {
    const ring = direction === 'tx' ? this.tx : this.rx;
    if (!ring.isBroken) return;
    if (direction === 'tx' ? this.txBrokenReported : this.rxBrokenReported) return;
    if (direction === 'tx') this.txBrokenReported = true;
    else this.rxBrokenReported = true;
    rateLimited('error', `virtio-net ${direction} ring_broken`, () => `virtio-net: guest ${direction.toUpperCase()} ring is corrupt (avail index ran ahead); ring stopped`);
    if (this.onRingBroken !== null) this.onRingBroken(direction);
  }
}

/** Fill `out` with the ranges of `list` after its first `skip` bytes (no copy). */
function skipInto(list: SegmentList, skip: number, out: SegmentList): void {
  out.clear();
  let toSkip = skip;
  for (let i = 0; i < list.count; i++) {
    const length = list.lengths[i];
    if (toSkip >= length) {
      toSkip -= length;
      continue;
    }
    out.push(list.buffers[i], list.offsets[i] + toSkip, length - toSkip);
    toSkip = 0;
  }
}
