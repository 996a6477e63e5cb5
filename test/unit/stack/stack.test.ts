import { expect } from 'chai';
import { CounterBlock } from '../../../src/sys/counters';
import { type Ipv6ControlHandler, Stack, type TransportHandler } from '../../../src/stack/stack';
import { DROP_REASON_LABELS, DROP_SLOTS, DropReason } from '../../../src/stack/drops';
import { type IpPacket, RxFrame, StackContext, SPLIT_HEADER_COPY, UDP6_DATA_OFFSET } from '../../../src/stack/context';
import { SegmentList } from '../../../src/io/frame-io';
import { type UdpView } from '../../../src/stack/wire/udp';
import { be16, internetChecksum, pseudoHeaderSumIpv6, setBe16 } from '../../../src/stack/wire/checksum';
import { counterDefinitions } from '../../../src/sys/counters';
import { setLogSink } from '../../../src/sys/log';
import {
  CAPTURED,
  FakeFramePort,
  GATEWAY_V4,
  GUEST_MAC,
  GUEST_V4,
  GUEST_V6,
  NO_OFFLOAD,
  OUR_MAC,
  concat,
  ethernetFrame,
  hex,
  icmpEcho,
  ipv4Packet,
  ipv6Packet,
  segmentsOf,
  testConfig,
  udpDatagram,
} from '../../support/fakes/stack-fakes';

const SERVER_V4 = Uint8Array.from([198, 51, 100, 7]);
const SERVER_V6 = Uint8Array.from([0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7]);

interface Seen {
  family: number;
  protocol: number;
  l4: number;
  l4Length: number;
  firstL4Bytes: number[];
}

function recorder(into: Seen[]): TransportHandler {
  return {
    handle(_ctx: StackContext, frame: RxFrame, packet: IpPacket): void {
      into.push({
        family: packet.family,
        protocol: packet.protocol,
        l4: packet.l4Offset - frame.base,
        l4Length: packet.l4Length,
        firstL4Bytes: Array.from(frame.bytes.subarray(packet.l4Offset, packet.l4Offset + 8)),
      });
    },
  };
}

function setup(patch = {}) {
  const port = new FakeFramePort();
  const counters = new CounterBlock();
  const tcp: Seen[] = [];
  const udp: Seen[] = [];
  const stack = new Stack({ config: testConfig(patch), port, counters, tcpHandler: recorder(tcp), udpHandler: recorder(udp) });
  const drops = (reason: DropReason): number => counters.get(DROP_SLOTS[reason]);
  const totalDrops = (): number => DROP_SLOTS.reduce((n, slot) => n + counters.get(slot), 0);
  const send = (frame: Uint8Array, cuts: number[] = [], flags = 0): void => stack.receiveFrame(segmentsOf(frame, cuts), { ...NO_OFFLOAD, flags });
  return { port, counters, stack, tcp, udp, drops, totalDrops, send };
}

const v4Frame = (protocol: number, l4: Uint8Array, src = GUEST_V4, dst = SERVER_V4): Uint8Array =>
  ethernetFrame(OUR_MAC, GUEST_MAC, 0x0800, ipv4Packet(src, dst, protocol, l4));
const v6Frame = (next: number, payload: Uint8Array, dst = SERVER_V6): Uint8Array => ethernetFrame(OUR_MAC, GUEST_MAC, 0x86dd, ipv6Packet(GUEST_V6, dst, next, payload));

/** A bare 20-byte TCP header (checksum not checked by dispatch). */
function tcpHeader(): Uint8Array {
  const t = new Uint8Array(20);
  setBe16(t, 0, 40000);
  setBe16(t, 2, 80);
  t[12] = 0x50;
  t[13] = 0x02;
  return t;
}

let logLines: string[] = [];

