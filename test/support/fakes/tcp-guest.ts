/**
 * A test harness for the TCP translator: the real Stack and TcpService over
 * a FakeFramePort, host sockets watched by a real epoll Poller, and a tiny
 * guest-side TCP endpoint (FakeGuestTcp) that builds segments the way a
 * guest would and parses (and checksum-verifies) what ferry sends back.
 *
 * Everything here moves packets through real kernel sockets, so tests that
 * use it must run inside a network namespace they created (see
 * runInsideNamespace in tcp.test.ts).
 */
import { createHash } from 'crypto';
import { native } from '../../../src/sys/native';
import { CounterBlock } from '../../../src/sys/counters';
import type { FdWatcher, ReadyHandler } from '../../../src/stack/context';
import type { StackConfig } from '../../../src/stack/config';
import { Stack } from '../../../src/stack/stack';
import { TcpService, type TcpServiceOptions } from '../../../src/stack/tcp/tcp';
import { finishChecksum, pseudoHeaderSumIpv4, pseudoHeaderSumIpv6, setBe16, setBe32, sumBytes } from '../../../src/stack/wire/checksum';
import { FakeFramePort, GUEST_MAC, NO_OFFLOAD, OUR_MAC, ethernetFrame, ipv4Packet, ipv6Packet, segmentsOf, testConfig } from './stack-fakes';

export const FIN = 0x01;
export const SYN = 0x02;
export const RST = 0x04;
export const PSH = 0x08;
export const ACK = 0x10;

/** FdWatcher over a real Poller (level-triggered unless the events carry EPOLLET). */
export class PollWatcher implements FdWatcher {
  private readonly handlers = new Map<number, ReadyHandler>();
  private readonly batch = new Int32Array(256);
  private readonly poller = new native.Poller(this.batch, (count) => {
    for (let i = 0; i < count; i++) {
      const fd = this.batch[2 * i];
      const handler = this.handlers.get(fd);
      if (handler !== undefined) handler.onReady(fd, this.batch[2 * i + 1]);
    }
  });

  watch(fd: number, events: number, handler: ReadyHandler): void {
    this.handlers.set(fd, handler);
    this.poller.add(fd, events);
  }

  modify(fd: number, events: number): void {
    this.poller.modify(fd, events);
  }

  unwatch(fd: number): void {
    this.handlers.delete(fd);
    this.poller.remove(fd);
  }

  close(): void {
    this.poller.close();
  }

  get watched(): number {
    return this.handlers.size;
  }
}

/** One TCP segment sent by ferry to the guest, parsed. */
export interface Segment {
  family: 4 | 6;
  src: Uint8Array;
  dst: Uint8Array;
  srcPort: number;
  dstPort: number;
  seq: number;
  ack: number;
  flags: number;
  window: number;
  mss: number;
  wscale: number;
  payload: Uint8Array;
}

/** Parse an Ethernet frame holding IPv4/IPv6 TCP; throws on a bad checksum or length. */
export function parseTcpFrame(frame: Uint8Array): Segment | null {
  const etherType = (frame[12] << 8) | frame[13];
  let family: 4 | 6;
  let l4: number;
  let l4Length: number;
  let src: Uint8Array;
  let dst: Uint8Array;
  if (etherType === 0x0800) {
    if (frame[14 + 9] !== 6) return null;
    family = 4;
    const ihl = (frame[14] & 15) * 4;
    const total = (frame[16] << 8) | frame[17];
    if (14 + total !== frame.length) throw new Error(`IPv4 total length ${total} but frame of ${frame.length}`);
    if (finishChecksum(sumBytes(frame, 14, ihl)) !== 0) throw new Error('bad IPv4 header checksum');
    l4 = 14 + ihl;
    l4Length = total - ihl;
    src = frame.slice(26, 30);
    dst = frame.slice(30, 34);
  } else if (etherType === 0x86dd) {
    if (frame[14 + 6] !== 6) return null;
    family = 6;
    const payload = (frame[18] << 8) | frame[19];
    if (14 + 40 + payload !== frame.length) throw new Error(`IPv6 payload length ${payload} but frame of ${frame.length}`);
    l4 = 54;
    l4Length = payload;
    src = frame.slice(22, 38);
    dst = frame.slice(38, 54);
  } else {
    return null;
  }
  const pseudo = family === 4 ? pseudoHeaderSumIpv4(src, 0, dst, 0, 6, l4Length) : pseudoHeaderSumIpv6(src, 0, dst, 0, 6, l4Length);
  if (finishChecksum(sumBytes(frame, l4, l4Length, pseudo)) !== 0) throw new Error('bad TCP checksum from ferry');
  const b = frame;
  const headerLength = (b[l4 + 12] >>> 4) * 4;
  let mss = -1;
  let wscale = -1;
  for (let at = l4 + 20; at < l4 + headerLength; ) {
    const kind = b[at];
    if (kind === 0) break;
    if (kind === 1) {
      at++;
      continue;
    }
    const len = b[at + 1];
    if (kind === 2) mss = (b[at + 2] << 8) | b[at + 3];
    if (kind === 3) wscale = b[at + 2];
    at += Math.max(2, len);
  }
  const u32 = (o: number): number => ((b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]) >>> 0;
  return {
    family,
    src,
    dst,
    srcPort: (b[l4] << 8) | b[l4 + 1],
    dstPort: (b[l4 + 2] << 8) | b[l4 + 3],
    seq: u32(l4 + 4),
    ack: u32(l4 + 8),
    flags: b[l4 + 13],
    window: (b[l4 + 14] << 8) | b[l4 + 15],
    mss,
    wscale,
    payload: frame.slice(l4 + headerLength, l4 + l4Length),
  };
}

