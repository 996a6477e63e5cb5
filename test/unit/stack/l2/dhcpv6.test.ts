import { expect } from 'chai';
import { CounterBlock } from '../../../../src/sys/counters';
import { formatIpv6, formatMac, linkLocalFromMac, parseIpv6, parseMac } from '../../../../src/stack/address';
import type { StackConfig } from '../../../../src/stack/config';
import { Dhcpv6Server, isDhcpv6ServerDestination } from '../../../../src/stack/l2/dhcpv6';
import { finishChecksum, pseudoHeaderSumIpv6, sumBytes } from '../../../../src/stack/wire/checksum';
import {
  Dhcpv6Error,
  Dhcpv6MessageType as T,
  Dhcpv6Option as O,
  Dhcpv6OptionCursor,
  Dhcpv6Status,
  Dhcpv6Summary,
  Dhcpv6Writer,
  duidLlFromMac,
  oroRequests,
  parseDhcpv6,
} from '../../../../src/stack/wire/dhcpv6';
import { Ipv6View } from '../../../../src/stack/wire/ipv6';
import { decodeDomainList } from '../../../../src/stack/wire/ndp';

const OUR_MAC = parseMac('9a:55:9a:55:9a:55')!;
const GUEST_MAC = parseMac('52:54:00:12:34:56')!;
const GUEST_LL = linkLocalFromMac(GUEST_MAC);
const FERRY_LL = linkLocalFromMac(OUR_MAC);
const ALL_SERVERS = parseIpv6('ff02::1:2')!;
const CLIENT_DUID = [0, 3, 0, 1, ...GUEST_MAC];
const SERVER_DUID = Array.from(duidLlFromMac(OUR_MAC));

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
      dns: [parseIpv6('2001:db8::53')!],
      mapHostLoopback: null,
      mapGuestAddr: null,
      dnsForward: null,
      dnsHost: null,
    },
    searchDomains: ['example.com'],
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

const opt = (code: number, data: number[]): number[] => [code >> 8, code & 0xff, data.length >> 8, data.length & 0xff, ...data];
const iaNa = (iaid: number[], inner: number[] = []): number[] => opt(O.IA_NA, [...iaid, 0, 0, 0, 0, 0, 0, 0, 0, ...inner]);
const iaAddr = (address: Uint8Array): number[] => opt(O.IAADDR, [...address, 0, 0, 0, 0, 0, 0, 0, 0]);
const message = (type: number, options: number[]): number[] => [type, 0x12, 0x34, 0x56, ...options];

/** IPv6 + UDP (546 -> 547) packet around a DHCPv6 message. */
function udpPacket(src: Uint8Array, dst: Uint8Array, payload: number[], dstPort = 547): Uint8Array {
  const udpLength = 8 + payload.length;
  const p = new Uint8Array(40 + udpLength);
  p[0] = 0x60;
  p[4] = udpLength >> 8;
  p[5] = udpLength & 0xff;
  p[6] = 17;
  p[7] = 1;
  p.set(src, 8);
  p.set(dst, 24);
  p.set([546 >> 8, 546 & 0xff, dstPort >> 8, dstPort & 0xff, udpLength >> 8, udpLength & 0xff, 0, 0], 40);
  p.set(payload, 48);
  return p;
}

function viewOf(packet: Uint8Array): Ipv6View {
  const view = new Ipv6View().reset(packet, 0, packet.length);
  expect(view.validate()).to.equal(0);
  expect(view.findUpperLayer()).to.equal(0);
  return view;
}

interface Reply {
  dstMac: string;
  src: string;
  dst: string;
  srcPort: number;
  dstPort: number;
  type: number;
  xid: number;
  options: Map<number, Uint8Array[]>;
}

