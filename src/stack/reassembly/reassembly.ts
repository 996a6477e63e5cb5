/**
 * Reassembly of IPv4 and IPv6 fragments from the guest (RFC 791, RFC 8200
 * 4.5), so that a ping or a UDP datagram larger than the guest's MTU goes
 * out whole on a host socket, which is all a socket can send.
 *
 * The guest is untrusted, so every resource is bounded:
 * - at most `maxDatagrams` datagrams in progress; a new one evicts the
 *   oldest (counted) rather than waiting for a timeout, so a guest that
 *   leaves datagrams unfinished cannot stop later ones;
 * - at most `maxBytes` of fragment payload held in all, enforced the same way;
 * - at most `maxPieces` fragments per datagram;
 * - a datagram not complete `timeoutMs` after its first fragment is dropped;
 * - a fragment that overlaps one already held discards its whole datagram
 *   (RFC 5722 for IPv6; for IPv4 too: overlaps only serve to evade
 *   filters), an exact duplicate is ignored, and nothing larger than 65535
 *   bytes is built.
 *
 * Each datagram slot owns a buffer allocated on first use and reused: the
 * payload is copied at a fixed position (PAYLOAD_AT), and when the first
 * fragment arrives its Ethernet and IP headers are placed just before it,
 * so the complete datagram is one contiguous Ethernet frame the stack
 * dispatches like any other.
 *
 * IPv6: only a Fragment header right after the fixed header is taken (what
 * Linux and other guests send); the fragment's Next Header becomes the
 * fixed header's.
 */
import { type OffloadInfo, SegmentList } from '../../io/frame-io';
import type { RxFrame } from '../context';
import type { Ipv4View } from '../wire/ipv4';
import type { Ipv6View } from '../wire/ipv6';
import { internetChecksum } from '../wire/checksum';
import { DropReason } from '../drops';

export interface ReassemblyLimits {
  /** Datagrams in progress at once. */
  maxDatagrams: number;
  /** Fragment payload bytes held over all datagrams in progress. */
  maxBytes: number;
  /** Fragments per datagram. */
  maxPieces: number;
  /** From a datagram's first fragment to its completion. */
  timeoutMs: number;
}

/**
 * Linux's defaults are 4 MiB and 30 s per namespace (ipfrag_high_thresh,
 * ipfrag_time); one guest gets less: enough for a few 64 KiB datagrams.
 */
export const DEFAULT_REASSEMBLY_LIMITS: ReassemblyLimits = { maxDatagrams: 16, maxBytes: 1024 * 1024, maxPieces: 128, timeoutMs: 15_000 };

/** Offload of a reassembled datagram: none (its checksums are whole, as the guest sent them). */
export const NO_OFFLOAD: OffloadInfo = { flags: 0, gsoType: 0, hdrLen: 0, gsoSize: 0, csumStart: 0, csumOffset: 0 };

/** What became of a fragment. */
export enum FragmentOutcome {
  /** Held; its datagram is not complete yet. */
  Held,
  /** Its datagram is complete: `Reassembler.datagram` is the whole frame. */
  Complete,
  /** Not taken (DropReason in `Reassembler.dropReason`). */
  Dropped,
}

const ETHERNET_HEADER = 14;
const MAX_IPV4_HEADER = 60;
const IPV6_HEADER = 40;
const FRAGMENT_HEADER = 8;
const IPV6_FRAGMENT_PROTOCOL = 44;
/** Payload byte 0 of every slot buffer: room for the Ethernet and the largest IP header before it. */
const PAYLOAD_AT = ETHERNET_HEADER + MAX_IPV4_HEADER;
/** Largest IP datagram (IPv4 total length, IPv6 payload length). */
const MAX_DATAGRAM = 65535;
const KEY_BYTES = 40; // source 16, destination 16, identification 4, protocol 1, padding 2, atomic 1

/** Fragments of the guest's datagrams, put back together within bounded memory. */
export class Reassembler {
  /** After Complete: the datagram as one Ethernet frame (valid until the next call). */
  readonly datagram = new SegmentList(1);
  /** After Dropped, and for each expired or evicted datagram: why. */
  dropReason: DropReason = DropReason.FragmentMalformed;

