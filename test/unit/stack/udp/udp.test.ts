/**
 * UdpService and udp-address-map.ts without the kernel: malformed and
 * hostile guest datagrams (counted per reason, never reaching a socket),
 * the forwarding rules as pure functions, the zero-copy gather from split
 * guest frames and the send retry, with fake sockets that record calls.
 * (Real sockets: udp-netns.test.ts.)
 */
import { expect } from 'chai';
import type { IoVecList } from '../../../../src/sys/native';
import { CounterBlock } from '../../../../src/sys/counters';
import { Stack } from '../../../../src/stack/stack';
import type { FdWatcher, ReadyHandler } from '../../../../src/stack/context';
import { DROP_SLOTS, DropReason } from '../../../../src/stack/drops';
import { UdpEvent, UdpService, type UdpSockets } from '../../../../src/stack/udp/udp';
import { FlowTable } from '../../../../src/stack/flow/flow-table';
import { guestVisibleSource, isGroupOrUnspecified, mapDestination } from '../../../../src/stack/flow/address-map';
import { sockaddrFamily, sockaddrPort } from '../../../../src/sys/sockaddr';
import type { StackConfig } from '../../../../src/stack/config';
import { setBe16 } from '../../../../src/stack/wire/checksum';
import {
  FakeFramePort,
  GATEWAY_V4,
  GATEWAY_V6,
  GUEST_MAC,
  GUEST_V4,
  GUEST_V6,
  NO_OFFLOAD,
  OUR_MAC,
  ethernetFrame,
  ipv4Packet,
  ipv6Packet,
  segmentsOf,
  testConfig,
  udpDatagram,
} from '../../../support/fakes/stack-fakes';

const SERVER_V4 = Uint8Array.of(203, 0, 113, 9);
const SERVER_V6 = Uint8Array.from(Buffer.from('20010db8000000000000000000000099', 'hex'));
const FORWARD_V4 = Uint8Array.of(198, 51, 100, 53);
const RESOLVER_V4 = Uint8Array.of(203, 0, 113, 53);

/** Addon calls recorded; sendmsg copies what the iovecs point at. */
class FakeSockets implements UdpSockets {
  nextFd = 100;
  sockets: { fd: number; domain: number }[] = [];
  connects: { fd: number; sockaddr: Buffer }[] = [];
  sent: { fd: number; data: Buffer; to: Buffer | null; iovCount: number }[] = [];
  closed: number[] = [];
  /** Errors thrown by the next sendmsg calls, in order. */
  sendErrors: string[] = [];
  socket(domain: number, _type: number, _protocol: number): number {
    const fd = this.nextFd++;
    this.sockets.push({ fd, domain });
    return fd;
  }
  bind(): void {}
  connect(fd: number, sockaddr: Uint8Array): number {
    this.connects.push({ fd, sockaddr: Buffer.from(sockaddr) });
    return 0;
  }
  close(fd: number): void {
    this.closed.push(fd);
  }
  setsockoptInt(): void {}
  setsockoptBytes(): void {}
  sendmsg(fd: number, iov: IoVecList, sockaddr: Uint8Array | null): number {
    const error = this.sendErrors.shift();
    if (error !== undefined) throw Object.assign(new Error(error), { code: error });
    const parts: Buffer[] = [];
    for (let i = 0; i < iov.count; i++) {
      const b = iov.buffers[i] as Uint8Array;
      parts.push(Buffer.from(b.subarray(iov.offsets[i], iov.offsets[i] + iov.lengths[i])));
    }
    const data = Buffer.concat(parts);
    this.sent.push({ fd, data, to: sockaddr ? Buffer.from(sockaddr) : null, iovCount: iov.count });
    return data.length;
  }
  recvmsg(): number {
    return -1;
  }
  recvmmsg(): number {
    return -1;
  }
  recvErrqueue(): number {
    return -1;
  }
  ioctlInt(): number {
    return 0;
  }
}

class FakeWatcher implements FdWatcher {
  watched = new Map<number, number>();
  watch(fd: number, events: number, _handler: ReadyHandler): void {
    this.watched.set(fd, events);
  }
  modify(fd: number, events: number): void {
    this.watched.set(fd, events);
  }
  unwatch(fd: number): void {
    this.watched.delete(fd);
  }
}

function config(patch: Partial<StackConfig> = {}): StackConfig {
  const base = testConfig();
  return testConfig({ ipv4: { ...base.ipv4!, dnsForward: FORWARD_V4, dnsHost: RESOLVER_V4 }, ...patch });
}

