/**
 * Fault injection for tests only: a middleware between a frontend and the
 * stack that drops, duplicates and reorders frames at the virtqueue
 * boundary, in both directions, so tests can show that TCP (and anything
 * else) still delivers every byte intact over a lossy, unruly link.
 *
 * Turned on by the environment variable FERRY_TEST_FAULTS (deliberately not a
 * command line option: it never shows in --help and no configuration file or
 * libvirt XML can turn it on by accident), read by each queue-pair worker:
 *
 *   FERRY_TEST_FAULTS='drop=0.02,dup=0.01,reorder=0.02,seed=7' ferry ...
 *
 * drop/dup/reorder are per-frame probabilities (0..1, summing to at most 1),
 * applied independently to each direction; seed makes a run repeatable
 * (default 1). Every frame draws one number: below drop it is lost, below
 * drop+dup it is delivered twice, below drop+dup+reorder it is held back
 * and delivered after the next frame (or at the next tick, 100 ms at most).
 *
 * Guest to stack (FrameSink): a frame is a view into guest memory valid only
 * during receiveFrame, so a held-back or second copy is copied into a small
 * bounded pool first; with the pool exhausted (or a frame larger than a pool
 * buffer) the frame passes untouched and is counted as `skipped`.
 * Stack to guest (FramePort): a drop cancels the reservation (the guest gets
 * its buffer back unused); a duplicate or held-back frame is copied out of
 * the reservation before it is committed or cancelled, and written into a
 * fresh reservation later (lost, and counted, if the guest has no buffer).
 *
 * The counts are logged (info) by tick() whenever they changed, at most
 * every LOG_INTERVAL_MS, as one line starting "test-faults:" that e2e tests
 * read from ferry's log.
 */
import type { FramePort, FrameSink, OffloadInfo } from '../../../io/frame-io';
import { SegmentList } from '../../../io/frame-io';
import { log } from '../../../sys/log';

/** The environment variable that turns fault injection on. */
export const FAULTS_ENV = 'FERRY_TEST_FAULTS';

/** Per-frame fault probabilities and the random seed. */
export interface FaultSpec {
  drop: number;
  duplicate: number;
  reorder: number;
  seed: number;
}

/** Frames copied at once per direction (held back or duplicated). */
const POOL_BUFFERS = 16;
/** Largest frame a pool buffer holds: a 64 KiB GSO frame with its headers. */
const POOL_BUFFER_BYTES = 65536 + 512;
/** At most one summary line this often. */
const LOG_INTERVAL_MS = 1000;

/**
 * Parse "drop=P,dup=P,reorder=P,seed=N" (any subset, any order). Throws an
 * Error naming the bad part on unknown keys, values outside 0..1 or a sum
 * above 1.
 */
export function parseFaultSpec(text: string): FaultSpec {
  const spec: FaultSpec = { drop: 0, duplicate: 0, reorder: 0, seed: 1 };
  for (const part of text.split(',')) {
    const item = part.trim();
    if (item === '') continue;
    const m = /^(drop|dup|duplicate|reorder|seed)=([0-9.eE+-]+)$/.exec(item);
    if (m === null) throw new Error(`${FAULTS_ENV}: '${item}' is not drop=P, dup=P, reorder=P or seed=N`);
    const value = Number(m[2]);
    if (m[1] === 'seed') {
      if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) throw new Error(`${FAULTS_ENV}: seed must be an integer 0..2^32-1`);
      spec.seed = value;
      continue;
    }
    if (!Number.isFinite(value) || value < 0 || value > 1) throw new Error(`${FAULTS_ENV}: ${m[1]} must be a probability 0..1`);
    if (m[1] === 'drop') spec.drop = value;
    else if (m[1] === 'reorder') spec.reorder = value;
    else spec.duplicate = value;
  }
  if (spec.drop + spec.duplicate + spec.reorder > 1) throw new Error(`${FAULTS_ENV}: drop + dup + reorder must not exceed 1`);
  return spec;
}

/** The spec in the environment, or null when FERRY_TEST_FAULTS is unset or empty. Throws when it is malformed. */
export function faultSpecFromEnvironment(env: NodeJS.ProcessEnv = process.env): FaultSpec | null {
  const text = env[FAULTS_ENV];
  if (text === undefined || text.trim() === '') return null;
  return parseFaultSpec(text);
}

/** What was done to the frames of one direction. */
export class FaultCounts {
  frames = 0;
  dropped = 0;
  duplicated = 0;
  reordered = 0;
  /** Faults not applied: no pool buffer free, or a frame too large to copy. */
  skipped = 0;
  /** Copies that could not be delivered later (no guest RX buffer). */
  lost = 0;

  /** "frames F dropped D duplicated U reordered R skipped S lost L". */
  toString(): string {
    return `frames ${this.frames} dropped ${this.dropped} duplicated ${this.duplicated} reordered ${this.reordered} skipped ${this.skipped} lost ${this.lost}`;
  }
}

