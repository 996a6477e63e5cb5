/**
 * The guest's (driver's) side of a split virtqueue, for tests: lays out the
 * descriptor table and the available/used rings in a byte array that stands
 * for guest memory, adds buffer chains (direct or indirect), publishes them,
 * and reads back what the device put in the used ring.
 *
 * Used by the virtqueue unit tests (over a plain ArrayBuffer) and by the
 * vhost-user test front-end (over a memfd mapping shared with the daemon).
 * Everything is little-endian (virtio 1.x). Raw setters let tests build
 * malformed rings on purpose.
 *
 * Typical use:
 *   const arena = new GuestArena(new Uint8Array(1 << 20), 0x10000);
 *   const ring = new SplitRingDriver(arena, 256);
 *   // device side: splitRing.configure(256, ring.descGpa, ring.availGpa, ring.usedGpa, features)
 *   const buf = arena.alloc(1526);
 *   ring.addChain([{ gpa: buf, length: 1526, writable: true }]);
 *   ring.publish();
 *   ... device runs ...
 *   const used = ring.popUsed(); // { id, length } or null
 */

export const DESC_F_NEXT = 1;
export const DESC_F_WRITE = 2;
export const DESC_F_INDIRECT = 4;
/** avail.flags bit: do not interrupt me (without EVENT_IDX). */
export const AVAIL_F_NO_INTERRUPT = 1;
/** used.flags bit: the device asks not to be kicked (without EVENT_IDX). */
export const USED_F_NO_NOTIFY = 1;

/** A bump allocator over "guest memory": a byte array whose first byte is at guest physical address baseGpa. */
export class GuestArena {
  readonly view: DataView;
  private next: number;

  /** `start` is the first array offset handed out (bytes below it are left alone). */
  constructor(readonly memory: Uint8Array, readonly baseGpa = 0, start = 0) {
    this.view = new DataView(memory.buffer, memory.byteOffset, memory.byteLength);
    this.next = start;
  }

  /** Reserve `length` zeroed bytes aligned to `align`; returns their guest address. Throws when full. */
  alloc(length: number, align = 16): number {
    const offset = Math.ceil(this.next / align) * align;
    if (offset + length > this.memory.length) throw new RangeError(`guest arena full: ${length} bytes wanted`);
    this.next = offset + length;
    this.memory.fill(0, offset, offset + length);
    return this.baseGpa + offset;
  }

  /** Array offset of a guest address (throws when outside the arena's memory). */
  offsetOf(gpa: number, length = 0): number {
    const offset = gpa - this.baseGpa;
    if (offset < 0 || offset + length > this.memory.length) throw new RangeError(`gpa 0x${gpa.toString(16)} outside test guest memory`);
    return offset;
  }

  /** A live view of guest bytes [gpa, gpa+length). */
  bytes(gpa: number, length: number): Uint8Array {
    const offset = this.offsetOf(gpa, length);
    return this.memory.subarray(offset, offset + length);
  }

  /** Copy data into guest memory at gpa. */
  write(gpa: number, data: Uint8Array): void {
    this.memory.set(data, this.offsetOf(gpa, data.length));
  }

  /** A copy of guest bytes [gpa, gpa+length). */
  read(gpa: number, length: number): Uint8Array {
    return this.bytes(gpa, length).slice();
  }
}

/** One buffer of a chain as the driver describes it. */
export interface DriverBuffer {
  gpa: number;
  length: number;
  /** Device-writable (RX-like) rather than device-readable (TX-like). */
  writable: boolean;
}

/** An entry the device put in the used ring. */
export interface UsedEntry {
  id: number;
  length: number;
}

/** The driver side of one split ring in a GuestArena. */
export class SplitRingDriver {
  readonly descGpa: number;
  readonly availGpa: number;
  readonly usedGpa: number;
  private readonly free: number[] = [];
  /** Descriptors per head (to free them when the head comes back). */
  private readonly chainDescs = new Map<number, number[]>();
  /** Indirect table per head, reused: [gpa, capacity in descriptors]. */
  private readonly indirectTables = new Map<number, [number, number]>();
  /** avail.idx we will publish next. */
  private shadowAvail = 0;
  /** Next used ring entry to read. */
  private lastUsed = 0;

  /** Allocate and zero the three ring areas for a ring of `size` (a power of two) in `arena`. */
  constructor(readonly arena: GuestArena, readonly size: number) {
    if (size < 1 || size > 32768 || (size & (size - 1)) !== 0) throw new RangeError(`ring size ${size}`);
    this.descGpa = arena.alloc(16 * size, 16);
    this.availGpa = arena.alloc(6 + 2 * size, 2);
    this.usedGpa = arena.alloc(6 + 8 * size, 4);
    for (let i = size - 1; i >= 0; i--) this.free.push(i);
  }

  private get view(): DataView {
    return this.arena.view;
  }

  private at(gpa: number): number {
    return this.arena.offsetOf(gpa);
  }

  /** Free descriptors in the table. */
  get freeCount(): number {
    return this.free.length;
  }

  /** Write descriptor `index` of the table at tableGpa (default: the ring's table). */
  writeDescriptor(index: number, addr: number, length: number, flags: number, next: number, tableGpa = this.descGpa): void {
    const at = this.at(tableGpa + 16 * index);
    this.view.setUint32(at, addr % 0x1_0000_0000, true);
    this.view.setUint32(at + 4, Math.floor(addr / 0x1_0000_0000), true);
    this.view.setUint32(at + 8, length, true);
    this.view.setUint16(at + 12, flags, true);
    this.view.setUint16(at + 14, next, true);
  }

