/**
 * ICMP and ICMPv6 echo from the guest, to any address, through the host's
 * unprivileged ping sockets (socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP) and
 * the ICMPv6 equivalent), as passt does.
 *
 * One connected ping socket per (family, guest identifier, destination)
 * flow. The kernel replaces the echo identifier by the socket's own "port"
 * on the way out, so replies come back with that one: they are mapped back
 * to the guest's identifier and re-checksummed. Echo to the address mapped
 * to the host's loopback (config.mapHostLoopback, the gateway by default)
 * goes to 127.0.0.1 / ::1; to config.mapGuestAddr, to the host's own address.
 * ferry's IPv6 link-local address (the router in its advertisements) counts
 * as the gateway.
 *
 * Echo flows live in the stack's flow table (kinds icmp and icmpv6; key:
 * guest address, echo identifier as the guest port, destination, port 0),
 * so the control API lists and closes them with every other flow; the
 * service keeps only its per-flow data (last use) in an array indexed by
 * flow id. A stack built without a table (no host sockets) gets a small one
 * of its own. At most ECHO_MAX_FLOWS echo flows are open (the least
 * recently used is closed for a new one); flows idle for ECHO_IDLE_MS are
 * closed by expire(); a full table may evict an echo flow that was never
 * answered or is idle (registerEvictor).
 *
 * When ping sockets are not allowed (net.ipv4.ping_group_range excludes our
 * group: socket() fails with EACCES), that is logged once with the fix, and
 * echo requests are dropped (socket creation is retried at most every
 * DENIED_RETRY_MS).
 *
 * The stack hands both ICMPv4 type 8 and ICMPv6 type 128 here (dispatch in
 * stack.ts parses ICMPv6 echo itself; NDP and friends go to the IPv6
 * control handler).
 */
import type { IpPacket, ReadyHandler, RxFrame, StackContext } from '../context';
import { IPV4_L4_OFFSET, IPV6_L4_OFFSET } from '../context';
import { ICMP_HEADER_LENGTH, IcmpType, IcmpView, Icmpv6EchoType } from '../wire/icmp';
import { IpProtocol } from '../wire/ipv4';
import { pseudoHeaderSumIpv6 } from '../wire/checksum';
import { DropReason, countDrop } from '../drops';
import { errorCode } from '../../sys/errno';
import { closeSocketQuietly } from '../../sys/close';
import { equalAt } from '../address';
import { AF_INET, AF_INET6, SOCKADDR_IN6_LENGTH, SOCKADDR_IN_LENGTH, writeSockaddrFamily } from '../../sys/sockaddr';
import { log, rateLimited } from '../../sys/log';
import { ADDRESS_SLOT, EVICTABLE_IDLE_MS, FlowKind, FlowTable, NO_FLOW, defineFlowStates } from '../flow/flow-table';
import { EPOLLIN, IPPROTO_ICMP, IPPROTO_ICMPV6, SOCK_DGRAM, SOL_SOCKET, SO_BINDTODEVICE } from '../../sys/linux';

/** Echo flows have one state: a socket is open for them. */
export const ECHO_FLOW_STATE_NAMES: readonly string[] = ['active'];
defineFlowStates(FlowKind.Icmp, 'icmp', ECHO_FLOW_STATE_NAMES);
defineFlowStates(FlowKind.Icmpv6, 'icmpv6', ECHO_FLOW_STATE_NAMES);

/** Bound on concurrent echo flows per worker. */
export const ECHO_MAX_FLOWS = 128;
/** Echo flows without traffic for this long are closed (passt uses 60 s too). */
export const ECHO_IDLE_MS = 60_000;
/** After EACCES from socket(), don't try again for this long. */
export const DENIED_RETRY_MS = 10_000;
/** Bound on replies read per readiness callback, so one flow cannot starve others. */
const READS_PER_WAKEUP = 32;
/** Largest ICMP message read from a ping socket. */
const MAX_ECHO_MESSAGE = 65535;

/** The echo service: forwards guest echo requests and their replies. One per stack. */
export class IcmpEchoService implements ReadyHandler {
  private flows: FlowTable | null = null;
  /** When each echo flow (by flow id) last carried a request or a reply. */
  private lastUsed = new Float64Array(0);
  private readonly closeHandler = (id: number): void => this.closeSlot(id);
  private readonly evictHandler = (id: number, now: number): boolean => this.evict(id, now);
  private readonly expireHandler = (id: number): void => this.expireFlow(id);
  private expireNow = 0;
  private readonly deniedUntil = [0, 0]; // [IPv4, IPv6]
  private deniedLogged = false;
  private readonly sockaddr4 = new Uint8Array(SOCKADDR_IN_LENGTH);
  private readonly sockaddr6 = new Uint8Array(SOCKADDR_IN6_LENGTH);
  private readonly reply = new IcmpView();