function parseReply(out: Uint8Array, length: number): Reply {
  const frame = out.subarray(0, length);
  const ip = frame.subarray(14);
  expect(40 + ((ip[4] << 8) | ip[5])).to.equal(ip.length);
  const udp = ip.subarray(40);
  expect((udp[4] << 8) | udp[5]).to.equal(udp.length);
  expect(finishChecksum(sumBytes(udp, 0, udp.length, pseudoHeaderSumIpv6(ip, 8, ip, 24, 17, udp.length)))).to.equal(0);
  const dhcp = udp.subarray(8);
  const options = new Map<number, Uint8Array[]>();
  const cursor = new Dhcpv6OptionCursor().reset(dhcp, 4, dhcp.length);
  while (cursor.next()) {
    const list = options.get(cursor.code) ?? [];
    list.push(dhcp.subarray(cursor.dataOffset, cursor.dataOffset + cursor.dataLength));
    options.set(cursor.code, list);
  }
  expect(cursor.error).to.equal(Dhcpv6Error.Ok);
  return {
    dstMac: formatMac(frame.subarray(0, 6)),
    src: formatIpv6(ip.subarray(8, 24)),
    dst: formatIpv6(ip.subarray(24, 40)),
    srcPort: (udp[0] << 8) | udp[1],
    dstPort: (udp[2] << 8) | udp[3],
    type: dhcp[0],
    xid: (dhcp[1] << 16) | (dhcp[2] << 8) | dhcp[3],
    options,
  };
}

/** IA Address options inside an IA_NA's data, as [address, preferred, valid]. */
function iaAddresses(ia: Uint8Array): [string, number, number][] {
  const result: [string, number, number][] = [];
  const cursor = new Dhcpv6OptionCursor().reset(ia, 12, ia.length);
  while (cursor.next()) {
    if (cursor.code !== O.IAADDR) continue;
    const d = Buffer.from(ia.subarray(cursor.dataOffset, cursor.dataOffset + cursor.dataLength));
    result.push([formatIpv6(d.subarray(0, 16)), d.readUInt32BE(16), d.readUInt32BE(20)]);
  }
  return result;
}

function statusOf(data: Uint8Array | undefined): number {
  expect(data).to.not.equal(undefined);
  return (data![0] << 8) | data![1];
}

describe('wire/dhcpv6', () => {
  const summary = new Dhcpv6Summary();
  const parse = (bytes: number[]): Dhcpv6Error => parseDhcpv6(Uint8Array.from(bytes), 0, bytes.length, summary);

  it('parses the options a server needs', () => {
    const bytes = message(T.SOLICIT, [
      ...opt(O.CLIENTID, CLIENT_DUID),
      ...opt(O.ELAPSED_TIME, [0, 100]),
      ...opt(O.ORO, [0, 23, 0, 24]),
      ...opt(O.RAPID_COMMIT, []),
      ...iaNa([0, 0, 0, 7]),
      ...opt(999, [1, 2, 3]),
    ]);
    expect(parse(bytes)).to.equal(Dhcpv6Error.Ok);
    expect(summary.messageType).to.equal(T.SOLICIT);
    expect(summary.transactionId).to.equal(0x123456);
    expect(summary.clientIdLength).to.equal(10);
    expect(summary.serverIdOffset).to.equal(-1);
    expect(summary.elapsedTime).to.equal(100);
    expect(summary.rapidCommit).to.equal(true);
    expect(summary.iaNaCount).to.equal(1);
    expect(oroRequests(Uint8Array.from(bytes), summary.oroOffset, summary.oroLength, 24)).to.equal(true);
    expect(oroRequests(Uint8Array.from(bytes), summary.oroOffset, summary.oroLength, 25)).to.equal(false);
  });

  it('rejects malformed messages', () => {
    expect(parse([1, 2, 3])).to.equal(Dhcpv6Error.Truncated);
    expect(parse(message(T.SOLICIT, [0, 1, 0, 20, 0, 3]))).to.equal(Dhcpv6Error.OptionOverrun);
    expect(parse(message(T.SOLICIT, [0, 1, 0]))).to.equal(Dhcpv6Error.OptionOverrun);
    expect(parse(message(T.SOLICIT, [...opt(O.CLIENTID, CLIENT_DUID), ...opt(O.CLIENTID, CLIENT_DUID)]))).to.equal(Dhcpv6Error.DuplicateOption);
    expect(parse(message(T.SOLICIT, opt(O.CLIENTID, [0, 3])))).to.equal(Dhcpv6Error.BadOptionLength);
    expect(parse(message(T.SOLICIT, opt(O.CLIENTID, new Array(131).fill(1))))).to.equal(Dhcpv6Error.BadOptionLength);
    expect(parse(message(T.SOLICIT, opt(O.ELAPSED_TIME, [1])))).to.equal(Dhcpv6Error.BadOptionLength);
    expect(parse(message(T.SOLICIT, opt(O.RAPID_COMMIT, [1])))).to.equal(Dhcpv6Error.BadOptionLength);
    expect(parse(message(T.SOLICIT, opt(O.ORO, [0, 23, 0])))).to.equal(Dhcpv6Error.BadOptionLength);
    expect(parse(message(T.SOLICIT, opt(O.IA_NA, [0, 0, 0, 1])))).to.equal(Dhcpv6Error.BadOptionLength);
    // Nested option overrunning its IA_NA (but not the message).
    expect(parse(message(T.REQUEST, [...iaNa([0, 0, 0, 1], [0, 5, 0, 40]), ...new Array(40).fill(0)]))).to.equal(Dhcpv6Error.OptionOverrun);
    expect(parse(message(T.REQUEST, iaNa([0, 0, 0, 1], opt(O.IAADDR, [1, 2, 3]))))).to.equal(Dhcpv6Error.BadOptionLength);
    expect(parse(message(T.RELAY_FORW, []))).to.equal(Dhcpv6Error.RelayMessage);
    // Lots of empty options are walked within bounds and accepted.
    expect(parse(message(T.SOLICIT, new Array(4 * 1000).fill(0)))).to.equal(Dhcpv6Error.Ok);
  });

  it('writes nested options and stops at the capacity', () => {
    const out = new Uint8Array(64);
    const w = new Dhcpv6Writer().reset(out, 2, 40);
    w.header(T.REPLY, 0xabcdef).begin(O.IA_NA).u32(1).u32(2).u32(3).begin(O.STATUS_CODE).u16(0).end().end();
    expect(w.overflow).to.equal(false);
    expect(w.length).to.equal(4 + 4 + 12 + 6);
    expect(Array.from(out.subarray(2, 10))).to.deep.equal([7, 0xab, 0xcd, 0xef, 0, 3, 0, 18]);
    expect(Array.from(out.subarray(22, 26))).to.deep.equal([0, 13, 0, 2]);
    w.bytes(new Uint8Array(100));
    expect(w.overflow).to.equal(true);
    const unbalanced = new Dhcpv6Writer().reset(out, 0, 64);
    unbalanced.end();
    expect(unbalanced.overflow).to.equal(true);
  });
});

