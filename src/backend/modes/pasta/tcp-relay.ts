/**
 * A pasta TCP relay: a connection accepted on one side joined to one ferry
 * dials on the other, bytes moved with splice(2) through a pipe per
 * direction (or read/write through a buffer with --no-splice), one chunk in
 * flight per direction so a slow reader holds back its writer. Each relay
 * is a tcp-splice flow of the flow table (SpliceFlows).
 */
import type { CounterBlock } from '../../../sys/counters';
import { rateLimited } from '../../../sys/log';
import { native } from '../../../sys/native';
import type { FdWatcher, ReadyHandler } from '../../../stack/context';
import { EVICTABLE_IDLE_MS, FlowKind, type FlowTable, NO_FLOW, defineFlowStates } from '../../../stack/flow/flow-table';

/** Bytes per splice/read call: the default pipe capacity. */
const CHUNK = 65536;
/** Fill/drain rounds per readiness event for one direction (fairness between relays). */
const ROUNDS_PER_EVENT = 16;

/** States of a tcp-splice flow (FlowTable.state). */
export const SpliceState = {
  Connecting: 0,
  Spliced: 1,
  /** One direction has passed its EOF on. */
  HalfClosed: 2,
} as const;
export const SPLICE_STATE_NAMES: readonly string[] = ['connecting', 'spliced', 'half-closed'];
defineFlowStates(FlowKind.TcpSplice, 'tcp-splice', SPLICE_STATE_NAMES);

/** One direction of a relay: src -> (pipe | buffer) -> dst. */
class Direction {
  /** Bytes read from src not yet written to dst. */
  pending = 0;
  private bufferStart = 0;
  eof = false;
  shutDown = false;

  constructor(
    readonly src: number,
    readonly dst: number,
    private readonly pipe: [number, number] | null,
    private readonly buffer: Uint8Array | null,
    private readonly counters: CounterBlock,
    /** Counter ids that every byte written to dst is added to. */
    private readonly byteCounters: readonly number[],
    /** The flow's byte count in the table that every byte written to dst is added to (bytesFromGuest or bytesToGuest). */
    private readonly flowBytes: Float64Array,
    private readonly flowId: number,
  ) {}

  /** Move what can move now (bounded); throws on socket errors. Returns true when any byte moved. */
  pump(): boolean {
    let moved = false;
    for (let round = 0; round < ROUNDS_PER_EVENT; round++) {
      if (this.pending === 0 && !this.eof) {
        const n = this.pipe !== null ? native.splice(this.src, this.pipe[1], CHUNK) : native.read(this.src, this.buffer as Uint8Array, 0, CHUNK);
        if (n === 0) this.eof = true;
        else if (n > 0) {
          this.pending = n;
          this.bufferStart = 0;
        }
      }
      if (this.pending === 0) break;
      const m = this.pipe !== null ? native.splice(this.pipe[0], this.dst, this.pending) : native.write(this.dst, this.buffer as Uint8Array, this.bufferStart, this.pending);
      if (m <= 0) break; // dst full: wait for EPOLLOUT
      this.pending -= m;
      this.bufferStart += m;
      for (const id of this.byteCounters) this.counters.add(id, m);
      this.flowBytes[this.flowId] += m;
      moved = true;
    }
    if (this.eof && this.pending === 0 && !this.shutDown) {
      this.shutDown = true;
      native.shutdown(this.dst, native.constants.SHUT_WR);
    }
    return moved;
  }

  /** True while src should be watched for input. */
  get wantsInput(): boolean {
    return !this.eof && this.pending === 0;
  }

  get done(): boolean {
    return this.shutDown;
  }

  close(): void {
    if (this.pipe !== null) {
      native.close(this.pipe[0]);
      native.close(this.pipe[1]);
    }
  }
}

/** What owns relays: the fd watcher they use, told when one closes. */
export interface RelayOwner {
  readonly watcher: FdWatcher;
  released(relay: TcpRelay): void;
  /**
   * The dial failed before any byte moved: true when the owner took the
   * accepted socket over (it is then neither closed nor watched by the relay).
   */
  dialFailed?(relay: TcpRelay): boolean;
}

