/**
 * The daemon's lifecycle across front-ends, driven by the test front-end over
 * the real daemon's UNIX socket (memfd guest memory):
 *
 *  - many front-end connections in a row, each moving frames (an ARP request
 *    answered, or a UDP datagram echoed by a server in the test network),
 *    with the daemon's RSS and open fd count bounded;
 *  - a guest that leaves with a TCP reset and a UDP reply still queued for
 *    it: the next guest's RX ring gets nothing addressed to those flows;
 *  - a front-end's bad kick or call fd (a pipe at end of file, a pipe with no
 *    reader, a full blocking pipe, a regular file) is refused: no hang, no
 *    crash, no fd kept, and the next front-end is served.
 *
 * The daemon, the echo servers and every packet stay inside the namespace
 * pair this test creates (documentation addresses only).
 */
import { expect } from 'chai';
import { type ChildProcess } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { TEST_NET, type TestNetwork, canCreateNamespaces, createTestNetwork, destroyTestNetwork, spawnIn, stopChild } from '../support/netns';
import { VhostUserFrontend } from '../support/vhost-user-frontend';
import { ACK, RST, SYN, guestTcpFrame, parseTcpFrame, synOptions } from '../support/fakes/tcp-guest';
import { GUEST_MAC, OUR_MAC, ethernetFrame, ipv4Packet, udpDatagram } from '../support/fakes/stack-fakes';
import { Request } from '../../src/backend/modes/vhost-user/protocol';
import { native } from '../../src/sys/native';
import { arpRequestForGateway, scrape, sleep, waitFor } from '../support/e2e/daemon-probe';

const REPO_ROOT = path.resolve(__dirname, '..', '..', '..');
const GUEST_V4 = Uint8Array.from(TEST_NET.hostV4.split('.').map(Number));
const SERVER_V4 = Uint8Array.from(TEST_NET.serverV4.split('.').map(Number));
const UDP_ECHO_PORT = 7007;
/** A TCP server that resets every connection shortly after accepting it. */
const TCP_RESET_PORT = 7008;
const TCP_RESET_AFTER_MS = 300;

/** Front-end connections in a row; the RSS baseline is taken after WARMUP of them. */
const CONNECTIONS = 1000;
const WARMUP = 50;
/** Allowed RSS growth from the baseline to the end (a leak of ~1 MB per connection would exceed it ~20 times over). */
const RSS_GROWTH_LIMIT_MB = 40;

/** A UDP datagram from the guest's `port` to the echo server. */
function udpToEcho(port: number, text: string): Uint8Array {
  const datagram = udpDatagram(GUEST_V4, SERVER_V4, port, UDP_ECHO_PORT, new TextEncoder().encode(text));
  return ethernetFrame(OUR_MAC, GUEST_MAC, 0x0800, ipv4Packet(GUEST_V4, SERVER_V4, 17, datagram));
}

/** What an RX frame is, as far as these tests care: IPv4 UDP/TCP to a guest port, ARP, or other. */
function classify(frame: Uint8Array): { kind: 'udp' | 'tcp' | 'arp' | 'other'; dstPort: number; srcPort: number } {
  const etherType = (frame[12] << 8) | frame[13];
  if (etherType === 0x0806) return { kind: 'arp', dstPort: 0, srcPort: 0 };
  if (etherType !== 0x0800 || frame.length < 14 + 20 + 8) return { kind: 'other', dstPort: 0, srcPort: 0 };
  const l4 = 14 + (frame[14] & 15) * 4;
  const protocol = frame[14 + 9];
  const srcPort = (frame[l4] << 8) | frame[l4 + 1];
  const dstPort = (frame[l4 + 2] << 8) | frame[l4 + 3];
  if (protocol === 17) return { kind: 'udp', dstPort, srcPort };
  if (protocol === 6) return { kind: 'tcp', dstPort, srcPort };
  return { kind: 'other', dstPort, srcPort };
}

