/**
 * ferry's side of Neighbor Discovery on the guest segment (passt's model:
 * ferry owns the segment, the guest has the host's address).
 *
 * - Router Solicitation -> Router Advertisement from ferry's router address
 *   (config.ipv6.linkLocal: the host's gateway when that is link-local, as
 *   in passt, else ferry's own link-local): M/O flags when DHCPv6 runs, the /64 of the host's address with
 *   L+A (SLAAC), MTU, RDNSS, DNSSL, source link-layer address.
 * - Unsolicited RAs: `tick(nowMs)` says when one is due; the first one 16 s
 *   after start (past the guest's DAD), then two more 16 s apart, then
 *   every 200-600 s. Solicitations are what real clients rely on.
 * - Neighbor Solicitation for any address other than the guest's own ->
 *   Neighbor Advertisement with ferry's MAC (router flag for the gateway and
 *   ferry's link-local). DAD probes are answered only for addresses ferry
 *   itself uses, so the guest's own addresses never look duplicated.
 *
 * Every reply is written as a complete Ethernet frame into a caller's buffer;
 * the stack only has to hand it to the frontend.
 */
import { type CounterBlock, defineCounter } from '../../sys/counters';
import { rateLimited } from '../../sys/log';
import { IPV6_ALL_NODES, bytesEqual, equalsAt, interfaceIdMatchesMac, isUnspecified, maskAddress, multicastMacForIpv6 } from '../address';
import type { StackConfig } from '../config';
import type { IpPacket, RxFrame, StackContext } from '../context';
import { Dhcpv6Server, isDhcpv6ServerDestination } from './dhcpv6';
import { DropReason, countDrop } from '../drops';
import type { Ipv6ControlHandler } from '../handlers';
import type { UdpView } from '../wire/udp';
import { EtherType, ETHERNET_HEADER_LENGTH, emitEthernet } from '../wire/ethernet';
import { IPV6_HEADER_LENGTH, type Ipv6View, emitIpv6 } from '../wire/ipv6';
import { Icmpv6Error, Icmpv6Type, Icmpv6View, ICMPV6_NEXT_HEADER, icmpv6Checksum } from '../wire/icmpv6';
import { setBe16 } from '../wire/checksum';
import {
  NA_FLAG_OVERRIDE,
  NA_FLAG_ROUTER,
  NA_FLAG_SOLICITED,
  NA_LENGTH,
  NDP_TARGET_OFFSET,
  NdpError,
  NdpOption,
  PREFIX_FLAG_AUTONOMOUS,
  PREFIX_FLAG_ON_LINK,
  dnsslOptionLength,
  encodeDomainList,
  findLinkLayerAddress,
  rdnssOptionLength,
  validateNdp,
  writeDnsslOption,
  writeLinkLayerOption,
  writeMtuOption,
  writeNaHeader,
  writePrefixInfoOption,
  writeRaHeader,
  writeRdnssOption,
} from '../wire/ndp';

/** Why an NDP message from the guest got no answer. */
export enum NdpDrop {
  IcmpTruncated,
  BadChecksum,
  NotNdp,
  Truncated,
  BadCode,
  BadHopLimit,
  ZeroLengthOption,
  OptionOverrun,
  TooManyOptions,
  MulticastTarget,
  SourceLinkLayerWithUnspecifiedSource,
  /** NDP (or RAs) switched off, or IPv6 disabled. */
  Disabled,
  /** RA, NA or Redirect from the guest: nothing to answer. */
  IgnoredType,
  /** NS for the guest's own address (ferry must not claim it). */
  OwnAddress,
  /** DAD probe for an address ferry does not use. */
  DadProbe,
  /** The reply would not fit the caller's buffer. */
  NoRoom,
}

const NDP_DROP_LABELS: readonly string[] = [
  'icmp_truncated',
  'bad_checksum',
  'not_ndp',
  'truncated',
  'bad_code',
  'bad_hop_limit',
  'zero_length_option',
  'option_overrun',
  'too_many_options',
  'multicast_target',
  'slla_with_unspecified_source',
  'disabled',
  'ignored_type',
  'own_address',
  'dad_probe',
  'no_room',
];

