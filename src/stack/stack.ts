/**
 * The stack's entry point: `Stack` consumes guest frames (FrameSink),
 * parses Ethernet / ARP / IPv4 / IPv6 with the wire views and dispatches:
 *
 *   ARP                       -> l2/arp.ts (answered for every address but the guest's)
 *   IPv4 UDP to port 67       -> l2/dhcp.ts
 *   ICMP echo request         -> icmp/echo.ts (IPv4 type 8 and IPv6 type 128:
 *                                the stack parses ICMPv6 echo itself)
 *   other ICMPv6              -> ipv6Control.handleIcmpv6 (l2/ndp.ts: NDP, RS, ...)
 *   IPv6 UDP to port 547      -> ipv6Control.handleDhcpv6 (l2/dhcpv6.ts)
 *   TCP / other UDP           -> tcpHandler / udpHandler (tcp/, udp/)
 *   IPv4/IPv6 fragments       -> reassembly/, then dispatched whole
 *
 * Anything malformed is counted (ferry_stack_drops_total{reason}) and
 * dropped with a rate-limited log line; nothing from the guest throws.
 */
import type { FrameSink, OffloadInfo, SegmentList } from '../io/frame-io';
import { IpPacket, RxFrame, StackContext, type StackContextOptions } from './context';
import { ETHERNET_HEADER_LENGTH, EtherType, EthernetView } from './wire/ethernet';
import { IPV4_HEADER_LENGTH, IpProtocol, Ipv4Error } from './wire/ipv4';
import { IPV6_HEADER_LENGTH, Ipv6Error } from './wire/ipv6';
import { UDP_HEADER_LENGTH, UdpError, UdpView } from './wire/udp';
import { IcmpError, IcmpType, IcmpView, Icmpv6EchoType } from './wire/icmp';
import { TCP_HEADER_LENGTH } from './wire/tcp';
import { pseudoHeaderSumIpv4, pseudoHeaderSumIpv6 } from './wire/checksum';
import { DropReason, countDrop } from './drops';
import { handleArp } from './l2/arp';
import { DHCP_SERVER_PORT, handleDhcp } from './l2/dhcp';
import { IcmpEchoService } from './icmp/echo';
import type { Ipv6ControlHandler, TransportHandler } from './handlers';
import { DEFAULT_REASSEMBLY_LIMITS, FragmentOutcome, NO_OFFLOAD, Reassembler } from './reassembly/reassembly';

export type { Ipv6ControlHandler, TransportHandler };

/** DHCPv6 server port (RFC 8415). */
export const DHCPV6_SERVER_PORT = 547;

/** What a Stack is built from: the context's parts plus optional protocol handlers. */
export interface StackOptions extends StackContextOptions {
  ipv6Control?: Ipv6ControlHandler | null;
  tcpHandler?: TransportHandler | null;
  udpHandler?: TransportHandler | null;
}

/** How often the worker should call Stack.onTimer (idle flow expiry). */
export const STACK_TIMER_INTERVAL_MS = 1000;

const IPV4_ERROR_DROPS: readonly DropReason[] = [
  DropReason.InternalError, // Ok: never used
  DropReason.Ipv4Truncated,
  DropReason.Ipv4BadVersion,
  DropReason.Ipv4BadIhl,
  DropReason.Ipv4BadTotalLength,
  DropReason.Ipv4BadChecksum,
];

const IPV6_ERROR_DROPS: readonly DropReason[] = [
  DropReason.InternalError, // Ok: never used
  DropReason.Ipv6Truncated,
  DropReason.Ipv6BadVersion,
  DropReason.Ipv6BadPayloadLength,
  DropReason.Ipv6ExtensionTruncated,
  DropReason.Ipv6TooManyExtensions,
];

/** One per worker: parses guest frames and dispatches them to protocol handlers. */
export class Stack implements FrameSink {
  readonly ctx: StackContext;
  ipv6Control: Ipv6ControlHandler | null;
  tcpHandler: TransportHandler | null;
  udpHandler: TransportHandler | null;
  readonly echo: IcmpEchoService;
  /** false with --no-icmp: echo requests are dropped (counted as icmp_unsupported), NDP still works. */
  echoEnabled = true;

