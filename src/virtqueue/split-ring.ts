/**
 * The device side of one split virtqueue (virtio 1.x, 2.7): reads descriptor
 * chains the guest made available and hands back used entries.
 *
 * Everything in the ring is written by an untrusted guest, concurrently with
 * us. Each index and address is therefore read once, checked, and only then
 * used; a malformed chain yields a reason code and consumes its head (the
 * caller returns it with length 0 and counts the drop) so a bad entry can
 * never make us loop or crash. An avail index that runs more than the ring
 * size ahead of us means the ring itself is corrupt: the ring is marked
 * broken and stops until it is configured again.
 *
 * The views over the three ring areas are set up once in `configure`; pop
 * and push allocate nothing.
 */
import { SegmentList } from '../io/frame-io';
import { type GuestMemory, MAX_GUEST_ADDRESS } from './guest-memory';
import { VIRTIO_F_NOTIFY_ON_EMPTY, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, hasFeature } from './features';

// Descriptor flags (2.7.5).
export const VIRTQ_DESC_F_NEXT = 1;
export const VIRTQ_DESC_F_WRITE = 2;
export const VIRTQ_DESC_F_INDIRECT = 4;
/** avail.flags: the driver asks us not to interrupt it (without EVENT_IDX). */
export const VIRTQ_AVAIL_F_NO_INTERRUPT = 1;
/** used.flags: we ask the driver not to kick us (without EVENT_IDX). */
export const VIRTQ_USED_F_NO_NOTIFY = 1;

/** Size of one descriptor (addr u64, len u32, flags u16, next u16). */
export const DESCRIPTOR_SIZE = 16;
/** Largest ring size the split layout allows. */
export const MAX_QUEUE_SIZE = 32768;
/** Default bound on the bytes one chain may describe (readable + writable). */
export const DEFAULT_MAX_CHAIN_BYTES = 4 * 1024 * 1024;
/** Default segment capacity of a DescriptorChain's lists (IOV_MAX). */
export const DEFAULT_CHAIN_CAPACITY = 1024;

/** Bytes of the descriptor table, available ring and used ring for a ring of `size`. */
export function splitRingAreaSizes(size: number): { desc: number; avail: number; used: number } {
  // avail and used carry the EVENT_IDX word (used_event / avail_event) at their end.
  return { desc: DESCRIPTOR_SIZE * size, avail: 6 + 2 * size, used: 6 + 8 * size };
}

/**
 * The outcome of `popChain`. Ok: a chain was read. Empty: nothing available.
 * RingBroken: the ring is unusable (not configured, or corrupt avail index);
 * nothing was consumed. Every other value rejects a malformed chain whose
 * head was consumed: return `chain.head` with length 0.
 */
export enum PopResult {
  Ok = 0,
  Empty,
  RingBroken,
  /** The avail ring named a head index >= queue size. */
  HeadOutOfRange,
  /** A descriptor's `next` is >= queue size. */
  NextOutOfRange,
  /** A buffer (addr, len) is not entirely inside guest memory. */
  BufferOutOfMemory,
  /** The chain revisits a descriptor. */
  Loop,
  /** More descriptors than the queue size, more bytes than the bound, or more segments than the chain holds. */
  ChainTooLong,
  /** A device-readable descriptor after a device-writable one. */
  ReadableAfterWritable,
  /** INDIRECT used but VIRTIO_RING_F_INDIRECT_DESC not negotiated. */
  IndirectNotNegotiated,
  /** Indirect table length 0 or not a multiple of 16. */
  IndirectBadLength,
  /** Indirect table outside guest memory (or not contiguous in one mapping chunk). */
  IndirectOutOfMemory,
  /** INDIRECT flag inside an indirect table. */
  NestedIndirect,
  /** INDIRECT together with NEXT (forbidden by 2.7.5.3.1). */
  IndirectWithNext,
  /** A `next` inside an indirect table points beyond the table. */
  IndirectNextOutOfRange,
}

