/**
 * Checksum offload between ferry and the guest:
 *   - VirtioNetPort.checksumOffload follows VIRTIO_NET_F_GUEST_CSUM through
 *     the constructor and setFeatures; NetDevice offers CSUM and GUEST_CSUM;
 *   - TCP segments (real sockets over the host loopback, reached through the
 *     gateway mapping) and UDP datagrams (fake sockets) to the guest: with a
 *     port without the capability they carry complete checksums and no
 *     offload; with it they are committed NEEDS_CSUM with csum_start /
 *     csum_offset at their checksum and a partial checksum there (the folded
 *     pseudo-header sum, so the payload is not summed), which completed the
 *     way virtio says gives a correct checksum;
 *     the IPv4 header checksum is always complete;
 *   - guest UDP with a wrong checksum is dropped unless marked NEEDS_CSUM.
 */
import { expect } from 'chai';
import * as net from 'net';
import { createHash } from 'crypto';
import type { IoVecList } from '../../../src/sys/native';
import { CounterBlock } from '../../../src/sys/counters';
import { NetDevice } from '../../../src/backend/modes/vhost-user/net-device';
import { VirtioNetPort } from '../../../src/virtqueue/virtio-net-port';
import { GuestMemory } from '../../../src/virtqueue/guest-memory';
import { SplitRing } from '../../../src/virtqueue/split-ring';
import { VIRTIO_F_VERSION_1, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_MRG_RXBUF, hasFeature } from '../../../src/virtqueue/features';
import { VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM } from '../../../src/virtqueue/virtio-net-header';
import { OFFLOAD_F_DATA_VALID, OFFLOAD_F_NEEDS_CSUM, type OffloadInfo } from '../../../src/io/frame-io';
import type { FdWatcher, ReadyHandler } from '../../../src/stack/context';
import { Stack } from '../../../src/stack/stack';
import { DROP_SLOTS, DropReason } from '../../../src/stack/drops';
import { COPY_THRESHOLD, UdpService, type UdpSockets } from '../../../src/stack/udp/udp';
import { FlowTable } from '../../../src/stack/flow/flow-table';
import { be16, finishChecksum, foldSum, pseudoHeaderSumIpv4, pseudoHeaderSumIpv6, setBe16, sumBytes } from '../../../src/stack/wire/checksum';
import {
  FakeFramePort, GATEWAY_V4, GUEST_MAC, GUEST_V4, GUEST_V6, NO_OFFLOAD, OUR_MAC,
  ethernetFrame, ipv4Packet, ipv6Packet, segmentsOf, testConfig, udpDatagram,
} from '../../support/fakes/stack-fakes';
import { FakeGuestTcp, TcpHarness, patternBytes, sha256 } from '../../support/fakes/tcp-guest';

const SERVER_V4 = Uint8Array.of(203, 0, 113, 9);
const SERVER_V6 = Uint8Array.from(Buffer.from('20010db8000000000000000000000099', 'hex'));
const EPOLLIN = 1;

/** Where a frame's L4 message starts and how long it is, and its pseudo-header sum; null for non-IP. */
function l4Of(frame: Uint8Array, protocol: number): { l4: number; length: number; pseudo: number } | null {
  const etherType = (frame[12] << 8) | frame[13];
  if (etherType === 0x0800 && frame[23] === protocol) {
    const ihl = (frame[14] & 15) * 4;
    const length = ((frame[16] << 8) | frame[17]) - ihl;
    return { l4: 14 + ihl, length, pseudo: pseudoHeaderSumIpv4(frame, 26, frame, 30, protocol, length) };
  }
  if (etherType === 0x86dd && frame[20] === protocol) {
    const length = (frame[18] << 8) | frame[19];
    return { l4: 54, length, pseudo: pseudoHeaderSumIpv6(frame, 22, frame, 38, protocol, length) };
  }
  return null;
}

/** What a recording port saw of the frames committed to it. */
interface Seen {
  /** Frames committed with a partial checksum (NEEDS_CSUM). */
  partial: number;
  /** Frames committed without offload. */
  plain: number;
  /** Frames committed NEEDS_CSUM whose checksum did not also cover the payload (payload was not summed). */
  payloadLeftOut: number;
  /** Problems found (checked in the tests). */
  errors: string[];
}

/**
 * Make `port` claim (or not) checksum offload and check every committed
 * frame: IPv4 header checksum complete; without offload the L4 checksum
 * complete; with NEEDS_CSUM it is the folded pseudo-header sum at
 * csum_start + csum_offset, and is then completed in the recorded copy the
 * way a virtio driver would (sum from csum_start, stored at the offset), so
 * the test's guest, which verifies every checksum, checks the result.
 */
