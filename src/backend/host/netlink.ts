/**
 * rtnetlink (RFC 3549, linux/rtnetlink.h) dumps of links, addresses and
 * routes, for host discovery at startup.
 *
 * The parsers are pure functions over bytes with bounds checks on every
 * header and attribute (the kernel is trusted, but a parser that can
 * overrun is a bug whoever feeds it). The socket part uses the addon's
 * non-blocking netlink socket with a short, bounded synchronous wait: this
 * runs once on the main thread before anything else is listening.
 *
 * Netlink headers are in host byte order; addresses inside attributes are
 * in network order (copied as bytes).
 */
import type { Native } from '../../sys/native';
import { hostI32, hostU16, hostU32, setHostU16, setHostU32 } from '../../sys/byte-order';
import { AF_INET, AF_INET6, AF_NETLINK, AF_UNSPEC, IFF_LOOPBACK, IFF_RUNNING, IFF_UP, RTM_GETADDR, RTM_GETLINK, RTM_GETROUTE, RTM_NEWADDR, RTM_NEWLINK, RTM_NEWROUTE } from '../../sys/linux';
export { AF_INET, AF_INET6, AF_NETLINK, AF_UNSPEC, IFF_LOOPBACK, IFF_RUNNING, IFF_UP, RTM_GETADDR, RTM_GETLINK, RTM_GETROUTE, RTM_NEWADDR, RTM_NEWLINK, RTM_NEWROUTE };

export const NLMSG_NOOP = 1;
export const NLMSG_ERROR = 2;
export const NLMSG_DONE = 3;
export const NLMSG_OVERRUN = 4;

export const NLM_F_REQUEST = 0x1;
export const NLM_F_MULTI = 0x2;
export const NLM_F_ACK = 0x4;
export const NLM_F_DUMP_INTR = 0x10;
export const NLM_F_DUMP = 0x300;

export const NLMSG_HDRLEN = 16;
const RTMSG_LEN = 12;
const IFADDRMSG_LEN = 8;
const IFINFOMSG_LEN = 16;

export const RTA_DST = 1;
export const RTA_OIF = 4;
export const RTA_GATEWAY = 5;
export const RTA_PRIORITY = 6;
export const RTA_PREFSRC = 7;
export const RTA_MULTIPATH = 9;
export const RTA_TABLE = 15;

export const IFA_ADDRESS = 1;
export const IFA_LOCAL = 2;
export const IFA_LABEL = 3;
export const IFA_FLAGS = 8;

export const IFA_F_TEMPORARY = 0x01;
export const IFA_F_NODAD = 0x02;
export const IFA_F_DADFAILED = 0x08;
export const IFA_F_DEPRECATED = 0x20;
export const IFA_F_TENTATIVE = 0x40;

export const IFLA_ADDRESS = 1;
export const IFLA_IFNAME = 3;
export const IFLA_MTU = 4;

export const RT_TABLE_MAIN = 254;
export const RTN_UNICAST = 1;
export const RT_SCOPE_UNIVERSE = 0;
export const RT_SCOPE_LINK = 253;
export const RT_SCOPE_HOST = 254;

/** Bounds: no dump is expected to hold more messages or attributes than this. */
export const MAX_MESSAGES_PER_BUFFER = 4096;
export const MAX_ATTRIBUTES = 256;

/** NLMSG_ALIGN / RTA_ALIGN: round up to 4. */
export function align4(n: number): number {
  return (n + 3) & ~3;
}

/** A link (RTM_NEWLINK). */
export interface LinkInfo {
  index: number;
  name: string;
  flags: number;
  mtu: number;
  /** Hardware address, or null (e.g. some tunnels). */
  mac: Uint8Array | null;
}

/** An interface address (RTM_NEWADDR). */
export interface AddressInfo {
  family: number;
  index: number;
  prefixLength: number;
  scope: number;
  /** IFA_FLAGS when present (32 bits), else the 8-bit ifa_flags. */
  flags: number;
  /** IFA_LOCAL when present (the local end of point-to-point links), else IFA_ADDRESS. */
  address: Uint8Array;
}

