/**
 * ferry's DHCPv6 server (RFC 8415) for the one guest on its segment. It
 * hands out the host's own global address (passt's model) in IA_NA, plus
 * resolvers (option 23) and the search list (option 24):
 *
 *   SOLICIT             -> ADVERTISE, or REPLY when the client asked for rapid commit
 *   REQUEST/RENEW/REBIND -> REPLY with the address and lifetimes
 *   CONFIRM             -> REPLY with Success or NotOnLink
 *   RELEASE/DECLINE     -> REPLY with Success
 *   INFORMATION-REQUEST -> REPLY with resolvers and search list only
 *
 * Replies go from ferry's link-local address, port 547, to the client's
 * address and port, written as a complete Ethernet frame into a caller's buffer.
 */
import { type CounterBlock, defineCounter } from '../../sys/counters';
import { rateLimited } from '../../sys/log';
import { IPV6_ALL_DHCP_SERVERS, bytesEqual, equalsAt, isIpv6Multicast, isUnspecified, prefixContains } from '../address';
import type { StackConfig } from '../config';
import { be16, pseudoHeaderSumIpv6 } from '../wire/checksum';
import {
  DHCPV6_HEADER_LENGTH,
  DHCPV6_SERVER_PORT,
  Dhcpv6Error,
  Dhcpv6MessageType,
  Dhcpv6Option,
  Dhcpv6OptionCursor,
  Dhcpv6Status,
  Dhcpv6Summary,
  Dhcpv6Writer,
  duidLlFromMac,
  parseDhcpv6,
} from '../wire/dhcpv6';
import { EtherType, ETHERNET_HEADER_LENGTH, emitEthernet } from '../wire/ethernet';
import { IpProtocol } from '../wire/ipv4';
import { IPV6_HEADER_LENGTH, type Ipv6View, emitIpv6 } from '../wire/ipv6';
import { encodeDomainList } from '../wire/ndp';
import { UDP_HEADER_LENGTH, emitUdp } from '../wire/udp';

/** Why a DHCPv6 message from the guest got no answer. */
export enum Dhcpv6Drop {
  UdpMalformed,
  Truncated,
  OptionOverrun,
  TooManyOptions,
  DuplicateOption,
  BadOptionLength,
  RelayMessage,
  /** DHCPv6 switched off or IPv6 disabled. */
  Disabled,
  /** Source address unspecified or multicast: nowhere to reply. */
  BadSource,
  MissingClientId,
  /** SOLICIT/REBIND/CONFIRM must not name a server (RFC 8415 16). */
  UnexpectedServerId,
  /** REQUEST/RENEW/RELEASE/DECLINE without a server id, or for another server. */
  OtherServer,
  /** Server-to-client types (ADVERTISE, REPLY, RECONFIGURE) or unknown types. */
  IgnoredType,
  /** CONFIRM without any address: RFC 8415 18.3.3 says no reply. */
  ConfirmWithoutAddresses,
  /** The reply would not fit the caller's buffer. */
  NoRoom,
}

const DHCPV6_DROP_LABELS: readonly string[] = [
  'udp_malformed',
  'truncated',
  'option_overrun',
  'too_many_options',
  'duplicate_option',
  'bad_option_length',
  'relay_message',
  'disabled',
  'bad_source',
  'missing_client_id',
  'unexpected_server_id',
  'other_server',
  'ignored_type',
  'confirm_without_addresses',
  'no_room',
];

/** Dhcpv6Error (wire parser) -> Dhcpv6Drop, by enum value. */
const FROM_DHCPV6_ERROR: readonly Dhcpv6Drop[] = [
  Dhcpv6Drop.Truncated, // Ok: unused
  Dhcpv6Drop.Truncated,
  Dhcpv6Drop.OptionOverrun,
  Dhcpv6Drop.TooManyOptions,
  Dhcpv6Drop.DuplicateOption,
  Dhcpv6Drop.BadOptionLength,
  Dhcpv6Drop.RelayMessage,
];

const MALFORMED_LAST = Dhcpv6Drop.RelayMessage;

const DHCPV6_DROP_SLOTS: readonly number[] = DHCPV6_DROP_LABELS.map((reason) =>
  defineCounter('ferry_dhcpv6_drops_total', 'DHCPv6 messages from the guest not answered, by reason', { reason }),
);
const SENT_HELP = 'DHCPv6 messages ferry sent to the guest, by type';
const SLOT_SENT_ADVERTISE = defineCounter('ferry_dhcpv6_sent_total', SENT_HELP, { type: 'advertise' });
const SLOT_SENT_REPLY = defineCounter('ferry_dhcpv6_sent_total', SENT_HELP, { type: 'reply' });

