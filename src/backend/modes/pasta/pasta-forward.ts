/**
 * pasta's -T/--tcp-ns and -U/--udp-ns: ports on the namespace's loopback
 * forwarded to the host's loopback, without ever becoming frames.
 *
 * The listening sockets are created inside the namespace (native.nsOpen:
 * a socket keeps the namespace it was made in) and bound to 127.0.0.1 and
 * ::1 there; ferry accepts or receives on them from its own namespace and
 * talks to the host's loopback with ordinary sockets.
 *
 * TCP: every accepted connection is joined to a new connection to the
 * host's loopback. Bytes move with splice(2) through one pipe per
 * direction (socket -> pipe -> socket, never through user memory), or with
 * read/write through a buffer with --no-splice. One chunk is in flight per
 * direction: a direction reads only while its pipe or buffer is empty and
 * otherwise waits for its destination to be writable, so a slow reader
 * holds back its writer (back-pressure) and nothing grows without bound.
 * EOF is passed on with shutdown(SHUT_WR); the pair is closed once both
 * directions are done, or on any error (ECONNRESET...).
 *
 * UDP: datagrams from a namespace client go out of a host socket connected
 * to the host's loopback port (one per client address and port), replies
 * come back through the namespace socket to the client, both with batched
 * recvmmsg/sendmmsg. Idle flows are closed after the UDP timeout.
 */
import * as fs from 'fs';
import { type CounterBlock, defineCounter } from '../../../sys/counters';
import { log, rateLimited } from '../../../sys/log';
import { type IoVecList, native } from '../../../sys/native';
import type { FdWatcher, ReadyHandler } from '../../../stack/context';
import type { ForwardSpec } from '../../../stack/flow/forward-spec';
import type { ListenError, ListenerInfo } from '../../../stack/tcp/listen';
import { writeSockaddr } from '../../../sys/sockaddr';

/** One forwarded port: listen on `listenPort` in the namespace, go to `targetPort` on the host's loopback. */
export interface PortForward {
  listenPort: number;
  targetPort: number;
}

/** Bound on ports a spec may expand to (each needs sockets opened in the namespace). */
export const MAX_FORWARDED_PORTS = 4096;
/** Bound on concurrent TCP relays; more connections are accepted and closed at once. */
export const MAX_TCP_RELAYS = 1024;
/** Bytes per splice/read call: the default pipe capacity. */
const CHUNK = 65536;
/** Fill/drain rounds per readiness event for one direction (fairness between relays). */
const ROUNDS_PER_EVENT = 16;

const FORWARD_HELP = 'Connections or datagrams forwarded from the namespace\'s loopback to the host\'s (pasta -T/-U)';
const COUNTERS = {
  tcpAccepted: defineCounter('ferry_pasta_forwards_total', FORWARD_HELP, { protocol: 'tcp', event: 'accepted' }),
  tcpRefused: defineCounter('ferry_pasta_forwards_total', FORWARD_HELP, { protocol: 'tcp', event: 'refused' }),
  tcpBytes: defineCounter('ferry_pasta_forwards_total', FORWARD_HELP, { protocol: 'tcp', event: 'bytes' }),
  udpDatagrams: defineCounter('ferry_pasta_forwards_total', FORWARD_HELP, { protocol: 'udp', event: 'datagrams' }),
  udpDropped: defineCounter('ferry_pasta_forwards_total', FORWARD_HELP, { protocol: 'udp', event: 'dropped' }),
};

const SPLICE_HELP = 'TCP connections and bytes joined loopback to loopback with splice(2), by side the connection came from (pasta)';
/** What the splice fast path moved: -T connections (from the namespace) and -t ones from the host's loopback. */
export const SPLICE_COUNTERS = {
  namespaceConnections: defineCounter('ferry_pasta_splice_total', SPLICE_HELP, { from: 'namespace', event: 'connections' }),
  namespaceBytes: defineCounter('ferry_pasta_splice_total', SPLICE_HELP, { from: 'namespace', event: 'bytes' }),
  hostConnections: defineCounter('ferry_pasta_splice_total', SPLICE_HELP, { from: 'host', event: 'connections' }),
  hostBytes: defineCounter('ferry_pasta_splice_total', SPLICE_HELP, { from: 'host', event: 'bytes' }),
  hostFallbacks: defineCounter('ferry_pasta_splice_total', SPLICE_HELP, { from: 'host', event: 'fallbacks' }),
};

