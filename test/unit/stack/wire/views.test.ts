import { expect } from 'chai';
import { EthernetError, EthernetView, EtherType, emitEthernet } from '../../../../src/stack/wire/ethernet';
import { ArpError, ArpView, emitArp } from '../../../../src/stack/wire/arp';
import { IpProtocol, Ipv4Error, Ipv4View, emitIpv4 } from '../../../../src/stack/wire/ipv4';
import { Ipv6Error, Ipv6View, MAX_EXTENSION_HEADERS, emitIpv6 } from '../../../../src/stack/wire/ipv6';
import { IcmpError, IcmpView } from '../../../../src/stack/wire/icmp';
import { UdpError, UdpView, emitUdp } from '../../../../src/stack/wire/udp';
import { TcpError, TcpFlag, TcpOptions, TcpView } from '../../../../src/stack/wire/tcp';
import { pseudoHeaderSumIpv4, pseudoHeaderSumIpv6, setBe16 } from '../../../../src/stack/wire/checksum';
import { CAPTURED, hex, GUEST_MAC, GUEST_V4, GUEST_V6, GATEWAY_V4, GATEWAY_V6, OUR_MAC, concat, ipv6Packet, udpDatagram } from '../../../support/fakes/stack-fakes';

describe('wire/ethernet', () => {
  it('reads the captured frame header and rejects 13 bytes', () => {
    const f = hex(CAPTURED.udp4);
    const eth = new EthernetView().reset(f, 0, f.length);
    expect(eth.validate()).to.equal(EthernetError.Ok);
    expect(eth.etherType).to.equal(EtherType.Ipv4);
    expect(eth.payloadOffset).to.equal(14);
    expect(eth.reset(f, 0, 13).validate()).to.equal(EthernetError.Truncated);
    expect(eth.reset(f, f.length - 10, 14).validate()).to.equal(EthernetError.Truncated);
  });

  it('emits a header and flags group addresses', () => {
    const b = new Uint8Array(20);
    expect(emitEthernet(b, 2, GUEST_MAC, OUR_MAC, EtherType.Arp)).to.equal(16);
    const eth = new EthernetView().reset(b, 2, 18);
    expect(Array.from(b.subarray(2, 8))).to.deep.equal(Array.from(GUEST_MAC));
    expect(Array.from(b.subarray(8, 14))).to.deep.equal(Array.from(OUR_MAC));
    expect(eth.etherType).to.equal(EtherType.Arp);
    expect(eth.dstIsMulticast).to.equal(false);
    b[2] = 0x33;
    expect(eth.dstIsMulticast).to.equal(true);
  });
});

describe('wire/arp', () => {
  function request(): Uint8Array {
    const b = new Uint8Array(28);
    emitArp(b, 0, 1, GUEST_MAC, GUEST_V4, 0, new Uint8Array(6), 0, GATEWAY_V4, 0);
    return b;
  }

  it('round-trips a request', () => {
    const v = new ArpView().reset(request(), 0, 28);
    expect(v.validate()).to.equal(ArpError.Ok);
    expect(v.operation).to.equal(1);
    expect(Array.from(v.bytes.subarray(v.targetIpOffset, v.targetIpOffset + 4))).to.deep.equal([192, 0, 2, 254]);
  });

  it('rejects truncated packets and non Ethernet/IPv4 ARP', () => {
    expect(new ArpView().reset(request(), 0, 27).validate()).to.equal(ArpError.Truncated);
    const cases: [number, number, ArpError][] = [
      [1, 6, ArpError.BadHardware], // htype 6 (IEEE 802)
      [4, 8, ArpError.BadHardware], // hlen 8
      [2, 0x86, ArpError.BadProtocol], // ptype 0x86dd
      [5, 16, ArpError.BadProtocol], // plen 16
      [7, 3, ArpError.BadOperation], // RARP request
    ];
    for (const [at, value, error] of cases) {
      const b = request();
      b[at] = value;
      expect(new ArpView().reset(b, 0, 28).validate(), `byte ${at}=${value}`).to.equal(error);
    }
  });
});