  constructor(private readonly ctx: StackContext) {}

  /**
   * Keep echo flows in `flows` (the stack's shared table) from now on;
   * flows in the table used so far are closed. Registers the echo kinds'
   * closer (the control API) and evictor there.
   */
  useFlowTable(flows: FlowTable): void {
    if (this.flows === flows) return;
    this.close();
    this.flows = flows;
    this.lastUsed = new Float64Array(flows.capacity);
    for (const kind of [FlowKind.Icmp, FlowKind.Icmpv6]) {
      flows.registerCloser(kind, this.closeHandler);
      flows.registerEvictor(kind, this.evictHandler);
    }
  }

  /** Open echo flows. */
  get count(): number {
    const flows = this.flows;
    return flows === null ? 0 : flows.countOf(FlowKind.Icmp) + flows.countOf(FlowKind.Icmpv6);
  }

  /** The table echo flows are in: the one given by useFlowTable, else a small one of the service's own. */
  private table(): FlowTable {
    if (this.flows === null) this.useFlowTable(new FlowTable(ECHO_MAX_FLOWS, this.ctx.counters));
    return this.flows as FlowTable;
  }

  /**
   * Forward one echo request (ICMPv4 type 8 or ICMPv6 type 128; whole frame
   * contiguous; checksum already checked). Returns true when it was sent.
   */
  handleRequest(frame: RxFrame, packet: IpPacket, icmp: IcmpView): boolean {
    const ctx = this.ctx;
    const sockets = ctx.sockets;
    if (sockets === null || ctx.watcher === null) {
      countDrop(ctx.counters, DropReason.EchoSocketUnavailable);
      return false;
    }
    if (icmp.code !== 0) {
      countDrop(ctx.counters, DropReason.IcmpMalformed, () => `echo request with code ${icmp.code}`);
      return false;
    }
    const bytes = frame.bytes;
    const v6 = packet.family === 6;
    const dst = packet.dstOffset;
    if (v6 ? bytes[dst] === 0xff : bytes[dst] >= 224) {
      countDrop(ctx.counters, DropReason.IcmpUnsupported); // multicast/broadcast echo
      return false;
    }
    const now = ctx.clock.now();
    const flows = this.table();
    let slot = flows.lookup(v6 ? FlowKind.Icmpv6 : FlowKind.Icmp, packet.family, bytes, packet.srcOffset, icmp.identifier, bytes, dst, 0);
    if (slot === NO_FLOW) {
      slot = this.open(packet, icmp.identifier, bytes, now);
      if (slot < 0) return false;
    }
    this.touch(slot, now);
    let sent: number;
    try {
      sent = sockets.write(flows.fd[slot], bytes, icmp.offset, icmp.length);
    } catch (e) {
      rateLimited('warn', 'echo send', () => `icmp echo: send failed: ${errorCode(e)}`);
      sent = -1;
    }
    if (sent !== icmp.length) {
      countDrop(ctx.counters, DropReason.EchoSendFailed);
      return false;
    }
    flows.bytesFromGuest[slot] += sent;
    return true;
  }

  /** Socket readiness: read replies and pass them to the guest. */
  onReady(fd: number, events: number): void {
    void events;
    const flows = this.flows;
    const slot = flows === null ? NO_FLOW : flows.flowOfFd(fd);
    const sockets = this.ctx.sockets;
    if (flows === null || slot === NO_FLOW || !isEcho(flows, slot) || sockets === null) {
      this.ctx.watcher?.unwatch(fd);
      return;
    }
    const scratch = this.ctx.scratch;
    for (let i = 0; i < READS_PER_WAKEUP; i++) {
      let n: number;
      try {
        n = sockets.read(fd, scratch, 0, MAX_ECHO_MESSAGE);
      } catch (e) {
        // An ICMP error reported on the connected socket (e.g. EHOSTUNREACH):
        // reading consumed it; the guest's ping simply times out.
        log.debug(`icmp echo: socket error ${errorCode(e)}`);
        continue;
      }
      if (n < 0) break;
      flows.bytesToGuest[slot] += n;
      this.deliver(slot, scratch, n);
    }
    this.touch(slot, this.ctx.clock.now());
    this.ctx.flush();
  }

  /** Close flows idle for longer than ECHO_IDLE_MS. */
  expire(now: number): void {
    const flows = this.flows;
    if (flows === null || this.count === 0) return;
    this.expireNow = now;
    flows.forEachDue(now, FlowKind.Icmp, this.expireHandler);
    flows.forEachDue(now, FlowKind.Icmpv6, this.expireHandler);
  }

