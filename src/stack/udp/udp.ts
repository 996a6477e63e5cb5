/**
 * UDP between the guest and the world through ordinary host sockets, in
 * passt's way (no NAT: the guest has the host's addresses). This file is
 * the public face (UdpService); the work is done by plain functions over
 * one UdpFlows object (state.ts) in the modules beside it:
 *
 * - outbound.ts: the first datagram from a guest (address, port) to a
 *   (destination, port) opens a flow with its own connected host socket,
 *   bound to the guest's source port when the host allows it; the
 *   destination is mapped by flow/address-map.ts (the --map-host-loopback
 *   address, the gateway by default, to 127.0.0.1 / ::1; --map-guest-addr
 *   to the host's address; --dns-forward port 53 to --dns-host port 53).
 *   Replies reach the guest from the address and port it used, so DNS
 *   answers come from the --dns-forward address and loopback services
 *   from the gateway.
 * - inbound.ts (-u/--udp-ports): a bound socket per forwarded host port
 *   and family; a datagram creates (or reuses) a flow to the guest's mapped
 *   port, from the sender's real address (loopback senders appear as the
 *   gateway), and the guest's replies are sent back from the forwarded port
 *   to the original sender (sendmsg with its address on the bound socket).
 * - guest-to-host.ts: the payload goes from guest memory straight into
 *   sendmsg iovecs (views over the TX frame's SegmentList), one sendmsg per
 *   datagram.
 * - host-to-guest.ts: recvmmsg into scratch slots for small datagrams
 *   (then one copy each into its RX reservation), recvmsg straight into the
 *   RX reservation for large ones; headers written in place afterwards;
 *   one guest notification per readiness callback. With no RX buffers the
 *   socket's EPOLLIN is disarmed until port.onWritable.
 * - icmp-relay.ts: errors from the sockets' error queues become ICMP
 *   errors to the guest quoting a datagram rebuilt from the flow.
 *
 * Fragments: the stack's dispatch reassembles IPv4 and IPv6 fragments from
 * the guest within bounded memory (src/stack/reassembly/) and hands UDP
 * the whole datagram, which goes out in one send (the host kernel
 * fragments it again for its own path MTU).
 *
 * Flows live in the worker's shared FlowTable (flow-table.ts; protocol 17,
 * states 'outbound' and 'inbound'), with UDP's own per-flow arrays indexed
 * by flow id. An idle flow (no datagram either way for config.udpIdleMs)
 * is closed by onTimer(); the table's size bounds UDP flows (--max-flows),
 * refusals counted in ferry_flows_refused_total{protocol="udp"}. Nothing
 * is allocated per datagram except the short-lived views of the batched
 * path's copy (SegmentList.copyIn).
 */
import type { Native } from '../../sys/native';
import type { IpPacket, ReadyHandler, RxFrame, StackContext } from '../context';
import type { ForwardSpec } from '../flow/forward-spec';
import type { ListenError, ListenerInfo } from '../tcp/listen';
import { FlowProtocol, FlowTable, NO_FLOW } from '../flow/flow-table';
import { closeSocketQuietly } from '../../sys/close';
import { EPOLLERR, EPOLLIN, UdpEvent, UdpFlows, type UdpSockets, closeFlow, flush } from './state';
import { fromGuest } from './guest-to-host';
import { closeListeners, listenTagged } from './inbound';
import { readSocket, resumeReading } from './host-to-guest';
import { drainErrors } from './icmp-relay';
import { addWritableListener } from '../l4/guest-frame';

export { BATCH_SLOTS, COPY_THRESHOLD, ERRORS_PER_WAKEUP, MAX_LISTENERS, READS_PER_WAKEUP, UDP_FLOW_STATE_NAMES, UdpEvent, UdpFlowState, type UdpSockets } from './state';

/** Options of UdpService. */
export interface UdpServiceOptions {
  /** Addon calls (default: the real addon). */
  sockets?: UdpSockets;
  /** The worker's flow table shared with TCP/ICMP (default: a table of config.maxFlows). */
  flows?: FlowTable;
}

/**
 * The UDP translator: one per stack (worker). Install as the stack's
 * udpHandler, open inbound forwards with listen(), call onTimer()
 * periodically and close() at the end.
 */
export class UdpService implements ReadyHandler {
  readonly flows: FlowTable;
  private readonly u: UdpFlows;
  private readonly expireHandler = (id: number): void => this.expireFlow(id);

