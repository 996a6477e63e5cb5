/**
 * Fragment reassembly through the real dispatcher (Stack.receiveFrame): the
 * UDP handler is a recorder, so what it gets is what the dispatcher made of
 * the fragments. The byte bound is tested on a Reassembler of its own with
 * small limits.
 */
import { expect } from 'chai';
import { CounterBlock } from '../../../../src/sys/counters';
import { Stack } from '../../../../src/stack/stack';
import { type IpPacket, RxFrame, type RxFrame as Frame, type StackContext } from '../../../../src/stack/context';
import { DROP_SLOTS, DropReason } from '../../../../src/stack/drops';
import { FragmentOutcome, Reassembler } from '../../../../src/stack/reassembly/reassembly';
import { Ipv4View } from '../../../../src/stack/wire/ipv4';
import { internetChecksum, setBe16 } from '../../../../src/stack/wire/checksum';
import { FakeFramePort, GUEST_MAC, GUEST_V4, GUEST_V6, NO_OFFLOAD, OUR_MAC, concat, ethernetFrame, ipv4Packet, segmentsOf, testConfig, udpDatagram } from '../../../support/fakes/stack-fakes';

const SERVER_V4 = Uint8Array.of(203, 0, 113, 9);
const SERVER_V6 = Uint8Array.from(Buffer.from('20010db8000000000000000000000099', 'hex'));

interface Rig {
  stack: Stack;
  counters: CounterBlock;
  /** Per datagram handed to the UDP handler: its family, IP header bytes and UDP bytes. */
  handled: { family: 4 | 6; ip: Buffer; l4: Buffer }[];
  clock: { t: number; now(): number };
  send(frame: Uint8Array, cuts?: number[]): void;
  drops(reason: DropReason): number;
}

function rig(): Rig {
  const counters = new CounterBlock();
  const clock = { t: 1000, now(): number { return this.t; } };
  const stack = new Stack({ config: testConfig(), port: new FakeFramePort(), counters, clock });
  const handled: Rig['handled'] = [];
  stack.udpHandler = {
    handle: (_c: StackContext, f: Frame, p: IpPacket) => {
      const l3 = p.family === 4 ? p.ipv4.srcOffset - 12 : p.ipv6.srcOffset - 8;
      handled.push({ family: p.family, ip: Buffer.from(f.bytes.subarray(l3, p.l4Offset)), l4: Buffer.from(f.bytes.subarray(p.l4Offset, p.l4Offset + p.l4Length)) });
    },
  };
  return {
    stack,
    counters,
    handled,
    clock,
    send: (frame, cuts = []) => stack.receiveFrame(segmentsOf(frame, cuts), NO_OFFLOAD),
    drops: (reason) => counters.get(DROP_SLOTS[reason]),
  };
}

function pattern(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = (i * 31 + seed) & 0xff;
  return out;
}

/** One IPv4 fragment frame: bytes [offset, offset+piece.length) of the IP payload. */
function fragment4(piece: Uint8Array, offset: number, more: boolean, id: number): Uint8Array {
  const packet = ipv4Packet(GUEST_V4, SERVER_V4, 17, piece);
  setBe16(packet, 4, id);
  setBe16(packet, 6, (more ? 0x2000 : 0) | (offset >> 3));
  setBe16(packet, 10, 0);
  setBe16(packet, 10, internetChecksum(packet, 0, 20));
  return ethernetFrame(OUR_MAC, GUEST_MAC, 0x0800, packet);
}

/** One IPv6 fragment frame (Fragment header right after the fixed header). */
function fragment6(piece: Uint8Array, offset: number, more: boolean, id: number): Uint8Array {
  const fh = new Uint8Array(8);
  fh[0] = 17;
  setBe16(fh, 2, offset | (more ? 1 : 0));
  fh[4] = id >>> 24;
  fh[5] = (id >>> 16) & 0xff;
  fh[6] = (id >>> 8) & 0xff;
  fh[7] = id & 0xff;
  const payload = concat(fh, piece);
  const h = new Uint8Array(40);
  h[0] = 0x60;
  setBe16(h, 4, payload.length);
  h[6] = 44;
  h[7] = 64;
  h.set(GUEST_V6, 8);
  h.set(SERVER_V6, 24);
  return ethernetFrame(OUR_MAC, GUEST_MAC, 0x86dd, concat(h, payload));
}

