/**
 * The per-worker flow table shared by TCP, UDP and ICMP: fixed-capacity
 * parallel arrays indexed by flow id, a numeric hash of (protocol, family,
 * guest address and port, remote address and port) with chained buckets to
 * find a flow from a guest packet, a free list, per-flow state and timer
 * deadline, and gauges of flows by protocol and state.
 *
 * Addresses are those the guest sees: `remote` is the guest packet's
 * destination (before any mapping to the host's loopback), so lookups from
 * guest packets need no translation. Nothing here allocates per packet; the
 * only Map is fd -> flow id (numeric keys) for socket readiness.
 *
 * Protocol modules register their state names once at module load time with
 * `defineFlowStates` (the counter layout must be fixed before any block is
 * made), then move flows between states with `setState`, which keeps the
 * ferry_flows{protocol,state} gauges exact.
 */
import { type CounterBlock, defineCounter } from '../../sys/counters';

/** IP protocol numbers used as flow protocols. */
export const FlowProtocol = {
  Icmp: 1,
  Tcp: 6,
  Udp: 17,
  Icmpv6: 58,
} as const;

/** Bytes reserved per address in the address arrays (IPv4 uses the first 4). */
export const ADDRESS_SLOT = 16;

/** Returned by lookups and allocation when there is no flow. */
export const NO_FLOW = -1;

/**
 * How the protocol that owns a flow ends it from outside (the control API):
 * through that protocol's own state machine, so both ends learn of it as
 * they would of any other close (TCP: a reset to the guest and the peer).
 */
export type FlowCloser = (id: number) => void;

const FLOWS_HELP = 'Flows currently open, by protocol and state';
const OPENED_HELP = 'Flows opened, by protocol';
const REFUSED_HELP = 'Flows refused because the flow table was full (--max-flows), by protocol';

/** Gauge slots per protocol number: stateSlots[protocol][state]. */
const stateSlots: (number[] | undefined)[] = [];
const stateNames: (readonly string[] | undefined)[] = [];
const openedSlots: number[] = [];
const refusedSlots: number[] = [];

/**
 * Declare the state names of a protocol's flows (index = state number; state
 * 0 is conventionally the first state after allocation). Call once at module
 * load time. Returns nothing; gauges are ferry_flows{protocol=label,state=name}.
 */
export function defineFlowStates(protocol: number, label: string, names: readonly string[]): void {
  stateNames[protocol] = names;
  stateSlots[protocol] = names.map((state) => defineCounter('ferry_flows', FLOWS_HELP, { protocol: label, state }, 'gauge'));
  openedSlots[protocol] = defineCounter('ferry_flows_opened_total', OPENED_HELP, { protocol: label });
  refusedSlots[protocol] = defineCounter('ferry_flows_refused_total', REFUSED_HELP, { protocol: label });
}

/** The state names declared for a protocol (empty when none). */
export function flowStateNames(protocol: number): readonly string[] {
  return stateNames[protocol] ?? [];
}

/**
 * Serial numbers of flows, shared by every table of this thread (a worker
 * builds a new table for each guest): a serial is never reused while the
 * thread lives, so a control client naming a flow that has since closed
 * cannot close a newer one that took its slot.
 */
let lastFlowSerial = 0;

/** One flow as reported to the control API (allocated: not for the hot path). */
export interface FlowInfo {
  id: number;
  /** Unique for this thread's life (see lastFlowSerial), unlike id. */
  serial: number;
  /** Opened from the host side (an inbound forward), not by the guest. */
  inbound: boolean;
  protocol: number;
  family: 4 | 6;
  state: string;
  guestAddress: Uint8Array;
  guestPort: number;
  remoteAddress: Uint8Array;
  remotePort: number;
  /** Payload bytes from the guest to the host socket. */
  bytesFromGuest: number;
  /** Payload bytes from the host socket to the guest. */
  bytesToGuest: number;
  /** Milliseconds since the flow was opened. */
  ageMs: number;
}

/** Smallest power of two >= n (n >= 1). */
function nextPowerOfTwo(n: number): number {
  let p = 1;
  while (p < n) p *= 2;
  return p;
}

/** Mix one 32-bit word into a running hash (murmur3-style round). */
function mix(hash: number, word: number): number {
  let k = Math.imul(word, 0xcc9e2d51);
  k = (k << 15) | (k >>> 17);
  k = Math.imul(k, 0x1b873593);
  hash ^= k;
  hash = (hash << 13) | (hash >>> 19);
  return (Math.imul(hash, 5) + 0xe6546b64) | 0;
}

