/**
 * The seam between the stack's dispatcher (stack.ts) and the protocol
 * handlers it hands packets to: declared here, below both, so that a
 * protocol implements it without importing the dispatcher.
 */
import type { IpPacket, RxFrame, StackContext } from './context';
import type { UdpView } from './wire/udp';

/**
 * IPv6 control plane (NDP, router advertisements, DHCPv6), implemented in
 * ndp.ts / dhcpv6.ts and installed with `stack.ipv6Control = ...`.
 * The frame is whole and contiguous in frame.bytes; packet.ipv6 is validated
 * and packet.l4Offset/l4Length locate the ICMPv6 message or UDP datagram.
 * Replies are built with ctx.openFrame + ctx.finishIpv6/finishUdp6.
 */
export interface Ipv6ControlHandler {
  /**
   * An ICMPv6 message other than echo request (those go to the echo
   * service). The ICMPv6 checksum was verified (unless the guest left it to
   * offload). Return true when consumed; false counts an 'icmp_unsupported' drop.
   */
  handleIcmpv6(ctx: StackContext, frame: RxFrame, packet: IpPacket): boolean;
  /**
   * A UDP datagram to port 547 (DHCPv6). `udp` is validated (length and
   * checksum). Return true when consumed; false passes it to udpHandler.
   */
  handleDhcpv6(ctx: StackContext, frame: RxFrame, packet: IpPacket, udp: UdpView): boolean;
  /** Periodic work (unsolicited router advertisements), from Stack.onTimer; returns true when a frame was sent. */
  onTimer?(ctx: StackContext, nowMs: number): boolean;
}

/**
 * TCP or UDP translation. Called with the IP header and at
 * least the first 60 bytes of the L4 header contiguous (frame.ensure() for
 * more; payload also reachable through frame.segments at
 * packet.l4Offset - frame.base).
 */
export interface TransportHandler {
  handle(ctx: StackContext, frame: RxFrame, packet: IpPacket): void;
  /** Periodic work (idle expiry, retransmission timers), from Stack.onTimer. */
  onTimer?(now: number): void;
  /** Release host sockets (the worker is stopping or the guest went away). */
  close?(): void;
}
