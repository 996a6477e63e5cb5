/**
 * Fuzz target: the stack's own services, DHCP, DHCPv6, NDP and ARP, through
 * Stack.receiveFrame. The fuzzer's bytes are the DHCP or DHCPv6 message, the
 * NDP message body after its type, or the ARP packet, in an envelope the
 * stack accepts (broadcast/multicast addresses, hop limit 255, correct
 * checksums). See feedFrame for the invariants.
 */
import { setBe16 } from '../../src/stack/wire/checksum';
import { GATEWAY_V6, GUEST_MAC, ethernetFrame } from '../../test/support/fakes/stack-fakes';
import { BROADCAST_MAC, ETHERTYPE_ARP, ipv4Frame, ipv6Frame } from '../envelope';
import { FuzzInput } from '../input';
import { feedFrame, frameHarness } from '../stack-harness';

const ANY_V4 = new Uint8Array(4);
const BROADCAST_V4 = Uint8Array.from([255, 255, 255, 255]);
const GUEST_LINK_LOCAL = Uint8Array.from([0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x50, 0x54, 0, 0xff, 0xfe, 0x12, 0x34, 0x56]);
const ALL_ROUTERS = Uint8Array.from([0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
const DHCPV6_SERVERS = Uint8Array.from([0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 2]);
const multicastMac = (ip: Uint8Array): Uint8Array => Uint8Array.from([0x33, 0x33, ip[12], ip[13], ip[14], ip[15]]);

function udp(srcPort: number, dstPort: number, data: Uint8Array): Uint8Array {
  const d = new Uint8Array(8 + data.length);
  setBe16(d, 0, srcPort);
  setBe16(d, 2, dstPort);
  d.set(data, 8);
  return d;
}

export function fuzz(data: Buffer): void {
  const h = frameHarness();
  const input = new FuzzInput(data);
  const mode = input.u8();
  const body = input.take(input.u16() % 2048);
  let frame: Uint8Array;
  switch (mode & 3) {
    case 0:
      frame = ipv4Frame(17, udp(68, 67, body), BROADCAST_V4, BROADCAST_MAC, ANY_V4);
      break;
    case 1:
      frame = ipv6Frame(17, udp(546, 547, body), DHCPV6_SERVERS, multicastMac(DHCPV6_SERVERS), 1, GUEST_LINK_LOCAL);
      break;
    case 2: {
      // NDP: type 133..137 from the mode byte, the rest of the message from the input.
      const message = new Uint8Array(4 + body.length);
      message[0] = 133 + ((mode >> 2) % 5);
      message[1] = 0;
      message.set(body, 4);
      const toRouters = (mode & 0x80) !== 0;
      const dst = toRouters ? ALL_ROUTERS : GATEWAY_V6;
      frame = ipv6Frame(58, message, dst, toRouters ? multicastMac(ALL_ROUTERS) : undefined, 255, GUEST_LINK_LOCAL);
      break;
    }
    default:
      frame = ethernetFrame(BROADCAST_MAC, GUEST_MAC, ETHERTYPE_ARP, body);
      break;
  }
  feedFrame(h, frame, input);
}