/** VmRSS of a process in MB. */
function rssMb(pid: number): number {
  const match = /^VmRSS:\s+(\d+) kB$/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (match === null) throw new Error(`no VmRSS for ${pid}`);
  return Number(match[1]) / 1024;
}

function openFds(pid: number): number {
  return fs.readdirSync(`/proc/${pid}/fd`).length;
}

/** The echo servers, run by node in the peer namespace: UDP echo, and TCP that resets each connection. */
const SERVER_SCRIPT = `
const dgram = require('dgram'), net = require('net');
const udp = dgram.createSocket('udp4');
udp.on('message', (m, r) => udp.send(m, r.port, r.address));
udp.bind(${UDP_ECHO_PORT}, '${TEST_NET.serverV4}', () => {
  const tcp = net.createServer((s) => { s.on('error', () => {}); setTimeout(() => s.resetAndDestroy(), ${TCP_RESET_AFTER_MS}); });
  tcp.listen(${TCP_RESET_PORT}, '${TEST_NET.serverV4}', () => process.stdout.write('ready\\n'));
});
`;

describe('vhost-user lifecycle: reconnects, leftovers of earlier guests, bad kick/call fds (real daemon)', function () {
  this.timeout(240_000);
  let net: TestNetwork | null = null;
  let dir: string;
  let socketPath: string;
  let metricsPath: string;
  let daemon: ChildProcess;
  let servers: ChildProcess | null = null;
  let daemonLog = '';
  /** Open fds of the daemon with no front-end connected, before the first one. */
  let baselineFds = 0;
  const frontends: VhostUserFrontend[] = [];

  function alive(): boolean {
    return daemon.exitCode === null && daemon.signalCode === null;
  }

  function daemonPid(): number {
    if (daemon.pid === undefined) throw new Error('daemon has no pid');
    return daemon.pid;
  }

  function connect(): VhostUserFrontend {
    const fe = VhostUserFrontend.connect(socketPath, { queuePairs: 1, queueSize: 256, slotSize: 2048, replyTimeoutMs: 5000 });
    frontends.push(fe);
    return fe;
  }

  async function readyFrontend(rxBuffers = 32): Promise<VhostUserFrontend> {
    const fe = connect();
    await fe.negotiate();
    await fe.start();
    if (rxBuffers > 0) fe.provideRxBuffers(rxBuffers);
    return fe;
  }

  /** Wait for an RX frame matching `want`, skipping others (router advertisements...); every frame seen goes to `seen`. */
  async function expectRx(fe: VhostUserFrontend, want: (frame: Uint8Array) => boolean, what: string, seen: Uint8Array[] = [], timeoutMs = 5000): Promise<Uint8Array> {
    const deadline = Date.now() + timeoutMs;
    for (let frames = 0; frames < 64 && Date.now() < deadline; frames++) {
      const received = await fe.waitForRxFrame(Math.max(1, deadline - Date.now()));
      if (received === null) break;
      seen.push(received.frame);
      if (want(received.frame)) return received.frame;
    }
    throw new Error(`no ${what} among the RX frames`);
  }

  async function expectArpReply(fe: VhostUserFrontend): Promise<void> {
    fe.sendFrame(0, arpRequestForGateway(GUEST_MAC));
    await expectRx(fe, (f) => classify(f).kind === 'arp' && f[21] === 2, 'ARP reply');
  }

  async function expectUdpEcho(fe: VhostUserFrontend, port: number, seen: Uint8Array[] = []): Promise<void> {
    fe.sendFrame(0, udpToEcho(port, `hello from ${port}`));
    await expectRx(fe, (f) => {
      const c = classify(f);
      return c.kind === 'udp' && c.dstPort === port && c.srcPort === UDP_ECHO_PORT;
    }, `UDP echo to guest port ${port}`, seen);
  }

  /** Every RX frame that arrives within `ms` (the ring refilled as it goes). */
  async function collectRx(fe: VhostUserFrontend, ms: number): Promise<Uint8Array[]> {
    const frames: Uint8Array[] = [];
    const deadline = Date.now() + ms;
    while (Date.now() < deadline && frames.length < 256) {
      const received = await fe.waitForRxFrame(Math.max(1, deadline - Date.now()));
      if (received === null) break;
      frames.push(received.frame);
      fe.provideRxBuffers(1);
    }
    return frames;
  }

  async function disconnect(fe: VhostUserFrontend): Promise<void> {
    fe.disconnect();
    const index = frontends.indexOf(fe);
    if (index >= 0) frontends.splice(index, 1);
    // The daemon handles the disconnection (workers reset) before it accepts the next front-end.
    await sleep(20);
  }

  /** The daemon's fds come back to the baseline once no front-end is connected (bounded wait). */
  async function expectFdsAtBaseline(): Promise<void> {
    await waitFor(() => openFds(daemonPid()) === baselineFds, 5000, `the daemon's open fds (${openFds(daemonPid())}) to return to ${baselineFds}`);
  }

  before(async function () {
    if (!canCreateNamespaces()) this.skip();
    if (!fs.existsSync(path.join(REPO_ROOT, 'bin', 'ferry.js'))) this.skip();
    net = await createTestNetwork();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-vul-'));
    socketPath = path.join(dir, 'vhost.sock');
    metricsPath = path.join(dir, 'metrics.sock');
    let serverOut = '';
    servers = spawnIn(net.peerNs, [process.execPath, '-e', SERVER_SCRIPT]);
    servers.stdout?.on('data', (chunk: Buffer) => (serverOut += chunk.toString()));
    servers.stderr?.on('data', (chunk: Buffer) => (serverOut += chunk.toString()));
    await waitFor(() => serverOut.includes('ready'), 10_000, 'the echo servers').catch((error) => {
      throw new Error(`${String(error)}; server output:\n${serverOut}`);
    });
    daemon = spawnIn(net.ns, [process.execPath, path.join(REPO_ROOT, 'bin', 'ferry.js'), '--socket-path', socketPath, '--metrics', `unix:${metricsPath}`], {
      cwd: REPO_ROOT,
    });
    daemon.stdout?.on('data', (chunk: Buffer) => (daemonLog += chunk.toString()));
    daemon.stderr?.on('data', (chunk: Buffer) => (daemonLog += chunk.toString()));
    await waitFor(() => fs.existsSync(socketPath) && fs.existsSync(metricsPath), 15000, 'the daemon to listen').catch((error) => {
      throw new Error(`${String(error)}; daemon output:\n${daemonLog}`);
    });
    await scrape(metricsPath); // the metrics endpoint's lazily made parts exist before the baseline
    await sleep(300);
    baselineFds = openFds(daemonPid());
  });

  afterEach(async function () {
    for (const fe of frontends.splice(0)) fe.disconnect();
    if (this.currentTest?.state === 'failed') process.stderr.write(`daemon output (last 8 kB):\n${daemonLog.slice(-8192)}\n`);
  });

  after(async () => {
    if (daemon !== undefined) await stopChild(daemon, 3000);
    if (servers !== null) await stopChild(servers, 1000);
    if (net !== null) await destroyTestNetwork(net);
    if (dir !== undefined) fs.rmSync(dir, { recursive: true, force: true });
  });

  it(`${CONNECTIONS} front-ends in a row, each answered: RSS grows < ${RSS_GROWTH_LIMIT_MB} MB after the first ${WARMUP}, fds back to the baseline`, async () => {
    const started = Date.now();
    let baselineRss = 0;
    let peakRss = 0;
    for (let i = 0; i < CONNECTIONS; i++) {
      const fe = await readyFrontend(8);
      // Alternate: ARP answered by the stack itself, or a UDP datagram through a host socket and back.
      if (i % 2 === 0) await expectArpReply(fe);
      else await expectUdpEcho(fe, 20000 + (i % 20000));
      await disconnect(fe);
      if (i + 1 === WARMUP) {
        await expectFdsAtBaseline();
        baselineRss = rssMb(daemonPid());
      }
      if (i + 1 > WARMUP && (i + 1) % 50 === 0) peakRss = Math.max(peakRss, rssMb(daemonPid()));
      expect(alive(), `daemon alive after connection ${i + 1}`).to.equal(true);
    }
    await expectFdsAtBaseline();
    const finalRss = rssMb(daemonPid());
    process.stderr.write(`      ${CONNECTIONS} connections in ${((Date.now() - started) / 1000).toFixed(1)} s; RSS ${baselineRss.toFixed(1)} MB after ${WARMUP}, peak ${peakRss.toFixed(1)}, end ${finalRss.toFixed(1)}; fds ${openFds(daemonPid())} (baseline ${baselineFds})\n`);
    expect(Math.max(peakRss, finalRss) - baselineRss, 'RSS growth (MB) after the warm-up').to.be.below(RSS_GROWTH_LIMIT_MB);
  });

  it('a guest that leaves with a TCP reset and a UDP reply pending: the next guest gets nothing of its flows', async () => {
    const tcpPort = 45001;
    const udpPort = 45002;
    // Guest A opens a TCP connection, one RX buffer at a time, so that none is left once it is established.
    const a = await readyFrontend(0);
    a.provideRxBuffers(1);
    a.sendFrame(0, guestTcpFrame(4, GUEST_V4, SERVER_V4, tcpPort, TCP_RESET_PORT, 1000, 0, SYN, 65535, new Uint8Array(0), synOptions(1460, -1)));
    let synAck = null;
    for (let frames = 0; frames < 16 && synAck === null; frames++) {
      const received = await a.waitForRxFrame(5000);
      expect(received, 'an RX frame for guest A').to.not.equal(null);
      const segment = parseTcpFrame((received as { frame: Uint8Array }).frame);
      if (segment !== null && segment.dstPort === tcpPort && (segment.flags & (SYN | ACK)) === (SYN | ACK)) synAck = segment;
      else a.provideRxBuffers(1); // something else (a router advertisement) took the buffer
    }
    expect(synAck, 'SYN-ACK for guest A').to.not.equal(null);
    const serverSeq = (synAck as { seq: number }).seq;
    a.sendFrame(0, guestTcpFrame(4, GUEST_V4, SERVER_V4, tcpPort, TCP_RESET_PORT, 1001, (serverSeq + 1) >>> 0, ACK, 65535));
    // With no RX buffer left: a datagram whose echo cannot be delivered, then the server's reset.
    a.sendFrame(0, udpToEcho(udpPort, 'for guest A only'));
    await sleep(TCP_RESET_AFTER_MS + 400);
    await disconnect(a);

    // Guest B: plenty of RX buffers; its own datagram goes through, nothing addressed to A's flows arrives.
    const b = await readyFrontend(64);
    const frames: Uint8Array[] = [];
    await expectUdpEcho(b, 45003, frames);
    frames.push(...(await collectRx(b, 2500)));
    const leaked = frames.map(classify).filter((c) => (c.kind === 'tcp' && c.dstPort === tcpPort) || (c.kind === 'udp' && c.dstPort === udpPort));
    expect(leaked, 'frames for guest A\'s flows on guest B\'s RX ring').to.deep.equal([]);
    const rst = frames.map((f) => parseTcpFrame(f)).filter((s) => s !== null && (s.flags & RST) !== 0);
    expect(rst, 'resets on guest B\'s RX ring').to.deep.equal([]);
    await disconnect(b);
    await expectFdsAtBaseline();
    // The services' close() released every socket they watched (stack-factory logs any it had to unwatch itself).
    expect(daemonLog).to.not.match(/still watched after the stack closed/);
  });

  it('RESET_OWNER on the same connection: a fresh stack and memory table; nothing of the earlier flows arrives', async () => {
    const udpPort = 45012;
    const a = await readyFrontend(0);
    a.sendFrame(0, udpToEcho(udpPort, 'for the owner before the reset'));
    await sleep(300);
    await a.sendRequest(Request.RESET_OWNER);
    // The same connection goes on with fresh memory and rings, as a front-end does after RESET_OWNER.
    a.abandon();
    const b = VhostUserFrontend.attach(a.fd, { queuePairs: 1, queueSize: 256, slotSize: 2048, replyTimeoutMs: 5000 });
    frontends.push(b);
    await b.negotiate();
    await b.start();
    b.provideRxBuffers(64);
    const frames: Uint8Array[] = [];
    await expectUdpEcho(b, 45013, frames);
    await expectArpReply(b);
    frames.push(...(await collectRx(b, 1500)));
    const leaked = frames.map(classify).filter((c) => c.kind === 'udp' && c.dstPort === udpPort);
    expect(leaked, 'frames for the earlier owner\'s flow').to.deep.equal([]);
    await disconnect(b);
    await expectFdsAtBaseline();
  });

  /**
   * A kick or call fd that is not an eventfd is refused by the message
   * server before any ring sees it (its fd closed at once); the worker keeps
   * answering ring messages, the ring still works with a real eventfd, and
   * the next front-end is served with no fd of this one kept. The worker's
   * own handling of an eventfd that fails (EOF, EPIPE, EAGAIN) is covered
   * by the Vring unit tests, since a front-end cannot make an eventfd fail.
   */
  async function expectRefusedFd(request: number, ring: number, fd: number): Promise<void> {
    const fe = await readyFrontend();
    let refused = false;
    await fe.setVringFd(request, ring, fd).catch((error: unknown) => {
      refused = /refused/.test(String(error));
    });
    native.close(fd);
    expect(refused, 'the message is refused').to.equal(true);
    expect(await fe.getVringBase(ring)).to.be.a('number');
    expect(alive()).to.equal(true);
    await disconnect(fe);
    const next = await readyFrontend();
    await expectArpReply(next);
    await disconnect(next);
    await expectFdsAtBaseline();
  }

  it('a kick fd that is a pipe at end of file is refused; the worker keeps answering and the next front-end is served', async () => {
    const [readEnd, writeEnd] = native.pipe();
    native.close(writeEnd);
    await expectRefusedFd(Request.SET_VRING_KICK, 1, readEnd);
  });

  it('a kick fd that cannot be polled (a regular file) is refused and closed; the next front-end is served', async () => {
    await expectRefusedFd(Request.SET_VRING_KICK, 1, native.memfdCreate('not-a-kick-fd', 4096));
  });

  it('a call fd that is a pipe with no reader is refused; the next front-end is served', async () => {
    const [readEnd, writeEnd] = native.pipe();
    native.close(readEnd);
    await expectRefusedFd(Request.SET_VRING_CALL, 0, writeEnd);
  });

  it('a call fd that is a full blocking pipe is refused, so it can never stop the worker; the next front-end is served', async () => {
    const [readEnd, writeEnd] = native.pipe();
    const chunk = new Uint8Array(65536);
    for (let i = 0; i < 64 && native.write(writeEnd, chunk, 0, chunk.length) > 0; i++);
    expect(native.write(writeEnd, chunk, 0, 1), 'the pipe is full').to.equal(-1);
    native.setNonBlocking(writeEnd, false);
    await expectRefusedFd(Request.SET_VRING_CALL, 0, writeEnd);
    native.close(readEnd);
  });
});

