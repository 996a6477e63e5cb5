import { expect } from 'chai';
import * as path from 'path';
import { spawnSync } from 'child_process';
import { CounterBlock } from '../../../../src/sys/counters';
import { Stack } from '../../../../src/stack/stack';
import { DROP_SLOTS, DropReason } from '../../../../src/stack/drops';
import type { Clock, FdWatcher, ReadyHandler, StackSockets } from '../../../../src/stack/context';
import { ECHO_IDLE_MS, ECHO_MAX_FLOWS, DENIED_RETRY_MS } from '../../../../src/stack/icmp/echo';
import { EVICTION_MIN_AGE_MS, FlowKind, FlowTable, NO_FLOW } from '../../../../src/stack/flow/flow-table';
import { be16, internetChecksum, pseudoHeaderSumIpv6, setBe16, finishChecksum, sumBytes } from '../../../../src/stack/wire/checksum';
import { setLogSink } from '../../../../src/sys/log';
import { FakeFramePort, GATEWAY_V4, GATEWAY_V6, GUEST_MAC, GUEST_V4, GUEST_V6, NO_OFFLOAD, OUR_MAC, ethernetFrame, icmpEcho, ipv4Packet, ipv6Packet, segmentsOf, testConfig } from '../../../support/fakes/stack-fakes';
import { DIST_ROOT } from '../../../support/paths';

const REMOTE_V4 = Uint8Array.from([198, 51, 100, 7]);
const REMOTE_V6 = Uint8Array.from([0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7]);

interface FakeSocket {
  fd: number;
  domain: number;
  protocol: number;
  connectedTo: number[] | null;
  sent: number[][];
  /** Datagrams the "kernel" will return from read(). */
  incoming: Uint8Array[];
  closed: boolean;
  /** The identifier the kernel would use on the wire. */
  port: number;
}

class FakeSockets implements StackSockets {
  sockets: FakeSocket[] = [];
  denyWith: string | null = null;
  private nextFd = 100;

  private get(fd: number): FakeSocket {
    const s = this.sockets.find((x) => x.fd === fd && !x.closed);
    if (!s) throw Object.assign(new Error('EBADF'), { code: 'EBADF' });
    return s;
  }
  socket(domain: number, _type: number, protocol: number): number {
    if (this.denyWith !== null) throw Object.assign(new Error(this.denyWith), { code: this.denyWith });
    const fd = this.nextFd++;
    this.sockets.push({ fd, domain, protocol, connectedTo: null, sent: [], incoming: [], closed: false, port: 40000 + fd });
    return fd;
  }
  bind(): void {}
  connect(fd: number, sockaddr: Uint8Array): number {
    this.get(fd).connectedTo = Array.from(sockaddr);
    return 0;
  }
  read(fd: number, buf: Uint8Array, offset: number, length: number): number {
    const next = this.get(fd).incoming.shift();
    if (next === undefined) return -1;
    const n = Math.min(next.length, length);
    buf.set(next.subarray(0, n), offset);
    return n;
  }
  write(fd: number, buf: Uint8Array, offset: number, length: number): number {
    this.get(fd).sent.push(Array.from(buf.subarray(offset, offset + length)));
    return length;
  }
  close(fd: number): void {
    this.get(fd).closed = true;
  }
  getsockname(): number {
    return 0;
  }
  setsockoptInt(): void {}
  setsockoptBytes(): void {}
}

class FakeWatcher implements FdWatcher {
  handlers = new Map<number, ReadyHandler>();
  watch(fd: number, _events: number, handler: ReadyHandler): void {
    this.handlers.set(fd, handler);
  }
  modify(): void {}
  unwatch(fd: number): void {
    this.handlers.delete(fd);
  }
  /** Deliver readiness to every watched fd. */
  pump(): void {
    for (const [fd, h] of [...this.handlers]) h.onReady(fd, 1);
  }
}

function setup(config = testConfig()) {
  const port = new FakeFramePort();
  const counters = new CounterBlock();
  const sockets = new FakeSockets();
  const watcher = new FakeWatcher();
  const clock: Clock & { t: number } = { t: 1000, now() { return this.t; } };
  const stack = new Stack({ config, port, counters, sockets, watcher, clock });
  const drops = (reason: DropReason): number => counters.get(DROP_SLOTS[reason]);
  return { port, counters, sockets, watcher, clock, stack, drops };
}