  private readonly frame: RxFrame;
  private disposed = false;
  private readonly ethernet = new EthernetView();
  private readonly packet = new IpPacket();
  private readonly udp = new UdpView();
  private readonly icmp = new IcmpView();
  /** Fragments from the guest, put back together (reassembly/reassembly.ts). */
  readonly reassembly = new Reassembler(DEFAULT_REASSEMBLY_LIMITS, (reason) => this.drop(reason));

  /** Build over new context options, or over an existing StackContext (handlers then set as properties). */
  constructor(options: StackOptions | StackContext) {
    if (options instanceof StackContext) {
      this.ctx = options;
      this.ipv6Control = null;
      this.tcpHandler = null;
      this.udpHandler = null;
    } else {
      this.ctx = new StackContext(options);
      this.ipv6Control = options.ipv6Control ?? null;
      this.tcpHandler = options.tcpHandler ?? null;
      this.udpHandler = options.udpHandler ?? null;
    }
    this.frame = new RxFrame(this.ctx.rxScratch);
    this.echo = new IcmpEchoService(this.ctx);
  }

  /** FrameSink: one Ethernet frame from the guest; replies are flushed before returning. */
  receiveFrame(segments: SegmentList, offload: OffloadInfo): void {
    if (this.disposed) return;
    try {
      this.dispatch(segments, offload);
    } catch (e) {
      // A bug, not guest input: count it and keep the worker alive.
      this.ctx.cancelFrame();
      countDrop(this.ctx.counters, DropReason.InternalError, () => String(e instanceof Error ? e.stack ?? e.message : e));
    } finally {
      this.frame.end();
    }
    this.ctx.flush();
  }

  /** Periodic work (expire idle echo flows); call every STACK_TIMER_INTERVAL_MS. */
  onTimer(now = this.ctx.clock.now()): void {
    if (this.disposed) return;
    this.echo.expire(now);
    this.reassembly.expire(now);
    this.tcpHandler?.onTimer?.(now);
    if (this.udpHandler !== this.tcpHandler) this.udpHandler?.onTimer?.(now);
    if (this.ipv6Control !== null && this.ipv6Control.onTimer !== undefined) this.ipv6Control.onTimer(this.ctx, now);
    this.ctx.flush();
  }

  /** Publish frames committed outside receiveFrame (e.g. from socket handlers). */
  flush(): void {
    this.ctx.flush();
  }

  /** Close host sockets owned by the stack. */
  close(): void {
    this.echo.close();
    this.tcpHandler?.close?.();
    if (this.udpHandler !== this.tcpHandler) this.udpHandler?.close?.();
  }