const POP_RESULT_REASONS: readonly string[] = [
  'ok', 'empty', 'ring_broken', 'head_out_of_range', 'next_out_of_range', 'buffer_out_of_memory',
  'loop', 'chain_too_long', 'readable_after_writable', 'indirect_not_negotiated', 'indirect_bad_length',
  'indirect_out_of_memory', 'nested_indirect', 'indirect_with_next', 'indirect_next_out_of_range',
];

/** snake_case name of a PopResult, for counter labels and logs. */
export function popResultReason(result: PopResult): string {
  return POP_RESULT_REASONS[result] ?? 'unknown';
}

/** Every PopResult that rejects a chain (for declaring counters up front). */
export const CHAIN_REJECTIONS: readonly PopResult[] = [
  PopResult.HeadOutOfRange, PopResult.NextOutOfRange, PopResult.BufferOutOfMemory, PopResult.Loop,
  PopResult.ChainTooLong, PopResult.ReadableAfterWritable, PopResult.IndirectNotNegotiated,
  PopResult.IndirectBadLength, PopResult.IndirectOutOfMemory, PopResult.NestedIndirect,
  PopResult.IndirectWithNext, PopResult.IndirectNextOutOfRange,
];

/**
 * One popped descriptor chain: its head index and its buffers as views into
 * guest memory, device-readable ones first. Allocate once and reuse.
 */
export class DescriptorChain {
  /** Head descriptor index (what goes back in the used ring). */
  head = 0;
  /** Descriptors walked (direct and indirect, excluding the indirect-table descriptor itself). */
  descriptorCount = 0;
  readonly readable: SegmentList;
  readonly writable: SegmentList;

  constructor(capacity = DEFAULT_CHAIN_CAPACITY) {
    this.readable = new SegmentList(capacity);
    this.writable = new SegmentList(capacity);
  }

  /** Forget the previous chain. */
  clear(): void {
    this.head = 0;
    this.descriptorCount = 0;
    this.readable.clear();
    this.writable.clear();
  }
}

/** Options for a SplitRing. */
export interface SplitRingOptions {
  /**
   * A full memory barrier. Defaults to the addon's `native.fence()`, or, when
   * the addon lacks it, an Atomics operation on a SharedArrayBuffer (a locked
   * instruction on x86 and a dmb on arm64).
   */
  fence?: () => void;
  /** Bound on readable + writable bytes of one chain. */
  maxChainBytes?: number;
}

let sharedFenceWord: Int32Array | null = null;

/** A full barrier without the addon: V8 emits a sequentially consistent RMW for Atomics on shared memory. */
function atomicsFence(): void {
  if (sharedFenceWord === null) sharedFenceWord = new Int32Array(new SharedArrayBuffer(4));
  Atomics.add(sharedFenceWord, 0, 0);
}

/** The addon's fence when it exists, else the Atomics fallback. */
export function defaultFence(): () => void {
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports -- loaded lazily: the ring's unit tests run without the addon
    const { native } = require('../sys/native') as typeof import('../sys/native');
    if (typeof native.fence === 'function') return () => native.fence();
  } catch {
    // addon not built: fall through
  }
  return atomicsFence;
}

/**
 * True when `used` written up to newIdx (from old) crosses the guest's
 * event index (virtio 1.x 2.7.10, vring_need_event), in 16-bit arithmetic.
 */
export function vringNeedEvent(eventIdx: number, newIdx: number, oldIdx: number): boolean {
  return ((newIdx - eventIdx - 1) & 0xffff) < ((newIdx - oldIdx) & 0xffff);
}

/** x86 keeps loads ordered with loads and stores with stores; other CPUs need explicit barriers for ring ordering. */
const STRONGLY_ORDERED_CPU = process.arch === 'x64' || process.arch === 'ia32';

/** The device side of one split virtqueue. */
export class SplitRing {
  private memory: GuestMemory | null;
  private readonly fence: () => void;
  private readonly maxChainBytes: number;

  private ready = false;
  private broken = false;
  private queueSize = 0;
  private mask = 0;
  private eventIdx = false;
  private indirect = false;
  private notifyOnEmpty = false;
  private descGpa = 0;
  private availGpa = 0;
  private usedGpa = 0;
  /** The front-end's addresses when configured by configureUserAddresses (re-translated on setMemory), else null. */
  private userAddresses: { desc: number; avail: number; used: number } | null = null;
  private features = 0n;