/**
 * A connection accepted on one side joined to one ferry dials on the
 * other: -T accepts in the namespace and dials the host's loopback, the -t
 * splice path accepts on the host and dials the namespace's loopback.
 */
export class TcpRelay implements ReadyHandler {
  private connecting = true;
  /** When a byte last moved or the relay was opened (the table's clock). */
  lastActive: number;
  private acceptedHungUp = false;
  private dialedHungUp = false;
  private readonly forward: Direction;
  private readonly backward: Direction;
  private closed = false;

  constructor(
    private readonly owner: RelayOwner,
    /** The accepted (connected) socket. */
    readonly acceptedFd: number,
    /** The socket ferry is connecting (non-blocking connect in progress or done). */
    readonly dialedFd: number,
    splice: boolean,
    counters: CounterBlock,
    byteCounters: readonly number[],
    /** Its tcp-splice flow: the relay moves it through its states and releases it on close. */
    private readonly flows: SpliceFlows,
    readonly flowId: number,
    /** The accepted socket is the namespace's side (-T), so its bytes count as from the guest; else the dialed one is (-t). */
    acceptedIsNamespace: boolean,
  ) {
    const table = flows.table;
    const pipe = (): [number, number] | null => (splice ? native.pipe() : null);
    const buffer = (): Uint8Array | null => (splice ? null : new Uint8Array(CHUNK));
    const forwardBytes = acceptedIsNamespace ? table.bytesFromGuest : table.bytesToGuest;
    const backwardBytes = acceptedIsNamespace ? table.bytesToGuest : table.bytesFromGuest;
    this.forward = new Direction(acceptedFd, dialedFd, pipe(), buffer(), counters, byteCounters, forwardBytes, flowId);
    this.backward = new Direction(dialedFd, acceptedFd, pipe(), buffer(), counters, byteCounters, backwardBytes, flowId);
    this.lastActive = flows.now();
    flows.attach(flowId, this);
  }

  /** Still waiting for the dial to complete (a half-open flow, for eviction). */
  get isConnecting(): boolean {
    return this.connecting;
  }

  onReady(fd: number, events: number): void {
    if (this.closed) return;
    const c = native.constants;
    try {
      if (this.connecting) {
        if (fd !== this.dialedFd) {
          if ((events & (c.EPOLLERR | c.EPOLLHUP)) !== 0) this.close();
          return;
        }
        const error = native.getsockoptInt(this.dialedFd, c.SOL_SOCKET, c.SO_ERROR);
        if (error !== 0) {
          if (this.owner.dialFailed !== undefined) return this.giveBack();
          throw new Error(`connect to the other loopback failed (errno ${error})`);
        }
        this.connecting = false;
        this.flows.table.setState(this.flowId, SpliceState.Spliced);
      }
      if ((events & c.EPOLLERR) !== 0) throw new Error('socket error');
      // A hung-up socket is reported on every wait, whatever we ask for: remember it, so it is
      // left out of epoll while its data waits for the other side (see updateInterest).
      if ((events & c.EPOLLHUP) !== 0) {
        if (fd === this.acceptedFd) this.acceptedHungUp = true;
        else this.dialedHungUp = true;
      }
      const moved = this.forward.pump();
      if (this.backward.pump() || moved) this.lastActive = this.flows.now();
      if (this.forward.done && this.backward.done) return this.close();
      if (this.forward.done || this.backward.done) this.flows.table.setState(this.flowId, SpliceState.HalfClosed);
      this.updateInterest();
    } catch (e) {
      rateLimited('debug', 'pasta tcp relay', () => `pasta: relayed connection closed: ${(e as Error).message}`);
      this.close();
    }
  }

