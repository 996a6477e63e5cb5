/**
 * pasta's TCP loopback relays. -T/--tcp-ns: listeners on the namespace's
 * loopback, each connection relayed to the host's loopback. The -t splice
 * path: a connection the stack's -t listener accepted from the host's
 * loopback joined to the namespace's loopback instead of becoming frames.
 * Both are tcp-splice flows of the flow table (tcp-relay.ts).
 */
import type { CounterBlock } from '../../../sys/counters';
import { log, rateLimited } from '../../../sys/log';
import { native } from '../../../sys/native';
import type { FdWatcher } from '../../../stack/context';
import { FlowTable, NO_FLOW } from '../../../stack/flow/flow-table';
import { COUNTERS, SPLICE_COUNTERS, bindLoopbackListeners, loopbackAddress, loopbackSockaddr, type NamespaceSocketOpener, type PortForward, sockaddrAddressOffset, sockaddrPortOf } from './loopback-forward';
import { type RelayOwner, SpliceFlows, TcpRelay } from './tcp-relay';

/** Bound on concurrent TCP relays per forwarder; more connections are accepted and closed at once. */
export const MAX_TCP_RELAYS = 1024;

/** -T: TCP listeners on the namespace's loopback, each connection relayed to the host's loopback. */
export class TcpNamespaceForwarder implements RelayOwner {
  private readonly listeners = new Map<number, { family: 4 | 6; forward: PortForward }>();
  private readonly relays = new Set<TcpRelay>();
  private readonly addr = new Uint8Array(28);
  private readonly addrLength = new Int32Array(1);
  private readonly flows: SpliceFlows;

  /**
   * `flows`: the table the relays are tcp-splice flows of (the stack's, so
   * they are listed and bounded with every other flow; one of their own
   * when not given), whose clock is `now`.
   */
  constructor(
    readonly watcher: FdWatcher,
    private readonly counters: CounterBlock,
    private readonly splice: boolean,
    flows: FlowTable = new FlowTable(MAX_TCP_RELAYS, counters),
    now: () => number = () => performance.now(),
  ) {
    this.flows = SpliceFlows.of(flows, now);
  }

  /** Listen in the namespace for each forward (both families); returns how many sockets listen. */
  listen(open: NamespaceSocketOpener, forwards: readonly PortForward[]): number {
    for (const { fd, family, forward } of bindLoopbackListeners(open, native.constants.SOCK_STREAM, forwards, '-T')) {
      this.listeners.set(fd, { family, forward });
      this.watcher.watch(fd, native.constants.EPOLLIN, { onReady: (ready) => this.accept(ready) });
    }
    return this.listeners.size;
  }

  /** Stop listening on `port` in the namespace (relays already open carry on). */
  unlisten(port: number): void {
    for (const [fd, listener] of [...this.listeners]) {
      if (listener.forward.listenPort !== port) continue;
      this.listeners.delete(fd);
      this.watcher.unwatch(fd);
      native.close(fd);
    }
  }

  /** Relays open now (for tests and metrics). */
  get relayCount(): number {
    return this.relays.size;
  }