/** The (listen, target) port pairs of -T/-U specs, in order; throws past MAX_FORWARDED_PORTS. */
export function expandForwards(specs: readonly ForwardSpec[]): PortForward[] {
  const out: PortForward[] = [];
  const seen = new Map<number, number>();
  for (const spec of specs) {
    for (const m of spec.mappings) {
      for (let port = m.hostPortFirst; port <= m.hostPortLast; port++) {
        const target = m.guestPortFirst + (port - m.hostPortFirst);
        const at = seen.get(port);
        // A later spec for the same port wins, as passt does.
        if (at !== undefined) out[at] = { listenPort: port, targetPort: target };
        else {
          seen.set(port, out.length);
          out.push({ listenPort: port, targetPort: target });
        }
        if (out.length > MAX_FORWARDED_PORTS) throw new Error(`more than ${MAX_FORWARDED_PORTS} forwarded ports`);
      }
    }
  }
  return out;
}

const LOOPBACK_V4 = Uint8Array.of(127, 0, 0, 1);
const LOOPBACK_V6 = Uint8Array.of(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1);

/** sockaddr for the loopback address of a family and a port. */
export function loopbackSockaddr(family: 4 | 6, port: number): Uint8Array {
  const out = new Uint8Array(28);
  const length = writeSockaddr(out, family, family === 4 ? LOOPBACK_V4 : LOOPBACK_V6, 0, port);
  return out.slice(0, length);
}

/** Opens sockets (domain, type, protocol triples) inside the namespace; see native.nsOpen. */
export type NamespaceSocketOpener = (triples: number[]) => number[];

/**
 * Bind one socket per family in the namespace to its loopback and `port`
 * (IPv6 only for ::1). A family whose bind fails (no ::1 when IPv6 is off)
 * is left out with one log line. Returns the bound fds with their family.
 */
function bindLoopbackListeners(open: NamespaceSocketOpener, type: number, forwards: readonly PortForward[], what: string): Array<{ fd: number; family: 4 | 6; forward: PortForward }> {
  const c = native.constants;
  const bound: Array<{ fd: number; family: 4 | 6; forward: PortForward }> = [];
  const wanted: Array<{ family: 4 | 6; forward: PortForward }> = [];
  for (const forward of forwards) for (const family of [4, 6] as const) wanted.push({ family, forward });
  // nsOpen passes at most 16 sockets per call.
  for (let start = 0; start < wanted.length; start += 16) {
    const batch = wanted.slice(start, start + 16);
    const fds = open(batch.flatMap((w) => [w.family === 4 ? c.AF_INET : c.AF_INET6, type, 0]));
    batch.forEach((w, i) => {
      const fd = fds[i];
      try {
        native.setsockoptInt(fd, c.SOL_SOCKET, c.SO_REUSEADDR, 1);
        if (w.family === 6) native.setsockoptInt(fd, c.IPPROTO_IPV6, c.IPV6_V6ONLY, 1);
        native.bind(fd, loopbackSockaddr(w.family, w.forward.listenPort));
        if (type === c.SOCK_STREAM) native.listen(fd, c.SOMAXCONN ?? 128);
        bound.push({ fd, family: w.family, forward: w.forward });
      } catch (e) {
        native.close(fd);
        log.warn(`${what} ${w.forward.listenPort}: cannot listen on the namespace's ${w.family === 4 ? '127.0.0.1' : '::1'}: ${(e as Error).message}`);
      }
    });
  }
  return bound;
}

// ---------------------------------------------------------------- TCP

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
interface RelayOwner {
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
class TcpRelay implements ReadyHandler {
  private connecting = true;
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
  ) {
    const pipe = (): [number, number] | null => (splice ? native.pipe() : null);
    const buffer = (): Uint8Array | null => (splice ? null : new Uint8Array(CHUNK));
    this.forward = new Direction(acceptedFd, dialedFd, pipe(), buffer(), counters, byteCounters);
    this.backward = new Direction(dialedFd, acceptedFd, pipe(), buffer(), counters, byteCounters);
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
      }
      if ((events & c.EPOLLERR) !== 0) throw new Error('socket error');
      // A hung-up socket is reported on every wait, whatever we ask for: remember it, so it is
      // left out of epoll while its data waits for the other side (see updateInterest).
      if ((events & c.EPOLLHUP) !== 0) {
        if (fd === this.acceptedFd) this.acceptedHungUp = true;
        else this.dialedHungUp = true;
      }
      this.forward.pump();
      this.backward.pump();
      if (this.forward.done && this.backward.done) return this.close();
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
    this.owner.released(this);
  }
}