/** Lifetimes and renewal times: ferry's configuration does not change while it runs. */
export const DHCPV6_INFINITE = 0xffffffff;
/** At most this many IA_NAs are answered, and this many stale addresses withdrawn per IA. */
const MAX_IA_NA = 8;
const MAX_ADDRESSES_PER_IA = 8;
const MAX_DNS_SERVERS = 8;
/** OPTION_CLIENT_FQDN (RFC 4704) and its N flag. */
const OPTION_CLIENT_FQDN = 39;
const FQDN_FLAG_N = 0x04;
const MAX_DOMAIN_LIST_BYTES = 1024;
const IPV6_HOP_LIMIT_LINK = 255;

const FRAME_HEADERS = ETHERNET_HEADER_LENGTH + IPV6_HEADER_LENGTH + UDP_HEADER_LENGTH;

/** Answers the guest's DHCPv6 messages. One per worker; no allocation per message. */
export class Dhcpv6Server {
  /** Server DUID: DUID-LL from ferry's MAC (stable across restarts). */
  readonly serverId: Uint8Array;
  private readonly domainList: Uint8Array;
  private readonly dnsServers: Uint8Array[];
  private readonly summary = new Dhcpv6Summary();
  private readonly writer = new Dhcpv6Writer();
  private readonly top = new Dhcpv6OptionCursor();
  private readonly inner = new Dhcpv6OptionCursor();
  private readonly clientAddress = new Uint8Array(16);
  /** --fqdn in wire format (option 39), empty without it. */
  private readonly fqdn: Uint8Array;

  constructor(
    private readonly config: StackConfig,
    private readonly counters: CounterBlock | null,
  ) {
    this.serverId = duidLlFromMac(config.ourMac);
    const names: string[] = [];
    let bytes = 0;
    for (const name of config.searchDomains) {
      const length = encodeDomainList([name]).length;
      if (length === 0 || bytes + length > MAX_DOMAIN_LIST_BYTES) continue;
      names.push(name);
      bytes += length;
    }
    this.domainList = encodeDomainList(names);
    this.fqdn = config.fqdn ? encodeDomainList([config.fqdn]) : new Uint8Array(0);
    this.dnsServers = (config.ipv6?.dns ?? []).filter((a) => a.length === 16).slice(0, MAX_DNS_SERVERS);
  }