  private accept(listenFd: number): void {
    const listener = this.listeners.get(listenFd);
    if (listener === undefined) return;
    const c = native.constants;
    // Bounded: a burst of connections is taken in slices; epoll calls again for the rest.
    for (let i = 0; i < 64; i++) {
      const nsFd = native.acceptFrom(listenFd, this.addr, this.addrLength);
      if (nsFd < 0) return;
      if (this.relays.size >= MAX_TCP_RELAYS) {
        this.counters.add(COUNTERS.tcpRefused);
        rateLimited('warn', 'pasta -T full', () => `pasta -T: more than ${MAX_TCP_RELAYS} connections: refused one on port ${listener.forward.listenPort}`);
        native.close(nsFd);
        continue;
      }
      const family = listener.family;
      const id = this.flows.allocate(family, this.addr, sockaddrAddressOffset(family), sockaddrPortOf(this.addr), loopbackAddress(family), 0, listener.forward.targetPort, false);
      if (id === NO_FLOW) {
        this.counters.add(COUNTERS.tcpRefused);
        rateLimited('warn', 'pasta -T table full', () => `pasta -T: the flow table is full: refused a connection on port ${listener.forward.listenPort}`);
        native.close(nsFd);
        continue;
      }
      let hostFd = -1;
      try {
        hostFd = native.socket(listener.family === 4 ? c.AF_INET : c.AF_INET6, c.SOCK_STREAM, 0);
        native.setsockoptInt(hostFd, c.IPPROTO_TCP, c.TCP_NODELAY, 1);
        native.setsockoptInt(nsFd, c.IPPROTO_TCP, c.TCP_NODELAY, 1);
        native.connect(hostFd, loopbackSockaddr(listener.family, listener.forward.targetPort));
      } catch (e) {
        this.counters.add(COUNTERS.tcpRefused);
        rateLimited('warn', 'pasta -T connect', () => `pasta -T: port ${listener.forward.listenPort} -> host port ${listener.forward.targetPort}: ${(e as Error).message}`);
        native.close(nsFd);
        if (hostFd >= 0) native.close(hostFd);
        this.flows.table.release(id);
        continue;
      }
      this.counters.add(COUNTERS.tcpAccepted);
      if (this.splice) this.counters.add(SPLICE_COUNTERS.namespaceConnections);
      const bytes = this.splice ? [COUNTERS.tcpBytes, SPLICE_COUNTERS.namespaceBytes] : [COUNTERS.tcpBytes];
      const relay = new TcpRelay(this, nsFd, hostFd, this.splice, this.counters, bytes, this.flows, id, true);
      this.relays.add(relay);
      relay.updateInterest();
    }
  }

  /** Called by a relay when it closed. */
  released(relay: TcpRelay): void {
    this.relays.delete(relay);
  }

  /** Close every listener and relay. */
  close(): void {
    for (const relay of [...this.relays]) relay.close();
    for (const fd of this.listeners.keys()) {
      this.watcher.unwatch(fd);
      native.close(fd);
    }
    this.listeners.clear();
  }
}


/** Unconnected sockets kept ready in the namespace per family (opened 2 x this per helper fork). */
const SPLICE_POOL_SIZE = 8;
/** Refill the pool once it holds fewer sockets than this. */
const SPLICE_POOL_LOW = 3;

/**
 * The -t fast path: a connection the stack's -t listener accepted from the
 * host's loopback is joined, with splice(2), to a connection ferry makes to
 * the namespace's loopback (same port as the frames would have gone to)
 * instead of being translated into frames.
 *
 * Opening a socket in the namespace costs a forked helper (native.nsOpen),
 * so unconnected sockets are kept in a small pool per family, refilled
 * after the event that drained it. A connection the pool cannot serve, or
 * whose connect() fails at once (nothing on the namespace's loopback at
 * that port, e.g. a server bound to the tap address only), is left to the
 * stack (counted as a fallback). So does one whose connect() is refused
 * later (no byte has been read from the host client then): a server bound
 * to the tap's address only is still reached, through the tap.
 */
export class HostLoopbackSplicer implements RelayOwner {
  private readonly pool: Record<4 | 6, number[]> = { 4: [], 6: [] };
  /** A family whose sockets cannot be made in the namespace (IPv6 off there): not retried. */
  private readonly unavailable: Record<4 | 6, boolean> = { 4: false, 6: false };
  private readonly relays = new Set<TcpRelay>();
  /** What the stack needs to take a connection back, per relay still connecting or open. */
  private readonly origin = new Map<TcpRelay, { family: 4 | 6; peer: Uint8Array; peerPort: number; guestPort: number }>();
  private refillPending = false;
  private closed = false;
  private readonly flows: SpliceFlows;

  /** `flows` and `now`: as for TcpNamespaceForwarder (these relays are inbound tcp-splice flows). */
  constructor(
    readonly watcher: FdWatcher,
    private readonly counters: CounterBlock,
    private readonly open: NamespaceSocketOpener,
    /** Give a connection back to the stack (TcpListeners.acceptHandedBack); null: close it instead. */
    private readonly handBack: ((fd: number, family: 4 | 6, peer: Uint8Array, peerPort: number, guestPort: number) => boolean) | null = null,
    flows: FlowTable = new FlowTable(MAX_TCP_RELAYS, counters),
    now: () => number = () => performance.now(),
  ) {
    this.flows = SpliceFlows.of(flows, now);
  }