/** -T: TCP listeners on the namespace's loopback, each connection relayed to the host's loopback. */
export class TcpNamespaceForwarder implements RelayOwner {
  private readonly listeners = new Map<number, { family: 4 | 6; forward: PortForward }>();
  private readonly relays = new Set<TcpRelay>();
  private readonly addr = new Uint8Array(28);
  private readonly addrLength = new Int32Array(1);

  constructor(readonly watcher: FdWatcher, private readonly counters: CounterBlock, private readonly splice: boolean) {}

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
        continue;
      }
      this.counters.add(COUNTERS.tcpAccepted);
      if (this.splice) this.counters.add(SPLICE_COUNTERS.namespaceConnections);
      const bytes = this.splice ? [COUNTERS.tcpBytes, SPLICE_COUNTERS.namespaceBytes] : [COUNTERS.tcpBytes];
      const relay = new TcpRelay(this, nsFd, hostFd, this.splice, this.counters, bytes);
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

// ---------------------------------------------------------------- -t splice

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

  constructor(
    readonly watcher: FdWatcher,
    private readonly counters: CounterBlock,
    private readonly open: NamespaceSocketOpener,
    /** Give a connection back to the stack (TcpListeners.acceptHandedBack); null: close it instead. */
    private readonly handBack: ((fd: number, family: 4 | 6, peer: Uint8Array, peerPort: number, guestPort: number) => boolean) | null = null,
  ) {}

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
    const c = native.constants;
    try {
      native.setsockoptInt(nsFd, c.IPPROTO_TCP, c.TCP_NODELAY, 1);
      native.setsockoptInt(hostFd, c.IPPROTO_TCP, c.TCP_NODELAY, 1);
      native.connect(nsFd, loopbackSockaddr(family, port));
    } catch (e) {
      native.close(nsFd);
      rateLimited('debug', 'pasta -t splice connect', () => `pasta -t: namespace loopback port ${port}: ${(e as Error).message}: through the tap instead`);
      return this.fallback();
    }
    this.counters.add(SPLICE_COUNTERS.hostConnections);
    const relay = new TcpRelay(this, hostFd, nsFd, true, this.counters, [SPLICE_COUNTERS.hostBytes]);
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

// ---------------------------------------------------------------- UDP

/** Datagrams per recvmmsg/sendmmsg batch. */
const UDP_BATCH = 32;
const MAX_DATAGRAM = 65535;
/** Bound on client flows per forwarder. */
export const MAX_UDP_FLOWS = 1024;

/** A namespace client (address, port) and its host socket. */
interface UdpFlow {
  hostFd: number;
  listenFd: number;
  /** The client's sockaddr in the namespace (replies go there). */
  client: Uint8Array;
  lastUsed: number;
}

/** -U: UDP sockets on the namespace's loopback, each client relayed through a host socket connected to the host's loopback. */
export class UdpNamespaceForwarder {
  private readonly listeners = new Map<number, { family: 4 | 6; forward: PortForward }>();
  /** Flows by (listen fd, client sockaddr) as text: at most MAX_UDP_FLOWS, looked up once per batch entry. */
  private readonly flows = new Map<string, UdpFlow>();
  private readonly byHostFd = new Map<number, UdpFlow>();
  private readonly buffers: Uint8Array[] = [];
  private readonly iov: IoVecList;
  private readonly lengths = new Int32Array(UDP_BATCH);
  private readonly addrs: Uint8Array[] = [];
  private readonly addrLengths = new Int32Array(UDP_BATCH);
  private readonly sendStart = new Int32Array(UDP_BATCH);
  private readonly sendCount = new Int32Array(UDP_BATCH);
  private readonly sendIov: IoVecList;

