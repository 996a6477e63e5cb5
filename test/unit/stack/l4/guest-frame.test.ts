/**
 * Frames to the guest for a flow (src/stack/l4/guest-frame.ts): headers in
 * place or through scratch, Ethernet + IP from the flow's slot, the
 * pseudo-header sum from the same slot.
 */
import { expect } from 'chai';
import { SegmentList } from '../../../../src/io/frame-io';
import { CounterBlock } from '../../../../src/sys/counters';
import { StackContext } from '../../../../src/stack/context';
import { FlowProtocol, FlowTable } from '../../../../src/stack/flow/flow-table';
import { HeaderWindow, addWritableListener, emitFlowIpHeaders, flowPseudoSum, ipHeadersLength } from '../../../../src/stack/l4/guest-frame';
import { IpProtocol, Ipv4Error, Ipv4View } from '../../../../src/stack/wire/ipv4';
import { be16, pseudoHeaderSumIpv4, pseudoHeaderSumIpv6 } from '../../../../src/stack/wire/checksum';
import { FakeFramePort, OUR_MAC, testConfig } from '../../../support/fakes/stack-fakes';

const GUEST_MAC = Uint8Array.from([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
const GUEST4 = Uint8Array.from([192, 0, 2, 1]);
const REMOTE4 = Uint8Array.from([198, 51, 100, 7]);
const GUEST6 = Uint8Array.from([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
const REMOTE6 = Uint8Array.from([0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9]);

function context(): StackContext {
  return new StackContext({ config: testConfig({ guestMac: GUEST_MAC }), port: new FakeFramePort(), counters: new CounterBlock() });
}

describe('l4 guest-frame', () => {
  it('writes headers in place when the first segment holds them, else in scratch copied in by end()', () => {
    const window = new HeaderWindow();
    const big = new Uint8Array(100);
    const inPlace = new SegmentList(1);
    inPlace.push(big, 10, 90);
    window.begin(inPlace, 54);
    expect(window.out).to.equal(big);
    expect(window.at).to.equal(10);
    window.out.fill(7, window.at, window.at + 54);
    window.end(inPlace);
    expect(big[10]).to.equal(7);

    const first = new Uint8Array(20);
    const second = new Uint8Array(100);
    const split = new SegmentList(2);
    split.push(first, 0, 20);
    split.push(second, 0, 100);
    window.begin(split, 54);
    expect(window.out).to.not.equal(first);
    expect(window.at).to.equal(0);
    for (let i = 0; i < 54; i++) window.out[i] = i;
    window.end(split);
    expect(Array.from(first)).to.deep.equal(Array.from({ length: 20 }, (_, i) => i));
    expect(Array.from(second.subarray(0, 34))).to.deep.equal(Array.from({ length: 34 }, (_, i) => 20 + i));
  });

  it('writes Ethernet + IPv4 from the flow\'s remote to its guest with a valid header checksum', () => {
    const ctx = context();
    const flows = new FlowTable(4);
    const id = flows.allocate(FlowProtocol.Udp, 4, GUEST4, 0, 5353, REMOTE4, 0, 53, 0, 0);
    const out = new Uint8Array(2 + 14 + 20 + 30);
    const l4 = emitFlowIpHeaders(out, 2, ctx, flows, id, IpProtocol.Udp, 30);
    expect(l4).to.equal(2 + ipHeadersLength(4));
    expect(Array.from(out.subarray(2, 8))).to.deep.equal(Array.from(GUEST_MAC));
    expect(Array.from(out.subarray(8, 14))).to.deep.equal(Array.from(OUR_MAC));
    expect(be16(out, 14)).to.equal(0x0800);
    const ip = new Ipv4View().reset(out, 16, 20 + 30);
    expect(ip.validate()).to.equal(Ipv4Error.Ok);
    expect(Array.from(out.subarray(16 + 12, 16 + 16))).to.deep.equal(Array.from(REMOTE4));
    expect(Array.from(out.subarray(16 + 16, 16 + 20))).to.deep.equal(Array.from(GUEST4));
    expect(flowPseudoSum(flows, id, IpProtocol.Udp, 30)).to.equal(pseudoHeaderSumIpv4(REMOTE4, 0, GUEST4, 0, IpProtocol.Udp, 30));
  });

  it('writes Ethernet + IPv6 from the flow\'s slot', () => {
    const ctx = context();
    const flows = new FlowTable(4);
    flows.allocate(FlowProtocol.Tcp, 4, GUEST4, 0, 1, REMOTE4, 0, 2, 0, 0);
    const id = flows.allocate(FlowProtocol.Tcp, 6, GUEST6, 0, 40000, REMOTE6, 0, 443, 0, 0);
    const out = new Uint8Array(80);
    const l4 = emitFlowIpHeaders(out, 0, ctx, flows, id, IpProtocol.Tcp, 20);
    expect(l4).to.equal(ipHeadersLength(6));
    expect(be16(out, 12)).to.equal(0x86dd);
    expect(out[14] >> 4).to.equal(6);
    expect(be16(out, 18)).to.equal(20);
    expect(out[20]).to.equal(IpProtocol.Tcp);
    expect(Array.from(out.subarray(22, 38))).to.deep.equal(Array.from(REMOTE6));
    expect(Array.from(out.subarray(38, 54))).to.deep.equal(Array.from(GUEST6));
    expect(flowPseudoSum(flows, id, IpProtocol.Tcp, 20)).to.equal(pseudoHeaderSumIpv6(REMOTE6, 0, GUEST6, 0, IpProtocol.Tcp, 20));
  });

  it('chains onWritable listeners in the order they were added', () => {
    const port = new FakeFramePort();
    const calls: string[] = [];
    addWritableListener(port, () => calls.push('tcp'));
    addWritableListener(port, () => calls.push('udp'));
    port.onWritable!();
    expect(calls).to.deep.equal(['tcp', 'udp']);
  });
});