/** Drops that mean malformed or hostile input: logged (rate limited). */
const MALFORMED_FIRST = NdpDrop.IcmpTruncated;
const MALFORMED_LAST = NdpDrop.SourceLinkLayerWithUnspecifiedSource;

/** NdpError (wire validator) -> NdpDrop, by enum value. */
const FROM_NDP_ERROR: readonly NdpDrop[] = [
  NdpDrop.NotNdp, // Ok: unused
  NdpDrop.NotNdp,
  NdpDrop.Truncated,
  NdpDrop.BadCode,
  NdpDrop.BadHopLimit,
  NdpDrop.ZeroLengthOption,
  NdpDrop.OptionOverrun,
  NdpDrop.TooManyOptions,
  NdpDrop.MulticastTarget,
  NdpDrop.SourceLinkLayerWithUnspecifiedSource,
];

const NDP_DROP_SLOTS: readonly number[] = NDP_DROP_LABELS.map((reason) =>
  defineCounter('ferry_ndp_drops_total', 'NDP messages from the guest not answered, by reason', { reason }),
);
const SENT_HELP = 'NDP messages ferry sent to the guest, by type';
const SLOT_SENT_RA_SOLICITED = defineCounter('ferry_ndp_sent_total', SENT_HELP, { type: 'ra_solicited' });
const SLOT_SENT_RA_UNSOLICITED = defineCounter('ferry_ndp_sent_total', SENT_HELP, { type: 'ra_unsolicited' });
const SLOT_SENT_NA = defineCounter('ferry_ndp_sent_total', SENT_HELP, { type: 'na' });

/** Router lifetime announced in RAs, seconds (RFC 4861 6.2.1 upper bound). */
export const ROUTER_LIFETIME_SECONDS = 9000;
/** Hop limit the guest should use for its own packets (RA Cur Hop Limit). */
export const RA_CUR_HOP_LIMIT = 64;
/** Lifetimes of the announced prefix, resolvers and search list: ferry's configuration does not change while it runs. */
export const INFINITE_LIFETIME = 0xffffffff;
/** At most this many resolvers in RDNSS, and this many bytes of encoded search domains in DNSSL. */
export const MAX_RDNSS_SERVERS = 8;
export const MAX_DNSSL_BYTES = 1024;
/** Unsolicited RA schedule (RFC 4861 6.2.4 / 10): the first after 16 s, a few quick ones, then every 200-600 s. */
export const INITIAL_RA_COUNT = 3;
export const INITIAL_RA_INTERVAL_MS = 16_000;
export const MIN_RA_INTERVAL_MS = 200_000;
export const MAX_RA_INTERVAL_MS = 600_000;

const IPV6_HOP_LIMIT_NDP = 255;
const IPV6_SRC_IN_HEADER = 8;
const IPV6_DST_IN_HEADER = 24;

/**
 * Build the RA's ICMPv6 message (checksum zero) for a configuration, or
 * null when IPv6 is off. Computed once: the configuration is fixed.
 */
export function buildRouterAdvertisement(config: StackConfig): Uint8Array | null {
  const v6 = config.ipv6;
  if (v6 === null) return null;
  const servers = v6.dns.filter((a) => a.length === 16).slice(0, MAX_RDNSS_SERVERS);
  const domains: string[] = [];
  let domainBytes = 0;
  for (const name of config.searchDomains) {
    const encoded = encodeDomainList([name]).length;
    if (encoded === 0 || domainBytes + encoded > MAX_DNSSL_BYTES) continue;
    domains.push(name);
    domainBytes += encoded;
  }
  const encodedDomains = encodeDomainList(domains);
  // IPv6 links have an MTU of at least 1280 (RFC 8200 5); an MTU option outside that range is left out.
  const withMtu = config.mtu >= 1280 && config.mtu <= 0xffffffff;
  const length =
    16 + 8 + 32 + (withMtu ? 8 : 0) + (servers.length > 0 ? rdnssOptionLength(servers.length) : 0) + (encodedDomains.length > 0 ? dnsslOptionLength(encodedDomains) : 0);
  const out = new Uint8Array(length);
  let at = writeRaHeader(out, 0, {
    curHopLimit: RA_CUR_HOP_LIMIT,
    managed: config.dhcpv6,
    other: config.dhcpv6,
    routerLifetimeSeconds: ROUTER_LIFETIME_SECONDS,
    reachableTimeMs: 0,
    retransTimerMs: 0,
  });
  at += writeLinkLayerOption(out, at, NdpOption.SOURCE_LINK_LAYER, config.ourMac);
  if (withMtu) at += writeMtuOption(out, at, config.mtu);
  // SLAAC needs a /64 (RFC 4862 5.5.3 with Ethernet interface ids), whatever the host's prefix length.
  at += writePrefixInfoOption(out, at, maskAddress(v6.address, 64), 64, PREFIX_FLAG_ON_LINK | PREFIX_FLAG_AUTONOMOUS, INFINITE_LIFETIME, INFINITE_LIFETIME);
  if (servers.length > 0) at += writeRdnssOption(out, at, INFINITE_LIFETIME, servers);
  if (encodedDomains.length > 0) writeDnsslOption(out, at, INFINITE_LIFETIME, encodedDomains);
  return out;
}