describe('wire/ipv4', () => {
  it('reads the fields of a captured packet', () => {
    const f = hex(CAPTURED.udp4);
    const ip = new Ipv4View().reset(f, 14, f.length - 14);
    expect(ip.validate()).to.equal(Ipv4Error.Ok);
    expect(ip.protocol).to.equal(IpProtocol.Udp);
    expect(ip.headerLength).to.equal(20);
    expect(ip.totalLength).to.equal(f.length - 14);
    expect(ip.dontFragment).to.equal(true);
    expect(ip.isFragment).to.equal(false);
    expect(ip.ttl).to.equal(64);
    expect(Array.from(f.subarray(ip.dstOffset, ip.dstOffset + 4))).to.deep.equal([192, 0, 2, 2]);
    expect(ip.payloadOffset).to.equal(34);
  });

  it('returns a reason for each kind of malformed header', () => {
    const good = hex(CAPTURED.udp4).subarray(14);
    const mutate = (fn: (b: Uint8Array) => void, length = good.length, fixChecksum = true): Ipv4Error => {
      const b = good.slice();
      fn(b);
      const v = new Ipv4View().reset(b, 0, length);
      if (fixChecksum && length >= 20 && v.headerLength >= 20 && v.headerLength <= length) v.fillChecksum();
      return v.validate();
    };
    expect(mutate(() => undefined, 19)).to.equal(Ipv4Error.Truncated);
    expect(mutate((b) => (b[0] = 0x65))).to.equal(Ipv4Error.BadVersion);
    expect(mutate((b) => (b[0] = 0x44))).to.equal(Ipv4Error.BadIhl);
    expect(mutate((b) => (b[0] = 0x4f), 40)).to.equal(Ipv4Error.BadIhl); // 60-byte header in 40 bytes
    expect(mutate((b) => setBe16(b, 2, good.length + 1))).to.equal(Ipv4Error.BadTotalLength);
    expect(mutate((b) => setBe16(b, 2, 19))).to.equal(Ipv4Error.BadTotalLength);
    expect(mutate((b) => (b[8] = 1), good.length, false)).to.equal(Ipv4Error.BadChecksum);
  });

  it('tolerates Ethernet padding after the total length', () => {
    const padded = concat(hex(CAPTURED.icmpEchoRequest).subarray(14), new Uint8Array(10));
    const ip = new Ipv4View().reset(padded, 0, padded.length);
    expect(ip.validate()).to.equal(Ipv4Error.Ok);
    expect(ip.payloadLength).to.equal(25);
  });

  it('detects fragments', () => {
    const b = hex(CAPTURED.udp4).subarray(14).slice();
    const ip = new Ipv4View().reset(b, 0, b.length);
    setBe16(b, 6, 0x2000); // MF
    expect(ip.isFragment).to.equal(true);
    setBe16(b, 6, 0x0003); // offset 24
    expect(ip.fragmentOffset).to.equal(24);
    expect(ip.isFragment).to.equal(true);
  });

  it('emits a valid header', () => {
    const b = new Uint8Array(30);
    expect(emitIpv4(b, 0, GATEWAY_V4, GUEST_V4, IpProtocol.Icmp, 10, 63)).to.equal(20);
    const ip = new Ipv4View().reset(b, 0, 30);
    expect(ip.validate()).to.equal(Ipv4Error.Ok);
    expect(ip.ttl).to.equal(63);
    expect(ip.totalLength).to.equal(30);
  });
});

