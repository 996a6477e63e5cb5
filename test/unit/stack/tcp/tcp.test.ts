/**
 * The TCP translator (src/stack/tcp.ts) against real kernel sockets: the
 * guest side is FakeGuestTcp over a FakeFramePort, the host side is Node's
 * net module in the same process.
 *
 * Packets move through real sockets, so the scenarios run in a child mocha
 * inside a network namespace this file creates (its loopback also holds
 * 192.0.2.2/24 and 2001:db8::2/64, documentation ranges only): the
 * outer test creates it, re-runs this file there with FERRY_TCP_NETNS=1 and
 * expects it to pass.
 */
import { expect } from 'chai';
import { spawn } from 'child_process';
import * as net from 'net';
import * as path from 'path';
import { createHash } from 'crypto';
import { readFileSync } from 'fs';
import { native } from '../../../../src/sys/native';
import { FlowProtocol } from '../../../../src/stack/flow/flow-table';
import { canCreateNamespaces, runChecked } from '../../../support/netns';
import { ACK, FIN, FakeGuestTcp, RST, SYN, TcpHarness, guestTcpFrame, patternBytes, seededRandom, sha256 } from '../../../support/fakes/tcp-guest';
import { IDLE_TIMEOUT_MS, SYN_TIMEOUT_MS, TcpEvent } from '../../../../src/stack/tcp/tcp';
import { TcpListeners } from '../../../../src/stack/tcp/listen';
import { parseForwardSpec } from '../../../../src/stack/flow/forward-spec';
import type { Segment } from '../../../support/fakes/tcp-guest';
import { GATEWAY_V4, GATEWAY_V6, testConfig } from '../../../support/fakes/stack-fakes';
import { finishChecksum, pseudoHeaderSumIpv6, sumBytes } from '../../../../src/stack/wire/checksum';
import { REPO_ROOT } from '../../../support/paths';
import { DROP_SLOTS, DropReason } from '../../../../src/stack/drops';

