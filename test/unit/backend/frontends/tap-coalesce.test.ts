/**
 * Coalescing TCP segments to the namespace into GSO tap frames
 * (tap-coalesce.ts through TapPort): which frames merge, what the merged
 * frame and its virtio-net header look like, and that splitting it the way
 * the kernel does gives back exactly the segments the stack committed.
 */
import { expect } from 'chai';
import { CounterBlock } from '../../../../src/sys/counters';
import { native } from '../../../../src/sys/native';
import type { FdWatcher, ReadyHandler } from '../../../../src/stack/context';
import { be16, be32, finishChecksum, foldSum, internetChecksum, pseudoHeaderSumIpv4, pseudoHeaderSumIpv6, setBe16, setBe32, sumBytes } from '../../../../src/stack/wire/checksum';
import { PORT_COUNTERS } from '../../../../src/virtqueue/virtio-net-port';
import { TAP_COALESCE, TAP_VNET_HDR_LENGTH, TapPort } from '../../../../src/backend/frontends/tap-port';
import { VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6 } from '../../../../src/backend/frontends/tap-coalesce';

const watcher: FdWatcher = { watch: (_fd: number, _e: number, _h: ReadyHandler) => undefined, modify: () => undefined, unwatch: () => undefined };
const open: number[] = [];

function setup(coalesce = true) {
  const [tapFd, peer] = native.socketpair(native.constants.SOCK_SEQPACKET);
  open.push(tapFd, peer);
  native.setNonBlocking(tapFd, true);
  native.setNonBlocking(peer, true);
  // Room for 64 KiB messages on the "tap".
  native.setsockoptInt(tapFd, native.constants.SOL_SOCKET, native.constants.SO_SNDBUF, 1 << 20);
  const counters = new CounterBlock();
  const port = new TapPort({ fd: tapFd, counters, watcher, maxFrameLength: 1514, vnetHeader: true, coalesce });
  return { port, peer, counters };
}

interface Segment {
  family: 4 | 6;
  srcPort?: number;
  seq: number;
  ack?: number;
  window?: number;
  flags?: number;
  payload: Uint8Array;
}

/** A complete Ethernet + IP + TCP frame with valid checksums, as the stack makes them. */
function segmentFrame(s: Segment): Uint8Array {
  const ipHeader = s.family === 4 ? 20 : 40;
  const frame = new Uint8Array(14 + ipHeader + 20 + s.payload.length);
  frame.set([0x02, 0, 0, 0, 0, 1, 0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55], 0);
  setBe16(frame, 12, s.family === 4 ? 0x0800 : 0x86dd);
  const ip = 14;
  const l4Length = 20 + s.payload.length;
  if (s.family === 4) {
    frame[ip] = 0x45;
    setBe16(frame, ip + 2, ipHeader + l4Length);
    setBe16(frame, ip + 6, 0x4000); // DF
    frame[ip + 8] = 64;
    frame[ip + 9] = 6;
    frame.set([192, 0, 2, 2], ip + 12);
    frame.set([192, 0, 2, 1], ip + 16);
    setBe16(frame, ip + 10, internetChecksum(frame, ip, 20));
  } else {
    frame[ip] = 0x60;
    setBe16(frame, ip + 4, l4Length);
    frame[ip + 6] = 6;
    frame[ip + 7] = 64;
    frame.set([0x20, 0x01, 0x0d, 0xb8, ...new Array(11).fill(0), 2], ip + 8);
    frame.set([0x20, 0x01, 0x0d, 0xb8, ...new Array(11).fill(0), 1], ip + 24);
  }
  const tcp = ip + ipHeader;
  setBe16(frame, tcp, s.srcPort ?? 80);
  setBe16(frame, tcp + 2, 40000);
  setBe32(frame, tcp + 4, s.seq);
  setBe32(frame, tcp + 8, s.ack ?? 1000);
  frame[tcp + 12] = 5 << 4;
  frame[tcp + 13] = s.flags ?? 0x10;
  setBe16(frame, tcp + 14, s.window ?? 500);
  frame.set(s.payload, tcp + 20);
  const pseudo = s.family === 4 ? pseudoHeaderSumIpv4(frame, ip + 12, frame, ip + 16, 6, l4Length) : pseudoHeaderSumIpv6(frame, ip + 8, frame, ip + 24, 6, l4Length);
  setBe16(frame, tcp + 16, finishChecksum(sumBytes(frame, tcp, l4Length, pseudo)));
  return frame;
}

function payload(length: number, seed: number): Uint8Array {
  return Uint8Array.from({ length }, (_, i) => (seed * 7 + i) & 0xff);
}

function commit(port: TapPort, frame: Uint8Array): void {
  const list = port.reserve(frame.length);
  expect(list?.totalLength).to.equal(frame.length);
  list?.copyIn(0, frame, 0, frame.length);
  port.commit(frame.length);
}

function receiveAll(fd: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  const buf = new Uint8Array(70000);
  for (let i = 0; i < 1000; i++) {
    const n = native.read(fd, buf, 0, buf.length);
    if (n < 0) break;
    out.push(buf.slice(0, n));
  }
  return out;
}