  private descView: DataView = new DataView(new ArrayBuffer(0));
  private descOffset = 0;
  private availView: DataView = new DataView(new ArrayBuffer(0));
  private availOffset = 0;
  private usedView: DataView = new DataView(new ArrayBuffer(0));
  private usedOffset = 0;

  /** Next avail ring slot to read (free-running u16). */
  private nextAvail = 0;
  /** Last avail.idx read from the guest. */
  private shadowAvail = 0;
  /** used.idx as last published. */
  private usedIdx = 0;
  /** Used entries written but not yet published. */
  private pendingUsed = 0;
  /** used.idx at the last notification decision (EVENT_IDX). */
  private signalledUsed = 0;
  private signalledUsedValid = false;
  /** Something was published since the last notification decision. */
  private unsignalled = false;
  private notificationsEnabled = true;

  constructor(memory: GuestMemory | null = null, options: SplitRingOptions = {}) {
    this.memory = memory;
    this.fence = options.fence ?? defaultFence();
    this.maxChainBytes = options.maxChainBytes ?? DEFAULT_MAX_CHAIN_BYTES;
  }

  /** Queue size (0 when not configured). */
  get size(): number {
    return this.queueSize;
  }

  /** Configured and not broken. */
  get isReady(): boolean {
    return this.ready && !this.broken;
  }

  /** The guest corrupted the avail index; the ring stays stopped until configured again. */
  get isBroken(): boolean {
    return this.broken;
  }

  /** The next avail index to read (GET_VRING_BASE). */
  get lastAvailIdx(): number {
    return this.nextAvail;
  }

  /** Set where reading starts (SET_VRING_BASE, or a rewind after cancel). */
  set lastAvailIdx(value: number) {
    this.nextAvail = value & 0xffff;
    this.shadowAvail = this.nextAvail;
    this.signalledUsedValid = false;
  }

  /** used.idx as last published by us. */
  get lastUsedIdx(): number {
    return this.usedIdx;
  }

  /**
   * Set up the ring: size (power of two, 1..32768) and the guest physical
   * addresses of its three areas, which must be aligned (16/2/4) and each lie
   * within one mapping chunk of guest memory. `features` are the negotiated
   * ones (EVENT_IDX, INDIRECT_DESC, NOTIFY_ON_EMPTY matter here). Keeps
   * lastAvailIdx; takes used.idx from the ring. Returns null on success or a
   * message saying what is wrong (the ring is then not ready).
   */
  configure(size: number, descGpa: number, availGpa: number, usedGpa: number, features: bigint): string | null {
    this.userAddresses = null;
    return this.configureAt(size, descGpa, availGpa, usedGpa, features);
  }

  /**
   * As `configure`, with the ring addresses in the front-end's virtual
   * address space as SET_VRING_ADDR carries them (vhost-user). They are kept
   * and translated again by `setMemory` against the new table, as
   * libvhost-user does: the front-end need not resend SET_VRING_ADDR after
   * SET_MEM_TABLE, and its addresses are the ones vhost-user defines.
   */
  configureUserAddresses(size: number, descUva: number, availUva: number, usedUva: number, features: bigint): string | null {
    const memory = this.memory;
    if (memory === null) return 'no guest memory table';
    const desc = memory.uvaToGpa(descUva);
    const avail = memory.uvaToGpa(availUva);
    const used = memory.uvaToGpa(usedUva);
    if (desc < 0) return 'descriptor table address not in any memory region';
    if (avail < 0) return 'available ring address not in any memory region';
    if (used < 0) return 'used ring address not in any memory region';
    const error = this.configureAt(size, desc, avail, used, features);
    this.userAddresses = { desc: descUva, avail: availUva, used: usedUva };
    return error;
  }

