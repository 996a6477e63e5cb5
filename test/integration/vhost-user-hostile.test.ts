/**
 * A hostile vhost-user front-end against the real daemon (`node bin/ferry.js`
 * as a child process in a test namespace): guest memory larger than its fd,
 * a memfd truncated under the daemon's mappings (rings and all, or only the
 * buffers a frame points into), a table of 60 TiB, fds that
 * are not eventfds or not files, and a daemon pushed to its fd limit. After
 * each attack the daemon is alive, has closed every fd it was handed for a
 * refused message, and serves a fresh front-end (its ARP request answered).
 *
 * Only documentation addresses inside namespaces this test creates.
 */
import { expect } from 'chai';
import { type ChildProcess, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { TEST_NET, type TestNetwork, canCreateNamespaces, createTestNetwork, destroyTestNetwork, spawnIn, stopChild } from '../support/netns';
import { TEST_DRIVER_FEATURES, VhostUserFrontend } from '../support/vhost-user-frontend';
import { Request } from '../../src/backend/modes/vhost-user/protocol';
import { native } from '../../src/sys/native';
import { arpRequestForGateway, metricSum, scrape, sleep, waitFor } from '../support/e2e/daemon-probe';

const REPO_ROOT = path.resolve(__dirname, '..', '..', '..');
const GUEST_MAC = Uint8Array.from([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
const MiB = 1024 * 1024;
const TiB = 2 ** 40;

/** ferry_vhost_user_malformed_total{reason} from a scrape, summed over its blocks (workers and main). */
function refusals(text: string, reason: string): number {
  return metricSum(text, 'ferry_vhost_user_malformed_total', { reason });
}

/** Resolves with the rejection's message; fails when the promise resolves. */
async function refusal(work: Promise<unknown>): Promise<string> {
  try {
    await work;
  } catch (error) {
    return String(error);
  }
  throw new Error('expected the back-end to refuse');
}

/** Wait for a request whatever the back-end answers (accepted or refused both are fine there). */
async function settle(work: Promise<unknown>): Promise<void> {
  await work.catch(() => undefined);
}

/** The targets of a process's open fds. */
function fdTargets(pid: number): string[] {
  const dir = `/proc/${pid}/fd`;
  const out: string[] = [];
  for (const name of fs.readdirSync(dir)) {
    try {
      out.push(fs.readlinkSync(path.join(dir, name)));
    } catch {
      // closed while listing
    }
  }
  return out;
}

/**
 * True once no process but us holds the write end of the pipe whose read end
 * is `readFd` (we closed ours): a read then sees EOF. Polls up to 3 s.
 */
async function writeEndClosedElsewhere(readFd: number): Promise<boolean> {
  const buffer = new Uint8Array(1);
  const deadline = Date.now() + 3000;
  while (Date.now() < deadline) {
    if (native.read(readFd, buffer, 0, 1) === 0) return true;
    await sleep(20);
  }
  return false;
}

describe('vhost-user: a hostile front-end against the real daemon', function () {
  this.timeout(60000);
  let net: TestNetwork | null = null;
  let dir: string;
  let socketPath: string;
  let metricsPath: string;
  let daemon: ChildProcess;
  let daemonLog = '';
  const frontends: VhostUserFrontend[] = [];
  const ownFds: number[] = [];

  function alive(): boolean {
    return daemon.exitCode === null && daemon.signalCode === null;
  }

  function connect(): VhostUserFrontend {
    const fe = VhostUserFrontend.connect(socketPath, { queuePairs: 1, queueSize: 256, slotSize: 2048, replyTimeoutMs: 5000 });
    frontends.push(fe);
    return fe;
  }

  function track(fd: number): number {
    ownFds.push(fd);
    return fd;
  }

  /** The daemon's pid as the kernel reports it for our connection. */
  function daemonPid(fe: VhostUserFrontend): number {
    return native.peerCred(fe.fd)[0];
  }

  /** Negotiate and acknowledge features, as QEMU does before handing over memory. */
  async function negotiated(): Promise<VhostUserFrontend> {
    const fe = connect();
    await fe.negotiate();
    await fe.setFeatures(fe.offeredFeatures & TEST_DRIVER_FEATURES);
    return fe;
  }

  /** A fresh, well-behaved front-end gets its ARP request for the gateway answered. */
  async function expectServed(): Promise<void> {
    expect(alive(), 'the daemon is alive').to.equal(true);
    const fe = connect();
    await fe.negotiate();
    await fe.start();
    fe.provideRxBuffers(32);
    fe.sendFrame(0, arpRequestForGateway(GUEST_MAC));
    for (let attempt = 0; attempt < 50; attempt++) {
      const received = await fe.waitForRxFrame(5000);
      expect(received, 'an RX frame').to.not.equal(null);
      const frame = (received as { frame: Uint8Array }).frame;
      if (frame[12] !== 0x08 || frame[13] !== 0x06) continue; // e.g. a router advertisement
      expect(frame[21]).to.equal(2, 'ARP reply');
      fe.disconnect();
      await sleep(100);
      return;
    }
    throw new Error('no ARP reply among the RX frames');
  }

  before(async function () {
    if (!canCreateNamespaces()) this.skip();
    if (!fs.existsSync(path.join(REPO_ROOT, 'bin', 'ferry.js'))) this.skip();
    net = await createTestNetwork();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-hostile-'));
    socketPath = path.join(dir, 'vhost.sock');
    metricsPath = path.join(dir, 'metrics.sock');
    // --runas 0: the fd-limit case lowers the daemon's RLIMIT_NOFILE from outside (prlimit), which a daemon that became nobody refuses.
    daemon = spawnIn(net.ns, [process.execPath, path.join(REPO_ROOT, 'bin', 'ferry.js'), '--runas', '0', '--socket-path', socketPath, '--metrics', `unix:${metricsPath}`], {
      cwd: REPO_ROOT,
    });
    daemon.stdout?.on('data', (chunk: Buffer) => (daemonLog += chunk.toString()));
    daemon.stderr?.on('data', (chunk: Buffer) => (daemonLog += chunk.toString()));
    await waitFor(() => fs.existsSync(socketPath) && fs.existsSync(metricsPath), 15000, 'the daemon to listen').catch((error) => {
      throw new Error(`${String(error)}; daemon output:\n${daemonLog}`);
    });
  });

  afterEach(async function () {
    for (const fe of frontends.splice(0)) fe.disconnect();
    for (const fd of ownFds.splice(0)) {
      try {
        native.close(fd);
      } catch {
        // already closed by the test
      }
    }
    if (this.currentTest?.state === 'failed') process.stderr.write(`daemon output:\n${daemonLog}\n`);
    await sleep(100);
  });

  after(async () => {
    if (daemon !== undefined) await stopChild(daemon, 3000);
    if (net !== null) await destroyTestNetwork(net);
    if (dir !== undefined) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('a 2 MiB region on a 4 KiB memfd is refused; a ring past the file end and a kick do not kill the daemon', async () => {
    const before = await scrape(metricsPath);
    const fe = await negotiated();
    const name = `ferry-hostile-small-${process.pid}`;
    const memfd = track(native.memfdCreate(name, 4096));
    const region = { guestAddress: 0x100000n, size: 2n * BigInt(MiB), userAddress: 0x7f1200000000n, mmapOffset: 0n };
    expect(await refusal(fe.setMemTable([region], [memfd], true))).to.match(/refused/);
    // The ring at 1 MiB into the region lies far past the 4 KiB file: refused or never touched.
    await settle(fe.setVringState(Request.SET_VRING_NUM, 1, 256));
    await settle(fe.setVringState(Request.SET_VRING_BASE, 1, 0));
    const ringAt = region.userAddress + BigInt(MiB);
    await settle(fe.setVringAddr({ index: 1, flags: 0, descriptorUserAddress: ringAt, availableUserAddress: ringAt + 4096n, usedUserAddress: ringAt + 8192n, logGuestAddress: 0n }));
    const kick = track(native.eventfd(0));
    await settle(fe.setVringFd(Request.SET_VRING_KICK, 1, kick));
    await settle(fe.setVringState(Request.SET_VRING_ENABLE, 1, 1));
    native.eventfdWrite(kick, 1);
    await sleep(300);
    expect(alive(), 'the daemon survives the kick').to.equal(true);
    // The refused region's fd is not kept.
    expect(fdTargets(daemonPid(fe)).filter((t) => t.includes(name))).to.deep.equal([]);
    const after = await scrape(metricsPath);
    expect(refusals(after, 'bad_fd') - refusals(before, 'bad_fd')).to.equal(1);
    await waitFor(() => /region needs file bytes up to 2097152, the file has 4096/.test(daemonLog), 3000, 'the refusal in the log');
    fe.disconnect();
    await sleep(100);
    await expectServed();
  });

  it('the front-end truncates its memfd after SET_MEM_TABLE and kicks: the daemon survives', async () => {
    const fe = connect();
    await fe.negotiate();
    await fe.start();
    fe.provideRxBuffers(32);
    fe.sendFrame(0, arpRequestForGateway(GUEST_MAC));
    expect(await fe.waitForRxFrame(5000), 'served before the attack').to.not.equal(null);
    // The test front-end's memfd is not sealable (no MFD_ALLOW_SEALING), so the shrink goes through.
    fs.ftruncateSync(fe.memoryFd, 0);
    expect(fs.fstatSync(fe.memoryFd).size).to.equal(0);
    for (let i = 0; i < 5; i++) {
      fe.kick(1);
      fe.kick(0);
      await sleep(50);
    }
    await sleep(300);
    expect(alive(), 'no SIGBUS killed the daemon').to.equal(true);
    // The worker saw the fault and stopped the rings rather than reading zeros on.
    await waitFor(() => /guest memory faulted under the ring .*\(memory_fault\)/.test(daemonLog), 3000, 'the rings stopped for the memory fault');
    // The daemon still answers on the same connection.
    await fe.setVringState(Request.SET_VRING_ENABLE, 1, 1);
    fe.disconnect();
    await sleep(100);
    await expectServed();
  });

  it('rings intact but buffers truncated away: a frame whose payload lies past the file end, then RX into vanished buffers', async () => {
    const fe = connect();
    await fe.negotiate();
    await fe.start();
    fe.provideRxBuffers(32);
    fe.sendFrame(0, arpRequestForGateway(GUEST_MAC));
    let gatewayMac: Uint8Array | null = null;
    for (let attempt = 0; attempt < 50 && gatewayMac === null; attempt++) {
      const received = await fe.waitForRxFrame(5000);
      expect(received, 'an RX frame').to.not.equal(null);
      const frame = (received as { frame: Uint8Array }).frame;
      if (frame[12] === 0x08 && frame[13] === 0x06) gatewayMac = frame.slice(6, 12);
    }
    expect(gatewayMac, 'the gateway MAC from its ARP reply').to.not.equal(null);
    // Keep the first 64 KiB (the rings), drop everything after it.
    const kept = 64 * 1024;
    fs.ftruncateSync(fe.memoryFd, kept);
    const base = Number(fe.guestBase);
    const headerGpa = base + kept - 4096;
    const payloadGpa = base + kept + 0x10000;
    // virtio-net header + Ethernet + IPv4 + UDP to the namespace's server, in memory that is still there.
    const header = new Uint8Array(12 + 14 + 20 + 8);
    const ip = (text: string) => text.split('.').map(Number);
    header.set(gatewayMac as Uint8Array, 12);
    header.set(GUEST_MAC, 18);
    header.set([0x08, 0x00], 24);
    const payloadLength = 512;
    const v4 = new DataView(header.buffer, 26, 20);
    v4.setUint8(0, 0x45);
    v4.setUint16(2, 20 + 8 + payloadLength);
    v4.setUint8(8, 64);
    v4.setUint8(9, 17);
    header.set(ip(TEST_NET.hostV4), 26 + 12);
    header.set(ip(TEST_NET.serverV4), 26 + 16);
    let sum = 0;
    for (let i = 0; i < 20; i += 2) sum += v4.getUint16(i);
    while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
    v4.setUint16(10, ~sum & 0xffff);
    const udp = new DataView(header.buffer, 46, 8);
    udp.setUint16(0, 40000);
    udp.setUint16(2, 9);
    udp.setUint16(4, 8 + payloadLength);
    (fe.arena as NonNullable<typeof fe.arena>).write(headerGpa, header);
    const tx = fe.ring(1);
    for (let i = 0; i < 4; i++) {
      tx.addChain([{ gpa: headerGpa, length: header.length, writable: false }, { gpa: payloadGpa, length: payloadLength, writable: false }]);
    }
    tx.publish();
    fe.kick(1);
    // RX buffers in the vanished part: whatever the daemon writes there goes to zero pages.
    const rx = fe.ring(0);
    for (let i = 0; i < 8; i++) rx.addChain([{ gpa: payloadGpa + 4096 * i, length: 2048, writable: true }]);
    rx.publish();
    fe.kick(0);
    await sleep(500);
    expect(alive(), 'the daemon survives').to.equal(true);
    // The datagrams were handled (their payload read as zeros), not a reason to die.
    const metrics = await scrape(metricsPath);
    expect(metrics).to.match(/ferry_udp_events_total\{[^}]*event="datagram_from_guest"\} [1-9]/);
    fe.disconnect();
    await sleep(100);
    await expectServed();
  });

  it('60 TiB of guest memory is refused at once, on a 4 KiB memfd and on a sparse 60 TiB one', async () => {
    const before = await scrape(metricsPath);
    const fe = await negotiated();
    const small = track(native.memfdCreate('ferry-hostile-huge', 4096));
    const huge = { guestAddress: 0x100000n, size: BigInt(60 * TiB), userAddress: 0x7f1200000000n, mmapOffset: 0n };
    // Within the front-end's reply deadline (5 s): nothing is mapped chunk by chunk.
    expect(await refusal(fe.setMemTable([huge], [small], true))).to.match(/refused/);
    const sparse = track(native.memfdCreate('ferry-hostile-sparse', 60 * TiB));
    expect(await refusal(fe.setMemTable([huge], [sparse], true))).to.match(/refused/);
    // Two regions each under the bound, together above it.
    const half = { ...huge, size: BigInt(TiB / 2 + 4096) };
    const second = { ...half, guestAddress: half.guestAddress + half.size, userAddress: half.userAddress + half.size };
    expect(await refusal(fe.setMemTable([half, second], [sparse, sparse], true))).to.match(/refused/);
    expect(alive()).to.equal(true);
    const after = await scrape(metricsPath);
    expect(refusals(after, 'memory_limit') - refusals(before, 'memory_limit')).to.equal(3);
    fe.disconnect();
    await sleep(100);
    await expectServed();
  });

  it('kick, call and err fds that are not eventfds are refused, and every fd of a refused message is closed', async () => {
    const before = await scrape(metricsPath);
    const fe = await negotiated();
    fe.createMemory();
    await fe.setMemTable([fe.memoryRegion()], [fe.memoryFd], true);
    let refused = 0;
    for (const request of [Request.SET_VRING_KICK, Request.SET_VRING_CALL, Request.SET_VRING_ERR]) {
      const [readEnd, writeEnd] = native.pipe();
      track(readEnd);
      expect(await refusal(fe.setVringFd(request, 0, writeEnd, true))).to.match(/refused/);
      refused++;
      native.close(writeEnd);
      expect(await writeEndClosedElsewhere(readEnd), `the daemon closed the pipe it got with request ${request}`).to.equal(true);
    }
    const memfdName = `ferry-hostile-kick-${process.pid}`;
    const memfd = track(native.memfdCreate(memfdName, 4096));
    expect(await refusal(fe.setVringFd(Request.SET_VRING_KICK, 1, memfd, true))).to.match(/refused/);
    refused++;
    // A pipe as a memory region: not a file.
    const [regionRead, regionWrite] = native.pipe();
    track(regionRead);
    expect(await refusal(fe.setMemTable([fe.memoryRegion()], [regionWrite], true))).to.match(/refused/);
    refused++;
    native.close(regionWrite);
    expect(await writeEndClosedElsewhere(regionRead), 'the daemon closed the pipe it got as a region').to.equal(true);
    expect(fdTargets(daemonPid(fe)).filter((t) => t.includes(memfdName))).to.deep.equal([]);
    // A real eventfd is still taken on the same connection.
    const kick = track(native.eventfd(0));
    await fe.setVringFd(Request.SET_VRING_KICK, 0, kick, true);
    const after = await scrape(metricsPath);
    expect(refusals(after, 'bad_fd') - refusals(before, 'bad_fd')).to.equal(refused);
    await waitFor(() => /SET_VRING_KICK: fd is pipe:\[\d+\], not an eventfd/.test(daemonLog), 3000, 'the refusal in the log');
    fe.disconnect();
    await sleep(100);
    await expectServed();
  });

  it('at its fd limit the daemon refuses a message naming the fd limit, and serves again once fds are free', async function () {
    const fe = await negotiated();
    const pid = daemonPid(fe);
    const limits = fs.readFileSync(`/proc/${pid}/limits`, 'utf8').split('\n').find((l) => l.startsWith('Max open files'));
    const softLimit = Number((limits ?? '').split(/\s+/)[3]);
    expect(softLimit).to.be.greaterThan(0);
    const setSoftLimit = (n: number): void => {
      const r = spawnSync('prlimit', ['--pid', String(pid), `--nofile=${n}:`], { encoding: 'utf8', timeout: 5000 });
      if (r.status !== 0) throw new Error(`prlimit failed: ${r.stderr || String(r.error)}`);
    };
    /** New fds take the lowest free number, and the limit bounds that number: set it there. */
    const limitAtLowestFree = (): void => {
      const open = new Set(fs.readdirSync(`/proc/${pid}/fd`).map(Number));
      let lowestFree = 0;
      while (open.has(lowestFree)) lowestFree++;
      setSoftLimit(lowestFree);
    };
    const kick = track(native.eventfd(0));
    const logBefore = daemonLog.length;
    let waiting: VhostUserFrontend | null = null;
    limitAtLowestFree();
    try {
      await fe.sendRequest(Request.SET_VRING_KICK, new Uint8Array(8), [kick], true);
      expect(await fe.waitForClose(5000), 'the connection is closed: the message lost its fds').to.equal(true);
      fe.disconnect();
      await waitFor(() => /disconnected \(the daemon is at its fd limit/.test(daemonLog.slice(logBefore)), 3000, 'the drop');
      // The dropped connection freed an fd: at the limit again, the next front-end cannot be accepted yet.
      limitAtLowestFree();
      waiting = connect();
      await waitFor(() => /cannot accept a front-end: the daemon is at its fd limit/.test(daemonLog.slice(logBefore)), 3000, 'accept to fail');
    } finally {
      setSoftLimit(softLimit);
    }
    expect(alive()).to.equal(true);
    // Accepted on a retry once fds are free again, and served.
    await waiting.negotiate();
    expect(daemonLog.slice(logBefore)).to.not.match(/more than \d+ fds with one message/);
    const metrics = await scrape(metricsPath);
    expect(refusals(metrics, 'fd_limit')).to.be.at.least(2);
    expect(refusals(metrics, 'fd_overflow')).to.equal(0);
    waiting.disconnect();
    await sleep(100);
    await expectServed();
  });
});
