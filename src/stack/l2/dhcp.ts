/**
 * DHCPv4 server (RFC 2131 / RFC 2132) for the one guest on the segment,
 * passt's model: the guest is offered the host's own address, with an
 * infinite lease; the server identifier (and the replies' source) is the
 * gateway address.
 *
 * Handled: DISCOVER -> OFFER; REQUEST -> ACK, or NAK when the requested
 * address (option 50, else ciaddr) is not the guest's or the server
 * identifier is not ours; INFORM -> ACK without yiaddr and lease; RELEASE
 * and DECLINE are noted and not answered.
 * Options sent: 53, 54, 51, 1, 3, 6, 15 (if asked), 26, 119 (RFC 3397,
 * with suffix compression, split per RFC 3396), 121 (RFC 3442) when the
 * gateway is outside the guest's prefix.
 * Option parsing is bounded: every option must fit its area, option 52
 * (overload) is honoured once (file, then sname), at most MAX_OPTIONS options.
 */
import type { IpPacket, RxFrame, StackContext } from '../context';
import { UDP4_DATA_OFFSET } from '../context';
import type { StackConfig } from '../config';
import type { UdpView } from '../wire/udp';
import { BROADCAST_MAC } from '../wire/ethernet';
import { be32, setBe16, setBe32 } from '../wire/checksum';
import { DropReason, countDrop } from '../drops';
import { log, rateLimited } from '../../sys/log';

export const DHCP_SERVER_PORT = 67;
export const DHCP_CLIENT_PORT = 68;

/** Fixed BOOTP header (236 bytes) plus the magic cookie. */
export const DHCP_OPTIONS_OFFSET = 240;
const MAGIC_COOKIE = 0x63825363;
/** Replies are padded to the classic BOOTP minimum; some clients expect it. */
const MIN_REPLY_LENGTH = 300;
/** Bound on options parsed in one message, whatever the areas hold. */
export const MAX_OPTIONS = 256;
const INFINITE_LEASE = 0xffffffff;

/** Option 53 values (RFC 2132 9.6). */
export const DhcpMessageType = {
  Discover: 1,
  Offer: 2,
  Request: 3,
  Decline: 4,
  Ack: 5,
  Nak: 6,
  Release: 7,
  Inform: 8,
} as const;

/** Option codes used here (RFC 2132, 3397, 3442). */
export const DhcpOption = {
  Pad: 0,
  SubnetMask: 1,
  Router: 3,
  DomainNameServer: 6,
  HostName: 12,
  DomainName: 15,
  InterfaceMtu: 26,
  RequestedAddress: 50,
  LeaseTime: 51,
  Overload: 52,
  MessageType: 53,
  ServerIdentifier: 54,
  ParameterRequestList: 55,
  Message: 56,
  ClientFqdn: 81,
  DomainSearch: 119,
  ClasslessStaticRoute: 121,
  End: 255,
} as const;

/** Why a DHCP message is unusable (0 = fine). */
export enum DhcpError {
  Ok = 0,
  Truncated = 1,
  /** Not a BOOTREQUEST from an Ethernet client (op, htype, hlen). */
  NotRequest = 2,
  BadMagic = 3,
  /** An option's length runs past its area (or the area ends inside an option). */
  OptionOverrun = 4,
  TooManyOptions = 5,
  /** Option 53 missing or of the wrong size (plain BOOTP is not served). */
  NoMessageType = 6,
}

/**
 * Parsed option table for one message: offset and length of each option's
 * value in the message bytes (-1 = absent). First occurrence wins. Reused.
 */
export class DhcpOptions {
  readonly offsets = new Int32Array(256);
  readonly lengths = new Int32Array(256);
  count = 0;

  /** Forget all options. */
  clear(): void {
    this.offsets.fill(-1);
    this.lengths.fill(0);
    this.count = 0;
  }

  /** True when option `code` was present. */
  has(code: number): boolean {
    return this.offsets[code] >= 0;
  }
}

/**
 * Parse one options area bytes[start, end) into out. Returns DhcpError.Ok on
 * End or at the area's end, else the error. Only the first occurrence of a
 * code is kept.
 */
