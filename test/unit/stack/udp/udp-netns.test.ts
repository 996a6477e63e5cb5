/**
 * UdpService with REAL kernel sockets, inside a private network namespace
 * this file creates: run normally, it re-runs itself under `unshare --net`
 * (FERRY_UDP_NETNS=1) where the loopback holds 192.0.2.1-2/24 and
 * 2001:db8::1-2/64 and Node dgram servers play the outside world. The guest
 * side is a FakeFramePort: guest frames go in through Stack.receiveFrame,
 * frames to the guest are read back from the port. Readiness comes from the
 * addon's real Poller, as in a worker.
 */
import { expect } from 'chai';
import { spawnSync } from 'child_process';
import * as dgram from 'dgram';
import { native, type Poller } from '../../../../src/sys/native';
import { CounterBlock } from '../../../../src/sys/counters';
import { Stack } from '../../../../src/stack/stack';
import type { FdWatcher, ReadyHandler } from '../../../../src/stack/context';
import { BATCH_SLOTS, UdpEvent, UdpService, type UdpSockets } from '../../../../src/stack/udp/udp';
import { FlowTable } from '../../../../src/stack/flow/flow-table';
import { parseForwardSpec } from '../../../../src/stack/flow/forward-spec';
import { be16, finishChecksum, internetChecksum, pseudoHeaderSumIpv4, pseudoHeaderSumIpv6, sumBytes } from '../../../../src/stack/wire/checksum';
import {
  FakeFramePort,
  GUEST_MAC,
  NO_OFFLOAD,
  OUR_MAC,
  ethernetFrame,
  ipv4Packet,
  ipv6Packet,
  segmentsOf,
  testConfig,
  udpDatagram,
} from '../../../support/fakes/stack-fakes';
import type { StackConfig } from '../../../../src/stack/config';
import { REPO_ROOT } from '../../../support/paths';

const IN_NETNS = process.env.FERRY_UDP_NETNS === '1';

const V4 = (t: string): Uint8Array => Uint8Array.from(t.split('.').map(Number));
const GUEST4 = V4('192.0.2.1');
const SERVER4 = V4('192.0.2.2');
const GATEWAY4 = V4('192.0.2.254');
const DNS_FORWARD4 = V4('198.51.100.53');
const GUEST6 = Uint8Array.from(Buffer.from('20010db8000000000000000000000001', 'hex'));
const SERVER6 = Uint8Array.from(Buffer.from('20010db8000000000000000000000002', 'hex'));
const GATEWAY6 = Uint8Array.from(Buffer.from('fe800000000000000000000000000001', 'hex'));

/** The readiness source of a worker, reduced: the addon's Poller calling the stack's handlers. */
class PollerWatcher implements FdWatcher {
  private readonly events = new Int32Array(128);
  private readonly handlers = new Map<number, ReadyHandler>();
  readonly poller: Poller;
  constructor() {
    this.poller = new native.Poller(this.events, (count) => {
      for (let i = 0; i < count; i++) this.handlers.get(this.events[2 * i])?.onReady(this.events[2 * i], this.events[2 * i + 1]);
    });
  }
  watch(fd: number, events: number, handler: ReadyHandler): void {
    this.handlers.set(fd, handler);
    this.poller.add(fd, events);
  }
  modify(fd: number, events: number): void {
    this.poller.modify(fd, events);
  }
  unwatch(fd: number): void {
    if (this.handlers.delete(fd)) this.poller.remove(fd);
  }
  get watched(): number {
    return this.handlers.size;
  }
}

/** A watcher that only records: the test calls onReady itself (deterministic batches). */
class ManualWatcher implements FdWatcher {
  readonly handlers = new Map<number, ReadyHandler>();
  readonly poller = { close: (): void => undefined };
  watch(fd: number, _events: number, handler: ReadyHandler): void {
    this.handlers.set(fd, handler);
  }
  modify(): void {}
  unwatch(fd: number): void {
    this.handlers.delete(fd);
  }
  get watched(): number {
    return this.handlers.size;
  }
  /** Report every watched fd readable once. */
  fire(): void {
    for (const [fd, handler] of [...this.handlers]) handler.onReady(fd, 0x001);
  }
}

/** The real addon with recvmsg/recvmmsg calls counted. */
function countingSockets(): UdpSockets & { calls: { recvmsg: number; recvmmsg: number } } {
  const calls = { recvmsg: 0, recvmmsg: 0 };
  return {
    calls,
    socket: native.socket,
    bind: native.bind,
    connect: native.connect,
    close: native.close,
    setsockoptInt: native.setsockoptInt,
    setsockoptBytes: native.setsockoptBytes,
    sendmsg: native.sendmsg,
    recvErrqueue: native.recvErrqueue,
    ioctlInt: native.ioctlInt,
    recvmsg: (...args: Parameters<typeof native.recvmsg>) => {
      calls.recvmsg++;
      return native.recvmsg(...args);
    },
    recvmmsg: (...args: Parameters<typeof native.recvmmsg>) => {
      calls.recvmmsg++;
      return native.recvmmsg(...args);
    },
  };
}