/** A seeded 32-bit generator (mulberry32): repeatable runs, numbers in [0, 1). */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A copied frame waiting to be delivered. */
interface HeldFrame {
  buffer: Uint8Array;
  length: number;
  offload: OffloadInfo;
  hasOffload: boolean;
}

/** A bounded set of frame copies. */
class FramePool {
  private readonly free: Uint8Array[] = [];

  constructor(count: number, readonly bufferBytes: number) {
    for (let i = 0; i < count; i++) this.free.push(new Uint8Array(bufferBytes));
  }

  /** A buffer for a frame of `length` bytes, or null when none is free or it does not fit. */
  take(length: number): Uint8Array | null {
    if (length > this.bufferBytes) return null;
    return this.free.pop() ?? null;
  }

  give(buffer: Uint8Array): void {
    this.free.push(buffer);
  }
}

const enum Fault {
  None,
  Drop,
  Duplicate,
  Reorder,
}

function copyOffload(from: OffloadInfo | undefined, to: OffloadInfo): boolean {
  if (from === undefined) return false;
  to.flags = from.flags;
  to.gsoType = from.gsoType;
  to.hdrLen = from.hdrLen;
  to.gsoSize = from.gsoSize;
  to.csumStart = from.csumStart;
  to.csumOffset = from.csumOffset;
  return true;
}

function emptyOffload(): OffloadInfo {
  return { flags: 0, gsoType: 0, hdrLen: 0, gsoSize: 0, csumStart: 0, csumOffset: 0 };
}

/**
 * The middleware: `port` wraps the frontend's FramePort for the stack (stack
 * to guest), `sink(stack)` wraps the stack for the frontend (guest to
 * stack). Call tick() periodically so held-back frames never wait long.
 */
export class FaultInjector {
  /** Guest to stack. */
  readonly toStack = new FaultCounts();
  /** Stack to guest. */
  readonly toGuest = new FaultCounts();
  /** The FramePort to give the stack. */
  readonly port: FramePort;

  private readonly random: () => number;
  private readonly txPool: FramePool;
  private readonly rxPool: FramePool;
  private readonly heldToStack: HeldFrame[] = [];
  private readonly heldToGuest: HeldFrame[] = [];
  private readonly copyList = new SegmentList(1);
  private innerSink: FrameSink | null = null;
  /** The scatter list of the stack's open reservation (its bytes are read before commit for copies). */
  private openReservation: SegmentList | null = null;
  private lastSummary = '';
  private lastLog = 0;

  constructor(readonly spec: FaultSpec, private readonly inner: FramePort, poolBuffers = POOL_BUFFERS, poolBufferBytes = POOL_BUFFER_BYTES) {
    this.random = seededRandom(spec.seed);
    this.txPool = new FramePool(poolBuffers, poolBufferBytes);
    this.rxPool = new FramePool(poolBuffers, poolBufferBytes);
    this.port = this.makePort();
  }

  /** An injector for `inner` when FERRY_TEST_FAULTS is set, else null (logged once when on). */
  static fromEnvironment(inner: FramePort, env: NodeJS.ProcessEnv = process.env): FaultInjector | null {
    const spec = faultSpecFromEnvironment(env);
    if (spec === null) return null;
    log.warn(`test-faults ON (tests only): drop ${spec.drop} dup ${spec.duplicate} reorder ${spec.reorder} seed ${spec.seed}`);
    return new FaultInjector(spec, inner);
  }

  /** Wrap the stack (or any sink) so that guest frames pass through the faults; returns the sink to give the frontend. */
  sink(inner: FrameSink): FrameSink {
    // A new stack (new guest) takes over; frames held for the old one are dropped with it.
    this.innerSink = inner;
    for (const held of this.heldToStack.splice(0)) this.txPool.give(held.buffer);
    return { receiveFrame: (frame, offload) => this.fromGuest(frame, offload) };
  }

  /**
   * The guest is gone: frames held back in either direction belong to it and
   * are dropped (their buffers go back to the pools), so none reaches the next one.
   */
  dropHeld(): void {
    for (const held of this.heldToStack.splice(0)) this.txPool.give(held.buffer);
    for (const held of this.heldToGuest.splice(0)) this.rxPool.give(held.buffer);
    this.openReservation = null;
  }

  /** Deliver every held-back frame (both directions) and log the counts when they changed. */
  tick(now = Date.now()): void {
    // Whatever the stack answered to the released frames, and the released frames to the guest, go out now.
    const released = this.heldToStack.length + this.heldToGuest.length;
    this.releaseToStack();
    this.releaseToGuest();
    if (released > 0) this.inner.flush();
    if (now - this.lastLog >= LOG_INTERVAL_MS) {
      const summary = this.summary();
      if (summary !== this.lastSummary) {
        this.lastSummary = summary;
        this.lastLog = now;
        log.info(summary);
      }
    }
  }

  /** "test-faults: to-stack <counts>; to-guest <counts>". */
  summary(): string {
    return `test-faults: to-stack ${this.toStack.toString()}; to-guest ${this.toGuest.toString()}`;
  }

