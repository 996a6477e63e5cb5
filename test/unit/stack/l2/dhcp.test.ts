import { expect } from 'chai';
import { CounterBlock } from '../../../../src/sys/counters';
import { Stack, type TransportHandler } from '../../../../src/stack/stack';
import { DROP_SLOTS, DropReason } from '../../../../src/stack/drops';
import { BROADCAST_MAC } from '../../../../src/stack/wire/ethernet';
import { be16, be32, internetChecksum, pseudoHeaderSumIpv4, setBe16, setBe32 } from '../../../../src/stack/wire/checksum';
import { DhcpError, DhcpOptions, encodeDomainSearch, parseDhcpMessage } from '../../../../src/stack/l2/dhcp';
import type { StackConfig } from '../../../../src/stack/config';
import { DNS_V4, FakeFramePort, GATEWAY_V4, GUEST_MAC, GUEST_V4, NO_OFFLOAD, OUR_MAC, concat, ethernetFrame, ipv4Packet, segmentsOf, testConfig, udpDatagram } from '../../../support/fakes/stack-fakes';

const ZERO = new Uint8Array(4);
const BROADCAST_IP = Uint8Array.from([255, 255, 255, 255]);
const XID = 0x3903f326;

interface ClientMessage {
  type: number;
  options?: [number, number[]][];
  ciaddr?: Uint8Array;
  broadcast?: boolean;
  /** Raw bytes after the magic cookie instead of the built options. */
  rawOptions?: Uint8Array;
  file?: Uint8Array;
  sname?: Uint8Array;
}

/** A BOOTREQUEST as a DHCP client would send it. */
function dhcpMessage(m: ClientMessage): Uint8Array {
  const fixed = new Uint8Array(240);
  fixed[0] = 1;
  fixed[1] = 1;
  fixed[2] = 6;
  setBe32(fixed, 4, XID);
  if (m.broadcast) setBe16(fixed, 10, 0x8000);
  if (m.ciaddr) fixed.set(m.ciaddr, 12);
  fixed.set(GUEST_MAC, 28);
  if (m.sname) fixed.set(m.sname, 44);
  if (m.file) fixed.set(m.file, 108);
  setBe32(fixed, 236, 0x63825363);
  let options: Uint8Array;
  if (m.rawOptions) options = m.rawOptions;
  else {
    const list: number[] = [53, 1, m.type];
    for (const [code, value] of m.options ?? []) list.push(code, value.length, ...value);
    list.push(255);
    options = Uint8Array.from(list);
  }
  const body = concat(fixed, options);
  // Clients pad to the BOOTP minimum of 300 bytes.
  return body.length >= 300 ? body : concat(body, new Uint8Array(300 - body.length));
}

function dhcpFrame(message: Uint8Array, src = ZERO, dst = BROADCAST_IP): Uint8Array {
  return ethernetFrame(BROADCAST_MAC, GUEST_MAC, 0x0800, ipv4Packet(src, dst, 17, udpDatagram(src, dst, 68, 67, message)));
}

interface Reply {
  ethDst: number[];
  ethSrc: number[];
  ipSrc: number[];
  ipDst: number[];
  op: number;
  xid: number;
  flags: number;
  ciaddr: number[];
  yiaddr: number[];
  chaddr: number[];
  /** Option code -> concatenated values (RFC 3396), in the order first seen. */
  options: Map<number, number[]>;
  optionOrder: number[];
}