function recordOffload(port: FakeFramePort, offloading: boolean, protocol: number): Seen {
  const seen: Seen = { partial: 0, plain: 0, payloadLeftOut: 0, errors: [] };
  Object.defineProperty(port, 'checksumOffload', { value: offloading });
  const commit = port.commit.bind(port);
  port.commit = (length: number, offload?: OffloadInfo): void => {
    commit(length, offload);
    const frame = port.frames[port.frames.length - 1];
    const at = l4Of(frame, protocol);
    if (at === null) return;
    if (frame[12] === 0x08 && finishChecksum(sumBytes(frame, 14, (frame[14] & 15) * 4)) !== 0) seen.errors.push('IPv4 header checksum');
    const checksumAt = at.l4 + (protocol === 6 ? 16 : 6);
    const headerLength = protocol === 6 ? (frame[at.l4 + 12] >>> 4) * 4 : 8;
    const complete = finishChecksum(sumBytes(frame, at.l4, at.length, at.pseudo)) === 0;
    if (offload === undefined || offload.flags === 0) {
      seen.plain++;
      if (!complete) seen.errors.push('incomplete checksum without offload');
      return;
    }
    if (offload.flags !== OFFLOAD_F_NEEDS_CSUM) seen.errors.push(`offload flags ${offload.flags}`);
    if (offload.csumStart !== at.l4 || offload.csumOffset !== checksumAt - at.l4) seen.errors.push(`csum_start/offset ${offload.csumStart}/${offload.csumOffset}`);
    seen.partial++;
    if (be16(frame, checksumAt) !== foldSum(at.pseudo)) seen.errors.push('partial checksum is not the folded pseudo-header sum');
    if (at.length > headerLength && !complete) seen.payloadLeftOut++;
    // Complete it as a driver would (virtio 5.1.6.2: sum from csum_start, the partial value included).
    const full = finishChecksum(sumBytes(frame, offload.csumStart, at.length, 0));
    setBe16(frame, checksumAt, protocol === 17 && full === 0 ? 0xffff : full);
  };
  return seen;
}

describe('checksum offload: capability', () => {
  function port(features: bigint): VirtioNetPort {
    const memory = new GuestMemory([{ guestPhysAddr: 0, size: 4096, userAddr: 0, mmapOffset: 0, chunks: [new ArrayBuffer(4096)], chunkSize: 4096 }]);
    const ring = (): SplitRing => new SplitRing(memory, { fence: () => undefined });
    return new VirtioNetPort({ rx: ring(), tx: ring(), features, counters: new CounterBlock(), notifyRx: () => undefined, notifyTx: () => undefined });
  }

  it('VirtioNetPort reports checksumOffload exactly when GUEST_CSUM is negotiated, following setFeatures', () => {
    const p = port(VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF);
    expect(p.checksumOffload).to.equal(false);
    p.setFeatures(VIRTIO_F_VERSION_1 | VIRTIO_NET_F_GUEST_CSUM);
    expect(p.checksumOffload).to.equal(true);
    // CSUM alone is about the other direction.
    p.setFeatures(VIRTIO_F_VERSION_1 | VIRTIO_NET_F_CSUM);
    expect(p.checksumOffload).to.equal(false);
    p.setFeatures(0n);
    expect(p.checksumOffload).to.equal(false);
    expect(port(VIRTIO_NET_F_GUEST_CSUM).checksumOffload).to.equal(true);
  });

  it('NetDevice offers CSUM and GUEST_CSUM; the stack flag values are virtio\'s', () => {
    const features = new NetDevice([], { queuePairs: 1, mtu: 65520 }).getFeatures();
    expect(hasFeature(features, VIRTIO_NET_F_CSUM)).to.equal(true);
    expect(hasFeature(features, VIRTIO_NET_F_GUEST_CSUM)).to.equal(true);
    expect(OFFLOAD_F_NEEDS_CSUM).to.equal(VIRTIO_NET_HDR_F_NEEDS_CSUM);
    expect(OFFLOAD_F_DATA_VALID).to.equal(VIRTIO_NET_HDR_F_DATA_VALID);
  });
});