  /**
   * Handle one DHCPv6 message from the guest. `ip` is a validated IPv6 view
   * whose upper layer is UDP to port 547 (the UDP checksum is the caller's
   * business: it knows about checksum offload); the guest's Ethernet source
   * MAC is sourceMac[sourceMacOffset..+6). Writes the reply frame into
   * out[outOffset, outOffset+capacity) and returns its length, or 0 when
   * there is none (counted).
   */
  handle(ip: Ipv6View, sourceMac: Uint8Array, sourceMacOffset: number, out: Uint8Array, outOffset: number, capacity: number): number {
    const v6 = this.config.ipv6;
    if (v6 === null || !this.config.dhcpv6) return this.drop(Dhcpv6Drop.Disabled);
    const bytes = ip.bytes;
    const udpOffset = ip.upperOffset;
    if (ip.upperProtocol !== IpProtocol.Udp || ip.upperLength < UDP_HEADER_LENGTH) return this.drop(Dhcpv6Drop.UdpMalformed);
    const udpLength = be16(bytes, udpOffset + 4);
    if (udpLength < UDP_HEADER_LENGTH || udpLength > ip.upperLength) return this.drop(Dhcpv6Drop.UdpMalformed);
    const clientPort = be16(bytes, udpOffset);
    if (be16(bytes, udpOffset + 2) !== DHCPV6_SERVER_PORT || clientPort === 0) return this.drop(Dhcpv6Drop.UdpMalformed);

    this.clientAddress.set(bytes.subarray(ip.srcOffset, ip.srcOffset + 16));
    if (isUnspecified(this.clientAddress) || isIpv6Multicast(this.clientAddress)) return this.drop(Dhcpv6Drop.BadSource);

    const msgOffset = udpOffset + UDP_HEADER_LENGTH;
    const msgLength = udpLength - UDP_HEADER_LENGTH;
    const m = this.summary;
    const error = parseDhcpv6(bytes, msgOffset, msgLength, m);
    if (error !== Dhcpv6Error.Ok) return this.drop(FROM_DHCPV6_ERROR[error]);

    const ourServerId = m.serverIdOffset >= 0 && m.serverIdLength === this.serverId.length && equalsAt(bytes, m.serverIdOffset, this.serverId);
    let replyType: number = Dhcpv6MessageType.REPLY;
    switch (m.messageType) {
      case Dhcpv6MessageType.SOLICIT:
      case Dhcpv6MessageType.REBIND:
      case Dhcpv6MessageType.CONFIRM:
        if (m.clientIdOffset < 0) return this.drop(Dhcpv6Drop.MissingClientId);
        if (m.serverIdOffset >= 0) return this.drop(Dhcpv6Drop.UnexpectedServerId);
        if (m.messageType === Dhcpv6MessageType.SOLICIT && !m.rapidCommit) replyType = Dhcpv6MessageType.ADVERTISE;
        break;
      case Dhcpv6MessageType.REQUEST:
      case Dhcpv6MessageType.RENEW:
      case Dhcpv6MessageType.RELEASE:
      case Dhcpv6MessageType.DECLINE:
        if (m.clientIdOffset < 0) return this.drop(Dhcpv6Drop.MissingClientId);
        if (!ourServerId) return this.drop(Dhcpv6Drop.OtherServer);
        break;
      case Dhcpv6MessageType.INFORMATION_REQUEST:
        if (m.serverIdOffset >= 0 && !ourServerId) return this.drop(Dhcpv6Drop.OtherServer);
        break;
      default:
        return this.drop(Dhcpv6Drop.IgnoredType);
    }

    let confirmStatus = -1;
    if (m.messageType === Dhcpv6MessageType.CONFIRM) {
      confirmStatus = this.confirmStatus(bytes, msgOffset, msgLength, v6.address, v6.prefixLength);
      if (confirmStatus < 0) return this.drop(Dhcpv6Drop.ConfirmWithoutAddresses);
    }

    const dhcpOffset = outOffset + FRAME_HEADERS;
    const limit = Math.min(out.length, outOffset + capacity);
    if (outOffset < 0 || dhcpOffset > limit) return this.drop(Dhcpv6Drop.NoRoom);
    const w = this.writer.reset(out, dhcpOffset, limit - dhcpOffset);
    w.header(replyType, m.transactionId);
    if (m.clientIdOffset >= 0) w.option(Dhcpv6Option.CLIENTID, bytes, m.clientIdOffset, m.clientIdLength);
    w.option(Dhcpv6Option.SERVERID, this.serverId);

    switch (m.messageType) {
      case Dhcpv6MessageType.SOLICIT:
        if (m.rapidCommit) w.emptyOption(Dhcpv6Option.RAPID_COMMIT);
        // Highest preference: the client need not wait for other servers (RFC 8415 18.2.1).
        else w.u16(Dhcpv6Option.PREFERENCE).u16(1).u8(255);
        this.writeIaNas(bytes, msgOffset, msgLength, v6.address);
        this.writeResolverOptions();
        break;
      case Dhcpv6MessageType.REQUEST:
      case Dhcpv6MessageType.RENEW:
      case Dhcpv6MessageType.REBIND:
        this.writeIaNas(bytes, msgOffset, msgLength, v6.address);
        this.writeResolverOptions();
        break;
      case Dhcpv6MessageType.CONFIRM:
        w.status(confirmStatus, confirmStatus === Dhcpv6Status.SUCCESS ? 'addresses on link' : 'not on link');
        break;
      case Dhcpv6MessageType.RELEASE:
      case Dhcpv6MessageType.DECLINE:
        w.status(Dhcpv6Status.SUCCESS, m.messageType === Dhcpv6MessageType.RELEASE ? 'released' : 'declined');
        break;
      default: // INFORMATION_REQUEST
        this.writeResolverOptions();
        break;
    }
    if (w.overflow) return this.drop(Dhcpv6Drop.NoRoom);

    const dhcpLength = w.length;
    const ipOffset = emitEthernet(out, outOffset, sourceMac.subarray(sourceMacOffset, sourceMacOffset + 6), this.config.ourMac, EtherType.Ipv6);
    const udpOut = emitIpv6(out, ipOffset, v6.linkLocal, this.clientAddress, IpProtocol.Udp, UDP_HEADER_LENGTH + dhcpLength, IPV6_HOP_LIMIT_LINK);
    emitUdp(out, udpOut, DHCPV6_SERVER_PORT, clientPort, dhcpLength, pseudoHeaderSumIpv6(v6.linkLocal, 0, this.clientAddress, 0, IpProtocol.Udp, UDP_HEADER_LENGTH + dhcpLength));
    this.counters?.add(replyType === Dhcpv6MessageType.ADVERTISE ? SLOT_SENT_ADVERTISE : SLOT_SENT_REPLY);
    return FRAME_HEADERS + dhcpLength;
  }