/** Decode a reply frame independently of the server's code, checking IP and UDP checksums. */
function decodeReply(frame: Uint8Array): Reply {
  expect(be16(frame, 12)).to.equal(0x0800);
  expect(internetChecksum(frame, 14, 20), 'IPv4 header checksum').to.equal(0);
  expect(frame[23]).to.equal(17);
  const udpLength = be16(frame, 38);
  expect(be16(frame, 16)).to.equal(20 + udpLength);
  expect(frame.length).to.equal(34 + udpLength);
  expect(internetChecksum(frame, 34, udpLength, pseudoHeaderSumIpv4(frame, 26, frame, 30, 17, udpLength)), 'UDP checksum').to.equal(0);
  expect(be16(frame, 34)).to.equal(67);
  expect(be16(frame, 36)).to.equal(68);
  const d = frame.subarray(42);
  expect(be32(d, 236)).to.equal(0x63825363);
  const options = new Map<number, number[]>();
  const optionOrder: number[] = [];
  let at = 240;
  for (let guard = 0; at < d.length && guard < 300; guard++) {
    const code = d[at];
    if (code === 0) {
      at++;
      continue;
    }
    if (code === 255) break;
    const value = Array.from(d.subarray(at + 2, at + 2 + d[at + 1]));
    if (!options.has(code)) optionOrder.push(code);
    options.set(code, [...(options.get(code) ?? []), ...value]);
    at += 2 + d[at + 1];
  }
  expect(d[at], 'End option').to.equal(255);
  return {
    ethDst: Array.from(frame.subarray(0, 6)),
    ethSrc: Array.from(frame.subarray(6, 12)),
    ipSrc: Array.from(frame.subarray(26, 30)),
    ipDst: Array.from(frame.subarray(30, 34)),
    op: d[0],
    xid: be32(d, 4),
    flags: be16(d, 10),
    ciaddr: Array.from(d.subarray(12, 16)),
    yiaddr: Array.from(d.subarray(16, 20)),
    chaddr: Array.from(d.subarray(28, 34)),
    options,
    optionOrder,
  };
}

/** Decode an RFC 1035 name list with compression pointers (bounded). */
function decodeNames(bytes: number[]): string[] {
  const names: string[] = [];
  let at = 0;
  while (at < bytes.length) {
    const labels: string[] = [];
    let p = at;
    let jumped = false;
    for (let hops = 0; hops < 64; hops++) {
      const len = bytes[p];
      if (len === 0) {
        if (!jumped) at = p + 1;
        break;
      }
      if ((len & 0xc0) === 0xc0) {
        if (!jumped) at = p + 2;
        jumped = true;
        p = ((len & 0x3f) << 8) | bytes[p + 1];
        continue;
      }
      labels.push(String.fromCharCode(...bytes.slice(p + 1, p + 1 + len)));
      p += 1 + len;
    }
    names.push(labels.join('.'));
  }
  return names;
}

function setup(config: StackConfig = testConfig()) {
  const port = new FakeFramePort();
  const counters = new CounterBlock();
  const stack = new Stack({ config, port, counters });
  const drops = (reason: DropReason): number => counters.get(DROP_SLOTS[reason]);
  const exchange = (m: ClientMessage, src = ZERO, dst = BROADCAST_IP): Reply | null => {
    const before = port.frames.length;
    stack.receiveFrame(segmentsOf(dhcpFrame(dhcpMessage(m), src, dst)), NO_OFFLOAD);
    expect(port.frames.length - before).to.be.at.most(1);
    return port.frames.length > before ? decodeReply(port.frames[port.frames.length - 1]) : null;
  };
  return { port, counters, stack, drops, exchange };
}

const ASK_ALL: [number, number[]] = [55, [1, 3, 6, 15, 26, 51, 54, 119, 121]];