function rig(patch: Partial<StackConfig> = {}): { stack: Stack; udp: UdpService; sockets: FakeSockets; counters: CounterBlock; watcher: FakeWatcher } {
  const cfg = config(patch);
  const counters = new CounterBlock();
  const watcher = new FakeWatcher();
  const stack = new Stack({ config: cfg, port: new FakeFramePort(), counters, watcher, sockets: null });
  const sockets = new FakeSockets();
  const udp = new UdpService(stack.ctx, { sockets, flows: new FlowTable(Math.max(1, cfg.maxFlows), counters) });
  stack.udpHandler = udp;
  return { stack, udp, sockets, counters, watcher };
}

function frame4(src: Uint8Array, dst: Uint8Array, sp: number, dp: number, data: Uint8Array, edit?: (udp: Uint8Array) => void): Uint8Array {
  const udp = udpDatagram(src, dst, sp, dp, data);
  edit?.(udp);
  return ethernetFrame(OUR_MAC, GUEST_MAC, 0x0800, ipv4Packet(src, dst, 17, udp));
}

function frame6(src: Uint8Array, dst: Uint8Array, sp: number, dp: number, data: Uint8Array, edit?: (udp: Uint8Array) => void): Uint8Array {
  const udp = udpDatagram(src, dst, sp, dp, data);
  edit?.(udp);
  return ethernetFrame(OUR_MAC, GUEST_MAC, 0x86dd, ipv6Packet(src, dst, 17, udp));
}

const drops = (c: CounterBlock, r: DropReason): number => c.get(DROP_SLOTS[r]);

describe('udp: malformed and unusable datagrams from the guest', () => {
  it('drops a UDP length beyond the IP payload, and a truncated header, as udp_malformed', () => {
    const r = rig();
    r.stack.receiveFrame(segmentsOf(frame4(GUEST_V4, SERVER_V4, 1000, 2000, Buffer.from('abc'), (u) => setBe16(u, 4, 200))), NO_OFFLOAD);
    const truncated = ethernetFrame(OUR_MAC, GUEST_MAC, 0x0800, ipv4Packet(GUEST_V4, SERVER_V4, 17, Uint8Array.of(1, 2, 3, 4)));
    r.stack.receiveFrame(segmentsOf(truncated), NO_OFFLOAD);
    expect(drops(r.counters, DropReason.UdpMalformed)).to.equal(2);
    expect(r.sockets.sockets).to.have.length(0);
  });

  it('drops bad checksums (IPv4 and IPv6) and a zero IPv6 checksum; accepts a zero IPv4 checksum', () => {
    const r = rig();
    const corrupt = (u: Uint8Array): void => {
      u[6] ^= 0x55;
    };
    const zero = (u: Uint8Array): void => setBe16(u, 6, 0);
    r.stack.receiveFrame(segmentsOf(frame4(GUEST_V4, SERVER_V4, 1000, 2000, Buffer.from('abc'), corrupt)), NO_OFFLOAD);
    r.stack.receiveFrame(segmentsOf(frame6(GUEST_V6, SERVER_V6, 1000, 2000, Buffer.from('abc'), corrupt)), NO_OFFLOAD);
    r.stack.receiveFrame(segmentsOf(frame6(GUEST_V6, SERVER_V6, 1000, 2000, Buffer.from('abc'), zero)), NO_OFFLOAD);
    expect(drops(r.counters, DropReason.UdpBadChecksum)).to.equal(3);
    expect(r.sockets.sent).to.have.length(0);
    r.stack.receiveFrame(segmentsOf(frame4(GUEST_V4, SERVER_V4, 1000, 2000, Buffer.from('abc'), zero)), NO_OFFLOAD);
    expect(r.sockets.sent).to.have.length(1);
  });

  it('does not verify a checksum the guest left to offload (NEEDS_CSUM)', () => {
    const r = rig();
    const partial = { ...NO_OFFLOAD, flags: 1 };
    r.stack.receiveFrame(segmentsOf(frame4(GUEST_V4, SERVER_V4, 1000, 2000, Buffer.from('abc'), (u) => setBe16(u, 6, 0x1234))), partial);
    expect(r.sockets.sent).to.have.length(1);
  });

  it('counts port 0, group destinations and unreachable IPv6 link-local destinations without opening sockets', () => {
    const r = rig();
    r.stack.receiveFrame(segmentsOf(frame4(GUEST_V4, SERVER_V4, 0, 2000, Buffer.from('a'))), NO_OFFLOAD);
    r.stack.receiveFrame(segmentsOf(frame4(GUEST_V4, SERVER_V4, 1000, 0, Buffer.from('a'))), NO_OFFLOAD);
    r.stack.receiveFrame(segmentsOf(frame4(GUEST_V4, Uint8Array.of(224, 0, 0, 251), 5353, 5353, Buffer.from('a'))), NO_OFFLOAD);
    r.stack.receiveFrame(segmentsOf(frame4(GUEST_V4, Uint8Array.of(255, 255, 255, 255), 1000, 2000, Buffer.from('a'))), NO_OFFLOAD);
    const ff02 = Uint8Array.from(Buffer.from('ff020000000000000000000000000001', 'hex'));
    r.stack.receiveFrame(segmentsOf(frame6(GUEST_V6, ff02, 1000, 2000, Buffer.from('a'))), NO_OFFLOAD);
    const fe80 = Uint8Array.from(Buffer.from('fe800000000000000000000000000042', 'hex'));
    r.stack.receiveFrame(segmentsOf(frame6(GUEST_V6, fe80, 1000, 2000, Buffer.from('a'))), NO_OFFLOAD);
    expect(r.counters.get(UdpEvent.PortZero)).to.equal(2);
    expect(r.counters.get(UdpEvent.GroupDestination)).to.equal(3);
    expect(r.counters.get(UdpEvent.Unreachable)).to.equal(1);
    expect(r.sockets.sockets).to.have.length(0);
  });

  it('drops with a count when the stack has no fd watcher', () => {
    const cfg = config();
    const counters = new CounterBlock();
    const stack = new Stack({ config: cfg, port: new FakeFramePort(), counters });
    const sockets = new FakeSockets();
    stack.udpHandler = new UdpService(stack.ctx, { sockets });
    stack.receiveFrame(segmentsOf(frame4(GUEST_V4, SERVER_V4, 1000, 2000, Buffer.from('a'))), NO_OFFLOAD);
    expect(counters.get(UdpEvent.SocketFailed)).to.equal(1);
    expect(sockets.sockets).to.have.length(0);
  });
});