  private readonly inUse: Uint8Array;
  private readonly family: Uint8Array;
  private readonly keys: Uint8Array;
  private readonly deadline: Float64Array;
  private readonly started: Float64Array;
  /** Payload length once the last fragment (MF clear) is seen, else -1. */
  private readonly total: Int32Array;
  private readonly held: Int32Array;
  /** IP header length once the first fragment (offset 0) is seen, else -1. */
  private readonly headerLength: Int32Array;
  /** IPv6: Next Header of the offset-0 fragment. */
  private readonly upperProtocol: Uint8Array;
  /** Per slot: maxPieces [start, end) ranges, unsorted. */
  private readonly pieces: Int32Array;
  private readonly pieceCount: Int32Array;
  private readonly buffers: (Uint8Array | null)[];
  private readonly key = new Uint8Array(KEY_BYTES);
  private bytesHeld = 0;
  private active = 0;

  constructor(
    private readonly limits: ReassemblyLimits = DEFAULT_REASSEMBLY_LIMITS,
    /** Called once per datagram given up without a fragment in hand (timeout, eviction). */
    private readonly onGiveUp: (reason: DropReason) => void = () => undefined,
  ) {
    const n = limits.maxDatagrams;
    this.inUse = new Uint8Array(n);
    this.family = new Uint8Array(n);
    this.keys = new Uint8Array(n * KEY_BYTES);
    this.deadline = new Float64Array(n);
    this.started = new Float64Array(n);
    this.total = new Int32Array(n);
    this.held = new Int32Array(n);
    this.headerLength = new Int32Array(n);
    this.upperProtocol = new Uint8Array(n);
    this.pieces = new Int32Array(n * limits.maxPieces * 2);
    this.pieceCount = new Int32Array(n);
    this.buffers = new Array<Uint8Array | null>(n).fill(null);
  }

  /** Datagrams in progress. */
  get pending(): number {
    return this.active;
  }

  /** Fragment payload bytes held. */
  get bytes(): number {
    return this.bytesHeld;
  }

  /** An IPv4 fragment (`ip` over frame.bytes, validated by the caller). */
  addIpv4(frame: RxFrame, ip: Ipv4View, now: number): FragmentOutcome {
    const bytes = frame.bytes;
    const key = this.key;
    key.fill(0);
    key.set(bytes.subarray(ip.srcOffset, ip.srcOffset + 4), 0);
    key.set(bytes.subarray(ip.dstOffset, ip.dstOffset + 4), 16);
    const id = ip.identification;
    key[32] = id >>> 8;
    key[33] = id & 0xff;
    key[36] = ip.protocol;
    const headerLength = ip.headerLength;
    return this.add(frame, 4, ip.fragmentOffset, ip.payloadLength, ip.moreFragments, ip.payloadOffset, ip.payloadOffset - headerLength, headerLength, 0, now);
  }

  /**
   * An IPv6 packet with a Fragment header (`ip` over frame.bytes,
   * validated; the caller made the first 48 bytes of the packet contiguous).
   */
  addIpv6(frame: RxFrame, ip: Ipv6View, now: number): FragmentOutcome {
    if (ip.nextHeader !== IPV6_FRAGMENT_PROTOCOL || ip.payloadLength < FRAGMENT_HEADER) return this.drop(DropReason.FragmentUnsupported);
    const bytes = frame.bytes;
    const l3 = ip.srcOffset - 8;
    const fh = l3 + IPV6_HEADER;
    const field = (bytes[fh + 2] << 8) | bytes[fh + 3];
    const key = this.key;
    key.fill(0);
    key.set(bytes.subarray(ip.srcOffset, ip.srcOffset + 16), 0);
    key.set(bytes.subarray(ip.dstOffset, ip.dstOffset + 16), 16);
    key.set(bytes.subarray(fh + 4, fh + 8), 32);
    return this.add(frame, 6, field & 0xfff8, ip.payloadLength - FRAGMENT_HEADER, (field & 1) !== 0, fh + FRAGMENT_HEADER, l3, IPV6_HEADER, bytes[fh], now);
  }

