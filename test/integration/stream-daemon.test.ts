/**
 * The real `ferry stream` process in a test namespace, driven by a
 * TypeScript peer speaking QEMU's framing (4-byte big-endian length, then
 * the frame) over its UNIX socket: ARP and ICMP echo through the stack,
 * one peer at a time, a broken length closes only that connection, the
 * next peer is served, --one-off, and an inherited connected socket (--fd).
 */
import { expect } from 'chai';
import { type ChildProcess } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { native } from '../../src/sys/native';
import { canCreateNamespaces, createTestNetwork, destroyTestNetwork, spawnIn, stopChild, type TestNetwork } from '../support/netns';
import { REPO_ROOT } from '../support/guest';
import { arpPacket, ethernetFrame, GUEST_MAC, icmpEcho, ipv4Packet, OUR_MAC } from '../support/fakes/stack-fakes';

const FERRY_BIN = path.join(REPO_ROOT, 'bin', 'ferry.js');
const HOST_V4 = Uint8Array.from([192, 0, 2, 1]);
const GATEWAY_V4 = Uint8Array.from([192, 0, 2, 254]);
const SERVER_V4 = Uint8Array.from([192, 0, 2, 2]);
const BROADCAST = Uint8Array.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);

/** A peer on ferry's stream socket. */
class StreamPeer {
  private pending = Buffer.alloc(0);
  closedByFerry = false;

  constructor(readonly fd: number) {
    native.setNonBlocking(fd, true);
  }

  static connect(socketPath: string): StreamPeer {
    return new StreamPeer(native.unixConnect(socketPath));
  }

  /** Send raw bytes (a prefix and frame, or garbage). */
  sendRaw(bytes: Uint8Array): void {
    expect(native.write(this.fd, bytes, 0, bytes.length)).to.equal(bytes.length);
  }

  send(frame: Uint8Array): void {
    const out = Buffer.alloc(4 + frame.length);
    out.writeUInt32BE(frame.length, 0);
    out.set(frame, 4);
    this.sendRaw(out);
  }

  private pump(): void {
    const buf = new Uint8Array(70000);
    for (let i = 0; i < 100; i++) {
      const n = native.read(this.fd, buf, 0, buf.length);
      if (n < 0) return;
      if (n === 0) {
        this.closedByFerry = true;
        return;
      }
      this.pending = Buffer.concat([this.pending, buf.subarray(0, n)]);
    }
  }

  /** The next frame matching `accept` (others skipped), or null after timeoutMs. */
  async frame(accept: (f: Buffer) => boolean, timeoutMs = 3000): Promise<Buffer | null> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      this.pump();
      while (this.pending.length >= 4 && this.pending.length >= 4 + this.pending.readUInt32BE(0)) {
        const length = this.pending.readUInt32BE(0);
        const f = this.pending.subarray(4, 4 + length);
        this.pending = this.pending.subarray(4 + length);
        if (accept(f)) return Buffer.from(f);
      }
      if (this.closedByFerry) return null;
      await new Promise((r) => setTimeout(r, 10));
    }
    return null;
  }

  /** Resolves true once ferry closed the connection (EOF), false after timeoutMs. */
  async eof(timeoutMs = 3000): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline && !this.closedByFerry) {
      this.pump();
      await new Promise((r) => setTimeout(r, 10));
    }
    return this.closedByFerry;
  }

  close(): void {
    try {
      native.close(this.fd);
    } catch {
      // already closed
    }
  }
}

function arpRequest(): Uint8Array {
  return ethernetFrame(BROADCAST, GUEST_MAC, 0x0806, arpPacket(1, GUEST_MAC, HOST_V4, new Uint8Array(6), GATEWAY_V4));
}

const isArpReply = (f: Buffer): boolean => f.length >= 42 && f.readUInt16BE(12) === 0x0806 && f.readUInt16BE(20) === 2;

function echoRequest(id: number, seq: number): Uint8Array {
  return ethernetFrame(OUR_MAC, GUEST_MAC, 0x0800, ipv4Packet(HOST_V4, SERVER_V4, 1, icmpEcho(8, id, seq, Buffer.from('ferry stream echo'))));
}

const isEchoReply = (f: Buffer): boolean => f.length >= 42 && f.readUInt16BE(12) === 0x0800 && f[23] === 1 && f[34] === 0;

interface Ferry {
  child: ChildProcess;
  log: () => string;
  exited: Promise<number | null>;
}

async function startStream(net: TestNetwork, args: string[], waitFor: string | null, extraFd?: number): Promise<Ferry> {
  const child = spawnIn(net.ns, [process.execPath, FERRY_BIN, 'stream', '--dns', '192.0.2.53', ...args], {
    cwd: REPO_ROOT,
    stdio: extraFd !== undefined ? ['ignore', 'pipe', 'pipe', extraFd] : ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => (output += d));
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (output += d));
  const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  for (let i = 0; i < 200 && waitFor !== null && !fs.existsSync(waitFor); i++) await new Promise((r) => setTimeout(r, 50));
  for (let i = 0; i < 200 && !/listening for a stream peer/.test(output); i++) await new Promise((r) => setTimeout(r, 50));
  expect(output).to.match(/listening for a stream peer/);
  return { child, log: () => output, exited };
}