/** Build a guest TCP segment (with checksum) inside an Ethernet frame. */
export function guestTcpFrame(
  family: 4 | 6, src: Uint8Array, dst: Uint8Array, srcPort: number, dstPort: number,
  seq: number, ack: number, flags: number, window: number, payload: Uint8Array = new Uint8Array(0), options: Uint8Array = new Uint8Array(0),
): Uint8Array {
  const headerLength = 20 + options.length;
  const seg = new Uint8Array(headerLength + payload.length);
  setBe16(seg, 0, srcPort);
  setBe16(seg, 2, dstPort);
  setBe32(seg, 4, seq >>> 0);
  setBe32(seg, 8, ack >>> 0);
  seg[12] = (headerLength / 4) << 4;
  seg[13] = flags;
  setBe16(seg, 14, window);
  seg.set(options, 20);
  seg.set(payload, headerLength);
  const pseudo = family === 4 ? pseudoHeaderSumIpv4(src, 0, dst, 0, 6, seg.length) : pseudoHeaderSumIpv6(src, 0, dst, 0, 6, seg.length);
  setBe16(seg, 16, finishChecksum(sumBytes(seg, 0, seg.length, pseudo)));
  const ip = family === 4 ? ipv4Packet(src, dst, 6, seg) : ipv6Packet(src, dst, 6, seg);
  return ethernetFrame(OUR_MAC, GUEST_MAC, family === 4 ? 0x0800 : 0x86dd, ip);
}

/** SYN options: MSS and, when wscale >= 0, window scale. */
export function synOptions(mss: number, wscale: number): Uint8Array {
  const o = new Uint8Array(wscale >= 0 ? 8 : 4);
  o[0] = 2;
  o[1] = 4;
  setBe16(o, 2, mss);
  if (wscale >= 0) {
    o[4] = 1;
    o[5] = 3;
    o[6] = 3;
    o[7] = wscale;
  }
  return o;
}

/** The stack + TCP translator + fake port, with segments routed to fake guest endpoints by guest port. */
export class TcpHarness {
  readonly port: FakeFramePort;
  readonly counters = new CounterBlock();
  readonly watcher = new PollWatcher();
  readonly stack: Stack;
  readonly tcp: TcpService;
  readonly config: StackConfig;
  private readonly endpoints = new Map<number, FakeGuestTcp>();
  /** Frames other than TCP that ferry sent (e.g. ICMP errors). */
  readonly otherFrames: Uint8Array[] = [];
  /** Segments for guest ports without an endpoint (e.g. SYNs of inbound connections). */
  readonly unrouted: Segment[] = [];
  /** When set, returns true for segments the "wire" should lose before the guest sees them. */
  dropFilter: ((segment: Segment) => boolean) | null = null;
  /** Fault injection on both directions (tests only): probabilities per frame. */
  faults: Faults | null = null;
  private heldToGuest: Segment | null = null;
  private heldFromGuest: Uint8Array | null = null;