  /** Drop every datagram whose time is up; returns how many. */
  expire(now: number): number {
    let expired = 0;
    for (let slot = 0; slot < this.inUse.length; slot++) {
      if (this.inUse[slot] === 1 && now >= this.deadline[slot]) {
        this.release(slot);
        this.onGiveUp(DropReason.FragmentTimeout);
        expired++;
      }
    }
    return expired;
  }

  /** Forget everything in progress (buffers are kept). */
  clear(): void {
    for (let slot = 0; slot < this.inUse.length; slot++) if (this.inUse[slot] === 1) this.release(slot);
  }

  private add(
    frame: RxFrame,
    family: 4 | 6,
    offset: number,
    length: number,
    more: boolean,
    payloadAt: number,
    headerAt: number,
    headerLength: number,
    upperProtocol: number,
    now: number,
  ): FragmentOutcome {
    // All but the last carry a multiple of 8 bytes; none is empty but an atomic one.
    if ((more && (length === 0 || (length & 7) !== 0)) || offset + length > MAX_DATAGRAM) return this.drop(DropReason.FragmentMalformed);
    this.expire(now);
    // RFC 6946: an atomic fragment (IPv6 offset 0, no M) stands alone, whatever else shares its identification.
    if (offset === 0 && !more) this.key[KEY_BYTES - 1] = 1;
    let slot = this.find(family);
    if (slot < 0) slot = this.open(family, now);
    if (!this.fits(slot, length)) return this.drop(DropReason.FragmentEvicted);
    const end = offset + length;
    const total = this.total[slot];
    if ((total >= 0 && (end > total || (!more && end !== total))) || (!more && this.maxEnd(slot) > end)) return this.discard(slot, DropReason.FragmentMalformed);
    const overlap = this.overlap(slot, offset, end);
    if (overlap === 2) return this.drop(DropReason.FragmentDuplicate);
    if (overlap === 1) return this.discard(slot, DropReason.FragmentOverlap);
    const count = this.pieceCount[slot];
    if (count >= this.limits.maxPieces) return this.discard(slot, DropReason.FragmentMalformed);
    const at = (slot * this.limits.maxPieces + count) * 2;
    this.pieces[at] = offset;
    this.pieces[at + 1] = end;
    this.pieceCount[slot] = count + 1;
    this.held[slot] += length;
    this.bytesHeld += length;
    if (!more) this.total[slot] = end;

    let buffer = this.buffers[slot];
    if (buffer === null) {
      buffer = new Uint8Array(PAYLOAD_AT + MAX_DATAGRAM);
      this.buffers[slot] = buffer;
    }
    const segments = frame.segments;
    const base = frame.base;
    if (segments !== null) segments.copyOut(payloadAt - base, buffer, PAYLOAD_AT + offset, length);
    else buffer.set(frame.bytes.subarray(payloadAt, payloadAt + length), PAYLOAD_AT + offset);
    if (offset === 0) {
      // The first fragment's headers (with IPv4 options) head the datagram.
      const start = PAYLOAD_AT - headerLength - ETHERNET_HEADER;
      buffer.set(frame.bytes.subarray(base, base + ETHERNET_HEADER), start);
      buffer.set(frame.bytes.subarray(headerAt, headerAt + headerLength), start + ETHERNET_HEADER);
      this.headerLength[slot] = headerLength;
      this.upperProtocol[slot] = upperProtocol;
    }
    if (this.total[slot] < 0 || this.held[slot] !== this.total[slot] || this.headerLength[slot] < 0) return FragmentOutcome.Held;
    return this.complete(slot, buffer);
  }

  /** Turn slot's buffer into the datagram frame and free the slot. */
  private complete(slot: number, buffer: Uint8Array): FragmentOutcome {
    const headerLength = this.headerLength[slot];
    const total = this.total[slot];
    const ip = PAYLOAD_AT - headerLength;
    if (this.family[slot] === 4) {
      if (headerLength + total > MAX_DATAGRAM) return this.discard(slot, DropReason.FragmentMalformed);
      const length = headerLength + total;
      buffer[ip + 2] = length >>> 8;
      buffer[ip + 3] = length & 0xff;
      buffer[ip + 6] = 0; // flags (DF, MF) and offset: a whole datagram now
      buffer[ip + 7] = 0;
      buffer[ip + 10] = 0;
      buffer[ip + 11] = 0;
      const sum = internetChecksum(buffer, ip, headerLength);
      buffer[ip + 10] = sum >>> 8;
      buffer[ip + 11] = sum & 0xff;
    } else {
      buffer[ip + 4] = total >>> 8;
      buffer[ip + 5] = total & 0xff;
      buffer[ip + 6] = this.upperProtocol[slot];
    }
    this.release(slot);
    this.datagram.clear();
    this.datagram.push(buffer, ip - ETHERNET_HEADER, ETHERNET_HEADER + headerLength + total);
    return FragmentOutcome.Complete;
  }

