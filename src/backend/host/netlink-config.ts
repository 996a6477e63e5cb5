/**
 * rtnetlink requests that configure a network namespace for `ferry pasta`:
 * look a link up by name, set it up with an MTU (the tap without DAD on its
 * link-local address), add addresses and default routes. The message builders are pure functions over bytes (tested
 * without a kernel); `NetlinkConfigurator` sends them over a NETLINK_ROUTE
 * socket that was opened inside the namespace (native.nsOpen), one request
 * at a time, each waiting for its ACK with a bounded synchronous wait (this
 * runs once, before the namespace's command starts).
 *
 * Parsing of answers (ACKs, errors, RTM_NEWLINK) reuses src/stack/netlink.ts.
 */
import * as os from 'os';
import type { Native } from '../../sys/native';
import {
  AF_INET,
  AF_INET6,
  IFA_ADDRESS,
  IFA_F_NODAD,
  IFA_F_TENTATIVE,
  IFA_LOCAL,
  IFF_UP,
  IFLA_IFNAME,
  IFLA_MTU,
  NLM_F_ACK,
  NLM_F_REQUEST,
  NLMSG_ERROR,
  NLMSG_HDRLEN,
  RT_SCOPE_LINK,
  RT_SCOPE_UNIVERSE,
  RT_TABLE_MAIN,
  RTA_GATEWAY,
  RTA_OIF,
  RTM_GETADDR,
  RTM_GETLINK,
  RTM_NEWADDR,
  RTM_NEWLINK,
  RTM_NEWROUTE,
  RTN_UNICAST,
  align4,
  buildDumpRequest,
  parseAddress,
  parseLink,
  sockaddrNl,
  walkMessages,
} from './netlink';

const LITTLE_ENDIAN = os.endianness() === 'LE';

/** Create the object (what `ip addr add` / `ip route add` send). */
export const NLM_F_CREATE = 0x400;
/** ... and fail if it exists already. */
export const NLM_F_EXCL = 0x200;
/** Routes ferry adds: "installed at boot/configuration" (what pasta uses too). */
export const RTPROT_BOOT = 3;
/** Next hop is on the link even if no address covers it (the gateway may lie outside the prefix). */
export const RTNH_F_ONLINK = 4;

/** IFLA_TXQLEN: the link's transmit queue length (for a tap: its ring of frames waiting for the reader). */
export const IFLA_TXQLEN = 13;

const IFINFOMSG_LEN = 16;
const IFADDRMSG_LEN = 8;
const RTMSG_LEN = 12;

/** A netlink request under construction: header, fixed body, then attributes; one buffer, no growth. */
class RequestBuilder {
  readonly bytes: Uint8Array;
  private readonly view: DataView;
  private length: number;

  constructor(type: number, flags: number, seq: number, bodyLength: number, capacity = 256) {
    this.bytes = new Uint8Array(capacity);
    this.view = new DataView(this.bytes.buffer);
    this.view.setUint16(4, type, LITTLE_ENDIAN);
    this.view.setUint16(6, flags, LITTLE_ENDIAN);
    this.view.setUint32(8, seq >>> 0, LITTLE_ENDIAN);
    this.length = NLMSG_HDRLEN + align4(bodyLength);
  }

  u8(offset: number, value: number): this {
    this.bytes[NLMSG_HDRLEN + offset] = value;
    return this;
  }

  u32(offset: number, value: number): this {
    this.view.setUint32(NLMSG_HDRLEN + offset, value >>> 0, LITTLE_ENDIAN);
    return this;
  }

  i32(offset: number, value: number): this {
    this.view.setInt32(NLMSG_HDRLEN + offset, value, LITTLE_ENDIAN);
    return this;
  }

