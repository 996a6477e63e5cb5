/**
 * pasta's -U/--udp-ns: UDP sockets on the namespace's loopback; datagrams
 * from a namespace client go out of a host socket connected to the host's
 * loopback port (one per client address and port), replies come back
 * through the namespace socket to the client, both with batched
 * recvmmsg/sendmmsg.
 *
 * Each client is a udp-forward flow of the flow table, keyed (no strings,
 * nothing allocated per datagram) by the client's address and port as the
 * guest end and the loopback address and port it sent to as the remote
 * end; the host socket is the flow's fd. Per-flow data (the listening
 * socket, the client's sockaddr) stays in arrays indexed by flow id. Idle
 * flows are closed after the UDP timeout (the table's deadline); a full
 * table may evict one the host never answered or that is idle.
 */
import type { CounterBlock } from '../../../sys/counters';
import { rateLimited } from '../../../sys/log';
import { type IoVecList, native } from '../../../sys/native';
import type { FdWatcher } from '../../../stack/context';
import { FlowKind, FlowTable, NO_FLOW, defineFlowStates } from '../../../stack/flow/flow-table';
import { COUNTERS, bindLoopbackListeners, loopbackAddress, loopbackSockaddr, type NamespaceSocketOpener, type PortForward, sockaddrAddressOffset, sockaddrPortOf } from './loopback-forward';

/** Datagrams per recvmmsg/sendmmsg batch. */
const UDP_BATCH = 32;
const MAX_DATAGRAM = 65535;
/** Bound on client flows per forwarder. */
export const MAX_UDP_FLOWS = 1024;
/** Bytes kept per flow for the client's sockaddr (sockaddr_in6). */
const SOCKADDR_SLOT = 28;

export const UDP_FORWARD_STATE_NAMES: readonly string[] = ['active'];
defineFlowStates(FlowKind.UdpForward, 'udp-forward', UDP_FORWARD_STATE_NAMES);

interface Listener {
  family: 4 | 6;
  forward: PortForward;
}

/**
 * -U: UDP sockets on the namespace's loopback, each client relayed through
 * a host socket connected to the host's loopback. One per flow table (it
 * registers the udp-forward kind's closer and evictor there).
 */
export class UdpNamespaceForwarder {
  private readonly listeners = new Map<number, Listener>();
  /** The namespace socket each flow's client sent to, by flow id. */
  private readonly listenFdOf: Int32Array;
  /** Each flow's client sockaddr (replies go there), by flow id. */
  private readonly clientOf: (Uint8Array | undefined)[] = [];
  private readonly buffers: Uint8Array[] = [];
  private readonly iov: IoVecList;
  private readonly lengths = new Int32Array(UDP_BATCH);
  private readonly addrs: Uint8Array[] = [];
  private readonly addrLengths = new Int32Array(UDP_BATCH);
  private readonly sendStart = new Int32Array(UDP_BATCH);
  private readonly sendCount = new Int32Array(UDP_BATCH);
  private readonly sendIov: IoVecList;
  private readonly sendAddrs: Uint8Array[] = [];
  private readonly hostReady = { onReady: (fd: number): void => this.fromHost(fd) };
  private readonly expireHandler = (id: number): void => this.dropFlow(id);
  private forwarded = 0;