  constructor(private readonly watcher: FdWatcher, private readonly counters: CounterBlock, private readonly idleMs: number, private readonly now: () => number = () => Date.now()) {
    for (let i = 0; i < UDP_BATCH; i++) {
      this.buffers.push(new Uint8Array(MAX_DATAGRAM));
      this.addrs.push(new Uint8Array(28));
    }
    this.iov = { buffers: this.buffers, offsets: new Float64Array(UDP_BATCH), lengths: new Float64Array(UDP_BATCH).fill(MAX_DATAGRAM), count: UDP_BATCH };
    this.sendIov = { buffers: new Array<Uint8Array>(UDP_BATCH), offsets: new Float64Array(UDP_BATCH), lengths: new Float64Array(UDP_BATCH), count: 0 };
    for (let i = 0; i < UDP_BATCH; i++) {
      this.sendStart[i] = i;
      this.sendCount[i] = 1;
    }
  }

  /** Bind in the namespace for each forward (both families); returns how many sockets are bound. */
  listen(open: NamespaceSocketOpener, forwards: readonly PortForward[]): number {
    for (const { fd, family, forward } of bindLoopbackListeners(open, native.constants.SOCK_DGRAM, forwards, '-U')) {
      this.listeners.set(fd, { family, forward });
      this.watcher.watch(fd, native.constants.EPOLLIN, { onReady: (ready) => this.fromNamespace(ready) });
    }
    return this.listeners.size;
  }

  /** Stop receiving on `port` in the namespace; its client flows go with it. */
  unlisten(port: number): void {
    for (const [fd, listener] of [...this.listeners]) {
      if (listener.forward.listenPort !== port) continue;
      for (const [key, flow] of [...this.flows]) if (flow.listenFd === fd) this.dropFlow(key, flow);
      this.listeners.delete(fd);
      this.watcher.unwatch(fd);
      native.close(fd);
    }
  }

  /** Client flows open now. */
  get flowCount(): number {
    return this.flows.size;
  }

  /** A batch from namespace clients: each datagram out of its flow's host socket. */
  private fromNamespace(listenFd: number): void {
    const listener = this.listeners.get(listenFd);
    if (listener === undefined) return;
    const n = native.recvmmsg(listenFd, this.iov, this.lengths, this.addrs, this.addrLengths, UDP_BATCH, 0);
    if (n <= 0) return;
    const now = this.now();
    for (let i = 0; i < n; i++) {
      const client = this.addrs[i].subarray(0, this.addrLengths[i]);
      const flow = this.flowFor(listenFd, listener, client, now);
      if (flow === null) {
        this.counters.add(COUNTERS.udpDropped);
        continue;
      }
      flow.lastUsed = now;
      // Connected host socket: one send per datagram of this batch (different flows may interleave).
      let sent: number;
      try {
        sent = native.write(flow.hostFd, this.buffers[i], 0, this.lengths[i]);
      } catch {
        sent = -1; // ECONNREFUSED from an earlier datagram: nobody listens on the host port
      }
      this.counters.add(sent < 0 ? COUNTERS.udpDropped : COUNTERS.udpDatagrams);
    }
  }

  private flowFor(listenFd: number, listener: { family: 4 | 6; forward: PortForward }, client: Uint8Array, now: number): UdpFlow | null {
    const key = `${listenFd}/${Buffer.from(client.buffer, client.byteOffset, client.length).toString('hex')}`;
    const existing = this.flows.get(key);
    if (existing !== undefined) return existing;
    if (this.flows.size >= MAX_UDP_FLOWS) {
      rateLimited('warn', 'pasta -U full', () => `pasta -U: more than ${MAX_UDP_FLOWS} client flows: datagram dropped`);
      return null;
    }
    const c = native.constants;
    let hostFd = -1;
    try {
      hostFd = native.socket(listener.family === 4 ? c.AF_INET : c.AF_INET6, c.SOCK_DGRAM, 0);
      native.connect(hostFd, loopbackSockaddr(listener.family, listener.forward.targetPort));
    } catch (e) {
      if (hostFd >= 0) native.close(hostFd);
      rateLimited('warn', 'pasta -U socket', () => `pasta -U: port ${listener.forward.listenPort}: ${(e as Error).message}`);
      return null;
    }
    const flow: UdpFlow = { hostFd, listenFd, client: Uint8Array.from(client), lastUsed: now };
    this.flows.set(key, flow);
    this.byHostFd.set(hostFd, flow);
    this.watcher.watch(hostFd, c.EPOLLIN, { onReady: (ready) => this.fromHost(ready) });
    return flow;
  }

