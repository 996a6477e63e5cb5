/**
 * VhostUserServer over a real UNIX socket, driven by the test front-end,
 * with a recording fake device (this tests the server alone: the real
 * net device has its own tests).
 */
import { expect } from 'chai';
import { once } from 'events';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { native } from '../../src/sys/native';
import { CounterBlock } from '../../src/sys/counters';
import type { VhostUserDevice, VhostUserMemoryRegion, VhostUserMemoryRegionWithFd, VhostUserVringAddress } from '../../src/backend/modes/vhost-user/device';
import { VhostUserServer, vhostUserCounterSlots } from '../../src/backend/modes/vhost-user/server';
import {
  FLAG_NEED_REPLY,
  FLAG_VERSION,
  Request,
  VHOST_USER_F_PROTOCOL_FEATURES,
  VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS,
  VHOST_USER_PROTOCOL_F_MQ,
  VHOST_USER_PROTOCOL_F_MTU,
  VHOST_USER_PROTOCOL_F_RARP,
  VHOST_USER_PROTOCOL_F_REPLY_ACK,
  VHOST_USER_PROTOCOL_F_LOG_SHMFD,
} from '../../src/backend/modes/vhost-user/protocol';
import { VIRTIO_F_VERSION_1, VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_RING_F_EVENT_IDX } from '../../src/virtqueue/features';
import { VhostUserFrontend, u64Bytes, vringStateBytes } from '../support/vhost-user-frontend';

type Call = { method: string; args: unknown[] };

function closeQuietly(fd: number | null): void {
  if (fd === null || fd < 0) return;
  try {
    native.close(fd);
  } catch {
    // already closed
  }
}

/** A device that records every call, owns (and closes) the fds it gets, and can be told to fail. */
class RecordingDevice implements VhostUserDevice {
  calls: Call[] = [];
  failing = new Set<string>();
  vringBases = new Map<number, number>();
  ownedFds = new Set<number>();
  disconnects = 0;
  memTableFdSizes: number[] = [];

  constructor(readonly queuePairs = 2) {}

  private record(method: string, ...args: unknown[]): void {
    this.calls.push({ method, args });
    if (this.failing.has(method)) throw new Error(`${method} failed on purpose`);
  }

  private own(fd: number | null): void {
    if (fd !== null) this.ownedFds.add(fd);
  }

  methods(): string[] {
    return this.calls.map((c) => c.method);
  }

  getFeatures(): bigint {
    return VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF | VIRTIO_RING_F_EVENT_IDX | VIRTIO_NET_F_MQ;
  }
  setFeatures(features: bigint): void {
    this.record('setFeatures', features);
  }
  getProtocolFeatures(): bigint {
    // LOG_SHMFD is not handled by the server, so it must be masked out of the offer.
    return VHOST_USER_PROTOCOL_F_MQ | VHOST_USER_PROTOCOL_F_MTU | VHOST_USER_PROTOCOL_F_RARP | VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS | VHOST_USER_PROTOCOL_F_LOG_SHMFD;
  }
  setProtocolFeatures(features: bigint): void {
    this.record('setProtocolFeatures', features);
  }
  maxQueuePairs(): number {
    return this.queuePairs;
  }
  maxMemSlots(): number {
    return 16;
  }
  setOwner(): void {
    this.record('setOwner');
  }
  resetOwner(): void {
    this.record('resetOwner');
  }
  setMemTable(regions: VhostUserMemoryRegionWithFd[]): void {
    for (const r of regions) this.own(r.fd);
    this.memTableFdSizes = regions.map((r) => native.fstat(r.fd)[1]);
    this.record('setMemTable', regions);
  }
  async addMemRegion(region: VhostUserMemoryRegionWithFd): Promise<void> {
    this.own(region.fd);
    await new Promise((resolve) => setTimeout(resolve, 5)); // an async device answers later
    this.record('addMemRegion', region);
  }
  removeMemRegion(region: VhostUserMemoryRegion): void {
    this.record('removeMemRegion', region);
  }
  setVringNum(index: number, num: number): void {
    this.record('setVringNum', index, num);
  }
  setVringAddr(address: VhostUserVringAddress): void {
    this.record('setVringAddr', address);
  }
  setVringBase(index: number, base: number): void {
    this.vringBases.set(index, base);
    this.record('setVringBase', index, base);
  }
  async getVringBase(index: number): Promise<number> {
    await new Promise((resolve) => setTimeout(resolve, 2));
    this.record('getVringBase', index);
    return this.vringBases.get(index) ?? 0;
  }
  setVringKick(index: number, fd: number | null): void {
    this.own(fd);
    this.record('setVringKick', index, fd);
  }
  setVringCall(index: number, fd: number | null): void {
    this.own(fd);
    this.record('setVringCall', index, fd);
  }
  setVringErr(index: number, fd: number | null): void {
    this.own(fd);
    this.record('setVringErr', index, fd);
  }
  setVringEnable(index: number, enabled: boolean): void {
    this.record('setVringEnable', index, enabled);
  }
  sendRarp(mac: Uint8Array): void {
    this.record('sendRarp', Array.from(mac));
  }
  setMtu(mtu: number): void {
    this.record('setMtu', mtu);
  }
  disconnected(): void {
    this.disconnects++;
    for (const fd of this.ownedFds) closeQuietly(fd);
    this.ownedFds.clear();
    this.vringBases.clear();
    this.calls.push({ method: 'disconnected', args: [] });
  }
}

