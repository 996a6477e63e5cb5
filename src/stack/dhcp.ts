/**
 * DHCPv4 server (RFC 2131/2132) for the single guest: offers the host's own
 * address (passt's model). Implementation follows.
 */
import type { IpPacket, RxFrame, StackContext } from './context';
import type { UdpView } from './wire/udp';

export const DHCP_SERVER_PORT = 67;
export const DHCP_CLIENT_PORT = 68;

/**
 * Handle one DHCP message from the guest (UDP to port 67, whole frame
 * contiguous, UDP header validated). Returns true when a reply was queued.
 */
export function handleDhcp(ctx: StackContext, frame: RxFrame, packet: IpPacket, udp: UdpView): boolean {
  void ctx;
  void frame;
  void packet;
  void udp;
  return false;
}