/** A route (RTM_NEWROUTE). */
export interface RouteInfo {
  family: number;
  dstLength: number;
  table: number;
  type: number;
  scope: number;
  /** Destination (null for the default route). */
  dst: Uint8Array | null;
  gateway: Uint8Array | null;
  /** Output interface (RTA_OIF, or the first nexthop of RTA_MULTIPATH); 0 when absent. */
  oif: number;
  priority: number;
}

/** Why a message or buffer could not be parsed. */
export class NetlinkParseError extends Error {}

/**
 * Calls visit(type, attrOffset, attrLength) for each rtattr in
 * b[start, end). Throws NetlinkParseError on an attribute shorter than its
 * header or overrunning the range, or past MAX_ATTRIBUTES.
 */
export function forEachAttribute(b: Uint8Array, start: number, end: number, visit: (type: number, offset: number, length: number) => void): void {
  let at = start;
  for (let count = 0; at + 4 <= end; count++) {
    if (count >= MAX_ATTRIBUTES) throw new NetlinkParseError('too many attributes');
    const length = hostU16(b, at);
    // The top bits are NLA_F_NESTED / NLA_F_NET_BYTEORDER flags.
    const type = hostU16(b, at + 2) & 0x3fff;
    if (length < 4 || at + length > end) throw new NetlinkParseError(`attribute ${type} length ${length} overruns its message`);
    visit(type, at + 4, length - 4);
    at += align4(length);
  }
}

function copy(b: Uint8Array, offset: number, length: number): Uint8Array {
  return Uint8Array.from(b.subarray(offset, offset + length));
}

function cString(b: Uint8Array, offset: number, length: number): string {
  let end = offset;
  while (end < offset + length && b[end] !== 0) end++;
  return Buffer.from(b.buffer, b.byteOffset + offset, end - offset).toString('utf8');
}

function addressLength(family: number): number {
  return family === AF_INET ? 4 : family === AF_INET6 ? 16 : 0;
}

/** Parse an RTM_NEWLINK payload at b[offset, offset+length) (after the nlmsghdr). */
export function parseLink(b: Uint8Array, offset: number, length: number): LinkInfo {
  if (length < IFINFOMSG_LEN) throw new NetlinkParseError('ifinfomsg truncated');
  const info: LinkInfo = { index: hostI32(b, offset + 4), flags: hostU32(b, offset + 8), name: '', mtu: 0, mac: null };
  forEachAttribute(b, offset + IFINFOMSG_LEN, offset + length, (type, at, len) => {
    if (type === IFLA_IFNAME) info.name = cString(b, at, len);
    else if (type === IFLA_MTU && len >= 4) info.mtu = hostU32(b, at);
    else if (type === IFLA_ADDRESS && len === 6) info.mac = copy(b, at, 6);
  });
  return info;
}

/** Parse an RTM_NEWADDR payload; returns null for families other than IPv4/IPv6 or without an address. */
export function parseAddress(b: Uint8Array, offset: number, length: number): AddressInfo | null {
  if (length < IFADDRMSG_LEN) throw new NetlinkParseError('ifaddrmsg truncated');
  const family = b[offset];
  const size = addressLength(family);
  let flags = b[offset + 2];
  let local: Uint8Array | null = null;
  let address: Uint8Array | null = null;
  forEachAttribute(b, offset + IFADDRMSG_LEN, offset + length, (type, at, len) => {
    if (type === IFA_LOCAL && len === size) local = copy(b, at, len);
    else if (type === IFA_ADDRESS && len === size) address = copy(b, at, len);
    else if (type === IFA_FLAGS && len >= 4) flags = hostU32(b, at);
  });
  const chosen = local ?? address;
  if (size === 0 || chosen === null) return null;
  return { family, prefixLength: b[offset + 1], flags, scope: b[offset + 3], index: hostU32(b, offset + 4), address: chosen };
}