const INSIDE = process.env.FERRY_TCP_NETNS === '1';
const SERVER_V4 = Uint8Array.from([192, 0, 2, 2]);
const SERVER_V6 = Uint8Array.from([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
const MiB = 1024 * 1024;

if (!INSIDE) {
  describe('tcp translator (scenarios run inside a fresh network namespace)', function () {
    this.timeout(240_000);
    it('passes every scenario', async function () {
      if (!canCreateNamespaces()) this.skip();
      const ns = `ferry-e2e-${process.pid}-7${Math.floor(Math.random() * 1000)}`;
      await runChecked(['ip', 'netns', 'add', ns]);
      try {
        await runChecked(['ip', '-n', ns, 'link', 'set', 'lo', 'up']);
        // The "remote" server addresses live on the namespace's loopback.
        await runChecked(['ip', '-n', ns, 'addr', 'add', '192.0.2.2/24', 'dev', 'lo']);
        await runChecked(['ip', '-n', ns, '-6', 'addr', 'add', '2001:db8::2/64', 'dev', 'lo', 'nodad']);
        // A second local address per family for -o/--outbound.
        await runChecked(['ip', '-n', ns, 'addr', 'add', '192.0.2.3/24', 'dev', 'lo']);
        await runChecked(['ip', '-n', ns, '-6', 'addr', 'add', '2001:db8::3/64', 'dev', 'lo', 'nodad']);
        const mocha = path.resolve(REPO_ROOT, 'node_modules', 'mocha', 'bin', 'mocha.js');
        const result = await new Promise<{ code: number | null; output: string }>((resolve) => {
          const child = spawn('ip', ['netns', 'exec', ns, process.execPath, mocha, '--timeout', '60000', __filename], {
            env: { ...process.env, FERRY_TCP_NETNS: '1' },
            stdio: ['ignore', 'pipe', 'pipe'],
          });
          let output = '';
          const timer = setTimeout(() => child.kill('SIGKILL'), 230_000);
          child.stdout.setEncoding('utf8').on('data', (d: string) => (output += d));
          child.stderr.setEncoding('utf8').on('data', (d: string) => (output += d));
          child.on('close', (code) => {
            clearTimeout(timer);
            resolve({ code, output });
          });
        });
        if (result.code !== 0) console.log(result.output);
        else if (process.env.FERRY_TCP_VERBOSE) console.log(result.output);
        expect(result.code, 'inner mocha exit status').to.equal(0);
        // The inner run must really have run the scenarios (not skipped them all).
        const passing = /(\d+) passing/.exec(result.output);
        expect(passing === null ? 0 : Number(passing[1]), 'scenarios passed inside the namespace').to.be.at.least(25);
        expect(result.output).to.not.match(/\d+ pending/);
      } finally {
        await runChecked(['ip', 'netns', 'del', ns]).catch(() => undefined);
      }
    });
  });
} else {
  describe('tcp translator with real sockets', () => {
    let harness: TcpHarness;
    const servers: net.Server[] = [];
    const serverSockets: net.Socket[] = [];
    let nextGuestPort = 40000;

    afterEach(async () => {
      harness?.close();
      for (const socket of serverSockets.splice(0)) socket.destroy();
      for (const server of servers.splice(0)) await new Promise((r) => server.close(() => r(undefined)));
    });

    /** A server on host:0; returns its port. */
    async function listen(host: string, onConnection: (socket: net.Socket) => void): Promise<number> {
      const server = net.createServer({ allowHalfOpen: true }, (socket) => {
        serverSockets.push(socket);
        onConnection(socket);
      });
      servers.push(server);
      await new Promise<void>((resolve) => server.listen(0, host, resolve));
      return (server.address() as net.AddressInfo).port;
    }

    /** Server that hashes what it receives and answers with `reply` after the guest's FIN. */
    function hashingServer(reply: Uint8Array, result: { hash?: string; bytes: number; closed: boolean }) {
      return (socket: net.Socket): void => {
        const h = createHash('sha256');
        socket.on('data', (d: Buffer) => {
          h.update(d);
          result.bytes += d.length;
        });
        socket.on('end', () => {
          result.hash = h.digest('hex');
          socket.end(Buffer.from(reply));
        });
        socket.on('close', () => (result.closed = true));
        socket.on('error', () => undefined);
      };
    }

    function guest(remote: Uint8Array, remotePort: number, options: Partial<ConstructorParameters<typeof FakeGuestTcp>[1]> = {}): FakeGuestTcp {
      return new FakeGuestTcp(harness, { remote, remotePort, guestPort: nextGuestPort++, ...options });
    }

    async function transfer(remote: Uint8Array, host: string, family: 4 | 6, up: number, down: number): Promise<FakeGuestTcp> {
      const toServer = patternBytes(up, 7);
      const fromServer = patternBytes(down, 11);
      const result = { bytes: 0, closed: false } as { hash?: string; bytes: number; closed: boolean };
      const port = await listen(host, hashingServer(fromServer, result));
      const g = guest(remote, port, { family });
      g.connect();
      await harness.until(() => g.established, 5000, 'handshake');
      g.write(toServer);
      g.end();
      await harness.until(() => g.finReceived && g.finAcked, 60_000, 'both FINs');
      await harness.until(() => harness.tcp.flowCount === 0, 5000, 'flow closed');
      expect(result.bytes).to.equal(up);
      expect(result.hash).to.equal(sha256(toServer));
      expect(g.received).to.equal(down);
      expect(g.digest()).to.equal(sha256(fromServer));
      expect(g.windowViolations).to.equal(0);
      return g;
    }

    it('moves 4 MiB each way over IPv4 through the gateway (host loopback), byte for byte', async () => {
      harness = new TcpHarness();
      const g = await transfer(GATEWAY_V4, '127.0.0.1', 4, 4 * MiB, 4 * MiB);
      expect(g.synAck!.src).to.deep.equal(GATEWAY_V4);
      expect(g.synAck!.mss).to.equal(65520 - 40);
      expect(g.synAck!.wscale).to.be.greaterThan(0);
    });

    it('moves 2 MiB each way over IPv6 to a real address, byte for byte', async () => {
      harness = new TcpHarness();
      const g = await transfer(SERVER_V6, '2001:db8::2', 6, 2 * MiB, 2 * MiB);
      expect(g.synAck!.mss).to.equal(65520 - 60);
    });

    it('works with small, split guest RX buffers (headers written through scratch)', async () => {
      harness = new TcpHarness({}, {}, [40, 1000, 1000, 1000]);
      await transfer(SERVER_V4, '192.0.2.2', 4, 256 * 1024, 512 * 1024);
    });

    it('works without SO_PEEK_OFF (peek from the start, discard the prefix)', async () => {
      harness = new TcpHarness({}, { usePeekOffset: false });
      await transfer(SERVER_V4, '192.0.2.2', 4, 1 * MiB, 3 * MiB);
    });

    for (const family of [4, 6] as const) {
      it(`-o/--outbound: the server sees the connection from the -o address (IPv${family})`, async () => {
        harness = new TcpHarness({
          outbound4: Uint8Array.from([192, 0, 2, 3]),
          outbound6: Uint8Array.from([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3]),
        });
        const peers: string[] = [];
        const port = await listen(family === 4 ? '192.0.2.2' : '2001:db8::2', (socket) => {
          peers.push(socket.remoteAddress ?? '');
          socket.on('error', () => undefined);
        });
        const g = guest(family === 4 ? SERVER_V4 : SERVER_V6, port, { family });
        g.connect();
        await harness.until(() => g.established && peers.length === 1, 5000, 'handshake');
        expect(peers).to.deep.equal([family === 4 ? '192.0.2.3' : '2001:db8::3']);
      });
    }

    it('answers a refused connection with RST|ACK for the SYN', async () => {
      harness = new TcpHarness();
      // A port with nothing listening: bind a server and close it to find one.
      const port = await listen('192.0.2.2', () => undefined);
      await new Promise((r) => servers.pop()!.close(() => r(undefined)));
      const g = guest(SERVER_V4, port);
      g.recordSegments = true;
      g.connect();
      await harness.until(() => g.rstReceived, 5000, 'RST');
      const rst = g.segments.find((s) => (s.flags & RST) !== 0)!;
      expect(rst.flags & ACK).to.equal(ACK);
      expect(rst.ack).to.equal((g.iss + 1) >>> 0);
      expect(harness.tcp.flowCount).to.equal(0);
      expect(harness.counters.get(TcpEvent.ConnectFailed)).to.equal(1);
    });

    for (const family of [4, 6] as const) {
      it(`answers a SYN to an unreachable network with ICMP${family === 6 ? 'v6' : ''} unreachable quoting the SYN (IPv${family})`, () => {
        harness = new TcpHarness();
        // No route to 203.0.113.0/24 or 2001:db8:ffff::/48 in the namespace: connect() fails with ENETUNREACH.
        const remote = family === 4 ? Uint8Array.from([203, 0, 113, 1]) : Uint8Array.from([0x20, 0x01, 0x0d, 0xb8, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        const g = guest(remote, 80, { family });
        g.connect();
        const frame = harness.port.frames.find((f) => (family === 4 ? f[12] === 0x08 && f[23] === 1 : f[12] === 0x86 && f[20] === 58));
        expect(frame, 'an ICMP error frame').to.not.equal(undefined);
        const icmp = family === 4 ? 34 : 54;
        const icmpLength = frame!.length - icmp;
        const pseudo = family === 4 ? 0 : pseudoHeaderSumIpv6(frame!, 22, frame!, 38, 58, icmpLength);
        expect(finishChecksum(sumBytes(frame!, icmp, icmpLength, pseudo)), 'ICMP checksum').to.equal(0);
        expect(frame![icmp]).to.equal(family === 4 ? 3 : 1); // destination unreachable
        expect(frame![icmp + 1]).to.equal(0); // network / no route
        const quotedTcp = icmp + 8 + (family === 4 ? 20 : 40);
        expect((frame![quotedTcp] << 8) | frame![quotedTcp + 1]).to.equal(g.guestPort);
        expect((frame![quotedTcp + 2] << 8) | frame![quotedTcp + 3]).to.equal(80);
        expect(Buffer.from(frame!.subarray(quotedTcp + 4, quotedTcp + 8)).readUInt32BE(0)).to.equal(g.iss);
        expect(harness.tcp.flowCount).to.equal(0);
        expect(harness.counters.get(TcpEvent.IcmpToGuest)).to.equal(1);
      });
    }

    it('gives an established socket a large fixed send buffer (autotuning never grows it: the guest cannot overrun the free space)', async () => {
      harness = new TcpHarness();
      const port = await listen('192.0.2.2', (socket) => socket.on('error', () => undefined));
      const g = guest(SERVER_V4, port);
      g.connect();
      await harness.until(() => g.established, 5000, 'handshake');
      const flows = harness.tcp.flows;
      const id = Array.from({ length: flows.capacity }, (_, i) => i).find((i) => flows.isLive(i, FlowProtocol.Tcp));
      expect(id).to.not.equal(undefined);
      const wmemMax = Number(readFileSync('/proc/sys/net/core/wmem_max', 'utf8'));
      // The kernel doubles what was asked for (bookkeeping) after capping it at wmem_max.
      expect(native.getsockoptInt(flows.fd[id!], 1 /* SOL_SOCKET */, 7 /* SO_SNDBUF */)).to.equal(2 * Math.min(4 << 20, wmemMax));
    });

    it('maps a connection to the --dns-forward address port 53 to the DNS host, as UDP does; other ports are not mapped', async () => {
      // 203.0.113.53 has no route in the namespace: only the mapping can make a connection to it succeed.
      const forward = Uint8Array.from([203, 0, 113, 53]);
      harness = new TcpHarness({ ipv4: { ...testConfig().ipv4!, dnsForward: forward, dnsHost: SERVER_V4 } });
      const accepted: number[] = [];
      for (const port of [53, 54]) {
        const server = net.createServer({ allowHalfOpen: true }, (socket) => {
          serverSockets.push(socket);
          accepted.push(port);
          socket.on('error', () => undefined);
          socket.on('data', (d: Buffer) => socket.write(Buffer.concat([Buffer.from('answer:'), d])));
          socket.on('end', () => socket.end());
        });
        servers.push(server);
        await new Promise<void>((resolve) => server.listen(port, '192.0.2.2', resolve));
      }
      const g = guest(forward, 53);
      g.keepChunks = true;
      g.connect();
      await harness.until(() => g.established, 5000, 'handshake through the DNS mapping');
      g.write(Buffer.from('query'));
      g.end();
      await harness.until(() => g.finReceived, 5000, 'the answer and FIN');
      expect(Buffer.concat(g.chunks).toString()).to.equal('answer:query');
      expect(accepted).to.deep.equal([53]);
      // Port 54 on the same address is not DNS: it goes to 203.0.113.53 itself, which is unreachable.
      const other = guest(forward, 54);
      other.connect();
      expect(harness.counters.get(TcpEvent.IcmpToGuest)).to.equal(1);
      expect(accepted).to.deep.equal([53]);
    });

    it('refuses a connection to the --dns-forward address port 53 when there is no DNS host', async () => {
      const forward = Uint8Array.from([203, 0, 113, 53]);
      harness = new TcpHarness({ ipv4: { ...testConfig().ipv4!, dnsForward: forward, dnsHost: null } });
      const g = guest(forward, 53);
      g.connect();
      await harness.until(() => g.rstReceived, 5000, 'RST');
      expect(harness.tcp.flowCount).to.equal(0);
    });

    it('gives up on a connect that never completes (SYN timeout) with an RST to the guest', async () => {
      harness = new TcpHarness();
      // 192.0.2.77 is routed to the namespace's loopback but is no local address: the SYN goes nowhere.
      const g = guest(Uint8Array.from([192, 0, 2, 77]), 80);
      g.recordSegments = true;
      g.connect();
      harness.deliver();
      expect(harness.tcp.flowCount).to.equal(1);
      expect(g.segments).to.have.length(0);
      harness.advance(SYN_TIMEOUT_MS + 100);
      harness.deliver();
      expect(g.rstReceived).to.equal(true);
      expect(g.segments[0].ack).to.equal((g.iss + 1) >>> 0);
      expect(harness.tcp.flowCount).to.equal(0);
      expect(harness.counters.get(TcpEvent.Timeout)).to.equal(1);
    });

    it('half-close from the guest: the server still sends after the guest FIN', async () => {
      harness = new TcpHarness();
      const reply = patternBytes(300_000, 3);
      let serverSawEnd = false;
      const port = await listen('192.0.2.2', (socket) => {
        socket.on('data', () => undefined);
        socket.on('end', () => {
          serverSawEnd = true;
          // Keep sending for a while after the guest's FIN, then close.
          setTimeout(() => socket.end(Buffer.from(reply)), 50);
        });
        socket.on('error', () => undefined);
      });
      const g = guest(SERVER_V4, port);
      g.connect();
      await harness.until(() => g.established, 5000, 'handshake');
      g.end();
      await harness.until(() => serverSawEnd && g.finAcked, 5000, 'guest FIN delivered');
      await harness.until(() => g.finReceived, 10_000, 'server FIN');
      expect(g.digest()).to.equal(sha256(reply));
      await harness.until(() => harness.tcp.flowCount === 0, 5000, 'flow closed');
    });

    it('half-close from the server: the guest still sends after the server FIN', async () => {
      harness = new TcpHarness();
      const data = patternBytes(500_000, 5);
      const result = { bytes: 0, hash: '' };
      const port = await listen('192.0.2.2', (socket) => {
        const h = createHash('sha256');
        socket.allowHalfOpen = true;
        socket.end(); // FIN first
        socket.on('data', (d: Buffer) => {
          h.update(d);
          result.bytes += d.length;
        });
        socket.on('end', () => (result.hash = h.digest('hex')));
        socket.on('error', () => undefined);
      });
      const g = guest(SERVER_V4, port);
      g.connect();
      await harness.until(() => g.finReceived, 5000, 'server FIN');
      expect(harness.tcp.flowCount).to.equal(1);
      g.write(data);
      g.end();
      await harness.until(() => g.finAcked && result.hash !== '', 10_000, 'guest data and FIN');
      expect(result.bytes).to.equal(data.length);
      expect(result.hash).to.equal(sha256(data));
      await harness.until(() => harness.tcp.flowCount === 0, 5000, 'flow closed');
    });

    it('RST from the guest resets the host connection', async () => {
      harness = new TcpHarness();
      let serverError = '';
      const port = await listen('192.0.2.2', (socket) => {
        socket.on('error', (e: NodeJS.ErrnoException) => (serverError = e.code ?? 'error'));
        socket.on('data', () => undefined);
      });
      const g = guest(SERVER_V4, port);
      g.connect();
      await harness.until(() => g.established, 5000, 'handshake');
      // No data in flight: Linux reports a reset that follows unread data as EOF.
      g.raw(g.sndNxt, g.rcvNxt, RST | ACK);
      expect(harness.tcp.flowCount).to.equal(0);
      await harness.until(() => serverError !== '', 5000, 'server sees the reset');
      expect(serverError).to.equal('ECONNRESET');
    });

    it('a reset from the server becomes an RST to the guest', async () => {
      harness = new TcpHarness();
      const port = await listen('192.0.2.2', (socket) => {
        socket.on('error', () => undefined);
        setTimeout(() => socket.resetAndDestroy(), 20);
      });
      const g = guest(SERVER_V4, port);
      g.connect();
      await harness.until(() => g.rstReceived, 5000, 'RST to the guest');
      expect(harness.tcp.flowCount).to.equal(0);
    });

    it('a reset from the server while the guest has no RX buffers still reaches the guest once it has', async () => {
      harness = new TcpHarness();
      let serverSocket: net.Socket | null = null;
      const port = await listen('192.0.2.2', (socket) => {
        socket.on('error', () => undefined);
        serverSocket = socket;
      });
      const g = guest(SERVER_V4, port);
      g.connect();
      await harness.until(() => serverSocket !== null && harness.tcp.flowCount === 1, 5000, 'connection');
      await harness.until(() => g.established, 5000, 'handshake');
      harness.port.available = false; // the guest's RX ring is empty
      (serverSocket as unknown as net.Socket).resetAndDestroy();
      // The reset is seen by ferry and the socket closed, but the RST has nowhere to go yet.
      await new Promise((resolve) => setTimeout(resolve, 200));
      expect(g.rstReceived).to.equal(false);
      harness.port.available = true; // buffers again: the next timer tick (or onWritable) sends it
      harness.advance(100);
      await harness.until(() => g.rstReceived, 5000, 'RST to the guest after buffers came back');
      expect(harness.tcp.flowCount).to.equal(0);
    });

    for (const withBuffers of [true, false]) {
      it(`a flow closed from outside (flows.closeFlow) is reset both ways: ECONNRESET at the peer, an RST to the guest${withBuffers ? '' : ' once it has RX buffers'}`, async () => {
        harness = new TcpHarness();
        let serverError = '';
        let serverSocket: net.Socket | null = null;
        const port = await listen('192.0.2.2', (socket) => {
          socket.on('error', (e: NodeJS.ErrnoException) => (serverError = e.code ?? 'error'));
          socket.on('data', () => undefined);
          serverSocket = socket;
        });
        const g = guest(SERVER_V4, port);
        g.recordSegments = true;
        g.connect();
        await harness.until(() => g.established && serverSocket !== null, 5000, 'handshake');
        const [flow] = [...harness.tcp.flows.flows(performance.now())].filter((f) => f.protocol === FlowProtocol.Tcp);
        expect(flow.state).to.equal('established');
        if (!withBuffers) harness.port.available = false;
        expect(harness.tcp.flows.closeFlow(flow.id)).to.equal(true);
        expect(harness.counters.get(TcpEvent.ClosedFromOutside)).to.equal(1);
        // The peer is reset at once, whatever the guest's buffers.
        await harness.until(() => serverError !== '', 5000, 'peer sees the reset');
        expect(serverError).to.equal('ECONNRESET');
        if (!withBuffers) {
          expect(g.rstReceived).to.equal(false);
          expect(harness.tcp.flowCount, 'slot kept until the RST goes out').to.equal(1);
          harness.port.available = true;
          harness.advance(100);
        }
        await harness.until(() => g.rstReceived, 5000, 'RST to the guest');
        const rst = g.segments.find((s) => (s.flags & RST) !== 0)!;
        expect(rst.seq, 'RST in the guest window').to.equal(g.rcvNxt);
        expect(harness.tcp.flowCount).to.equal(0);
        // Closing it again finds nothing.
        expect(harness.tcp.flows.closeFlow(flow.id)).to.equal(false);
      });
    }

    it('close() releases every flow, also those whose RST still waits for guest RX buffers, and resets the peers', async () => {
      harness = new TcpHarness();
      const errors: string[] = [];
      const sockets: net.Socket[] = [];
      const port = await listen('192.0.2.2', (socket) => {
        socket.on('error', (e: NodeJS.ErrnoException) => errors.push(e.code ?? 'error'));
        socket.on('data', () => undefined);
        sockets.push(socket);
      });
      const a = guest(SERVER_V4, port);
      const b = guest(SERVER_V4, port);
      a.connect();
      b.connect();
      await harness.until(() => a.established && b.established && sockets.length === 2, 5000, 'two connections');
      harness.port.available = false;
      // One flow is reset by its server while the guest has no buffers: its slot waits for the RST.
      sockets[0].resetAndDestroy();
      await new Promise((resolve) => setTimeout(resolve, 200));
      expect(harness.tcp.flowCount).to.equal(2);
      harness.tcp.close();
      expect(harness.tcp.flowCount, 'flows after close()').to.equal(0);
      await harness.until(() => errors.length >= 1, 5000, 'the other peer sees the reset');
      expect(errors).to.include('ECONNRESET');
    });

    it('answers a guest SYN for one of ferry\'s own loopback ports (ownTcpPorts) with an RST; the listener sees nothing', async () => {
      let accepted = 0;
      const ownPort = await listen('127.0.0.1', () => accepted++);
      const otherPort = await listen('127.0.0.1', (socket) => socket.on('error', () => undefined));
      harness = new TcpHarness({ ownTcpPorts: [ownPort] });
      const blocked = guest(GATEWAY_V4, ownPort);
      blocked.recordSegments = true;
      blocked.connect();
      await harness.until(() => blocked.rstReceived, 5000, 'RST for the own port');
      const rst = blocked.segments.find((s) => (s.flags & RST) !== 0)!;
      expect(rst.ack).to.equal((blocked.iss + 1) >>> 0);
      expect(blocked.established).to.equal(false);
      expect(harness.counters.get(DROP_SLOTS[DropReason.TcpToOwnPort])).to.equal(1);
      expect(harness.tcp.flowCount).to.equal(0);
      // Another loopback port through the gateway still connects.
      const allowed = guest(GATEWAY_V4, otherPort);
      allowed.connect();
      await harness.until(() => allowed.established, 5000, 'handshake to another port');
      await new Promise((resolve) => setTimeout(resolve, 50));
      expect(accepted, 'connections accepted by the own listener').to.equal(0);
    });

    it('answers an IPv6 guest SYN for one of ferry\'s own ports through the link-local gateway (host ::1) with an RST', async () => {
      let accepted = 0;
      const ownPort = await listen('::1', () => accepted++);
      harness = new TcpHarness({ ownTcpPorts: [ownPort] });
      const blocked = guest(GATEWAY_V6, ownPort, { family: 6 });
      blocked.connect();
      await harness.until(() => blocked.rstReceived, 5000, 'RST for the own port');
      expect(harness.counters.get(DROP_SLOTS[DropReason.TcpToOwnPort])).to.equal(1);
      await new Promise((resolve) => setTimeout(resolve, 50));
      expect(accepted).to.equal(0);
    });

    it('never sends beyond a small unscaled guest window, and resumes as it is ACKed', async () => {
      harness = new TcpHarness();
      const data = patternBytes(200_000, 9);
      const port = await listen('192.0.2.2', (socket) => {
        socket.on('error', () => undefined);
        socket.end(Buffer.from(data));
      });
      const g = guest(SERVER_V4, port, { window: 2048, wscale: -1 });
      g.recordSegments = true;
      g.connect();
      await harness.until(() => g.finReceived, 20_000, 'all data and FIN');
      expect(g.synAck!.wscale).to.equal(-1); // no scaling offered back when the guest has none
      expect(g.windowViolations).to.equal(0);
      expect(Math.max(...g.segments.map((s) => s.payload.length))).to.be.at.most(2048);
      expect(g.digest()).to.equal(sha256(data));
    });

    it('with a zero guest window, stops sending, and resumes on a window update', async () => {
      harness = new TcpHarness();
      const data = patternBytes(100_000, 13);
      const port = await listen('192.0.2.2', (socket) => {
        socket.on('error', () => undefined);
        socket.end(Buffer.from(data));
      });
      const g = guest(SERVER_V4, port, { window: 0 });
      g.connect();
      await harness.until(() => g.established, 5000, 'handshake');
      await new Promise((r) => setTimeout(r, 100));
      harness.deliver();
      expect(g.received).to.equal(0);
      g.window = 512; // scaled by 2^7: 64 KiB
      g.ack();
      await harness.until(() => g.finReceived, 10_000, 'data after the window opened');
      expect(g.digest()).to.equal(sha256(data));
      expect(g.windowViolations).to.equal(0);
    });

    it('retransmits a dropped segment (duplicate ACKs and timeout), data intact', async () => {
      harness = new TcpHarness();
      const data = patternBytes(1 * MiB, 17);
      const port = await listen('192.0.2.2', (socket) => {
        socket.on('error', () => undefined);
        socket.end(Buffer.from(data));
      });
      let dropped = 0;
      harness.dropFilter = (s) => s.payload.length > 0 && dropped++ < 1;
      const g = guest(SERVER_V4, port, { window: 1024, wscale: 5, mss: 4000 }); // 32 KiB window, 4000-byte segments
      g.connect();
      await harness.until(() => g.finReceived || harness.counters.get(TcpEvent.FastRetransmit) > 0, 10_000, 'fast retransmit');
      // Drop one more and recover by timeout.
      dropped = 0;
      harness.dropFilter = (s) => s.payload.length > 0 && dropped++ < 1;
      const deadline = Date.now() + 20_000;
      while (!g.finReceived && Date.now() < deadline) {
        await harness.until(() => true);
        harness.advance(500);
        await new Promise((r) => setTimeout(r, 2));
      }
      expect(g.finReceived).to.equal(true);
      expect(g.digest()).to.equal(sha256(data));
      expect(harness.counters.get(TcpEvent.Retransmit)).to.be.greaterThan(0);
      expect(harness.counters.get(TcpEvent.FastRetransmit)).to.be.greaterThan(0);
    });

    it('stalls the guest when the peer stops reading (window from the send buffer), then delivers everything', async () => {
      harness = new TcpHarness();
      const data = patternBytes(16 * MiB, 19);
      let serverSocket: net.Socket | null = null;
      const result = { bytes: 0, hash: '' };
      const h = createHash('sha256');
      const port = await listen('192.0.2.2', (socket) => {
        serverSocket = socket;
        socket.pause();
        socket.on('data', (d: Buffer) => {
          h.update(d);
          result.bytes += d.length;
        });
        socket.on('end', () => {
          result.hash = h.digest('hex');
          socket.end();
        });
        socket.on('error', () => undefined);
      });
      const g = guest(SERVER_V4, port);
      g.connect();
      await harness.until(() => g.established && serverSocket !== null, 5000, 'handshake');
      g.write(data);
      g.end();
      // The socket buffers fill up: the window closes and the guest waits.
      await new Promise((r) => setTimeout(r, 300));
      await harness.until(() => g.peerWindow < 65536, 10_000, 'a closing window');
      expect(g.unacked).to.be.greaterThan(0);
      expect(result.bytes).to.equal(0);
      serverSocket!.resume();
      await harness.until(() => result.hash !== '', 60_000, 'all data at the server');
      expect(result.bytes).to.equal(data.length);
      expect(result.hash).to.equal(sha256(data));
    });

    for (const seed of [1, 2, 3]) {
      it(`survives dropped, duplicated and reordered frames both ways, every byte intact (seed ${seed})`, async () => {
        harness = new TcpHarness();
        harness.faults = { drop: 0.03, duplicate: 0.03, reorder: 0.05, random: seededRandom(seed) };
        const toServer = patternBytes(2 * MiB, 40 + seed);
        const fromServer = patternBytes(2 * MiB, 50 + seed);
        const result = { bytes: 0, closed: false } as { hash?: string; bytes: number; closed: boolean };
        const port = await listen('192.0.2.2', hashingServer(fromServer, result));
        const g = guest(SERVER_V4, port, { mss: 16384 });
        const deadline = Date.now() + 50_000;
        let lastSyn = 0;
        let written = false;
        while (!(g.finReceived && g.finAcked) && Date.now() < deadline) {
          if (!g.established && Date.now() - lastSyn > 300) {
            g.connect(); // the SYN itself may be lost
            lastSyn = Date.now();
          }
          if (g.established && !written) {
            written = true;
            g.write(toServer);
            g.end();
          }
          await harness.until(() => true);
          harness.advance(50); // ferry's retransmission timers
          await new Promise((r) => setTimeout(r, 1));
        }
        expect(g.finReceived && g.finAcked, 'both FINs').to.equal(true);
        expect(result.hash).to.equal(sha256(toServer));
        expect(g.received).to.equal(fromServer.length);
        expect(g.digest()).to.equal(sha256(fromServer));
      });
    }

    it('stops when the guest has no RX buffers and resumes on onWritable', async () => {
      harness = new TcpHarness();
      const data = patternBytes(3 * MiB, 61);
      const port = await listen('192.0.2.2', (socket) => {
        socket.on('error', () => undefined);
        socket.end(Buffer.from(data));
      });
      const g = guest(SERVER_V4, port);
      g.connect();
      await harness.until(() => g.established, 5000, 'handshake');
      harness.port.available = false;
      await harness.until(() => harness.counters.get(TcpEvent.RxBlocked) > 0, 5000, 'RX blocked');
      const before = g.received;
      await new Promise((r) => setTimeout(r, 50));
      harness.deliver();
      expect(g.received).to.equal(before);
      harness.port.available = true;
      harness.port.onWritable!();
      await harness.until(() => g.finReceived, 10_000, 'the rest after onWritable');
      expect(g.digest()).to.equal(sha256(data));
    });

    it('resumes a flow blocked on guest RX buffers from the timer when onWritable never comes', async () => {
      harness = new TcpHarness();
      const data = patternBytes(2 * MiB, 67);
      const port = await listen('192.0.2.2', (socket) => {
        socket.on('error', () => undefined);
        socket.end(Buffer.from(data));
      });
      const g = guest(SERVER_V4, port);
      g.connect();
      await harness.until(() => g.established, 5000, 'handshake');
      harness.port.available = false;
      await harness.until(() => harness.counters.get(TcpEvent.RxBlocked) > 0, 5000, 'RX blocked');
      // Buffers are back but nobody says so (a port that swallowed the kick): only the timer can resume the flow.
      harness.port.available = true;
      const before = g.received;
      await new Promise((r) => setTimeout(r, 50));
      harness.deliver();
      expect(g.received, 'nothing moves before the timer').to.equal(before);
      const timer = setInterval(() => harness.advance(0), 10);
      try {
        await harness.until(() => g.finReceived, 10_000, 'the rest through timer retries');
      } finally {
        clearInterval(timer);
      }
      expect(g.digest()).to.equal(sha256(data));
    });

    it('reports the host socket (TCP_INFO) and resets an idle connection both ways', async () => {
      harness = new TcpHarness();
      let serverError = '';
      const port = await listen('192.0.2.2', (socket) => socket.on('error', (e: NodeJS.ErrnoException) => (serverError = e.code ?? 'error')));
      const g = guest(SERVER_V4, port);
      g.connect();
      await harness.until(() => g.established, 5000, 'handshake');
      const [flow] = [...harness.tcp.flows.flows(performance.now())];
      const info = harness.tcp.hostInfo(flow.id)!;
      expect(info.state).to.equal('established');
      expect(info.kernelState).to.equal(1); // TCP_ESTABLISHED
      expect(info.sendQueue).to.equal(0);
      harness.advance(IDLE_TIMEOUT_MS + 1000);
      harness.deliver();
      expect(g.rstReceived).to.equal(true);
      expect(harness.tcp.flowCount).to.equal(0);
      await harness.until(() => serverError !== '', 5000, 'server reset');
      expect(serverError).to.equal('ECONNRESET');
    });

    it('answers a keepalive probe with an ACK', async () => {
      harness = new TcpHarness();
      const port = await listen('192.0.2.2', (socket) => socket.on('error', () => undefined));
      const g = guest(SERVER_V4, port);
      g.recordSegments = true;
      g.connect();
      await harness.until(() => g.established, 5000, 'handshake');
      g.segments = [];
      g.raw((g.sndNxt - 1) >>> 0, g.rcvNxt, ACK);
      harness.deliver();
      expect(g.segments.length).to.equal(1);
      expect(g.segments[0].flags).to.equal(ACK);
      expect(g.segments[0].ack).to.equal(g.sndNxt);
    });

    it('refuses a SYN beyond --max-flows with an RST and counts it', async () => {
      harness = new TcpHarness({ maxFlows: 2 });
      const port = await listen('192.0.2.2', (socket) => socket.on('error', () => undefined));
      const a = guest(SERVER_V4, port);
      const b = guest(SERVER_V4, port);
      const c = guest(SERVER_V4, port);
      a.connect();
      b.connect();
      await harness.until(() => a.established && b.established, 5000, 'two connections');
      c.connect();
      harness.deliver();
      expect(c.rstReceived).to.equal(true);
      expect(harness.counters.get(TcpEvent.TableFull)).to.equal(1);
      expect(harness.tcp.flowCount).to.equal(2);
      const flows = [...harness.tcp.flows.flows(performance.now())];
      expect(flows.map((f) => f.state)).to.deep.equal(['established', 'established']);
    });

    it('answers a segment for no connection with an RST', async () => {
      harness = new TcpHarness();
      const g = guest(SERVER_V4, 9);
      g.recordSegments = true;
      g.established = true;
      g.raw(5000, 7000, ACK, patternBytes(10));
      harness.deliver();
      expect(g.segments.length).to.equal(1);
      expect(g.segments[0].flags).to.equal(RST);
      expect(g.segments[0].seq).to.equal(7000);
    });

    it('drops a segment with a bad checksum', async () => {
      harness = new TcpHarness();
      const g = guest(SERVER_V4, 9);
      g.recordSegments = true;
      const frame = guestTcpFrame(4, g.guest, SERVER_V4, g.guestPort, 9, 1, 0, SYN, 1000);
      frame[frame.length - 3] ^= 0xff; // the TCP checksum field
      harness.send(frame);
      harness.deliver();
      expect(g.segments.length).to.equal(0);
      expect(harness.counters.get(TcpEvent.BadChecksum)).to.equal(1);
      expect(harness.tcp.flowCount).to.equal(0);
    });

    describe('inbound forwarding (-t)', () => {
      let listeners: TcpListeners | null = null;
      afterEach(() => {
        listeners?.close();
        listeners = null;
      });

      /** A free TCP port on the namespace (bound and released). */
      async function freePort(): Promise<number> {
        const s = net.createServer();
        await new Promise<void>((r) => s.listen(0, '0.0.0.0', r));
        const port = (s.address() as net.AddressInfo).port;
        await new Promise((r) => s.close(() => r(undefined)));
        return port;
      }

      /** The next SYN ferry sends to the guest (not yet answered). */
      async function nextSyn(): Promise<Segment> {
        let syn: Segment | undefined;
        await harness.until(() => (syn = harness.unrouted.find((s) => (s.flags & (SYN | ACK)) === SYN)) !== undefined, 5000, 'SYN to the guest');
        harness.unrouted.splice(harness.unrouted.indexOf(syn!), 1);
        return syn!;
      }

      it('a loopback client reaches the guest port from the gateway address; data both ways intact', async () => {
        harness = new TcpHarness();
        const hostPort = await freePort();
        listeners = new TcpListeners(harness.stack.ctx, harness.tcp);
        const opened = listeners.open([parseForwardSpec(`${hostPort}:8080`)]);
        expect(opened).to.deep.equal({ opened: 2, failures: [] }); // IPv4 and IPv6
        const up = patternBytes(1 * MiB, 29);
        const down = patternBytes(2 * MiB, 31);
        const client = net.connect({ host: '127.0.0.1', port: hostPort, allowHalfOpen: true });
        const clientHash = createHash('sha256');
        let clientBytes = 0;
        let clientEnded = false;
        client.on('data', (d: Buffer) => {
          clientHash.update(d);
          clientBytes += d.length;
        });
        client.on('end', () => (clientEnded = true));
        client.on('error', () => undefined);
        client.write(Buffer.from(up));
        client.end();
        const syn = await nextSyn();
        expect(syn.src).to.deep.equal(GATEWAY_V4);
        expect(syn.dst).to.deep.equal(harness.config.ipv4!.address);
        expect(syn.dstPort).to.equal(8080);
        expect(syn.srcPort).to.equal(client.localPort);
        expect(syn.wscale).to.equal(8);
        const g = new FakeGuestTcp(harness, { remote: syn.src, remotePort: syn.srcPort, guestPort: syn.dstPort });
        g.accept(syn);
        await harness.until(() => g.finReceived, 10_000, 'client data and FIN at the guest');
        expect(g.digest()).to.equal(sha256(up));
        g.write(down);
        g.end();
        await harness.until(() => clientEnded, 20_000, 'guest data and FIN at the client');
        expect(clientBytes).to.equal(down.length);
        expect(clientHash.digest('hex')).to.equal(sha256(down));
        await harness.until(() => harness.tcp.flowCount === 0, 5000, 'flow closed');
        client.destroy();
      });

      it('connects to the guest address last seen in its segments (a SLAAC address next to the host\'s), not only the configured one', async () => {
        harness = new TcpHarness();
        // The guest speaks first from its SLAAC address (a refused outbound connection is enough).
        const slaac = Uint8Array.from([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0x50, 0x54, 0, 0xff, 0xfe, 0x12, 0x34, 0x56]);
        const closedPort = await freePort();
        const outbound = guest(SERVER_V6, closedPort, { family: 6, guest: slaac });
        outbound.connect();
        await harness.until(() => outbound.rstReceived, 5000, 'RST for the refused connection');
        const hostPort = await freePort();
        listeners = new TcpListeners(harness.stack.ctx, harness.tcp);
        listeners.open([parseForwardSpec(`[2001:db8::2]/${hostPort}`)]);
        const client = net.connect({ host: '2001:db8::2', port: hostPort, localAddress: '2001:db8::2' });
        client.on('error', () => undefined);
        const syn = await nextSyn();
        expect(syn.dst, 'the SYN goes to the address the guest uses').to.deep.equal(slaac);
        const g = new FakeGuestTcp(harness, { family: 6, guest: slaac, remote: syn.src, remotePort: syn.srcPort, guestPort: syn.dstPort });
        g.accept(syn);
        g.write(patternBytes(1000));
        let got = 0;
        client.on('data', (d: Buffer) => (got += d.length));
        await harness.until(() => got === 1000, 5000, 'data at the client');
        client.destroy();
      });

      it('a client on another address appears with its own address (no NAT); IPv6', async () => {
        harness = new TcpHarness();
        const hostPort = await freePort();
        listeners = new TcpListeners(harness.stack.ctx, harness.tcp);
        listeners.open([parseForwardSpec(`[2001:db8::2]/${hostPort}`)]);
        expect(listeners.count).to.equal(1);
        const client = net.connect({ host: '2001:db8::2', port: hostPort, localAddress: '2001:db8::2' });
        client.on('error', () => undefined);
        const syn = await nextSyn();
        expect(syn.family).to.equal(6);
        expect(syn.src).to.deep.equal(SERVER_V6);
        expect(syn.dstPort).to.equal(hostPort);
        const g = new FakeGuestTcp(harness, { family: 6, remote: syn.src, remotePort: syn.srcPort, guestPort: syn.dstPort });
        g.accept(syn);
        g.write(patternBytes(1000));
        let got = 0;
        client.on('data', (d: Buffer) => (got += d.length));
        await harness.until(() => got === 1000, 5000, 'data at the client');
        client.destroy();
      });

      it('a guest RST to the SYN resets the client; an unanswered SYN is retransmitted', async () => {
        harness = new TcpHarness();
        const hostPort = await freePort();
        listeners = new TcpListeners(harness.stack.ctx, harness.tcp);
        listeners.open([parseForwardSpec(`127.0.0.1/${hostPort}`)]);
        let clientError = '';
        const client = net.connect({ host: '127.0.0.1', port: hostPort });
        client.on('error', (e: NodeJS.ErrnoException) => (clientError = e.code ?? 'error'));
        const syn = await nextSyn();
        harness.advance(1500); // past the first retransmission timeout
        const again = await nextSyn();
        expect(again.seq).to.equal(syn.seq);
        const g = new FakeGuestTcp(harness, { remote: syn.src, remotePort: syn.srcPort, guestPort: syn.dstPort });
        g.raw(0, (syn.seq + 1) >>> 0, RST | ACK);
        expect(harness.tcp.flowCount).to.equal(0);
        await harness.until(() => clientError !== '', 5000, 'client reset');
        expect(clientError).to.equal('ECONNRESET');
      });

      it('reports ports it cannot bind, unless the spec is best effort', async () => {
        harness = new TcpHarness();
        const blocker = net.createServer();
        servers.push(blocker);
        await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', r));
        const port = (blocker.address() as net.AddressInfo).port;
        listeners = new TcpListeners(harness.stack.ctx, harness.tcp);
        const result = listeners.open([parseForwardSpec(`127.0.0.1/${port}`)]);
        expect(result.opened).to.equal(0);
        expect(result.failures).to.have.length(1);
        expect(result.failures[0]).to.match(/EADDRINUSE/);
      });
    });

    it('handles a guest frame whose headers are split across descriptors', async () => {
      harness = new TcpHarness();
      const data = patternBytes(5000, 23);
      const result = { bytes: 0, hash: '' };
      const port = await listen('192.0.2.2', (socket) => {
        const h = createHash('sha256');
        socket.on('data', (d: Buffer) => {
          h.update(d);
          result.bytes += d.length;
        });
        socket.on('end', () => (result.hash = h.digest('hex')));
        socket.on('error', () => undefined);
      });
      const g = guest(SERVER_V4, port);
      g.connect();
      await harness.until(() => g.established, 5000, 'handshake');
      const frame = guestTcpFrame(4, g.guest, SERVER_V4, g.guestPort, port, g.sndNxt, g.rcvNxt, ACK | FIN, 65535, data);
      harness.send(frame, [10, 30, 50, 300, 2000]);
      g.sndNxt = (g.sndNxt + data.length + 1) >>> 0;
      g.finSent = true;
      await harness.until(() => result.hash !== '', 5000, 'data at the server');
      expect(result.hash).to.equal(sha256(data));
    });
  });
}