/** Final avalanche of a hash (murmur3 fmix32). */
function finish(hash: number): number {
  hash ^= hash >>> 16;
  hash = Math.imul(hash, 0x85ebca6b);
  hash ^= hash >>> 13;
  hash = Math.imul(hash, 0xc2b2ae35);
  hash ^= hash >>> 16;
  return hash >>> 0;
}

/** Hash of address bytes[offset, offset+length) (length 4 or 16) into hash. */
function mixAddress(hash: number, bytes: Uint8Array, offset: number, length: number): number {
  for (let i = 0; i < length; i += 4) {
    hash = mix(hash, (bytes[offset + i] << 24) | (bytes[offset + i + 1] << 16) | (bytes[offset + i + 2] << 8) | bytes[offset + i + 3]);
  }
  return hash;
}

/**
 * Fixed-capacity flow table. Flow ids are 0..capacity-1; a flow is in use
 * when family[id] !== 0. The owning protocol module keeps its own per-flow
 * arrays indexed by the same ids.
 */
export class FlowTable {
  readonly capacity: number;
  /** 0 = free, else 4 or 6. */
  readonly family: Uint8Array;
  readonly protocol: Uint8Array;
  /** Protocol-specific state number (see defineFlowStates). */
  readonly state: Uint8Array;
  readonly guestAddress: Uint8Array;
  readonly remoteAddress: Uint8Array;
  readonly guestPort: Uint16Array;
  readonly remotePort: Uint16Array;
  /** Host socket of the flow, or -1. */
  readonly fd: Int32Array;
  /** When the flow's timer fires (ms, clock of the stack), or Infinity. */
  readonly deadline: Float64Array;
  readonly openedAt: Float64Array;
  readonly bytesFromGuest: Float64Array;
  readonly bytesToGuest: Float64Array;
  /** Serial number of the flow in each slot (see lastFlowSerial). */
  readonly serial: Float64Array;
  /** 1 when the host side opened the flow (markInbound), else 0. */
  readonly inbound: Uint8Array;
  /** Flows in use. */
  count = 0;

  private readonly buckets: Int32Array;
  private readonly bucketMask: number;
  private readonly next: Int32Array;
  private readonly hashOf: Uint32Array;
  private readonly freeList: Int32Array;
  private freeCount: number;
  private readonly byFd = new Map<number, number>();
  /** Flows per protocol, for quick checks. */
  private readonly perProtocol = new Int32Array(256);
  /** Each protocol's way of ending one of its flows (registerCloser). */
  private readonly closers: (FlowCloser | undefined)[] = [];

  constructor(capacity: number, private readonly counters: CounterBlock | null = null) {
    if (!Number.isInteger(capacity) || capacity < 1 || capacity > 1 << 22) throw new RangeError(`flow table capacity ${capacity} out of range`);
    this.capacity = capacity;
    this.family = new Uint8Array(capacity);
    this.protocol = new Uint8Array(capacity);
    this.state = new Uint8Array(capacity);
    this.guestAddress = new Uint8Array(capacity * ADDRESS_SLOT);
    this.remoteAddress = new Uint8Array(capacity * ADDRESS_SLOT);
    this.guestPort = new Uint16Array(capacity);
    this.remotePort = new Uint16Array(capacity);
    this.fd = new Int32Array(capacity).fill(-1);
    this.deadline = new Float64Array(capacity).fill(Infinity);
    this.openedAt = new Float64Array(capacity);
    this.bytesFromGuest = new Float64Array(capacity);
    this.bytesToGuest = new Float64Array(capacity);
    this.serial = new Float64Array(capacity);
    this.inbound = new Uint8Array(capacity);
    const bucketCount = nextPowerOfTwo(capacity * 2);
    this.buckets = new Int32Array(bucketCount).fill(NO_FLOW);
    this.bucketMask = bucketCount - 1;
    this.next = new Int32Array(capacity).fill(NO_FLOW);
    this.hashOf = new Uint32Array(capacity);
    this.freeList = new Int32Array(capacity);
    // Lowest ids first, so a fresh table hands out 0, 1, 2...
    for (let i = 0; i < capacity; i++) this.freeList[i] = capacity - 1 - i;
    this.freeCount = capacity;
  }

  /** Set how flows of `protocol` are ended from outside (one closer per protocol: the module that owns them). */
  registerCloser(protocol: number, closer: FlowCloser): void {
    this.closers[protocol] = closer;
  }