/**
 * Answers the guest's Router and Neighbor Solicitations and schedules
 * unsolicited Router Advertisements. One per worker; no allocation per message.
 */
export class NdpResponder {
  private readonly raMessage: Uint8Array | null;
  private readonly icmp = new Icmpv6View();
  /** Scratch copies of addresses taken from the request (emitIpv6 reads from offset 0). */
  private readonly peerAddress = new Uint8Array(16);
  private readonly targetAddress = new Uint8Array(16);
  private readonly peerMac = new Uint8Array(6);
  private readonly allNodesMac = multicastMacForIpv6(IPV6_ALL_NODES);
  private nextRaDue = -1;
  private unsolicitedSent = 0;
  /** End of the caller's output window for the reply being written. */
  private limit = 0;

  /** `random` returns [0, 1) and spreads the periodic RAs (injectable for tests). */
  constructor(
    private readonly config: StackConfig,
    private readonly counters: CounterBlock | null,
    private readonly random: () => number = Math.random,
  ) {
    this.raMessage = config.ndp && config.ra ? buildRouterAdvertisement(config) : null;
  }

  /** Largest frame this responder writes (for sizing the caller's buffer). */
  get maxFrameLength(): number {
    const ra = this.raMessage === null ? 0 : this.raMessage.length;
    return ETHERNET_HEADER_LENGTH + IPV6_HEADER_LENGTH + Math.max(ra, NA_LENGTH + 8);
  }

  /**
   * Handle one NDP message from the guest. `ip` is a validated IPv6 view
   * whose upper layer (findUpperLayer) is ICMPv6; the guest's Ethernet
   * source MAC is sourceMac[sourceMacOffset..+6). Writes the reply as an
   * Ethernet frame into out[outOffset, outOffset+capacity) and returns its
   * length, or 0 when nothing is to be sent (the reason is counted).
   * `checksumVerified`: the caller already checked the ICMPv6 checksum (or
   * the guest left it to offload), so it is not checked again.
   */
  handle(ip: Ipv6View, sourceMac: Uint8Array, sourceMacOffset: number, out: Uint8Array, outOffset: number, capacity: number, checksumVerified = false): number {
    const v6 = this.config.ipv6;
    if (v6 === null || !this.config.ndp) return this.drop(NdpDrop.Disabled);
    const bytes = ip.bytes;
    const msgOffset = ip.upperOffset;
    const msgLength = ip.upperLength;
    const icmp = this.icmp.reset(bytes, msgOffset, msgLength);
    if (ip.upperProtocol !== ICMPV6_NEXT_HEADER || msgLength < 4) return this.drop(NdpDrop.IcmpTruncated);
    if (!checksumVerified) {
      const icmpError = icmp.validate(bytes, ip.srcOffset, ip.dstOffset);
      if (icmpError === Icmpv6Error.Truncated) return this.drop(NdpDrop.IcmpTruncated);
      if (icmpError === Icmpv6Error.BadChecksum) return this.drop(NdpDrop.BadChecksum);
    }
    this.limit = Math.min(out.length, outOffset + Math.max(0, capacity));
    const sourceUnspecified = isUnspecified(bytes.subarray(ip.srcOffset, ip.srcOffset + 16));
    const ndpError = validateNdp(bytes, msgOffset, msgLength, ip.hopLimit, sourceUnspecified);
    if (ndpError !== NdpError.Ok) return this.drop(FROM_NDP_ERROR[ndpError]);

    switch (icmp.type) {
      case Icmpv6Type.ROUTER_SOLICITATION:
        return this.answerRouterSolicitation(ip, sourceUnspecified, sourceMac, sourceMacOffset, out, outOffset);
      case Icmpv6Type.NEIGHBOR_SOLICITATION:
        return this.answerNeighborSolicitation(ip, sourceUnspecified, sourceMac, sourceMacOffset, out, outOffset);
      default:
        return this.drop(NdpDrop.IgnoredType);
    }
  }

