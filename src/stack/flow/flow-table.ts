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
 *
 * Every kind of flow lives here, as passt's one `union flow` table: the
 * stack's TCP, UDP and ICMP echo, and pasta's loopback relays (FlowKind).
 * The `protocol` byte of a slot is its kind; kinds that are IP protocols
 * keep their protocol number. Each kind's own data stays in arrays the
 * kind's module owns, indexed by the same flow id.
 *
 * Floods: buckets are chosen by SipHash-1-3 under a random per-table key,
 * so a peer cannot aim its keys at one chain; flows opened from the network
 * are bounded per source address (allocateInbound, MAX_FLOWS_PER_SOURCE);
 * and a full table evicts a half-open or idle flow through its kind's
 * evictor (registerEvictor), preferring flows opened from the network, so
 * a flood can neither grow the table nor lock the guest out of new flows.
 */
import { randomBytes } from 'crypto';
import { type CounterBlock, defineCounter } from '../../sys/counters';
import { type SipHashKey, sipHash13Words, sipHashKey } from './siphash';

/** IP protocol numbers used as flow protocols. */
export const FlowProtocol = {
  Icmp: 1,
  Tcp: 6,
  Udp: 17,
  Icmpv6: 58,
} as const;

/**
 * Kinds of flow (the `protocol` byte of a slot): the IP protocols the stack
 * translates, and pasta's loopback relays, which never become frames.
 * Numbers 250 and up are no IP protocol ferry handles.
 */
export const FlowKind = {
  ...FlowProtocol,
  /** A TCP connection joined to another by splice(2) (pasta -T, and -t from the host's loopback). */
  TcpSplice: 250,
  /** A namespace client's UDP datagrams relayed to the host's loopback (pasta -U). */
  UdpForward: 251,
} as const;

/**
 * Flows one remote address may hold open that the network opened (inbound
 * -t/-u flows, host-loopback splices), so that one peer cannot take the
 * whole table. Counted in buckets of a keyed hash: sources that share a
 * bucket share the bound, and a peer cannot choose whom it shares with.
 */
export const MAX_FLOWS_PER_SOURCE = 256;

/** Slots a full table looks at for a flow to evict (bounded work per allocation). */
export const EVICTION_SCAN = 128;

/**
 * A flow without traffic for this long may be evicted when the table is
 * full, whatever its kind's state (evictors use it; passt's idle timeouts
 * are longer, but they do not face a full table).
 */
export const EVICTABLE_IDLE_MS = 10_000;

/**
 * A flow opened in the current run of the event loop (before the
 * microtasks that follow it) is offered for eviction only once it is this
 * old: a kind may hold the id of a flow it opened earlier in the same batch
 * (UDP's receive backlog does), and a flood must not recycle it under it.
 * Flows from earlier runs may go at once, so a flood that keeps the table
 * full of new flows still cannot lock the guest out.
 */
export const EVICTION_MIN_AGE_MS = 50;

/**
 * Of the flows opened in the current run, those among the last this many
 * allocations are the ones protected by EVICTION_MIN_AGE_MS: a kind holds
 * at most one receive batch of ids (UDP: BATCH_SLOTS, 32), so older ones
 * may go, and a flood that renews the whole table within one run still
 * leaves the guest something to evict.
 */
export const EVICTION_RECENT_GUARD = 64;

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

/**
 * How a kind frees a slot when the table is full: offered flow `id` (one of
 * its own), it returns false to keep it, or closes it (its sockets, its
 * per-flow data, a reset to the guest if it must) and calls
 * FlowTable.release(id) before returning true. Only half-open flows (never
 * answered by the side that did not open them) and flows idle for
 * EVICTABLE_IDLE_MS should be given up. Called from allocate(), so it must
 * not allocate flows itself.
 *
 * TCP and UDP register theirs in their service's constructor, e.g. UDP
 * (whose deadline is the last datagram's time plus udpIdleMs):
 *   this.flows.registerEvictor(FlowProtocol.Udp, (id, now) => {
 *     if (!this.flows.halfOpenOrIdle(id, now, this.ctx.config.udpIdleMs)) return false;
 *     this.closeFlow(id);
 *     return true;
 *   });
 */
export type FlowEvictor = (id: number, now: number) => boolean;