function parseArea(bytes: Uint8Array, start: number, end: number, out: DhcpOptions): DhcpError {
  let at = start;
  while (at < end) {
    const code = bytes[at];
    if (code === DhcpOption.Pad) {
      at++;
      continue;
    }
    if (code === DhcpOption.End) return DhcpError.Ok;
    if (at + 2 > end) return DhcpError.OptionOverrun;
    const len = bytes[at + 1];
    if (at + 2 + len > end) return DhcpError.OptionOverrun;
    if (++out.count > MAX_OPTIONS) return DhcpError.TooManyOptions;
    if (out.offsets[code] < 0) {
      out.offsets[code] = at + 2;
      out.lengths[code] = len;
    }
    at += 2 + len;
  }
  return DhcpError.Ok;
}

/**
 * Validate a DHCP message at bytes[offset, offset+length) and fill `out`
 * with its options (the main area, then file and sname if option 52 says
 * they are overloaded). Returns a DhcpError.
 */
export function parseDhcpMessage(bytes: Uint8Array, offset: number, length: number, out: DhcpOptions): DhcpError {
  out.clear();
  if (length < DHCP_OPTIONS_OFFSET || offset + length > bytes.length) return DhcpError.Truncated;
  if (bytes[offset] !== 1 || bytes[offset + 1] !== 1 || bytes[offset + 2] !== 6) return DhcpError.NotRequest;
  if (be32(bytes, offset + 236) !== MAGIC_COOKIE) return DhcpError.BadMagic;
  let error = parseArea(bytes, offset + DHCP_OPTIONS_OFFSET, offset + length, out);
  if (error !== DhcpError.Ok) return error;
  // Option 52 is only meaningful in the main area; an overload option found
  // inside file/sname is ignored (first occurrence wins), so no loop.
  const overloadAt = out.offsets[DhcpOption.Overload];
  if (overloadAt >= 0 && out.lengths[DhcpOption.Overload] === 1) {
    const overload = bytes[overloadAt];
    if (overload & 1) {
      error = parseArea(bytes, offset + 108, offset + 236, out);
      if (error !== DhcpError.Ok) return error;
    }
    if (overload & 2) {
      error = parseArea(bytes, offset + 44, offset + 108, out);
      if (error !== DhcpError.Ok) return error;
    }
  }
  if (out.offsets[DhcpOption.MessageType] < 0 || out.lengths[DhcpOption.MessageType] !== 1) return DhcpError.NoMessageType;
  return DhcpError.Ok;
}

/**
 * Encode domain names as an RFC 1035 name list with RFC 1035 4.1.4
 * compression (pointers relative to the start of the list, RFC 3397).
 * Invalid names (empty labels inside, labels over 63 bytes, names over 255
 * bytes, non-ASCII) are skipped. Returns the encoded bytes.
 */
export function encodeDomainSearch(domains: readonly string[]): Uint8Array {
  const out: number[] = [];
  const suffixes = new Map<string, number>();
  for (const raw of domains) {
    const name = raw.endsWith('.') ? raw.slice(0, -1) : raw;
    if (name.length === 0 || name.length > 253 || !/^[\x21-\x7e]+$/.test(name)) continue;
    const labels = name.split('.');
    if (labels.some((label) => label.length === 0 || label.length > 63)) continue;
    for (let i = 0; i < labels.length; i++) {
      const suffix = labels.slice(i).join('.').toLowerCase();
      const pointer = suffixes.get(suffix);
      if (pointer !== undefined) {
        out.push(0xc0 | (pointer >> 8), pointer & 0xff);
        break;
      }
      if (out.length < 0x3fff) suffixes.set(suffix, out.length);
      out.push(labels[i].length);
      for (let j = 0; j < labels[i].length; j++) out.push(labels[i].charCodeAt(j));
      if (i === labels.length - 1) out.push(0);
    }
  }
  return Uint8Array.from(out);
}

/** Per-configuration constants, computed once. */
interface DhcpStatic {
  search: Uint8Array;
  /** Option 12's value (ASCII), empty without -H. */
  hostname: Uint8Array;
  /** Option 81's domain name in wire format, empty without --fqdn. */
  fqdn: Uint8Array;
  mask: Uint8Array;
  /** The gateway lies outside the guest's prefix: send option 121 routes. */
  offLinkGateway: boolean;
}

const statics = new WeakMap<StackConfig, DhcpStatic>();