  /** End flow `id` through its protocol's closer; false when the slot is free or its protocol has none. */
  closeFlow(id: number): boolean {
    if (id < 0 || id >= this.capacity || this.family[id] === 0) return false;
    const closer = this.closers[this.protocol[id]];
    if (closer === undefined) return false;
    closer(id);
    return true;
  }

  /** True when no flow can be allocated. */
  get full(): boolean {
    return this.freeCount === 0;
  }

  /** Flows of one protocol in use. */
  countOf(protocol: number): number {
    return this.perProtocol[protocol];
  }

  /**
   * The hash of a flow key: addresses are bytes at the given offsets (4
   * bytes for family 4, 16 for family 6).
   */
  static hash(protocol: number, family: number, guest: Uint8Array, guestOffset: number, guestPort: number, remote: Uint8Array, remoteOffset: number, remotePort: number): number {
    const length = family === 6 ? 16 : 4;
    let h = mix(0x9e3779b9, (protocol << 8) | family);
    h = mixAddress(h, guest, guestOffset, length);
    h = mixAddress(h, remote, remoteOffset, length);
    h = mix(h, (guestPort << 16) | remotePort);
    return finish(h);
  }

  /** The flow with this key, or NO_FLOW. */
  lookup(protocol: number, family: number, guest: Uint8Array, guestOffset: number, guestPort: number, remote: Uint8Array, remoteOffset: number, remotePort: number): number {
    if (this.count === 0) return NO_FLOW;
    const h = FlowTable.hash(protocol, family, guest, guestOffset, guestPort, remote, remoteOffset, remotePort);
    const length = family === 6 ? 16 : 4;
    // The chain is bounded by the capacity (each flow is on one chain once).
    let id = this.buckets[h & this.bucketMask];
    for (let steps = 0; id !== NO_FLOW && steps < this.capacity; steps++) {
      if (
        this.hashOf[id] === h &&
        this.protocol[id] === protocol &&
        this.family[id] === family &&
        this.guestPort[id] === guestPort &&
        this.remotePort[id] === remotePort &&
        equalAt(this.guestAddress, id * ADDRESS_SLOT, guest, guestOffset, length) &&
        equalAt(this.remoteAddress, id * ADDRESS_SLOT, remote, remoteOffset, length)
      ) {
        return id;
      }
      id = this.next[id];
    }
    return NO_FLOW;
  }

  /**
   * Allocate a flow with this key in state `state`, opened at `now`.
   * Returns its id, or NO_FLOW when the table is full (counted as refused).
   * The caller checks with lookup() first: duplicates are not detected.
   */
  allocate(
    protocol: number,
    family: 4 | 6,
    guest: Uint8Array,
    guestOffset: number,
    guestPort: number,
    remote: Uint8Array,
    remoteOffset: number,
    remotePort: number,
    state: number,
    now: number,
  ): number {
    if (this.freeCount === 0) {
      this.countRefused(protocol);
      return NO_FLOW;
    }
    const id = this.freeList[--this.freeCount];
    const length = family === 6 ? 16 : 4;
    const base = id * ADDRESS_SLOT;
    this.guestAddress.fill(0, base, base + ADDRESS_SLOT);
    this.remoteAddress.fill(0, base, base + ADDRESS_SLOT);
    for (let i = 0; i < length; i++) {
      this.guestAddress[base + i] = guest[guestOffset + i];
      this.remoteAddress[base + i] = remote[remoteOffset + i];
    }
    this.family[id] = family;
    this.protocol[id] = protocol;
    this.state[id] = state;
    this.guestPort[id] = guestPort;
    this.remotePort[id] = remotePort;
    this.fd[id] = -1;
    this.deadline[id] = Infinity;
    this.openedAt[id] = now;
    this.bytesFromGuest[id] = 0;
    this.bytesToGuest[id] = 0;
    this.serial[id] = ++lastFlowSerial;
    this.inbound[id] = 0;
    const h = FlowTable.hash(protocol, family, guest, guestOffset, guestPort, remote, remoteOffset, remotePort);
    this.hashOf[id] = h;
    const bucket = h & this.bucketMask;
    this.next[id] = this.buckets[bucket];
    this.buckets[bucket] = id;
    this.count++;
    this.perProtocol[protocol]++;
    this.gauge(protocol, state, 1);
    const opened = openedSlots[protocol];
    if (this.counters !== null && opened !== undefined) this.counters.add(opened);
    return id;
  }

  /** Record that the host side opened flow id (an inbound forward), for the control API. */
  markInbound(id: number): void {
    if (id >= 0 && id < this.capacity && this.family[id] !== 0) this.inbound[id] = 1;
  }