  /** Append an rtattr carrying raw bytes. */
  attribute(type: number, payload: Uint8Array): this {
    const at = this.length;
    this.view.setUint16(at, 4 + payload.length, LITTLE_ENDIAN);
    this.view.setUint16(at + 2, type, LITTLE_ENDIAN);
    this.bytes.set(payload, at + 4);
    this.length = at + align4(4 + payload.length);
    return this;
  }

  /** Append an rtattr carrying a host-order u32. */
  attributeU32(type: number, value: number): this {
    const payload = new Uint8Array(4);
    new DataView(payload.buffer).setUint32(0, value >>> 0, LITTLE_ENDIAN);
    return this.attribute(type, payload);
  }

  /** The finished message (nlmsg_len filled in). */
  finish(): Uint8Array {
    this.view.setUint32(0, this.length, LITTLE_ENDIAN);
    return this.bytes.slice(0, this.length);
  }
}

function familyOf(address: Uint8Array): number {
  if (address.length === 4) return AF_INET;
  if (address.length === 16) return AF_INET6;
  throw new RangeError(`an address has 4 or 16 bytes, not ${address.length}`);
}

/** RTM_GETLINK for one link by name (answered with one RTM_NEWLINK). */
export function buildGetLinkByName(name: string, seq: number): Uint8Array {
  const nameBytes = Buffer.from(`${name}\0`, 'utf8');
  return new RequestBuilder(RTM_GETLINK, NLM_F_REQUEST, seq, IFINFOMSG_LEN).attribute(IFLA_IFNAME, nameBytes).finish();
}

/** IFF_NOARP: no ARP, and for IPv6 no duplicate address detection on addresses made while it is set. */
export const IFF_NOARP = 0x80;

/** RTM_NEWLINK setting the link flags in `change` to their values in `flags`, with an MTU when mtu > 0. */
export function buildSetLinkFlags(index: number, flags: number, change: number, mtu: number, seq: number): Uint8Array {
  const request = new RequestBuilder(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, seq, IFINFOMSG_LEN)
    .i32(4, index) // ifi_index
    .u32(8, flags) // ifi_flags
    .u32(12, change); // ifi_change
  if (mtu > 0) request.attributeU32(IFLA_MTU, mtu);
  return request.finish();
}

/** RTM_NEWLINK setting link `index` up, with an MTU when mtu > 0 (`ip link set dev X up mtu M`). */
export function buildLinkUp(index: number, mtu: number, seq: number): Uint8Array {
  return buildSetLinkFlags(index, IFF_UP, IFF_UP, mtu, seq);
}

/** RTM_NEWLINK setting the transmit queue length of link `index` (`ip link set dev X txqueuelen N`). */
export function buildSetTxQueueLength(index: number, length: number, seq: number): Uint8Array {
  return new RequestBuilder(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, seq, IFINFOMSG_LEN)
    .i32(4, index) // ifi_index
    .attributeU32(IFLA_TXQLEN, length)
    .finish();
}

/** RTM_NEWADDR adding address/prefixLength on link `index` (IPv6 without duplicate address detection). */
export function buildAddAddress(index: number, address: Uint8Array, prefixLength: number, seq: number): Uint8Array {
  const family = familyOf(address);
  return new RequestBuilder(RTM_NEWADDR, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, seq, IFADDRMSG_LEN)
    .u8(0, family)
    .u8(1, prefixLength)
    .u8(2, family === AF_INET6 ? IFA_F_NODAD : 0)
    .u8(3, RT_SCOPE_UNIVERSE)
    .u32(4, index)
    .attribute(IFA_LOCAL, address)
    .attribute(IFA_ADDRESS, address)
    .finish();
}

/** RTM_NEWROUTE adding a default route via `gateway` out of link `index` (on-link next hop). */
export function buildAddDefaultRoute(index: number, gateway: Uint8Array, seq: number): Uint8Array {
  return new RequestBuilder(RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, seq, RTMSG_LEN)
    .u8(0, familyOf(gateway)) // rtm_family
    .u8(1, 0) // rtm_dst_len: default route
    .u8(4, RT_TABLE_MAIN)
    .u8(5, RTPROT_BOOT)
    .u8(6, RT_SCOPE_UNIVERSE)
    .u8(7, RTN_UNICAST)
    .u32(8, RTNH_F_ONLINK) // rtm_flags
    .attributeU32(RTA_OIF, index)
    .attribute(RTA_GATEWAY, gateway)
    .finish();
}

