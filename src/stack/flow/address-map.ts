/**
 * Forwarding rules between what the guest sees and what the host uses, as
 * pure functions over configuration and address bytes (no I/O), shared by
 * UDP and meant for TCP too:
 *
 *   guest destination -> host sockaddr   (mapDestination)
 *     --dns-forward ADDR, port 53  -> --dns-host (or the host's resolver), port 53
 *     --map-host-loopback ADDR     -> 127.0.0.1 / ::1 (the gateway by default)
 *     --map-guest-addr ADDR        -> the host's own address
 *     ferry's IPv6 router address  -> as the gateway (it is the guest's view of it)
 *     IPv6 link-local (other)      -> unreachable (no scope to send it on)
 *     anything else                -> itself
 *
 *   host peer -> source the guest sees    (guestVisibleSource)
 *     127.0.0.0/8, ::1             -> the --map-host-loopback address
 *     the host's own address       -> --map-guest-addr, else the loopback mapping
 *     anything else                -> itself
 *
 * Replies keep the address the guest used (the flow remembers it), so DNS
 * answers come back from the --dns-forward address and loopback replies
 * from the gateway without a reverse lookup here.
 */
import { equalAt, isIpv6LoopbackAt } from '../address';
import type { StackConfig } from '../config';
import { writeSockaddr } from '../../sys/sockaddr';

/** Well-known DNS port (RFC 1035). */
export const DNS_PORT = 53;

const LOOPBACK_V4 = Uint8Array.of(127, 0, 0, 1);
const LOOPBACK_V6 = Uint8Array.of(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1);

/**
 * Where a guest datagram/connection to addr[offset] (4 or 16 bytes) port
 * `port` goes on the host: writes the sockaddr into out (>= 28 bytes) and
 * returns its length, or 0 when the destination cannot be reached (family
 * disabled, --dns-forward without a resolver, foreign IPv6 link-local).
 */
export function mapDestination(config: StackConfig, family: 4 | 6, addr: Uint8Array, offset: number, port: number, out: Uint8Array): number {
  const cfg = family === 4 ? config.ipv4 : config.ipv6;
  if (cfg === null) return 0;
  const n = family === 4 ? 4 : 16;
  // The router the guest learnt from the RA stands for the gateway: the same address
  // when the host's gateway is link-local, ferry's own link-local otherwise.
  if (family === 6 && config.ipv6 !== null && equalAt(addr, offset, config.ipv6.linkLocal, 16)) {
    addr = config.ipv6.gateway;
    offset = 0;
  }
  if (port === DNS_PORT && cfg.dnsForward !== null && equalAt(addr, offset, cfg.dnsForward, n)) {
    if (cfg.dnsHost === null) return 0;
    return writeSockaddr(out, family, cfg.dnsHost, 0, DNS_PORT);
  }
  if (cfg.mapHostLoopback !== null && equalAt(addr, offset, cfg.mapHostLoopback, n)) {
    return writeSockaddr(out, family, family === 4 ? LOOPBACK_V4 : LOOPBACK_V6, 0, port);
  }
  if (cfg.mapGuestAddr !== null && equalAt(addr, offset, cfg.mapGuestAddr, n)) {
    return writeSockaddr(out, family, cfg.address, 0, port);
  }
  if (family === 6 && addr[offset] === 0xfe && (addr[offset + 1] & 0xc0) === 0x80) return 0;
  return writeSockaddr(out, family, addr, offset, port);
}

/**
 * The source address the guest sees for a host peer at peer[offset] (4 or
 * 16 bytes): the peer itself (copied into `out`, >= 16 bytes, which is then
 * returned), except the host's loopback (-> the --map-host-loopback
 * address) and the host's own address (-> --map-guest-addr, else the
 * loopback mapping), returned from the configuration. null when there is
 * no mapping to show (the peer cannot be presented to the guest).
 */
export function guestVisibleSource(config: StackConfig, family: 4 | 6, peer: Uint8Array, offset: number, out: Uint8Array): Uint8Array | null {
  if (family === 4) {
    const ipv4 = config.ipv4;
    if (ipv4 === null) return null;
    if (peer[offset] === 127) return ipv4.mapHostLoopback;
    if (equalAt(peer, offset, ipv4.address, 4)) return ipv4.mapGuestAddr ?? ipv4.mapHostLoopback;
    for (let i = 0; i < 4; i++) out[i] = peer[offset + i];
    return out;
  }
  const ipv6 = config.ipv6;
  if (ipv6 === null) return null;
  if (isIpv6LoopbackAt(peer, offset) || isV4MappedLoopback(peer, offset)) return ipv6.mapHostLoopback;
  if (equalAt(peer, offset, ipv6.address, 16)) return ipv6.mapGuestAddr ?? ipv6.mapHostLoopback;
  for (let i = 0; i < 16; i++) out[i] = peer[offset + i];
  return out;
}

/** True for multicast, broadcast or unspecified destinations (not flows). */
export function isGroupOrUnspecified(family: 4 | 6, bytes: Uint8Array, offset: number): boolean {
  if (family === 6) {
    if (bytes[offset] === 0xff) return true;
    for (let i = 0; i < 16; i++) if (bytes[offset + i] !== 0) return false;
    return true;
  }
  if (bytes[offset] >= 224) return true;
  return (bytes[offset] | bytes[offset + 1] | bytes[offset + 2] | bytes[offset + 3]) === 0;
}

function isV4MappedLoopback(bytes: Uint8Array, offset: number): boolean {
  for (let i = 0; i < 10; i++) if (bytes[offset + i] !== 0) return false;
  return bytes[offset + 10] === 0xff && bytes[offset + 11] === 0xff && bytes[offset + 12] === 127;
}