describe('dhcpv6 server', () => {
  const out = new Uint8Array(2048);

  it('answers SOLICIT with an ADVERTISE holding the host address, DNS and search list', () => {
    const counters = new CounterBlock();
    const server = new Dhcpv6Server(makeConfig(), counters);
    const packet = udpPacket(GUEST_LL, ALL_SERVERS, message(T.SOLICIT, [...opt(O.CLIENTID, CLIENT_DUID), ...opt(O.ORO, [0, 23, 0, 24]), ...iaNa([0, 0, 0, 9])]));
    const view = viewOf(packet);
    expect(isDhcpv6ServerDestination(makeConfig(), view)).to.equal(true);
    const length = server.handle(view, GUEST_MAC, 0, out, 0, out.length);
    expect(length).to.be.greaterThan(0);
    const r = parseReply(out, length);
    expect(r.type).to.equal(T.ADVERTISE);
    expect(r.xid).to.equal(0x123456);
    expect(r.dstMac).to.equal(formatMac(GUEST_MAC));
    expect(r.src).to.equal(formatIpv6(FERRY_LL));
    expect(r.dst).to.equal(formatIpv6(GUEST_LL));
    expect([r.srcPort, r.dstPort]).to.deep.equal([547, 546]);
    expect(Array.from(r.options.get(O.CLIENTID)![0])).to.deep.equal(CLIENT_DUID);
    expect(Array.from(r.options.get(O.SERVERID)![0])).to.deep.equal(SERVER_DUID);
    expect(Array.from(r.options.get(O.PREFERENCE)![0])).to.deep.equal([255]);
    const ia = r.options.get(O.IA_NA)![0];
    expect(Array.from(ia.subarray(0, 4))).to.deep.equal([0, 0, 0, 9]);
    expect(iaAddresses(ia)).to.deep.equal([['2001:db8::1', 0xffffffff, 0xffffffff]]);
    expect(formatIpv6(r.options.get(O.DNS_SERVERS)![0])).to.equal('2001:db8::53');
    const domains = r.options.get(O.DOMAIN_LIST)![0];
    expect(decodeDomainList(domains, 0, domains.length)).to.deep.equal(['example.com']);
  });

  it('--fqdn: option 39 with flag N and the name in wire format; none without it', () => {
    const solicit = viewOf(udpPacket(GUEST_LL, ALL_SERVERS, message(T.SOLICIT, [...opt(O.CLIENTID, CLIENT_DUID), ...iaNa([0, 0, 0, 9])])));
    const withName = new Dhcpv6Server({ ...makeConfig(), fqdn: 'vm1.example.org' }, null);
    const r = parseReply(out, withName.handle(solicit, GUEST_MAC, 0, out, 0, out.length));
    const fqdn = r.options.get(39)![0];
    expect(fqdn[0]).to.equal(0x04);
    expect(decodeDomainList(fqdn, 1, fqdn.length - 1)).to.deep.equal(['vm1.example.org']);
    const plain = parseReply(out, new Dhcpv6Server(makeConfig(), null).handle(solicit, GUEST_MAC, 0, out, 0, out.length));
    expect(plain.options.has(39)).to.equal(false);
  });

  it('answers SOLICIT with rapid commit by a REPLY', () => {
    const server = new Dhcpv6Server(makeConfig(), null);
    const packet = udpPacket(GUEST_LL, ALL_SERVERS, message(T.SOLICIT, [...opt(O.CLIENTID, CLIENT_DUID), ...opt(O.RAPID_COMMIT, []), ...iaNa([0, 0, 0, 9])]));
    const r = parseReply(out, server.handle(viewOf(packet), GUEST_MAC, 0, out, 0, out.length));
    expect(r.type).to.equal(T.REPLY);
    expect(r.options.get(O.RAPID_COMMIT)![0].length).to.equal(0);
    expect(iaAddresses(r.options.get(O.IA_NA)![0])[0][0]).to.equal('2001:db8::1');
  });

  it('answers REQUEST/RENEW/REBIND with the address, withdrawing stale ones', () => {
    const server = new Dhcpv6Server(makeConfig(), null);
    for (const type of [T.REQUEST, T.RENEW]) {
      const packet = udpPacket(GUEST_LL, ALL_SERVERS, message(type, [...opt(O.CLIENTID, CLIENT_DUID), ...opt(O.SERVERID, SERVER_DUID), ...iaNa([0, 0, 0, 9], iaAddr(parseIpv6('2001:db8::1')!))]));
      const r = parseReply(out, server.handle(viewOf(packet), GUEST_MAC, 0, out, 0, out.length));
      expect(r.type).to.equal(T.REPLY);
      expect(iaAddresses(r.options.get(O.IA_NA)![0])).to.deep.equal([['2001:db8::1', 0xffffffff, 0xffffffff]]);
    }
    const rebind = udpPacket(GUEST_LL, ALL_SERVERS, message(T.REBIND, [...opt(O.CLIENTID, CLIENT_DUID), ...iaNa([0, 0, 0, 9], iaAddr(parseIpv6('2001:db8:1::5')!)), ...iaNa([0, 0, 0, 10])]));
    const r = parseReply(out, server.handle(viewOf(rebind), GUEST_MAC, 0, out, 0, out.length));
    const [first, second] = r.options.get(O.IA_NA)!;
    expect(iaAddresses(first)).to.deep.equal([
      ['2001:db8::1', 0xffffffff, 0xffffffff],
      ['2001:db8:1::5', 0, 0],
    ]);
    const inner = new Dhcpv6OptionCursor().reset(second, 12, second.length);
    expect(inner.next()).to.equal(true);
    expect(inner.code).to.equal(O.STATUS_CODE);
    expect(statusOf(second.subarray(inner.dataOffset))).to.equal(Dhcpv6Status.NO_ADDRS_AVAIL);
  });

  it('answers CONFIRM with Success or NotOnLink, and not at all without addresses', () => {
    const server = new Dhcpv6Server(makeConfig(), null);
    const confirm = (address: string | null): number =>
      server.handle(viewOf(udpPacket(GUEST_LL, ALL_SERVERS, message(T.CONFIRM, [...opt(O.CLIENTID, CLIENT_DUID), ...iaNa([0, 0, 0, 1], address ? iaAddr(parseIpv6(address)!) : [])]))), GUEST_MAC, 0, out, 0, out.length);
    let r = parseReply(out, confirm('2001:db8::1'));
    expect(statusOf(r.options.get(O.STATUS_CODE)![0])).to.equal(Dhcpv6Status.SUCCESS);
    r = parseReply(out, confirm('2001:db8:5::1'));
    expect(statusOf(r.options.get(O.STATUS_CODE)![0])).to.equal(Dhcpv6Status.NOT_ON_LINK);
    expect(confirm(null)).to.equal(0);
  });

  it('answers RELEASE with Success and INFORMATION-REQUEST with DNS only', () => {
    const server = new Dhcpv6Server(makeConfig(), null);
    let r = parseReply(out, server.handle(viewOf(udpPacket(GUEST_LL, ALL_SERVERS, message(T.RELEASE, [...opt(O.CLIENTID, CLIENT_DUID), ...opt(O.SERVERID, SERVER_DUID), ...iaNa([0, 0, 0, 1])]))), GUEST_MAC, 0, out, 0, out.length));
    expect(r.type).to.equal(T.REPLY);
    expect(statusOf(r.options.get(O.STATUS_CODE)![0])).to.equal(Dhcpv6Status.SUCCESS);
    expect(r.options.has(O.IA_NA)).to.equal(false);
    r = parseReply(out, server.handle(viewOf(udpPacket(GUEST_LL, FERRY_LL, message(T.INFORMATION_REQUEST, opt(O.ORO, [0, 23])))), GUEST_MAC, 0, out, 0, out.length));
    expect(r.type).to.equal(T.REPLY);
    expect(r.options.has(O.IA_NA)).to.equal(false);
    expect(r.options.has(O.CLIENTID)).to.equal(false);
    expect(formatIpv6(r.options.get(O.DNS_SERVERS)![0])).to.equal('2001:db8::53');
    expect(r.options.has(O.DOMAIN_LIST)).to.equal(true);
  });

  it('drops what it must not answer', () => {
    const counters = new CounterBlock();
    const server = new Dhcpv6Server(makeConfig(), counters);
    const otherServer = [0, 3, 0, 1, 1, 2, 3, 4, 5, 6];
    const cases: [Uint8Array, string][] = [
      [udpPacket(GUEST_LL, ALL_SERVERS, message(T.SOLICIT, iaNa([0, 0, 0, 1]))), 'no client id'],
      [udpPacket(GUEST_LL, ALL_SERVERS, message(T.SOLICIT, [...opt(O.CLIENTID, CLIENT_DUID), ...opt(O.SERVERID, SERVER_DUID)])), 'solicit with server id'],
      [udpPacket(GUEST_LL, ALL_SERVERS, message(T.REQUEST, [...opt(O.CLIENTID, CLIENT_DUID), ...opt(O.SERVERID, otherServer)])), 'other server'],
      [udpPacket(GUEST_LL, ALL_SERVERS, message(T.RENEW, opt(O.CLIENTID, CLIENT_DUID))), 'renew without server id'],
      [udpPacket(GUEST_LL, ALL_SERVERS, message(T.REPLY, opt(O.CLIENTID, CLIENT_DUID))), 'server message'],
      [udpPacket(GUEST_LL, ALL_SERVERS, message(T.SOLICIT, [0, 1, 0, 99])), 'overrun'],
      [udpPacket(GUEST_LL, ALL_SERVERS, [1, 2]), 'truncated'],
      [udpPacket(new Uint8Array(16), ALL_SERVERS, message(T.SOLICIT, opt(O.CLIENTID, CLIENT_DUID))), 'unspecified source'],
      [udpPacket(GUEST_LL, ALL_SERVERS, message(T.SOLICIT, opt(O.CLIENTID, CLIENT_DUID)), 548), 'wrong port'],
    ];
    for (const [packet, what] of cases) expect(server.handle(viewOf(packet), GUEST_MAC, 0, out, 0, out.length), what).to.equal(0);
    expect(Array.from(counters.values).reduce((a, b) => a + b, 0)).to.equal(cases.length);
    // A UDP length beyond the packet.
    const bad = udpPacket(GUEST_LL, ALL_SERVERS, message(T.SOLICIT, opt(O.CLIENTID, CLIENT_DUID)));
    bad[45] += 10;
    expect(server.handle(viewOf(bad), GUEST_MAC, 0, out, 0, out.length)).to.equal(0);
    // Disabled.
    const off = new Dhcpv6Server(makeConfig({ dhcpv6: false }), null);
    expect(off.handle(viewOf(udpPacket(GUEST_LL, ALL_SERVERS, message(T.SOLICIT, opt(O.CLIENTID, CLIENT_DUID)))), GUEST_MAC, 0, out, 0, out.length)).to.equal(0);
    // No room.
    expect(server.handle(viewOf(udpPacket(GUEST_LL, ALL_SERVERS, message(T.SOLICIT, opt(O.CLIENTID, CLIENT_DUID)))), GUEST_MAC, 0, new Uint8Array(80), 0, 80)).to.equal(0);
  });
});