function staticsFor(config: StackConfig): DhcpStatic {
  let s = statics.get(config);
  if (s === undefined) {
    const ipv4 = config.ipv4!;
    const prefix = Math.max(0, Math.min(32, ipv4.prefixLength));
    const maskValue = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
    const mask = new Uint8Array(4);
    setBe32(mask, 0, maskValue);
    const offLink = ((be32(ipv4.address, 0) ^ be32(ipv4.gateway, 0)) & maskValue) !== 0 || prefix === 32;
    const hostname = Uint8Array.from(Buffer.from(config.hostname ?? '', 'ascii').subarray(0, 255));
    // One name, no compression: the encoding of a search list of one.
    const fqdn = config.fqdn ? encodeDomainSearch([config.fqdn]) : new Uint8Array(0);
    s = { search: encodeDomainSearch(config.searchDomains), hostname, fqdn: fqdn.length + 3 <= 255 ? fqdn : new Uint8Array(0), mask, offLinkGateway: offLink };
    statics.set(config, s);
  }
  return s;
}

const options = new DhcpOptions();
const BROADCAST_ADDRESS = new Uint8Array([255, 255, 255, 255]);
const destinationIp = new Uint8Array(4);
const destinationMac = new Uint8Array(6);

function equal4(a: Uint8Array, aOffset: number, b: Uint8Array): boolean {
  return a[aOffset] === b[0] && a[aOffset + 1] === b[1] && a[aOffset + 2] === b[2] && a[aOffset + 3] === b[3];
}

function isZero4(a: Uint8Array, offset: number): boolean {
  return (a[offset] | a[offset + 1] | a[offset + 2] | a[offset + 3]) === 0;
}

/** True when the parameter request list (option 55) asks for `code`. */
function requested(bytes: Uint8Array, code: number): boolean {
  const at = options.offsets[DhcpOption.ParameterRequestList];
  if (at < 0) return false;
  const end = at + options.lengths[DhcpOption.ParameterRequestList];
  for (let i = at; i < end; i++) if (bytes[i] === code) return true;
  return false;
}

/**
 * Handle one DHCP message from the guest (UDP to port 67; whole frame
 * contiguous; UDP header and checksum validated). Returns true when a reply
 * was queued.
 */
export function handleDhcp(ctx: StackContext, frame: RxFrame, packet: IpPacket, udp: UdpView): boolean {
  const ipv4 = ctx.config.ipv4;
  if (ipv4 === null || !ctx.config.dhcp) {
    countDrop(ctx.counters, DropReason.DhcpIgnored);
    return false;
  }
  void packet;
  const bytes = frame.bytes;
  const msg = udp.dataOffset;
  const error = parseDhcpMessage(bytes, msg, udp.dataLength, options);
  if (error !== DhcpError.Ok) {
    countDrop(ctx.counters, error === DhcpError.NoMessageType ? DropReason.DhcpIgnored : DropReason.DhcpMalformed, () => `DHCP ${DhcpError[error]}`);
    return false;
  }
  const type = bytes[options.offsets[DhcpOption.MessageType]];
  // Relayed requests cannot reach us on a point-to-point segment.
  if (!isZero4(bytes, msg + 24)) {
    countDrop(ctx.counters, DropReason.DhcpIgnored);
    return false;
  }
  let reply: number;
  switch (type) {
    case DhcpMessageType.Discover:
      reply = DhcpMessageType.Offer;
      break;
    case DhcpMessageType.Request:
      reply = requestAcceptable(bytes, msg, ipv4.address, ipv4.gateway) ? DhcpMessageType.Ack : DhcpMessageType.Nak;
      break;
    case DhcpMessageType.Inform:
      reply = DhcpMessageType.Ack;
      break;
    case DhcpMessageType.Release:
      log.debug('dhcp: guest released its address');
      countDrop(ctx.counters, DropReason.DhcpIgnored);
      return false;
    case DhcpMessageType.Decline:
      rateLimited('warn', 'dhcp decline', () => 'dhcp: guest declined its address: another host on its segment claims it?');
      countDrop(ctx.counters, DropReason.DhcpIgnored);
      return false;
    default:
      countDrop(ctx.counters, DropReason.DhcpIgnored);
      return false;
  }
  return sendReply(ctx, bytes, msg, type, reply);
}