  /** Fill the pools now (before the first connection, so it does not wait for a helper). */
  prime(): void {
    this.refill();
  }

  /** Relays open now. */
  get relayCount(): number {
    return this.relays.size;
  }

  /** A LoopbackHandoff: true when the connection `hostFd` is now spliced to the namespace's loopback port `port`. */
  take(hostFd: number, family: 4 | 6, port: number, peer: Uint8Array = new Uint8Array(family === 4 ? 4 : 16), peerPort = 0): boolean {
    if (this.closed || this.relays.size >= MAX_TCP_RELAYS) return this.fallback();
    if (this.pool[family].length === 0) this.refill();
    const nsFd = this.pool[family].pop();
    if (nsFd === undefined) return this.fallback();
    this.scheduleRefill();
    const id = this.flows.allocate(family, loopbackAddress(family), 0, port, peer, 0, peerPort, true);
    if (id === NO_FLOW) {
      native.close(nsFd);
      return this.fallback();
    }
    const c = native.constants;
    try {
      native.setsockoptInt(nsFd, c.IPPROTO_TCP, c.TCP_NODELAY, 1);
      native.setsockoptInt(hostFd, c.IPPROTO_TCP, c.TCP_NODELAY, 1);
      native.connect(nsFd, loopbackSockaddr(family, port));
    } catch (e) {
      native.close(nsFd);
      this.flows.table.release(id);
      rateLimited('debug', 'pasta -t splice connect', () => `pasta -t: namespace loopback port ${port}: ${(e as Error).message}: through the tap instead`);
      return this.fallback();
    }
    this.counters.add(SPLICE_COUNTERS.hostConnections);
    const relay = new TcpRelay(this, hostFd, nsFd, true, this.counters, [SPLICE_COUNTERS.hostBytes], this.flows, id, false);
    this.relays.add(relay);
    if (this.handBack !== null) this.origin.set(relay, { family, peer: Uint8Array.from(peer), peerPort, guestPort: port });
    relay.updateInterest();
    return true;
  }

  /** Called by a relay when it closed. */
  released(relay: TcpRelay): void {
    this.relays.delete(relay);
    this.origin.delete(relay);
  }

  /** The namespace's loopback refused: the stack takes the untouched host connection through the tap. */
  dialFailed(relay: TcpRelay): boolean {
    const origin = this.origin.get(relay);
    if (origin === undefined || this.handBack === null || this.closed) return false;
    this.counters.add(SPLICE_COUNTERS.hostFallbacks);
    // The stack closes the socket itself when it cannot take it.
    this.handBack(relay.acceptedFd, origin.family, origin.peer, origin.peerPort, origin.guestPort);
    return true;
  }

  /** Close every relay and pooled socket. */
  close(): void {
    this.closed = true;
    for (const relay of [...this.relays]) relay.close();
    for (const family of [4, 6] as const) {
      for (const fd of this.pool[family]) native.close(fd);
      this.pool[family].length = 0;
    }
  }

  private fallback(): false {
    this.counters.add(SPLICE_COUNTERS.hostFallbacks);
    return false;
  }

  private scheduleRefill(): void {
    if (this.refillPending || (this.pool[4].length >= SPLICE_POOL_LOW && this.pool[6].length >= SPLICE_POOL_LOW)) return;
    this.refillPending = true;
    // After the current batch of events: the helper's fork blocks the thread for a few ms.
    setImmediate(() => {
      this.refillPending = false;
      if (!this.closed) this.refill();
    });
  }

  /** Top up each available family's pool with one helper per family. */
  private refill(): void {
    const c = native.constants;
    for (const family of [4, 6] as const) {
      const missing = SPLICE_POOL_SIZE - this.pool[family].length;
      if (this.unavailable[family] || missing <= 0) continue;
      const triple = [family === 4 ? c.AF_INET : c.AF_INET6, c.SOCK_STREAM, 0];
      try {
        const triples: number[] = [];
        for (let i = 0; i < missing; i++) triples.push(...triple);
        this.pool[family].push(...this.open(triples));
      } catch (e) {
        this.unavailable[family] = true;
        log.warn(`pasta -t: no IPv${family} sockets in the namespace for the splice path (${(e as Error).message}): IPv${family} loopback connections go through the tap`);
      }
    }
  }
}
