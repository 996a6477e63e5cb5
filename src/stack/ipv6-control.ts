/**
 * The stack's IPv6 control plane: joins the NDP responder (router and
 * neighbour solicitations, periodic router advertisements) and the DHCPv6
 * server to the dispatch in stack.ts. Both write whole reply frames into the
 * window the context opens on the guest's RX buffer.
 */
import type { CounterBlock } from '../counters';
import type { StackConfig } from './config';
import type { IpPacket, RxFrame, StackContext } from './context';
import { Dhcpv6Server } from './dhcpv6';
import { NdpResponder } from './ndp';
import type { Ipv6ControlHandler } from './stack';
import type { UdpView } from './wire/udp';

/** Offset of the source MAC in an Ethernet header. */
const ETHERNET_SOURCE_OFFSET = 6;
/** Room asked for a DHCPv6 reply: headers plus options well under the minimum IPv6 MTU. */
const DHCPV6_REPLY_ROOM = 1280;

export class Ipv6Control implements Ipv6ControlHandler {
  private readonly ndp: NdpResponder;
  private readonly dhcpv6: Dhcpv6Server;

  constructor(config: StackConfig, counters: CounterBlock | null) {
    this.ndp = new NdpResponder(config, counters);
    this.dhcpv6 = new Dhcpv6Server(config, counters);
  }

  /** NDP from the guest: answer in place; returns true (every message is consumed, unanswered ones are counted by the responder). */
  handleIcmpv6(ctx: StackContext, frame: RxFrame, packet: IpPacket): boolean {
    const capacity = ctx.openFrame(this.ndp.maxFrameLength);
    if (capacity === 0) return true;
    const length = this.ndp.handle(packet.ipv6, frame.bytes, frame.base + ETHERNET_SOURCE_OFFSET, ctx.out, ctx.outOffset, capacity, true);
    if (length > 0) ctx.commitFrame(length);
    else ctx.cancelFrame();
    return true;
  }

  /** DHCPv6 to port 547: answer in place; returns true. */
  handleDhcpv6(ctx: StackContext, frame: RxFrame, packet: IpPacket, _udp: UdpView): boolean {
    const capacity = ctx.openFrame(DHCPV6_REPLY_ROOM);
    if (capacity === 0) return true;
    const length = this.dhcpv6.handle(packet.ipv6, frame.bytes, frame.base + ETHERNET_SOURCE_OFFSET, ctx.out, ctx.outOffset, capacity);
    if (length > 0) ctx.commitFrame(length);
    else ctx.cancelFrame();
    return true;
  }

  /** Periodic work: an unsolicited router advertisement when one is due. Call from the stack's timer. */
  onTimer(ctx: StackContext, nowMs: number): void {
    if (!this.ndp.tick(nowMs)) return;
    const capacity = ctx.openFrame(this.ndp.maxFrameLength);
    if (capacity === 0) return;
    const length = this.ndp.writeUnsolicitedRa(ctx.out, ctx.outOffset, capacity);
    if (length > 0) ctx.commitFrame(length);
    else ctx.cancelFrame();
  }
}
