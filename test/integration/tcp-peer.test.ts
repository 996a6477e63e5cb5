/**
 * The TCP translator against peers in a test network of namespaces (see
 * test/support/netns.ts): ferry's side (the stack with the fake guest
 * endpoint) runs in the test namespace, whose uplink holds the guest's
 * (host's) address 192.0.2.1 / 2001:db8::1; servers and clients run as
 * separate processes (tcp-peer-helper.js) in the peer namespace at
 * 192.0.2.2 / 2001:db8::2, reached through the veth uplink.
 *
 * The outer test creates the network and re-runs this file inside the test
 * namespace with FERRY_TCP_PEER_NS set.
 */
import { expect } from 'chai';
import { type ChildProcess, spawn } from 'child_process';
import * as path from 'path';
import { canCreateNamespaces, createTestNetwork, destroyTestNetwork, killPid } from '../support/netns';
import { ACK, FakeGuestTcp, SYN, TcpHarness, patternBytes, sha256 } from '../support/fakes/tcp-guest';
import type { Segment } from '../support/fakes/tcp-guest';
import { TcpListeners } from '../../src/stack/tcp/listen';
import { parseForwardSpec } from '../../src/stack/flow/forward-spec';

const PEER_NS = process.env.FERRY_TCP_PEER_NS;
const HELPER = path.join(__dirname, 'tcp-peer-helper.js');
const SERVER_V4 = Uint8Array.from([192, 0, 2, 2]);
const SERVER_V6 = Uint8Array.from([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
const SERVER_PORT = 5001;
const FORWARDED_PORT = 5002;
const MiB = 1024 * 1024;

/** Run a command to completion, collecting its output. */
function runProcess(argv: string[], env: NodeJS.ProcessEnv, timeoutMs: number): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve) => {
    const child = spawn(argv[0], argv.slice(1), { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    const timer = setTimeout(() => killPid(child.pid, 'SIGKILL'), timeoutMs);
    child.stdout!.setEncoding('utf8').on('data', (d: string) => (output += d));
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (output += d));
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, output });
    });
  });
}

