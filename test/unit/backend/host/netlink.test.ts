import { expect } from 'chai';
import * as os from 'os';
import type { Native } from '../../../../src/sys/native';
import { formatIp, parseIp } from '../../../../src/stack/address';
import {
  AF_INET,
  AF_INET6,
  IFA_ADDRESS,
  IFA_FLAGS,
  IFA_LOCAL,
  IFLA_ADDRESS,
  IFLA_IFNAME,
  IFLA_MTU,
  NLMSG_DONE,
  NLMSG_ERROR,
  NLM_F_DUMP_INTR,
  NLM_F_MULTI,
  NetlinkParseError,
  RTA_GATEWAY,
  RTA_MULTIPATH,
  RTA_OIF,
  RTA_PRIORITY,
  RTA_TABLE,
  RTM_GETADDR,
  RTM_NEWADDR,
  RTM_NEWLINK,
  RTM_NEWROUTE,
  buildDumpRequest,
  dumpRtnetlink,
  RTM_GETLINK,
  RTM_GETROUTE,
  forEachAttribute,
  parseAddress,
  parseLink,
  parseRoute,
  sockaddrNl,
  walkMessages,
} from '../../../../src/backend/host/netlink';

const LE = os.endianness() === 'LE';

function u16(v: number): number[] {
  const b = Buffer.alloc(2);
  if (LE) b.writeUInt16LE(v);
  else b.writeUInt16BE(v);
  return [...b];
}
function u32(v: number): number[] {
  const b = Buffer.alloc(4);
  if (LE) b.writeUInt32LE(v >>> 0);
  else b.writeUInt32BE(v >>> 0);
  return [...b];
}
const pad = (bytes: number[]): number[] => [...bytes, ...new Array((4 - (bytes.length % 4)) % 4).fill(0)];
const attr = (type: number, data: number[]): number[] => pad([...u16(4 + data.length), ...u16(type), ...data]);
const nlmsg = (type: number, flags: number, seq: number, body: number[]): number[] => pad([...u32(16 + body.length), ...u16(type), ...u16(flags), ...u32(seq), ...u32(0), ...body]);
const ip = (text: string): number[] => [...parseIp(text)!];

const rtmsg = (family: number, dstLength: number, table: number, type: number): number[] => [family, dstLength, 0, 0, table, 3, 0, type, ...u32(0)];
const ifaddrmsg = (family: number, prefix: number, flags: number, scope: number, index: number): number[] => [family, prefix, flags, scope, ...u32(index)];
const ifinfomsg = (index: number, flags: number): number[] => [0, 0, ...u16(1), ...u32(index), ...u32(flags), ...u32(0)];