  /** The flow in use with this serial number, or NO_FLOW (a scan: control API only). */
  findSerial(serial: number): number {
    if (this.count === 0) return NO_FLOW;
    for (let id = 0; id < this.capacity; id++) if (this.family[id] !== 0 && this.serial[id] === serial) return id;
    return NO_FLOW;
  }

  /** Count a flow refused for lack of room (also done by allocate()). */
  countRefused(protocol: number): void {
    const slot = refusedSlots[protocol];
    if (this.counters !== null && slot !== undefined) this.counters.add(slot);
  }

  /** Move a flow to another state (updates the gauges). */
  setState(id: number, state: number): void {
    const old = this.state[id];
    if (old === state || this.family[id] === 0) return;
    const protocol = this.protocol[id];
    this.gauge(protocol, old, -1);
    this.gauge(protocol, state, 1);
    this.state[id] = state;
  }

  /** Remember fd as the flow's socket (for flowOfFd). */
  setFd(id: number, fd: number): void {
    const old = this.fd[id];
    if (old >= 0) this.byFd.delete(old);
    this.fd[id] = fd;
    if (fd >= 0) this.byFd.set(fd, id);
  }

  /** The flow owning socket fd, or NO_FLOW. */
  flowOfFd(fd: number): number {
    const id = this.byFd.get(fd);
    return id === undefined ? NO_FLOW : id;
  }

  /** Free a flow (its fd mapping too; closing the socket is the caller's job). */
  release(id: number): void {
    if (id < 0 || id >= this.capacity || this.family[id] === 0) return;
    const bucket = this.hashOf[id] & this.bucketMask;
    let at = this.buckets[bucket];
    if (at === id) {
      this.buckets[bucket] = this.next[id];
    } else {
      for (let steps = 0; at !== NO_FLOW && steps < this.capacity; steps++) {
        if (this.next[at] === id) {
          this.next[at] = this.next[id];
          break;
        }
        at = this.next[at];
      }
    }
    this.next[id] = NO_FLOW;
    const protocol = this.protocol[id];
    this.gauge(protocol, this.state[id], -1);
    this.perProtocol[protocol]--;
    if (this.fd[id] >= 0) this.byFd.delete(this.fd[id]);
    this.fd[id] = -1;
    this.family[id] = 0;
    this.deadline[id] = Infinity;
    this.freeList[this.freeCount++] = id;
    this.count--;
  }

  /** True when id is a flow in use of the given protocol. */
  isLive(id: number, protocol: number): boolean {
    return id >= 0 && id < this.capacity && this.family[id] !== 0 && this.protocol[id] === protocol;
  }

  /**
   * Call fn(id) for every flow in use (of `protocol`, or all when -1) whose
   * deadline is at or before now. fn may release the flow.
   */
  forEachDue(now: number, protocol: number, fn: (id: number) => void): void {
    if (this.count === 0) return;
    for (let id = 0; id < this.capacity; id++) {
      if (this.family[id] === 0 || this.deadline[id] > now) continue;
      if (protocol >= 0 && this.protocol[id] !== protocol) continue;
      fn(id);
    }
  }

  /** Every flow in use, for the control API (allocates). */
  *flows(now: number): IterableIterator<FlowInfo> {
    for (let id = 0; id < this.capacity; id++) {
      const family = this.family[id];
      if (family === 0) continue;
      const length = family === 6 ? 16 : 4;
      const base = id * ADDRESS_SLOT;
      const protocol = this.protocol[id];
      yield {
        id,
        serial: this.serial[id],
        inbound: this.inbound[id] === 1,
        protocol,
        family: family as 4 | 6,
        state: flowStateNames(protocol)[this.state[id]] ?? String(this.state[id]),
        guestAddress: this.guestAddress.slice(base, base + length),
        guestPort: this.guestPort[id],
        remoteAddress: this.remoteAddress.slice(base, base + length),
        remotePort: this.remotePort[id],
        bytesFromGuest: this.bytesFromGuest[id],
        bytesToGuest: this.bytesToGuest[id],
        ageMs: now - this.openedAt[id],
      };
    }
  }

  private gauge(protocol: number, state: number, delta: number): void {
    const slots = stateSlots[protocol];
    if (this.counters === null || slots === undefined || state >= slots.length) return;
    this.counters.add(slots[state], delta);
  }
}

function equalAt(a: Uint8Array, aOffset: number, b: Uint8Array, bOffset: number, length: number): boolean {
  for (let i = 0; i < length; i++) if (a[aOffset + i] !== b[bOffset + i]) return false;
  return true;
}