  /** A batch of replies on a host socket: back to the client through the namespace socket. */
  private fromHost(hostFd: number): void {
    const flow = this.byHostFd.get(hostFd);
    if (flow === undefined) return;
    let n: number;
    try {
      n = native.recvmmsg(hostFd, this.iov, this.lengths, null, null, UDP_BATCH, 0);
    } catch {
      // ICMP port unreachable from the host's loopback (ECONNREFUSED): nothing to relay.
      return;
    }
    if (n <= 0) return;
    flow.lastUsed = this.now();
    const send = this.sendIov;
    const addrs: Uint8Array[] = [];
    for (let i = 0; i < n; i++) {
      send.buffers[i] = this.buffers[i];
      send.offsets[i] = 0;
      send.lengths[i] = this.lengths[i];
      addrs.push(flow.client);
    }
    send.count = n;
    let sent: number;
    try {
      sent = native.sendmmsg(flow.listenFd, send, this.sendStart, this.sendCount, addrs, n, 0);
    } catch {
      sent = 0; // the client's port is gone (ECONNREFUSED and the like)
    }
    const delivered = Math.max(0, sent);
    this.counters.add(COUNTERS.udpDatagrams, delivered);
    if (delivered < n) this.counters.add(COUNTERS.udpDropped, n - delivered);
  }

  /** Close flows idle for longer than the UDP timeout; call periodically. */
  expire(now = this.now()): void {
    for (const [key, flow] of this.flows) {
      if (now - flow.lastUsed < this.idleMs) continue;
      this.dropFlow(key, flow);
    }
  }

  private dropFlow(key: string, flow: UdpFlow): void {
    this.flows.delete(key);
    this.byHostFd.delete(flow.hostFd);
    this.watcher.unwatch(flow.hostFd);
    native.close(flow.hostFd);
  }

  /** Close every socket. */
  close(): void {
    for (const [key, flow] of [...this.flows]) this.dropFlow(key, flow);
    for (const fd of this.listeners.keys()) {
      this.watcher.unwatch(fd);
      native.close(fd);
    }
    this.listeners.clear();
  }
}

// ---------------------------------------------------------------- auto (-T auto / -U auto)

/** TCP_LISTEN in /proc/net/tcp; an unconnected UDP socket shows TCP_CLOSE (07). */
const TCP_LISTEN = 0x0a;
const UDP_UNCONNECTED = 0x07;

/** Is a /proc/net local address (hex) reachable from the loopback: any, or loopback itself? */
function loopbackReachable(hex: string): boolean {
  if (hex.length === 8) {
    // IPv4 in host byte order: little-endian hosts print 127.0.0.1 as 0100007F.
    const value = Number.parseInt(hex, 16) >>> 0;
    const bytes = LITTLE_ENDIAN_HOST ? [value & 0xff, (value >>> 8) & 0xff, (value >>> 16) & 0xff, value >>> 24] : [value >>> 24, (value >>> 16) & 0xff, (value >>> 8) & 0xff, value & 0xff];
    return value === 0 || bytes[0] === 127;
  }
  if (hex.length === 32) {
    // Four 32-bit words, each in host byte order: :: is all zeros, ::1 ends in 01000000 (little-endian).
    if (/^0{32}$/.test(hex)) return true;
    return hex.slice(0, 24) === '0'.repeat(24) && hex.slice(24) === (LITTLE_ENDIAN_HOST ? '01000000' : '00000001');
  }
  return false;
}

const LITTLE_ENDIAN_HOST = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/**
 * Ports with a listening socket (TCP) or an unconnected bound socket (UDP)
 * reachable on the loopback, from /proc/net/{tcp,tcp6,udp,udp6} text,
 * leaving out sockets whose inode is in `exclude` (ferry's own). Pure.
 */
export function boundLoopbackPorts(table: string, protocol: 'tcp' | 'udp', exclude: ReadonlySet<number>): Set<number> {
  return boundPorts(table, protocol, exclude, 'loopback');
}