  constructor(private readonly ctx: StackContext, options: UdpServiceOptions = {}) {
    // eslint-disable-next-line @typescript-eslint/no-require-imports -- the addon loads only without injected sockets (unit tests run without it)
    const sockets = options.sockets ?? (require('../../sys/native') as { native: Native }).native;
    this.flows = options.flows ?? new FlowTable(Math.max(1, ctx.config.maxFlows), ctx.counters);
    this.u = new UdpFlows(ctx, sockets, this.flows, this);
    this.flows.registerCloser(FlowProtocol.Udp, (id) => this.closeFlow(id));
    // A full table gives up half-open or idle UDP flows: a flood through -u must not lock the guest out.
    this.flows.registerEvictor(FlowProtocol.Udp, (id, now) => {
      if (!this.flows.halfOpenOrIdle(id, now, ctx.config.udpIdleMs)) return false;
      this.closeFlow(id);
      return true;
    });
    // Resume reading when the guest posts RX buffers (after TCP, when it was there first).
    addWritableListener(ctx.port, () => this.onWritable());
  }

  /** UDP flows in use. */
  get flowCount(): number {
    return this.flows.countOf(FlowProtocol.Udp);
  }

  /** Listening sockets open for inbound forwards. */
  get listenerTotal(): number {
    return this.u.listenerByFd.size;
  }

  /**
   * TransportHandler: one UDP datagram from the guest (the stack validated
   * the header and the length field; DHCP was taken before). Sends it on
   * the flow's socket; drops are counted.
   */
  handle(ctx: StackContext, frame: RxFrame, packet: IpPacket): void {
    void ctx;
    try {
      fromGuest(this.u, frame, packet);
    } finally {
      flush(this.u);
    }
  }

  /**
   * Open listening sockets for -u specs: one per forwarded host port and
   * family (the spec's bind address picks the family, else both enabled
   * ones, IPv6 with V6ONLY). Ports that cannot be bound are logged (one
   * line per spec) and skipped. Returns the number of sockets opened.
   */
  listen(specs: readonly ForwardSpec[]): number {
    return listenTagged(this.u, specs, 0).opened;
  }

  /**
   * listen() with the sockets marked `tag` (for closeListeners), returning
   * the sockets opened and, for specs that are not best-effort, what
   * could not be bound.
   */
  listenTagged(specs: readonly ForwardSpec[], tag: number): { opened: number; errors: ListenError[] } {
    return listenTagged(this.u, specs, tag);
  }

  /**
   * Close the listening sockets `match` selects, and the inbound flows
   * that use them (their replies would go out on those sockets). Returns
   * how many sockets were closed.
   */
  closeListeners(match: (listener: ListenerInfo) => boolean): number {
    return closeListeners(this.u, match);
  }

  /** Socket readiness: errors from the error queue first, then datagrams to the guest. */
  onReady(fd: number, events: number): void {
    const listener = this.u.listenerByFd.get(fd);
    let id = NO_FLOW;
    if (listener === undefined) {
      id = this.flows.flowOfFd(fd);
      if (!this.flows.isLive(id, FlowProtocol.Udp)) {
        this.ctx.watcher?.unwatch(fd);
        return;
      }
    }
    try {
      if ((events & EPOLLERR) !== 0) drainErrors(this.u, fd, listener ?? -1, id);
      if ((events & EPOLLIN) !== 0) readSocket(this.u, fd, listener ?? -1, id);
    } finally {
      flush(this.u);
    }
  }

  /** The guest posted RX buffers: the backlog first, then every paused socket is re-armed. */
  onWritable(): void {
    resumeReading(this.u);
  }

  /** Close UDP flows idle for config.udpIdleMs; call every STACK_TIMER_INTERVAL_MS. */
  onTimer(now = this.ctx.clock.now()): void {
    if (this.flows.countOf(FlowProtocol.Udp) === 0) return;
    this.flows.forEachDue(now, FlowProtocol.Udp, this.expireHandler);
  }

  private expireFlow(id: number): void {
    this.ctx.counters.add(UdpEvent.FlowExpired);
    closeFlow(this.u, id);
  }

  /** Close one flow (its socket, unless it shares a listener's). */
  closeFlow(id: number): void {
    closeFlow(this.u, id);
  }

  /** Close every UDP flow and listening socket. */
  close(): void {
    const u = this.u;
    for (let id = 0; id < this.flows.capacity; id++) closeFlow(u, id);
    for (let i = 0; i < u.listenerCount; i++) {
      const fd = u.listenerFd[i];
      if (fd < 0) continue;
      this.ctx.watcher?.unwatch(fd);
      u.blocked.delete(fd);
      closeSocketQuietly(u.sockets, fd);
    }
    u.listenerByFd.clear();
    u.listenerCount = 0;
    u.freeListenerSlots.length = 0;
    u.blocked.clear();
    u.backlogHead = 0;
    u.backlogTail = 0;
  }
}