/**
 * Split a written message (virtio-net header + frame) the way the kernel's
 * TCP GSO does: headers copied, sequence numbers advanced, IP lengths and
 * checksums redone, PSH only on the last segment, the partial checksum
 * completed. A message without GSO comes back as its frame.
 */
function segmentLikeTheKernel(message: Uint8Array): Uint8Array[] {
  const header = new DataView(message.buffer, message.byteOffset, TAP_VNET_HDR_LENGTH);
  const frame = message.subarray(TAP_VNET_HDR_LENGTH);
  if (header.getUint8(1) === 0) return [frame];
  const hdrLen = header.getUint16(2, true);
  const gsoSize = header.getUint16(4, true);
  const family = header.getUint8(1) === VIRTIO_NET_HDR_GSO_TCPV4 ? 4 : 6;
  const ip = 14;
  const tcp = hdrLen - 20;
  const payloadTotal = frame.length - hdrLen;
  const out: Uint8Array[] = [];
  for (let offset = 0; offset < payloadTotal; offset += gsoSize) {
    const n = Math.min(gsoSize, payloadTotal - offset);
    const seg = new Uint8Array(hdrLen + n);
    seg.set(frame.subarray(0, hdrLen), 0);
    seg.set(frame.subarray(hdrLen + offset, hdrLen + offset + n), hdrLen);
    setBe32(seg, tcp + 4, (be32(frame, tcp + 4) + offset) >>> 0);
    if (offset + n < payloadTotal) seg[tcp + 13] &= ~0x08;
    const l4Length = 20 + n;
    if (family === 4) {
      setBe16(seg, ip + 2, hdrLen - 14 + n);
      setBe16(seg, ip + 10, 0);
      setBe16(seg, ip + 10, internetChecksum(seg, ip, 20));
    } else {
      setBe16(seg, ip + 4, l4Length);
    }
    const pseudo = family === 4 ? pseudoHeaderSumIpv4(seg, ip + 12, seg, ip + 16, 6, l4Length) : pseudoHeaderSumIpv6(seg, ip + 8, seg, ip + 24, 6, l4Length);
    setBe16(seg, tcp + 16, 0);
    setBe16(seg, tcp + 16, finishChecksum(sumBytes(seg, tcp, l4Length, pseudo)));
    out.push(seg);
  }
  return out;
}

