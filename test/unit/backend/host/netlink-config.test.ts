import { expect } from 'chai';
import * as os from 'os';
import {
  buildAddAddress,
  buildAddDefaultRoute,
  buildGetLinkByName,
  buildLinkUp,
  IFF_NOARP,
  buildSetTxQueueLength,
  containsAck,
  IFLA_TXQLEN,
  NetlinkConfigurator,
  type NetlinkSocketCalls,
  NLM_F_CREATE,
  NLM_F_EXCL,
  RTNH_F_ONLINK,
  RTPROT_BOOT,
} from '../../../../src/backend/host/netlink-config';
import {
  AF_INET,
  AF_INET6,
  forEachAttribute,
  IFA_ADDRESS,
  IFA_F_NODAD,
  IFA_LOCAL,
  IFF_UP,
  IFLA_IFNAME,
  IFLA_MTU,
  NLM_F_ACK,
  NLM_F_REQUEST,
  NLMSG_HDRLEN,
  RTA_GATEWAY,
  RTA_OIF,
  RTM_GETLINK,
  RTM_NEWADDR,
  RTM_NEWLINK,
  RTM_NEWROUTE,
  RT_TABLE_MAIN,
  RTN_UNICAST,
} from '../../../../src/backend/host/netlink';

const LE = os.endianness() === 'LE';
const V4 = Uint8Array.from([192, 0, 2, 1]);
const GW4 = Uint8Array.from([192, 0, 2, 254]);
const V6 = Uint8Array.from([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);

function header(m: Uint8Array): { length: number; type: number; flags: number; seq: number } {
  const v = new DataView(m.buffer, m.byteOffset);
  return { length: v.getUint32(0, LE), type: v.getUint16(4, LE), flags: v.getUint16(6, LE), seq: v.getUint32(8, LE) };
}

function attributes(m: Uint8Array, bodyLength: number): Map<number, Uint8Array> {
  const out = new Map<number, Uint8Array>();
  forEachAttribute(m, NLMSG_HDRLEN + bodyLength, m.length, (type, at, len) => out.set(type, m.slice(at, at + len)));
  return out;
}

function u32(b: Uint8Array, at = 0): number {
  return new DataView(b.buffer, b.byteOffset).getUint32(at, LE);
}

/** An NLMSG_ERROR (code 0 = ACK) answering seq. */
function errorMessage(seq: number, code: number): Uint8Array {
  const m = new Uint8Array(NLMSG_HDRLEN + 20);
  const v = new DataView(m.buffer);
  v.setUint32(0, m.length, LE);
  v.setUint16(4, 2, LE);
  v.setUint32(8, seq, LE);
  v.setInt32(NLMSG_HDRLEN, code, LE);
  return m;
}

/** An RTM_NEWLINK answer for a link. */
function linkMessage(seq: number, index: number, name: string): Uint8Array {
  const nameBytes = Buffer.from(`${name}\0`);
  const attrLength = 4 + nameBytes.length;
  const m = new Uint8Array(NLMSG_HDRLEN + 16 + ((attrLength + 3) & ~3));
  const v = new DataView(m.buffer);
  v.setUint32(0, m.length, LE);
  v.setUint16(4, RTM_NEWLINK, LE);
  v.setUint32(8, seq, LE);
  v.setInt32(NLMSG_HDRLEN + 4, index, LE);
  v.setUint16(NLMSG_HDRLEN + 16, attrLength, LE);
  v.setUint16(NLMSG_HDRLEN + 18, IFLA_IFNAME, LE);
  m.set(nameBytes, NLMSG_HDRLEN + 20);
  return m;
}

/** A fake netlink socket: records requests, answers each from `answer` (possibly after some EAGAINs). */
class FakeNetlink implements NetlinkSocketCalls {
  readonly sent: Uint8Array[] = [];
  private queue: Uint8Array[] = [];
  eagainsBeforeAnswer = 0;
  private eagains = 0;
  constructor(private readonly answer: (request: Uint8Array) => Uint8Array[]) {}
  bind(): void {}
  write(_fd: number, buf: Uint8Array, offset: number, length: number): number {
    const request = buf.slice(offset, offset + length);
    this.sent.push(request);
    this.queue.push(...this.answer(request));
    this.eagains = 0;
    return length;
  }
  read(_fd: number, buf: Uint8Array, offset: number): number {
    if (this.eagains++ < this.eagainsBeforeAnswer) return -1;
    const next = this.queue.shift();
    if (next === undefined) return -1;
    buf.set(next, offset);
    return next.length;
  }
}

const LINKS: Record<string, number> = { lo: 1, uplink0: 7 };
const RTM_GETADDR = 22;
const LINK_LOCAL = Uint8Array.from([0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);

/** An RTM_NEWADDR answer: an IPv6 address on `index` with scope and flags, then NLMSG_DONE. */
function addressDump(seq: number, index: number, scope: number, flags: number): Uint8Array[] {
  const m = new Uint8Array(NLMSG_HDRLEN + 8 + 20);
  const v = new DataView(m.buffer);
  v.setUint32(0, m.length, LE);
  v.setUint16(4, RTM_NEWADDR, LE);
  v.setUint32(8, seq, LE);
  m.set([AF_INET6, 64, flags, scope], NLMSG_HDRLEN);
  v.setUint32(NLMSG_HDRLEN + 4, index, LE);
  v.setUint16(NLMSG_HDRLEN + 8, 20, LE);
  v.setUint16(NLMSG_HDRLEN + 10, IFA_ADDRESS, LE);
  m.set(LINK_LOCAL, NLMSG_HDRLEN + 12);
  const done = new Uint8Array(NLMSG_HDRLEN + 4);
  new DataView(done.buffer).setUint32(0, done.length, LE);
  new DataView(done.buffer).setUint16(4, 3, LE);
  new DataView(done.buffer).setUint32(8, seq, LE);
  return [m, done];
}

/** Answers like the kernel: GETLINK by name, ACKs for the rest. */
function kernelLike(request: Uint8Array): Uint8Array[] {
  const h = header(request);
  if (h.type === RTM_GETLINK) {
    const name = Buffer.from(attributes(request, 16).get(IFLA_IFNAME) ?? []).toString().replace(/\0.*$/, '');
    const index = LINKS[name];
    // A stale answer to another sequence first: it must be skipped.
    return index === undefined ? [errorMessage(h.seq, -19)] : [errorMessage(h.seq - 1, 0), linkMessage(h.seq, index, name)];
  }
  if (h.type === RTM_GETADDR) return addressDump(h.seq, 7, 253, 0);
  return [errorMessage(h.seq, 0)];
}

describe('netlink-config', () => {
  describe('builders', () => {
    it('RTM_GETLINK by name: a request (no dump) with IFLA_IFNAME, NUL-terminated', () => {
      const m = buildGetLinkByName('uplink0', 42);
      expect(header(m)).to.deep.equal({ length: m.length, type: RTM_GETLINK, flags: NLM_F_REQUEST, seq: 42 });
      expect([...(attributes(m, 16).get(IFLA_IFNAME) ?? [])]).to.deep.equal([...Buffer.from('uplink0\0')]);
    });

    it('RTM_NEWLINK up: index, IFF_UP in flags and change mask, IFLA_MTU only when given', () => {
      const m = buildLinkUp(7, 65520, 5);
      expect(header(m).type).to.equal(RTM_NEWLINK);
      expect(header(m).flags).to.equal(NLM_F_REQUEST | NLM_F_ACK);
      expect(u32(m, NLMSG_HDRLEN + 4)).to.equal(7);
      expect(u32(m, NLMSG_HDRLEN + 8)).to.equal(IFF_UP);
      expect(u32(m, NLMSG_HDRLEN + 12)).to.equal(IFF_UP);
      expect(u32(attributes(m, 16).get(IFLA_MTU) as Uint8Array)).to.equal(65520);
      expect(attributes(buildLinkUp(1, 0, 6), 16).has(IFLA_MTU)).to.equal(false);
    });

    it('RTM_NEWLINK for txqueuelen: the index, IFLA_TXQLEN, no flag changes', () => {
      const m = buildSetTxQueueLength(7, 3848, 5);
      expect(header(m).type).to.equal(RTM_NEWLINK);
      expect(header(m).flags).to.equal(NLM_F_REQUEST | NLM_F_ACK);
      expect(u32(m, NLMSG_HDRLEN + 4)).to.equal(7);
      expect([u32(m, NLMSG_HDRLEN + 8), u32(m, NLMSG_HDRLEN + 12)]).to.deep.equal([0, 0]);
      expect(u32(attributes(m, 16).get(IFLA_TXQLEN) as Uint8Array)).to.equal(3848);
      expect(attributes(m, 16).has(IFLA_MTU)).to.equal(false);
    });

    it('RTM_NEWADDR: family, prefix, index, IFA_LOCAL and IFA_ADDRESS; IPv6 without DAD', () => {
      const m4 = buildAddAddress(7, V4, 24, 9);
      expect(header(m4).flags).to.equal(NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL);
      expect(header(m4).type).to.equal(RTM_NEWADDR);
      expect([m4[NLMSG_HDRLEN], m4[NLMSG_HDRLEN + 1], m4[NLMSG_HDRLEN + 2]]).to.deep.equal([AF_INET, 24, 0]);
      expect(u32(m4, NLMSG_HDRLEN + 4)).to.equal(7);
      const a4 = attributes(m4, 8);
      expect([...(a4.get(IFA_LOCAL) ?? [])]).to.deep.equal([...V4]);
      expect([...(a4.get(IFA_ADDRESS) ?? [])]).to.deep.equal([...V4]);
      const m6 = buildAddAddress(7, V6, 64, 10);
      expect([m6[NLMSG_HDRLEN], m6[NLMSG_HDRLEN + 1], m6[NLMSG_HDRLEN + 2]]).to.deep.equal([AF_INET6, 64, IFA_F_NODAD]);
      expect([...(attributes(m6, 8).get(IFA_LOCAL) ?? [])]).to.deep.equal([...V6]);
    });

    it('RTM_NEWROUTE default: main table, boot protocol, unicast, on-link gateway out of the index', () => {
      const m = buildAddDefaultRoute(7, GW4, 11);
      expect(header(m).type).to.equal(RTM_NEWROUTE);
      const body = m.subarray(NLMSG_HDRLEN, NLMSG_HDRLEN + 12);
      expect([body[0], body[1], body[4], body[5], body[7]]).to.deep.equal([AF_INET, 0, RT_TABLE_MAIN, RTPROT_BOOT, RTN_UNICAST]);
      expect(u32(m, NLMSG_HDRLEN + 8)).to.equal(RTNH_F_ONLINK);
      const a = attributes(m, 12);
      expect(u32(a.get(RTA_OIF) as Uint8Array)).to.equal(7);
      expect([...(a.get(RTA_GATEWAY) ?? [])]).to.deep.equal([...GW4]);
    });

    it('refuses addresses that are neither 4 nor 16 bytes', () => {
      expect(() => buildAddAddress(1, new Uint8Array(5), 8, 1)).to.throw(RangeError);
    });

    it('containsAck finds a zero-code NLMSG_ERROR for the sequence only', () => {
      const both = new Uint8Array([...errorMessage(3, -17), ...errorMessage(4, 0)]);
      expect(containsAck(both, both.length, 4)).to.equal(true);
      expect(containsAck(both, both.length, 3)).to.equal(false);
      expect(containsAck(both, 10, 4)).to.equal(false);
    });
  });

  describe('NetlinkConfigurator', () => {
    it('configure: loopback up, tap up with MTU, addresses, default routes, each acknowledged', () => {
      const fake = new FakeNetlink(kernelLike);
      fake.eagainsBeforeAnswer = 2;
      const index = new NetlinkConfigurator(fake, 3).configure({
        ifname: 'uplink0',
        mtu: 65520,
        addresses: [{ address: V4, prefixLength: 24 }, { address: V6, prefixLength: 64 }],
        gateways: [GW4],
      });
      expect(index).to.equal(7);
      expect(fake.sent.map((m) => header(m).type)).to.deep.equal([RTM_GETLINK, RTM_NEWLINK, RTM_GETLINK, RTM_NEWLINK, RTM_GETADDR, RTM_NEWLINK, RTM_NEWADDR, RTM_NEWADDR, RTM_NEWROUTE]);
      expect(u32(fake.sent[1], NLMSG_HDRLEN + 4)).to.equal(1);
      expect(u32(fake.sent[3], NLMSG_HDRLEN + 4)).to.equal(7);
      // The tap comes up with IFF_NOARP (no DAD for its link-local address), then ARP goes back on.
      expect([u32(fake.sent[3], NLMSG_HDRLEN + 8), u32(fake.sent[3], NLMSG_HDRLEN + 12)]).to.deep.equal([IFF_UP | IFF_NOARP, IFF_UP | IFF_NOARP]);
      expect([u32(fake.sent[5], NLMSG_HDRLEN + 4), u32(fake.sent[5], NLMSG_HDRLEN + 8), u32(fake.sent[5], NLMSG_HDRLEN + 12)]).to.deep.equal([7, 0, IFF_NOARP]);
      const seqs = fake.sent.map((m) => header(m).seq);
      expect(new Set(seqs).size).to.equal(seqs.length);
    });

    it('configure accepts addresses and routes that exist already (EEXIST), not other errors', () => {
      const exists = (request: Uint8Array): Uint8Array[] => {
        const h = header(request);
        return h.type === RTM_NEWADDR || h.type === RTM_NEWROUTE ? [errorMessage(h.seq, -17)] : kernelLike(request);
      };
      const network = { ifname: 'uplink0', mtu: 0, addresses: [{ address: V4, prefixLength: 24 }], gateways: [GW4] };
      expect(new NetlinkConfigurator(new FakeNetlink(exists), 3).configure(network)).to.equal(7);
      const refused = (request: Uint8Array): Uint8Array[] => (header(request).type === RTM_NEWROUTE ? [errorMessage(header(request).seq, -101)] : kernelLike(request));
      expect(() => new NetlinkConfigurator(new FakeNetlink(refused), 3).configure(network)).to.throw().with.property('errno', 101);
    });

    it('ARP stays off until the tap\'s link-local address is there and not tentative (bounded)', () => {
      let dumps = 0;
      // Tentative (0x40) twice, then settled; another link's settled address does not count.
      const answer = (request: Uint8Array): Uint8Array[] => {
        const h = header(request);
        if (h.type !== RTM_GETADDR) return kernelLike(request);
        dumps++;
        return dumps <= 2 ? [...addressDump(h.seq, 7, 253, 0x40).slice(0, 1), ...addressDump(h.seq, 9, 253, 0)] : addressDump(h.seq, 7, 253, 0);
      };
      const fake = new FakeNetlink(answer);
      new NetlinkConfigurator(fake, 3).linkUpWithoutDad(7, 1500);
      expect(dumps).to.equal(3);
      expect(fake.sent.map((m) => header(m).type)).to.deep.equal([RTM_NEWLINK, RTM_GETADDR, RTM_GETADDR, RTM_GETADDR, RTM_NEWLINK]);
      // Without any link-local address (IPv6 off in the namespace) ARP comes back after the bound.
      const none = new FakeNetlink((request) => (header(request).type === RTM_GETADDR ? addressDump(header(request).seq, 7, 0, 0) : kernelLike(request)));
      const started = Date.now();
      new NetlinkConfigurator(none, 3).linkUpWithoutDad(7);
      expect(Date.now() - started).to.be.lessThan(3000);
      expect(header(none.sent[none.sent.length - 1]).type).to.equal(RTM_NEWLINK);
    });

    it('a kernel error becomes an Error with errno', () => {
      const fake = new FakeNetlink((request) => [errorMessage(header(request).seq, -17)]);
      const netlink = new NetlinkConfigurator(fake, 3);
      expect(() => netlink.addAddress(7, V4, 24)).to.throw().with.property('errno', 17);
    });

    it('an unknown link name throws', () => {
      const netlink = new NetlinkConfigurator(new FakeNetlink(kernelLike), 3);
      expect(() => netlink.linkIndex('nope0')).to.throw().with.property('errno', 19);
    });

    it('no answer times out (bounded)', () => {
      const netlink = new NetlinkConfigurator(new FakeNetlink(() => []), 3, 30);
      const started = Date.now();
      expect(() => netlink.linkUp(1)).to.throw(/no answer within 30 ms/);
      expect(Date.now() - started).to.be.lessThan(1000);
    });
  });
});