  /**
   * `flows`: the table the client flows live in (the stack's, so they are
   * listed and bounded with every other flow; one of their own when not
   * given), whose clock is `now`.
   */
  constructor(
    private readonly watcher: FdWatcher,
    private readonly counters: CounterBlock,
    private readonly idleMs: number,
    private readonly now: () => number = () => performance.now(),
    private readonly flows: FlowTable = new FlowTable(MAX_UDP_FLOWS, counters),
  ) {
    for (let i = 0; i < UDP_BATCH; i++) {
      this.buffers.push(new Uint8Array(MAX_DATAGRAM));
      this.addrs.push(new Uint8Array(SOCKADDR_SLOT));
    }
    this.iov = { buffers: this.buffers, offsets: new Float64Array(UDP_BATCH), lengths: new Float64Array(UDP_BATCH).fill(MAX_DATAGRAM), count: UDP_BATCH };
    this.sendIov = { buffers: new Array<Uint8Array>(UDP_BATCH), offsets: new Float64Array(UDP_BATCH), lengths: new Float64Array(UDP_BATCH), count: 0 };
    for (let i = 0; i < UDP_BATCH; i++) {
      this.sendStart[i] = i;
      this.sendCount[i] = 1;
    }
    this.listenFdOf = new Int32Array(flows.capacity).fill(-1);
    flows.registerCloser(FlowKind.UdpForward, (id) => this.dropFlow(id));
    flows.registerEvictor(FlowKind.UdpForward, (id, at) => {
      if (!flows.halfOpenOrIdle(id, at, this.idleMs)) return false;
      this.dropFlow(id);
      return true;
    });
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
      this.dropFlowsOf(fd);
      this.listeners.delete(fd);
      this.watcher.unwatch(fd);
      native.close(fd);
    }
  }

  /** Client flows open now. */
  get flowCount(): number {
    return this.forwarded;
  }

  /** A batch from namespace clients: each datagram out of its flow's host socket. */
  private fromNamespace(listenFd: number): void {
    const listener = this.listeners.get(listenFd);
    if (listener === undefined) return;
    const n = native.recvmmsg(listenFd, this.iov, this.lengths, this.addrs, this.addrLengths, UDP_BATCH, 0);
    if (n <= 0) return;
    const now = this.now();
    const flows = this.flows;
    for (let i = 0; i < n; i++) {
      const id = this.flowFor(listenFd, listener, this.addrs[i], this.addrLengths[i], now);
      if (id === NO_FLOW) {
        this.counters.add(COUNTERS.udpDropped);
        continue;
      }
      flows.deadline[id] = now + this.idleMs;
      // Connected host socket: one send per datagram of this batch (different flows may interleave).
      let sent: number;
      try {
        sent = native.write(flows.fd[id], this.buffers[i], 0, this.lengths[i]);
      } catch {
        sent = -1; // ECONNREFUSED from an earlier datagram: nobody listens on the host port
      }
      if (sent >= 0) flows.bytesFromGuest[id] += sent;
      this.counters.add(sent < 0 ? COUNTERS.udpDropped : COUNTERS.udpDatagrams);
    }
  }

  /** The flow of the client `client` (a sockaddr of `length` bytes) on listener listenFd, opened when new; NO_FLOW when it cannot be. */
  private flowFor(listenFd: number, listener: Listener, client: Uint8Array, length: number, now: number): number {
    const family = listener.family;
    if (length < (family === 4 ? 16 : 24)) return NO_FLOW;
    const flows = this.flows;
    const at = sockaddrAddressOffset(family);
    const clientPort = sockaddrPortOf(client);
    const loopback = loopbackAddress(family);
    const port = listener.forward.listenPort;
    const existing = flows.lookup(FlowKind.UdpForward, family, client, at, clientPort, loopback, 0, port);
    if (existing !== NO_FLOW) return existing;
    if (this.forwarded >= MAX_UDP_FLOWS) {
      rateLimited('warn', 'pasta -U full', () => `pasta -U: more than ${MAX_UDP_FLOWS} client flows: datagram dropped`);
      return NO_FLOW;
    }
    const id = flows.allocate(FlowKind.UdpForward, family, client, at, clientPort, loopback, 0, port, 0, now);
    if (id === NO_FLOW) {
      rateLimited('warn', 'pasta -U table full', () => 'pasta -U: the flow table is full: datagram dropped');
      return NO_FLOW;
    }
    const c = native.constants;
    let hostFd = -1;
    try {
      hostFd = native.socket(family === 4 ? c.AF_INET : c.AF_INET6, c.SOCK_DGRAM, 0);
      native.connect(hostFd, loopbackSockaddr(family, listener.forward.targetPort));
    } catch (e) {
      if (hostFd >= 0) native.close(hostFd);
      flows.release(id);
      rateLimited('warn', 'pasta -U socket', () => `pasta -U: port ${port}: ${(e as Error).message}`);
      return NO_FLOW;
    }
    flows.setFd(id, hostFd);
    this.listenFdOf[id] = listenFd;
    this.clientOf[id] = client.slice(0, length);
    this.forwarded++;
    this.watcher.watch(hostFd, c.EPOLLIN, this.hostReady);
    return id;
  }

  /** A batch of replies on a host socket: back to the client through the namespace socket. */
  private fromHost(hostFd: number): void {
    const flows = this.flows;
    const id = flows.flowOfFd(hostFd);
    if (id === NO_FLOW || !flows.isLive(id, FlowKind.UdpForward)) return;
    const client = this.clientOf[id] as Uint8Array;
    let n: number;
    try {
      n = native.recvmmsg(hostFd, this.iov, this.lengths, null, null, UDP_BATCH, 0);
    } catch {
      // ICMP port unreachable from the host's loopback (ECONNREFUSED): nothing to relay.
      return;
    }
    if (n <= 0) return;
    flows.deadline[id] = this.now() + this.idleMs;
    const send = this.sendIov;
    const addrs = this.sendAddrs;
    addrs.length = n;
    for (let i = 0; i < n; i++) {
      send.buffers[i] = this.buffers[i];
      send.offsets[i] = 0;
      send.lengths[i] = this.lengths[i];
      addrs[i] = client;
    }
    send.count = n;
    let sent: number;
    try {
      sent = native.sendmmsg(this.listenFdOf[id], send, this.sendStart, this.sendCount, addrs, n, 0);
    } catch {
      sent = 0; // the client's port is gone (ECONNREFUSED and the like)
    }
    const delivered = Math.max(0, sent);
    for (let i = 0; i < delivered; i++) flows.bytesToGuest[id] += this.lengths[i];
    this.counters.add(COUNTERS.udpDatagrams, delivered);
    if (delivered < n) this.counters.add(COUNTERS.udpDropped, n - delivered);
  }

  /** Close flows idle for longer than the UDP timeout; call periodically. */
  expire(now = this.now()): void {
    if (this.forwarded === 0) return;
    this.flows.forEachDue(now, FlowKind.UdpForward, this.expireHandler);
  }

  /** Close one client flow: its host socket and its table entry. */
  private dropFlow(id: number): void {
    const flows = this.flows;
    if (!flows.isLive(id, FlowKind.UdpForward)) return;
    const fd = flows.fd[id];
    if (fd >= 0) {
      this.watcher.unwatch(fd);
      native.close(fd);
    }
    this.listenFdOf[id] = -1;
    this.clientOf[id] = undefined;
    flows.release(id);
    this.forwarded--;
  }

  /** Close the client flows of one namespace socket (every one when listenFd is -1). */
  private dropFlowsOf(listenFd: number): void {
    if (this.forwarded === 0) return;
    const flows = this.flows;
    for (let id = 0; id < flows.capacity; id++) {
      if (flows.isLive(id, FlowKind.UdpForward) && (listenFd < 0 || this.listenFdOf[id] === listenFd)) this.dropFlow(id);
    }
  }

  /** Close every socket. */
  close(): void {
    this.dropFlowsOf(-1);
    for (const fd of this.listeners.keys()) {
      this.watcher.unwatch(fd);
      native.close(fd);
    }
    this.listeners.clear();
  }
}
