import { expect } from 'chai';
import { type ChildProcess, execFileSync, spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { CounterBlock } from '../../../../src/sys/counters';
import { formatIpv6, formatMac, linkLocalFromMac, parseIpv6, parseMac } from '../../../../src/stack/address';
import type { StackConfig } from '../../../../src/stack/config';
import { CounterBlock as Counters } from '../../../../src/sys/counters';
import { SegmentList } from '../../../../src/io/frame-io';
import { Stack } from '../../../../src/stack/stack';
import type { IpPacket, RxFrame } from '../../../../src/stack/context';
import type { UdpView } from '../../../../src/stack/wire/udp';
import { FakeFramePort, NO_OFFLOAD } from '../../../support/fakes/stack-fakes';
import { Ipv6ControlPlane, NdpDrop, NdpResponder, INITIAL_RA_INTERVAL_MS, MIN_RA_INTERVAL_MS, MAX_RA_INTERVAL_MS, ndpDropLabel } from '../../../../src/stack/l2/ndp';
import { Ipv6View } from '../../../../src/stack/wire/ipv6';
import { icmpv6Checksum } from '../../../../src/stack/wire/icmpv6';
import {
  NdpError,
  NdpOption,
  NdpOptionCursor,
  decodeDomainList,
  encodeDomainList,
  findLinkLayerAddress,
  validateNdp,
} from '../../../../src/stack/wire/ndp';
import { REPO_ROOT } from '../../../support/paths';

const OUR_MAC = parseMac('9a:55:9a:55:9a:55')!;
const GUEST_MAC = parseMac('52:54:00:12:34:56')!;
const GUEST_LL = linkLocalFromMac(GUEST_MAC);
const FERRY_LL = linkLocalFromMac(OUR_MAC);

function makeConfig(overrides: Partial<StackConfig> = {}): StackConfig {
  return {
    ourMac: OUR_MAC,
    guestMac: null,
    mtu: 65520,
    ipv4: null,
    ipv6: {
      address: parseIpv6('2001:db8::1')!,
      prefixLength: 64,
      gateway: parseIpv6('2001:db8::fe')!,
      linkLocal: FERRY_LL,
      dns: [parseIpv6('2001:db8::53')!, parseIpv6('2001:db8::54')!],
      mapHostLoopback: null,
      mapGuestAddr: null,
      dnsForward: null,
      dnsHost: null,
    },
    searchDomains: ['example.com', 'test.example.org'],
    interfaceName: null,
    dhcp: true,
    dhcpv6: true,
    ndp: true,
    ra: true,
    maxFlows: 1024,
    udpIdleMs: 180000,
    ...overrides,
  };
}

/** An IPv6 packet (no Ethernet header) carrying `icmp`, checksum filled in unless told otherwise. */
function ipv6Packet(src: Uint8Array, dst: Uint8Array, icmp: number[] | Uint8Array, hopLimit = 255, fixChecksum = true): Uint8Array {
  const body = Uint8Array.from(icmp);
  const p = new Uint8Array(40 + body.length);
  p[0] = 0x60;
  p[4] = body.length >> 8;
  p[5] = body.length & 0xff;
  p[6] = 58;
  p[7] = hopLimit;
  p.set(src, 8);
  p.set(dst, 24);
  p.set(body, 40);
  if (fixChecksum) {
    const c = icmpv6Checksum(src, 0, dst, 0, p, 40, body.length);
    p[42] = c >> 8;
    p[43] = c & 0xff;
  }
  return p;
}

function viewOf(packet: Uint8Array): Ipv6View {
  const view = new Ipv6View().reset(packet, 0, packet.length);
  expect(view.validate()).to.equal(0);
  expect(view.findUpperLayer()).to.equal(0);
  return view;
}

const rs = (withSlla: boolean): number[] => (withSlla ? [133, 0, 0, 0, 0, 0, 0, 0, 1, 1, ...GUEST_MAC] : [133, 0, 0, 0, 0, 0, 0, 0]);
const ns = (target: Uint8Array, slla: Uint8Array | null = GUEST_MAC): number[] => [135, 0, 0, 0, 0, 0, 0, 0, ...target, ...(slla ? [1, 1, ...slla] : [])];

/** Parsed view of a frame ferry wrote. */
interface Sent {
  dstMac: string;
  srcMac: string;
  etherType: number;
  src: string;
  dst: string;
  hopLimit: number;
  icmp: Uint8Array;
  checksumOk: boolean;
}

function parseSent(out: Uint8Array, length: number): Sent {
  const frame = out.subarray(0, length);
  const ip = frame.subarray(14);
  const payloadLength = (ip[4] << 8) | ip[5];
  expect(40 + payloadLength).to.equal(ip.length);
  expect(ip[6]).to.equal(58);
  return {
    dstMac: formatMac(frame.subarray(0, 6)),
    srcMac: formatMac(frame.subarray(6, 12)),
    etherType: (frame[12] << 8) | frame[13],
    src: formatIpv6(ip.subarray(8, 24)),
    dst: formatIpv6(ip.subarray(24, 40)),
    hopLimit: ip[7],
    icmp: ip.subarray(40),
    checksumOk: icmpv6Checksum(ip, 8, ip, 24, ip, 40, payloadLength) === 0,
  };
}

/** Options of an NDP message after its fixed part, as [type, bytes-after-type-and-length]. */
function optionsOf(msg: Uint8Array, fixed: number): [number, Uint8Array][] {
  const cursor = new NdpOptionCursor().reset(msg, fixed, msg.length);
  const result: [number, Uint8Array][] = [];
  while (cursor.next()) result.push([cursor.type, msg.subarray(cursor.offset + 2, cursor.offset + cursor.length)]);
  expect(cursor.error).to.equal(NdpError.Ok);
  return result;
}

describe('wire/ndp', () => {
  it('walks options and stops on zero-length, overrunning and truncated options', () => {
    const cursor = new NdpOptionCursor();
    const good = Uint8Array.from([1, 1, 1, 2, 3, 4, 5, 6, 5, 1, 0, 0, 0, 0, 5, 220]);
    cursor.reset(good, 0, good.length);
    const types: number[] = [];
    while (cursor.next()) types.push(cursor.type);
    expect(types).to.deep.equal([1, 5]);
    expect(cursor.error).to.equal(NdpError.Ok);

    const zero = Uint8Array.from([1, 1, 1, 2, 3, 4, 5, 6, 5, 0, 0, 0, 0, 0, 0, 0]);
    cursor.reset(zero, 0, zero.length);
    let n = 0;
    while (cursor.next()) n++;
    expect(n).to.equal(1);
    expect(cursor.error).to.equal(NdpError.ZeroLengthOption);

    const overrun = Uint8Array.from([1, 2, 1, 2, 3, 4, 5, 6]);
    cursor.reset(overrun, 0, overrun.length);
    expect(cursor.next()).to.equal(false);
    expect(cursor.error).to.equal(NdpError.OptionOverrun);

    const lone = Uint8Array.from([1]);
    cursor.reset(lone, 0, 1);
    expect(cursor.next()).to.equal(false);
    expect(cursor.error).to.equal(NdpError.OptionOverrun);

    // The end given is clamped to the buffer.
    cursor.reset(good, 8, 1000);
    expect(cursor.next()).to.equal(true);
    expect(cursor.next()).to.equal(false);
    expect(cursor.error).to.equal(NdpError.Ok);
  });

  it('validates NDP messages', () => {
    const target = parseIpv6('2001:db8::fe')!;
    const good = Uint8Array.from(ns(target));
    expect(validateNdp(good, 0, good.length, 255, false)).to.equal(NdpError.Ok);
    expect(validateNdp(good, 0, good.length, 64, false)).to.equal(NdpError.BadHopLimit);
    expect(validateNdp(good, 0, 20, 255, false)).to.equal(NdpError.Truncated);
    expect(validateNdp(good, 0, 3, 255, false)).to.equal(NdpError.Truncated);
    expect(validateNdp(good, 0, good.length + 1, 255, false)).to.equal(NdpError.Truncated);
    expect(validateNdp(good, 0, good.length, 255, true)).to.equal(NdpError.SourceLinkLayerWithUnspecifiedSource);
    const badCode = Uint8Array.from(good);
    badCode[1] = 1;
    expect(validateNdp(badCode, 0, badCode.length, 255, false)).to.equal(NdpError.BadCode);
    const mcast = Uint8Array.from(ns(parseIpv6('ff02::1')!));
    expect(validateNdp(mcast, 0, mcast.length, 255, false)).to.equal(NdpError.MulticastTarget);
    const zeroOption = Uint8Array.from([...ns(target, null), 1, 0, 0, 0, 0, 0, 0, 0]);
    expect(validateNdp(zeroOption, 0, zeroOption.length, 255, false)).to.equal(NdpError.ZeroLengthOption);
    const overrun = Uint8Array.from([...ns(target, null), 3, 4, 0, 0, 0, 0, 0, 0]);
    expect(validateNdp(overrun, 0, overrun.length, 255, false)).to.equal(NdpError.OptionOverrun);
    const echo = Uint8Array.from([128, 0, 0, 0, 0, 0, 0, 0]);
    expect(validateNdp(echo, 0, echo.length, 255, false)).to.equal(NdpError.NotNdp);
  });

  it('finds link-layer address options', () => {
    const msg = Uint8Array.from(rs(true));
    const at = findLinkLayerAddress(msg, 0, msg.length, NdpOption.SOURCE_LINK_LAYER);
    expect(formatMac(msg.subarray(at, at + 6))).to.equal(formatMac(GUEST_MAC));
    expect(findLinkLayerAddress(msg, 0, msg.length, NdpOption.TARGET_LINK_LAYER)).to.equal(-1);
  });

  it('encodes and decodes domain lists', () => {
    const encoded = encodeDomainList(['example.com', 'a.b.', '', 'bad..name', 'x'.repeat(64) + '.com', 'ünicode.org']);
    expect(Array.from(encoded.subarray(0, 13))).to.deep.equal([7, ...Buffer.from('example'), 3, ...Buffer.from('com'), 0]);
    expect(decodeDomainList(encoded, 0, encoded.length)).to.deep.equal(['example.com', 'a.b']);
    // Padding zeros after the names (as DNSSL carries) are fine.
    const padded = Uint8Array.from([...encoded, 0, 0, 0]);
    expect(decodeDomainList(padded, 0, padded.length)).to.deep.equal(['example.com', 'a.b']);
    expect(decodeDomainList(Uint8Array.from([5, 97, 98]), 0, 3)).to.equal(null);
    expect(decodeDomainList(Uint8Array.from([1, 97]), 0, 2)).to.equal(null);
    expect(decodeDomainList(Uint8Array.from([0xc0, 0x0c]), 0, 2)).to.equal(null);
    const long = Array.from({ length: 10 }, () => 'a'.repeat(30)).join('.');
    expect(encodeDomainList([long]).length).to.equal(0);
  });
});

describe('ndp responder', () => {
  const out = new Uint8Array(2048);

  it('answers a router solicitation with a complete RA to the solicitor', () => {
    const counters = new CounterBlock();
    const responder = new NdpResponder(makeConfig(), counters);
    const packet = ipv6Packet(GUEST_LL, parseIpv6('ff02::2')!, rs(true));
    const length = responder.handle(viewOf(packet), parseMac('02:00:00:00:00:99')!, 0, out, 0, out.length);
    expect(length).to.be.greaterThan(0);
    const sent = parseSent(out, length);
    // The source link-layer option wins over the Ethernet source.
    expect(sent.dstMac).to.equal(formatMac(GUEST_MAC));
    expect(sent.srcMac).to.equal('9a:55:9a:55:9a:55');
    expect(sent.etherType).to.equal(0x86dd);
    expect(sent.src).to.equal(formatIpv6(FERRY_LL));
    expect(sent.dst).to.equal(formatIpv6(GUEST_LL));
    expect(sent.hopLimit).to.equal(255);
    expect(sent.checksumOk).to.equal(true);
    const ra = sent.icmp;
    expect(ra[0]).to.equal(134);
    expect(ra[5] & 0xc0).to.equal(0xc0); // M and O
    expect((ra[6] << 8) | ra[7]).to.be.greaterThan(0);
    const options = optionsOf(ra, 16);
    const byType = new Map(options.map(([t, d]) => [t, d]));
    expect(formatMac(byType.get(NdpOption.SOURCE_LINK_LAYER)!)).to.equal('9a:55:9a:55:9a:55');
    const mtu = byType.get(NdpOption.MTU)!;
    expect(Buffer.from(mtu).readUInt32BE(2)).to.equal(65520);
    const prefix = byType.get(NdpOption.PREFIX_INFORMATION)!;
    expect(prefix[0]).to.equal(64);
    expect(prefix[1] & 0xc0).to.equal(0xc0); // L and A
    expect(formatIpv6(prefix.subarray(14, 30))).to.equal('2001:db8::');
    const rdnss = byType.get(NdpOption.RDNSS)!;
    expect(formatIpv6(rdnss.subarray(6, 22))).to.equal('2001:db8::53');
    expect(formatIpv6(rdnss.subarray(22, 38))).to.equal('2001:db8::54');
    const dnssl = byType.get(NdpOption.DNSSL)!;
    expect(decodeDomainList(dnssl, 6, dnssl.length - 6)).to.deep.equal(['example.com', 'test.example.org']);
    expect(validateNdp(ra, 0, ra.length, 255, false)).to.equal(NdpError.Ok);
  });

  it('answers an RS from the unspecified address to all nodes, and leaves out M/O without DHCPv6', () => {
    const responder = new NdpResponder(makeConfig({ dhcpv6: false, searchDomains: [], mtu: 0 }), null);
    const packet = ipv6Packet(new Uint8Array(16), parseIpv6('ff02::2')!, rs(false));
    const length = responder.handle(viewOf(packet), GUEST_MAC, 0, out, 0, out.length);
    const sent = parseSent(out, length);
    expect(sent.dst).to.equal('ff02::1');
    expect(sent.dstMac).to.equal('33:33:00:00:00:01');
    expect(sent.icmp[5] & 0xc0).to.equal(0);
    const types = optionsOf(sent.icmp, 16).map(([t]) => t);
    expect(types).to.not.include(NdpOption.DNSSL);
    // -m 0: no MTU announced.
    expect(types).to.not.include(NdpOption.MTU);
    expect(types).to.include(NdpOption.PREFIX_INFORMATION);
  });

  it('drops NDP with a hop limit other than 255, bad checksums and malformed options, counting each', () => {
    const counters = new CounterBlock();
    const responder = new NdpResponder(makeConfig(), counters);
    const dst = parseIpv6('ff02::2')!;
    expect(responder.handle(viewOf(ipv6Packet(GUEST_LL, dst, rs(true), 64)), GUEST_MAC, 0, out, 0, out.length)).to.equal(0);
    expect(responder.handle(viewOf(ipv6Packet(GUEST_LL, dst, rs(true), 255, false)), GUEST_MAC, 0, out, 0, out.length)).to.equal(0);
    expect(responder.handle(viewOf(ipv6Packet(GUEST_LL, dst, [...rs(false), 1, 0, 0, 0, 0, 0, 0, 0])), GUEST_MAC, 0, out, 0, out.length)).to.equal(0);
    expect(responder.handle(viewOf(ipv6Packet(GUEST_LL, dst, [133, 0])), GUEST_MAC, 0, out, 0, out.length)).to.equal(0);
    const values = Array.from(counters.values);
    const total = values.reduce((a, b) => a + b, 0);
    expect(total).to.equal(4);
    expect(ndpDropLabel(NdpDrop.BadHopLimit)).to.equal('bad_hop_limit');
  });

  it('answers neighbour solicitations for the gateway with a router NA', () => {
    const responder = new NdpResponder(makeConfig(), null);
    const gateway = parseIpv6('2001:db8::fe')!;
    const guest = parseIpv6('2001:db8::1')!;
    const packet = ipv6Packet(guest, parseIpv6('ff02::1:ff00:fe')!, ns(gateway));
    const length = responder.handle(viewOf(packet), GUEST_MAC, 0, out, 0, out.length);
    const sent = parseSent(out, length);
    expect(sent.dst).to.equal('2001:db8::1');
    expect(sent.src).to.equal('2001:db8::fe');
    expect(sent.dstMac).to.equal(formatMac(GUEST_MAC));
    expect(sent.hopLimit).to.equal(255);
    expect(sent.checksumOk).to.equal(true);
    expect(sent.icmp[0]).to.equal(136);
    expect(sent.icmp[4]).to.equal(0x80 | 0x40 | 0x20); // router, solicited, override
    expect(formatIpv6(sent.icmp.subarray(8, 24))).to.equal('2001:db8::fe');
    const [[type, mac]] = optionsOf(sent.icmp, 24);
    expect(type).to.equal(NdpOption.TARGET_LINK_LAYER);
    expect(formatMac(mac)).to.equal('9a:55:9a:55:9a:55');
  });

  it('answers for remote addresses without the router flag, using the Ethernet source when there is no SLLA', () => {
    const responder = new NdpResponder(makeConfig(), null);
    const packet = ipv6Packet(GUEST_LL, parseIpv6('ff02::1:ff00:9')!, ns(parseIpv6('2001:db8::9')!, null));
    const length = responder.handle(viewOf(packet), GUEST_MAC, 0, out, 0, out.length);
    const sent = parseSent(out, length);
    expect(sent.icmp[4]).to.equal(0x40 | 0x20);
    expect(sent.dstMac).to.equal(formatMac(GUEST_MAC));
    expect(sent.dst).to.equal(formatIpv6(GUEST_LL));
  });

  it('never claims the guest\'s own addresses', () => {
    const counters = new CounterBlock();
    const responder = new NdpResponder(makeConfig(), counters);
    const guest = parseIpv6('2001:db8::1')!;
    const slaac = parseIpv6('2001:db8::5054:ff:fe12:3456')!;
    const dst = parseIpv6('ff02::1:ff00:1')!;
    expect(responder.handle(viewOf(ipv6Packet(GUEST_LL, dst, ns(guest))), GUEST_MAC, 0, out, 0, out.length)).to.equal(0);
    expect(responder.handle(viewOf(ipv6Packet(GUEST_LL, dst, ns(slaac))), GUEST_MAC, 0, out, 0, out.length)).to.equal(0);
    expect(responder.handle(viewOf(ipv6Packet(guest, dst, ns(GUEST_LL))), GUEST_MAC, 0, out, 0, out.length)).to.equal(0);
    // DAD probes (unspecified source, no SLLA) for the guest's addresses are ignored...
    const unspecified = new Uint8Array(16);
    expect(responder.handle(viewOf(ipv6Packet(unspecified, dst, ns(guest, null))), GUEST_MAC, 0, out, 0, out.length)).to.equal(0);
    expect(responder.handle(viewOf(ipv6Packet(unspecified, dst, ns(parseIpv6('2001:db8::77')!, null))), GUEST_MAC, 0, out, 0, out.length)).to.equal(0);
    // ...but ferry defends its own link-local address, answering all nodes.
    const length = responder.handle(viewOf(ipv6Packet(unspecified, dst, ns(FERRY_LL, null))), GUEST_MAC, 0, out, 0, out.length);
    const sent = parseSent(out, length);
    expect(sent.dst).to.equal('ff02::1');
    expect(sent.icmp[4] & 0x40).to.equal(0); // not solicited
  });

  it('ignores RA/NA from the guest and everything when NDP is off', () => {
    const responder = new NdpResponder(makeConfig(), null);
    const na = [136, 0, 0, 0, 0x20, 0, 0, 0, ...parseIpv6('2001:db8::1')!];
    expect(responder.handle(viewOf(ipv6Packet(GUEST_LL, parseIpv6('ff02::1')!, na)), GUEST_MAC, 0, out, 0, out.length)).to.equal(0);
    const off = new NdpResponder(makeConfig({ ndp: false }), null);
    expect(off.handle(viewOf(ipv6Packet(GUEST_LL, parseIpv6('ff02::2')!, rs(true))), GUEST_MAC, 0, out, 0, out.length)).to.equal(0);
    expect(off.tick(0)).to.equal(false);
    const noRa = new NdpResponder(makeConfig({ ra: false }), null);
    expect(noRa.handle(viewOf(ipv6Packet(GUEST_LL, parseIpv6('ff02::2')!, rs(true))), GUEST_MAC, 0, out, 0, out.length)).to.equal(0);
    // NA still works without RAs.
    expect(noRa.handle(viewOf(ipv6Packet(GUEST_LL, parseIpv6('ff02::1:ff00:fe')!, ns(parseIpv6('2001:db8::fe')!))), GUEST_MAC, 0, out, 0, out.length)).to.be.greaterThan(0);
  });

  it('refuses to write past the caller\'s buffer', () => {
    const responder = new NdpResponder(makeConfig(), null);
    const small = new Uint8Array(60);
    expect(responder.handle(viewOf(ipv6Packet(GUEST_LL, parseIpv6('ff02::2')!, rs(true))), GUEST_MAC, 0, small, 0, small.length)).to.equal(0);
    expect(responder.writeUnsolicitedRa(small, 0, small.length)).to.equal(0);
    expect(responder.maxFrameLength).to.be.lessThan(2048);
  });

  it('schedules unsolicited RAs: none at start (the guest may still be in DAD), three quick ones, then every 200-600 s', () => {
    let r = 0;
    const responder = new NdpResponder(makeConfig(), null, () => r);
    expect(responder.nextRaDueMs).to.equal(-1);
    // The first tick only starts the schedule.
    expect(responder.tick(1000)).to.equal(false);
    expect(responder.nextRaDueMs).to.equal(1000 + INITIAL_RA_INTERVAL_MS);
    expect(responder.tick(1000 + INITIAL_RA_INTERVAL_MS - 1)).to.equal(false);
    expect(responder.tick(1000 + INITIAL_RA_INTERVAL_MS)).to.equal(true);
    expect(responder.tick(1000 + 2 * INITIAL_RA_INTERVAL_MS)).to.equal(true);
    const t = 1000 + 3 * INITIAL_RA_INTERVAL_MS;
    r = 0.5;
    expect(responder.tick(t)).to.equal(true);
    expect(responder.nextRaDueMs).to.equal(t + (MIN_RA_INTERVAL_MS + MAX_RA_INTERVAL_MS) / 2);
    const length = responder.writeUnsolicitedRa(out, 0, out.length);
    const sent = parseSent(out, length);
    expect(sent.dst).to.equal('ff02::1');
    expect(sent.dstMac).to.equal('33:33:00:00:00:01');
    expect(sent.icmp[0]).to.equal(134);
    expect(sent.checksumOk).to.equal(true);
  });
});

describe('ndp responder output window', () => {
  it('never writes past the capacity it is given, even inside a larger buffer', () => {
    const responder = new NdpResponder(makeConfig(), null);
    const big = new Uint8Array(4096).fill(0xaa);
    const packet = ipv6Packet(GUEST_LL, parseIpv6('ff02::2')!, rs(true));
    expect(responder.handle(viewOf(packet), GUEST_MAC, 0, big, 100, 120)).to.equal(0);
    expect(big.every((b) => b === 0xaa)).to.equal(true);
    const length = responder.handle(viewOf(packet), GUEST_MAC, 0, big, 100, 1000);
    expect(length).to.be.greaterThan(0);
    expect(big[99]).to.equal(0xaa);
    expect(big[100 + length]).to.equal(0xaa);
  });
});

describe('Ipv6ControlPlane behind the stack', () => {
  function frameOf(ipPacket: Uint8Array, srcMac = GUEST_MAC, dstMac = parseMac('33:33:00:00:00:02')!): Uint8Array {
    const frame = new Uint8Array(14 + ipPacket.length);
    frame.set(dstMac, 0);
    frame.set(srcMac, 6);
    frame[12] = 0x86;
    frame[13] = 0xdd;
    frame.set(ipPacket, 14);
    return frame;
  }

  function setup(now = { t: 0 }) {
    const config = makeConfig();
    const port = new FakeFramePort();
    const counters = new Counters();
    const control = new Ipv6ControlPlane(config, counters, () => 0);
    const stack = new Stack({ config, port, counters, clock: { now: () => now.t }, ipv6Control: control });
    return { port, stack, control, now };
  }

  function deliver(stack: Stack, frame: Uint8Array, split = 0): void {
    const list = new SegmentList(4);
    if (split > 0) {
      list.push(frame, 0, split);
      list.push(frame, split, frame.length - split);
    } else {
      list.push(frame, 0, frame.length);
    }
    stack.receiveFrame(list, NO_OFFLOAD);
  }

  it('answers an RS, also when the frame is split across segments', () => {
    const { port, stack } = setup();
    deliver(stack, frameOf(ipv6Packet(GUEST_LL, parseIpv6('ff02::2')!, rs(true))));
    deliver(stack, frameOf(ipv6Packet(GUEST_LL, parseIpv6('ff02::2')!, rs(true))), 30);
    expect(port.frames).to.have.length(2);
    for (const frame of port.frames) {
      const sent = parseSent(frame, frame.length);
      expect(sent.icmp[0]).to.equal(134);
      expect(sent.checksumOk).to.equal(true);
    }
  });

  it('answers an NS for the gateway and leaves other ICMPv6 to the stack', () => {
    const { port, stack } = setup();
    deliver(stack, frameOf(ipv6Packet(parseIpv6('2001:db8::1')!, parseIpv6('ff02::1:ff00:fe')!, ns(parseIpv6('2001:db8::fe')!))));
    expect(port.frames).to.have.length(1);
    expect(parseSent(port.frames[0], port.frames[0].length).icmp[0]).to.equal(136);
    // An MLDv2 report is not NDP: the stack counts it, nothing is sent.
    deliver(stack, frameOf(ipv6Packet(GUEST_LL, parseIpv6('ff02::16')!, [143, 0, 0, 0, 0, 0, 0, 0], 1)));
    expect(port.frames).to.have.length(1);
  });

  it('answers DHCPv6 through the stack with a valid UDP checksum', () => {
    const { port, stack } = setup();
    const dhcp = [1, 0, 0, 7, 0, 1, 0, 10, 0, 3, 0, 1, ...GUEST_MAC, 0, 3, 0, 12, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0];
    const udpLength = 8 + dhcp.length;
    const packet = new Uint8Array(40 + udpLength);
    packet.set([0x60, 0, 0, 0, 0, udpLength, 17, 1]);
    packet.set(GUEST_LL, 8);
    packet.set(parseIpv6('ff02::1:2')!, 24);
    packet.set([2, 34, 2, 35, 0, udpLength, 0, 0, ...dhcp], 40);
    const sum = 0xffff - (((): number => {
      let s = 0;
      for (let i = 8; i < 40; i += 2) s += (packet[i] << 8) | packet[i + 1];
      s += udpLength + 17;
      for (let i = 40; i < packet.length; i += 2) s += (packet[i] << 8) | (packet[i + 1] ?? 0);
      while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
      return s;
    })());
    packet[46] = sum >> 8;
    packet[47] = sum & 0xff;
    deliver(stack, frameOf(packet));
    expect(port.frames).to.have.length(1);
    const frame = port.frames[0];
    expect((frame[12] << 8) | frame[13]).to.equal(0x86dd);
    const ip = frame.subarray(14);
    expect(ip[6]).to.equal(17);
    expect((ip[40] << 8) | ip[41]).to.equal(547);
    expect(ip[48]).to.equal(2); // ADVERTISE
    // The same message to a remote server is not ferry's to answer: it is left to UDP forwarding.
    const control = new Ipv6ControlPlane(makeConfig(), null);
    const remote = Uint8Array.from(packet);
    remote.set(parseIpv6('2001:db8::547')!, 24);
    const view = viewOf(remote);
    const rxFrame = { bytes: remote, base: -14 } as unknown as RxFrame;
    const ipPacket = { ipv6: view, l4Offset: view.upperOffset } as unknown as IpPacket;
    expect(control.handleDhcpv6(stack.ctx, rxFrame, ipPacket, null as unknown as UdpView)).to.equal(false);
  });

  it('sends unsolicited RAs from the timer hook', () => {
    const { port, stack, control } = setup();
    expect(control.onTimer(stack.ctx, 0)).to.equal(false);
    expect(control.onTimer(stack.ctx, 1000)).to.equal(false);
    expect(control.onTimer(stack.ctx, INITIAL_RA_INTERVAL_MS)).to.equal(true);
    expect(control.onTimer(stack.ctx, 2 * INITIAL_RA_INTERVAL_MS - 1)).to.equal(false);
    expect(control.onTimer(stack.ctx, 2 * INITIAL_RA_INTERVAL_MS)).to.equal(true);
    stack.flush();
    expect(port.frames).to.have.length(2);
    expect(parseSent(port.frames[0], port.frames[0].length).dst).to.equal('ff02::1');
    port.available = false;
    expect(control.onTimer(stack.ctx, 10 * INITIAL_RA_INTERVAL_MS)).to.equal(false);
  });
});

/** Namespaces need root; CI must run this (CI=true) rather than skip it. */
const mayCreateNamespaces = typeof process.getuid === 'function' && process.getuid() === 0 && spawnSync('ip', ['-V'], { stdio: 'ignore' }).status === 0;

/**
 * A real Linux kernel as the guest: it sits in its own namespace behind a
 * veth pair whose other end a child process serves with a packet socket,
 * feeding frames to Stack + Ipv6ControlPlane. The kernel must accept the RA
 * (SLAAC address, default route via ferry's link-local, MTU) and the NA.
 */
describe('Ipv6ControlPlane against the Linux kernel (namespaces)', function () {
  this.timeout(40000);
  const guestNs = `ferry-ndp-${process.pid}-guest`;
  const ferryNs = `ferry-ndp-${process.pid}-ferry`;
  const root = REPO_ROOT;
  let dir = '';
  let child: ChildProcess | null = null;
  let childOutput = '';

  const ip = (...args: string[]): string => execFileSync('ip', args, { encoding: 'utf8', timeout: 10000, stdio: ['ignore', 'pipe', 'pipe'] });

  before(function () {
    if (!mayCreateNamespaces) {
      if (process.env.CI === 'true') throw new Error('CI=true but namespaces cannot be created (need root and iproute2)');
      this.skip();
    }
    for (const ns of [guestNs, ferryNs]) spawnSync('ip', ['netns', 'del', ns], { stdio: 'ignore', timeout: 10000 });
    ip('netns', 'add', guestNs);
    ip('netns', 'add', ferryNs);
    ip('-n', ferryNs, 'link', 'add', 'ferry0', 'type', 'veth', 'peer', 'name', 'guest0', 'netns', guestNs);
    ip('-n', guestNs, 'link', 'set', 'guest0', 'address', formatMac(GUEST_MAC));
    // Quick router solicitation: no DAD wait for the link-local address.
    execFileSync('ip', ['netns', 'exec', guestNs, 'sysctl', '-qw', 'net.ipv6.conf.guest0.accept_dad=0', 'net.ipv6.conf.guest0.accept_ra=1', 'net.ipv6.conf.guest0.router_solicitation_delay=0'], { timeout: 10000 });
    ip('-n', ferryNs, 'link', 'set', 'ferry0', 'up');
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-ndp-'));
    const script = path.join(dir, 'serve.js');
    const requireDist = (m: string): string => `require(${JSON.stringify(path.join(root, 'dist', m))})`;
    fs.writeFileSync(
      script,
      `'use strict';
const { native } = ${requireDist('src/sys/native')};
const { Stack } = ${requireDist('src/stack/stack')};
const { Ipv6ControlPlane } = ${requireDist('src/stack/l2/ndp')};
const { SegmentList } = ${requireDist('src/io/frame-io')};
const { CounterBlock } = ${requireDist('src/sys/counters')};
const { dumpRtnetlink } = ${requireDist('src/backend/host/netlink')};
const { parseIpv6, parseMac, linkLocalFromMac } = ${requireDist('src/stack/address')};
const ourMac = parseMac('9a:55:9a:55:9a:55');
const config = {
  ourMac, guestMac: null, mtu: 1400, ipv4: null,
  ipv6: { address: parseIpv6('2001:db8::1'), prefixLength: 64, gateway: parseIpv6('2001:db8::fe'), linkLocal: linkLocalFromMac(ourMac),
          dns: [parseIpv6('2001:db8::53')], mapHostLoopback: null, mapGuestAddr: null, dnsForward: null, dnsHost: null },
  searchDomains: ['example.test'], interfaceName: null, dhcp: false, dhcpv6: true, ndp: true, ra: true, maxFlows: 16, udpIdleMs: 1000,
};
const ifindex = dumpRtnetlink(native).links.find((l) => l.name === 'ferry0').index;
const ETH_P_ALL_BE = 0x0300; // htons(0x0003) on a little-endian host
const fd = native.socket(17 /* AF_PACKET */, 3 /* SOCK_RAW */, ETH_P_ALL_BE);
const sll = Buffer.alloc(20);
sll.writeUInt16LE(17, 0);
sll.writeUInt16BE(3, 2);
sll.writeInt32LE(ifindex, 4);
native.bind(fd, sll);
const tx = new Uint8Array(2048);
const txList = new SegmentList(1);
let sent = 0;
const port = {
  onWritable: null, maxFrameLength: 1514,
  reserve(max) { txList.clear(); txList.push(tx, 0, Math.min(max, tx.length)); return txList; },
  commit(length) { if (native.write(fd, tx, 0, length) === length) sent++; },
  cancel() {}, flush() {},
};
const control = new Ipv6ControlPlane(config, null);
const stack = new Stack({ config, port, counters: new CounterBlock(), ipv6Control: control });
const rx = new Uint8Array(65536);
const rxList = new SegmentList(1);
const offload = { flags: 0, gsoType: 0, hdrLen: 0, gsoSize: 0, csumStart: 0, csumOffset: 0 };
const deadline = Date.now() + Number(process.argv[2]);
const nap = new Int32Array(new SharedArrayBuffer(4));
let received = 0;
let lastTimer = 0;
while (Date.now() < deadline) {
  if (Date.now() - lastTimer >= 200) { lastTimer = Date.now(); control.onTimer(stack.ctx, lastTimer); }
  const n = native.read(fd, rx, 0, rx.length);
  if (n < 0) { Atomics.wait(nap, 0, 0, 5); continue; }
  // The packet socket also sees what we sent.
  if (n < 14 || (rx[6] === ourMac[0] && rx[7] === ourMac[1] && rx[8] === ourMac[2] && rx[9] === ourMac[3] && rx[10] === ourMac[4] && rx[11] === ourMac[5])) continue;
  received++;
  rxList.clear();
  rxList.push(rx, 0, n);
  stack.receiveFrame(rxList, offload);
}
native.close(fd);
process.stdout.write(JSON.stringify({ received, sent }));
`,
    );
    child = spawn('ip', ['netns', 'exec', ferryNs, process.execPath, script, '20000'], { stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout!.on('data', (d: Buffer) => (childOutput += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (childOutput += d.toString()));
  });

  after(() => {
    if (!mayCreateNamespaces) return;
    if (child !== null && child.exitCode === null && child.pid !== undefined) {
      try {
        process.kill(child.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    for (const ns of [guestNs, ferryNs]) spawnSync('ip', ['netns', 'del', ns], { stdio: 'ignore', timeout: 10000 });
    if (dir !== '') fs.rmSync(dir, { recursive: true, force: true });
  });

  /** Poll `probe` until it returns true, at most timeoutMs. */
  async function waitFor(what: string, probe: () => boolean, timeoutMs = 15000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (probe()) return;
      await new Promise((r) => setTimeout(r, 200));
    }
    throw new Error(`timed out waiting for ${what}; server output: ${childOutput}`);
  }

  it('the guest kernel takes the RA: SLAAC address, default route via ferry\'s link-local, MTU', async () => {
    // Give the server a moment to open its socket, then bring the guest's link up (it solicits at once).
    await new Promise((r) => setTimeout(r, 500));
    ip('-n', guestNs, 'link', 'set', 'guest0', 'up');
    await waitFor('a default route', () => /via fe80::9855:9aff:fe55:9a55 dev guest0/.test(ip('-n', guestNs, '-6', 'route', 'show', 'default')));
    await waitFor('the SLAAC address', () => ip('-n', guestNs, '-6', 'addr', 'show', 'dev', 'guest0').includes('2001:db8::5054:ff:fe12:3456/64'));
    const mtu = execFileSync('ip', ['netns', 'exec', guestNs, 'sysctl', '-n', 'net.ipv6.conf.guest0.mtu'], { encoding: 'utf8', timeout: 10000 }).trim();
    expect(mtu).to.equal('1400');
  });

  it('the guest kernel resolves the gateway to ferry\'s MAC through our NA', async () => {
    // Any packet to the gateway makes the kernel solicit it (the datagram itself goes nowhere here).
    const send = "const s = require('dgram').createSocket('udp6'); s.send('x', 9, '2001:db8::fe', () => s.close());";
    execFileSync('ip', ['netns', 'exec', guestNs, process.execPath, '-e', send], { stdio: 'ignore', timeout: 10000 });
    await waitFor('a neighbour entry', () => /lladdr 9a:55:9a:55:9a:55 router (REACHABLE|STALE|DELAY|PROBE)/.test(ip('-n', guestNs, '-6', 'neigh', 'show', '2001:db8::fe', 'dev', 'guest0')));
  });
});