describe('stack dispatch', () => {
  before(() => setLogSink((level, message) => logLines.push(`${level}: ${message}`)));
  after(() => setLogSink((level, message) => level !== 'debug' && process.stderr.write(`${level}: ${message}\n`)));
  beforeEach(() => (logLines = []));

  it('declares one ferry_stack_drops_total slot per reason', () => {
    const defs = counterDefinitions();
    expect(DROP_SLOTS).to.have.length(DROP_REASON_LABELS.length);
    const labels = DROP_SLOTS.map((slot) => {
      expect(defs[slot].metric).to.equal('ferry_stack_drops_total');
      return defs[slot].labels.reason;
    });
    expect(new Set(labels).size).to.equal(labels.length);
    expect(labels).to.include('ipv4_bad_checksum');
  });

  it('hands TCP and UDP over IPv4 and IPv6 to the transport hooks with L4 offsets', () => {
    const { send, tcp, udp, totalDrops } = setup();
    send(v4Frame(6, tcpHeader()));
    send(v4Frame(17, udpDatagram(GUEST_V4, SERVER_V4, 5000, 53, Uint8Array.from([1, 2, 3]))));
    send(v6Frame(6, tcpHeader()));
    send(v6Frame(17, udpDatagram(GUEST_V6, SERVER_V6, 5000, 53, Uint8Array.from([1, 2, 3]))));
    expect(totalDrops()).to.equal(0);
    expect(tcp.map((s) => [s.family, s.l4, s.l4Length])).to.deep.equal([
      [4, 34, 20],
      [6, 54, 20],
    ]);
    expect(udp.map((s) => [s.family, s.l4, s.l4Length])).to.deep.equal([
      [4, 34, 11],
      [6, 54, 11],
    ]);
    expect(tcp[0].firstL4Bytes.slice(0, 4)).to.deep.equal([0x9c, 0x40, 0, 80]);
  });

  it('views split frames through the scratch copy with the same offsets', () => {
    const { send, tcp, udp } = setup();
    send(v4Frame(6, tcpHeader()), [1, 15, 30, 40]);
    const payload = new Uint8Array(1000).fill(7);
    send(v6Frame(17, udpDatagram(GUEST_V6, SERVER_V6, 5000, 53, payload)), [60, 200, 700]);
    expect(tcp[0].l4).to.equal(34);
    expect(tcp[0].firstL4Bytes.slice(0, 4)).to.deep.equal([0x9c, 0x40, 0, 80]);
    expect(udp[0].l4Length).to.equal(1008);
    expect(udp[0].firstL4Bytes.slice(2, 4)).to.deep.equal([0, 53]);
  });

  it('copies only the headers of a split frame, and more on demand', () => {
    const config = testConfig();
    const ctx = new StackContext({ config, port: new FakeFramePort(), counters: new CounterBlock() });
    const frame = new RxFrame(ctx.rxScratch);
    const bytes = Uint8Array.from({ length: 3000 }, (_, i) => i & 0xff);
    expect(frame.begin(segmentsOf(bytes, [100, 1000]), NO_OFFLOAD)).to.equal(true);
    expect(frame.available).to.equal(SPLIT_HEADER_COPY);
    expect(frame.ensure(2000)).to.equal(true);
    expect(frame.available).to.equal(2000);
    expect(Array.from(frame.bytes.subarray(1990, 2000))).to.deep.equal(Array.from(bytes.subarray(1990, 2000)));
    expect(frame.ensure(3001)).to.equal(false);
    expect(frame.ensureWhole()).to.equal(true);
    // In place when one segment holds it all.
    const single = segmentsOf(bytes);
    expect(frame.begin(single, NO_OFFLOAD)).to.equal(true);
    expect(frame.bytes).to.equal(single.buffers[0]);
    expect(frame.base).to.equal(24);
  });

  it('builds UDP frames in place or in scratch when the reservation is split', () => {
    for (const sizes of [[4096], [10, 50, 4096], [61, 1, 4096]]) {
      const port = new FakeFramePort(sizes);
      const ctx = new StackContext({ config: testConfig(), port, counters: new CounterBlock() });
      const data = Uint8Array.from([0xde, 0xad, 0xbe, 0xef, 0x01]);
      expect(ctx.openFrame(UDP6_DATA_OFFSET + data.length)).to.equal(UDP6_DATA_OFFSET + data.length);
      ctx.out.set(data, ctx.outOffset + UDP6_DATA_OFFSET);
      ctx.finishUdp6(GUEST_MAC, GUEST_V6, SERVER_V6, 547, 546, data.length);
      expect(ctx.pendingFrames).to.equal(1);
      ctx.flush();
      expect(port.flushes).to.equal(1);
      const f = port.frames[0];
      expect(f.length).to.equal(UDP6_DATA_OFFSET + 5);
      expect(Array.from(f.subarray(0, 6))).to.deep.equal(Array.from(GUEST_MAC));
      expect(Array.from(f.subarray(6, 12))).to.deep.equal(Array.from(OUR_MAC));
      expect(be16(f, 12)).to.equal(0x86dd);
      expect(be16(f, 18), 'payload length').to.equal(13);
      expect(Array.from(f.subarray(UDP6_DATA_OFFSET))).to.deep.equal(Array.from(data));
      expect(internetChecksum(f, 54, 13, pseudoHeaderSumIpv6(f, 22, f, 38, 17, 13)), `sizes ${sizes}`).to.equal(0);
    }
  });

  it('reports a reservation smaller than asked and gives it back', () => {
    const port = new FakeFramePort([20, 20]);
    const ctx = new StackContext({ config: testConfig(), port, counters: new CounterBlock() });
    expect(ctx.openFrame(100)).to.equal(40);
    ctx.cancelFrame();
    expect(port.cancelled).to.equal(1);
    port.available = false;
    expect(ctx.openFrame(100)).to.equal(0);
  });

  it('rejects a gather list whose ranges leave their buffers', () => {
    const { stack, drops } = setup();
    const list = new SegmentList(2);
    list.push(new Uint8Array(100), 90, 20);
    expect(() => stack.receiveFrame(list, NO_OFFLOAD)).to.not.throw();
    expect(drops(DropReason.EthernetTruncated)).to.equal(1);
    const negative = new SegmentList(1);
    negative.push(new Uint8Array(100), -5, 20);
    stack.receiveFrame(negative, NO_OFFLOAD);
    expect(drops(DropReason.EthernetTruncated)).to.equal(2);
  });

  it('counts truncated Ethernet and unknown EtherTypes', () => {
    const { send, drops } = setup();
    send(new Uint8Array(13));
    send(new Uint8Array(0));
    send(ethernetFrame(OUR_MAC, GUEST_MAC, 0x8100, new Uint8Array(50)));
    expect(drops(DropReason.EthernetTruncated)).to.equal(2);
    expect(drops(DropReason.UnsupportedEtherType)).to.equal(1);
  });

  it('counts each IPv4 header error under its own reason and logs (rate-limited)', () => {
    const { send, drops } = setup();
    const good = v4Frame(6, tcpHeader());
    const mutations: [DropReason, (f: Uint8Array) => Uint8Array][] = [
      [DropReason.Ipv4Truncated, (f) => f.subarray(0, 14 + 19)],
      [DropReason.Ipv4BadVersion, (f) => ((f[14] = 0x55), f)],
      [DropReason.Ipv4BadIhl, (f) => ((f[14] = 0x43), f)],
      [DropReason.Ipv4BadTotalLength, (f) => (setBe16(f, 16, 200), f)],
      [DropReason.Ipv4BadChecksum, (f) => ((f[22] = 3), f)],
    ];
    for (const [reason, mutate] of mutations) {
      send(mutate(good.slice()));
      expect(drops(reason), DROP_REASON_LABELS[reason]).to.equal(1);
    }
    for (let i = 0; i < 50; i++) send(mutations[4][1](good.slice()));
    expect(drops(DropReason.Ipv4BadChecksum)).to.equal(51);
    const checksumLines = logLines.filter((l) => l.includes('ipv4_bad_checksum'));
    expect(checksumLines.length).to.be.within(1, 5);
    expect(checksumLines[0]).to.match(/^warn: /);
  });

  it('holds fragments for reassembly, drops what it cannot take and disabled families', () => {
    const { send, drops } = setup();
    const frag = v4Frame(17, udpDatagram(GUEST_V4, SERVER_V4, 1, 2, new Uint8Array(4)));
    setBe16(frag, 20, 0x2000);
    setBe16(frag, 24, 0);
    setBe16(frag, 24, internetChecksum(frag, 14, 20));
    send(frag);
    // Held for reassembly (src/stack/reassembly), not dropped.
    expect(drops(DropReason.Ipv4Fragment)).to.equal(0);
    // An IPv6 Fragment header after a Hop-by-Hop header is not taken.
    const hopByHop = new Uint8Array(8);
    hopByHop[0] = 44;
    const fragmentHeader = new Uint8Array(8);
    fragmentHeader[0] = 17;
    setBe16(fragmentHeader, 2, 1);
    send(v6Frame(0, concat(hopByHop, fragmentHeader, udpDatagram(GUEST_V6, SERVER_V6, 1, 2, new Uint8Array(8)))));
    expect(drops(DropReason.FragmentUnsupported)).to.equal(1);

    const v4only = setup({ ipv6: null });
    v4only.send(v6Frame(6, tcpHeader()));
    expect(v4only.drops(DropReason.FamilyDisabled)).to.equal(1);
    const v6only = setup({ ipv4: null });
    v6only.send(v4Frame(6, tcpHeader()));
    expect(v6only.drops(DropReason.FamilyDisabled)).to.equal(1);
  });

  it('counts malformed IPv6 and L4 headers', () => {
    const { send, drops } = setup();
    const v6 = v6Frame(6, tcpHeader());
    setBe16(v6, 18, 100); // payload length past the frame
    send(v6);
    expect(drops(DropReason.Ipv6BadPayloadLength)).to.equal(1);
    send(v6Frame(0, Uint8Array.from([6, 200, 0, 0, 0, 0, 0, 0]))); // Hop-by-Hop claiming 1608 bytes
    expect(drops(DropReason.Ipv6ExtensionTruncated)).to.equal(1);
    send(v4Frame(6, new Uint8Array(12)));
    expect(drops(DropReason.TcpMalformed)).to.equal(1);
    const shortUdp = udpDatagram(GUEST_V4, SERVER_V4, 1, 2, new Uint8Array(4));
    setBe16(shortUdp, 4, 40); // UDP length beyond the IP payload
    send(v4Frame(17, shortUdp));
    expect(drops(DropReason.UdpMalformed)).to.equal(1);
    send(v4Frame(1, icmpEcho(8, 1, 1, new Uint8Array(4)).subarray(0, 6)));
    expect(drops(DropReason.IcmpMalformed)).to.equal(1);
    const badIcmp = icmpEcho(8, 1, 1, new Uint8Array(4));
    badIcmp[9] ^= 1;
    send(v4Frame(1, badIcmp));
    expect(drops(DropReason.IcmpBadChecksum)).to.equal(1);
    send(v4Frame(1, icmpEcho(13, 1, 1, new Uint8Array(12)))); // timestamp request
    expect(drops(DropReason.IcmpUnsupported)).to.equal(1);
  });

  it('--no-icmp (echoEnabled false): echo requests are dropped as icmp_unsupported and nothing is sent', () => {
    const { stack, port, drops, send } = setup();
    stack.echoEnabled = false;
    send(v4Frame(1, icmpEcho(8, 1, 1, new Uint8Array(4))));
    send(v6Frame(58, icmpEcho(128, 1, 1, new Uint8Array(4), { src: GUEST_V6, dst: SERVER_V6 })));
    expect(drops(DropReason.IcmpUnsupported)).to.equal(2);
    expect(port.frames).to.have.length(0);
  });

  it('without transport handlers, TCP and UDP are counted as no_handler', () => {
    const counters = new CounterBlock();
    const stack = new Stack({ config: testConfig(), port: new FakeFramePort(), counters });
    stack.receiveFrame(segmentsOf(v4Frame(6, tcpHeader())), NO_OFFLOAD);
    stack.receiveFrame(segmentsOf(v4Frame(17, udpDatagram(GUEST_V4, SERVER_V4, 1, 2, new Uint8Array(0)))), NO_OFFLOAD);
    expect(counters.get(DROP_SLOTS[DropReason.NoHandler])).to.equal(2);
  });

  it('hands non-echo ICMPv6 and DHCPv6 to the IPv6 control handler', () => {
    const { stack, send, drops, udp } = setup();
    const icmpv6: number[] = [];
    const dhcpv6: number[] = [];
    let consume = true;
    const control: Ipv6ControlHandler = {
      handleIcmpv6: (_ctx, frame, packet) => (icmpv6.push(frame.bytes[packet.l4Offset]), consume),
      handleDhcpv6: (_ctx, _frame, _packet, view: UdpView) => (dhcpv6.push(view.dstPort), consume),
    };
    stack.ipv6Control = control;
    const allRouters = Uint8Array.from([0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    const rs = icmpEcho(133, 0, 0, new Uint8Array(0), { src: GUEST_V6, dst: allRouters }); // RS: type, code, checksum, reserved
    send(v6Frame(58, rs, allRouters));
    const dhcpServers = Uint8Array.from([0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 2]);
    send(v6Frame(17, udpDatagram(GUEST_V6, dhcpServers, 546, 547, Uint8Array.from([1, 0, 0, 1])), dhcpServers));
    expect(icmpv6).to.deep.equal([133]);
    expect(dhcpv6).to.deep.equal([547]);
    consume = false;
    send(v6Frame(58, rs, allRouters));
    send(v6Frame(17, udpDatagram(GUEST_V6, dhcpServers, 546, 547, Uint8Array.from([1, 0, 0, 1])), dhcpServers));
    expect(drops(DropReason.IcmpUnsupported)).to.equal(1);
    expect(udp).to.have.length(1); // unconsumed DHCPv6 falls through to the UDP hook
    const badSum = rs.slice();
    badSum[2] ^= 0xff;
    send(v6Frame(58, badSum, allRouters));
    expect(drops(DropReason.IcmpBadChecksum)).to.equal(1);
    expect(icmpv6).to.have.length(2);
  });

  it('learns the guest MAC, never from a group address', () => {
    const { stack, send } = setup();
    const multicastSource = ethernetFrame(OUR_MAC, Uint8Array.from([0x33, 0x33, 0, 0, 0, 1]), 0x0800, new Uint8Array(20));
    send(multicastSource);
    expect(stack.ctx.guestMacKnown).to.equal(false);
    send(v4Frame(6, tcpHeader()));
    expect(Array.from(stack.ctx.guestMac)).to.deep.equal(Array.from(GUEST_MAC));
    const configured = setup({ guestMac: Uint8Array.from([2, 0, 0, 0, 0, 9]) });
    configured.send(v4Frame(6, tcpHeader()));
    expect(Array.from(configured.stack.ctx.guestMac)).to.deep.equal([2, 0, 0, 0, 0, 9]);
  });

  it('counts an exception from a handler as internal_error and keeps going', () => {
    const counters = new CounterBlock();
    const stack = new Stack({
      config: testConfig(),
      port: new FakeFramePort(),
      counters,
      tcpHandler: {
        handle: () => {
          throw new Error('bug');
        },
      },
    });
    expect(() => stack.receiveFrame(segmentsOf(v4Frame(6, tcpHeader())), NO_OFFLOAD)).to.not.throw();
    expect(counters.get(DROP_SLOTS[DropReason.InternalError])).to.equal(1);
    expect(logLines.some((l) => l.startsWith('error: ') && l.includes('bug'))).to.equal(true);
  });

  it('survives random and mutated frames without throwing (bounded fuzz)', () => {
    const { stack, counters, send } = setup();
    let seed = 12345;
    const random = (): number => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff);
    const seeds = [
      hex(CAPTURED.udp4),
      hex(CAPTURED.tcpSyn),
      hex(CAPTURED.icmpEchoRequest),
      hex(CAPTURED.icmpv6PortUnreachable),
      v6Frame(0, concat(Uint8Array.from([60, 0, 1, 4, 0, 0, 0, 0]), Uint8Array.from([17, 0, 1, 4, 0, 0, 0, 0]), udpDatagram(GUEST_V6, SERVER_V6, 546, 547, new Uint8Array(8)))),
    ];
    for (let i = 0; i < 3000; i++) {
      const base = seeds[i % seeds.length].slice();
      const flips = 1 + Math.floor(random() * 4);
      for (let j = 0; j < flips; j++) base[Math.floor(random() * base.length)] = Math.floor(random() * 256);
      const length = random() < 0.2 ? Math.floor(random() * base.length) : base.length;
      const cuts = random() < 0.3 ? [Math.floor(random() * length), Math.floor(random() * length)].sort((a, b) => a - b) : [];
      send(base.subarray(0, length), cuts);
    }
    for (let i = 0; i < 500; i++) {
      const junk = Uint8Array.from({ length: Math.floor(random() * 200) }, () => Math.floor(random() * 256));
      send(junk);
    }
    expect(counters.get(DROP_SLOTS[DropReason.InternalError])).to.equal(0);
    expect(stack.ctx.pendingFrames).to.equal(0);
  });

  it('flushes once per frame that produced output', () => {
    const { port, send } = setup();
    send(v4Frame(6, tcpHeader()));
    expect(port.flushes).to.equal(0);
    const arp = ethernetFrame(Uint8Array.from([255, 255, 255, 255, 255, 255]), GUEST_MAC, 0x0806, Uint8Array.from([0, 1, 8, 0, 6, 4, 0, 1, ...GUEST_MAC, ...GUEST_V4, 0, 0, 0, 0, 0, 0, ...GATEWAY_V4]));
    send(arp);
    expect(port.frames).to.have.length(1);
    expect(port.flushes).to.equal(1);
    expect(be16(port.frames[0], 12)).to.equal(0x0806);
  });
});
