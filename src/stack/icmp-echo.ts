/**
 * ICMP/ICMPv6 echo from the guest through unprivileged ping sockets.
 * Implementation follows.
 */
import type { IpPacket, ReadyHandler, RxFrame, StackContext } from './context';
import type { IcmpView } from './wire/icmp';

/** Echo requests to any address, answered via host ping sockets. */
export class IcmpEchoService implements ReadyHandler {
  constructor(private readonly ctx: StackContext) {}

  /**
   * Forward one echo request (ICMPv4 type 8 or ICMPv6 type 128, checksum
   * already checked, whole frame contiguous). Returns true when sent.
   */
  handleRequest(frame: RxFrame, packet: IpPacket, icmp: IcmpView): boolean {
    void frame;
    void packet;
    void icmp;
    void this.ctx;
    return false;
  }

  /** Socket readiness: read replies and pass them to the guest. */
  onReady(fd: number, events: number): void {
    void fd;
    void events;
  }

  /** Close flows idle for longer than the timeout. */
  expire(now: number): void {
    void now;
  }

  /** Close every socket. */
  close(): void {}
}