  /**
   * One IA_NA in the reply per IA_NA the client sent (same IAID): the first
   * gets the host's address with infinite lifetimes, any other address the
   * client listed is withdrawn (lifetimes 0, RFC 8415 18.3.4), further IAs
   * get NoAddrsAvail: there is one address to give.
   */
  private writeIaNas(bytes: Uint8Array, msgOffset: number, msgLength: number, address: Uint8Array): void {
    const w = this.writer;
    const top = this.top.reset(bytes, msgOffset + DHCPV6_HEADER_LENGTH, msgOffset + msgLength);
    let ias = 0;
    while (top.next() && ias < MAX_IA_NA) {
      if (top.code !== Dhcpv6Option.IA_NA) continue;
      const iaData = top.dataOffset;
      w.begin(Dhcpv6Option.IA_NA).bytes(bytes, iaData, 4); // IAID
      if (ias === 0) {
        w.u32(DHCPV6_INFINITE).u32(DHCPV6_INFINITE); // T1, T2
        w.begin(Dhcpv6Option.IAADDR).bytes(address).u32(DHCPV6_INFINITE).u32(DHCPV6_INFINITE).end();
        const inner = this.inner.reset(bytes, iaData + 12, iaData + top.dataLength);
        let withdrawn = 0;
        while (inner.next() && withdrawn < MAX_ADDRESSES_PER_IA) {
          if (inner.code !== Dhcpv6Option.IAADDR || equalsAt(bytes, inner.dataOffset, address)) continue;
          w.begin(Dhcpv6Option.IAADDR).bytes(bytes, inner.dataOffset, 16).u32(0).u32(0).end();
          withdrawn++;
        }
      } else {
        w.u32(0).u32(0);
        w.status(Dhcpv6Status.NO_ADDRS_AVAIL, 'one address per client');
      }
      w.end();
      ias++;
    }
  }

  /** DNS servers (23) and domain list (24), when there are any. */
  private writeResolverOptions(): void {
    const w = this.writer;
    if (this.dnsServers.length > 0) {
      w.begin(Dhcpv6Option.DNS_SERVERS);
      for (const server of this.dnsServers) w.bytes(server);
      w.end();
    }
    if (this.domainList.length > 0) w.option(Dhcpv6Option.DOMAIN_LIST, this.domainList);
    // RFC 4704: flags N (ferry updates no DNS records), then the name in wire format.
    if (this.fqdn.length > 0) w.begin(OPTION_CLIENT_FQDN).u8(FQDN_FLAG_N).bytes(this.fqdn).end();
  }

  /**
   * CONFIRM: Success when every address in the client's IA_NAs is on our
   * link (the announced /64, or the configured prefix when longer), NotOnLink
   * otherwise, -1 when it listed no address.
   */
  private confirmStatus(bytes: Uint8Array, msgOffset: number, msgLength: number, address: Uint8Array, prefixLength: number): number {
    const onLinkPrefix = Math.min(64, prefixLength);
    let seen = 0;
    let allOnLink = true;
    const top = this.top.reset(bytes, msgOffset + DHCPV6_HEADER_LENGTH, msgOffset + msgLength);
    while (top.next()) {
      if (top.code !== Dhcpv6Option.IA_NA) continue;
      const inner = this.inner.reset(bytes, top.dataOffset + 12, top.dataOffset + top.dataLength);
      while (inner.next()) {
        if (inner.code !== Dhcpv6Option.IAADDR) continue;
        seen++;
        if (!prefixContains(address, onLinkPrefix, bytes.subarray(inner.dataOffset, inner.dataOffset + 16))) allOnLink = false;
      }
    }
    if (seen === 0) return -1;
    return allOnLink ? Dhcpv6Status.SUCCESS : Dhcpv6Status.NOT_ON_LINK;
  }

  private drop(reason: Dhcpv6Drop): number {
    this.counters?.add(DHCPV6_DROP_SLOTS[reason]);
    if (reason <= MALFORMED_LAST) {
      rateLimited('warn', 'dhcpv6 malformed', () => `dhcpv6: dropped guest message: ${DHCPV6_DROP_LABELS[reason]}`);
    }
    return 0;
  }
}

/** Label text of a Dhcpv6Drop (for tests and logs). */
export function dhcpv6DropLabel(reason: Dhcpv6Drop): string {
  return DHCPV6_DROP_LABELS[reason] ?? 'unknown';
}

/** True when the frame's IPv6 destination is one the DHCPv6 server listens on (all servers, or ferry's link-local). */
export function isDhcpv6ServerDestination(config: StackConfig, ip: Ipv6View): boolean {
  const v6 = config.ipv6;
  if (v6 === null) return false;
  const dst = ip.bytes.subarray(ip.dstOffset, ip.dstOffset + 16);
  return bytesEqual(dst, IPV6_ALL_DHCP_SERVERS) || bytesEqual(dst, v6.linkLocal);
}