/** The UDP datagram of `size` data bytes and its fragment frames of at most `piece` payload bytes each. */
function fragmented(family: 4 | 6, size: number, piece: number, id: number): { udp: Uint8Array; frames: Uint8Array[] } {
  const udp = family === 4 ? udpDatagram(GUEST_V4, SERVER_V4, 1000, 2000, pattern(size, id)) : udpDatagram(GUEST_V6, SERVER_V6, 1000, 2000, pattern(size, id));
  const frames: Uint8Array[] = [];
  for (let at = 0; at < udp.length; at += piece) {
    const end = Math.min(udp.length, at + piece);
    frames.push((family === 4 ? fragment4 : fragment6)(udp.subarray(at, end), at, end < udp.length, id));
  }
  return { udp, frames };
}

describe('reassembly of guest fragments', () => {
  for (const family of [4, 6] as const) {
    it(`IPv${family}: in order, the handler gets the whole datagram once, with a whole-datagram header`, () => {
      const r = rig();
      const { udp, frames } = fragmented(family, 4000, 1480, 7);
      expect(frames).to.have.length(3);
      for (const f of frames.slice(0, -1)) r.send(f);
      expect(r.handled).to.have.length(0);
      expect(r.stack.reassembly.pending).to.equal(1);
      r.send(frames[frames.length - 1]);
      expect(r.handled).to.have.length(1);
      const got = r.handled[0];
      expect(got.family).to.equal(family);
      expect(Buffer.compare(got.l4, Buffer.from(udp))).to.equal(0);
      if (family === 4) {
        expect(got.ip.length).to.equal(20);
        expect(got.ip.readUInt16BE(2)).to.equal(20 + udp.length);
        expect(got.ip.readUInt16BE(6), 'no MF, no offset').to.equal(0);
        expect(internetChecksum(got.ip, 0, 20), 'header checksum').to.equal(0);
      } else {
        expect(got.ip.length).to.equal(40);
        expect(got.ip.readUInt16BE(4)).to.equal(udp.length);
        expect(got.ip[6], 'next header').to.equal(17);
      }
      expect(r.stack.reassembly.pending).to.equal(0);
      expect(r.stack.reassembly.bytes).to.equal(0);
    });

    it(`IPv${family}: out of order and split across guest buffers, the same datagram`, () => {
      const r = rig();
      const { udp, frames } = fragmented(family, 9000, 1232, 8);
      const order = frames.map((_, i) => i).reverse();
      [order[1], order[3]] = [order[3], order[1]];
      for (const i of order) r.send(frames[i], [10, 30, 61, 700]);
      expect(r.handled).to.have.length(1);
      expect(Buffer.compare(r.handled[0].l4, Buffer.from(udp))).to.equal(0);
    });
  }

  it('an exact duplicate is ignored and counted; the datagram still completes', () => {
    const r = rig();
    const { udp, frames } = fragmented(4, 3000, 1480, 9);
    r.send(frames[0]);
    r.send(frames[0]);
    expect(r.drops(DropReason.FragmentDuplicate)).to.equal(1);
    for (const f of frames.slice(1)) r.send(f);
    expect(r.handled.map((h) => Buffer.compare(h.l4, Buffer.from(udp)))).to.deep.equal([0]);
  });

  for (const family of [4, 6] as const) {
    it(`IPv${family}: an overlapping fragment discards the whole datagram (RFC 5722)`, () => {
      const r = rig();
      const { udp, frames } = fragmented(family, 3000, 1480, 10);
      r.send(frames[0]);
      // Bytes 1472.. overlap the first fragment's last 8.
      r.send((family === 4 ? fragment4 : fragment6)(udp.subarray(1472, 2952), 1472, true, 10));
      expect(r.drops(DropReason.FragmentOverlap)).to.equal(1);
      expect(r.stack.reassembly.pending).to.equal(0);
      for (const f of frames.slice(1)) r.send(f);
      expect(r.handled, 'never delivered').to.have.length(0);
    });
  }

  it('a datagram not complete within the timeout is dropped and counted, its memory released', () => {
    const r = rig();
    const { frames } = fragmented(4, 3000, 1480, 11);
    r.send(frames[0]);
    r.send(frames[1]);
    expect(r.stack.reassembly.bytes).to.equal(2960);
    r.clock.t += 5000;
    r.stack.onTimer(r.clock.now());
    expect(r.stack.reassembly.pending).to.equal(1);
    r.clock.t += 11_000;
    r.stack.onTimer(r.clock.now());
    expect(r.stack.reassembly.pending).to.equal(0);
    expect(r.stack.reassembly.bytes).to.equal(0);
    expect(r.drops(DropReason.FragmentTimeout)).to.equal(1);
    r.send(frames[2]);
    expect(r.handled).to.have.length(0);
  });

  it('at most 16 datagrams in progress: a new one evicts the oldest, and still completes', () => {
    const r = rig();
    for (let id = 100; id < 120; id++) {
      r.clock.t += 1;
      r.send(fragmented(4, 3000, 1480, id).frames[0]);
    }
    expect(r.stack.reassembly.pending).to.equal(16);
    expect(r.drops(DropReason.FragmentEvicted)).to.equal(4);
    // The oldest (100) is gone, the newest (119) completes.
    const oldest = fragmented(4, 3000, 1480, 100);
    for (const f of oldest.frames.slice(1)) r.send(f);
    const newest = fragmented(4, 3000, 1480, 119);
    for (const f of newest.frames.slice(1)) r.send(f);
    expect(r.handled.map((h) => Buffer.compare(h.l4, Buffer.from(newest.udp)))).to.deep.equal([0]);
  });

  it('nothing above 65535 bytes is built, and non-final fragments must carry multiples of 8 bytes', () => {
    const r = rig();
    r.send(fragment4(pattern(1480, 1), 0, true, 12));
    r.send(fragment4(pattern(1480, 1), 65528, false, 12));
    expect(r.drops(DropReason.FragmentMalformed)).to.equal(1);
    r.send(fragment4(pattern(1001, 1), 1480, true, 12));
    expect(r.drops(DropReason.FragmentMalformed)).to.equal(2);
    // A last fragment that ends before data already held is inconsistent: the datagram goes.
    r.send(fragment4(pattern(1480, 1), 2960, true, 13));
    r.send(fragment4(pattern(8, 1), 1480, false, 13));
    expect(r.drops(DropReason.FragmentMalformed)).to.equal(3);
    expect(r.handled).to.have.length(0);
  });

  it('an IPv6 atomic fragment (offset 0, no M) is handled as the datagram it carries', () => {
    const r = rig();
    const udp = udpDatagram(GUEST_V6, SERVER_V6, 1000, 2000, pattern(64, 3));
    r.send(fragment6(udp, 0, false, 14));
    expect(r.handled.map((h) => Buffer.compare(h.l4, Buffer.from(udp)))).to.deep.equal([0]);
  });

  it('the byte bound: holding more evicts the oldest datagram; one datagram larger than the bound is dropped', () => {
    const gaveUp: DropReason[] = [];
    const reassembler = new Reassembler({ maxDatagrams: 8, maxBytes: 4000, maxPieces: 8, timeoutMs: 1000 }, (reason) => gaveUp.push(reason));
    const frame = new RxFrame(new Uint8Array(65536));
    const view = new Ipv4View();
    const add = (f: Uint8Array, now: number): FragmentOutcome => {
      frame.begin(segmentsOf(f), NO_OFFLOAD);
      return reassembler.addIpv4(frame, view.reset(frame.bytes, frame.base + 14, f.length - 14), now);
    };
    expect(add(fragment4(pattern(1480, 1), 0, true, 1), 1)).to.equal(FragmentOutcome.Held);
    expect(add(fragment4(pattern(1480, 1), 0, true, 2), 2)).to.equal(FragmentOutcome.Held);
    expect(reassembler.bytes).to.equal(2960);
    expect(add(fragment4(pattern(1480, 1), 0, true, 3), 3)).to.equal(FragmentOutcome.Held);
    expect(gaveUp).to.deep.equal([DropReason.FragmentEvicted]);
    expect([reassembler.pending, reassembler.bytes]).to.deep.equal([2, 2960]);
    // Datagram 3 grows past the bound alone: the others go first, then it cannot fit.
    expect(add(fragment4(pattern(1480, 1), 1480, true, 3), 4)).to.equal(FragmentOutcome.Held);
    expect(add(fragment4(pattern(1480, 1), 2960, true, 3), 5)).to.equal(FragmentOutcome.Dropped);
    expect(reassembler.dropReason).to.equal(DropReason.FragmentEvicted);
    expect([reassembler.pending, reassembler.bytes]).to.deep.equal([0, 0]);
  });
});