if (PEER_NS === undefined) {
  describe('tcp through a test network (scenarios run inside the test namespace)', function () {
    this.timeout(300_000);
    it('passes every scenario', async function () {
      if (!canCreateNamespaces()) this.skip();
      const testNet = await createTestNetwork();
      try {
        const mocha = path.resolve(__dirname, '..', '..', '..', 'node_modules', 'mocha', 'bin', 'mocha.js');
        const result = await runProcess(
          ['ip', 'netns', 'exec', testNet.ns, process.execPath, mocha, '--timeout', '120000', __filename],
          { ...process.env, FERRY_TCP_PEER_NS: testNet.peerNs },
          290_000,
        );
        if (result.code !== 0 || process.env.FERRY_TCP_VERBOSE) console.log(result.output);
        expect(result.code, 'inner mocha exit status').to.equal(0);
        // The inner run must really have run the scenarios (not skipped them all).
        const passing = /(\d+) passing/.exec(result.output);
        expect(passing === null ? 0 : Number(passing[1]), 'scenarios passed inside the namespace').to.be.at.least(5);
        expect(result.output).to.not.match(/\d+ pending/);
      } finally {
        await destroyTestNetwork(testNet);
      }
    });
  });
} else {
  describe('tcp translator with peers across the uplink', () => {
    let server: ChildProcess;
    let harness: TcpHarness;
    let nextGuestPort = 30000;

    before(async () => {
      server = spawn('ip', ['netns', 'exec', PEER_NS, process.execPath, HELPER, 'server', String(SERVER_PORT)], { stdio: ['ignore', 'pipe', 'inherit'] });
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('peer server did not start')), 10_000);
        server.stdout!.setEncoding('utf8').on('data', (d: string) => {
          if (d.includes('ready')) {
            clearTimeout(timer);
            resolve();
          }
        });
      });
    });

    after(() => {
      killPid(server?.pid, 'SIGKILL');
    });

    afterEach(() => harness?.close());

    /** The 8-byte request header of the helper's protocol. */
    function header(send: number, want: number): Uint8Array {
      const h = Buffer.alloc(8);
      h.writeUInt32BE(send, 0);
      h.writeUInt32BE(want, 4);
      return h;
    }

    /** Start one exchange from a fake guest to the peer server. */
    function exchange(family: 4 | 6, send: number, want: number, seed: number): { guest: FakeGuestTcp; data: Uint8Array } {
      const data = patternBytes(send, seed);
      const guest = new FakeGuestTcp(harness, { family, remote: family === 4 ? SERVER_V4 : SERVER_V6, remotePort: SERVER_PORT, guestPort: nextGuestPort++ });
      guest.keepChunks = true;
      guest.connect();
      guest.write(header(send, want));
      guest.write(data);
      guest.end();
      return { guest, data };
    }

    /** Check what the server answered: the hash of what it got, then the pattern. */
    function verify(guest: FakeGuestTcp, data: Uint8Array, want: number): void {
      const all = Buffer.concat(guest.chunks);
      expect(all.subarray(0, 64).toString('latin1'), 'hash of what the server received').to.equal(sha256(data));
      expect(all.length - 64).to.equal(want);
      expect(sha256(all.subarray(64)), 'reply from the server').to.equal(sha256(patternBytes(want, 77)));
      expect(guest.windowViolations).to.equal(0);
    }

    it('guest to a server across the uplink over IPv4: 16 MiB each way, sha256-verified', async () => {
      harness = new TcpHarness();
      const { guest, data } = exchange(4, 16 * MiB, 16 * MiB, 101);
      await harness.until(() => guest.finReceived && guest.finAcked, 100_000, 'the exchange');
      verify(guest, data, 16 * MiB);
      await harness.until(() => harness.tcp.flowCount === 0, 5000, 'flow closed');
    });

    it('guest to a server across the uplink over IPv6: 4 MiB each way', async () => {
      harness = new TcpHarness();
      const { guest, data } = exchange(6, 4 * MiB, 4 * MiB, 102);
      await harness.until(() => guest.finReceived && guest.finAcked, 60_000, 'the exchange');
      verify(guest, data, 4 * MiB);
    });

    it('a host that does not answer ARP becomes ICMP host unreachable for the guest', async () => {
      harness = new TcpHarness();
      // 192.0.2.77 is on the uplink's subnet, but nobody holds it: the kernel gives up with EHOSTUNREACH after its ARP retries.
      const guest = new FakeGuestTcp(harness, { remote: Uint8Array.from([192, 0, 2, 77]), remotePort: 80, guestPort: nextGuestPort++ });
      guest.connect();
      let icmp: Uint8Array | undefined;
      await harness.until(() => (icmp = harness.otherFrames.find((f) => f[12] === 0x08 && f[23] === 1)) !== undefined || harness.tcp.flowCount === 0, 15_000, 'the connect to fail');
      expect(icmp, 'an ICMP error').to.not.equal(undefined);
      expect(icmp![34]).to.equal(3); // destination unreachable
      expect(icmp![35]).to.equal(1); // host unreachable
      expect(harness.tcp.flowCount).to.equal(0);
    });

    it('1000 concurrent connections, every one intact', async () => {
      harness = new TcpHarness({ maxFlows: 1024 });
      const exchanges: { guest: FakeGuestTcp; data: Uint8Array }[] = [];
      for (let i = 0; i < 1000; i++) exchanges.push(exchange(i % 2 === 0 ? 4 : 6, 2048 + i, 4096 - i, 1000 + i));
      await harness.until(() => exchanges.every((e) => e.guest.finReceived && e.guest.finAcked), 100_000, 'all exchanges');
      for (let i = 0; i < exchanges.length; i++) verify(exchanges[i].guest, exchanges[i].data, 4096 - i);
      await harness.until(() => harness.tcp.flowCount === 0, 10_000, 'flows closed');
    });

    it('a client in the peer namespace reaches a forwarded guest server; it sees the real client address', async () => {
      harness = new TcpHarness();
      const listeners = new TcpListeners(harness.stack.ctx, harness.tcp);
      try {
        expect(listeners.open([parseForwardSpec(`${FORWARDED_PORT}`)]).failures).to.deep.equal([]);
        const send = 8 * MiB;
        const want = 8 * MiB;
        const client = runProcess(['ip', 'netns', 'exec', PEER_NS, process.execPath, HELPER, 'client', '192.0.2.1', String(FORWARDED_PORT), String(send), String(want)], process.env, 100_000);
        let syn: Segment | undefined;
        await harness.until(() => (syn = harness.unrouted.find((s) => (s.flags & (SYN | ACK)) === SYN)) !== undefined, 10_000, 'SYN to the guest');
        expect(syn!.src).to.deep.equal(SERVER_V4);
        expect(syn!.dstPort).to.equal(FORWARDED_PORT);
        const guest = new FakeGuestTcp(harness, { remote: syn!.src, remotePort: syn!.srcPort, guestPort: syn!.dstPort });
        guest.keepChunks = true;
        guest.accept(syn!);
        await harness.until(() => guest.finReceived, 60_000, 'the client request');
        const request = Buffer.concat(guest.chunks);
        expect(request.readUInt32BE(0)).to.equal(send);
        // Answer as the helper's server would.
        guest.write(Buffer.from(sha256(request.subarray(8)), 'latin1'));
        guest.write(patternBytes(request.readUInt32BE(4), 77));
        guest.end();
        let done = false;
        let result: { code: number | null; output: string } | undefined;
        void client.then((r) => {
          result = r;
          done = true;
        });
        await harness.until(() => done, 60_000, 'the client to finish');
        expect(result!.code, result!.output).to.equal(0);
        expect(JSON.parse(result!.output.trim().split('\n').pop()!).ok).to.equal(true);
      } finally {
        listeners.close();
      }
    });
  });
}