const FLOWS_HELP = 'Flows currently open, by protocol and state';
const EVICTED_HELP = 'Flows evicted to make room in a full flow table, by protocol';
const SOURCE_HELP = 'Flows from the network refused because their source address had MAX_FLOWS_PER_SOURCE open, by protocol';
const OPENED_HELP = 'Flows opened, by protocol';
const REFUSED_HELP = 'Flows refused because the flow table was full (--max-flows), by protocol';

/** Gauge slots per protocol number: stateSlots[protocol][state]. */
const stateSlots: (number[] | undefined)[] = [];
const stateNames: (readonly string[] | undefined)[] = [];
const openedSlots: number[] = [];
const refusedSlots: number[] = [];
const evictedSlots: number[] = [];
const sourceLimitedSlots: number[] = [];
const kindLabels: (string | undefined)[] = [];

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
  evictedSlots[protocol] = defineCounter('ferry_flows_evicted_total', EVICTED_HELP, { protocol: label });
  sourceLimitedSlots[protocol] = defineCounter('ferry_flows_source_limited_total', SOURCE_HELP, { protocol: label });
  kindLabels[protocol] = label;
}

/** The state names declared for a protocol (empty when none). */
export function flowStateNames(protocol: number): readonly string[] {
  return stateNames[protocol] ?? [];
}