  /** Watch each socket for what its directions need now (level-triggered). */
  updateInterest(): void {
    const c = native.constants;
    const watcher = this.owner.watcher;
    if (this.connecting) {
      watcher.watch(this.dialedFd, c.EPOLLOUT, this);
      watcher.watch(this.acceptedFd, 0, this);
      return;
    }
    const acceptedEvents = (this.forward.wantsInput ? c.EPOLLIN | c.EPOLLRDHUP : 0) | (this.backward.pending > 0 ? c.EPOLLOUT : 0);
    const dialedEvents = (this.backward.wantsInput ? c.EPOLLIN | c.EPOLLRDHUP : 0) | (this.forward.pending > 0 ? c.EPOLLOUT : 0);
    this.setInterest(this.acceptedFd, acceptedEvents, this.acceptedHungUp);
    this.setInterest(this.dialedFd, dialedEvents, this.dialedHungUp);
  }

  private setInterest(fd: number, events: number, hungUp: boolean): void {
    // Nothing wanted from a hung-up socket: out of epoll until something is (else EPOLLHUP spins).
    if (hungUp && events === 0) this.owner.watcher.unwatch(fd);
    else this.owner.watcher.watch(fd, events, this);
  }

  close(): void {
    this.release(false);
  }

  /** The dial failed with nothing read yet: offer the accepted socket to the owner (closed if it declines). */
  private giveBack(): void {
    this.release(true);
  }

  private release(offerAccepted: boolean): void {
    if (this.closed) return;
    this.closed = true;
    this.owner.watcher.unwatch(this.acceptedFd);
    this.owner.watcher.unwatch(this.dialedFd);
    native.close(this.dialedFd);
    this.forward.close();
    this.backward.close();
    const taken = offerAccepted && this.owner.dialFailed?.(this) === true;
    if (!taken) native.close(this.acceptedFd);
    this.flows.detach(this.flowId, this);
    this.owner.released(this);
  }
}

const spliceFlowsOf = new WeakMap<FlowTable, SpliceFlows>();

/**
 * The tcp-splice flows of one flow table, whoever opened them (-T and the
 * -t splice path share the kind): the relay of each flow id, and the
 * kind's closer (control API) and evictor (a full table), registered once
 * per table.
 */
export class SpliceFlows {
  private readonly relays: (TcpRelay | undefined)[] = [];

  private constructor(readonly table: FlowTable, readonly now: () => number) {
    table.registerCloser(FlowKind.TcpSplice, (id) => this.relays[id]?.close());
    table.registerEvictor(FlowKind.TcpSplice, (id, at) => this.evict(id, at));
  }

  /** The tcp-splice flows of `table` (its clock: `now`, which must be the one its other kinds use). */
  static of(table: FlowTable, now: () => number): SpliceFlows {
    let flows = spliceFlowsOf.get(table);
    if (flows === undefined) {
      flows = new SpliceFlows(table, now);
      spliceFlowsOf.set(table, flows);
    }
    return flows;
  }

  /**
   * A flow for a new relay: the namespace's end as the guest's, the host's
   * as the remote (addresses at the given offsets). NO_FLOW when the table
   * is full and nothing could be evicted.
   */
  allocate(family: 4 | 6, namespace: Uint8Array, namespaceOffset: number, namespacePort: number, host: Uint8Array, hostOffset: number, hostPort: number, inbound: boolean): number {
    const table = this.table;
    const id = table.allocate(FlowKind.TcpSplice, family, namespace, namespaceOffset, namespacePort, host, hostOffset, hostPort, SpliceState.Connecting, this.now());
    if (id !== NO_FLOW && inbound) table.markInbound(id);
    return id;
  }

  attach(id: number, relay: TcpRelay): void {
    this.relays[id] = relay;
  }

  /** The relay of flow id closed: its slot is free again. */
  detach(id: number, relay: TcpRelay): void {
    if (this.relays[id] !== relay) return;
    this.relays[id] = undefined;
    this.table.release(id);
  }

  /** A full table: give up a relay still connecting, or one idle for EVICTABLE_IDLE_MS. */
  private evict(id: number, now: number): boolean {
    const relay = this.relays[id];
    if (relay === undefined) return false;
    if (!relay.isConnecting && now - relay.lastActive < EVICTABLE_IDLE_MS) return false;
    relay.close();
    return true;
  }
}