/** Parse an RTM_NEWROUTE payload; returns null for families other than IPv4/IPv6. */
export function parseRoute(b: Uint8Array, offset: number, length: number): RouteInfo | null {
  if (length < RTMSG_LEN) throw new NetlinkParseError('rtmsg truncated');
  const family = b[offset];
  const size = addressLength(family);
  if (size === 0) return null;
  const route: RouteInfo = {
    family,
    dstLength: b[offset + 1],
    table: b[offset + 4],
    scope: b[offset + 6],
    type: b[offset + 7],
    dst: null,
    gateway: null,
    oif: 0,
    priority: 0,
  };
  forEachAttribute(b, offset + RTMSG_LEN, offset + length, (type, at, len) => {
    if (type === RTA_DST && len === size) route.dst = copy(b, at, len);
    else if (type === RTA_GATEWAY && len === size) route.gateway = copy(b, at, len);
    else if (type === RTA_OIF && len >= 4) route.oif = hostU32(b, at);
    else if (type === RTA_PRIORITY && len >= 4) route.priority = hostU32(b, at);
    else if (type === RTA_TABLE && len >= 4) route.table = hostU32(b, at);
    else if (type === RTA_MULTIPATH && route.oif === 0) parseFirstNexthop(b, at, len, size, route);
  });
  return route;
}

/** struct rtnexthop { u16 len; u8 flags; u8 hops; i32 ifindex; } followed by attributes: take the first. */
function parseFirstNexthop(b: Uint8Array, at: number, len: number, size: number, route: RouteInfo): void {
  if (len < 8) return;
  const nhLength = hostU16(b, at);
  if (nhLength < 8 || nhLength > len) throw new NetlinkParseError('rtnexthop overruns RTA_MULTIPATH');
  route.oif = hostU32(b, at + 4);
  forEachAttribute(b, at + 8, at + nhLength, (type, a, l) => {
    if (type === RTA_GATEWAY && l === size && route.gateway === null) route.gateway = copy(b, a, l);
  });
}

/** Outcome of walking one buffer received from a dump. */
export interface WalkResult {
  /** NLMSG_DONE seen: the dump is complete. */
  done: boolean;
  /** Some message carried NLM_F_DUMP_INTR: the dump raced with a change and should be repeated. */
  interrupted: boolean;
}

/**
 * Walk the netlink messages in b[0, length) that answer sequence `seq`,
 * calling visit(type, payloadOffset, payloadLength) for each data message.
 * Throws NetlinkParseError on a malformed header and an Error with `errno`
 * for NLMSG_ERROR with a nonzero code.
 */
export function walkMessages(b: Uint8Array, length: number, seq: number, visit: (type: number, offset: number, length: number) => void): WalkResult {
  const result: WalkResult = { done: false, interrupted: false };
  let at = 0;
  const end = Math.min(length, b.length);
  for (let count = 0; at + NLMSG_HDRLEN <= end; count++) {
    if (count >= MAX_MESSAGES_PER_BUFFER) throw new NetlinkParseError('too many messages in one buffer');
    const messageLength = hostU32(b, at);
    const type = hostU16(b, at + 4);
    const flags = hostU16(b, at + 6);
    const messageSeq = hostU32(b, at + 8);
    if (messageLength < NLMSG_HDRLEN || at + messageLength > end) throw new NetlinkParseError(`message length ${messageLength} overruns the buffer`);
    const payload = at + NLMSG_HDRLEN;
    const payloadLength = messageLength - NLMSG_HDRLEN;
    at += align4(messageLength);
    if (messageSeq !== seq) continue; // a stale answer to an earlier request
    if ((flags & NLM_F_DUMP_INTR) !== 0) result.interrupted = true;
    if (type === NLMSG_DONE) {
      result.done = true;
      return result;
    }
    if (type === NLMSG_ERROR) {
      if (payloadLength < 4) throw new NetlinkParseError('NLMSG_ERROR truncated');
      const code = hostI32(b, payload);
      if (code === 0) continue; // an ACK
      const error = new Error(`netlink: request failed with errno ${-code}`) as Error & { errno: number };
      error.errno = -code;
      throw error;
    }
    if (type === NLMSG_NOOP) continue;
    if (type === NLMSG_OVERRUN) throw new NetlinkParseError('NLMSG_OVERRUN');
    visit(type, payload, payloadLength);
  }
  if (at < end) throw new NetlinkParseError('trailing bytes shorter than a header');
  return result;
}

/** Build a dump request for `type` (RTM_GETLINK/GETADDR/GETROUTE) and address family. */
export function buildDumpRequest(type: number, family: number, seq: number): Uint8Array {
  const bodyLength = type === RTM_GETLINK ? IFINFOMSG_LEN : type === RTM_GETADDR ? IFADDRMSG_LEN : RTMSG_LEN;
  const out = new Uint8Array(NLMSG_HDRLEN + bodyLength);
  setHostU32(out, 0, out.length);
  setHostU16(out, 4, type);
  setHostU16(out, 6, NLM_F_REQUEST | NLM_F_DUMP);
  setHostU32(out, 8, seq);
  setHostU32(out, 12, 0);
  out[NLMSG_HDRLEN] = family;
  return out;
}