/** What to configure on the namespace's tap (from the stack configuration). */
export interface NamespaceNetwork {
  ifname: string;
  /** 0 = leave the MTU alone. */
  mtu: number;
  /** Addresses with prefix lengths, both families. */
  addresses: Array<{ address: Uint8Array; prefixLength: number }>;
  /** Default gateways (at most one per family). */
  gateways: Uint8Array[];
}

/** The subset of the addon used here (a fake in unit tests). */
export type NetlinkSocketCalls = Pick<Native, 'bind' | 'read' | 'write'>;

/** Sends configuration requests over a NETLINK_ROUTE socket opened in the target namespace. */
export class NetlinkConfigurator {
  private seq: number;
  private readonly buffer = new Uint8Array(16384);

  /** `fd` is a non-blocking NETLINK_ROUTE socket (bound here). */
  constructor(private readonly calls: NetlinkSocketCalls, private readonly fd: number, private readonly timeoutMs = 2000) {
    this.seq = (Date.now() & 0x3fffffff) >>> 0;
    calls.bind(fd, sockaddrNl());
  }

  /** Index of link `name`; throws (errno ENODEV) when there is none. */
  linkIndex(name: string): number {
    let index = -1;
    this.request(buildGetLinkByName(name, ++this.seq), (type, offset, length) => {
      if (type === RTM_NEWLINK) index = parseLink(this.buffer, offset, length).index;
    });
    if (index < 0) throw new Error(`netlink: no link named ${name}`);
    return index;
  }

  /** Set link `index` up (with an MTU when mtu > 0). */
  linkUp(index: number, mtu = 0): void {
    this.request(buildLinkUp(index, mtu, ++this.seq));
  }

  /**
   * Set link `index` up so that its IPv6 link-local address is usable at
   * once, as pasta does: up with IFF_NOARP (the kernel skips DAD for the
   * link-local address it forms then), then ARP and neighbour discovery
   * back on. ferry owns the segment, so no other node can hold that
   * address; a DHCPv6 client started right after link up (ISC dhclient -6
   * binds to it) would otherwise fail while the address is tentative.
   */
  linkUpWithoutDad(index: number, mtu = 0): void {
    this.request(buildSetLinkFlags(index, IFF_UP | IFF_NOARP, IFF_UP | IFF_NOARP, mtu, ++this.seq));
    // The kernel forms the address (and decides on DAD) in deferred work: ARP stays off until it is there, settled.
    const deadline = Date.now() + LINK_LOCAL_WAIT_MS;
    while (!this.hasSettledLinkLocal(index) && Date.now() < deadline) pause(5);
    this.request(buildSetLinkFlags(index, 0, IFF_NOARP, 0, ++this.seq));
  }

  /** True when link `index` has an IPv6 link-local address that is not tentative. */
  hasSettledLinkLocal(index: number): boolean {
    let settled = false;
    this.request(buildDumpRequest(RTM_GETADDR, AF_INET6, ++this.seq), (type, offset, length) => {
      if (type !== RTM_NEWADDR) return;
      const address = parseAddress(this.buffer, offset, length);
      if (address !== null && address.index === index && address.scope === RT_SCOPE_LINK && (address.flags & IFA_F_TENTATIVE) === 0) settled = true;
    });
    return settled;
  }

  /** Set the transmit queue length of link `index`. */
  setTxQueueLength(index: number, length: number): void {
    this.request(buildSetTxQueueLength(index, length, ++this.seq));
  }

