import { expect } from 'chai';
import { CounterBlock } from '../../../../src/sys/counters';
import { Stack } from '../../../../src/stack/stack';
import { DROP_SLOTS, DropReason } from '../../../../src/stack/drops';
import { BROADCAST_MAC } from '../../../../src/stack/wire/ethernet';
import { ARP_REPLY_FRAME_LENGTH } from '../../../../src/stack/l2/arp';
import { FakeFramePort, GATEWAY_V4, GUEST_MAC, GUEST_V4, NO_OFFLOAD, OUR_MAC, arpPacket, ethernetFrame, segmentsOf, testConfig } from '../../../support/fakes/stack-fakes';

const ZERO_MAC = new Uint8Array(6);
const ZERO_IP = new Uint8Array(4);
const OTHER_IP = Uint8Array.from([203, 0, 113, 7]);

function setup(segmentSizes?: number[]) {
  const port = new FakeFramePort(segmentSizes);
  const counters = new CounterBlock();
  const stack = new Stack({ config: testConfig(), port, counters });
  const drops = (reason: DropReason): number => counters.get(DROP_SLOTS[reason]);
  return { port, counters, stack, drops };
}

function request(targetIp: Uint8Array, senderIp = GUEST_V4): Uint8Array {
  return ethernetFrame(BROADCAST_MAC, GUEST_MAC, 0x0806, arpPacket(1, GUEST_MAC, senderIp, ZERO_MAC, targetIp));
}

function expectReply(frame: Uint8Array, answeredIp: Uint8Array, requesterIp = GUEST_V4): void {
  expect(frame.length).to.equal(ARP_REPLY_FRAME_LENGTH);
  expect(Array.from(frame.subarray(0, 6)), 'eth dst').to.deep.equal(Array.from(GUEST_MAC));
  expect(Array.from(frame.subarray(6, 12)), 'eth src').to.deep.equal(Array.from(OUR_MAC));
  expect(Array.from(frame.subarray(12, 14)), 'ethertype').to.deep.equal([0x08, 0x06]);
  expect(Array.from(frame.subarray(14, 22)), 'htype ptype hlen plen op').to.deep.equal([0, 1, 8, 0, 6, 4, 0, 2]);
  expect(Array.from(frame.subarray(22, 28)), 'sha').to.deep.equal(Array.from(OUR_MAC));
  expect(Array.from(frame.subarray(28, 32)), 'spa').to.deep.equal(Array.from(answeredIp));
  expect(Array.from(frame.subarray(32, 38)), 'tha').to.deep.equal(Array.from(GUEST_MAC));
  expect(Array.from(frame.subarray(38, 42)), 'tpa').to.deep.equal(Array.from(requesterIp));
}

describe('arp', () => {
  it('answers a request for the gateway with ferry\'s MAC, field by field', () => {
    const { port, stack } = setup();
    stack.receiveFrame(segmentsOf(request(GATEWAY_V4)), NO_OFFLOAD);
    expect(port.frames).to.have.length(1);
    expectReply(port.frames[0], GATEWAY_V4);
    expect(port.flushes).to.equal(1);
  });

  it('answers for any other address too (ferry owns the segment)', () => {
    const { port, stack } = setup();
    stack.receiveFrame(segmentsOf(request(OTHER_IP)), NO_OFFLOAD);
    expectReply(port.frames[0], OTHER_IP);
  });

  it('answers a probe (sender 0.0.0.0) for another address', () => {
    const { port, stack } = setup();
    stack.receiveFrame(segmentsOf(request(OTHER_IP, ZERO_IP)), NO_OFFLOAD);
    expectReply(port.frames[0], OTHER_IP, ZERO_IP);
  });

  it('stays silent for the guest\'s own address: DAD probe and gratuitous ARP', () => {
    const { port, stack, drops } = setup();
    stack.receiveFrame(segmentsOf(request(GUEST_V4, ZERO_IP)), NO_OFFLOAD); // RFC 5227 probe
    stack.receiveFrame(segmentsOf(request(GUEST_V4)), NO_OFFLOAD); // announcement
    stack.receiveFrame(segmentsOf(request(OTHER_IP, OTHER_IP)), NO_OFFLOAD); // gratuitous for another address
    expect(port.frames).to.have.length(0);
    expect(drops(DropReason.ArpIgnored)).to.equal(3);
    expect(port.flushes).to.equal(0);
  });

  it('learns the guest MAC from its ARP traffic', () => {
    const { stack } = setup();
    expect(stack.ctx.guestMacKnown).to.equal(false);
    stack.receiveFrame(segmentsOf(request(GUEST_V4, ZERO_IP)), NO_OFFLOAD);
    expect(stack.ctx.guestMacKnown).to.equal(true);
    expect(Array.from(stack.ctx.guestMac)).to.deep.equal(Array.from(GUEST_MAC));
  });

  it('ignores replies and counts malformed packets', () => {
    const { port, stack, drops } = setup();
    const reply = ethernetFrame(OUR_MAC, GUEST_MAC, 0x0806, arpPacket(2, GUEST_MAC, GUEST_V4, OUR_MAC, GATEWAY_V4));
    stack.receiveFrame(segmentsOf(reply), NO_OFFLOAD);
    expect(drops(DropReason.ArpIgnored)).to.equal(1);
    const short = request(GATEWAY_V4).subarray(0, 14 + 27);
    stack.receiveFrame(segmentsOf(short), NO_OFFLOAD);
    const badHardware = request(GATEWAY_V4);
    badHardware[15] = 6;
    stack.receiveFrame(segmentsOf(badHardware), NO_OFFLOAD);
    expect(drops(DropReason.ArpMalformed)).to.equal(2);
    expect(port.frames).to.have.length(0);
  });

  it('handles a request split across segments and a reply space split in small pieces', () => {
    const { port, stack } = setup([5, 7, 100]);
    stack.receiveFrame(segmentsOf(request(GATEWAY_V4), [3, 13, 25]), NO_OFFLOAD);
    expectReply(port.frames[0], GATEWAY_V4);
  });

  it('counts a reply the guest has no buffers for', () => {
    const { port, stack, drops } = setup();
    port.available = false;
    stack.receiveFrame(segmentsOf(request(GATEWAY_V4)), NO_OFFLOAD);
    expect(drops(DropReason.NoGuestBuffers)).to.equal(1);
    expect(port.frames).to.have.length(0);
  });

  it('drops ARP when IPv4 is disabled', () => {
    const port = new FakeFramePort();
    const counters = new CounterBlock();
    const stack = new Stack({ config: testConfig({ ipv4: null }), port, counters });
    stack.receiveFrame(segmentsOf(request(GATEWAY_V4)), NO_OFFLOAD);
    expect(port.frames).to.have.length(0);
    expect(counters.get(DROP_SLOTS[DropReason.FamilyDisabled])).to.equal(1);
  });
});