/** sockaddr_nl for bind(): the kernel picks our port id. */
export function sockaddrNl(): Uint8Array {
  const out = new Uint8Array(12);
  setHostU16(out, 0, AF_NETLINK);
  return out;
}

/** What discovery needs from the kernel. */
export interface RtnetlinkSnapshot {
  links: LinkInfo[];
  addresses: AddressInfo[];
  /**
   * Default routes only (destination length 0): the only ones discovery
   * uses, and a host carrying a full routing table has a million others.
   */
  routes: RouteInfo[];
}

const RECEIVE_BUFFER = 65536;
const POLL_SLEEP_MS = 2;
/** A dump interrupted by concurrent changes is retried this many times. */
const MAX_DUMP_ATTEMPTS = 3;

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/**
 * Dump links, IPv4/IPv6 addresses and default routes over one
 * NETLINK_ROUTE socket. Synchronous and bounded by `timeoutMs` overall: for
 * startup only. Throws on socket errors, kernel errors or timeouts.
 */
export function dumpRtnetlink(native: Native, timeoutMs = 2000): RtnetlinkSnapshot {
  const c = native.constants;
  const fd = native.socket(c.AF_NETLINK ?? AF_NETLINK, c.SOCK_RAW ?? 3, c.NETLINK_ROUTE ?? 0);
  const deadline = Date.now() + timeoutMs;
  const buffer = new Uint8Array(RECEIVE_BUFFER);
  let seq = (Date.now() & 0x7fffffff) >>> 0;

  /** One dump; `parse` turns a message into a result or null, reading from `buffer` while it is current. */
  const dump = <T>(type: number, family: number, parse: (type: number, offset: number, length: number) => T | null): T[] => {
    for (let attempt = 1; ; attempt++) {
      seq = (seq + 1) >>> 0;
      const request = buildDumpRequest(type, family, seq);
      if (native.write(fd, request, 0, request.length) !== request.length) throw new Error('netlink: request not sent');
      const results: T[] = [];
      let done = false;
      let interrupted = false;
      while (!done) {
        if (Date.now() > deadline) throw new Error(`netlink: dump not finished within ${timeoutMs} ms`);
        const n = native.read(fd, buffer, 0, buffer.length);
        if (n < 0) {
          sleepSync(POLL_SLEEP_MS);
          continue;
        }
        if (n === 0) throw new Error('netlink: socket closed');
        const walk = walkMessages(buffer, n, seq, (t, o, l) => {
          const parsed = parse(t, o, l);
          if (parsed !== null) results.push(parsed);
        });
        done = walk.done;
        interrupted = interrupted || walk.interrupted;
      }
      // A dump that raced with a change may be inconsistent: repeat it (bounded); the last try is taken as it is.
      if (interrupted && attempt < MAX_DUMP_ATTEMPTS) continue;
      return results;
    }
  };

  try {
    native.bind(fd, sockaddrNl());
    const links = dump(RTM_GETLINK, AF_UNSPEC, (t, o, l) => (t === RTM_NEWLINK ? parseLink(buffer, o, l) : null));
    const addresses: AddressInfo[] = [];
    const routes: RouteInfo[] = [];
    for (const family of [AF_INET, AF_INET6]) {
      for (const a of dump(RTM_GETADDR, family, (t, o, l) => (t === RTM_NEWADDR ? parseAddress(buffer, o, l) : null))) {
        if (a.family === family) addresses.push(a);
      }
      // Skip everything but default routes before looking at attributes (rtm_dst_len is byte 1 of rtmsg).
      for (const r of dump(RTM_GETROUTE, family, (t, o, l) => (t === RTM_NEWROUTE && l >= RTMSG_LEN && buffer[o + 1] === 0 ? parseRoute(buffer, o, l) : null))) {
        if (r.family === family) routes.push(r);
      }
    }
    return { links, addresses, routes };
  } finally {
    native.close(fd);
  }
}