  /** Add an address to link `index`. */
  addAddress(index: number, address: Uint8Array, prefixLength: number): void {
    this.request(buildAddAddress(index, address, prefixLength, ++this.seq));
  }

  /** Add a default route via gateway out of link `index`. */
  addDefaultRoute(index: number, gateway: Uint8Array): void {
    this.request(buildAddDefaultRoute(index, gateway, ++this.seq));
  }

  /**
   * Loopback up; the tap up with its MTU; then its addresses and default
   * routes (pasta's --config-net). Returns the tap's index.
   */
  configure(network: NamespaceNetwork): number {
    this.linkUp(this.linkIndex('lo'));
    const index = this.linkIndex(network.ifname);
    this.linkUpWithoutDad(index, network.mtu);
    // Already there (a namespace joined a second time): what was asked for holds, go on.
    for (const { address, prefixLength } of network.addresses) unlessExists(() => this.addAddress(index, address, prefixLength));
    for (const gateway of network.gateways) unlessExists(() => this.addDefaultRoute(index, gateway));
    return index;
  }

  /**
   * Send one request and read until its ACK (or, for a plain GET, its
   * answer). Throws an Error with `errno` for a kernel error, and on timeout.
   */
  private request(message: Uint8Array, visit: (type: number, offset: number, length: number) => void = () => undefined): void {
    const seq = new DataView(message.buffer, message.byteOffset).getUint32(8, LITTLE_ENDIAN);
    const wantsAck = (new DataView(message.buffer, message.byteOffset).getUint16(6, LITTLE_ENDIAN) & NLM_F_ACK) !== 0;
    if (this.calls.write(this.fd, message, 0, message.length) !== message.length) throw new Error('netlink: request not sent');
    const deadline = Date.now() + this.timeoutMs;
    for (;;) {
      if (Date.now() > deadline) throw new Error(`netlink: no answer within ${this.timeoutMs} ms`);
      const n = this.calls.read(this.fd, this.buffer, 0, this.buffer.length);
      if (n < 0) {
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1);
        continue;
      }
      if (n === 0) throw new Error('netlink: socket closed');
      let answered = false;
      const walk = walkMessages(this.buffer, n, seq, (type, offset, length) => {
        answered = true;
        visit(type, offset, length);
      });
      // walkMessages skipped other sequences and threw on errors: an ACK (error 0) for ours ends a request, so does a dump's end.
      if (answered || walk.done || (wantsAck && containsAck(this.buffer, n, seq))) return;
    }
  }
}

const EEXIST = 17;
/** Bound on waiting for the tap's link-local address to appear (the kernel forms it within milliseconds). */
const LINK_LOCAL_WAIT_MS = 1000;

/** A bounded synchronous pause (this runs once at setup, before the loop serves anything). */
function pause(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** Run a create request; EEXIST is not an error for configuration that is already in place. */
function unlessExists(request: () => void): void {
  try {
    request();
  } catch (e) {
    if ((e as { errno?: number }).errno !== EEXIST) throw e;
  }
}

/** True when b[0, length) holds an NLMSG_ERROR with code 0 (an ACK) for `seq`. */
export function containsAck(b: Uint8Array, length: number, seq: number): boolean {
  const view = new DataView(b.buffer, b.byteOffset, Math.min(length, b.length));
  for (let at = 0; at + NLMSG_HDRLEN <= view.byteLength; ) {
    const messageLength = view.getUint32(at, LITTLE_ENDIAN);
    if (messageLength < NLMSG_HDRLEN) return false;
    const type = view.getUint16(at + 4, LITTLE_ENDIAN);
    if (type === NLMSG_ERROR && view.getUint32(at + 8, LITTLE_ENDIAN) === seq && at + NLMSG_HDRLEN + 4 <= view.byteLength && view.getInt32(at + NLMSG_HDRLEN, LITTLE_ENDIAN) === 0) return true;
    at += align4(messageLength);
  }
  return false;
}