  /**
   * The end of this stack: close its sockets (each closing step runs even if
   * an earlier one throws) and drop its handlers, so that frames or timer
   * ticks that still arrive go nowhere. Idempotent.
   */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    const steps = [(): void => this.echo.close(), (): void => this.tcpHandler?.close?.(), (): void => {
      if (this.udpHandler !== this.tcpHandler) this.udpHandler?.close?.();
    }];
    let failure: unknown = null;
    for (const step of steps) {
      try {
        step();
      } catch (e) {
        failure ??= e;
      }
    }
    this.ctx.cancelFrame();
    this.tcpHandler = null;
    this.udpHandler = null;
    this.ipv6Control = null;
    if (failure !== null) throw failure;
  }

  /** True once dispose() ran. */
  get isDisposed(): boolean {
    return this.disposed;
  }

  private drop(reason: DropReason, detail?: () => string): void {
    countDrop(this.ctx.counters, reason, detail);
  }

  private dispatch(segments: SegmentList, offload: OffloadInfo): void {
    const frame = this.frame;
    if (!frame.begin(segments, offload) || !frame.ensure(ETHERNET_HEADER_LENGTH)) {
      this.drop(DropReason.EthernetTruncated, () => `frame of ${frame.length} bytes`);
      return;
    }
    const eth = this.ethernet.reset(frame.bytes, frame.base, frame.length);
    this.ctx.learnGuestMac(frame.bytes, eth.srcOffset);
    const l3 = eth.payloadOffset;
    const l3Length = frame.length - ETHERNET_HEADER_LENGTH;
    switch (eth.etherType) {
      case EtherType.Arp:
        if (!frame.ensureWhole()) {
          this.drop(DropReason.SplitHeadersTooLong);
          return;
        }
        handleArp(this.ctx, frame, l3, l3Length);
        return;
      case EtherType.Ipv4:
        this.dispatchIpv4(l3, l3Length);
        return;
      case EtherType.Ipv6:
        this.dispatchIpv6(l3, l3Length);
        return;
      default:
        this.drop(DropReason.UnsupportedEtherType);
    }
  }

  private dispatchIpv4(l3: number, l3Length: number): void {
    const frame = this.frame;
    const packet = this.packet;
    if (this.ctx.config.ipv4 === null) {
      this.drop(DropReason.FamilyDisabled);
      return;
    }
    if (!frame.ensure(Math.min(frame.length, ETHERNET_HEADER_LENGTH + 60)) || l3Length < IPV4_HEADER_LENGTH) {
      this.drop(DropReason.Ipv4Truncated);
      return;
    }
    const ip = packet.ipv4.reset(frame.bytes, l3, l3Length);
    const error = ip.validate();
    if (error !== Ipv4Error.Ok) {
      this.drop(IPV4_ERROR_DROPS[error], () => `IPv4 ${Ipv4Error[error]}`);
      return;
    }
    if (ip.isFragment) {
      this.reassembled(this.reassembly.addIpv4(frame, ip, this.ctx.clock.now()));
      return;
    }
    packet.family = 4;
    packet.protocol = ip.protocol;
    packet.l4Offset = ip.payloadOffset;
    packet.l4Length = ip.payloadLength;
    this.dispatchL4();
  }

  private dispatchIpv6(l3: number, l3Length: number): void {
    const frame = this.frame;
    const packet = this.packet;
    if (this.ctx.config.ipv6 === null) {
      this.drop(DropReason.FamilyDisabled);
      return;
    }
    if (!frame.ensure(Math.min(frame.length, ETHERNET_HEADER_LENGTH + IPV6_HEADER_LENGTH)) || l3Length < IPV6_HEADER_LENGTH) {
      this.drop(DropReason.Ipv6Truncated);
      return;
    }
    const ip = packet.ipv6.reset(frame.bytes, l3, l3Length);
    let error = ip.validate();
    if (error === Ipv6Error.Ok) {
      const next = ip.nextHeader;
      // Extension headers may be long: walk them over the whole frame.
      if (next !== IpProtocol.Tcp && next !== IpProtocol.Udp && next !== IpProtocol.Icmpv6 && !frame.ensureWhole()) {
        this.drop(DropReason.SplitHeadersTooLong);
        return;
      }
      error = ip.findUpperLayer();
    }
    if (error !== Ipv6Error.Ok) {
      this.drop(IPV6_ERROR_DROPS[error], () => `IPv6 ${Ipv6Error[error]}`);
      return;
    }
    if (ip.fragmented) {
      if (!frame.ensure(Math.min(frame.length, ETHERNET_HEADER_LENGTH + IPV6_HEADER_LENGTH + 8))) this.drop(DropReason.Ipv6Truncated);
      else this.reassembled(this.reassembly.addIpv6(frame, ip, this.ctx.clock.now()));
      return;
    }
    packet.family = 6;
    packet.protocol = ip.upperProtocol;
    packet.l4Offset = ip.upperOffset;
    packet.l4Length = ip.upperLength;
    this.dispatchL4();
  }

  /** A fragment was given to reassembly: count its drop, or dispatch the datagram it completed as a frame of its own. */
  private reassembled(outcome: FragmentOutcome): void {
    if (outcome === FragmentOutcome.Dropped) this.drop(this.reassembly.dropReason);
    else if (outcome === FragmentOutcome.Complete) this.dispatch(this.reassembly.datagram, NO_OFFLOAD);
  }

  /** Route by upper-layer protocol (shared by both families). */
  private dispatchL4(): void {
    switch (this.packet.protocol) {
      case IpProtocol.Udp:
        this.dispatchUdp();
        return;
      case IpProtocol.Tcp:
        this.dispatchTcp();
        return;
      case IpProtocol.Icmp:
        if (this.packet.family === 4) this.dispatchIcmp();
        else this.drop(DropReason.NoHandler);
        return;
      case IpProtocol.Icmpv6:
        if (this.packet.family === 6) this.dispatchIcmp();
        else this.drop(DropReason.NoHandler);
        return;
      default:
        this.drop(DropReason.NoHandler);
    }
  }

  private dispatchUdp(): void {
    const frame = this.frame;
    const packet = this.packet;
    const l4End = packet.l4Offset - frame.base + UDP_HEADER_LENGTH;
    if (!frame.ensure(Math.min(frame.length, l4End))) {
      this.drop(DropReason.UdpMalformed, () => 'truncated UDP header');
      return;
    }
    const udp = this.udp.reset(frame.bytes, packet.l4Offset, packet.l4Length);
    let error = udp.validate(null);
    if (error !== UdpError.Ok) {
      this.drop(DropReason.UdpMalformed, () => `UDP ${UdpError[error]}`);
      return;
    }
    const dstPort = udp.dstPort;
    const control = (packet.family === 4 && dstPort === DHCP_SERVER_PORT && this.ctx.config.dhcp) || (packet.family === 6 && dstPort === DHCPV6_SERVER_PORT && this.ipv6Control !== null);
    if (control) {
      if (!frame.ensureWhole()) {
        this.drop(DropReason.SplitHeadersTooLong);
        return;
      }
      if (!frame.checksumPartial) {
        // RFC 8200 8.1: a zero UDP checksum is invalid over IPv6.
        error = udp.validate(udpPseudoSum(packet, frame.bytes, udp.udpLength), packet.family === 4);
        if (error !== UdpError.Ok) {
          this.drop(DropReason.UdpBadChecksum);
          return;
        }
      }
      if (packet.family === 4) {
        handleDhcp(this.ctx, frame, packet, udp);
        return;
      }
      if (this.ipv6Control !== null && this.ipv6Control.handleDhcpv6(this.ctx, frame, packet, udp)) return;
    }
    if (this.udpHandler === null) {
      this.drop(DropReason.NoHandler);
      return;
    }
    this.udpHandler.handle(this.ctx, frame, packet);
  }

  private dispatchTcp(): void {
    const frame = this.frame;
    const packet = this.packet;
    if (packet.l4Length < TCP_HEADER_LENGTH || !frame.ensure(Math.min(frame.length, packet.l4Offset - frame.base + 60))) {
      this.drop(DropReason.TcpMalformed, () => 'truncated TCP header');
      return;
    }
    if (this.tcpHandler === null) {
      this.drop(DropReason.NoHandler);
      return;
    }
    this.tcpHandler.handle(this.ctx, frame, packet);
  }

  private dispatchIcmp(): void {
    const frame = this.frame;
    const packet = this.packet;
    if (!frame.ensureWhole()) {
      this.drop(DropReason.SplitHeadersTooLong);
      return;
    }
    const icmp = this.icmp.reset(frame.bytes, packet.l4Offset, packet.l4Length);
    const v6 = packet.family === 6;
    const error = icmp.validate(!frame.checksumPartial, v6 ? packet.pseudoSum(frame.bytes) : 0);
    if (error !== IcmpError.Ok) {
      this.drop(error === IcmpError.BadChecksum ? DropReason.IcmpBadChecksum : DropReason.IcmpMalformed, () => `ICMP ${IcmpError[error]}`);
      return;
    }
    const type = icmp.type;
    if (type === (v6 ? Icmpv6EchoType.EchoRequest : IcmpType.EchoRequest)) {
      if (this.echoEnabled) this.echo.handleRequest(frame, packet, icmp);
      else this.drop(DropReason.IcmpUnsupported); // --no-icmp
      return;
    }
    if (v6 && this.ipv6Control !== null && this.ipv6Control.handleIcmpv6(this.ctx, frame, packet)) return;
    this.drop(DropReason.IcmpUnsupported);
  }
}

/** Pseudo-header sum for a UDP datagram of udpLength bytes (the UDP length field, which may be below the IP payload length). */
function udpPseudoSum(packet: IpPacket, bytes: Uint8Array, udpLength: number): number {
  return packet.family === 4
    ? pseudoHeaderSumIpv4(bytes, packet.ipv4.srcOffset, bytes, packet.ipv4.dstOffset, IpProtocol.Udp, udpLength)
    : pseudoHeaderSumIpv6(bytes, packet.ipv6.srcOffset, bytes, packet.ipv6.dstOffset, IpProtocol.Udp, udpLength);
}