describe('udp: flows with fake sockets', () => {
  it('gathers the payload of a frame split across many segments into sendmsg iovecs (no copy)', () => {
    const r = rig();
    const data = Buffer.alloc(3000, 0).map((_, i) => (i * 13) & 0xff);
    const frame = frame4(GUEST_V4, SERVER_V4, 1000, 2000, data);
    r.stack.receiveFrame(segmentsOf(frame, [20, 40, 45, 100, 1000, 2999]), NO_OFFLOAD);
    expect(r.sockets.sent).to.have.length(1);
    expect(Buffer.compare(r.sockets.sent[0].data, Buffer.from(data))).to.equal(0);
    expect(r.sockets.sent[0].iovCount).to.be.greaterThan(3);
    expect(r.sockets.sent[0].to).to.equal(null);
  });

  it('connects a new flow to the mapped destination: DNS forward (port 53 only), gateway to loopback', () => {
    const r = rig();
    r.stack.receiveFrame(segmentsOf(frame4(GUEST_V4, FORWARD_V4, 1000, 53, Buffer.from('q'))), NO_OFFLOAD);
    r.stack.receiveFrame(segmentsOf(frame4(GUEST_V4, FORWARD_V4, 1000, 54, Buffer.from('q'))), NO_OFFLOAD);
    r.stack.receiveFrame(segmentsOf(frame4(GUEST_V4, GATEWAY_V4, 1000, 7000, Buffer.from('q'))), NO_OFFLOAD);
    const addr = (sa: Buffer): string => `${[...sa.subarray(4, 8)].join('.')}:${sockaddrPort(sa)}`;
    expect(r.sockets.connects.map((c) => addr(c.sockaddr))).to.deep.equal(['203.0.113.53:53', '198.51.100.53:54', '127.0.0.1:7000']);
    expect(r.udp.flowCount).to.equal(3);
    expect([...r.watcher.watched.keys()]).to.deep.equal(r.sockets.sockets.map((s) => s.fd));
  });

  it('retries a send once after an asynchronous error (consumed by the failed call); counts a persistent failure', () => {
    const r = rig();
    r.sockets.sendErrors = ['ECONNREFUSED'];
    r.stack.receiveFrame(segmentsOf(frame4(GUEST_V4, SERVER_V4, 1000, 2000, Buffer.from('a'))), NO_OFFLOAD);
    expect(r.sockets.sent).to.have.length(1);
    expect(r.counters.get(UdpEvent.SendFailed)).to.equal(0);
    r.sockets.sendErrors = ['EPERM'];
    r.stack.receiveFrame(segmentsOf(frame4(GUEST_V4, SERVER_V4, 1000, 2000, Buffer.from('b'))), NO_OFFLOAD);
    expect(r.counters.get(UdpEvent.SendFailed)).to.equal(1);
    expect(r.counters.get(UdpEvent.DatagramsFromGuest)).to.equal(1);
  });

  it('refuses flows beyond --max-flows without opening a socket, and closes sockets on close()', () => {
    const r = rig({ maxFlows: 2 });
    for (const port of [1, 2, 3]) r.stack.receiveFrame(segmentsOf(frame4(GUEST_V4, SERVER_V4, 1000 + port, 2000, Buffer.from('a'))), NO_OFFLOAD);
    expect(r.sockets.sockets).to.have.length(2);
    expect(r.counters.get(UdpEvent.TableFull)).to.equal(1);
    r.udp.close();
    expect(r.sockets.closed.sort()).to.deep.equal(r.sockets.sockets.map((s) => s.fd).sort());
    expect(r.udp.flowCount).to.equal(0);
    expect(r.watcher.watched.size).to.equal(0);
  });
});