  private configureAt(size: number, descGpa: number, availGpa: number, usedGpa: number, features: bigint): string | null {
    this.ready = false;
    if (!Number.isInteger(size) || size < 1 || size > MAX_QUEUE_SIZE || (size & (size - 1)) !== 0) {
      return `ring size ${size} is not a power of two in 1..${MAX_QUEUE_SIZE}`;
    }
    this.queueSize = size;
    this.mask = size - 1;
    this.descGpa = descGpa;
    this.availGpa = availGpa;
    this.usedGpa = usedGpa;
    this.features = features;
    this.eventIdx = hasFeature(features, VIRTIO_RING_F_EVENT_IDX);
    this.indirect = hasFeature(features, VIRTIO_RING_F_INDIRECT_DESC);
    this.notifyOnEmpty = hasFeature(features, VIRTIO_F_NOTIFY_ON_EMPTY);
    const error = this.resolveAreas();
    if (error !== null) return error;
    this.broken = false;
    this.usedIdx = this.usedView.getUint16(this.usedOffset + 2, true);
    this.pendingUsed = 0;
    this.shadowAvail = this.nextAvail;
    this.signalledUsedValid = false;
    this.unsignalled = false;
    this.notificationsEnabled = true;
    this.ready = true;
    return null;
  }

  /**
   * Switch to a new memory table (SET_MEM_TABLE while configured): the ring
   * areas are looked up again. Returns null, or an error message (the ring is
   * then not ready).
   */
  setMemory(memory: GuestMemory | null): string | null {
    this.memory = memory;
    if (this.queueSize === 0) return null;
    const wasReady = this.ready;
    this.ready = false;
    if (memory === null) return 'no guest memory table';
    const uva = this.userAddresses;
    if (uva !== null) {
      this.descGpa = memory.uvaToGpa(uva.desc);
      this.availGpa = memory.uvaToGpa(uva.avail);
      this.usedGpa = memory.uvaToGpa(uva.used);
      if (this.descGpa < 0 || this.availGpa < 0 || this.usedGpa < 0) return 'ring addresses not in the new memory table';
    }
    const error = this.resolveAreas();
    if (error !== null) return error;
    this.ready = wasReady;
    return null;
  }

  /** Forget the configuration and indices (disconnect, RESET_OWNER). */
  reset(): void {
    this.ready = false;
    this.userAddresses = null;
    this.broken = false;
    this.queueSize = 0;
    this.nextAvail = 0;
    this.shadowAvail = 0;
    this.usedIdx = 0;
    this.pendingUsed = 0;
    this.signalledUsedValid = false;
    this.unsignalled = false;
    this.notificationsEnabled = true;
  }

  private resolveAreas(): string | null {
    const memory = this.memory;
    if (memory === null) return 'no guest memory table';
    const sizes = splitRingAreaSizes(this.queueSize);
    const availBytes = this.eventIdx ? sizes.avail : sizes.avail - 2;
    const usedBytes = this.eventIdx ? sizes.used : sizes.used - 2;
    if (this.descGpa % 16 !== 0) return 'descriptor table not 16-byte aligned';
    if (this.availGpa % 2 !== 0) return 'available ring not 2-byte aligned';
    if (this.usedGpa % 4 !== 0) return 'used ring not 4-byte aligned';
    const desc = memory.contiguous(this.descGpa, sizes.desc);
    if (desc === null) return 'descriptor table not inside guest memory';
    const avail = memory.contiguous(this.availGpa, availBytes);
    if (avail === null) return 'available ring not inside guest memory';
    const used = memory.contiguous(this.usedGpa, usedBytes);
    if (used === null) return 'used ring not inside guest memory';
    this.descView = desc.view;
    this.descOffset = desc.offset;
    this.availView = avail.view;
    this.availOffset = avail.offset;
    this.usedView = used.view;
    this.usedOffset = used.offset;
    return null;
  }

  /**
   * Read the guest's avail.idx and return how many chains are waiting, or -1
   * when the ring is not ready or the index is corrupt (more than the ring
   * size ahead; the ring is then marked broken).
   */
  refreshAvail(): number {
    if (!this.ready || this.broken) return -1;
    const idx = this.availView.getUint16(this.availOffset + 2, true);
    const waiting = (idx - this.nextAvail) & 0xffff;
    if (waiting > this.queueSize) {
      this.broken = true;
      return -1;
    }
    if (idx !== this.shadowAvail && !STRONGLY_ORDERED_CPU) this.fence(); // ring entries after the index
    this.shadowAvail = idx;
    return waiting;
  }