/** The name a kind was declared with (defineFlowStates), e.g. "tcp" or "tcp-splice"; its number when undeclared. */
export function flowKindName(kind: number): string {
  return kindLabels[kind] ?? String(kind);
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
  /** The flow's kind (FlowKind; the IP protocol for tcp, udp, icmp and icmpv6). */
  protocol: number;
  /** flowKindName(protocol). */
  kind: string;
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

/** 32-bit words of a flow key as hashed: the ports, kind and family, the two addresses. */
const KEY_WORDS = 2 + 2 * 4;

/** An address's bytes [at, at+4) as one word (any fixed packing will do: it is only hashed). */
function addressWord(bytes: Uint8Array, at: number): number {
  return (bytes[at] << 24) | (bytes[at + 1] << 16) | (bytes[at + 2] << 8) | bytes[at + 3];
}

/**
 * Write a flow key into `out` (KEY_WORDS long) and return its length in
 * words: the hash covers exactly the fields lookup() compares.
 */
function writeKey(out: Int32Array, protocol: number, family: number, guest: Uint8Array, guestOffset: number, guestPort: number, remote: Uint8Array, remoteOffset: number, remotePort: number): number {
  out[0] = (guestPort << 16) | remotePort;
  out[1] = protocol | (family << 8);
  if (family !== 6) {
    out[2] = addressWord(guest, guestOffset);
    out[3] = addressWord(remote, remoteOffset);
    return 4;
  }
  for (let i = 0; i < 4; i++) {
    out[2 + i] = addressWord(guest, guestOffset + 4 * i);
    out[6 + i] = addressWord(remote, remoteOffset + 4 * i);
  }
  return KEY_WORDS;
}

/** The key the static FlowTable.hash uses (tables use their own random one). */
const FIXED_KEY = sipHashKey(Uint8Array.from({ length: 16 }, (_, i) => i));
const fixedKeyScratch = new Int32Array(KEY_WORDS);

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
  /** Flows evicted so far (evictOne), for tests and logs. */
  evictions = 0;

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
  /** Each kind's way of giving up a flow for room (registerEvictor). */
  private readonly evictors: (FlowEvictor | undefined)[] = [];
  /** The secret bucket hash key of this table. */
  private readonly key: SipHashKey;
  private readonly keyScratch = new Int32Array(KEY_WORDS);
  /** Inbound flows open per source bucket (a keyed hash of the remote address). */
  private readonly perSource: Int32Array;
  private readonly sourceMask: number;
  /** The source bucket each inbound flow is counted in, or -1. */
  private readonly sourceOf: Int32Array;
  /** Where the next eviction scan starts (round robin, so no slot is always first). */
  private evictCursor = 0;
  /** Eviction candidates of the current scan, by preference (see evictOne). */
  private readonly candidates = new Int32Array(EVICTION_SCAN);
  /** Evicting now: a kind's evictor must not recurse into another eviction. */
  private evicting = false;
  /** Runs of the event loop that allocated (advanced by a microtask after each), and each flow's. */
  private generation = 0;
  private readonly openedGeneration: Float64Array;
  /** Allocations so far, and the count at each flow's (for EVICTION_RECENT_GUARD). */
  private allocations = 0;
  private readonly openedSequence: Float64Array;
  /** The latest time an allocation was asked for (the clock `full` evicts by). */
  private lastNow = 0;
  private generationEnding = false;
  private readonly endGeneration = (): void => {
    this.generation++;
    this.generationEnding = false;
  };

  constructor(capacity: number, private readonly counters: CounterBlock | null = null, secret: Uint8Array = randomBytes(16)) {
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
    this.key = sipHashKey(secret);
    const sourceBuckets = nextPowerOfTwo(capacity);
    this.perSource = new Int32Array(sourceBuckets);
    this.sourceMask = sourceBuckets - 1;
    this.sourceOf = new Int32Array(capacity).fill(-1);
    this.openedGeneration = new Float64Array(capacity);
    this.openedSequence = new Float64Array(capacity);
  }

  /** Alias of `protocol`: the kind of each slot (FlowKind). */
  get kind(): Uint8Array {
    return this.protocol;
  }

  /** Set how flows of `kind` give up their slot when the table is full (one evictor per kind; see FlowEvictor). */
  registerEvictor(kind: number, evictor: FlowEvictor): void {
    this.evictors[kind] = evictor;
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

  /**
   * True when no flow can be allocated: the table is full and no flow could
   * be evicted to make room (a full table tries evictOne, at the time of
   * the latest allocation, so callers that check before opening a socket
   * get the same room allocate() would make).
   */
  get full(): boolean {
    return this.freeCount === 0 && !this.evictOne(this.lastNow);
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
    const words = writeKey(fixedKeyScratch, protocol, family, guest, guestOffset, guestPort, remote, remoteOffset, remotePort);
    return sipHash13Words(FIXED_KEY, fixedKeyScratch, words);
  }

  /** The hash of a flow key under this table's secret key (what its buckets use). */
  keyedHash(protocol: number, family: number, guest: Uint8Array, guestOffset: number, guestPort: number, remote: Uint8Array, remoteOffset: number, remotePort: number): number {
    const words = writeKey(this.keyScratch, protocol, family, guest, guestOffset, guestPort, remote, remoteOffset, remotePort);
    return sipHash13Words(this.key, this.keyScratch, words);
  }

  /** The bucket of this key (for tests of the spread over buckets). */
  bucketOf(protocol: number, family: number, guest: Uint8Array, guestOffset: number, guestPort: number, remote: Uint8Array, remoteOffset: number, remotePort: number): number {
    return this.keyedHash(protocol, family, guest, guestOffset, guestPort, remote, remoteOffset, remotePort) & this.bucketMask;
  }

  /** The flow with this key, or NO_FLOW. */
  lookup(protocol: number, family: number, guest: Uint8Array, guestOffset: number, guestPort: number, remote: Uint8Array, remoteOffset: number, remotePort: number): number {
    if (this.count === 0) return NO_FLOW;
    const h = this.keyedHash(protocol, family, guest, guestOffset, guestPort, remote, remoteOffset, remotePort);
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
   * A full table first evicts a half-open or idle flow (evictOne); returns
   * the new id, or NO_FLOW when none could go (counted as refused). The
   * caller checks with lookup() first: duplicates are not detected.
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
    if (now > this.lastNow) this.lastNow = now;
    if (this.freeCount === 0 && !this.evictOne(now)) {
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
    this.sourceOf[id] = -1;
    this.openedGeneration[id] = this.generation;
    this.openedSequence[id] = ++this.allocations;
    if (!this.generationEnding) {
      this.generationEnding = true;
      queueMicrotask(this.endGeneration);
    }
    const h = this.keyedHash(protocol, family, guest, guestOffset, guestPort, remote, remoteOffset, remotePort);
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

  /**
   * Record that the host side opened flow id (an inbound forward): listed
   * as such, counted against its remote address's MAX_FLOWS_PER_SOURCE,
   * and preferred for eviction (over the guest's own flows) when the table
   * is full.
   */
  markInbound(id: number): void {
    if (id < 0 || id >= this.capacity || this.family[id] === 0 || this.inbound[id] === 1) return;
    this.inbound[id] = 1;
    const bucket = this.sourceBucket(this.family[id], this.remoteAddress, id * ADDRESS_SLOT);
    this.sourceOf[id] = bucket;
    this.perSource[bucket]++;
  }

  /**
   * allocate() for a flow the network opens (remote is its source): refused
   * (NO_FLOW, counted) when that source already holds MAX_FLOWS_PER_SOURCE
   * flows, else allocated and marked inbound.
   */
  allocateInbound(
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
    if (this.inboundFrom(family, remote, remoteOffset) >= MAX_FLOWS_PER_SOURCE) {
      const slot = sourceLimitedSlots[protocol];
      if (this.counters !== null && slot !== undefined) this.counters.add(slot);
      return NO_FLOW;
    }
    const id = this.allocate(protocol, family, guest, guestOffset, guestPort, remote, remoteOffset, remotePort, state, now);
    if (id !== NO_FLOW) this.markInbound(id);
    return id;
  }

  /** Inbound flows counted against the source address remote[offset...] (its bucket's count). */
  inboundFrom(family: number, remote: Uint8Array, offset: number): number {
    return this.perSource[this.sourceBucket(family, remote, offset)];
  }

  /**
   * Make room in a full table: look at up to EVICTION_SCAN slots from a
   * rotating cursor and offer them to their kind's evictor, flows from
   * sources over MAX_FLOWS_PER_SOURCE first, then other inbound flows, then
   * the guest's own, none opened in this run of the event loop unless it is
   * EVICTION_MIN_AGE_MS old. Returns true
   * when a slot was freed. Bounded: at most EVICTION_SCAN evictor calls.
   */
  evictOne(now: number): boolean {
    if (this.evicting || this.count === 0) return false;
    this.evicting = true;
    try {
      const scan = Math.min(EVICTION_SCAN, this.capacity);
      const candidates = this.candidates;
      // One pass over the window per tier keeps the candidates in preference order.
      let found = 0;
      for (let tier = 0; tier < 3 && found < scan; tier++) {
        for (let step = 0; step < scan; step++) {
          const id = (this.evictCursor + step) % this.capacity;
          if (this.family[id] === 0 || this.evictors[this.protocol[id]] === undefined || this.tierOf(id) !== tier) continue;
          if (this.protectedNow(id, now)) continue;
          candidates[found++] = id;
        }
      }
      this.evictCursor = (this.evictCursor + scan) % this.capacity;
      for (let i = 0; i < found; i++) {
        const id = candidates[i];
        const kind = this.protocol[id];
        const evictor = this.evictors[kind];
        if (this.family[id] === 0 || evictor === undefined || !evictor(id, now)) continue;
        if (this.family[id] !== 0) this.release(id); // the evictor said yes but kept the slot
        this.evictions++;
        const slot = evictedSlots[kind];
        if (this.counters !== null && slot !== undefined) this.counters.add(slot);
        return true;
      }
      return false;
    } finally {
      this.evicting = false;
    }
  }

  /**
   * The usual eviction rule for a kind whose `deadline` is its last
   * activity plus `idleMs`: true when the flow is half-open (the side that
   * did not open it never sent a byte) or idle for EVICTABLE_IDLE_MS.
   */
  halfOpenOrIdle(id: number, now: number, idleMs: number): boolean {
    const answered = this.inbound[id] === 1 ? this.bytesFromGuest[id] : this.bytesToGuest[id];
    if (answered === 0) return true;
    const lastActive = this.deadline[id] === Infinity ? this.openedAt[id] : this.deadline[id] - idleMs;
    return now - lastActive >= EVICTABLE_IDLE_MS;
  }

  /** True while a kind may still hold flow id's number from this run's batch (see EVICTION_MIN_AGE_MS). */
  private protectedNow(id: number, now: number): boolean {
    return this.openedGeneration[id] === this.generation && this.allocations - this.openedSequence[id] < EVICTION_RECENT_GUARD && now - this.openedAt[id] < EVICTION_MIN_AGE_MS;
  }

  /** Eviction preference of a flow in use: 0 from a source over its bound, 1 other inbound, 2 the guest's. */
  private tierOf(id: number): number {
    if (this.inbound[id] === 0) return 2;
    const bucket = this.sourceOf[id];
    return bucket >= 0 && this.perSource[bucket] > MAX_FLOWS_PER_SOURCE ? 0 : 1;
  }

  private sourceBucket(family: number, address: Uint8Array, offset: number): number {
    const words = family === 6 ? 4 : 1;
    const key = this.keyScratch;
    key[0] = family;
    for (let i = 0; i < words; i++) key[1 + i] = addressWord(address, offset + 4 * i);
    return sipHash13Words(this.key, key, 1 + words) & this.sourceMask;
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
    const source = this.sourceOf[id];
    if (source >= 0) this.perSource[source]--;
    this.sourceOf[id] = -1;
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
        kind: flowKindName(protocol),
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