describe('netlink parsers', () => {
  it('parses links', () => {
    const body = [...ifinfomsg(3, 0x41), ...attr(IFLA_IFNAME, [...Buffer.from('eth0'), 0]), ...attr(IFLA_MTU, u32(9000)), ...attr(IFLA_ADDRESS, [2, 0, 0, 0, 0, 1])];
    const link = parseLink(Uint8Array.from(body), 0, body.length);
    expect(link).to.deep.include({ index: 3, name: 'eth0', mtu: 9000, flags: 0x41 });
    expect(Array.from(link.mac!)).to.deep.equal([2, 0, 0, 0, 0, 1]);
  });

  it('parses addresses, preferring IFA_LOCAL and IFA_FLAGS', () => {
    const v4 = [...ifaddrmsg(AF_INET, 24, 0, 0, 2), ...attr(IFA_ADDRESS, ip('192.0.2.99')), ...attr(IFA_LOCAL, ip('192.0.2.1'))];
    const a = parseAddress(Uint8Array.from(v4), 0, v4.length)!;
    expect(formatIp(a.address)).to.equal('192.0.2.1');
    expect(a).to.deep.include({ family: AF_INET, prefixLength: 24, index: 2, scope: 0 });
    const v6 = [...ifaddrmsg(AF_INET6, 64, 0x80, 0, 2), ...attr(IFA_ADDRESS, ip('2001:db8::1')), ...attr(IFA_FLAGS, u32(0x202))];
    const b = parseAddress(Uint8Array.from(v6), 0, v6.length)!;
    expect(formatIp(b.address)).to.equal('2001:db8::1');
    expect(b.flags).to.equal(0x202);
    // An address attribute of the wrong size is not an address.
    const wrong = [...ifaddrmsg(AF_INET, 24, 0, 0, 2), ...attr(IFA_ADDRESS, ip('2001:db8::1'))];
    expect(parseAddress(Uint8Array.from(wrong), 0, wrong.length)).to.equal(null);
    expect(parseAddress(Uint8Array.from([17, 0, 0, 0, 0, 0, 0, 0]), 0, 8)).to.equal(null);
  });

  it('parses routes, including the first nexthop of a multipath route', () => {
    const body = [...rtmsg(AF_INET, 0, 254, 1), ...attr(RTA_TABLE, u32(254)), ...attr(RTA_GATEWAY, ip('192.0.2.254')), ...attr(RTA_OIF, u32(2)), ...attr(RTA_PRIORITY, u32(100))];
    const r = parseRoute(Uint8Array.from(body), 0, body.length)!;
    expect(r).to.deep.include({ family: AF_INET, dstLength: 0, table: 254, type: 1, oif: 2, priority: 100 });
    expect(formatIp(r.gateway!)).to.equal('192.0.2.254');
    const nexthop = [...u16(8 + 20), 0, 0, ...u32(5), ...attr(RTA_GATEWAY, ip('2001:db8::fe'))];
    const mp = [...rtmsg(AF_INET6, 0, 254, 1), ...attr(RTA_MULTIPATH, nexthop)];
    const m = parseRoute(Uint8Array.from(mp), 0, mp.length)!;
    expect(m.oif).to.equal(5);
    expect(formatIp(m.gateway!)).to.equal('2001:db8::fe');
    const badNexthop = [...rtmsg(AF_INET6, 0, 254, 1), ...attr(RTA_MULTIPATH, [...u16(200), 0, 0, ...u32(5)])];
    expect(() => parseRoute(Uint8Array.from(badNexthop), 0, badNexthop.length)).to.throw(NetlinkParseError);
  });

  it('rejects truncated headers and overrunning or zero-length attributes', () => {
    expect(() => parseLink(new Uint8Array(15), 0, 15)).to.throw(NetlinkParseError);
    expect(() => parseAddress(new Uint8Array(7), 0, 7)).to.throw(NetlinkParseError);
    expect(() => parseRoute(new Uint8Array(11), 0, 11)).to.throw(NetlinkParseError);
    const overrun = [...ifinfomsg(1, 0), ...u16(40), ...u16(IFLA_IFNAME), 1, 2, 3, 4];
    expect(() => parseLink(Uint8Array.from(overrun), 0, overrun.length)).to.throw(NetlinkParseError);
    const zero = [...ifinfomsg(1, 0), ...u16(0), ...u16(IFLA_IFNAME)];
    expect(() => parseLink(Uint8Array.from(zero), 0, zero.length)).to.throw(NetlinkParseError);
    // A loop of tiny attributes is bounded.
    const many = new Array(300).fill(0).flatMap(() => [...u16(4), ...u16(99)]);
    expect(() => forEachAttribute(Uint8Array.from(many), 0, many.length, () => undefined)).to.throw(NetlinkParseError);
  });
});