  /**
   * Take the next available chain into `chain` (cleared first). avail.idx is
   * read only when the previously read batch is used up. See PopResult.
   */
  popChain(chain: DescriptorChain): PopResult {
    if (!this.ready || this.broken) return PopResult.RingBroken;
    if (this.nextAvail === this.shadowAvail) {
      const waiting = this.refreshAvail();
      if (waiting < 0) return PopResult.RingBroken;
      if (waiting === 0) return PopResult.Empty;
    }
    const slot = this.nextAvail & this.mask;
    const head = this.availView.getUint16(this.availOffset + 4 + 2 * slot, true);
    this.nextAvail = (this.nextAvail + 1) & 0xffff;
    chain.clear();
    chain.head = head;
    if (head >= this.queueSize) return PopResult.HeadOutOfRange;
    return this.walk(chain, head);
  }

  /** Walk the chain starting at descriptor `head` of the ring's table. */
  private walk(chain: DescriptorChain, head: number): PopResult {
    const memory = this.memory as GuestMemory;
    let view = this.descView;
    let base = this.descOffset;
    let tableSize = this.queueSize;
    let index = head;
    let inIndirect = false;
    let visitedInTable = 0;
    let visitedTotal = 0;
    let seenWritable = false;
    let bytes = 0;
    // Bounded: every pass visits one descriptor; visitedInTable <= tableSize and visitedTotal <= queueSize.
    for (;;) {
      if (++visitedInTable > tableSize) return PopResult.Loop;
      if (++visitedTotal > this.queueSize) return PopResult.ChainTooLong;
      const at = base + index * DESCRIPTOR_SIZE;
      const addrLow = view.getUint32(at, true);
      const addrHigh = view.getUint32(at + 4, true);
      const length = view.getUint32(at + 8, true);
      const flags = view.getUint16(at + 12, true);
      const next = view.getUint16(at + 14, true);
      const addr = addrHigh * 0x1_0000_0000 + addrLow;
      if ((flags & VIRTQ_DESC_F_INDIRECT) !== 0) {
        if (!this.indirect) return PopResult.IndirectNotNegotiated;
        if (inIndirect) return PopResult.NestedIndirect;
        if ((flags & VIRTQ_DESC_F_NEXT) !== 0) return PopResult.IndirectWithNext;
        if (length === 0 || length % DESCRIPTOR_SIZE !== 0) return PopResult.IndirectBadLength;
        if (addr + length > MAX_GUEST_ADDRESS || !memory.locate(addr, length)) return PopResult.IndirectOutOfMemory;
        view = memory.hitView;
        base = memory.hitOffset;
        tableSize = length / DESCRIPTOR_SIZE;
        index = 0;
        inIndirect = true;
        visitedInTable = 0;
        visitedTotal--; // the table descriptor itself is not a buffer
        continue;
      }
      let target: SegmentList;
      if ((flags & VIRTQ_DESC_F_WRITE) !== 0) {
        seenWritable = true;
        target = chain.writable;
      } else {
        if (seenWritable) return PopResult.ReadableAfterWritable;
        target = chain.readable;
      }
      bytes += length;
      if (bytes > this.maxChainBytes) return PopResult.ChainTooLong;
      if (!memory.translate(addr, length, target)) {
        return memory.contains(addr, length) ? PopResult.ChainTooLong : PopResult.BufferOutOfMemory;
      }
      chain.descriptorCount++;
      if ((flags & VIRTQ_DESC_F_NEXT) === 0) return PopResult.Ok;
      if (next >= tableSize) return inIndirect ? PopResult.IndirectNextOutOfRange : PopResult.NextOutOfRange;
      index = next;
    }
  }

  /** Put back the last `count` popped chains (they will be popped again, in order). */
  unpop(count: number): void {
    this.nextAvail = (this.nextAvail - count) & 0xffff;
  }