function openFdCount(): number {
  return fs.readdirSync('/proc/self/fd').length;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function waitFor(condition: () => boolean, timeoutMs = 2000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await sleep(2);
  }
}

describe('vhost-user server (integration, in-process)', function () {
  this.timeout(20000);
  let dir: string;
  let socketPath: string;
  let device: RecordingDevice;
  let counters: CounterBlock;
  let server: VhostUserServer;
  const frontends: VhostUserFrontend[] = [];

  function connect(options = {}): VhostUserFrontend {
    const fe = VhostUserFrontend.connect(socketPath, { replyTimeoutMs: 3000, ...options });
    frontends.push(fe);
    return fe;
  }

  /** Connect and complete negotiation (no rings). */
  async function negotiated(): Promise<VhostUserFrontend> {
    const fe = connect();
    await fe.negotiate();
    return fe;
  }

  async function disconnectAndWait(fe: VhostUserFrontend): Promise<void> {
    const before = device.disconnects;
    fe.disconnect();
    await waitFor(() => device.disconnects > before);
  }

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-vu-'));
    socketPath = path.join(dir, 'vhost.sock');
    device = new RecordingDevice();
    counters = new CounterBlock();
    server = VhostUserServer.listen({ device, socketPath, counters });
  });

  afterEach(async () => {
    for (const fe of frontends.splice(0)) fe.disconnect();
    await server.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('runs the QEMU-like negotiation and ring setup (SET_MEM_TABLE), in order, and forwards it to the device', async () => {
    const fe = connect({ queuePairs: 2, mtu: 1500, memoryMessages: 'table' });
    await fe.negotiate();
    expect(fe.offeredFeatures & VHOST_USER_F_PROTOCOL_FEATURES).to.equal(VHOST_USER_F_PROTOCOL_FEATURES);
    expect(fe.offeredFeatures & device.getFeatures()).to.equal(device.getFeatures());
    // REPLY_ACK is the server's own; LOG_SHMFD is not offered even though the device claims it.
    expect(fe.offeredProtocolFeatures).to.equal(
      VHOST_USER_PROTOCOL_F_MQ | VHOST_USER_PROTOCOL_F_MTU | VHOST_USER_PROTOCOL_F_RARP | VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS | VHOST_USER_PROTOCOL_F_REPLY_ACK,
    );
    expect(fe.maxQueues).to.equal(2);
    expect(fe.maxMemSlots).to.equal(16);
    await fe.start();
    // The last SET_VRING_ENABLE has no ack: GET_FEATURES works as a barrier.
    await fe.getFeatures();

    const methods = device.methods();
    expect(methods.slice(0, 4)).to.deep.equal(['setProtocolFeatures', 'setOwner', 'setFeatures', 'setMemTable']);
    const perRing = ['setVringNum', 'setVringBase', 'setVringAddr', 'setVringKick', 'setVringCall'];
    for (let ring = 0; ring < 4; ring++) expect(methods.slice(4 + 5 * ring, 9 + 5 * ring)).to.deep.equal(perRing);
    expect(methods.slice(24)).to.deep.equal(['setMtu', 'setVringEnable', 'setVringEnable', 'setVringEnable', 'setVringEnable']);

    const setFeatures = device.calls.find((c) => c.method === 'setFeatures') as Call;
    expect(setFeatures.args[0]).to.equal(fe.features);
    expect(fe.features & VHOST_USER_F_PROTOCOL_FEATURES).to.equal(VHOST_USER_F_PROTOCOL_FEATURES);
    const memTable = device.calls.find((c) => c.method === 'setMemTable') as Call;
    const regions = memTable.args[0] as VhostUserMemoryRegionWithFd[];
    expect(regions).to.have.length(1);
    expect(regions[0].guestAddress).to.equal(fe.guestBase);
    expect(regions[0].userAddress).to.equal(fe.userBase);
    expect(regions[0].size).to.equal(BigInt(fe.memorySize));
    expect(device.memTableFdSizes).to.deep.equal([fe.memorySize], 'the device got a working dup of the memfd');
    const addr = device.calls.find((c) => c.method === 'setVringAddr' && (c.args[0] as VhostUserVringAddress).index === 3) as Call;
    expect((addr.args[0] as VhostUserVringAddress).descriptorUserAddress).to.equal(fe.userAddress(fe.ring(3).descGpa));
    const kick = device.calls.find((c) => c.method === 'setVringKick') as Call;
    expect(kick.args[1]).to.be.a('number').and.to.be.at.least(0);
    expect(device.calls.filter((c) => c.method === 'setVringEnable').map((c) => c.args)).to.deep.equal([[0, true], [1, true], [2, true], [3, true]]);
  });

  it('with CONFIGURE_MEM_SLOTS, hands memory over by ADD_MEM_REG as QEMU 7.2 does', async () => {
    const fe = connect();
    await fe.negotiate();
    await fe.start();
    await fe.getFeatures();
    const methods = device.methods();
    expect(methods.slice(0, 4)).to.deep.equal(['setProtocolFeatures', 'setOwner', 'setFeatures', 'addMemRegion']);
    expect(methods).to.not.include('setMemTable');
    const add = device.calls.find((c) => c.method === 'addMemRegion') as Call;
    const region = add.args[0] as VhostUserMemoryRegionWithFd;
    expect(region.guestAddress).to.equal(fe.guestBase);
    expect(region.size).to.equal(BigInt(fe.memorySize));
    expect(native.fstat(region.fd)[1]).to.equal(fe.memorySize);
  });

  it('enables every ring itself when VHOST_USER_F_PROTOCOL_FEATURES is not acked', async () => {
    const fe = connect();
    await fe.getFeatures();
    await fe.setFeatures(VIRTIO_F_VERSION_1);
    await fe.getFeatures();
    expect(device.calls.filter((c) => c.method === 'setVringEnable').map((c) => c.args)).to.deep.equal([[0, true], [1, true], [2, true], [3, true]]);
  });

  it('answers REPLY_ACK with 0 on success and non-zero on failure, and keeps serving', async () => {
    const fe = await negotiated();
    await fe.sendRequest(Request.SET_VRING_NUM, vringStateBytes(1, 256), [], true);
    expect(await fe.readAck(Request.SET_VRING_NUM)).to.equal(0n);
    device.failing.add('setVringNum');
    await fe.sendRequest(Request.SET_VRING_NUM, vringStateBytes(1, 256), [], true);
    expect(await fe.readAck(Request.SET_VRING_NUM)).to.not.equal(0n);
    expect(server.refusalCount('device_refused')).to.equal(1);
    expect(counters.get(vhostUserCounterSlots().refusals.device_refused)).to.equal(1);
    // vring index beyond 2 * queue pairs
    await fe.sendRequest(Request.SET_VRING_BASE, vringStateBytes(4, 0), [], true);
    expect(await fe.readAck(Request.SET_VRING_BASE)).to.not.equal(0n);
    expect(server.refusalCount('bad_vring_index')).to.equal(1);
    // features never offered
    await fe.sendRequest(Request.SET_FEATURES, u64Bytes(1n << 40n), [], true);
    expect(await fe.readAck(Request.SET_FEATURES)).to.not.equal(0n);
    expect(await fe.getQueueNum()).to.equal(2);
  });

  it('does not ack without REPLY_ACK negotiated, even when NEED_REPLY is set', async () => {
    const fe = connect();
    await fe.getFeatures();
    await fe.sendRequest(Request.SET_VRING_NUM, vringStateBytes(0, 256), [], true);
    // The next thing on the socket must be the GET_FEATURES reply, not an ack.
    expect(await fe.getFeatures()).to.be.a('bigint');
    expect(device.methods()).to.include('setVringNum');
  });

  it('GET_VRING_BASE returns the device base for that ring', async () => {
    const fe = await negotiated();
    await fe.setVringState(Request.SET_VRING_BASE, 2, 4242);
    expect(await fe.getVringBase(2)).to.equal(4242);
    expect(await fe.getVringBase(3)).to.equal(0);
  });

  it('passes SET_VRING_KICK/CALL/ERR with the no-fd flag as null', async () => {
    const fe = await negotiated();
    await fe.setVringFd(Request.SET_VRING_KICK, 1, null);
    await fe.setVringFd(Request.SET_VRING_CALL, 1, null);
    await fe.setVringFd(Request.SET_VRING_ERR, 0, null);
    expect(device.calls.filter((c) => c.method.startsWith('setVring')).map((c) => [c.method, ...c.args])).to.deep.equal([
      ['setVringKick', 1, null],
      ['setVringCall', 1, null],
      ['setVringErr', 0, null],
    ]);
  });

  it('handles ADD/REM_MEM_REG, SEND_RARP and NET_SET_MTU once negotiated', async () => {
    const fe = await negotiated();
    const memfd = native.memfdCreate('ferry-test-extra', 1 << 20);
    try {
      const region = { guestAddress: 0x40000000n, size: 1n << 20n, userAddress: 0x7f3300000000n, mmapOffset: 0n };
      await fe.addMemRegion(region, memfd);
      await fe.removeMemRegion(region);
      await fe.sendRequest(Request.SEND_RARP, Uint8Array.from([0x52, 0x54, 0, 1, 2, 3, 0, 0]), [], true);
      expect(await fe.readAck(Request.SEND_RARP)).to.equal(0n);
      await fe.setMtu(9000);
    } finally {
      native.close(memfd);
    }
    expect(device.methods().slice(-4)).to.deep.equal(['addMemRegion', 'removeMemRegion', 'sendRarp', 'setMtu']);
    expect(device.calls.find((c) => c.method === 'sendRarp')?.args[0]).to.deep.equal([0x52, 0x54, 0, 1, 2, 3]);
  });

  it('refuses protocol-feature-gated requests that were not negotiated', async () => {
    const fe = connect({ protocolFeatures: VHOST_USER_PROTOCOL_F_REPLY_ACK });
    await fe.negotiate();
    await fe.sendRequest(Request.NET_SET_MTU, u64Bytes(1500n), [], true);
    expect(await fe.readAck(Request.NET_SET_MTU)).to.not.equal(0n);
    expect(server.refusalCount('not_negotiated')).to.equal(1);
    // GET_MAX_MEM_SLOTS has a mandatory reply: without the feature it ends the connection.
    await fe.sendRequest(Request.GET_MAX_MEM_SLOTS);
    expect(await fe.waitForClose()).to.equal(true);
  });

  describe('malformed input', () => {
    it('a short header followed by a close: counted, no crash, next front-end served', async () => {
      const fe = connect();
      await fe.sendBytes(Uint8Array.from([1, 0, 0, 0, 1]));
      await sleep(20);
      await disconnectAndWait(fe);
      expect(server.refusalCount('truncated')).to.equal(1);
      const next = await negotiated();
      expect(next.offeredFeatures).to.not.equal(0n);
    });

    it('an oversized size closes the connection', async () => {
      const fe = connect();
      await fe.sendRaw({ request: Request.SET_FEATURES, size: 0x10000000 }, u64Bytes(0n));
      expect(await fe.waitForClose()).to.equal(true);
      expect(server.refusalCount('oversized')).to.equal(1);
      await waitFor(() => device.disconnects === 1);
      await negotiated();
    });

    it('a wrong version flag closes the connection', async () => {
      const fe = connect();
      await fe.sendRaw({ request: Request.GET_FEATURES, flags: 0x2 });
      expect(await fe.waitForClose()).to.equal(true);
      expect(server.refusalCount('bad_version')).to.equal(1);
      await negotiated();
    });

    it('a reply flag in a request closes the connection', async () => {
      const fe = connect();
      await fe.sendRaw({ request: Request.GET_FEATURES, flags: 0x5 });
      expect(await fe.waitForClose()).to.equal(true);
      expect(server.refusalCount('bad_flags')).to.equal(1);
    });

    it('a payload shorter than its type needs: failure ack with REPLY_ACK, dropped without', async () => {
      const fe = await negotiated();
      await fe.sendRaw({ request: Request.SET_VRING_NUM, flags: FLAG_VERSION | FLAG_NEED_REPLY }, new Uint8Array(4));
      expect(await fe.readAck(Request.SET_VRING_NUM)).to.not.equal(0n);
      await fe.sendRaw({ request: Request.SET_VRING_ADDR }, new Uint8Array(24));
      expect(await fe.getQueueNum()).to.equal(2, 'connection still served');
      expect(server.refusalCount('bad_size')).to.equal(2);
      expect(device.methods()).to.not.include('setVringNum');
      expect(device.methods()).to.not.include('setVringAddr');
    });

    it('a GET_* with a malformed payload closes the connection (its reply cannot be given)', async () => {
      const fe = await negotiated();
      await fe.sendRaw({ request: Request.GET_VRING_BASE }, new Uint8Array(4));
      expect(await fe.waitForClose()).to.equal(true);
      expect(server.refusalCount('bad_size')).to.equal(1);
    });

    it('missing fds: SET_MEM_TABLE without its fd and SET_VRING_KICK without fd flag are refused', async () => {
      const fe = await negotiated();
      fe.createMemory();
      await fe.sendRequest(Request.SET_MEM_TABLE, memTableBytes(fe), [], true);
      expect(await fe.readAck(Request.SET_MEM_TABLE)).to.not.equal(0n);
      await fe.sendRequest(Request.SET_VRING_KICK, u64Bytes(0n), [], true);
      expect(await fe.readAck(Request.SET_VRING_KICK)).to.not.equal(0n);
      expect(server.refusalCount('missing_fds')).to.equal(2);
      expect(device.methods()).to.not.include('setMemTable');
      expect(device.methods()).to.not.include('setVringKick');
    });

    it('extra fds are refused and closed by the server', async () => {
      const fe = await negotiated();
      await fe.getQueueNum();
      const baseline = openFdCount();
      const eventfds = [native.eventfd(0), native.eventfd(0)];
      // SET_VRING_NUM takes no fd; SET_VRING_CALL with the no-fd flag takes none either.
      await fe.sendRequest(Request.SET_VRING_NUM, vringStateBytes(0, 256), [eventfds[0]], true);
      expect(await fe.readAck(Request.SET_VRING_NUM)).to.not.equal(0n);
      await fe.sendRequest(Request.SET_VRING_CALL, u64Bytes(0x100n), eventfds, true);
      expect(await fe.readAck(Request.SET_VRING_CALL)).to.not.equal(0n);
      for (const fd of eventfds) native.close(fd);
      // The server received dups of those fds; all must be closed again.
      expect(openFdCount()).to.equal(baseline);
      expect(server.refusalCount('extra_fds')).to.equal(2);
      expect(device.ownedFds.size).to.equal(0);
    });

    it('an unknown request: failure ack when NEED_REPLY + REPLY_ACK, else the connection is closed', async () => {
      const fe = await negotiated();
      await fe.sendRaw({ request: 999, flags: FLAG_VERSION | FLAG_NEED_REPLY }, new Uint8Array(16));
      expect(await fe.readAck(999)).to.not.equal(0n);
      expect(await fe.getQueueNum()).to.equal(2);
      await fe.sendRaw({ request: 999 }, new Uint8Array(16));
      expect(await fe.waitForClose()).to.equal(true);
      expect(server.refusalCount('unknown_request')).to.equal(2);
    });

    it('a known request ferry does not offer (SET_LOG_BASE) is refused', async () => {
      const fe = await negotiated();
      await fe.sendRequest(Request.SET_LOG_BASE, new Uint8Array(16), [], true);
      expect(await fe.readAck(Request.SET_LOG_BASE)).to.not.equal(0n);
      expect(server.refusalCount('not_offered')).to.equal(1);
    });

    it('an abrupt disconnect mid-payload: no crash, the device is reset, the next front-end is served', async () => {
      const fe = await negotiated();
      fe.createMemory();
      const message = new Uint8Array(12 + 40);
      new DataView(message.buffer).setUint32(0, Request.SET_MEM_TABLE, true);
      new DataView(message.buffer).setUint32(4, FLAG_VERSION, true);
      new DataView(message.buffer).setUint32(8, 40, true);
      await fe.sendBytes(message.subarray(0, 30), [fe.memoryFd]);
      await sleep(20);
      await disconnectAndWait(fe);
      expect(server.refusalCount('truncated')).to.equal(1);
      expect(device.methods()).to.not.include('setMemTable');
      const next = connect();
      await next.negotiate();
      await next.start();
      expect(await next.getVringBase(1)).to.equal(0);
    });

    it('serves a new front-end correctly after every kind of garbage', async () => {
      const garbage: Array<(fe: VhostUserFrontend) => Promise<void>> = [
        (fe) => fe.sendRaw({ request: Request.GET_FEATURES, flags: 0 }),
        (fe) => fe.sendRaw({ request: Request.SET_FEATURES, size: 0xffffffff }),
        (fe) => fe.sendRaw({ request: 0xffffffff }),
        (fe) => fe.sendRaw({ request: Request.GET_PROTOCOL_FEATURES }, new Uint8Array(3)),
      ];
      for (const send of garbage) {
        const fe = connect();
        await send(fe);
        expect(await fe.waitForClose()).to.equal(true);
        fe.disconnect();
      }
      await waitFor(() => device.disconnects === garbage.length);
      const fe = connect({ queuePairs: 2 });
      await fe.negotiate();
      await fe.start();
      await fe.setVringState(Request.SET_VRING_BASE, 1, 7);
      expect(await fe.getVringBase(1)).to.equal(7);
    });
  });

  describe('connections', () => {
    it('serves one front-end at a time; the next waits in the backlog until the first leaves', async () => {
      const first = await negotiated();
      const second = connect();
      await second.sendRequest(Request.GET_FEATURES);
      let early: unknown = null;
      try {
        await second.readMessage(200);
      } catch (error) {
        early = error;
      }
      expect(String(early)).to.match(/timed out/);
      await disconnectAndWait(first);
      const reply = await second.readReply(Request.GET_FEATURES, 8);
      expect(reply.getBigUint64(0, true) & VHOST_USER_F_PROTOCOL_FEATURES).to.equal(VHOST_USER_F_PROTOCOL_FEATURES);
    });

    it('emits connected and disconnected, and the device gets disconnected() with its fds to close', async () => {
      const connected = once(server, 'connected');
      const fe = connect();
      await connected;
      await fe.negotiate();
      await fe.start();
      expect(device.ownedFds.size).to.be.greaterThan(0);
      const disconnected = once(server, 'disconnected');
      fe.disconnect();
      await disconnected;
      expect(device.disconnects).to.equal(1);
      expect(device.ownedFds.size).to.equal(0);
    });

    it('close() drops the front-end, resets the device and removes the socket file', async () => {
      const fe = await negotiated();
      await server.close();
      expect(fs.existsSync(socketPath)).to.equal(false);
      expect(device.disconnects).to.equal(1);
      let error: unknown = null;
      try {
        await fe.getFeatures();
      } catch (e) {
        error = e;
      }
      expect(error).to.be.instanceOf(Error);
      expect(() => VhostUserFrontend.connect(socketPath)).to.throw();
    });

    it('replaces a stale socket file but refuses a live one or a non-socket', async () => {
      expect(() => VhostUserServer.listen({ device: new RecordingDevice(), socketPath })).to.throw(/in use/);
      // A socket file nobody listens on any more (its back-end died without unlinking).
      const stalePath = path.join(dir, 'stale.sock');
      const staleFd = native.unixListen(stalePath, 1);
      native.close(staleFd);
      expect(fs.existsSync(stalePath)).to.equal(true);
      const other = VhostUserServer.listen({ device: new RecordingDevice(), socketPath: stalePath, socketMode: 0o660 });
      try {
        expect(fs.statSync(stalePath).mode & 0o777).to.equal(0o660);
        const fe = VhostUserFrontend.connect(stalePath);
        frontends.push(fe);
        expect(await fe.getFeatures()).to.be.a('bigint');
      } finally {
        await other.close();
      }
      const filePath = path.join(dir, 'plain-file');
      fs.writeFileSync(filePath, 'x');
      expect(() => VhostUserServer.listen({ device: new RecordingDevice(), socketPath: filePath })).to.throw(/not a socket/);
    });

    it('serves on an inherited listening fd', async () => {
      const inheritedPath = path.join(dir, 'inherited.sock');
      const fd = native.unixListen(inheritedPath, 4);
      const other = VhostUserServer.listen({ device: new RecordingDevice(), listenFd: fd });
      try {
        const fe = VhostUserFrontend.connect(inheritedPath);
        frontends.push(fe);
        expect(await fe.getQueueNum()).to.equal(2);
      } finally {
        await other.close();
      }
    });

    it('serves a pre-connected fd (socketpair) and accepts nothing after it leaves', async () => {
      const [ours, theirs] = native.socketpair();
      const other = VhostUserServer.listen({ device, listenFd: theirs, connected: true });
      const disconnected = once(other, 'disconnected');
      try {
        const fe = VhostUserFrontend.attach(ours);
        frontends.push(fe);
        await fe.negotiate();
        expect(fe.maxQueues).to.equal(2);
        fe.disconnect();
        await disconnected;
        expect(device.disconnects).to.equal(1);
        expect(other.connected).to.equal(false);
      } finally {
        await other.close();
      }
    });

    it('a front-end that vanishes while the device is busy does not break the server', async () => {
      const fe = await negotiated();
      const memfd = native.memfdCreate('ferry-test-extra', 1 << 20);
      const region = { guestAddress: 0x40000000n, size: 1n << 20n, userAddress: 0x7f3300000000n, mmapOffset: 0n };
      const payload = new Uint8Array(40);
      new DataView(payload.buffer).setBigUint64(8, region.guestAddress, true);
      new DataView(payload.buffer).setBigUint64(16, region.size, true);
      new DataView(payload.buffer).setBigUint64(24, region.userAddress, true);
      await fe.sendRequest(Request.ADD_MEM_REG, payload, [memfd], true);
      native.close(memfd);
      fe.disconnect(); // before the (async) device has answered
      await waitFor(() => device.disconnects === 1);
      const next = await negotiated();
      expect(await next.getQueueNum()).to.equal(2);
    });
  });

  describe('hostile fds and memory', () => {
    it('ADD_MEM_REG of a region past its file end or on a non-file fd: refused before the device, fd closed', async () => {
      const fe = await negotiated();
      const baseline = openFdCount();
      const memfd = native.memfdCreate('ferry-test-short', 4096);
      const [readEnd, writeEnd] = native.pipe();
      const region = { guestAddress: 0x40000000n, size: 1n << 21n, userAddress: 0x7f3300000000n, mmapOffset: 0n };
      expect(String(await fe.addMemRegion(region, memfd, true).catch((e: unknown) => e))).to.match(/refused/);
      expect(String(await fe.addMemRegion({ ...region, size: 4096n, mmapOffset: 4096n }, memfd, true).catch((e: unknown) => e))).to.match(/refused/);
      expect(String(await fe.addMemRegion({ ...region, size: 4096n }, readEnd, true).catch((e: unknown) => e))).to.match(/refused/);
      for (const fd of [memfd, readEnd, writeEnd]) native.close(fd);
      expect(openFdCount(), 'the server closed its copies').to.equal(baseline);
      expect(server.refusalCount('bad_fd')).to.equal(3);
      expect(device.methods()).to.not.include('addMemRegion');
    });

    it('bounds the guest memory across ADD_MEM_REG, counting a repeated region once and a removed one no more', async () => {
      await server.close();
      server = VhostUserServer.listen({ device, socketPath, counters, maxGuestMemory: 2 << 20 });
      const fe = await negotiated();
      const memfd = native.memfdCreate('ferry-test-bound', 1 << 20);
      try {
        const first = { guestAddress: 0x40000000n, size: 1n << 20n, userAddress: 0x7f3300000000n, mmapOffset: 0n };
        const second = { ...first, guestAddress: 0x50000000n, userAddress: 0x7f3400000000n };
        const third = { ...first, guestAddress: 0x60000000n, userAddress: 0x7f3500000000n };
        await fe.addMemRegion(first, memfd, true);
        await fe.addMemRegion(first, memfd, true); // QEMU 7.2 repeats it per queue pair
        await fe.addMemRegion(second, memfd, true);
        expect(String(await fe.addMemRegion(third, memfd, true).catch((e: unknown) => e))).to.match(/refused/);
        expect(server.refusalCount('memory_limit')).to.equal(1);
        await fe.removeMemRegion(second, true);
        await fe.addMemRegion(third, memfd, true);
        // A table replaces everything: two regions fit, three do not.
        await fe.sendRequest(Request.SET_MEM_TABLE, memTableBytes(fe, [first, second, third]), [memfd, memfd, memfd], true);
        expect(await fe.readAck(Request.SET_MEM_TABLE)).to.not.equal(0n);
        expect(server.refusalCount('memory_limit')).to.equal(2);
        await fe.sendRequest(Request.SET_MEM_TABLE, memTableBytes(fe, [first, second]), [memfd, memfd], true);
        expect(await fe.readAck(Request.SET_MEM_TABLE)).to.equal(0n);
      } finally {
        native.close(memfd);
      }
      expect(device.methods().filter((m) => m === 'addMemRegion' || m === 'setMemTable')).to.deep.equal(['addMemRegion', 'addMemRegion', 'addMemRegion', 'addMemRegion', 'setMemTable']);
    });

    it('kick, call and err fds must be eventfds: others are refused and closed, the device never sees them', async () => {
      const fe = await negotiated();
      const baseline = openFdCount();
      const [readEnd, writeEnd] = native.pipe();
      const memfd = native.memfdCreate('ferry-test-kick', 4096);
      const [sockA, sockB] = native.socketpair();
      for (const [request, fd] of [[Request.SET_VRING_KICK, writeEnd], [Request.SET_VRING_CALL, memfd], [Request.SET_VRING_ERR, sockA]] as const) {
        expect(String(await fe.setVringFd(request, 0, fd, true).catch((e: unknown) => e))).to.match(/refused/);
      }
      for (const fd of [readEnd, writeEnd, memfd, sockA, sockB]) native.close(fd);
      expect(openFdCount()).to.equal(baseline);
      expect(server.refusalCount('bad_fd')).to.equal(3);
      expect(device.ownedFds.size).to.equal(0);
      const kick = native.eventfd(0);
      await fe.setVringFd(Request.SET_VRING_KICK, 0, kick, true);
      native.close(kick);
      expect(device.methods()).to.include('setVringKick');
    });
  });

  it('drops a front-end that never reads its replies, without crashing', async () => {
    const fe = await negotiated();
    // Requests that each get a reply, never read: our receive buffer fills,
    // then the server's non-blocking send fails. Bounded count.
    for (let i = 0; i < 20000 && server.connected; i++) {
      try {
        await fe.sendRequest(Request.GET_QUEUE_NUM);
      } catch (error) {
        // The server may hang up between our check and the send.
        expect((error as { code?: string }).code).to.be.oneOf(['EPIPE', 'ECONNRESET']);
        break;
      }
      if (i % 256 === 0) await sleep(1);
    }
    await waitFor(() => !server.connected, 10000);
    expect(server.refusalCount('reply_failed')).to.equal(1);
    await negotiated();
  });
});

function memTableBytes(fe: VhostUserFrontend, regions: VhostUserMemoryRegion[] = [fe.memoryRegion()]): Uint8Array {
  const bytes = new Uint8Array(8 + 32 * regions.length);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, regions.length, true);
  regions.forEach((region, i) => {
    view.setBigUint64(8 + 32 * i, region.guestAddress, true);
    view.setBigUint64(16 + 32 * i, region.size, true);
    view.setBigUint64(24 + 32 * i, region.userAddress, true);
    view.setBigUint64(32 + 32 * i, region.mmapOffset, true);
  });
  return bytes;
}