describe('netlink message walk', () => {
  const addressBody = [...ifaddrmsg(AF_INET, 24, 0, 0, 2), ...attr(IFA_ADDRESS, ip('192.0.2.1'))];

  it('visits data messages of our sequence and stops at NLMSG_DONE', () => {
    const bytes = Uint8Array.from([
      ...nlmsg(RTM_NEWADDR, NLM_F_MULTI, 7, addressBody),
      ...nlmsg(RTM_NEWADDR, NLM_F_MULTI, 6, addressBody), // stale sequence: skipped
      ...nlmsg(NLMSG_DONE, NLM_F_MULTI, 7, u32(0)),
    ]);
    const seen: number[] = [];
    expect(walkMessages(bytes, bytes.length, 7, (type) => seen.push(type))).to.deep.equal({ done: true, interrupted: false });
    expect(seen).to.deep.equal([RTM_NEWADDR]);
    const partial = Uint8Array.from(nlmsg(RTM_NEWADDR, NLM_F_MULTI, 7, addressBody));
    expect(walkMessages(partial, partial.length, 7, () => undefined)).to.deep.equal({ done: false, interrupted: false });
    const interrupted = Uint8Array.from([...nlmsg(RTM_NEWLINK, NLM_F_MULTI | NLM_F_DUMP_INTR, 7, ifinfomsg(1, 0)), ...nlmsg(NLMSG_DONE, NLM_F_MULTI, 7, u32(0))]);
    expect(walkMessages(interrupted, interrupted.length, 7, () => undefined)).to.deep.equal({ done: true, interrupted: true });
    // The flag on a message before the buffer with NLMSG_DONE is reported too.
    const first = Uint8Array.from(nlmsg(RTM_NEWLINK, NLM_F_MULTI | NLM_F_DUMP_INTR, 7, ifinfomsg(1, 0)));
    expect(walkMessages(first, first.length, 7, () => undefined)).to.deep.equal({ done: false, interrupted: true });
  });

  it('turns NLMSG_ERROR into an error with errno, and ignores ACKs', () => {
    const error = Uint8Array.from(nlmsg(NLMSG_ERROR, 0, 7, [...u32(-22), ...new Array(16).fill(0)]));
    expect(() => walkMessages(error, error.length, 7, () => undefined)).to.throw(/errno 22/);
    const ack = Uint8Array.from([...nlmsg(NLMSG_ERROR, 0, 7, [...u32(0), ...new Array(16).fill(0)]), ...nlmsg(NLMSG_DONE, 0, 7, u32(0))]);
    expect(walkMessages(ack, ack.length, 7, () => undefined).done).to.equal(true);
    const short = Uint8Array.from(nlmsg(NLMSG_ERROR, 0, 7, [1, 2]));
    expect(() => walkMessages(short, short.length, 7, () => undefined)).to.throw(NetlinkParseError);
  });

  it('rejects message lengths that overrun the buffer or are shorter than a header', () => {
    const good = nlmsg(RTM_NEWADDR, NLM_F_MULTI, 7, addressBody);
    const overrun = Uint8Array.from(good);
    overrun.set(u32(good.length + 4), 0);
    expect(() => walkMessages(overrun, overrun.length, 7, () => undefined)).to.throw(NetlinkParseError);
    const tiny = Uint8Array.from(good);
    tiny.set(u32(8), 0);
    expect(() => walkMessages(tiny, tiny.length, 7, () => undefined)).to.throw(NetlinkParseError);
    // The length passed in bounds the walk even when the buffer is larger.
    const buffer = new Uint8Array(4096);
    buffer.set(good);
    expect(() => walkMessages(buffer, good.length - 1, 7, () => undefined)).to.throw(NetlinkParseError);
    // A buffer full of tiny NOOP messages is bounded.
    const noops = new Uint8Array(16 * 5000);
    for (let i = 0; i < 5000; i++) noops.set([...u32(16), ...u16(1), ...u16(0), ...u32(7), ...u32(0)], i * 16);
    expect(() => walkMessages(noops, noops.length, 7, () => undefined)).to.throw(NetlinkParseError);
  });

  it('builds dump requests and sockaddr_nl', () => {
    const request = buildDumpRequest(RTM_GETADDR, AF_INET6, 42);
    expect(request.length).to.equal(24);
    expect(Array.from(request.subarray(0, 16))).to.deep.equal([...u32(24), ...u16(RTM_GETADDR), ...u16(0x301), ...u32(42), ...u32(0)]);
    expect(request[16]).to.equal(AF_INET6);
    expect(Array.from(sockaddrNl())).to.deep.equal([...u16(16), 0, 0, ...u32(0), ...u32(0)]);
  });

  it('keeps parsed routes independent of the receive buffer', () => {
    const body = [...rtmsg(AF_INET, 0, 254, 1), ...attr(RTA_GATEWAY, ip('192.0.2.254')), ...attr(RTA_OIF, u32(2))];
    const bytes = Uint8Array.from(nlmsg(RTM_NEWROUTE, 0, 1, body));
    let gateway: Uint8Array | null = null;
    walkMessages(bytes, bytes.length, 1, (_t, o, l) => (gateway = parseRoute(bytes, o, l)!.gateway));
    bytes.fill(0);
    expect(formatIp(gateway!)).to.equal('192.0.2.254');
  });
});

/** A fake addon: answers each dump request with `answer(type, family, seq, attempt)` buffers, with EAGAIN in between. */
function fakeNative(answer: (type: number, family: number, seq: number, attempt: number) => number[][]) {
  const queue: (number[] | null)[] = [];
  const attempts = new Map<string, number>();
  const calls = { closed: 0, writes: 0 };
  const native = {
    constants: { AF_NETLINK: 16, SOCK_RAW: 3, NETLINK_ROUTE: 0 },
    socket: () => 42,
    bind: () => undefined,
    close: () => {
      calls.closed++;
    },
    write: (_fd: number, buf: Uint8Array, off: number, len: number) => {
      calls.writes++;
      const b = Buffer.from(buf.subarray(off, off + len));
      const type = LE ? b.readUInt16LE(4) : b.readUInt16BE(4);
      const seq = LE ? b.readUInt32LE(8) : b.readUInt32BE(8);
      const key = `${type}/${b[16]}`;
      const attempt = (attempts.get(key) ?? 0) + 1;
      attempts.set(key, attempt);
      for (const chunk of answer(type, b[16], seq, attempt)) queue.push(null, chunk);
      return len;
    },
    read: (_fd: number, buf: Uint8Array, off: number, _len: number) => {
      const next = queue.shift();
      if (next === undefined || next === null) return -1; // EAGAIN
      buf.set(next, off);
      return next.length;
    },
  } as unknown as Native;
  return { native, calls };
}