/** REQUEST checks: server identifier (if any) ours, requested address (option 50, else ciaddr) the guest's. */
function requestAcceptable(bytes: Uint8Array, msg: number, address: Uint8Array, serverId: Uint8Array): boolean {
  const sid = options.offsets[DhcpOption.ServerIdentifier];
  if (sid >= 0 && (options.lengths[DhcpOption.ServerIdentifier] !== 4 || !equal4(bytes, sid, serverId))) return false;
  const req = options.offsets[DhcpOption.RequestedAddress];
  if (req >= 0) return options.lengths[DhcpOption.RequestedAddress] === 4 && equal4(bytes, req, address);
  return equal4(bytes, msg + 12, address);
}

/** Upper bound of a reply's DHCP message length for this configuration. */
function replyMaxLength(config: StackConfig, s: DhcpStatic): number {
  const dnsCount = Math.min(config.ipv4!.dns.length, 63);
  const search = s.search.length + 2 * Math.ceil(s.search.length / 255);
  const domainName = config.searchDomains.length > 0 ? 2 + Math.min(255, config.searchDomains[0].length) : 0;
  const names = (s.hostname.length > 0 ? 2 + s.hostname.length : 0) + (s.fqdn.length > 0 ? 2 + 3 + s.fqdn.length : 0);
  // 53, 54, 51, 1, 3, 121, 6, 15, 26, 119, 12, 81, End
  const options = 3 + 6 + 6 + 6 + 6 + 16 + (2 + 4 * dnsCount) + domainName + 4 + search + names + 1;
  return Math.max(MIN_REPLY_LENGTH, DHCP_OPTIONS_OFFSET + options);
}

function sendReply(ctx: StackContext, request: Uint8Array, msg: number, requestType: number, replyType: number): boolean {
  const config = ctx.config;
  const ipv4 = config.ipv4!;
  const s = staticsFor(config);
  const maxData = replyMaxLength(config, s);
  if (ctx.openFrame(UDP4_DATA_OFFSET + maxData) < UDP4_DATA_OFFSET + maxData) {
    ctx.cancelFrame();
    countDrop(ctx.counters, DropReason.NoGuestBuffers);
    return false;
  }
  const out = ctx.out;
  const base = ctx.outOffset + UDP4_DATA_OFFSET;
  out.fill(0, base, base + DHCP_OPTIONS_OFFSET);
  const nak = replyType === DhcpMessageType.Nak;
  const inform = requestType === DhcpMessageType.Inform;
  out[base] = 2; // BOOTREPLY
  out[base + 1] = 1;
  out[base + 2] = 6;
  for (let i = 4; i < 8; i++) out[base + i] = request[msg + i]; // xid
  out[base + 10] = request[msg + 10] & 0x80; // flags: broadcast bit only
  if (!nak && (inform || requestType === DhcpMessageType.Request)) for (let i = 12; i < 16; i++) out[base + i] = request[msg + i]; // ciaddr
  if (!nak && !inform) out.set(ipv4.address.subarray(0, 4), base + 16); // yiaddr
  for (let i = 28; i < 44; i++) out[base + i] = request[msg + i]; // chaddr
  setBe32(out, base + 236, MAGIC_COOKIE);

  let at = base + DHCP_OPTIONS_OFFSET;
  at = putOption(out, at, DhcpOption.MessageType, 1);
  out[at - 1] = replyType;
  at = putOption(out, at, DhcpOption.ServerIdentifier, 4);
  out.set(ipv4.gateway.subarray(0, 4), at - 4);
  if (!nak) {
    if (!inform) {
      at = putOption(out, at, DhcpOption.LeaseTime, 4);
      setBe32(out, at - 4, INFINITE_LEASE);
    }
    at = putOption(out, at, DhcpOption.SubnetMask, 4);
    out.set(s.mask, at - 4);
    at = putOption(out, at, DhcpOption.Router, 4);
    out.set(ipv4.gateway.subarray(0, 4), at - 4);
    if (s.offLinkGateway) at = putClasslessRoutes(out, at, ipv4.gateway);
    const dnsCount = Math.min(ipv4.dns.length, 63);
    if (dnsCount > 0) {
      at = putOption(out, at, DhcpOption.DomainNameServer, 4 * dnsCount);
      for (let i = 0; i < dnsCount; i++) out.set(ipv4.dns[i].subarray(0, 4), at - 4 * dnsCount + 4 * i);
    }
    if (config.searchDomains.length > 0 && requested(request, DhcpOption.DomainName)) at = putDomainName(out, at, config.searchDomains[0]);
    if (config.mtu >= 68 && config.mtu <= 65535) {
      at = putOption(out, at, DhcpOption.InterfaceMtu, 2);
      setBe16(out, at - 2, config.mtu);
    }
    if (s.hostname.length > 0) {
      at = putOption(out, at, DhcpOption.HostName, s.hostname.length);
      out.set(s.hostname, at - s.hostname.length);
    }
    if (s.fqdn.length > 0) at = putClientFqdn(out, at, s.fqdn);
    // RFC 3396: values over 255 bytes go in consecutive instances of the option.
    for (let done = 0; done < s.search.length; ) {
      const n = Math.min(255, s.search.length - done);
      at = putOption(out, at, DhcpOption.DomainSearch, n);
      out.set(s.search.subarray(done, done + n), at - n);
      done += n;
    }
  }
  out[at++] = DhcpOption.End;
  let dataLength = at - base;
  if (dataLength < MIN_REPLY_LENGTH) {
    out.fill(0, at, base + MIN_REPLY_LENGTH);
    dataLength = MIN_REPLY_LENGTH;
  }

  // RFC 2131 4.1: NAKs are broadcast; replies to a client with an address
  // (ciaddr: INFORM, RENEWING) go to it; the broadcast flag asks for
  // broadcast; else unicast to yiaddr at chaddr.
  const ciaddrSet = !isZero4(request, msg + 12);
  if (nak || (!ciaddrSet && (request[msg + 10] & 0x80) !== 0)) {
    destinationIp.set(BROADCAST_ADDRESS);
    destinationMac.set(BROADCAST_MAC);
  } else {
    destinationIp.set(ciaddrSet ? request.subarray(msg + 12, msg + 16) : ipv4.address.subarray(0, 4));
    for (let i = 0; i < 6; i++) destinationMac[i] = request[msg + 28 + i];
  }
  ctx.finishUdp4(destinationMac, ipv4.gateway, destinationIp, DHCP_SERVER_PORT, DHCP_CLIENT_PORT, dataLength);
  return true;
}