describe('integration: ferry stream daemon', function () {
  this.timeout(30000);
  let net: TestNetwork | null = null;
  let dir = '';
  const peers: StreamPeer[] = [];
  const ferries: Ferry[] = [];

  before(async function () {
    if (!canCreateNamespaces() || !fs.existsSync(path.join(REPO_ROOT, 'dist', 'src', 'backend', 'main.js'))) this.skip();
    net = await createTestNetwork();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-stream-'));
  });

  afterEach(async () => {
    for (const p of peers.splice(0)) p.close();
    for (const f of ferries.splice(0)) await stopChild(f.child, 2000);
  });

  after(async function () {
    if (net) await destroyTestNetwork(net);
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
    net = null;
  });

  it('answers ARP and relays ICMP echo to the test network over the stream', async () => {
    const socketPath = path.join(dir, 'a.sock');
    const ferry = await startStream(net as TestNetwork, ['--socket', socketPath], socketPath);
    ferries.push(ferry);
    const peer = StreamPeer.connect(socketPath);
    peers.push(peer);
    peer.send(arpRequest());
    const reply = await peer.frame(isArpReply);
    expect(reply, ferry.log()).to.not.equal(null);
    expect([...(reply as Buffer).subarray(22, 28)]).to.deep.equal([...OUR_MAC]);
    expect([...(reply as Buffer).subarray(28, 32)]).to.deep.equal([...GATEWAY_V4]);
    peer.send(echoRequest(0x1234, 1));
    const echo = await peer.frame(isEchoReply);
    expect(echo, ferry.log()).to.not.equal(null);
    expect([...(echo as Buffer).subarray(26, 30)]).to.deep.equal([...SERVER_V4]);
    expect((echo as Buffer).subarray(42).toString()).to.equal('ferry stream echo');
  });

  it('one peer at a time: a second connection is refused while the first keeps working', async () => {
    const socketPath = path.join(dir, 'b.sock');
    const ferry = await startStream(net as TestNetwork, ['--socket', socketPath], socketPath);
    ferries.push(ferry);
    const first = StreamPeer.connect(socketPath);
    peers.push(first);
    first.send(arpRequest());
    expect(await first.frame(isArpReply)).to.not.equal(null);
    const second = StreamPeer.connect(socketPath);
    peers.push(second);
    expect(await second.eof(), ferry.log()).to.equal(true);
    first.send(arpRequest());
    expect(await first.frame(isArpReply), ferry.log()).to.not.equal(null);
    expect(ferry.log()).to.match(/second peer connected while one is served/);
  });

  it('a frame length of 0 closes that connection with a log line; the next peer is served', async () => {
    const socketPath = path.join(dir, 'c.sock');
    const ferry = await startStream(net as TestNetwork, ['--socket', socketPath], socketPath);
    ferries.push(ferry);
    const bad = StreamPeer.connect(socketPath);
    peers.push(bad);
    bad.sendRaw(new Uint8Array([0, 0, 0, 0, 1, 2, 3]));
    expect(await bad.eof(), ferry.log()).to.equal(true);
    const good = StreamPeer.connect(socketPath);
    peers.push(good);
    good.send(arpRequest());
    expect(await good.frame(isArpReply), ferry.log()).to.not.equal(null);
    expect(ferry.log()).to.match(/frame length 0 from the peer is outside 1-65550: closing the connection/);
    expect(ferry.child.exitCode).to.equal(null);
  });

  it('--one-off: ferry exits 0 when its peer leaves, removing the socket', async () => {
    const socketPath = path.join(dir, 'd.sock');
    const ferry = await startStream(net as TestNetwork, ['--socket', socketPath, '--one-off'], socketPath);
    ferries.push(ferry);
    const peer = StreamPeer.connect(socketPath);
    peer.send(arpRequest());
    expect(await peer.frame(isArpReply)).to.not.equal(null);
    peer.close();
    expect(await ferry.exited, ferry.log()).to.equal(0);
    expect(fs.existsSync(socketPath)).to.equal(false);
  });

  it('--fd: serves an inherited connected socket, then exits', async () => {
    const [ours, theirs] = native.socketpair();
    const ferry = await startStream(net as TestNetwork, ['--fd', '3'], null, theirs);
    native.close(theirs);
    ferries.push(ferry);
    const peer = new StreamPeer(ours);
    peer.send(arpRequest());
    expect(await peer.frame(isArpReply), ferry.log()).to.not.equal(null);
    peer.close();
    expect(await ferry.exited, ferry.log()).to.equal(0);
  });
});