  private draw(): Fault {
    const r = this.random();
    const spec = this.spec;
    if (r < spec.drop) return Fault.Drop;
    if (r < spec.drop + spec.duplicate) return Fault.Duplicate;
    if (r < spec.drop + spec.duplicate + spec.reorder) return Fault.Reorder;
    return Fault.None;
  }

  // ---- guest to stack ----

  private fromGuest(frame: SegmentList, offload: OffloadInfo): void {
    const sink = this.innerSink;
    if (sink === null) return;
    const counts = this.toStack;
    counts.frames++;
    const fault = this.draw();
    if (fault === Fault.Drop) {
      counts.dropped++;
      return;
    }
    if (fault === Fault.Reorder) {
      const held = this.copyTx(frame, offload);
      if (held !== null) {
        counts.reordered++;
        this.heldToStack.push(held);
        return;
      }
      counts.skipped++;
    }
    // A duplicate is a copy: the original's memory may be reused by the frontend once this call returns.
    const second = fault === Fault.Duplicate ? this.copyTx(frame, offload) : null;
    if (fault === Fault.Duplicate && second === null) counts.skipped++;
    // Frames held before this one go after it.
    const earlier = this.heldToStack.splice(0);
    sink.receiveFrame(frame, offload);
    if (second !== null) {
      counts.duplicated++;
      this.deliverToStack(second);
    }
    for (const held of earlier) this.deliverToStack(held);
  }

  private copyTx(frame: SegmentList, offload: OffloadInfo): HeldFrame | null {
    const length = frame.totalLength;
    const buffer = this.txPool.take(length);
    if (buffer === null) return null;
    frame.copyOut(0, buffer, 0, length);
    const copy = emptyOffload();
    copyOffload(offload, copy);
    return { buffer, length, offload: copy, hasOffload: true };
  }

  private deliverToStack(held: HeldFrame): void {
    const list = this.copyList;
    list.clear();
    list.push(held.buffer, 0, held.length);
    try {
      this.innerSink?.receiveFrame(list, held.offload);
    } finally {
      this.txPool.give(held.buffer);
    }
  }

  private releaseToStack(): void {
    for (const held of this.heldToStack.splice(0)) this.deliverToStack(held);
  }

  // ---- stack to guest ----

  private makePort(): FramePort {
    const inner = this.inner;
    // Reservations pass straight through; commit() is where frames are faulted.
    return {
      reserve: (maxLength: number) => (this.openReservation = inner.reserve(maxLength)),
      commit: (length: number, offload?: OffloadInfo) => this.commitToGuest(length, offload),
      cancel: () => inner.cancel(),
      flush: () => inner.flush(),
      get onWritable() {
        return inner.onWritable;
      },
      set onWritable(handler: (() => void) | null) {
        inner.onWritable = handler;
      },
      get maxFrameLength() {
        return inner.maxFrameLength;
      },
      get checksumOffload() {
        return inner.checksumOffload === true;
      },
    };
  }

  private commitToGuest(length: number, offload?: OffloadInfo): void {
    const inner = this.inner;
    const counts = this.toGuest;
    counts.frames++;
    const fault = this.draw();
    if (fault === Fault.Drop) {
      counts.dropped++;
      inner.cancel();
      return;
    }
    if (fault === Fault.Reorder) {
      const held = this.copyRx(length, offload);
      if (held !== null) {
        counts.reordered++;
        inner.cancel();
        this.heldToGuest.push(held);
        return;
      }
      counts.skipped++;
    }
    const second = fault === Fault.Duplicate ? this.copyRx(length, offload) : null;
    if (fault === Fault.Duplicate && second === null) counts.skipped++;
    inner.commit(length, offload);
    if (second !== null) {
      counts.duplicated++;
      this.deliverToGuest(second);
    }
    this.releaseToGuest();
  }

  /** Copy the open reservation's first `length` bytes; null when no pool buffer is free. */
  private copyRx(length: number, offload?: OffloadInfo): HeldFrame | null {
    const list = this.openReservation;
    if (list === null) return null;
    const buffer = this.rxPool.take(length);
    if (buffer === null) return null;
    list.copyOut(0, buffer, 0, length);
    const copy = emptyOffload();
    const hasOffload = copyOffload(offload, copy);
    return { buffer, length, offload: copy, hasOffload };
  }

  private deliverToGuest(held: HeldFrame): void {
    const inner = this.inner;
    try {
      const list = inner.reserve(held.length);
      if (list === null || list.totalLength < held.length) {
        if (list !== null) inner.cancel();
        this.toGuest.lost++;
        return;
      }
      list.copyIn(0, held.buffer, 0, held.length);
      inner.commit(held.length, held.hasOffload ? held.offload : undefined);
    } finally {
      this.rxPool.give(held.buffer);
    }
  }

  private releaseToGuest(): void {
    for (const held of this.heldToGuest.splice(0)) this.deliverToGuest(held);
  }
}