  /** Close every socket. */
  close(): void {
    const flows = this.flows;
    if (flows === null || this.count === 0) return;
    for (let id = 0; id < flows.capacity; id++) if (isEcho(flows, id)) this.closeSlot(id);
  }

  /** Record use of flow id at now (its idle deadline moves with it). */
  private touch(id: number, now: number): void {
    this.lastUsed[id] = now;
    (this.flows as FlowTable).deadline[id] = now + ECHO_IDLE_MS;
  }

  private expireFlow(id: number): void {
    if (this.expireNow - this.lastUsed[id] > ECHO_IDLE_MS) this.closeSlot(id);
  }

  /** The table is full: give up an echo flow never answered or idle for EVICTABLE_IDLE_MS. */
  private evict(id: number, now: number): boolean {
    const flows = this.flows as FlowTable;
    if (flows.bytesToGuest[id] > 0 && now - this.lastUsed[id] < EVICTABLE_IDLE_MS) return false;
    this.closeSlot(id);
    return true;
  }

  /** Make room for a new echo flow past ECHO_MAX_FLOWS: close the least recently used one (a scan, only then). */
  private closeLeastRecentlyUsed(): void {
    const flows = this.flows as FlowTable;
    let oldest = NO_FLOW;
    for (let id = 0; id < flows.capacity; id++) {
      if (isEcho(flows, id) && (oldest === NO_FLOW || this.lastUsed[id] < this.lastUsed[oldest])) oldest = id;
    }
    if (oldest === NO_FLOW) return;
    countDrop(this.ctx.counters, DropReason.EchoTableFull); // counts the evicted flow's loss
    this.closeSlot(oldest);
  }

  /** Open a ping socket for a new flow; returns its slot or -1 (drop counted). */
  private open(packet: IpPacket, id: number, bytes: Uint8Array, now: number): number {
    const ctx = this.ctx;
    const sockets = ctx.sockets!;
    const v6 = packet.family === 6;
    const familyIndex = v6 ? 1 : 0;
    if (now < this.deniedUntil[familyIndex]) {
      countDrop(ctx.counters, DropReason.EchoSocketUnavailable);
      return -1;
    }
    const sockaddr = this.destinationSockaddr(packet, bytes);
    if (sockaddr === null) {
      countDrop(ctx.counters, DropReason.EchoSocketUnavailable);
      return -1;
    }
    let fd: number;
    try {
      fd = sockets.socket(v6 ? AF_INET6 : AF_INET, SOCK_DGRAM, v6 ? IPPROTO_ICMPV6 : IPPROTO_ICMP);
    } catch (e) {
      const code = errorCode(e);
      if (code === 'EACCES' || code === 'EPERM') {
        this.deniedUntil[familyIndex] = now + DENIED_RETRY_MS;
        if (!this.deniedLogged) {
          this.deniedLogged = true;
          log.warn(
            'icmp echo: the kernel refuses ping sockets to this group (net.ipv4.ping_group_range); ' +
              'guest pings are dropped. Allow them with: sysctl -w net.ipv4.ping_group_range="0 2147483647"',
          );
        }
      } else {
        rateLimited('warn', 'echo socket', () => `icmp echo: socket() failed: ${code}`);
      }
      countDrop(ctx.counters, DropReason.EchoSocketUnavailable);
      return -1;
    }
    try {
      if (ctx.config.interfaceName !== null) this.bindToDevice(fd, ctx.config.interfaceName);
      sockets.connect(fd, sockaddr);
    } catch (e) {
      rateLimited('warn', 'echo connect', () => `icmp echo: connect failed: ${errorCode(e)}`);
      closeSocketQuietly(this.ctx.sockets, fd);
      countDrop(ctx.counters, DropReason.EchoSendFailed);
      return -1;
    }
    if (this.count >= ECHO_MAX_FLOWS) this.closeLeastRecentlyUsed();
    const flows = this.table();
    const slot = flows.allocate(v6 ? FlowKind.Icmpv6 : FlowKind.Icmp, packet.family, bytes, packet.srcOffset, id, bytes, packet.dstOffset, 0, 0, now);
    if (slot === NO_FLOW) {
      closeSocketQuietly(this.ctx.sockets, fd);
      countDrop(ctx.counters, DropReason.EchoTableFull);
      return -1;
    }
    flows.setFd(slot, fd);
    this.touch(slot, now);
    ctx.watcher!.watch(fd, EPOLLIN, this);
    return slot;
  }

  /** SO_BINDTODEVICE to the outbound interface; a failure is logged once per reason and ignored. */
  private bindToDevice(fd: number, name: string): void {
    try {
      this.ctx.sockets!.setsockoptBytes(fd, SOL_SOCKET, SO_BINDTODEVICE, Buffer.from(name + '\0', 'latin1'));
    } catch (e) {
      rateLimited('warn', 'echo bind', () => `icmp echo: SO_BINDTODEVICE ${name}: ${errorCode(e)}`, 1, 600_000);
    }
  }