  /** Added to the real clock: advance() moves the stack's time forward. */
  clockOffset = 0;

  constructor(patch: Partial<StackConfig> = {}, options: TcpServiceOptions = {}, segmentSizes?: number[]) {
    this.config = testConfig({ guestMac: GUEST_MAC, ...patch });
    this.port = new FakeFramePort(segmentSizes);
    const clock = { now: (): number => performance.now() + this.clockOffset };
    this.stack = new Stack({ config: this.config, port: this.port, counters: this.counters, watcher: this.watcher, sockets: native, clock });
    this.tcp = new TcpService(this.stack.ctx, options);
    this.stack.tcpHandler = this.tcp;
  }

  /** Move the stack's clock forward by ms and run the TCP timers. */
  advance(ms: number): void {
    this.clockOffset += ms;
    this.tcp.onTimer();
  }

  /** Hand a frame to the stack as the guest's TX. */
  send(frame: Uint8Array, cuts: number[] = []): void {
    const faults = this.faults;
    if (faults !== null) {
      const r = faults.random();
      if (r < faults.drop) return;
      if (r < faults.drop + faults.reorder && this.heldFromGuest === null) {
        this.heldFromGuest = frame; // goes after the next frame
        return;
      }
      if (r < faults.drop + faults.reorder + faults.duplicate) this.stack.receiveFrame(segmentsOf(frame, cuts), NO_OFFLOAD);
    }
    this.stack.receiveFrame(segmentsOf(frame, cuts), NO_OFFLOAD);
    this.releaseHeldFromGuest();
  }

  private releaseHeldFromGuest(): void {
    const held = this.heldFromGuest;
    if (held === null) return;
    this.heldFromGuest = null;
    this.stack.receiveFrame(segmentsOf(held), NO_OFFLOAD);
  }

  private route(segment: Segment): void {
    const endpoint = this.endpoints.get(segment.dstPort);
    if (endpoint === undefined) this.unrouted.push(segment);
    else endpoint.receive(segment);
  }

  register(endpoint: FakeGuestTcp): void {
    this.endpoints.set(endpoint.guestPort, endpoint);
  }

  /** Route the frames ferry committed to their endpoints. Returns how many were routed. */
  deliver(): number {
    const frames = this.port.frames;
    this.port.frames = [];
    let count = 0;
    for (const frame of frames) {
      const segment = parseTcpFrame(frame);
      if (segment === null) {
        this.otherFrames.push(frame);
        continue;
      }
      if (this.dropFilter !== null && this.dropFilter(segment)) continue;
      count++;
      const faults = this.faults;
      if (faults !== null) {
        const r = faults.random();
        if (r < faults.drop) continue;
        if (r < faults.drop + faults.reorder && this.heldToGuest === null) {
          this.heldToGuest = segment;
          continue;
        }
        if (r < faults.drop + faults.reorder + faults.duplicate) this.route(segment);
      }
      this.route(segment);
      if (this.heldToGuest !== null && this.heldToGuest !== segment) {
        const held = this.heldToGuest;
        this.heldToGuest = null;
        this.route(held);
      }
    }
    if (this.heldToGuest !== null) {
      // Nothing came after it in this batch: let it through now (late).
      const held = this.heldToGuest;
      this.heldToGuest = null;
      this.route(held);
    }
    this.releaseHeldFromGuest();
    return count;
  }

  /** Let the event loop run (socket readiness) for ms. */
  async tick(ms = 1): Promise<void> {
    await new Promise((resolve) => setTimeout(resolve, ms));
    this.deliver();
  }

  /** Run until cond() holds, delivering frames and pumping endpoints; rejects after timeoutMs. */
  async until(cond: () => boolean, timeoutMs = 10_000, what = 'condition'): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      this.deliver();
      for (const endpoint of this.endpoints.values()) endpoint.pump();
      this.deliver();
      if (cond()) return;
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise((resolve) => setImmediate(resolve));
      await new Promise((resolve) => setTimeout(resolve, 0));
    }
  }

  close(): void {
    this.tcp.close();
    this.watcher.close();
  }
}

/** Fault injection rates (0..1 per frame) and the random source. */
export interface Faults {
  drop: number;
  duplicate: number;
  reorder: number;
  random: () => number;
}