/** Which bound sockets count: those reachable on the loopback (-T/-U auto) or any (-t/-u auto). */
export type BoundScope = 'loopback' | 'any';

/**
 * Ports with a listening socket (TCP) or an unconnected bound socket (UDP)
 * on any local address (scope 'any') or one reachable from the loopback,
 * leaving out sockets whose inode is in `exclude`. Pure.
 */
export function boundPorts(table: string, protocol: 'tcp' | 'udp', exclude: ReadonlySet<number>, scope: BoundScope): Set<number> {
  const ports = new Set<number>();
  const wanted = protocol === 'tcp' ? TCP_LISTEN : UDP_UNCONNECTED;
  const lines = table.split('\n');
  // Bounded by the table itself; malformed lines are skipped.
  for (const line of lines) {
    const fields = line.trim().split(/\s+/);
    if (fields.length < 10 || !/^\d+:$/.test(fields[0])) continue;
    const [localAddress, localPort] = fields[1].split(':');
    const remotePort = fields[2].split(':')[1];
    if (Number.parseInt(fields[3], 16) !== wanted || localPort === undefined) continue;
    if (protocol === 'udp' && remotePort !== '0000') continue;
    const inode = Number(fields[9]);
    if (exclude.has(inode) || (scope === 'loopback' && !loopbackReachable(localAddress))) continue;
    const port = Number.parseInt(localPort, 16);
    if (port > 0 && port <= 65535) ports.add(port);
  }
  return ports;
}

/** Inodes of the sockets this process holds (its own listeners must not be forwarded to themselves). */
export function ownSocketInodes(fdDirectory = '/proc/self/fd'): Set<number> {
  const inodes = new Set<number>();
  let names: string[];
  try {
    names = fs.readdirSync(fdDirectory);
  } catch {
    return inodes;
  }
  for (const name of names) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(fs.readlinkSync(`${fdDirectory}/${name}`));
      if (m !== null) inodes.add(Number(m[1]));
    } catch {
      // closed meanwhile
    }
  }
  return inodes;
}

/** What an AutoForwarder drives: a forwarder whose ports can come and go. */
export interface DynamicForwarder {
  listen(open: NamespaceSocketOpener, forwards: readonly PortForward[]): number;
  unlisten(port: number): void;
}

/**
 * `-T auto` / `-U auto`: every tick, the ports bound on the host's loopback
 * (ferry's own sockets left out; UDP ports in the ephemeral range too, those
 * are clients) are compared with the ports forwarded so far; new ones get
 * listeners in the namespace, vanished ones lose them. Ports whose listener
 * could not be made are not retried until they vanish and come back.
 */
export class AutoForwarder {
  private readonly current = new Set<number>();

  constructor(
    private readonly protocol: 'tcp' | 'udp',
    private readonly forwarder: DynamicForwarder,
    private readonly open: NamespaceSocketOpener,
    private readonly ephemeral: { first: number; last: number },
    private readonly readTables: () => string = () => readProcTables(protocol),
    /** 'loopback' for -T/-U auto (host ports reachable from the loopback), 'any' for -t/-u auto (every port bound in the namespace). */
    private readonly scope: BoundScope = 'loopback',
  ) {}

  /** Ports forwarded now. */
  get ports(): number[] {
    return [...this.current].sort((a, b) => a - b);
  }

  /** Rescan and apply the difference. */
  tick(): void {
    let found: Set<number>;
    try {
      found = boundPorts(this.readTables(), this.protocol, ownSocketInodes(), this.scope);
    } catch (e) {
      const side = this.scope === 'any' ? 'namespace' : 'host';
      rateLimited('warn', `pasta auto ${side} ${this.protocol}`, () => `pasta ${this.protocol} auto forwarding: cannot read the ${side}'s sockets: ${(e as Error).message}`);
      return;
    }
    if (this.protocol === 'udp') for (const port of found) if (port >= this.ephemeral.first && port <= this.ephemeral.last) found.delete(port);
    const added: PortForward[] = [];
    for (const port of found) if (!this.current.has(port)) added.push({ listenPort: port, targetPort: port });
    for (const port of [...this.current]) {
      if (found.has(port)) continue;
      this.current.delete(port);
      this.forwarder.unlisten(port);
    }
    if (added.length === 0) return;
    for (const forward of added) this.current.add(forward.listenPort);
    this.forwarder.listen(this.open, added);
    log.debug(`pasta ${this.protocol} auto (${this.scope === 'any' ? 'into the namespace' : 'to the host'}): now forwarding ${this.ports.join(',') || 'nothing'}`);
  }
}