describe('TapPort coalescing of TCP segments (GSO frames to the namespace)', () => {
  afterEach(() => {
    for (const fd of open.splice(0)) native.close(fd);
  });

  for (const family of [4, 6] as const) {
    it(`IPv${family}: contiguous segments become one GSO frame, which splits back into exactly those segments`, () => {
      const t = setup();
      // The MSS at MTU 1500.
      const mss = family === 4 ? 1460 : 1440;
      // The stack sets PSH on every data segment; GSO keeps it on the last one only (it is advisory).
      const segment = (i: number, length: number, flags: number): Uint8Array => segmentFrame({ family, seq: 5000 + i * mss, payload: payload(length, i), flags });
      const segments = [0, 1, 2, 3].map((i) => segment(i, mss, 0x18));
      const expected = [0, 1, 2, 3].map((i) => segment(i, mss, 0x10));
      for (const s of segments) commit(t.port, s);
      // Nothing written yet: the run waits for more (or for the flush).
      expect(receiveAll(t.peer)).to.deep.equal([]);
      // A shorter segment ends it at once: it is written without waiting for the flush.
      segments.push(segment(4, 700, 0x18));
      expected.push(segments[4]);
      commit(t.port, segments[4]);
      const written = receiveAll(t.peer);
      expect(written).to.have.length(1);
      const message = written[0];
      const view = new DataView(message.buffer, message.byteOffset, TAP_VNET_HDR_LENGTH);
      const ipHeader = family === 4 ? 20 : 40;
      expect([view.getUint8(0), view.getUint8(1), view.getUint16(2, true), view.getUint16(4, true), view.getUint16(6, true), view.getUint16(8, true)]).to.deep.equal([
        VIRTIO_NET_HDR_F_NEEDS_CSUM, family === 4 ? VIRTIO_NET_HDR_GSO_TCPV4 : VIRTIO_NET_HDR_GSO_TCPV6, 14 + ipHeader + 20, mss, 14 + ipHeader, 16,
      ]);
      const frame = message.subarray(TAP_VNET_HDR_LENGTH);
      expect(frame.length).to.equal(14 + ipHeader + 20 + 4 * mss + 700);
      t.port.flush();
      expect(receiveAll(t.peer)).to.deep.equal([]);
      if (family === 4) expect(internetChecksum(frame, 14, 20)).to.equal(0);
      expect(frame[14 + ipHeader + 13]).to.equal(0x18);
      // NEEDS_CSUM: the field holds the folded pseudo-header sum; summing from csum_start and storing the complement completes it.
      const tcpAt = 14 + ipHeader;
      const l4 = frame.length - tcpAt;
      const pseudo = family === 4 ? pseudoHeaderSumIpv4(frame, 26, frame, 30, 6, l4) : pseudoHeaderSumIpv6(frame, 22, frame, 38, 6, l4);
      expect(be16(frame, tcpAt + 16)).to.equal(foldSum(pseudo));
      const completed = frame.slice();
      setBe16(completed, tcpAt + 16, finishChecksum(sumBytes(completed, tcpAt, l4)));
      expect(finishChecksum(sumBytes(completed, tcpAt, l4, pseudo))).to.equal(0);
      const split = segmentLikeTheKernel(message);
      expect(split.map((s) => s.length)).to.deep.equal(expected.map((s) => s.length));
      split.forEach((s, i) => expect(Buffer.from(s).toString('hex'), `segment ${i}`).to.equal(Buffer.from(expected[i]).toString('hex')));
      expect(t.counters.get(TAP_COALESCE.frames)).to.equal(1);
      expect(t.counters.get(TAP_COALESCE.segments)).to.equal(5);
      expect(t.counters.get(PORT_COUNTERS.rxFrames)).to.equal(5);
      expect(t.counters.get(PORT_COUNTERS.rxBytes)).to.equal(segments.reduce((sum, s) => sum + s.length, 0));
    });
  }

  it('a run ends at a frame that does not continue it (gap, other flow, other ACK or window, not data); order is kept', () => {
    const t = setup();
    const frames = [
      segmentFrame({ family: 4, seq: 1, payload: payload(1000, 1) }),
      segmentFrame({ family: 4, seq: 1001, payload: payload(1000, 2) }),
      segmentFrame({ family: 4, seq: 3001, payload: payload(1000, 3) }), // gap
      segmentFrame({ family: 4, seq: 4001, payload: payload(1000, 4), srcPort: 81 }), // other flow
      segmentFrame({ family: 4, seq: 5001, payload: payload(1000, 5), srcPort: 81, ack: 2000 }), // other ACK
      segmentFrame({ family: 4, seq: 6001, payload: payload(1000, 6), srcPort: 81, ack: 2000, window: 7 }), // other window
      segmentFrame({ family: 4, seq: 7001, payload: new Uint8Array(0), srcPort: 81, ack: 2000, window: 7 }), // pure ACK
      segmentFrame({ family: 4, seq: 7001, payload: payload(10, 7), srcPort: 81, ack: 2000, window: 7, flags: 0x11 }), // FIN
    ];
    for (const f of frames) commit(t.port, f);
    t.port.flush();
    const written = receiveAll(t.peer);
    expect(written.flatMap((m) => segmentLikeTheKernel(m)).map((s) => [...s])).to.deep.equal(frames.map((f) => [...f]));
    // Only the first two merged; everything else went out as it was.
    expect(written.length).to.equal(frames.length - 1);
    expect(t.counters.get(TAP_COALESCE.frames)).to.equal(1);
  });

  it('a shorter segment closes the run (GSO segments are all full but the last); a run stops short of 64 KiB', () => {
    const t = setup();
    const frames = [
      segmentFrame({ family: 4, seq: 0, payload: payload(1460, 0) }),
      segmentFrame({ family: 4, seq: 1460, payload: payload(500, 1) }),
      segmentFrame({ family: 4, seq: 1960, payload: payload(1460, 2) }),
    ];
    for (const f of frames) commit(t.port, f);
    t.port.flush();
    const written = receiveAll(t.peer);
    expect(written.map((m) => m.length)).to.deep.equal([TAP_VNET_HDR_LENGTH + 54 + 1960, TAP_VNET_HDR_LENGTH + 1514]);
    expect(written.flatMap((m) => segmentLikeTheKernel(m)).map((s) => [...s])).to.deep.equal(frames.map((f) => [...f]));

    const big: Uint8Array[] = [];
    for (let i = 0; i < 60; i++) big.push(segmentFrame({ family: 4, seq: i * 1460, payload: payload(1460, i) }));
    for (const f of big) commit(t.port, f);
    t.port.flush();
    const bigWritten = receiveAll(t.peer);
    for (const m of bigWritten) expect(be16(m, TAP_VNET_HDR_LENGTH + 16)).to.be.at.most(65535);
    expect(bigWritten.length).to.equal(2); // 44 segments fill the first frame (64,264 bytes of payload)
    expect(bigWritten.flatMap((m) => segmentLikeTheKernel(m)).map((s) => [...s])).to.deep.equal(big.map((f) => [...f]));
  });

  it('without coalescing (or without a virtio-net header) every frame is written at commit', () => {
    const t = setup(false);
    const frames = [0, 1].map((i) => segmentFrame({ family: 4, seq: i * 100, payload: payload(100, i) }));
    commit(t.port, frames[0]);
    expect(receiveAll(t.peer)).to.have.length(1);
    commit(t.port, frames[1]);
    expect(receiveAll(t.peer)).to.have.length(1);
    expect(t.counters.get(TAP_COALESCE.frames)).to.equal(0);
  });
});