  /** The slot of the datagram this.key names, or -1. */
  private find(family: 4 | 6): number {
    const keys = this.keys;
    const key = this.key;
    for (let slot = 0; slot < this.inUse.length; slot++) {
      if (this.inUse[slot] !== 1 || this.family[slot] !== family) continue;
      const at = slot * KEY_BYTES;
      let same = true;
      for (let i = 0; i < KEY_BYTES && same; i++) same = keys[at + i] === key[i];
      if (same) return slot;
    }
    return -1;
  }

  /** A slot for a new datagram (this.key), evicting the oldest when all are taken. */
  private open(family: 4 | 6, now: number): number {
    let slot = this.inUse.indexOf(0);
    if (slot < 0) {
      slot = this.oldest(-1);
      this.release(slot);
      this.onGiveUp(DropReason.FragmentEvicted);
    }
    this.inUse[slot] = 1;
    this.active++;
    this.family[slot] = family;
    this.keys.set(this.key, slot * KEY_BYTES);
    this.started[slot] = now;
    this.deadline[slot] = now + this.limits.timeoutMs;
    this.total[slot] = -1;
    this.held[slot] = 0;
    this.headerLength[slot] = -1;
    this.pieceCount[slot] = 0;
    return slot;
  }

  /** Make room for `length` more bytes in `slot` by evicting older datagrams; false when it cannot fit at all. */
  private fits(slot: number, length: number): boolean {
    if (length > this.limits.maxBytes) {
      this.discard(slot, DropReason.FragmentEvicted);
      return false;
    }
    while (this.bytesHeld + length > this.limits.maxBytes) {
      const victim = this.oldest(slot);
      if (victim < 0) {
        this.discard(slot, DropReason.FragmentEvicted);
        return false;
      }
      this.release(victim);
      this.onGiveUp(DropReason.FragmentEvicted);
    }
    return true;
  }

  /** The datagram in progress started first, other than `except`, or -1. */
  private oldest(except: number): number {
    let found = -1;
    for (let slot = 0; slot < this.inUse.length; slot++) {
      if (this.inUse[slot] === 1 && slot !== except && (found < 0 || this.started[slot] < this.started[found])) found = slot;
    }
    return found;
  }

  /** 0: [start, end) is new; 1: it overlaps a held fragment; 2: it is an exact copy of one. */
  private overlap(slot: number, start: number, end: number): number {
    const first = slot * this.limits.maxPieces * 2;
    for (let i = 0; i < this.pieceCount[slot]; i++) {
      const s = this.pieces[first + 2 * i];
      const e = this.pieces[first + 2 * i + 1];
      if (s === start && e === end) return 2;
      if (start < e && s < end) return 1;
    }
    return 0;
  }

  private maxEnd(slot: number): number {
    const first = slot * this.limits.maxPieces * 2;
    let max = 0;
    for (let i = 0; i < this.pieceCount[slot]; i++) max = Math.max(max, this.pieces[first + 2 * i + 1]);
    return max;
  }

  private release(slot: number): void {
    this.inUse[slot] = 0;
    this.active--;
    this.bytesHeld -= this.held[slot];
    this.held[slot] = 0;
  }

  /** Give up slot's datagram because of the fragment in hand. */
  private discard(slot: number, reason: DropReason): FragmentOutcome {
    if (this.inUse[slot] === 1) this.release(slot);
    return this.drop(reason);
  }

  private drop(reason: DropReason): FragmentOutcome {
    this.dropReason = reason;
    return FragmentOutcome.Dropped;
  }
}