  /**
   * Whether an unsolicited RA is due at nowMs (then the caller sends one
   * with writeUnsolicitedRa). The first call only starts the schedule: the
   * first unsolicited RA goes out INITIAL_RA_INTERVAL_MS later, never while
   * a guest link that came up with ferry still has a tentative link-local
   * address (DAD takes 1-2 s, RFC 4862 5.4). Until then, and always, a
   * guest's Router Solicitation (sent once DAD is done, RFC 4861 6.3.7) is
   * answered at once, as passt does. Always false when RAs are off.
   */
  tick(nowMs: number): boolean {
    if (this.raMessage === null) return false;
    if (this.nextRaDue < 0) {
      this.nextRaDue = nowMs + INITIAL_RA_INTERVAL_MS;
      return false;
    }
    if (nowMs < this.nextRaDue) return false;
    this.unsolicitedSent++;
    const interval =
      this.unsolicitedSent < INITIAL_RA_COUNT
        ? INITIAL_RA_INTERVAL_MS
        : MIN_RA_INTERVAL_MS + Math.floor(this.random() * (MAX_RA_INTERVAL_MS - MIN_RA_INTERVAL_MS));
    this.nextRaDue = nowMs + interval;
    return true;
  }

  /** When the next unsolicited RA is due (ms, the clock tick() is given), or -1 before the first tick / when RAs are off. */
  get nextRaDueMs(): number {
    return this.raMessage === null ? -1 : this.nextRaDue;
  }

  /** Write an unsolicited RA to all nodes as an Ethernet frame into out[outOffset, outOffset+capacity); returns its length (0 when RAs are off or it does not fit). */
  writeUnsolicitedRa(out: Uint8Array, outOffset: number, capacity: number): number {
    if (this.raMessage === null || this.config.ipv6 === null) return 0;
    this.limit = Math.min(out.length, outOffset + Math.max(0, capacity));
    const length = this.writeRa(out, outOffset, this.allNodesMac, 0, IPV6_ALL_NODES);
    if (length === 0) return this.drop(NdpDrop.NoRoom);
    this.counters?.add(SLOT_SENT_RA_UNSOLICITED);
    return length;
  }

  private answerRouterSolicitation(ip: Ipv6View, sourceUnspecified: boolean, sourceMac: Uint8Array, sourceMacOffset: number, out: Uint8Array, outOffset: number): number {
    if (this.raMessage === null) return this.drop(NdpDrop.Disabled);
    let length: number;
    if (sourceUnspecified) {
      // No address to answer to yet: RFC 4861 6.2.6 says all-nodes.
      length = this.writeRa(out, outOffset, this.allNodesMac, 0, IPV6_ALL_NODES);
    } else {
      this.copyPeer(ip, sourceMac, sourceMacOffset);
      length = this.writeRa(out, outOffset, this.peerMac, 0, this.peerAddress);
    }
    if (length === 0) return this.drop(NdpDrop.NoRoom);
    this.counters?.add(SLOT_SENT_RA_SOLICITED);
    return length;
  }

