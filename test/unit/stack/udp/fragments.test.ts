/**
 * The fragment policy UDP relies on (documented in src/stack/udp/udp.ts):
 * IP fragments from the guest reach no transport handler one by one; the
 * stack reassembles them first (src/stack/reassembly/, tested in
 * test/unit/stack/reassembly/).
 */
import { expect } from 'chai';
import { CounterBlock } from '../../../../src/sys/counters';
import { Stack } from '../../../../src/stack/stack';
import type { IpPacket, RxFrame, StackContext } from '../../../../src/stack/context';
import { DROP_SLOTS, DropReason } from '../../../../src/stack/drops';
import { internetChecksum, setBe16 } from '../../../../src/stack/wire/checksum';
import { FakeFramePort, GUEST_MAC, GUEST_V4, GUEST_V6, NO_OFFLOAD, OUR_MAC, concat, ethernetFrame, ipv4Packet, segmentsOf, testConfig, udpDatagram } from '../../../support/fakes/stack-fakes';

const SERVER_V4 = Uint8Array.of(203, 0, 113, 9);
const SERVER_V6 = Uint8Array.from(Buffer.from('20010db8000000000000000000000099', 'hex'));

function rig(): { stack: Stack; counters: CounterBlock; handled: number[] } {
  const counters = new CounterBlock();
  const stack = new Stack({ config: testConfig(), port: new FakeFramePort(), counters });
  const handled: number[] = [];
  stack.udpHandler = { handle: (_c: StackContext, _f: RxFrame, p: IpPacket) => handled.push(p.family) };
  return { stack, counters, handled };
}

/** An IPv4 UDP packet with flags/fragment offset set to `fragmentField` (checksum fixed up). */
function fragment4(fragmentField: number): Uint8Array {
  const packet = ipv4Packet(GUEST_V4, SERVER_V4, 17, udpDatagram(GUEST_V4, SERVER_V4, 1000, 2000, Buffer.alloc(64, 1)));
  setBe16(packet, 6, fragmentField);
  setBe16(packet, 10, 0);
  setBe16(packet, 10, internetChecksum(packet, 0, 20));
  return ethernetFrame(OUR_MAC, GUEST_MAC, 0x0800, packet);
}

/** An IPv6 packet with a Fragment header (offset, M flag) before a UDP datagram. */
function fragment6(offsetAndFlags: number): Uint8Array {
  const udp = udpDatagram(GUEST_V6, SERVER_V6, 1000, 2000, Buffer.alloc(64, 1));
  const fragmentHeader = new Uint8Array(8);
  fragmentHeader[0] = 17;
  setBe16(fragmentHeader, 2, offsetAndFlags);
  fragmentHeader[7] = 42; // identification
  const payload = concat(fragmentHeader, udp);
  const h = new Uint8Array(40);
  h[0] = 0x60;
  setBe16(h, 4, payload.length);
  h[6] = 44;
  h[7] = 64;
  h.set(GUEST_V6, 8);
  h.set(SERVER_V6, 24);
  return ethernetFrame(OUR_MAC, GUEST_MAC, 0x86dd, concat(h, payload));
}

describe('fragments from the guest: reassembled before the UDP handler', () => {
  it('IPv4 first, middle and last fragments are held, not handed on one by one', () => {
    const r = rig();
    for (const field of [0x2000, 0x2000 | 8, 16]) r.stack.receiveFrame(segmentsOf(fragment4(field)), NO_OFFLOAD);
    expect(r.counters.get(DROP_SLOTS[DropReason.Ipv4Fragment])).to.equal(0);
    expect(r.handled).to.deep.equal([]);
    // The same datagram unfragmented (DF) reaches the handler.
    r.stack.receiveFrame(segmentsOf(fragment4(0x4000)), NO_OFFLOAD);
    expect(r.handled).to.deep.equal([4]);
  });

  it('IPv6 fragments are held; an atomic fragment is handled as its datagram', () => {
    const r = rig();
    for (const field of [0x0001, (8 << 3) | 1, 8 << 3]) r.stack.receiveFrame(segmentsOf(fragment6(field)), NO_OFFLOAD);
    expect(r.handled).to.deep.equal([]);
    r.stack.receiveFrame(segmentsOf(fragment6(0)), NO_OFFLOAD);
    expect(r.handled).to.deep.equal([6]);
    expect(r.counters.get(DROP_SLOTS[DropReason.Ipv6Fragment])).to.equal(0);
  });
});