describe('netlink dump loop (fake socket)', () => {
  const link = [...ifinfomsg(2, 0x41), ...attr(IFLA_IFNAME, [...Buffer.from('eth0'), 0]), ...attr(IFLA_MTU, u32(1500))];
  const address = [...ifaddrmsg(AF_INET, 24, 0, 0, 2), ...attr(IFA_LOCAL, ip('192.0.2.1'))];
  const defaultRoute = [...rtmsg(AF_INET, 0, 254, 1), ...attr(RTA_GATEWAY, ip('192.0.2.254')), ...attr(RTA_OIF, u32(2))];
  const subnetRoute = [...rtmsg(AF_INET, 24, 254, 1), ...attr(RTA_OIF, u32(2))];
  const done = (seq: number): number[] => nlmsg(NLMSG_DONE, NLM_F_MULTI, seq, u32(0));

  it('collects links, addresses and default routes across buffers, waiting out EAGAIN', () => {
    const { native, calls } = fakeNative((type, family, seq) => {
      if (type === RTM_GETLINK) return [nlmsg(RTM_NEWLINK, NLM_F_MULTI, seq, link), done(seq)];
      if (type === RTM_GETADDR && family === AF_INET) return [[...nlmsg(RTM_NEWADDR, NLM_F_MULTI, seq, address), ...done(seq)]];
      if (type === RTM_GETROUTE && family === AF_INET) return [[...nlmsg(RTM_NEWROUTE, NLM_F_MULTI, seq, subnetRoute), ...nlmsg(RTM_NEWROUTE, NLM_F_MULTI, seq, defaultRoute)], done(seq)];
      return [done(seq)];
    });
    const snapshot = dumpRtnetlink(native, 2000);
    expect(snapshot.links.map((l) => l.name)).to.deep.equal(['eth0']);
    expect(snapshot.addresses.map((a) => formatIp(a.address))).to.deep.equal(['192.0.2.1']);
    // Only the default route is kept.
    expect(snapshot.routes.map((r) => formatIp(r.gateway!))).to.deep.equal(['192.0.2.254']);
    expect(calls.writes).to.equal(5);
    expect(calls.closed).to.equal(1);
  });

  it('repeats an interrupted dump, a bounded number of times', () => {
    const { native, calls } = fakeNative((type, _family, seq, attempt) => {
      if (type === RTM_GETLINK) return [nlmsg(RTM_NEWLINK, NLM_F_MULTI | (attempt < 2 ? NLM_F_DUMP_INTR : 0), seq, link), done(seq)];
      if (type === RTM_GETROUTE) return [[...nlmsg(RTM_NEWROUTE, NLM_F_MULTI | NLM_F_DUMP_INTR, seq, defaultRoute), ...done(seq)]];
      return [done(seq)];
    });
    const snapshot = dumpRtnetlink(native, 2000);
    expect(snapshot.links).to.have.length(1); // not duplicated by the retry
    // The IPv4 route from the last of three attempts; the IPv6 dump's IPv4 answer is filtered out.
    expect(snapshot.routes).to.have.length(1);
    expect(calls.writes).to.equal(2 + 2 + 2 * 3);
  });

  it('gives up after the timeout and closes the socket', () => {
    const { native, calls } = fakeNative(() => []);
    const started = Date.now();
    expect(() => dumpRtnetlink(native, 50)).to.throw(/within 50 ms/);
    expect(Date.now() - started).to.be.lessThan(1000);
    expect(calls.closed).to.equal(1);
  });

  it('reports kernel errors', () => {
    const { native, calls } = fakeNative((_t, _f, seq) => [nlmsg(NLMSG_ERROR, 0, seq, [...u32(-1), ...new Array(16).fill(0)])]);
    expect(() => dumpRtnetlink(native, 2000)).to.throw(/errno 1/);
    expect(calls.closed).to.equal(1);
  });
});