  private answerNeighborSolicitation(ip: Ipv6View, sourceUnspecified: boolean, sourceMac: Uint8Array, sourceMacOffset: number, out: Uint8Array, outOffset: number): number {
    const v6 = this.config.ipv6!;
    const bytes = ip.bytes;
    const targetOffset = ip.upperOffset + NDP_TARGET_OFFSET;
    this.targetAddress.set(bytes.subarray(targetOffset, targetOffset + 16));
    const target = this.targetAddress;
    const ferryAddress = bytesEqual(target, v6.linkLocal) || bytesEqual(target, v6.gateway);
    let flags = NA_FLAG_OVERRIDE | (ferryAddress ? NA_FLAG_ROUTER : 0);
    let dstMac: Uint8Array;
    let dst: Uint8Array;
    if (sourceUnspecified) {
      // Duplicate Address Detection: defend only what ferry itself uses,
      // answering to all nodes without the solicited flag (RFC 4861 7.2.4).
      if (!ferryAddress) return this.drop(NdpDrop.DadProbe);
      dstMac = this.allNodesMac;
      dst = IPV6_ALL_NODES;
    } else {
      if (
        isUnspecified(target) ||
        bytesEqual(target, v6.address) ||
        equalsAt(bytes, ip.srcOffset, target) ||
        // An address SLAAC formed from the guest's MAC is the guest's own.
        interfaceIdMatchesMac(target, 0, sourceMac, sourceMacOffset)
      ) {
        return this.drop(NdpDrop.OwnAddress);
      }
      flags |= NA_FLAG_SOLICITED;
      this.copyPeer(ip, sourceMac, sourceMacOffset);
      dstMac = this.peerMac;
      dst = this.peerAddress;
    }
    const icmpLength = NA_LENGTH + 8;
    const icmpOffset = this.writeHeaders(out, outOffset, dstMac, target, dst, icmpLength);
    if (icmpOffset < 0) return this.drop(NdpDrop.NoRoom);
    writeNaHeader(out, icmpOffset, flags, target);
    writeLinkLayerOption(out, icmpOffset + NA_LENGTH, NdpOption.TARGET_LINK_LAYER, this.config.ourMac);
    this.fillChecksum(out, outOffset, icmpOffset, icmpLength);
    this.counters?.add(SLOT_SENT_NA);
    return icmpOffset + icmpLength - outOffset;
  }

  /** The requester's address and MAC (its source link-layer option wins over the Ethernet source). */
  private copyPeer(ip: Ipv6View, sourceMac: Uint8Array, sourceMacOffset: number): void {
    const bytes = ip.bytes;
    this.peerAddress.set(bytes.subarray(ip.srcOffset, ip.srcOffset + 16));
    const lla = findLinkLayerAddress(bytes, ip.upperOffset, ip.upperLength, NdpOption.SOURCE_LINK_LAYER);
    if (lla >= 0) this.peerMac.set(bytes.subarray(lla, lla + 6));
    else this.peerMac.set(sourceMac.subarray(sourceMacOffset, sourceMacOffset + 6));
  }

  private writeRa(out: Uint8Array, outOffset: number, dstMac: Uint8Array, dstMacOffset: number, dst: Uint8Array): number {
    const ra = this.raMessage!;
    const icmpOffset = this.writeHeaders(out, outOffset, dstMac.subarray(dstMacOffset), this.config.ipv6!.linkLocal, dst, ra.length);
    if (icmpOffset < 0) return 0;
    out.set(ra, icmpOffset);
    this.fillChecksum(out, outOffset, icmpOffset, ra.length);
    return icmpOffset + ra.length - outOffset;
  }

  /** Ethernet + IPv6 headers (hop limit 255); returns the ICMPv6 offset or -1 when out is too small. */
  private writeHeaders(out: Uint8Array, outOffset: number, dstMac: Uint8Array, src: Uint8Array, dst: Uint8Array, icmpLength: number): number {
    if (outOffset < 0 || outOffset + ETHERNET_HEADER_LENGTH + IPV6_HEADER_LENGTH + icmpLength > this.limit) return -1;
    const ipOffset = emitEthernet(out, outOffset, dstMac, this.config.ourMac, EtherType.Ipv6);
    return emitIpv6(out, ipOffset, src, dst, ICMPV6_NEXT_HEADER, icmpLength, IPV6_HOP_LIMIT_NDP);
  }