  /**
   * The host address an echo to the guest's destination goes to, as a
   * sockaddr (reused buffer), or null when it cannot be reached (IPv6
   * link-local other than the mapped gateway: no scope to send it on).
   * ferry's own IPv6 link-local address is the router the guest learnt from
   * the router advertisement, i.e. its view of the gateway: echo to it is
   * echo to the gateway (and follows the gateway's mapping).
   */
  private destinationSockaddr(packet: IpPacket, bytes: Uint8Array): Uint8Array | null {
    const dst = packet.dstOffset;
    if (packet.family === 4) {
      const ipv4 = this.ctx.config.ipv4!;
      const sa = this.sockaddr4;
      sa.fill(0);
      writeSockaddrFamily(sa, AF_INET);
      if (ipv4.mapHostLoopback !== null && equalAt(bytes, dst, ipv4.mapHostLoopback, 4)) {
        sa[4] = 127;
        sa[7] = 1;
      } else if (ipv4.mapGuestAddr !== null && equalAt(bytes, dst, ipv4.mapGuestAddr, 4)) {
        sa.set(ipv4.address.subarray(0, 4), 4);
      } else {
        for (let i = 0; i < 4; i++) sa[4 + i] = bytes[dst + i];
      }
      return sa;
    }
    const ipv6 = this.ctx.config.ipv6!;
    const sa = this.sockaddr6;
    sa.fill(0);
    writeSockaddrFamily(sa, AF_INET6);
    let target = bytes;
    let at = dst;
    if (equalAt(bytes, dst, ipv6.linkLocal, 16)) {
      target = ipv6.gateway;
      at = 0;
    }
    if (ipv6.mapHostLoopback !== null && equalAt(target, at, ipv6.mapHostLoopback, 16)) {
      sa[8 + 15] = 1;
    } else if (ipv6.mapGuestAddr !== null && equalAt(target, at, ipv6.mapGuestAddr, 16)) {
      sa.set(ipv6.address.subarray(0, 16), 8);
    } else if (target[at] === 0xfe && (target[at + 1] & 0xc0) === 0x80) {
      return null;
    } else {
      for (let i = 0; i < 16; i++) sa[8 + i] = target[at + i];
    }
    return sa;
  }

  /** Turn one reply read from slot's socket (message[0, n)) into a frame to the guest. */
  private deliver(slot: number, message: Uint8Array, n: number): void {
    const ctx = this.ctx;
    const flows = this.flows as FlowTable;
    const v6 = flows.family[slot] === 6;
    if (n < ICMP_HEADER_LENGTH || message[0] !== (v6 ? Icmpv6EchoType.EchoReply : IcmpType.EchoReply)) return;
    if (v6 ? ctx.config.ipv6 === null : ctx.config.ipv4 === null) return;
    const l4 = v6 ? IPV6_L4_OFFSET : IPV4_L4_OFFSET;
    if (ctx.openFrame(l4 + n) < l4 + n) {
      ctx.cancelFrame();
      countDrop(ctx.counters, DropReason.NoGuestBuffers);
      return;
    }
    const out = ctx.out;
    const at = ctx.outOffset + l4;
    out.set(message.subarray(0, n), at);
    const reply = this.reply.reset(out, at, n);
    reply.identifier = flows.guestPort[slot];
    const base = slot * ADDRESS_SLOT;
    const remote = flows.remoteAddress.subarray(base, base + (v6 ? 16 : 4));
    const guest = flows.guestAddress.subarray(base, base + (v6 ? 16 : 4));
    if (v6) {
      reply.fillChecksum(pseudoHeaderSumIpv6(remote, 0, guest, 0, IpProtocol.Icmpv6, n));
      ctx.finishIpv6(ctx.guestMac, remote, guest, IpProtocol.Icmpv6, n);
    } else {
      reply.fillChecksum();
      ctx.finishIpv4(ctx.guestMac, remote, guest, IpProtocol.Icmp, n);
    }
  }

  /** Close echo flow `slot`: its socket, then its table entry. */
  private closeSlot(slot: number): void {
    const flows = this.flows;
    if (flows === null || !isEcho(flows, slot)) return;
    const fd = flows.fd[slot];
    if (fd >= 0) {
      this.ctx.watcher?.unwatch(fd);
      closeSocketQuietly(this.ctx.sockets, fd);
    }
    flows.release(slot);
  }
}

/** True when flow id is an echo flow in use. */
function isEcho(flows: FlowTable, id: number): boolean {
  return flows.isLive(id, FlowKind.Icmp) || flows.isLive(id, FlowKind.Icmpv6);
}