/** The host's (ferry's namespace's) socket tables for a protocol, both families. */
function readProcTables(protocol: 'tcp' | 'udp'): string {
  let text = '';
  for (const name of [protocol, `${protocol}6`]) {
    try {
      text += fs.readFileSync(`/proc/self/net/${name}`, 'utf8');
    } catch {
      // IPv6 disabled: no table
    }
  }
  return text;
}

/** Identity (device:inode) of a namespace file, to check that a process is still in the namespace. */
export function namespaceIdentity(path: string): string {
  const stat = fs.statSync(path);
  return `${stat.dev}:${stat.ino}`;
}

/**
 * The namespace's socket tables for a protocol, both families, read as
 * /proc/PID/net/{tcp,tcp6} (or udp) of a process in it: procfs shows a
 * process's own network namespace there. Throws when `pid` is gone or (no
 * longer, or not yet: nsenter before its setns) in the namespace whose
 * identity is `netnsIdentity`, so a tick never reads another namespace.
 */
export function readNamespaceTables(protocol: 'tcp' | 'udp', pid: number, netnsIdentity: string): string {
  if (namespaceIdentity(`/proc/${pid}/ns/net`) !== netnsIdentity) throw new Error(`process ${pid} is not in the namespace`);
  let text = '';
  for (const name of [protocol, `${protocol}6`]) {
    try {
      text += fs.readFileSync(`/proc/${pid}/net/${name}`, 'utf8');
    } catch (e) {
      // No table for a disabled IPv6; a vanished process shows in the second check below.
      void e;
    }
  }
  if (namespaceIdentity(`/proc/${pid}/ns/net`) !== netnsIdentity) throw new Error(`process ${pid} left the namespace`);
  return text;
}

/** Host-side listeners of the stack that can be opened and closed by tag at run time (TcpListeners, UdpService). */
export interface TaggedInboundListeners {
  /** Open listeners for `spec` marked `tag`; returns errors as (port, family, errno code). */
  open(spec: ForwardSpec, tag: number): ListenError[];
  /** Close the listeners `match` selects. */
  close(match: (listener: ListenerInfo) => boolean): number;
}

/** The tag of listeners opened by -t/-u auto (the configured -t/-u ones have tag 0). */
export const AUTO_FORWARD_TAG = 0x70a57a;

/** A -t/-u spec for one port, same number on both sides (what -t/-u auto open). */
export function singlePortSpec(port: number, protocol: 'tcp' | 'udp'): ForwardSpec {
  return {
    text: `${protocol === 'tcp' ? '-t' : '-u'} auto: ${port}`,
    mode: 'ports',
    bindAddress: null,
    interfaceName: null,
    mappings: [{ hostPortFirst: port, hostPortLast: port, guestPortFirst: port }],
    bestEffort: false,
  };
}

/**
 * -t/-u auto: the stack's inbound listeners as a DynamicForwarder, so an
 * AutoForwarder scanning the namespace opens a host port (any address, both
 * families) for every port bound in the namespace and closes it when that
 * goes. A port the host cannot bind (taken there) is logged and skipped.
 */
export class InboundAutoListeners implements DynamicForwarder {
  constructor(private readonly protocol: 'tcp' | 'udp', private readonly listeners: TaggedInboundListeners) {}

  listen(_open: NamespaceSocketOpener, forwards: readonly PortForward[]): number {
    let opened = 0;
    for (const forward of forwards) {
      const errors = this.listeners.open(singlePortSpec(forward.listenPort, this.protocol), AUTO_FORWARD_TAG);
      for (const error of errors) {
        rateLimited('warn', `pasta ${this.protocol} auto bind`, () => `pasta ${this.protocol === 'tcp' ? '-t' : '-u'} auto: cannot listen on host port ${error.port} (IPv${error.family}): ${error.code}`);
      }
      opened++;
    }
    return opened;
  }

  unlisten(port: number): void {
    this.listeners.close((listener) => listener.tag === AUTO_FORWARD_TAG && listener.hostPort === port);
  }
}