  private fillChecksum(out: Uint8Array, frameOffset: number, icmpOffset: number, icmpLength: number): void {
    const ipOffset = frameOffset + ETHERNET_HEADER_LENGTH;
    setBe16(out, icmpOffset + 2, 0);
    setBe16(out, icmpOffset + 2, icmpv6Checksum(out, ipOffset + IPV6_SRC_IN_HEADER, out, ipOffset + IPV6_DST_IN_HEADER, out, icmpOffset, icmpLength));
  }

  private drop(reason: NdpDrop): number {
    this.counters?.add(NDP_DROP_SLOTS[reason]);
    if (reason >= MALFORMED_FIRST && reason <= MALFORMED_LAST) {
      rateLimited('warn', 'ndp malformed', () => `ndp: dropped guest message: ${NDP_DROP_LABELS[reason]}`);
    }
    return 0;
  }
}

/** Label text of an NdpDrop (for tests and logs). */
export function ndpDropLabel(reason: NdpDrop): string {
  return NDP_DROP_LABELS[reason] ?? 'unknown';
}

/**
 * The stack's Ipv6ControlHandler: NDP (this module) and DHCPv6 (dhcpv6.ts)
 * behind the hooks stack.ts calls, plus the unsolicited RA timer. Replies
 * are built in ctx.scratch and copied into a guest buffer only when there is
 * one to send, so nothing is reserved for messages that get no answer.
 */
export class Ipv6ControlPlane implements Ipv6ControlHandler {
  readonly ndp: NdpResponder;
  readonly dhcpv6: Dhcpv6Server;

  constructor(config: StackConfig, counters: CounterBlock | null, random: () => number = Math.random) {
    this.ndp = new NdpResponder(config, counters, random);
    this.dhcpv6 = new Dhcpv6Server(config, counters);
  }

  /** NDP messages (types 133-137) are consumed, answered or counted; other ICMPv6 is left to the stack. */
  handleIcmpv6(ctx: StackContext, frame: RxFrame, packet: IpPacket): boolean {
    const type = frame.bytes[packet.l4Offset];
    if (type < Icmpv6Type.ROUTER_SOLICITATION || type > Icmpv6Type.REDIRECT) return false;
    // The stack verified the checksum (or the guest left it to offload).
    const length = this.ndp.handle(packet.ipv6, frame.bytes, frame.base + ETHERNET_SOURCE_OFFSET, ctx.scratch, 0, ctx.scratch.length, true);
    sendFromScratch(ctx, length);
    return true;
  }

  /**
   * DHCPv6 to the all-servers group or to ferry's link-local address is
   * consumed (answered or counted); to any other address it is ordinary
   * UDP for the stack to forward.
   */
  handleDhcpv6(ctx: StackContext, frame: RxFrame, packet: IpPacket, _udp: UdpView): boolean {
    if (!isDhcpv6ServerDestination(ctx.config, packet.ipv6)) return false;
    const length = this.dhcpv6.handle(packet.ipv6, frame.bytes, frame.base + ETHERNET_SOURCE_OFFSET, ctx.scratch, 0, ctx.scratch.length);
    sendFromScratch(ctx, length);
    return true;
  }

  /**
   * Send an unsolicited RA when one is due; call from the stack's periodic
   * timer (Stack.onTimer) with the stack clock's time. Returns true when a
   * frame was committed (the caller flushes).
   */
  onTimer(ctx: StackContext, nowMs: number): boolean {
    if (!this.ndp.tick(nowMs)) return false;
    return sendFromScratch(ctx, this.ndp.writeUnsolicitedRa(ctx.scratch, 0, ctx.scratch.length));
  }
}

const ETHERNET_SOURCE_OFFSET = 6;

/** Copy a reply built at ctx.scratch[0, length) into a guest buffer and commit it; counts a drop when the guest has no room. */
function sendFromScratch(ctx: StackContext, length: number): boolean {
  if (length <= 0) return false;
  const capacity = ctx.openFrame(length);
  if (capacity < length) {
    ctx.cancelFrame();
    countDrop(ctx.counters, DropReason.NoGuestBuffers);
    return false;
  }
  ctx.out.set(ctx.scratch.subarray(0, length), ctx.outOffset);
  ctx.commitFrame(length);
  return true;
}