  /** Chains known to be waiting as of the last read of avail.idx (no new read). */
  get cachedAvailable(): number {
    return (this.shadowAvail - this.nextAvail) & 0xffff;
  }

  /**
   * Write a used entry (head, bytes written) after those already pending;
   * visible to the guest at `publishUsed`. Returns false (writing nothing)
   * when the ring is not configured or a whole ring's worth is already pending.
   */
  pushUsed(head: number, length: number): boolean {
    if (this.queueSize === 0 || this.pendingUsed >= this.queueSize) return false;
    const slot = (this.usedIdx + this.pendingUsed) & this.mask;
    const at = this.usedOffset + 4 + 8 * slot;
    this.usedView.setUint32(at, head, true);
    this.usedView.setUint32(at + 4, length, true);
    this.pendingUsed++;
    return true;
  }

  /** Used entries pushed but not yet published. */
  get pendingUsedCount(): number {
    return this.pendingUsed;
  }

  /** Make the pushed used entries visible: write used.idx after the entries. */
  publishUsed(): void {
    if (this.pendingUsed === 0 || this.queueSize === 0) return;
    if (!STRONGLY_ORDERED_CPU) this.fence(); // entries before the index
    this.usedIdx = (this.usedIdx + this.pendingUsed) & 0xffff;
    this.pendingUsed = 0;
    this.usedView.setUint16(this.usedOffset + 2, this.usedIdx, true);
    this.unsignalled = true;
  }

  /**
   * Whether the guest wants an interrupt for what was published since the
   * last call: honours VIRTQ_AVAIL_F_NO_INTERRUPT, or used_event with
   * EVENT_IDX, and NOTIFY_ON_EMPTY. Fences between our used.idx store and the
   * load of the guest's flags/used_event (else both sides may skip the
   * notification). Returns false when nothing was published since.
   */
  needsNotify(): boolean {
    if (!this.unsignalled || !this.ready) return false;
    this.unsignalled = false;
    this.fence();
    if (this.notifyOnEmpty && this.availView.getUint16(this.availOffset + 2, true) === this.nextAvail) {
      this.signalledUsed = this.usedIdx;
      this.signalledUsedValid = true;
      return true;
    }
    if (this.eventIdx) {
      const old = this.signalledUsed;
      const valid = this.signalledUsedValid;
      this.signalledUsed = this.usedIdx;
      this.signalledUsedValid = true;
      if (!valid) return true;
      const usedEvent = this.availView.getUint16(this.availOffset + 4 + 2 * this.queueSize, true);
      return vringNeedEvent(usedEvent, this.usedIdx, old);
    }
    return (this.availView.getUint16(this.availOffset, true) & VIRTQ_AVAIL_F_NO_INTERRUPT) === 0;
  }

  /**
   * Ask the guest to kick us when it adds buffers (clear NO_NOTIFY, or set
   * avail_event to the next index we will read), then look again: returns
   * true when buffers arrived meanwhile, in which case the caller should
   * keep processing (and may disable notifications again) rather than sleep.
   */
  enableNotifications(): boolean {
    if (!this.ready || this.broken) return false;
    if (this.eventIdx) {
      this.usedView.setUint16(this.usedOffset + 4 + 8 * this.queueSize, this.nextAvail, true);
    } else if (!this.notificationsEnabled) {
      this.usedView.setUint16(this.usedOffset, 0, true);
    }
    this.notificationsEnabled = true;
    this.fence(); // our store above before our load of avail.idx below
    return this.refreshAvail() > 0;
  }

  /**
   * Ask the guest not to kick us while we are processing anyway. Without
   * EVENT_IDX this sets VIRTQ_USED_F_NO_NOTIFY; with EVENT_IDX the guest
   * kicks at most once past the avail_event we last wrote, so nothing is written.
   */
  disableNotifications(): void {
    if (!this.ready || !this.notificationsEnabled) return;
    this.notificationsEnabled = false;
    if (!this.eventIdx) this.usedView.setUint16(this.usedOffset, VIRTQ_USED_F_NO_NOTIFY, true);
  }

  /** The negotiated features the ring was configured with. */
  get negotiatedFeatures(): bigint {
    return this.features;
  }
}