/** UDP sockets faked: one flow socket whose queued datagrams recvmsg returns. */
class QueueSockets implements UdpSockets {
  nextFd = 100;
  queued: Uint8Array[] = [];
  sent: Buffer[] = [];
  socket(): number {
    return this.nextFd++;
  }
  bind(): void {}
  connect(): number {
    return 0;
  }
  close(): void {}
  setsockoptInt(): void {}
  setsockoptBytes(): void {}
  sendmsg(_fd: number, iov: IoVecList): number {
    const parts: Buffer[] = [];
    for (let i = 0; i < iov.count; i++) parts.push(Buffer.from((iov.buffers[i] as Uint8Array).subarray(iov.offsets[i], iov.offsets[i] + iov.lengths[i])));
    const data = Buffer.concat(parts);
    this.sent.push(data);
    return data.length;
  }
  ioctlInt(): number {
    return this.queued.length > 0 ? this.queued[0].length : 0;
  }
  recvmsg(_fd: number, iov: IoVecList, _flags: number, _from: Uint8Array | null, meta: Int32Array): number {
    const datagram = this.queued.shift();
    if (datagram === undefined) return -1;
    let at = 0;
    for (let i = 0; i < iov.count && at < datagram.length; i++) {
      const n = Math.min(iov.lengths[i], datagram.length - at);
      (iov.buffers[i] as Uint8Array).set(datagram.subarray(at, at + n), iov.offsets[i]);
      at += n;
    }
    meta[1] = 0;
    return at;
  }
  recvmmsg(_fd: number, iov: IoVecList, lengths: Int32Array, _addrs: Uint8Array[] | null, _addrLengths: Int32Array | null, count: number, _flags: number, flagsOut?: Int32Array | null): number {
    let n = 0;
    for (; n < count && this.queued.length > 0; n++) {
      const datagram = this.queued.shift() as Uint8Array;
      (iov.buffers[n] as Uint8Array).set(datagram.subarray(0, iov.lengths[n]), iov.offsets[n]);
      lengths[n] = Math.min(datagram.length, iov.lengths[n]);
      if (flagsOut) flagsOut[n] = 0;
    }
    return n > 0 ? n : -1;
  }
  recvErrqueue(): number {
    return -1;
  }
}

class NoWatcher implements FdWatcher {
  watch(_fd: number, _events: number, _handler: ReadyHandler): void {}
  modify(): void {}
  unwatch(): void {}
}

function udpRig(offloading: boolean, segmentSizes?: number[]): { stack: Stack; udp: UdpService; sockets: QueueSockets; port: FakeFramePort; seen: Seen; counters: CounterBlock } {
  const config = testConfig();
  const counters = new CounterBlock();
  const port = new FakeFramePort(segmentSizes);
  const seen = recordOffload(port, offloading, 17);
  const stack = new Stack({ config, port, counters, watcher: new NoWatcher(), sockets: null });
  const sockets = new QueueSockets();
  const udp = new UdpService(stack.ctx, { sockets, flows: new FlowTable(16, counters) });
  stack.udpHandler = udp;
  return { stack, udp, sockets, port, seen, counters };
}

function guestUdp(family: 4 | 6, data: Uint8Array, edit?: (udp: Uint8Array) => void): Uint8Array {
  const src = family === 4 ? GUEST_V4 : GUEST_V6;
  const dst = family === 4 ? SERVER_V4 : SERVER_V6;
  const udp = udpDatagram(src, dst, 40000, 5000, data);
  edit?.(udp);
  return family === 4
    ? ethernetFrame(OUR_MAC, GUEST_MAC, 0x0800, ipv4Packet(src, dst, 17, udp))
    : ethernetFrame(OUR_MAC, GUEST_MAC, 0x86dd, ipv6Packet(src, dst, 17, udp));
}

describe('checksum offload: UDP to the guest', () => {
  for (const family of [4, 6] as const) {
    for (const offloading of [false, true]) {
      it(`IPv${family}, port ${offloading ? 'with' : 'without'} offload: replies ${offloading ? 'NEEDS_CSUM with a partial checksum' : 'with complete checksums'}`, () => {
        // Split RX buffers too: the headers then go through scratch.
        for (const sizes of [undefined, [30, 40, 20000]]) {
          const rig = udpRig(offloading, sizes);
          rig.stack.receiveFrame(segmentsOf(guestUdp(family, patternBytes(64, 3))), NO_OFFLOAD);
          expect(rig.sockets.sent.length, 'datagram sent to the host').to.equal(1);
          // One above COPY_THRESHOLD (read into its reservation), two batched (recvmmsg, copied).
          const replies = [patternBytes(COPY_THRESHOLD + 808, 5), patternBytes(1, 6), new Uint8Array(0)];
          rig.sockets.queued.push(...replies);
          rig.udp.onReady(100, EPOLLIN);
          expect(rig.seen.errors).to.deep.equal([]);
          expect(rig.port.frames.length).to.equal(3);
          if (offloading) {
            expect(rig.seen.partial).to.equal(3);
            expect(rig.seen.plain).to.equal(0);
            // The large datagram's checksum left its (pattern) payload out.
            expect(rig.seen.payloadLeftOut).to.be.at.least(1);
          } else {
            expect(rig.seen.plain).to.equal(3);
            expect(rig.seen.partial).to.equal(0);
          }
          // The data arrived intact either way.
          const headers = family === 4 ? 42 : 62;
          rig.port.frames.forEach((frame, i) => expect(Array.from(frame.subarray(headers))).to.deep.equal(Array.from(replies[i])));
        }
      });
    }
  }
});