  /**
   * Add a chain (readable buffers should come first) and put its head in the
   * next avail slot; not visible to the device until publish(). With
   * `indirect`, the buffers go into an indirect table and the ring uses one
   * descriptor. Returns the head, or -1 when there are not enough free descriptors.
   */
  addChain(buffers: DriverBuffer[], options: { indirect?: boolean } = {}): number {
    if (buffers.length === 0) throw new RangeError('empty chain');
    if (options.indirect) {
      if (this.free.length < 1) return -1;
      const head = this.free.pop() as number;
      let table = this.indirectTables.get(head);
      if (table === undefined || table[1] < buffers.length) {
        table = [this.arena.alloc(16 * buffers.length, 16), buffers.length];
        this.indirectTables.set(head, table);
      }
      const tableGpa = table[0];
      buffers.forEach((b, i) => {
        const last = i === buffers.length - 1;
        this.writeDescriptor(i, b.gpa, b.length, (b.writable ? DESC_F_WRITE : 0) | (last ? 0 : DESC_F_NEXT), last ? 0 : i + 1, tableGpa);
      });
      this.writeDescriptor(head, table[0], 16 * buffers.length, DESC_F_INDIRECT, 0);
      this.chainDescs.set(head, [head]);
      this.putAvail(head);
      return head;
    }
    if (this.free.length < buffers.length) return -1;
    const indices = buffers.map(() => this.free.pop() as number);
    buffers.forEach((b, i) => {
      const last = i === buffers.length - 1;
      this.writeDescriptor(indices[i], b.gpa, b.length, (b.writable ? DESC_F_WRITE : 0) | (last ? 0 : DESC_F_NEXT), last ? 0 : indices[i + 1]);
    });
    this.chainDescs.set(indices[0], indices);
    this.putAvail(indices[0]);
    return indices[0];
  }

  /** Raw: put `head` in the next avail slot (no descriptor bookkeeping; for malformed-ring tests). */
  putAvail(head: number): void {
    const slot = this.shadowAvail % this.size;
    this.view.setUint16(this.at(this.availGpa + 4 + 2 * slot), head, true);
    this.shadowAvail = (this.shadowAvail + 1) & 0xffff;
  }

  /** Make every chain added so far visible: write avail.idx. */
  publish(): void {
    this.setAvailIdx(this.shadowAvail);
  }

  /** Raw: write avail.idx (also moves where the next putAvail goes). */
  setAvailIdx(idx: number): void {
    this.shadowAvail = idx & 0xffff;
    this.view.setUint16(this.at(this.availGpa + 2), this.shadowAvail, true);
  }

  /** avail.idx as published. */
  get availIdx(): number {
    return this.view.getUint16(this.at(this.availGpa + 2), true);
  }

  /** Write avail.flags (e.g. AVAIL_F_NO_INTERRUPT). */
  setAvailFlags(flags: number): void {
    this.view.setUint16(this.at(this.availGpa), flags, true);
  }

  /** Write used_event (EVENT_IDX: interrupt me when used.idx passes this). */
  setUsedEvent(idx: number): void {
    this.view.setUint16(this.at(this.availGpa + 4 + 2 * this.size), idx & 0xffff, true);
  }

  /** used.idx as the device published it. */
  get usedIdx(): number {
    return this.view.getUint16(this.at(this.usedGpa + 2), true);
  }

  /** used.flags (USED_F_NO_NOTIFY). */
  get usedFlags(): number {
    return this.view.getUint16(this.at(this.usedGpa), true);
  }

  /** avail_event the device wrote (EVENT_IDX: kick me when avail.idx passes this). */
  get availEvent(): number {
    return this.view.getUint16(this.at(this.usedGpa + 4 + 8 * this.size), true);
  }

  /** Would the driver kick now, having moved avail.idx from oldIdx to the current value? (Per the device's flags or avail_event.) */
  shouldKick(oldIdx: number, eventIdx: boolean): boolean {
    const newIdx = this.shadowAvail;
    if (eventIdx) return ((newIdx - this.availEvent - 1) & 0xffff) < ((newIdx - oldIdx) & 0xffff);
    return (this.usedFlags & USED_F_NO_NOTIFY) === 0;
  }

  /** Raw: used ring entry at slot i. */
  usedEntry(slot: number): UsedEntry {
    const at = this.at(this.usedGpa + 4 + 8 * (slot % this.size));
    return { id: this.view.getUint32(at, true), length: this.view.getUint32(at + 4, true) };
  }

  /** Next used entry not read yet (freeing its descriptors), or null. */
  popUsed(): UsedEntry | null {
    if (this.lastUsed === this.usedIdx) return null;
    const entry = this.usedEntry(this.lastUsed);
    this.lastUsed = (this.lastUsed + 1) & 0xffff;
    const descs = this.chainDescs.get(entry.id);
    if (descs !== undefined) {
      this.chainDescs.delete(entry.id);
      for (const d of descs) this.free.push(d);
    }
    return entry;
  }

  /** All used entries not read yet. */
  drainUsed(): UsedEntry[] {
    const out: UsedEntry[] = [];
    for (let e = this.popUsed(); e !== null && out.length <= this.size; e = this.popUsed()) out.push(e);
    return out;
  }
}