/** A seeded PRNG in [0, 1) (mulberry32), so fault patterns reproduce. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Options of a fake guest connection. */
export interface GuestTcpOptions {
  family?: 4 | 6;
  guest?: Uint8Array;
  remote: Uint8Array;
  guestPort: number;
  remotePort: number;
  /** Receive window field the guest advertises (before scaling). */
  window?: number;
  /** Window scale the guest offers (-1: none). */
  wscale?: number;
  mss?: number;
  /** When false, received data is not ACKed automatically (the test ACKs). */
  autoAck?: boolean;
}

/**
 * The guest side of one connection: a go-back-N sender and an in-order
 * receiver that ACKs what it gets, checks that ferry never exceeds the
 * window it advertised, and hashes the received stream.
 */
export class FakeGuestTcp {
  readonly family: 4 | 6;
  readonly guest: Uint8Array;
  readonly remote: Uint8Array;
  readonly guestPort: number;
  readonly remotePort: number;
  window: number;
  readonly wscale: number;
  readonly mss: number;
  autoAck: boolean;

  // ---- sender ----
  iss = 1000;
  sndUna = 0;
  sndNxt = 0;
  peerWindow = 0;
  peerWscale = 0;
  peerMss = 536;
  private outgoing: Uint8Array = new Uint8Array(0);
  /** Stream offset of outgoing[0] is sndUna - iss - 1. */
  private queuedFin = false;
  finSent = false;
  finAcked = false;
  private lastProgress = Date.now();
  retransmits = 0;

  // ---- receiver ----
  irs = 0;
  rcvNxt = 0;
  received = 0;
  private readonly hash = createHash('sha256');
  chunks: Uint8Array[] = [];
  keepChunks = false;
  finReceived = false;
  rstReceived = false;
  established = false;
  synAck: Segment | null = null;
  /** Highest sequence number ferry was allowed to send (our last ACK + window). */
  private allowedEnd = 0;
  windowViolations = 0;
  segments: Segment[] = [];
  recordSegments = false;

  constructor(readonly harness: TcpHarness, options: GuestTcpOptions) {
    this.family = options.family ?? 4;
    this.guest = options.guest ?? (this.family === 4 ? harness.config.ipv4!.address : harness.config.ipv6!.address);
    this.remote = options.remote;
    this.guestPort = options.guestPort;
    this.remotePort = options.remotePort;
    this.window = options.window ?? 65535;
    this.wscale = options.wscale ?? 7;
    this.mss = options.mss ?? 65480;
    this.autoAck = options.autoAck ?? true;
    harness.register(this);
  }

  private frame(seq: number, ack: number, flags: number, payload?: Uint8Array, options?: Uint8Array): Uint8Array {
    return guestTcpFrame(this.family, this.guest, this.remote, this.guestPort, this.remotePort, seq, ack, flags, this.window, payload, options);
  }

  /** Send a raw segment. */
  raw(seq: number, ack: number, flags: number, payload?: Uint8Array, options?: Uint8Array, cuts: number[] = []): void {
    this.harness.send(this.frame(seq, ack, flags, payload, options), cuts);
  }

  /** Open the connection: SYN now; the handshake completes in receive(). */
  connect(): void {
    this.sndUna = this.iss;
    this.sndNxt = (this.iss + 1) >>> 0;
    this.raw(this.iss, 0, SYN, undefined, synOptions(this.mss, this.wscale));
  }

  /** Answer an inbound SYN from ferry with a SYN-ACK. */
  accept(syn: Segment): void {
    this.irs = syn.seq;
    this.rcvNxt = (syn.seq + 1) >>> 0;
    this.peerMss = syn.mss > 0 ? syn.mss : 536;
    this.peerWscale = syn.wscale >= 0 && this.wscale >= 0 ? syn.wscale : 0;
    this.peerWindow = syn.window;
    this.sndUna = this.iss;
    this.sndNxt = (this.iss + 1) >>> 0;
    this.raw(this.iss, this.rcvNxt, SYN | ACK, undefined, synOptions(this.mss, this.wscale));
    this.allowedEnd = this.rcvNxt + this.window * (this.wscale >= 0 ? 1 << this.wscale : 1);
  }

  /** Queue data to send. */
  write(data: Uint8Array): void {
    const next = new Uint8Array(this.outgoing.length + data.length);
    next.set(this.outgoing, 0);
    next.set(data, this.outgoing.length);
    this.outgoing = next;
  }