interface Rig {
  stack: Stack;
  udp: UdpService;
  port: FakeFramePort;
  counters: CounterBlock;
  watcher: PollerWatcher | ManualWatcher;
  config: StackConfig;
}

function makeRig(patch: Partial<StackConfig> = {}, segmentSizes?: number[], manual?: { sockets: UdpSockets }): Rig {
  const base = testConfig();
  const config = testConfig({
    // Inbound datagrams may come before any guest frame: the guest's MAC is configured (-M).
    guestMac: GUEST_MAC,
    ipv4: { ...base.ipv4!, address: GUEST4, gateway: GATEWAY4, mapHostLoopback: GATEWAY4, dnsForward: DNS_FORWARD4, dnsHost: SERVER4 },
    ipv6: { ...base.ipv6!, address: GUEST6, gateway: GATEWAY6, linkLocal: GATEWAY6, mapHostLoopback: GATEWAY6 },
    ...patch,
  });
  const port = new FakeFramePort(segmentSizes);
  const counters = new CounterBlock();
  const watcher = manual ? new ManualWatcher() : new PollerWatcher();
  const stack = new Stack({ config, port, counters, watcher, sockets: native });
  const udp = new UdpService(stack.ctx, { flows: new FlowTable(Math.max(1, config.maxFlows), counters), sockets: manual?.sockets });
  stack.udpHandler = udp;
  return { stack, udp, port, counters, watcher, config };
}

function destroyRig(rig: Rig): void {
  rig.udp.close();
  rig.stack.close();
  rig.watcher.poller.close();
}

/** Send a UDP datagram from the guest (frame optionally split at cut points). */
function guestSend(rig: Rig, src: Uint8Array, dst: Uint8Array, srcPort: number, dstPort: number, data: Uint8Array, cuts: number[] = []): void {
  const udp = udpDatagram(src, dst, srcPort, dstPort, data);
  const frame = src.length === 4
    ? ethernetFrame(OUR_MAC, GUEST_MAC, 0x0800, ipv4Packet(src, dst, 17, udp))
    : ethernetFrame(OUR_MAC, GUEST_MAC, 0x86dd, ipv6Packet(src, dst, 17, udp));
  rig.stack.receiveFrame(segmentsOf(frame, cuts), NO_OFFLOAD);
}

