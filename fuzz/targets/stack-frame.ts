/**
 * Fuzz target: Stack.receiveFrame with a whole stack (TCP, UDP, ICMP, ARP,
 * NDP, DHCP, DHCPv6) over fake sockets. The first byte picks a raw frame or
 * an IPv4/IPv6 envelope with correct checksums around the fuzzer's L4 bytes;
 * the frame is cut into segments at input-chosen offsets. See feedFrame for
 * the invariants.
 */
import { GATEWAY_V4, GATEWAY_V6 } from '../../test/support/fakes/stack-fakes';
import { ipv4Frame, ipv6Frame } from '../envelope';
import { FuzzInput } from '../input';
import { feedFrame, frameHarness } from '../stack-harness';

const SERVER_V4 = Uint8Array.from([198, 51, 100, 7]);
const SERVER_V6 = Uint8Array.from([0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7]);
const PROTOCOLS = [6, 17, 1, 58, 6, 17, 0, 44];

export function fuzz(data: Buffer): void {
  const h = frameHarness();
  const input = new FuzzInput(data);
  const mode = input.u8();
  const protocol = PROTOCOLS[(mode >> 2) & 7];
  const toGateway = (mode & 0x20) !== 0;
  const length = input.u16() % 9000;
  const body = input.take(length);
  let frame: Uint8Array;
  switch (mode & 3) {
    case 0:
      frame = body;
      break;
    case 1:
      frame = ipv4Frame(protocol === 58 ? 1 : protocol, body, toGateway ? GATEWAY_V4 : SERVER_V4);
      break;
    default:
      frame = ipv6Frame(protocol === 1 ? 58 : protocol, body, toGateway ? GATEWAY_V6 : SERVER_V6);
      break;
  }
  feedFrame(h, frame, input);
}