describe('wire/ipv6', () => {
  /** An IPv6 packet whose payload is the given extension headers then an 8-byte UDP header. */
  function withExtensions(chain: { type: number; body: Uint8Array }[], last = IpProtocol.Udp): Uint8Array {
    const parts: Uint8Array[] = [];
    for (let i = 0; i < chain.length; i++) {
      const body = chain[i].body.slice();
      body[0] = i + 1 < chain.length ? chain[i + 1].type : last;
      parts.push(body);
    }
    parts.push(udpDatagram(GUEST_V6, GATEWAY_V6, 1, 2, new Uint8Array(0)));
    return ipv6Packet(GUEST_V6, GATEWAY_V6, chain.length > 0 ? chain[0].type : last, concat(...parts));
  }
  const opts8 = (): Uint8Array => Uint8Array.from([0, 0, 1, 4, 0, 0, 0, 0]); // PadN
  const opts16 = (): Uint8Array => Uint8Array.from([0, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);

  it('reads a captured packet and finds ICMPv6', () => {
    const f = hex(CAPTURED.icmpv6PortUnreachable);
    const ip = new Ipv6View().reset(f, 14, f.length - 14);
    expect(ip.validate()).to.equal(Ipv6Error.Ok);
    expect(ip.findUpperLayer()).to.equal(Ipv6Error.Ok);
    expect(ip.upperProtocol).to.equal(IpProtocol.Icmpv6);
    expect(ip.upperOffset).to.equal(54);
    expect(ip.upperLength).to.equal(59);
    expect(ip.hopLimit).to.equal(64);
    expect(ip.flowLabel).to.equal(0x1dbd7);
  });

  it('rejects truncation, wrong version and payload overrun', () => {
    const f = hex(CAPTURED.icmpv6PortUnreachable).subarray(14).slice();
    expect(new Ipv6View().reset(f, 0, 39).validate()).to.equal(Ipv6Error.Truncated);
    expect(new Ipv6View().reset(f, 0, f.length - 1).validate()).to.equal(Ipv6Error.BadPayloadLength);
    f[0] = 0x40;
    expect(new Ipv6View().reset(f, 0, f.length).validate()).to.equal(Ipv6Error.BadVersion);
  });

  it('skips Hop-by-Hop, Destination Options, Routing and AH headers', () => {
    const ah = new Uint8Array(12);
    ah[1] = 1; // (1 + 2) * 4 = 12 bytes
    const p = withExtensions([
      { type: IpProtocol.HopByHop, body: opts8() },
      { type: IpProtocol.Ipv6DestOpts, body: opts16() },
      { type: IpProtocol.Ipv6Route, body: opts8() },
      { type: IpProtocol.Ah, body: ah },
    ]);
    const ip = new Ipv6View().reset(p, 0, p.length);
    expect(ip.validate()).to.equal(Ipv6Error.Ok);
    expect(ip.findUpperLayer()).to.equal(Ipv6Error.Ok);
    expect(ip.upperProtocol).to.equal(IpProtocol.Udp);
    expect(ip.upperOffset).to.equal(40 + 8 + 16 + 8 + 12);
    expect(ip.upperLength).to.equal(8);
    expect(ip.fragmented).to.equal(false);
  });

  it('flags fragments', () => {
    const p = withExtensions([{ type: IpProtocol.Ipv6Fragment, body: new Uint8Array(8) }]);
    const ip = new Ipv6View().reset(p, 0, p.length);
    expect(ip.findUpperLayer()).to.equal(Ipv6Error.Ok);
    expect(ip.fragmented).to.equal(true);
  });

  it('bounds the number of extension headers', () => {
    const chain = Array.from({ length: MAX_EXTENSION_HEADERS + 1 }, () => ({ type: IpProtocol.Ipv6DestOpts, body: opts8() }));
    const p = withExtensions(chain);
    const ip = new Ipv6View().reset(p, 0, p.length);
    expect(ip.validate()).to.equal(Ipv6Error.Ok);
    expect(ip.findUpperLayer()).to.equal(Ipv6Error.TooManyExtensions);
    const ok = withExtensions(chain.slice(1));
    expect(new Ipv6View().reset(ok, 0, ok.length).findUpperLayer()).to.equal(Ipv6Error.Ok);
  });

  it('rejects an extension header whose length runs past the payload', () => {
    const body = opts8();
    body[1] = 200; // claims 1608 bytes
    const p = withExtensions([{ type: IpProtocol.HopByHop, body }]);
    expect(new Ipv6View().reset(p, 0, p.length).findUpperLayer()).to.equal(Ipv6Error.ExtensionTruncated);
    // A Hop-by-Hop header announced but the payload ends before its length byte.
    const bare = ipv6Packet(GUEST_V6, GATEWAY_V6, IpProtocol.HopByHop, Uint8Array.from([17]));
    expect(new Ipv6View().reset(bare, 0, bare.length).findUpperLayer()).to.equal(Ipv6Error.ExtensionTruncated);
  });

  it('emits a header', () => {
    const b = new Uint8Array(48);
    expect(emitIpv6(b, 0, GATEWAY_V6, GUEST_V6, IpProtocol.Udp, 8, 255, 0x12, 0xabcde)).to.equal(40);
    const ip = new Ipv6View().reset(b, 0, 48);
    expect(ip.validate()).to.equal(Ipv6Error.Ok);
    expect(ip.trafficClass).to.equal(0x12);
    expect(ip.flowLabel).to.equal(0xabcde);
    expect(ip.hopLimit).to.equal(255);
  });
});

describe('wire/icmp', () => {
  it('reads a captured echo request and checks its checksum', () => {
    const f = hex(CAPTURED.icmpEchoRequest);
    const icmp = new IcmpView().reset(f, 34, 25);
    expect(icmp.validate(true)).to.equal(IcmpError.Ok);
    expect(icmp.type).to.equal(8);
    expect(icmp.identifier).to.equal(0x9598);
    expect(icmp.sequence).to.equal(1);
    f[40] ^= 1;
    expect(icmp.validate(true)).to.equal(IcmpError.BadChecksum);
    expect(icmp.validate(false)).to.equal(IcmpError.Ok);
    expect(icmp.reset(f, 34, 7).validate(false)).to.equal(IcmpError.Truncated);
  });

  it('checks ICMPv6 with the pseudo-header and refills a checksum', () => {
    const f = hex(CAPTURED.icmpv6PortUnreachable);
    const pseudo = pseudoHeaderSumIpv6(f, 22, f, 38, 58, 59);
    const icmp = new IcmpView().reset(f, 54, 59);
    expect(icmp.validate(true, pseudo)).to.equal(IcmpError.Ok);
    expect(icmp.validate(true, 0)).to.equal(IcmpError.BadChecksum);
    const original = icmp.checksum;
    icmp.checksum = 0;
    icmp.fillChecksum(pseudo);
    expect(icmp.checksum).to.equal(original);
  });
});

describe('wire/udp', () => {
  it('validates lengths and checksums', () => {
    const f = hex(CAPTURED.udp4);
    const pseudo = pseudoHeaderSumIpv4(f, 26, f, 30, 17, 30);
    const udp = new UdpView().reset(f, 34, 30);
    expect(udp.validate(pseudo)).to.equal(UdpError.Ok);
    expect(udp.dstPort).to.equal(5353);
    expect(udp.dataLength).to.equal(22);
    expect(udp.reset(f, 34, 7).validate(null)).to.equal(UdpError.Truncated);
    expect(udp.reset(f, 34, 29).validate(null)).to.equal(UdpError.BadLength); // length field 30 > 29
    const b = f.slice();
    setBe16(b, 38, 7);
    expect(udp.reset(b, 34, 30).validate(null)).to.equal(UdpError.BadLength);
    b.set(f);
    b[50] ^= 0x40;
    expect(udp.reset(b, 34, 30).validate(pseudo)).to.equal(UdpError.BadChecksum);
    setBe16(b, 40, 0); // no checksum: fine over IPv4, invalid over IPv6
    expect(udp.validate(pseudo, true)).to.equal(UdpError.Ok);
    expect(udp.validate(pseudo, false)).to.equal(UdpError.BadChecksum);
  });

  it('emits a datagram whose checksum verifies', () => {
    const b = new Uint8Array(8 + 5);
    b.set([1, 2, 3, 4, 5], 8);
    const pseudo = pseudoHeaderSumIpv6(GUEST_V6, 0, GATEWAY_V6, 0, 17, 13);
    expect(emitUdp(b, 0, 547, 546, 5, pseudo)).to.equal(8);
    expect(new UdpView().reset(b, 0, 13).validate(pseudo, false)).to.equal(UdpError.Ok);
  });
});

describe('wire/tcp', () => {
  it('reads a captured SYN with its options', () => {
    const f = hex(CAPTURED.tcpSyn);
    const tcp = new TcpView().reset(f, 34, f.length - 34);
    expect(tcp.validate(pseudoHeaderSumIpv4(f, 26, f, 30, 6, f.length - 34))).to.equal(TcpError.Ok);
    expect(tcp.dstPort).to.equal(9);
    expect(tcp.flags).to.equal(TcpFlag.Syn);
    expect(tcp.headerLength).to.equal(40);
    expect(tcp.dataLength).to.equal(0);
    const options = new TcpOptions();
    expect(tcp.parseOptions(options)).to.equal(TcpError.Ok);
    expect(options.mss).to.equal(1460);
    expect(options.windowScale).to.equal(10);
    expect(options.sackPermitted).to.equal(true);
    expect(options.tsEcr).to.equal(0);
    expect(options.tsVal).to.be.greaterThan(0);
  });

  it('rejects bad data offsets and option lengths (no option loops)', () => {
    const f = hex(CAPTURED.tcpSyn);
    const tcp = new TcpView().reset(f, 34, f.length - 34);
    expect(tcp.reset(f, 34, 19).validate(null)).to.equal(TcpError.Truncated);
    const b = f.slice();
    b[46] = 0x40; // 16-byte header
    expect(tcp.reset(b, 34, b.length - 34).validate(null)).to.equal(TcpError.BadDataOffset);
    b[46] = 0xf0; // 60-byte header in a 40-byte segment
    expect(tcp.validate(null)).to.equal(TcpError.BadDataOffset);
    b.set(f);
    b[55] = 0; // MSS option with length 0 would never advance
    expect(tcp.reset(b, 34, b.length - 34).parseOptions(new TcpOptions())).to.equal(TcpError.BadOption);
    b[55] = 30; // runs past the header
    expect(tcp.parseOptions(new TcpOptions())).to.equal(TcpError.BadOption);
  });
});
