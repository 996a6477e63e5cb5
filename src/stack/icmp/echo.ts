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
 * The table is small and bounded (ECHO_MAX_FLOWS slots, least recently used
 * evicted when full), laid out as parallel typed arrays indexed by slot
 * number so the TCP/UDP flow table can absorb it later. Flows idle for
 * ECHO_IDLE_MS are closed by expire().
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

/** Linux constants (the addon passes these through unchanged). */
const SOCK_DGRAM = 2;
const IPPROTO_ICMP = 1;
const IPPROTO_ICMPV6 = 58;
const SOL_SOCKET = 1;
const SO_BINDTODEVICE = 25;
const EPOLLIN = 0x001;

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
  // ---- the flow table: slot i is free when fd[i] === -1 ----
  readonly fd = new Int32Array(ECHO_MAX_FLOWS).fill(-1);
  readonly family = new Uint8Array(ECHO_MAX_FLOWS);
  readonly guestId = new Uint16Array(ECHO_MAX_FLOWS);
  readonly lastUsed = new Float64Array(ECHO_MAX_FLOWS);
  /** Destination as the guest sees it (the replies' source), 16 bytes per slot (IPv4 in the first 4). */
  readonly remote = new Uint8Array(ECHO_MAX_FLOWS * 16);
  /** The guest's source address (the replies' destination), 16 bytes per slot. */
  readonly guestAddress = new Uint8Array(ECHO_MAX_FLOWS * 16);
  /** Open flows. */
  count = 0;

  private readonly slotByFd = new Map<number, number>();
  private readonly deniedUntil = [0, 0]; // [IPv4, IPv6]
  private deniedLogged = false;
  private readonly sockaddr4 = new Uint8Array(SOCKADDR_IN_LENGTH);
  private readonly sockaddr6 = new Uint8Array(SOCKADDR_IN6_LENGTH);
  private readonly reply = new IcmpView();

  constructor(private readonly ctx: StackContext) {}

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
    let slot = this.find(packet.family, icmp.identifier, bytes, dst);
    if (slot < 0) {
      slot = this.open(packet, icmp.identifier, bytes, now);
      if (slot < 0) return false;
    }
    this.lastUsed[slot] = now;
    let sent: number;
    try {
      sent = sockets.write(this.fd[slot], bytes, icmp.offset, icmp.length);
    } catch (e) {
      rateLimited('warn', 'echo send', () => `icmp echo: send failed: ${errorCode(e)}`);
      sent = -1;
    }
    if (sent !== icmp.length) {
      countDrop(ctx.counters, DropReason.EchoSendFailed);
      return false;
    }
    return true;
  }

  /** Socket readiness: read replies and pass them to the guest. */
  onReady(fd: number, events: number): void {
    void events;
    const slot = this.slotByFd.get(fd);
    const sockets = this.ctx.sockets;
    if (slot === undefined || sockets === null) {
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
      this.deliver(slot, scratch, n);
    }
    this.lastUsed[slot] = this.ctx.clock.now();
    this.ctx.flush();
  }

  /** Close flows idle for longer than ECHO_IDLE_MS. */
  expire(now: number): void {
    if (this.count === 0) return;
    for (let slot = 0; slot < ECHO_MAX_FLOWS; slot++) {
      if (this.fd[slot] >= 0 && now - this.lastUsed[slot] > ECHO_IDLE_MS) this.closeSlot(slot);
    }
  }

  /** Close every socket. */
  close(): void {
    for (let slot = 0; slot < ECHO_MAX_FLOWS; slot++) if (this.fd[slot] >= 0) this.closeSlot(slot);
  }

  /** Slot of the flow (family, id, destination at bytes[dst]), or -1. */
  private find(family: number, id: number, bytes: Uint8Array, dst: number): number {
    if (this.count === 0) return -1;
    const addressLength = family === 6 ? 16 : 4;
    for (let slot = 0; slot < ECHO_MAX_FLOWS; slot++) {
      if (this.fd[slot] < 0 || this.family[slot] !== family || this.guestId[slot] !== id) continue;
      const base = slot * 16;
      let same = true;
      for (let i = 0; i < addressLength && same; i++) same = this.remote[base + i] === bytes[dst + i];
      if (same) return slot;
    }
    return -1;
  }

  /** A free slot, evicting the least recently used flow when the table is full. */
  private freeSlot(): number {
    let oldest = 0;
    for (let slot = 0; slot < ECHO_MAX_FLOWS; slot++) {
      if (this.fd[slot] < 0) return slot;
      if (this.lastUsed[slot] < this.lastUsed[oldest]) oldest = slot;
    }
    countDrop(this.ctx.counters, DropReason.EchoTableFull); // counts the evicted flow's loss
    this.closeSlot(oldest);
    return oldest;
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
    const slot = this.freeSlot();
    this.fd[slot] = fd;
    this.family[slot] = packet.family;
    this.guestId[slot] = id;
    this.lastUsed[slot] = now;
    const addressLength = v6 ? 16 : 4;
    const base = slot * 16;
    for (let i = 0; i < addressLength; i++) {
      this.remote[base + i] = bytes[packet.dstOffset + i];
      this.guestAddress[base + i] = bytes[packet.srcOffset + i];
    }
    this.slotByFd.set(fd, slot);
    this.count++;
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
    const v6 = this.family[slot] === 6;
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
    reply.identifier = this.guestId[slot];
    const base = slot * 16;
    const remote = this.remote.subarray(base, base + (v6 ? 16 : 4));
    const guest = this.guestAddress.subarray(base, base + (v6 ? 16 : 4));
    if (v6) {
      reply.fillChecksum(pseudoHeaderSumIpv6(remote, 0, guest, 0, IpProtocol.Icmpv6, n));
      ctx.finishIpv6(ctx.guestMac, remote, guest, IpProtocol.Icmpv6, n);
    } else {
      reply.fillChecksum();
      ctx.finishIpv4(ctx.guestMac, remote, guest, IpProtocol.Icmp, n);
    }
  }

  private closeSlot(slot: number): void {
    const fd = this.fd[slot];
    if (fd < 0) return;
    this.ctx.watcher?.unwatch(fd);
    closeSocketQuietly(this.ctx.sockets, fd);
    this.slotByFd.delete(fd);
    this.fd[slot] = -1;
    this.count--;
  }
}