async function until(what: string, cond: () => boolean, timeoutMs = 3000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

async function untilAsync(what: string, cond: () => Promise<boolean>, timeoutMs = 3000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Packets sent by the veths va and wa (rtnetlink statistics of this namespace). */
async function txPackets(): Promise<{ va: number; wa: number }> {
  const r = spawnSync('ip', ['-s', '-j', 'link', 'show'], { encoding: 'utf8', timeout: 5000 });
  const links = JSON.parse(r.stdout) as { ifname: string; stats64?: { tx: { packets: number } } }[];
  const tx = (name: string): number => links.find((l) => l.ifname === name)?.stats64?.tx.packets ?? -1;
  return { va: tx('va'), wa: tx('wa') };
}

/** A parsed frame to the guest: UDP (with checksums checked) or ICMP. */
interface GuestFrame {
  family: 4 | 6;
  src: string;
  dst: string;
  protocol: number;
  srcPort: number;
  dstPort: number;
  data: Buffer;
  l4: Buffer;
}

function parseFrame(frame: Uint8Array): GuestFrame {
  const b = Buffer.from(frame);
  const etherType = b.readUInt16BE(12);
  expect(b.subarray(0, 6)).to.deep.equal(Buffer.from(GUEST_MAC));
  if (etherType === 0x0800) {
    expect(internetChecksum(frame, 14, 20), 'IPv4 header checksum').to.equal(0);
    const total = b.readUInt16BE(16);
    expect(total).to.equal(frame.length - 14);
    const protocol = b[23];
    const l4 = b.subarray(34, 14 + total);
    const src = [...b.subarray(26, 30)].join('.');
    const dst = [...b.subarray(30, 34)].join('.');
    if (protocol === 17) {
      expect(finishChecksum(sumBytes(frame, 34, l4.length, pseudoHeaderSumIpv4(frame, 26, frame, 30, 17, l4.length))), 'UDP checksum').to.equal(0);
      expect(l4.readUInt16BE(4)).to.equal(l4.length);
    }
    return { family: 4, src, dst, protocol, srcPort: be16(l4, 0), dstPort: be16(l4, 2), data: l4.subarray(8), l4 };
  }
  expect(etherType).to.equal(0x86dd);
  const payloadLength = b.readUInt16BE(18);
  expect(payloadLength).to.equal(frame.length - 54);
  const protocol = b[20];
  const l4 = b.subarray(54);
  const sum = finishChecksum(sumBytes(frame, 54, l4.length, pseudoHeaderSumIpv6(frame, 22, frame, 38, protocol, l4.length)));
  expect(sum, 'IPv6 upper-layer checksum').to.equal(0);
  const hex = (o: number): string => b.subarray(o, o + 16).toString('hex');
  return { family: 6, src: hex(22), dst: hex(38), protocol, srcPort: be16(l4, 0), dstPort: be16(l4, 2), data: l4.subarray(8), l4 };
}

function hex6(a: Uint8Array): string {
  return Buffer.from(a).toString('hex');
}

/** A dgram echo server; resolves once bound. Records senders. */
async function echoServer(type: 'udp4' | 'udp6', address: string, port: number): Promise<{ socket: dgram.Socket; senders: string[] }> {
  const socket = dgram.createSocket({ type, ipv6Only: type === 'udp6' });
  const senders: string[] = [];
  socket.on('message', (msg, rinfo) => {
    senders.push(`${rinfo.address}:${rinfo.port}`);
    socket.send(msg, rinfo.port, rinfo.address);
  });
  await new Promise<void>((resolve, reject) => {
    socket.once('error', reject);
    socket.bind(port, address, () => resolve());
  });
  return { socket, senders };
}

function closeSocket(s: dgram.Socket): Promise<void> {
  return new Promise((resolve) => s.close(() => resolve()));
}

function canUnshare(): boolean {
  return spawnSync('unshare', ['--net', 'true'], { stdio: 'ignore' }).status === 0 && spawnSync('ip', ['-V'], { stdio: 'ignore' }).status === 0;
}

if (!IN_NETNS) {
  describe('udp (real sockets in a private network namespace)', function () {
    this.timeout(60000);
    it('passes every test of this file inside a fresh namespace', function () {
      if (!canUnshare()) this.skip();
      const mocha = require.resolve('mocha/bin/mocha.js');
      const setup = [
        'set -e',
        'ip link set lo up',
        // The test addresses live on the namespace's loopback (no dummy module needed).
        'ip addr add 192.0.2.1/24 dev lo',
        'ip addr add 192.0.2.2/24 dev lo',
        'ip -6 addr add 2001:db8::1/64 dev lo nodad',
        'ip -6 addr add 2001:db8::2/64 dev lo nodad',
        // A second local address for -o/--outbound.
        'ip addr add 192.0.2.3/24 dev lo',
        'ip -6 addr add 2001:db8::3/64 dev lo nodad',
        // Two veth pairs for --outbound-if: IPv6 off on them, so the only
        // packets they send are those of the test (ARP requests).
        'sysctl -qw net.ipv6.conf.default.disable_ipv6=1',
        'ip link add va type veth peer name vb',
        'ip link add wa type veth peer name wb',
        'for d in va vb wa wb; do ip link set $d up; done',
        'ip addr add 198.51.100.1/24 dev va',
        'ip addr add 203.0.113.1/24 dev wa',
        // The test net is reached through va; bound to wa, through wa.
        'ip route add 198.51.100.0/24 dev wa metric 500',
        `exec "${process.execPath}" "${mocha}" --no-config --timeout 20000 "${__filename}"`,
      ].join('\n');
      const r = spawnSync('unshare', ['--net', 'sh', '-c', setup], {
        encoding: 'utf8',
        timeout: 55_000,
        env: { ...process.env, FERRY_UDP_NETNS: '1' },
        cwd: REPO_ROOT,
      });
      expect(r.status, `${r.stdout}\n${r.stderr}`).to.equal(0);
      const passing = /(\d+) passing/.exec(r.stdout);
      expect(Number(passing?.[1] ?? 0), r.stdout).to.be.at.least(20);
      expect(r.stdout).to.not.match(/pending|failing/);
    });
  });
} else {
  describe('udp in a private namespace: guest to host flows', function () {
    let rig: Rig;
    const servers: dgram.Socket[] = [];
    afterEach(async () => {
      destroyRig(rig);
      for (const s of servers.splice(0)) await closeSocket(s);
    });

    it('IPv4: a guest datagram reaches the server from the host address; the echo comes back from the same address and port', async () => {
      rig = makeRig();
      const server = await echoServer('udp4', '192.0.2.2', 7007);
      servers.push(server.socket);
      guestSend(rig, GUEST4, SERVER4, 40000, 7007, Buffer.from('hello'));
      guestSend(rig, GUEST4, SERVER4, 40000, 7007, Buffer.from('again'));
      await until('two echoes', () => rig.port.frames.length >= 2);
      const [a, b] = rig.port.frames.map(parseFrame);
      expect(a).to.include({ family: 4, src: '192.0.2.2', dst: '192.0.2.1', protocol: 17, srcPort: 7007, dstPort: 40000 });
      expect(a.data.toString()).to.equal('hello');
      expect(b.data.toString()).to.equal('again');
      // One flow, one host socket: both datagrams left from the same host port.
      expect(rig.udp.flowCount).to.equal(1);
      expect(server.senders).to.have.length(2);
      // The host socket kept the guest's source port.
      expect(server.senders[0]).to.equal('192.0.2.1:40000');
      expect(server.senders[1]).to.equal(server.senders[0]);
      expect(rig.counters.get(UdpEvent.DatagramsFromGuest)).to.equal(2);
      expect(rig.counters.get(UdpEvent.DatagramsToGuest)).to.equal(2);
    });

    it('-o/--outbound: the server sees the -o source address per family, with the guest\'s port', async () => {
      rig = makeRig({ outbound4: V4('192.0.2.3'), outbound6: Uint8Array.from(Buffer.from('20010db8000000000000000000000003', 'hex')) });
      const server4 = await echoServer('udp4', '192.0.2.2', 7017);
      const server6 = await echoServer('udp6', '2001:db8::2', 7017);
      servers.push(server4.socket, server6.socket);
      guestSend(rig, GUEST4, SERVER4, 40010, 7017, Buffer.from('four'));
      guestSend(rig, GUEST6, SERVER6, 40010, 7017, Buffer.from('six'));
      await until('two echoes', () => rig.port.frames.length >= 2);
      expect(server4.senders).to.deep.equal(['192.0.2.3:40010']);
      expect(server6.senders).to.deep.equal(['2001:db8::3:40010']);
      const echoes = rig.port.frames.map(parseFrame).sort((a, b) => a.family - b.family);
      expect(echoes[0]).to.include({ src: '192.0.2.2', dst: '192.0.2.1', dstPort: 40010 });
      expect(echoes[1]).to.include({ src: hex6(SERVER6), dst: hex6(GUEST6), dstPort: 40010 });
    });

    it('--outbound-if4: the datagram leaves through that interface, not the one the route picks', async () => {
      const before = await txPackets();
      rig = makeRig({ interfaceName: 'wa', outboundIf4: 'wa', outboundIf6: null });
      guestSend(rig, GUEST4, V4('198.51.100.9'), 40020, 9, Buffer.from('bound'));
      await untilAsync('a packet out of wa', async () => (await txPackets()).wa > before.wa);
      expect((await txPackets()).va, 'nothing left through va').to.equal(before.va);
      destroyRig(rig);
      // Without the option the route's interface (va) is used: the test tells the two apart.
      rig = makeRig();
      guestSend(rig, GUEST4, V4('198.51.100.10'), 40021, 9, Buffer.from('routed'));
      await untilAsync('a packet out of va', async () => (await txPackets()).va > before.va);
    });

    it('a different guest source port or destination opens another flow', async () => {
      rig = makeRig();
      const server = await echoServer('udp4', '192.0.2.2', 7007);
      servers.push(server.socket);
      guestSend(rig, GUEST4, SERVER4, 40000, 7007, Buffer.from('a'));
      guestSend(rig, GUEST4, SERVER4, 40001, 7007, Buffer.from('b'));
      await until('two echoes', () => rig.port.frames.length >= 2);
      const ports = rig.port.frames.map(parseFrame).map((f) => f.dstPort).sort();
      expect(ports).to.deep.equal([40000, 40001]);
      expect(rig.udp.flowCount).to.equal(2);
    });

    it('flows from one guest port to two destinations both keep the port; a port held by a host socket falls back to an ephemeral one', async () => {
      rig = makeRig();
      const a = await echoServer('udp4', '192.0.2.2', 7015);
      const b = await echoServer('udp4', '127.0.0.1', 7015);
      const holder = dgram.createSocket('udp4');
      await new Promise<void>((resolve) => holder.bind(40501, '0.0.0.0', () => resolve()));
      servers.push(a.socket, b.socket, holder);
      guestSend(rig, GUEST4, SERVER4, 40500, 7015, Buffer.from('a'));
      guestSend(rig, GUEST4, GATEWAY4, 40500, 7015, Buffer.from('b'));
      guestSend(rig, GUEST4, SERVER4, 40501, 7015, Buffer.from('c'));
      await until('three echoes', () => rig.port.frames.length >= 3);
      expect(a.senders).to.have.length(2);
      expect(a.senders[0]).to.equal('192.0.2.1:40500');
      expect(b.senders).to.deep.equal(['127.0.0.1:40500']);
      expect(a.senders[1]).to.match(/^192\.0\.2\.1:\d+$/);
      expect(a.senders[1]).to.not.equal('192.0.2.1:40501');
      expect(rig.counters.get(UdpEvent.SourcePortChanged)).to.equal(1);
      // Each echo reached the guest on its own flow.
      const frames = rig.port.frames.map(parseFrame).map((f) => `${f.src}>${f.dstPort}:${f.data.toString()}`).sort();
      expect(frames).to.deep.equal(['192.0.2.2>40500:a', '192.0.2.2>40501:c', '192.0.2.254>40500:b'].sort());
    });

    it('the gateway address reaches the host loopback, and replies come from the gateway', async () => {
      rig = makeRig();
      const server = await echoServer('udp4', '127.0.0.1', 7008);
      servers.push(server.socket);
      guestSend(rig, GUEST4, GATEWAY4, 40002, 7008, Buffer.from('loop'));
      await until('echo', () => rig.port.frames.length >= 1);
      const f = parseFrame(rig.port.frames[0]);
      expect(f).to.include({ src: '192.0.2.254', dst: '192.0.2.1', srcPort: 7008, dstPort: 40002 });
      expect(server.senders[0]).to.match(/^127\.0\.0\.1:/);
    });

    it('DNS to the --dns-forward address goes to --dns-host port 53; answers come from the forward address', async () => {
      rig = makeRig();
      const server = await echoServer('udp4', '192.0.2.2', 53);
      servers.push(server.socket);
      guestSend(rig, GUEST4, DNS_FORWARD4, 40003, 53, Buffer.from('query'));
      await until('answer', () => rig.port.frames.length >= 1);
      const f = parseFrame(rig.port.frames[0]);
      expect(f).to.include({ src: '198.51.100.53', srcPort: 53, dstPort: 40003 });
      expect(f.data.toString()).to.equal('query');
      expect(server.senders).to.have.length(1);
    });

    it('IPv6: echo through the global address, and the link-local gateway to ::1', async () => {
      rig = makeRig();
      const server = await echoServer('udp6', '2001:db8::2', 7009);
      const loop = await echoServer('udp6', '::1', 7009);
      servers.push(server.socket, loop.socket);
      guestSend(rig, GUEST6, SERVER6, 40004, 7009, Buffer.from('six'));
      guestSend(rig, GUEST6, GATEWAY6, 40005, 7009, Buffer.from('loop6'));
      await until('two echoes', () => rig.port.frames.length >= 2);
      const frames = rig.port.frames.map(parseFrame);
      const global = frames.find((f) => f.dstPort === 40004)!;
      const local = frames.find((f) => f.dstPort === 40005)!;
      expect(global).to.include({ family: 6, src: hex6(SERVER6), dst: hex6(GUEST6), srcPort: 7009 });
      expect(global.data.toString()).to.equal('six');
      expect(local).to.include({ src: hex6(GATEWAY6), srcPort: 7009 });
      expect(loop.senders[0]).to.match(/^::1:/);
      // Both test addresses sit on the namespace's loopback, so the kernel may pick either as the source.
      expect(server.senders[0]).to.match(/^2001:db8::[12]:/);
    });

    for (const family of [4, 6] as const) {
      it(`IPv${family}: datagrams of 0..65000 bytes, split guest frames and split RX buffers, come back intact`, async () => {
        rig = makeRig({}, [100, 1500, 4096, 65536]);
        const server = family === 4 ? await echoServer('udp4', '192.0.2.2', 7010) : await echoServer('udp6', '2001:db8::2', 7010);
        servers.push(server.socket);
        server.socket.setRecvBufferSize(1 << 20);
        server.socket.setSendBufferSize(1 << 20);
        const sizes = [0, 1, 7, 1472, 1473, 9000, 32768, 65000];
        for (let i = 0; i < sizes.length; i++) {
          const data = Buffer.alloc(sizes[i]);
          for (let j = 0; j < data.length; j++) data[j] = (j * 7 + i) & 0xff;
          // Cut the guest frame inside the headers and the payload.
          guestSend(rig, family === 4 ? GUEST4 : GUEST6, family === 4 ? SERVER4 : SERVER6, 41000, 7010, data, [30, 47, 1000, 20000]);
          await until(`echo of ${sizes[i]} bytes`, () => rig.port.frames.length >= i + 1);
          const f = parseFrame(rig.port.frames[i]);
          expect(f.data.length).to.equal(sizes[i]);
          expect(Buffer.compare(f.data, data), `payload of ${sizes[i]} bytes`).to.equal(0);
        }
      });
    }

    it('a closed port gives the guest ICMP port unreachable quoting its own datagram (IPv4 and IPv6)', async () => {
      rig = makeRig();
      guestSend(rig, GUEST4, SERVER4, 40006, 9, Buffer.from('anyone?'));
      guestSend(rig, GUEST6, SERVER6, 40007, 9, Buffer.from('anyone6?'));
      await until('two ICMP errors', () => rig.port.frames.length >= 2);
      const frames = rig.port.frames.map(parseFrame);
      const v4 = frames.find((f) => f.family === 4)!;
      expect(v4).to.include({ protocol: 1, src: '192.0.2.2', dst: '192.0.2.1' });
      expect(internetChecksum(v4.l4, 0, v4.l4.length)).to.equal(0);
      expect([v4.l4[0], v4.l4[1]]).to.deep.equal([3, 3]);
      const q4 = v4.l4.subarray(8);
      expect(q4[0]).to.equal(0x45);
      expect([...q4.subarray(12, 16)].join('.')).to.equal('192.0.2.1');
      expect([...q4.subarray(16, 20)].join('.')).to.equal('192.0.2.2');
      expect(q4[9]).to.equal(17);
      expect([q4.readUInt16BE(20), q4.readUInt16BE(22), q4.readUInt16BE(24)]).to.deep.equal([40006, 9, 8 + 7]);
      expect(q4.subarray(28).toString()).to.equal('anyone?');
      const v6 = frames.find((f) => f.family === 6)!;
      expect(v6).to.include({ protocol: 58, src: hex6(SERVER6), dst: hex6(GUEST6) });
      expect([v6.l4[0], v6.l4[1]]).to.deep.equal([1, 4]);
      const q6 = v6.l4.subarray(8);
      expect(q6.subarray(8, 24).toString('hex')).to.equal(hex6(GUEST6));
      expect(q6.subarray(24, 40).toString('hex')).to.equal(hex6(SERVER6));
      expect([q6.readUInt16BE(40), q6.readUInt16BE(42)]).to.deep.equal([40007, 9]);
      expect(rig.counters.get(UdpEvent.IcmpErrorRelayed)).to.equal(2);
    });

    it('a closed port on the gateway (loopback) is reported from the gateway', async () => {
      rig = makeRig();
      guestSend(rig, GUEST4, GATEWAY4, 40008, 9, Buffer.from('x'));
      await until('ICMP error', () => rig.port.frames.length >= 1);
      const f = parseFrame(rig.port.frames[0]);
      expect(f).to.include({ protocol: 1, src: '192.0.2.254' });
      expect([f.l4[0], f.l4[1]]).to.deep.equal([3, 3]);
    });

    it('idle flows are closed after udpIdleMs', async () => {
      rig = makeRig({ udpIdleMs: 50 });
      const server = await echoServer('udp4', '192.0.2.2', 7011);
      servers.push(server.socket);
      guestSend(rig, GUEST4, SERVER4, 40009, 7011, Buffer.from('x'));
      await until('echo', () => rig.port.frames.length >= 1);
      const watched = rig.watcher.watched;
      rig.udp.onTimer(rig.stack.ctx.clock.now() + 10);
      expect(rig.udp.flowCount).to.equal(1);
      rig.udp.onTimer(rig.stack.ctx.clock.now() + 1000);
      expect(rig.udp.flowCount).to.equal(0);
      expect(rig.watcher.watched).to.equal(watched - 1);
      expect(rig.counters.get(UdpEvent.FlowExpired)).to.equal(1);
    });

    it('the flow table bounds flows (--max-flows): datagrams of a new flow are dropped and counted', async () => {
      rig = makeRig({ maxFlows: 2 });
      const server = await echoServer('udp4', '192.0.2.2', 7012);
      servers.push(server.socket);
      for (const p of [40010, 40011, 40012]) guestSend(rig, GUEST4, SERVER4, p, 7012, Buffer.from('x'));
      await until('two echoes', () => rig.port.frames.length >= 2);
      await new Promise((r) => setTimeout(r, 50));
      expect(rig.port.frames).to.have.length(2);
      expect(rig.udp.flowCount).to.equal(2);
      expect(rig.counters.get(UdpEvent.TableFull)).to.equal(1);
      expect(server.senders).to.have.length(2);
    });

    it('with no guest RX buffers, reading pauses and resumes on onWritable without losing datagrams', async () => {
      rig = makeRig();
      const server = await echoServer('udp4', '192.0.2.2', 7013);
      servers.push(server.socket);
      rig.port.available = false;
      for (let i = 0; i < 5; i++) guestSend(rig, GUEST4, SERVER4, 40013, 7013, Buffer.from(`n${i}`));
      await until('server got 5', () => server.senders.length >= 5);
      await until('blocked', () => rig.counters.get(UdpEvent.RxBlocked) >= 1);
      await new Promise((r) => setTimeout(r, 30));
      expect(rig.port.frames).to.have.length(0);
      rig.port.available = true;
      rig.port.onWritable?.();
      await until('five echoes', () => rig.port.frames.length >= 5);
      expect(rig.port.frames.map(parseFrame).map((f) => f.data.toString())).to.deep.equal(['n0', 'n1', 'n2', 'n3', 'n4']);
    });
  });

  describe('udp in a private namespace: batched reads', function () {
    let rig: Rig;
    const sockets: dgram.Socket[] = [];
    afterEach(async () => {
      destroyRig(rig);
      for (const s of sockets.splice(0)) await closeSocket(s);
    });

    it('a burst of small datagrams is read with one recvmmsg per BATCH_SLOTS and delivered in order', async () => {
      const counting = countingSockets();
      rig = makeRig({}, undefined, { sockets: counting });
      const burst = BATCH_SLOTS + 8;
      const server = dgram.createSocket('udp4');
      sockets.push(server);
      let sender = '';
      server.on('message', (_m, r) => {
        sender = `${r.address}:${r.port}`;
        for (let i = 0; i < burst; i++) server.send(`d${i}`, r.port, r.address);
      });
      await new Promise<void>((resolve) => server.bind(7020, '192.0.2.2', () => resolve()));
      guestSend(rig, GUEST4, SERVER4, 40100, 7020, Buffer.from('go'));
      await until('request at the server', () => sender !== '');
      await new Promise((r) => setTimeout(r, 100)); // the burst is queued on the flow's socket
      (rig.watcher as ManualWatcher).fire();
      expect(rig.port.frames.map(parseFrame).map((f) => f.data.toString())).to.deep.equal(Array.from({ length: burst }, (_, i) => `d${i}`));
      // Two full batches at most plus the read that finds the socket empty.
      expect(counting.calls.recvmmsg).to.be.at.most(3);
      expect(counting.calls.recvmsg).to.equal(0);
      expect(rig.port.flushes).to.equal(1);
    });

    it('a large datagram at the head of the queue is read by recvmsg straight into its RX buffers, the small ones after it batched', async () => {
      const counting = countingSockets();
      rig = makeRig({}, [1000, 65536], { sockets: counting });
      const server = dgram.createSocket('udp4');
      sockets.push(server);
      const big = Buffer.alloc(30000, 0x5a);
      let got = false;
      server.on('message', (_m, r) => {
        got = true;
        server.send(big, r.port, r.address);
        server.send('small1', r.port, r.address);
        server.send('small2', r.port, r.address);
      });
      await new Promise<void>((resolve) => server.bind(7021, '192.0.2.2', () => resolve()));
      guestSend(rig, GUEST4, SERVER4, 40101, 7021, Buffer.from('go'));
      await until('request at the server', () => got);
      await new Promise((r) => setTimeout(r, 100));
      (rig.watcher as ManualWatcher).fire();
      const data = rig.port.frames.map(parseFrame).map((f) => f.data);
      expect(data.map((d) => d.length)).to.deep.equal([30000, 6, 6]);
      expect(Buffer.compare(data[0], big)).to.equal(0);
      expect(counting.calls.recvmsg).to.equal(1);
      expect(counting.calls.recvmmsg).to.be.at.least(1);
    });

    it('an inbound burst from two senders is batched with their addresses, one flow each', async () => {
      rig = makeRig({}, undefined, { sockets: countingSockets() });
      rig.udp.listen([parseForwardSpec('192.0.2.1/7102')]);
      const a = dgram.createSocket('udp4');
      const b = dgram.createSocket('udp4');
      sockets.push(a, b);
      await new Promise<void>((resolve) => a.bind(0, '192.0.2.2', () => resolve()));
      await new Promise<void>((resolve) => b.bind(0, '127.0.0.1', () => resolve()));
      for (let i = 0; i < 4; i++) {
        a.send(`a${i}`, 7102, '192.0.2.1');
        b.send(`b${i}`, 7102, '192.0.2.1');
      }
      await new Promise((r) => setTimeout(r, 100));
      (rig.watcher as ManualWatcher).fire();
      const frames = rig.port.frames.map(parseFrame);
      expect(frames).to.have.length(8);
      const from = (p: string): string[] => frames.filter((f) => f.data.toString().startsWith(p)).map((f) => `${f.src}:${f.srcPort}>${f.dstPort}`);
      expect(new Set(from('a'))).to.deep.equal(new Set([`192.0.2.2:${a.address().port}>7102`]));
      expect(new Set(from('b'))).to.deep.equal(new Set([`192.0.2.254:${b.address().port}>7102`]));
      expect(rig.udp.flowCount).to.equal(2);
    });
  });

  describe('udp in a private namespace: inbound forwards (-u)', function () {
    let rig: Rig;
    const sockets: dgram.Socket[] = [];
    const servers6: dgram.Socket[] = [];
    afterEach(async () => {
      destroyRig(rig);
      for (const s of [...sockets.splice(0), ...servers6.splice(0)]) await closeSocket(s);
    });

    async function client(type: 'udp4' | 'udp6', address: string): Promise<{ socket: dgram.Socket; received: { msg: string; from: string }[] }> {
      const socket = dgram.createSocket({ type, ipv6Only: type === 'udp6' });
      const received: { msg: string; from: string }[] = [];
      socket.on('message', (msg, rinfo) => received.push({ msg: msg.toString(), from: `${rinfo.address}:${rinfo.port}` }));
      await new Promise<void>((resolve) => socket.bind(0, address, () => resolve()));
      sockets.push(socket);
      return { socket, received };
    }

    it('a datagram to a forwarded port reaches the guest port from the real sender; the reply goes back from the forwarded port', async () => {
      rig = makeRig();
      expect(rig.udp.listen([parseForwardSpec('7100:7200')])).to.equal(2);
      const c = await client('udp4', '192.0.2.2');
      const clientPort = c.socket.address().port;
      c.socket.send('ping', 7100, '192.0.2.1');
      await until('inbound datagram', () => rig.port.frames.length >= 1);
      const f = parseFrame(rig.port.frames[0]);
      expect(f).to.include({ src: '192.0.2.2', dst: '192.0.2.1', srcPort: clientPort, dstPort: 7200 });
      expect(f.data.toString()).to.equal('ping');
      guestSend(rig, GUEST4, SERVER4, 7200, clientPort, Buffer.from('pong'));
      await until('reply', () => c.received.length >= 1);
      expect(c.received[0]).to.deep.equal({ msg: 'pong', from: '192.0.2.1:7100' });
      expect(rig.udp.flowCount).to.equal(1);
    });

    it('a loopback sender appears as the gateway (IPv4) and ::1 as the IPv6 gateway', async () => {
      rig = makeRig();
      rig.udp.listen([parseForwardSpec('7101')]);
      const c4 = await client('udp4', '127.0.0.1');
      const c6 = await client('udp6', '::1');
      c4.socket.send('v4', 7101, '127.0.0.1');
      c6.socket.send('v6', 7101, '::1');
      await until('two inbound datagrams', () => rig.port.frames.length >= 2);
      const frames = rig.port.frames.map(parseFrame);
      const f4 = frames.find((f) => f.family === 4)!;
      const f6 = frames.find((f) => f.family === 6)!;
      expect(f4).to.include({ src: '192.0.2.254', dst: '192.0.2.1', srcPort: c4.socket.address().port, dstPort: 7101 });
      expect(f6).to.include({ src: hex6(GATEWAY6), dst: hex6(GUEST6), srcPort: c6.socket.address().port, dstPort: 7101 });
      guestSend(rig, GUEST4, GATEWAY4, 7101, c4.socket.address().port, Buffer.from('r4'));
      guestSend(rig, GUEST6, GATEWAY6, 7101, c6.socket.address().port, Buffer.from('r6'));
      await until('replies', () => c4.received.length >= 1 && c6.received.length >= 1);
      expect(c4.received[0]).to.deep.equal({ msg: 'r4', from: '127.0.0.1:7101' });
      expect(c6.received[0]).to.deep.equal({ msg: 'r6', from: '::1:7101' });
    });

    it('inbound datagrams go to the address the guest was last seen using (a SLAAC address next to the host one)', async () => {
      rig = makeRig();
      rig.udp.listen([parseForwardSpec('[2001:db8::1]/7103')]);
      const slaac = Uint8Array.from(Buffer.from('20010db800000000505400fffe123456', 'hex'));
      const server = await echoServer('udp6', '2001:db8::2', 7014);
      servers6.push(server.socket);
      guestSend(rig, slaac, SERVER6, 40200, 7014, Buffer.from('hi'));
      await until('echo to the SLAAC address', () => rig.port.frames.length >= 1);
      expect(parseFrame(rig.port.frames[0]).dst).to.equal(hex6(slaac));
      const c = await client('udp6', '2001:db8::2');
      c.socket.send('in', 7103, '2001:db8::1');
      await until('inbound datagram', () => rig.port.frames.length >= 2);
      expect(parseFrame(rig.port.frames[1])).to.include({ dst: hex6(slaac), dstPort: 7103, src: hex6(SERVER6) });
    });

    it("a guest reply to a -u sender that went away gives the guest ICMP port unreachable from the sender's address", async () => {
      rig = makeRig();
      rig.udp.listen([parseForwardSpec('7104')]);
      const c = await client('udp4', '192.0.2.2');
      const clientPort = c.socket.address().port;
      c.socket.send('hello', 7104, '192.0.2.1');
      await until('inbound datagram', () => rig.port.frames.length >= 1);
      await closeSocket(sockets.splice(sockets.indexOf(c.socket), 1)[0]);
      guestSend(rig, GUEST4, SERVER4, 7104, clientPort, Buffer.from('late reply'));
      await until('ICMP error', () => rig.port.frames.length >= 2);
      const f = parseFrame(rig.port.frames[1]);
      expect(f).to.include({ protocol: 1, src: '192.0.2.2', dst: '192.0.2.1' });
      expect([f.l4[0], f.l4[1]]).to.deep.equal([3, 3]);
      const quote = f.l4.subarray(8);
      expect([quote.readUInt16BE(20), quote.readUInt16BE(22)]).to.deep.equal([7104, clientPort]);
    });

    it('a port already in use is logged and skipped, not fatal', async () => {
      rig = makeRig();
      const busy = await client('udp4', '0.0.0.0');
      const port = busy.socket.address().port;
      const opened = rig.udp.listen([parseForwardSpec(`0.0.0.0/${port}`)]);
      expect(opened).to.equal(0);
      expect(rig.counters.get(UdpEvent.ListenFailed)).to.equal(1);
    });
  });
}