  /** Queue a FIN after the data. */
  end(): void {
    this.queuedFin = true;
  }

  /** Send a pure ACK for what was received. */
  ack(): void {
    this.raw(this.sndNxt, this.rcvNxt, ACK);
    this.allowedEnd = this.rcvNxt + this.window * (this.wscale >= 0 ? 1 << this.wscale : 1);
  }

  /** SHA-256 of the received stream so far. */
  digest(): string {
    return this.hash.copy().digest('hex');
  }

  /** Segments from ferry for this connection. */
  receive(s: Segment): void {
    if (this.recordSegments) this.segments.push(s);
    if ((s.flags & RST) !== 0) {
      this.rstReceived = true;
      return;
    }
    if ((s.flags & SYN) !== 0) {
      if ((s.flags & ACK) !== 0 && !this.established) {
        this.synAck = s;
        this.irs = s.seq;
        this.rcvNxt = (s.seq + 1) >>> 0;
        this.peerMss = s.mss > 0 ? s.mss : 536;
        this.peerWscale = s.wscale >= 0 && this.wscale >= 0 ? s.wscale : 0;
        this.peerWindow = s.window;
        this.sndUna = s.ack;
        this.established = true;
        this.ack();
      }
      return;
    }
    if ((s.flags & ACK) !== 0) {
      if (!this.established && s.ack === this.sndNxt) this.established = true; // inbound: ACK of our SYN-ACK
      const acked = (s.ack - this.sndUna) | 0;
      if (acked > 0 && ((s.ack - this.sndNxt) | 0) <= 0) {
        let dataAcked = acked;
        if (this.finSent && s.ack === this.sndNxt) {
          this.finAcked = true;
          dataAcked--;
        }
        if (this.sndUna === this.iss) dataAcked--; // our SYN
        this.outgoing = this.outgoing.subarray(Math.max(0, dataAcked));
        this.sndUna = s.ack;
        this.lastProgress = Date.now();
      }
      this.peerWindow = s.window * (1 << this.peerWscale);
    }
    if (s.payload.length > 0 || (s.flags & FIN) !== 0) {
      const end = (s.seq + s.payload.length) >>> 0;
      if (((end - this.allowedEnd) | 0) > 0) this.windowViolations++;
      if (s.seq === this.rcvNxt) {
        if (s.payload.length > 0) {
          this.hash.update(s.payload);
          if (this.keepChunks) this.chunks.push(s.payload);
          this.received += s.payload.length;
          this.rcvNxt = end;
        }
        if ((s.flags & FIN) !== 0) {
          this.finReceived = true;
          this.rcvNxt = (this.rcvNxt + 1) >>> 0;
        }
      }
      if (this.autoAck) this.ack();
    }
  }

  /** Send what the window allows; go back to sndUna when nothing moved for a while. */
  pump(): void {
    if (!this.established) return;
    const now = Date.now();
    const inFlight = (this.sndNxt - this.sndUna) | 0;
    if (inFlight > 0 && now - this.lastProgress > 300) {
      // Go-back-N: resend from the first unacknowledged byte.
      this.sndNxt = this.sndUna;
      if (this.finSent && !this.finAcked) this.finSent = false;
      this.lastProgress = now;
      this.retransmits++;
    }
    for (let i = 0; i < 64; i++) {
      const offset = (this.sndNxt - this.sndUna) | 0;
      const left = this.outgoing.length - offset;
      const room = this.peerWindow - offset;
      if (left > 0 && room > 0) {
        const n = Math.min(left, room, this.peerMss);
        const payload = this.outgoing.slice(offset, offset + n);
        this.raw(this.sndNxt, this.rcvNxt, ACK | PSH, payload);
        this.sndNxt = (this.sndNxt + n) >>> 0;
        continue;
      }
      if (left <= 0 && this.queuedFin && !this.finSent) {
        this.raw(this.sndNxt, this.rcvNxt, FIN | ACK);
        this.sndNxt = (this.sndNxt + 1) >>> 0;
        this.finSent = true;
      }
      break;
    }
  }

  /** Bytes queued and not yet ACKed. */
  get unacked(): number {
    return this.outgoing.length;
  }
}

/** Deterministic pseudo-random bytes (xorshift), so failures reproduce. */
export function patternBytes(length: number, seed = 1): Uint8Array {
  const out = new Uint8Array(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

/** SHA-256 hex of bytes. */
export function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}