describe('udp-address-map', () => {
  const cfg = config({});
  const out = new Uint8Array(28);
  const text = (length: number): string =>
    length === 16 ? `${[...out.subarray(4, 8)].join('.')}:${sockaddrPort(out)}` : `${Buffer.from(out.subarray(8, 24)).toString('hex')}:${sockaddrPort(out)}`;

  it('maps DNS forward on port 53 only, the loopback mapping, the guest-address mapping, and leaves the rest', () => {
    expect(text(mapDestination(cfg, 4, FORWARD_V4, 0, 53, out))).to.equal('203.0.113.53:53');
    expect(text(mapDestination(cfg, 4, FORWARD_V4, 0, 5353, out))).to.equal('198.51.100.53:5353');
    expect(text(mapDestination(cfg, 4, GATEWAY_V4, 0, 80, out))).to.equal('127.0.0.1:80');
    expect(sockaddrFamily(out)).to.equal(4);
    const mapped = config({ ipv4: { ...cfg.ipv4!, mapGuestAddr: Uint8Array.of(192, 0, 2, 77) } });
    expect(text(mapDestination(mapped, 4, Uint8Array.of(192, 0, 2, 77), 0, 22, out))).to.equal(`${[...GUEST_V4].join('.')}:22`);
    expect(text(mapDestination(cfg, 4, SERVER_V4, 0, 9, out))).to.equal('203.0.113.9:9');
    expect(text(mapDestination(cfg, 6, GATEWAY_V6, 0, 53, out))).to.equal('00000000000000000000000000000001:53');
    expect(sockaddrFamily(out)).to.equal(6);
  });

  it('returns 0 for a DNS forward without a resolver, a disabled family and a foreign link-local address', () => {
    const noResolver = config({ ipv4: { ...cfg.ipv4!, dnsHost: null } });
    expect(mapDestination(noResolver, 4, FORWARD_V4, 0, 53, out)).to.equal(0);
    expect(mapDestination(config({ ipv6: null }), 6, SERVER_V6, 0, 53, out)).to.equal(0);
    expect(mapDestination(cfg, 6, Uint8Array.from(Buffer.from('fe800000000000000000000000000042', 'hex')), 0, 53, out)).to.equal(0);
  });

  it('shows loopback peers as the loopback mapping, the host address as --map-guest-addr, others as themselves', () => {
    const scratch = new Uint8Array(16);
    expect(guestVisibleSource(cfg, 4, Uint8Array.of(127, 0, 0, 5), 0, scratch)).to.equal(cfg.ipv4!.mapHostLoopback);
    expect(guestVisibleSource(cfg, 4, GUEST_V4, 0, scratch)).to.equal(cfg.ipv4!.mapHostLoopback);
    const mapped = config({ ipv4: { ...cfg.ipv4!, mapGuestAddr: Uint8Array.of(192, 0, 2, 77) } });
    expect([...guestVisibleSource(mapped, 4, GUEST_V4, 0, scratch)!]).to.deep.equal([192, 0, 2, 77]);
    expect([...guestVisibleSource(cfg, 4, Uint8Array.of(0, 203, 0, 113, 9), 1, scratch)!.subarray(0, 4)]).to.deep.equal([203, 0, 113, 9]);
    const loop6 = new Uint8Array(16);
    loop6[15] = 1;
    expect(guestVisibleSource(cfg, 6, loop6, 0, scratch)).to.equal(cfg.ipv6!.mapHostLoopback);
    const noMap = config({ ipv4: { ...cfg.ipv4!, mapHostLoopback: null } });
    expect(guestVisibleSource(noMap, 4, Uint8Array.of(127, 0, 0, 1), 0, scratch)).to.equal(null);
  });

  it('recognises group and unspecified destinations', () => {
    expect(isGroupOrUnspecified(4, Uint8Array.of(0, 0, 0, 0), 0)).to.equal(true);
    expect(isGroupOrUnspecified(4, Uint8Array.of(239, 1, 1, 1), 0)).to.equal(true);
    expect(isGroupOrUnspecified(4, SERVER_V4, 0)).to.equal(false);
    expect(isGroupOrUnspecified(6, new Uint8Array(16), 0)).to.equal(true);
    expect(isGroupOrUnspecified(6, SERVER_V6, 0)).to.equal(false);
  });
});