/** Write an option header; returns the offset after its (length-byte) value, to be filled by the caller. */
function putOption(out: Uint8Array, at: number, code: number, length: number): number {
  out[at] = code;
  out[at + 1] = length;
  return at + 2 + length;
}

/** Option 121: a host route to the gateway (on-link) and the default route through it. */
function putClasslessRoutes(out: Uint8Array, at: number, gateway: Uint8Array): number {
  const start = at;
  at = putOption(out, at, DhcpOption.ClasslessStaticRoute, 1 + 4 + 4 + 1 + 4);
  let p = start + 2;
  out[p++] = 32;
  for (let i = 0; i < 4; i++) out[p++] = gateway[i];
  for (let i = 0; i < 4; i++) out[p++] = 0;
  out[p++] = 0;
  for (let i = 0; i < 4; i++) out[p++] = gateway[i];
  return at;
}

/**
 * Option 81 (RFC 4702) as a server's answer: flags E (wire-format name)
 * and N (ferry updates no DNS records), both RCODEs 255, then the name.
 */
function putClientFqdn(out: Uint8Array, at: number, name: Uint8Array): number {
  at = putOption(out, at, DhcpOption.ClientFqdn, 3 + name.length);
  const value = at - 3 - name.length;
  out[value] = FQDN_FLAG_E | FQDN_FLAG_N;
  out[value + 1] = 255;
  out[value + 2] = 255;
  out.set(name, value + 3);
  return at;
}

const FQDN_FLAG_E = 0x04;
const FQDN_FLAG_N = 0x08;

/** Option 15 (domain name) as plain ASCII, if it fits one option. */
function putDomainName(out: Uint8Array, at: number, name: string): number {
  const n = Math.min(name.length, 255);
  if (n === 0 || !/^[\x21-\x7e]+$/.test(name)) return at;
  at = putOption(out, at, DhcpOption.DomainName, n);
  for (let i = 0; i < n; i++) out[at - n + i] = name.charCodeAt(i);
  return at;
}