describe('checksum offload: guest frames marked NEEDS_CSUM', () => {
  for (const family of [4, 6] as const) {
    it(`IPv${family}: a wrong UDP checksum is dropped, but not verified when the guest marked it partial`, () => {
      const rig = udpRig(true);
      const bad = guestUdp(family, patternBytes(100, 9), (udp) => setBe16(udp, 6, 0x1234));
      rig.stack.receiveFrame(segmentsOf(bad), NO_OFFLOAD);
      expect(rig.sockets.sent.length).to.equal(0);
      expect(rig.counters.get(DROP_SLOTS[DropReason.UdpBadChecksum])).to.equal(1);
      const l4 = family === 4 ? 34 : 54;
      const partial: OffloadInfo = { flags: OFFLOAD_F_NEEDS_CSUM, gsoType: 0, hdrLen: 0, gsoSize: 0, csumStart: l4, csumOffset: 6 };
      rig.stack.receiveFrame(segmentsOf(bad), partial);
      expect(rig.sockets.sent.length).to.equal(1);
      expect(Array.from(rig.sockets.sent[0])).to.deep.equal(Array.from(patternBytes(100, 9)));
    });
  }
});

describe('checksum offload: TCP to the guest (real sockets on the host loopback)', function () {
  this.timeout(60_000);
  let harness: TcpHarness | null = null;
  let server: net.Server | null = null;
  const sockets: net.Socket[] = [];

  afterEach(async () => {
    harness?.close();
    harness = null;
    for (const s of sockets.splice(0)) s.destroy();
    if (server !== null) await new Promise((r) => server!.close(() => r(undefined)));
    server = null;
  });

  for (const offloading of [false, true]) {
    it(`port ${offloading ? 'with' : 'without'} offload: 2 MiB download and 256 KiB upload intact, segments ${offloading ? 'NEEDS_CSUM with partial checksums' : 'with complete checksums'}`, async () => {
      const down = patternBytes(2 * 1024 * 1024, 21);
      const up = patternBytes(256 * 1024, 22);
      const upload = { bytes: 0, hash: '' };
      server = net.createServer({ allowHalfOpen: true }, (socket) => {
        sockets.push(socket);
        const h = createHash('sha256');
        socket.on('data', (d: Buffer) => {
          h.update(d);
          upload.bytes += d.length;
        });
        socket.on('end', () => {
          upload.hash = h.digest('hex');
          socket.end(Buffer.from(down));
        });
        socket.on('error', () => undefined);
      });
      await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', resolve));
      const port = (server.address() as net.AddressInfo).port;
      // Small split RX buffers for one run: headers written through scratch.
      const h = new TcpHarness({}, {}, offloading ? [40, 9000, 9000, 9000, 9000, 9000, 9000, 9000] : undefined);
      harness = h;
      const seen = recordOffload(h.port, offloading, 6);
      const g = new FakeGuestTcp(h, { remote: GATEWAY_V4, remotePort: port, guestPort: 41000 });
      g.connect();
      await h.until(() => g.established, 5000, 'handshake');
      g.write(up);
      g.end();
      await h.until(() => g.finReceived && g.finAcked, 30_000, 'both FINs');
      expect(upload.bytes).to.equal(up.length);
      expect(upload.hash).to.equal(sha256(up));
      expect(g.received).to.equal(down.length);
      expect(g.digest()).to.equal(sha256(down));
      expect(seen.errors).to.deep.equal([]);
      if (offloading) {
        expect(seen.plain).to.equal(0);
        expect(seen.partial).to.be.greaterThan(10);
        // With 2 MiB of pattern bytes a complete checksum by chance would be one in 65535 per segment.
        expect(seen.payloadLeftOut).to.be.greaterThan(10);
      } else {
        expect(seen.partial).to.equal(0);
        expect(seen.plain).to.be.greaterThan(10);
      }
    });
  }
});