function echo4(dst: Uint8Array, id: number, seq: number, data = Uint8Array.from([1, 2, 3, 4, 5])): Uint8Array {
  return ethernetFrame(OUR_MAC, GUEST_MAC, 0x0800, ipv4Packet(GUEST_V4, dst, 1, icmpEcho(8, id, seq, data)));
}

function echo6(dst: Uint8Array, id: number, seq: number, data = Uint8Array.from([9, 8, 7])): Uint8Array {
  return ethernetFrame(OUR_MAC, GUEST_MAC, 0x86dd, ipv6Packet(GUEST_V6, dst, 58, icmpEcho(128, id, seq, data, { src: GUEST_V6, dst })));
}

/** What the kernel would hand back on a ping socket: the reply with the socket's own identifier. */
function kernelReply(type: number, request: number[], kernelId: number): Uint8Array {
  const m = Uint8Array.from(request);
  m[0] = type;
  setBe16(m, 4, kernelId);
  setBe16(m, 2, 0);
  setBe16(m, 2, finishChecksum(sumBytes(m, 0, m.length)));
  return m;
}

describe('icmp echo (fake sockets)', () => {
  it('sends an IPv4 echo on a ping socket connected to the destination, and maps the reply back', () => {
    const { stack, sockets, watcher, port } = setup();
    stack.receiveFrame(segmentsOf(echo4(REMOTE_V4, 0x1234, 7)), NO_OFFLOAD);
    expect(sockets.sockets).to.have.length(1);
    const s = sockets.sockets[0];
    expect([s.domain, s.protocol]).to.deep.equal([2, 1]);
    expect(s.connectedTo!.slice(2, 8)).to.deep.equal([0, 0, 198, 51, 100, 7]);
    expect(s.sent).to.have.length(1);
    expect(s.sent[0][0]).to.equal(8);
    expect(be16(Uint8Array.from(s.sent[0]), 4)).to.equal(0x1234);
    s.incoming.push(kernelReply(0, s.sent[0], s.port));
    watcher.pump();
    expect(port.frames).to.have.length(1);
    const f = port.frames[0];
    expect(Array.from(f.subarray(0, 6))).to.deep.equal(Array.from(GUEST_MAC));
    expect(Array.from(f.subarray(6, 12))).to.deep.equal(Array.from(OUR_MAC));
    expect(internetChecksum(f, 14, 20)).to.equal(0);
    expect(Array.from(f.subarray(26, 30)), 'source: the pinged address').to.deep.equal(Array.from(REMOTE_V4));
    expect(Array.from(f.subarray(30, 34))).to.deep.equal(Array.from(GUEST_V4));
    expect(f[34]).to.equal(0);
    expect(be16(f, 38), 'guest identifier restored').to.equal(0x1234);
    expect(be16(f, 40)).to.equal(7);
    expect(internetChecksum(f, 34, f.length - 34)).to.equal(0);
    expect(Array.from(f.subarray(42))).to.deep.equal([1, 2, 3, 4, 5]);
  });

  it('reuses the flow for the same identifier and destination, opens another otherwise', () => {
    const { stack, sockets } = setup();
    stack.receiveFrame(segmentsOf(echo4(REMOTE_V4, 1, 1)), NO_OFFLOAD);
    stack.receiveFrame(segmentsOf(echo4(REMOTE_V4, 1, 2)), NO_OFFLOAD);
    stack.receiveFrame(segmentsOf(echo4(REMOTE_V4, 2, 1)), NO_OFFLOAD);
    stack.receiveFrame(segmentsOf(echo4(Uint8Array.from([203, 0, 113, 9]), 1, 1)), NO_OFFLOAD);
    expect(sockets.sockets).to.have.length(3);
    expect(sockets.sockets[0].sent).to.have.length(2);
  });

  it('sends echo to the gateway to 127.0.0.1 and replies from the gateway', () => {
    const { stack, sockets, watcher, port } = setup();
    stack.receiveFrame(segmentsOf(echo4(GATEWAY_V4, 5, 1)), NO_OFFLOAD);
    const s = sockets.sockets[0];
    expect(s.connectedTo!.slice(4, 8)).to.deep.equal([127, 0, 0, 1]);
    s.incoming.push(kernelReply(0, s.sent[0], s.port));
    watcher.pump();
    expect(Array.from(port.frames[0].subarray(26, 30))).to.deep.equal(Array.from(GATEWAY_V4));
  });

  it('handles IPv6 echo: ICMPv6 ping socket, ::1 for the gateway, checksum with the pseudo-header', () => {
    const { stack, sockets, watcher, port } = setup();
    stack.receiveFrame(segmentsOf(echo6(REMOTE_V6, 0xbeef, 3)), NO_OFFLOAD);
    stack.receiveFrame(segmentsOf(echo6(GATEWAY_V6, 0xbeef, 4)), NO_OFFLOAD);
    const [remote, gateway] = sockets.sockets;
    expect([remote.domain, remote.protocol]).to.deep.equal([10, 58]);
    expect(remote.connectedTo).to.have.length(28);
    expect(remote.connectedTo!.slice(8, 24)).to.deep.equal(Array.from(REMOTE_V6));
    expect(gateway.connectedTo!.slice(8, 24)).to.deep.equal([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    remote.incoming.push(kernelReply(129, remote.sent[0], remote.port));
    watcher.pump();
    const f = port.frames[0];
    expect(be16(f, 12)).to.equal(0x86dd);
    expect(Array.from(f.subarray(22, 38))).to.deep.equal(Array.from(REMOTE_V6));
    expect(Array.from(f.subarray(38, 54))).to.deep.equal(Array.from(GUEST_V6));
    expect(f[54]).to.equal(129);
    expect(be16(f, 58)).to.equal(0xbeef);
    const length = f.length - 54;
    expect(internetChecksum(f, 54, length, pseudoHeaderSumIpv6(f, 22, f, 38, 58, length))).to.equal(0);
  });

  it('drops link-local IPv6 destinations other than the gateway, and multicast', () => {
    const { stack, sockets, drops } = setup();
    stack.receiveFrame(segmentsOf(echo6(Uint8Array.from([0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9]), 1, 1)), NO_OFFLOAD);
    stack.receiveFrame(segmentsOf(echo4(Uint8Array.from([224, 0, 0, 1]), 1, 1)), NO_OFFLOAD);
    expect(sockets.sockets).to.have.length(0);
    expect(drops(DropReason.EchoSocketUnavailable)).to.equal(1);
    expect(drops(DropReason.IcmpUnsupported)).to.equal(1);
  });

  it("treats ferry's link-local (the guest's router) as the gateway: ::1 when mapped, the gateway itself when not", () => {
    const gateway = Uint8Array.from([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xfe]);
    const routerLinkLocal = Uint8Array.from([0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x98, 0x55, 0x9a, 0xff, 0xfe, 0x55, 0x9a, 0x55]);
    const base = testConfig();
    const v6 = { ...base.ipv6!, gateway, linkLocal: routerLinkLocal };

    const mapped = setup(testConfig({ ipv6: { ...v6, mapHostLoopback: gateway } }));
    mapped.stack.receiveFrame(segmentsOf(echo6(routerLinkLocal, 0x77, 1)), NO_OFFLOAD);
    const s = mapped.sockets.sockets[0];
    expect(s.connectedTo!.slice(8, 24)).to.deep.equal([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    s.incoming.push(kernelReply(129, s.sent[0], s.port));
    mapped.watcher.pump();
    const f = mapped.port.frames[0];
    expect(Array.from(f.subarray(22, 38)), 'reply from the address the guest pinged').to.deep.equal(Array.from(routerLinkLocal));
    expect(be16(f, 58)).to.equal(0x77);

    const unmapped = setup(testConfig({ ipv6: { ...v6, mapHostLoopback: null } }));
    unmapped.stack.receiveFrame(segmentsOf(echo6(routerLinkLocal, 0x78, 1)), NO_OFFLOAD);
    expect(unmapped.sockets.sockets[0].connectedTo!.slice(8, 24)).to.deep.equal(Array.from(gateway));
  });

  it('ignores non-reply datagrams and short reads', () => {
    const { stack, sockets, watcher, port } = setup();
    stack.receiveFrame(segmentsOf(echo4(REMOTE_V4, 1, 1)), NO_OFFLOAD);
    const s = sockets.sockets[0];
    s.incoming.push(Uint8Array.from([0, 0, 0]), kernelReply(8, s.sent[0], s.port));
    watcher.pump();
    expect(port.frames).to.have.length(0);
  });

  it('closes idle flows', () => {
    const { stack, sockets, watcher, clock } = setup();
    stack.receiveFrame(segmentsOf(echo4(REMOTE_V4, 1, 1)), NO_OFFLOAD);
    clock.t += ECHO_IDLE_MS / 2;
    stack.onTimer();
    expect(sockets.sockets[0].closed).to.equal(false);
    clock.t += ECHO_IDLE_MS;
    stack.onTimer();
    expect(sockets.sockets[0].closed).to.equal(true);
    expect(watcher.handlers.size).to.equal(0);
    expect(stack.echo.count).to.equal(0);
  });

  it('evicts the least recently used flow when the table is full', () => {
    const { stack, sockets, clock, drops } = setup();
    for (let i = 0; i < ECHO_MAX_FLOWS; i++) {
      clock.t++;
      stack.receiveFrame(segmentsOf(echo4(REMOTE_V4, i, 1)), NO_OFFLOAD);
    }
    clock.t++;
    stack.receiveFrame(segmentsOf(echo4(REMOTE_V4, 0, 2)), NO_OFFLOAD); // refresh flow 0
    clock.t++;
    stack.receiveFrame(segmentsOf(echo4(REMOTE_V4, 9999, 1)), NO_OFFLOAD);
    expect(stack.echo.count).to.equal(ECHO_MAX_FLOWS);
    expect(sockets.sockets[0].closed).to.equal(false);
    expect(sockets.sockets[1].closed, 'id 1 was least recently used').to.equal(true);
    expect(drops(DropReason.EchoTableFull)).to.equal(1);
  });

  it('logs once and drops when ping sockets are forbidden (EACCES), retrying later', () => {
    const lines: string[] = [];
    setLogSink((level, message) => lines.push(`${level}: ${message}`));
    try {
      const { stack, sockets, clock, drops } = setup();
      sockets.denyWith = 'EACCES';
      for (let i = 0; i < 5; i++) stack.receiveFrame(segmentsOf(echo4(REMOTE_V4, 1, i)), NO_OFFLOAD);
      expect(drops(DropReason.EchoSocketUnavailable)).to.equal(5);
      const warnings = lines.filter((l) => l.includes('ping_group_range'));
      expect(warnings).to.have.length(1);
      sockets.denyWith = null;
      stack.receiveFrame(segmentsOf(echo4(REMOTE_V4, 1, 9)), NO_OFFLOAD);
      expect(sockets.sockets, 'no retry inside the back-off').to.have.length(0);
      clock.t += DENIED_RETRY_MS + 1;
      stack.receiveFrame(segmentsOf(echo4(REMOTE_V4, 1, 10)), NO_OFFLOAD);
      expect(sockets.sockets).to.have.length(1);
    } finally {
      setLogSink((level, message) => level !== 'debug' && process.stderr.write(`${level}: ${message}\n`));
    }
  });

  it('drops echo when the stack has no sockets', () => {
    const counters = new CounterBlock();
    const stack = new Stack({ config: testConfig(), port: new FakeFramePort(), counters });
    stack.receiveFrame(segmentsOf(echo4(REMOTE_V4, 1, 1)), NO_OFFLOAD);
    expect(counters.get(DROP_SLOTS[DropReason.EchoSocketUnavailable])).to.equal(1);
  });

  it('closes every socket on close()', () => {
    const { stack, sockets } = setup();
    stack.receiveFrame(segmentsOf(echo4(REMOTE_V4, 1, 1)), NO_OFFLOAD);
    stack.receiveFrame(segmentsOf(echo6(REMOTE_V6, 1, 1)), NO_OFFLOAD);
    stack.close();
    expect(sockets.sockets.every((s) => s.closed)).to.equal(true);
  });
});

/** Runs test/support/icmp-echo-child.js inside a fresh network namespace. */
function runChild(pingGroupRange: string): { ok: boolean; output: string; result: unknown } {
  const child = path.join(DIST_ROOT, 'test', 'support', 'icmp-echo-child.js');
  const script = [
    'set -e',
    'ip link set lo up',
    'ip link add d0 type veth peer name d1',
    'ip link set d1 up',
    'ip link set d0 up',
    'ip addr add 203.0.113.1/24 dev d0',
    'ip addr add 2001:db8:1::1/64 dev d0 nodad',
    `sysctl -qw net.ipv4.ping_group_range="${pingGroupRange}"`,
    `exec "${process.execPath}" "${child}"`,
  ].join('\n');
  const r = spawnSync('unshare', ['--net', 'sh', '-c', script], { encoding: 'utf8', timeout: 15_000 });
  const output = `${r.stdout}\n${r.stderr}`;
  const line = (r.stdout ?? '').split('\n').find((l) => l.startsWith('RESULT '));
  return { ok: r.status === 0 && line !== undefined, output, result: line ? JSON.parse(line.slice(7)) : null };
}

function canUnshare(): boolean {
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) return false;
  return spawnSync('unshare', ['--net', 'true'], { stdio: 'ignore' }).status === 0 && spawnSync('ip', ['-V'], { stdio: 'ignore' }).status === 0;
}

describe('icmp echo (real ping sockets in a private network namespace)', function () {
  this.timeout(20_000);
  before(function () {
    if (!canUnshare()) this.skip();
  });

  it('answers IPv4 and IPv6 echo to local addresses and to the gateway (via loopback)', () => {
    const { ok, output, result } = runChild('0 2147483647');
    expect(ok, output).to.equal(true);
    const r = result as { replies: { family: number; src: string; id: number; seq: number; data: string; checksumOk: boolean }[]; drops: number };
    const byKey = new Map(r.replies.map((x) => [`${x.family} ${x.src}`, x]));
    for (const key of ['4 203.0.113.1', '4 192.0.2.254', '6 2001:db8:1::1', '6 fe80::1']) {
      const reply = byKey.get(key);
      expect(reply, `${key} in ${output}`).to.not.equal(undefined);
      expect(reply!.id).to.equal(0x4242);
      expect(reply!.checksumOk).to.equal(true);
      expect(reply!.data).to.equal('ferry-ping');
    }
  });

  it('drops and explains when ping_group_range forbids ping sockets', () => {
    const { ok, output, result } = runChild('1 0');
    expect(ok, output).to.equal(true);
    const r = result as { replies: unknown[]; unavailable: number };
    expect(r.replies).to.have.length(0);
    expect(r.unavailable).to.equal(4);
    expect(output).to.match(/ping_group_range/);
  });
});

describe('icmp echo in the shared flow table', () => {
  it('lists echo flows with their kind and byte counts, and closes them through the table', () => {
    const { stack, sockets, watcher } = setup();
    const table = new FlowTable(16);
    stack.echo.useFlowTable(table);
    stack.receiveFrame(segmentsOf(echo4(REMOTE_V4, 0x42, 1)), NO_OFFLOAD);
    stack.receiveFrame(segmentsOf(echo6(REMOTE_V6, 0x43, 1)), NO_OFFLOAD);
    const s = sockets.sockets[0];
    s.incoming.push(kernelReply(0, s.sent[0], s.port));
    watcher.pump();
    const listed = [...table.flows(2000)];
    expect(listed.map((f) => f.kind).sort()).to.deep.equal(['icmp', 'icmpv6']);
    const v4 = listed.find((f) => f.kind === 'icmp')!;
    expect(Array.from(v4.remoteAddress)).to.deep.equal(Array.from(REMOTE_V4));
    expect(Array.from(v4.guestAddress)).to.deep.equal(Array.from(GUEST_V4));
    expect(v4.guestPort, 'the echo identifier').to.equal(0x42);
    expect(v4.state).to.equal('active');
    expect(v4.bytesFromGuest).to.equal(s.sent[0].length);
    expect(v4.bytesToGuest).to.equal(s.sent[0].length);
    expect(table.closeFlow(v4.id)).to.equal(true);
    expect(s.closed).to.equal(true);
    expect(watcher.handlers.has(s.fd)).to.equal(false);
    expect(stack.echo.count).to.equal(1);
  });

  it('gives up an unanswered echo flow when the shared table is full', () => {
    const { stack, sockets, clock } = setup();
    const table = new FlowTable(1);
    stack.echo.useFlowTable(table);
    stack.receiveFrame(segmentsOf(echo4(REMOTE_V4, 1, 1)), NO_OFFLOAD);
    clock.t += EVICTION_MIN_AGE_MS;
    // Another kind needs the only slot: the unanswered echo flow goes, its socket closed.
    expect(table.allocate(FlowKind.Udp, 4, GUEST_V4, 0, 5000, REMOTE_V4, 0, 53, 0, clock.now())).to.not.equal(NO_FLOW);
    expect(sockets.sockets[0].closed).to.equal(true);
    expect(stack.echo.count).to.equal(0);
  });
});