describe('vhost-user lifecycle: a worker that fails anyway ends the daemon, for its supervisor to restart', function () {
  this.timeout(60_000);
  let net: TestNetwork | null = null;
  let dir: string;
  const WORKER_MAIN = path.join(REPO_ROOT, 'dist', 'src', 'backend', 'modes', 'vhost-user', 'worker-main.js');
  const NATIVE = path.join(REPO_ROOT, 'dist', 'src', 'sys', 'native.js');

  before(async function () {
    if (!canCreateNamespaces()) this.skip();
    if (!fs.existsSync(path.join(REPO_ROOT, 'bin', 'ferry.js'))) this.skip();
    net = await createTestNetwork();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-vuf-'));
  });

  after(async () => {
    if (net !== null) await destroyTestNetwork(net);
    if (dir !== undefined) fs.rmSync(dir, { recursive: true, force: true });
  });

  /**
   * Run the daemon with a worker that is the real one plus `onEnable` done at
   * the first SET_VRING_ENABLE; a front-end starts; resolves with how the daemon ended.
   */
  async function daemonEndWhenWorker(name: string, onEnable: string, limitMs: number): Promise<{ code: number | null; signal: NodeJS.Signals | null; socketLeft: boolean; log: string }> {
    const script = path.join(dir, `${name}.js`);
    // Everything the wrapper needs is loaded before the daemon confines itself (no module file can be opened after).
    fs.writeFileSync(script, `
const { parentPort } = require('worker_threads');
const { native } = require(${JSON.stringify(NATIVE)});
let done = false;
parentPort.on('message', (m) => { if (m.op === 'vring-enable' && !done) { done = true; ${onEnable} } });
require(${JSON.stringify(WORKER_MAIN)});
`);
    const socketPath = path.join(dir, `${name}.sock`);
    let log = '';
    const daemon = spawnIn((net as TestNetwork).ns, [process.execPath, path.join(REPO_ROOT, 'bin', 'ferry.js'), '--socket-path', socketPath], {
      cwd: REPO_ROOT,
      env: { ...process.env, FERRY_TEST_WORKER_SCRIPT: script },
    });
    daemon.stdout?.on('data', (chunk: Buffer) => (log += chunk.toString()));
    daemon.stderr?.on('data', (chunk: Buffer) => (log += chunk.toString()));
    const ended = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => daemon.once('exit', (code, signal) => resolve({ code, signal })));
    const fe = VhostUserFrontend.connect(await waitForSocket(socketPath, () => log), { queuePairs: 1, replyTimeoutMs: 20_000 });
    try {
      await fe.negotiate();
      await fe.start().catch(() => undefined); // the worker fails during it
      const outcome = await Promise.race([ended, sleep(limitMs).then(() => null)]);
      if (outcome === null) {
        await stopChild(daemon, 1000);
        throw new Error(`the daemon was still running ${limitMs} ms after its worker failed; output:\n${log}`);
      }
      return { ...outcome, socketLeft: fs.existsSync(socketPath), log };
    } finally {
      fe.disconnect();
      await stopChild(daemon, 1000);
    }
  }

  async function waitForSocket(socketPath: string, log: () => string): Promise<string> {
    await waitFor(() => fs.existsSync(socketPath), 15000, 'the daemon to listen').catch((error) => {
      throw new Error(`${String(error)}; daemon output:\n${log()}`);
    });
    return socketPath;
  }

  it('an exception escaping the worker: the daemon exits 70 and removes its socket', async () => {
    const end = await daemonEndWhenWorker('throws', "setImmediate(() => { throw new Error('test: worker bug'); });", 15_000);
    expect(end, end.log).to.include({ code: 70, signal: null, socketLeft: false });
    expect(end.log).to.match(/worker failed/);
  });

  it('a worker that stops answering (a loop that never ends): the daemon exits 70 after the request deadline', async () => {
    const end = await daemonEndWhenWorker('spins', 'for (;;) { /* never answers */ }', 25_000);
    expect(end, end.log).to.include({ code: 70, signal: null, socketLeft: false });
    expect(end.log).to.match(/no answer to vring-enable/);
  });

  it('a worker stuck in a system call: the daemon ends itself with SIGKILL (process.exit would wait for the thread)', async () => {
    const end = await daemonEndWhenWorker(
      'blocks',
      `const [r, w] = native.pipe(); native.setNonBlocking(w, false); const b = new Uint8Array(1 << 20); native.write(w, b, 0, b.length);`,
      30_000,
    );
    expect(end, end.log).to.include({ code: null, signal: 'SIGKILL' });
    expect(end.log).to.match(/cannot be stopped/);
  });
});