describe('dhcp', () => {
  it('answers DISCOVER with an OFFER carrying the host address and every option', () => {
    const { exchange } = setup();
    const r = exchange({ type: 1, options: [ASK_ALL] })!;
    expect(r).to.not.equal(null);
    expect(r.op).to.equal(2);
    expect(r.xid).to.equal(XID);
    expect(r.yiaddr).to.deep.equal([192, 0, 2, 1]);
    expect(r.ciaddr).to.deep.equal([0, 0, 0, 0]);
    expect(r.chaddr).to.deep.equal(Array.from(GUEST_MAC));
    expect(r.optionOrder[0]).to.equal(53);
    expect(r.options.get(53)).to.deep.equal([2]);
    expect(r.options.get(54), 'server id').to.deep.equal([192, 0, 2, 254]);
    expect(r.options.get(51), 'lease').to.deep.equal([0xff, 0xff, 0xff, 0xff]);
    expect(r.options.get(1), 'mask').to.deep.equal([255, 255, 255, 0]);
    expect(r.options.get(3), 'router').to.deep.equal([192, 0, 2, 254]);
    expect(r.options.get(6), 'dns').to.deep.equal(Array.from(DNS_V4));
    expect(r.options.get(26), 'mtu').to.deep.equal([65520 >> 8, 65520 & 0xff]);
    expect(r.options.get(15), 'domain name').to.deep.equal(Array.from(Buffer.from('example.com')));
    expect(decodeNames(r.options.get(119)!)).to.deep.equal(['example.com', 'lab.example.com']);
    // Compressed: "lab" then a pointer to offset 0 ("example.com").
    expect(r.options.get(119)).to.deep.equal([7, ...Buffer.from('example'), 3, ...Buffer.from('com'), 0, 3, ...Buffer.from('lab'), 0xc0, 0]);
    expect(r.options.has(121), 'no static routes: gateway on link').to.equal(false);
    // Unicast to the offered address at chaddr, from the gateway.
    expect(r.ethDst).to.deep.equal(Array.from(GUEST_MAC));
    expect(r.ethSrc).to.deep.equal(Array.from(OUR_MAC));
    expect(r.ipDst).to.deep.equal([192, 0, 2, 1]);
    expect(r.ipSrc).to.deep.equal([192, 0, 2, 254]);
  });

  it('broadcasts when the client sets the broadcast flag', () => {
    const { exchange } = setup();
    const r = exchange({ type: 1, broadcast: true })!;
    expect(r.ethDst).to.deep.equal([255, 255, 255, 255, 255, 255]);
    expect(r.ipDst).to.deep.equal([255, 255, 255, 255]);
    expect(r.flags).to.equal(0x8000);
  });

  it('does not send option 15 unless asked', () => {
    const { exchange } = setup();
    expect(exchange({ type: 1 })!.options.has(15)).to.equal(false);
  });

  it('ACKs a REQUEST for the offered address with our server id', () => {
    const { exchange } = setup();
    const r = exchange({ type: 3, options: [[50, [192, 0, 2, 1]], [54, [192, 0, 2, 254]], ASK_ALL] })!;
    expect(r.options.get(53)).to.deep.equal([5]);
    expect(r.yiaddr).to.deep.equal([192, 0, 2, 1]);
    expect(r.options.get(51)).to.deep.equal([0xff, 0xff, 0xff, 0xff]);
    expect(r.options.get(1)).to.deep.equal([255, 255, 255, 0]);
  });

  it('ACKs a renewal (ciaddr set) by unicast to ciaddr', () => {
    const { exchange } = setup();
    const r = exchange({ type: 3, ciaddr: GUEST_V4 }, GUEST_V4, GATEWAY_V4)!;
    expect(r.options.get(53)).to.deep.equal([5]);
    expect(r.ciaddr).to.deep.equal([192, 0, 2, 1]);
    expect(r.ipDst).to.deep.equal([192, 0, 2, 1]);
    expect(r.ethDst).to.deep.equal(Array.from(GUEST_MAC));
  });

  it('NAKs a wrong requested address or a wrong server id, by broadcast', () => {
    const { exchange } = setup();
    for (const options of [
      [[50, [192, 0, 2, 99]], [54, [192, 0, 2, 254]]],
      [[50, [192, 0, 2, 1]], [54, [198, 51, 100, 1]]],
      [[50, [192, 0, 2]]], // malformed requested address
    ] as [number, number[]][][]) {
      const r = exchange({ type: 3, options })!;
      expect(r.options.get(53), JSON.stringify(options)).to.deep.equal([6]);
      expect(r.yiaddr).to.deep.equal([0, 0, 0, 0]);
      expect(r.options.get(54)).to.deep.equal([192, 0, 2, 254]);
      expect(r.options.has(51)).to.equal(false);
      expect(r.options.has(1)).to.equal(false);
      expect(r.ethDst).to.deep.equal([255, 255, 255, 255, 255, 255]);
      expect(r.ipDst).to.deep.equal([255, 255, 255, 255]);
    }
    // INIT-REBOOT with a stale ciaddr and no option 50.
    expect(exchange({ type: 3, ciaddr: Uint8Array.from([10, 0, 0, 5]) })!.options.get(53)).to.deep.equal([6]);
  });

  it('answers INFORM with an ACK without yiaddr or lease, unicast to ciaddr', () => {
    const { exchange } = setup();
    const r = exchange({ type: 8, ciaddr: GUEST_V4, options: [ASK_ALL] }, GUEST_V4, BROADCAST_IP)!;
    expect(r.options.get(53)).to.deep.equal([5]);
    expect(r.yiaddr).to.deep.equal([0, 0, 0, 0]);
    expect(r.ciaddr).to.deep.equal([192, 0, 2, 1]);
    expect(r.options.has(51)).to.equal(false);
    expect(r.options.get(6)).to.deep.equal(Array.from(DNS_V4));
    expect(r.ipDst).to.deep.equal([192, 0, 2, 1]);
  });

  it('does not answer RELEASE, DECLINE or plain BOOTP', () => {
    const { exchange, drops } = setup();
    expect(exchange({ type: 7, ciaddr: GUEST_V4 }, GUEST_V4, GATEWAY_V4)).to.equal(null);
    expect(exchange({ type: 4, options: [[50, [192, 0, 2, 1]]] })).to.equal(null);
    expect(exchange({ type: 0, rawOptions: Uint8Array.from([255]) })).to.equal(null);
    expect(drops(DropReason.DhcpIgnored)).to.equal(3);
  });

  it('reads options from overloaded file and sname fields', () => {
    const { exchange } = setup();
    const file = new Uint8Array(128);
    file.set([53, 1, 1, 52, 1, 3, 255]); // a nested overload option must not re-enter
    const sname = new Uint8Array(64);
    sname.set([55, 1, 15, 255]);
    const r = exchange({ type: 0, rawOptions: Uint8Array.from([52, 1, 3, 255]), file, sname })!;
    expect(r.options.get(53)).to.deep.equal([2]);
    expect(r.options.has(15), 'parameter list from sname').to.equal(true);
  });

  it('drops malformed messages: option overrun, truncation, bad magic, not a request', () => {
    const { port, stack, drops } = setup();
    const send = (message: Uint8Array): void => stack.receiveFrame(segmentsOf(dhcpFrame(message)), NO_OFFLOAD);
    const overrun = dhcpMessage({ type: 1, rawOptions: Uint8Array.from([53, 1, 1, 55, 200, 1, 3]) }).subarray(0, 247);
    send(overrun);
    send(dhcpMessage({ type: 1 }).subarray(0, 239));
    const badMagic = dhcpMessage({ type: 1 });
    badMagic[236] = 0;
    send(badMagic);
    const reply = dhcpMessage({ type: 1 });
    reply[0] = 2;
    send(reply);
    expect(drops(DropReason.DhcpMalformed)).to.equal(4);
    expect(port.frames).to.have.length(0);
  });

  it('bounds option parsing on a message full of one-byte-long options', () => {
    const raw = new Uint8Array(1200);
    for (let i = 0; i + 3 <= raw.length; i += 3) raw.set([60, 1, 0], i);
    const out = new DhcpOptions();
    const m = dhcpMessage({ type: 1, rawOptions: raw });
    expect(parseDhcpMessage(m, 0, m.length, out)).to.equal(DhcpError.TooManyOptions);
  });

  it('drops a message with a bad UDP checksum, but not one left to checksum offload', () => {
    const { port, stack, drops } = setup();
    const frame = dhcpFrame(dhcpMessage({ type: 1 }));
    frame[42 + 100] ^= 0xff;
    stack.receiveFrame(segmentsOf(frame), NO_OFFLOAD);
    expect(drops(DropReason.UdpBadChecksum)).to.equal(1);
    stack.receiveFrame(segmentsOf(frame), { ...NO_OFFLOAD, flags: 1 });
    expect(port.frames).to.have.length(1);
  });

  it('handles a DISCOVER split across many segments', () => {
    const { port, stack } = setup();
    stack.receiveFrame(segmentsOf(dhcpFrame(dhcpMessage({ type: 1 })), [7, 20, 41, 43, 300]), NO_OFFLOAD);
    expect(decodeReply(port.frames[0]).options.get(53)).to.deep.equal([2]);
  });

  it('sends classless static routes when the gateway is off-link', () => {
    const config = testConfig();
    config.ipv4 = { ...config.ipv4!, prefixLength: 32 };
    const { exchange } = setup(config);
    const r = exchange({ type: 1 })!;
    expect(r.options.get(1)).to.deep.equal([255, 255, 255, 255]);
    expect(r.options.get(121)).to.deep.equal([32, 192, 0, 2, 254, 0, 0, 0, 0, 0, 192, 0, 2, 254]);
  });

  it('splits a search list over 255 bytes into several option 119 instances', () => {
    const domains = Array.from({ length: 12 }, (_, i) => `d${i}-${'x'.repeat(20)}.example${i}.test`);
    const { port, exchange } = setup(testConfig({ searchDomains: domains }));
    const r = exchange({ type: 1 })!;
    expect(decodeNames(r.options.get(119)!)).to.deep.equal(domains);
    const raw = port.frames[0].subarray(42 + 240);
    let instances = 0;
    for (let at = 0; raw[at] !== 255; at += raw[at] === 0 ? 1 : 2 + raw[at + 1]) if (raw[at] === 119) instances++;
    expect(instances).to.be.greaterThan(1);
  });

  it('-H and --fqdn: option 12 with the host name, option 81 with flags E and N, RCODEs 255 and the name', () => {
    const { exchange } = setup(testConfig({ hostname: 'vm1', fqdn: 'vm1.example.org' }));
    const r = exchange({ type: 1 })!;
    expect(String.fromCharCode(...r.options.get(12)!)).to.equal('vm1');
    const fqdn = r.options.get(81)!;
    expect(fqdn.slice(0, 3)).to.deep.equal([0x0c, 255, 255]);
    expect(decodeNames(fqdn.slice(3))).to.deep.equal(['vm1.example.org']);
    // Without them, neither option.
    const plain = setup().exchange({ type: 1 })!;
    expect(plain.options.has(12)).to.equal(false);
    expect(plain.options.has(81)).to.equal(false);
  });

  it('skips invalid search domains', () => {
    expect(decodeNames(Array.from(encodeDomainSearch(['ok.test', 'bad..name', 'x'.repeat(64) + '.test', 'fine.', ''])))).to.deep.equal(['ok.test', 'fine']);
  });

  it('does nothing when DHCP is disabled: the datagram goes to the UDP handler', () => {
    const seen: number[] = [];
    const udpHandler: TransportHandler = { handle: (_ctx, frame, packet) => seen.push(be16(frame.bytes, packet.l4Offset + 2)) };
    const port = new FakeFramePort();
    const stack = new Stack({ config: testConfig({ dhcp: false }), port, counters: new CounterBlock(), udpHandler });
    stack.receiveFrame(segmentsOf(dhcpFrame(dhcpMessage({ type: 1 }))), NO_OFFLOAD);
    expect(port.frames).to.have.length(0);
    expect(seen).to.deep.equal([67]);
  });
});
