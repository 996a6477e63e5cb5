/**
 * ICMP and ICMPv6 errors reported by host sockets (IP_RECVERR /
 * IPV6_RECVERR error queue) turned into the matching error to the guest.
 *
 * The kernel hands us a `struct sock_extended_err` (origin, ICMP type and
 * code, ee_info = the MTU for "fragmentation needed" / "packet too big")
 * followed by the offender's address, but not the packet the remote saw:
 * that one left the host from the host's socket. As passt does, the quoted
 * packet is rebuilt from the flow: the guest's own addresses and ports (IP
 * header + UDP header + the first bytes of the payload the error queue
 * returns), so the guest's kernel finds its socket and reports the error
 * (ECONNREFUSED for a port unreachable on a connected UDP socket,
 * EMSGSIZE/PMTU updates for "too big").
 *
 * Only errors with a meaning for the guest are relayed: destination
 * unreachable (all codes), time exceeded, fragmentation needed / packet too
 * big, and a local EMSGSIZE (origin LOCAL) as "too big" from the gateway.
 * Parameter problems (their pointer would refer to the host's packet) and
 * other origins are ignored.
 */
import type { StackContext } from '../context';
import { IPV4_L4_OFFSET, IPV6_L4_OFFSET } from '../context';
import { IPV4_HEADER_LENGTH, IpProtocol, emitIpv4 } from '../wire/ipv4';
import { IPV6_HEADER_LENGTH, emitIpv6 } from '../wire/ipv6';
import { UDP_HEADER_LENGTH } from '../wire/udp';
import { finishChecksum, pseudoHeaderSumIpv6, setBe16, setBe32, sumBytes } from '../wire/checksum';
import { LITTLE_ENDIAN, hostU16, hostU32 } from '../../sys/byte-order';
import { AF_INET, AF_INET6, IPV6_RECVERR, IP_RECVERR, SOL_IP, SOL_IPV6 } from '../../sys/linux';

/** sock_extended_err origins (linux/errqueue.h). */
export const ErrorOrigin = {
  None: 0,
  Local: 1,
  Icmp: 2,
  Icmp6: 3,
} as const;

const EMSGSIZE = 90;
/** sizeof(struct cmsghdr) on 64-bit Linux: size_t cmsg_len, int level, int type. */
const CMSG_HEADER = 16;
/** sizeof(struct sock_extended_err). */
const EXTENDED_ERR_LENGTH = 16;

/** ICMPv4 types relayed. */
export const Icmp4ErrorType = { DestinationUnreachable: 3, TimeExceeded: 11 } as const;
/** ICMPv4 destination unreachable codes used here. */
export const Icmp4UnreachableCode = { Network: 0, Host: 1, Port: 3, FragmentationNeeded: 4 } as const;
/** ICMPv6 error types relayed. */
export const Icmp6ErrorType = { DestinationUnreachable: 1, PacketTooBig: 2, TimeExceeded: 3 } as const;
/** ICMPv6 destination unreachable codes used here. */
export const Icmp6UnreachableCode = { NoRoute: 0, Address: 3, Port: 4 } as const;

/** Payload bytes of the original datagram quoted after the rebuilt headers. */
export const QUOTED_PAYLOAD_LIMIT = 64;
/** RFC 4443 2.4(c): an ICMPv6 error fits the minimum MTU. */
const IPV6_MIN_MTU = 1280;

/** One parsed error-queue entry (reused; fields valid after parseExtendedError returns true). */
export class ExtendedError {
  errno = 0;
  origin = 0;
  type = 0;
  code = 0;
  /** ee_info: the MTU for fragmentation needed / packet too big. */
  info = 0;
  /** 4 or 6 when the offender address is known, else 0. */
  offenderFamily: 0 | 4 | 6 = 0;
  /** The offender's address (IPv4 in the first 4 bytes). */
  readonly offender = new Uint8Array(16);
}

/**
 * Find the IP_RECVERR / IPV6_RECVERR control message in control[0, length)
 * (raw cmsg bytes from recvErrqueue) and fill `out`. Returns false when
 * there is none or it is truncated. Bounded by the control length.
 */
export function parseExtendedError(control: Uint8Array, length: number, out: ExtendedError): boolean {
  const end = Math.min(length, control.length);
  let at = 0;
  // Each pass advances by at least CMSG_HEADER bytes.
  while (at + CMSG_HEADER <= end) {
    // cmsg_len is a size_t; the high half is 0 for any real message.
    const cmsgLength = hostU32(control, LITTLE_ENDIAN ? at : at + 4);
    const level = hostU32(control, at + 8);
    const type = hostU32(control, at + 12);
    if (cmsgLength < CMSG_HEADER || at + cmsgLength > end) return false;
    if ((level === SOL_IP && type === IP_RECVERR) || (level === SOL_IPV6 && type === IPV6_RECVERR)) {
      const data = at + CMSG_HEADER;
      if (cmsgLength < CMSG_HEADER + EXTENDED_ERR_LENGTH) return false;
      out.errno = hostU32(control, data);
      out.origin = control[data + 4];
      out.type = control[data + 5];
      out.code = control[data + 6];
      out.info = hostU32(control, data + 8);
      out.offenderFamily = 0;
      out.offender.fill(0);
      // SO_EE_OFFENDER: a sockaddr right after the struct, when the kernel had one.
      const sa = data + EXTENDED_ERR_LENGTH;
      const saRoom = at + cmsgLength - sa;
      if (saRoom >= 8) {
        const family = hostU16(control, sa);
        if (family === AF_INET && saRoom >= 8) {
          out.offenderFamily = 4;
          out.offender.set(control.subarray(sa + 4, sa + 8));
        } else if (family === AF_INET6 && saRoom >= 24) {
          out.offenderFamily = 6;
          out.offender.set(control.subarray(sa + 8, sa + 24));
        }
      }
      return true;
    }
    at += (cmsgLength + 7) & ~7;
  }
  return false;
}

/** What to send the guest for one error: type, code and the 32-bit field after the checksum. */
export class IcmpErrorPlan {
  type = 0;
  code = 0;
  /** Bytes 4-7 of the ICMP header (the MTU for too-big errors, else 0). */
  rest = 0;
  /** True when the ICMP source should be the gateway (local errors), not the offender. */
  fromGateway = false;
}

/**
 * Decide which ICMP error (if any) a socket error of the given family
 * becomes for the guest. Returns false when it is not relayed.
 */
export function planIcmpError(family: 4 | 6, error: ExtendedError, out: IcmpErrorPlan): boolean {
  out.fromGateway = false;
  out.rest = 0;
  if (error.origin === ErrorOrigin.Local) {
    if (error.errno !== EMSGSIZE || error.info === 0) return false;
    out.fromGateway = true;
    if (family === 4) {
      out.type = Icmp4ErrorType.DestinationUnreachable;
      out.code = Icmp4UnreachableCode.FragmentationNeeded;
      out.rest = Math.min(error.info, 0xffff);
    } else {
      out.type = Icmp6ErrorType.PacketTooBig;
      out.code = 0;
      out.rest = Math.max(error.info, IPV6_MIN_MTU);
    }
    return true;
  }
  if (family === 4 && error.origin === ErrorOrigin.Icmp) {
    if (error.type !== Icmp4ErrorType.DestinationUnreachable && error.type !== Icmp4ErrorType.TimeExceeded) return false;
    out.type = error.type;
    out.code = error.code;
    if (error.type === Icmp4ErrorType.DestinationUnreachable && error.code === Icmp4UnreachableCode.FragmentationNeeded) {
      out.rest = Math.min(error.info, 0xffff);
    }
    return true;
  }
  if (family === 6 && error.origin === ErrorOrigin.Icmp6) {
    if (error.type !== Icmp6ErrorType.DestinationUnreachable && error.type !== Icmp6ErrorType.PacketTooBig && error.type !== Icmp6ErrorType.TimeExceeded) {
      return false;
    }
    out.type = error.type;
    out.code = error.code;
    if (error.type === Icmp6ErrorType.PacketTooBig) out.rest = Math.max(error.info, IPV6_MIN_MTU);
    return true;
  }
  return false;
}

/** The flow a rebuilt quote describes: the guest's datagram as the guest sent it. */
export interface QuotedDatagram {
  family: 4 | 6;
  /** The guest's address (4 or 16 bytes at guestOffset). */
  guest: Uint8Array;
  guestOffset: number;
  guestPort: number;
  /** The destination the guest used (4 or 16 bytes at remoteOffset). */
  remote: Uint8Array;
  remoteOffset: number;
  remotePort: number;
  /** Payload length of the original datagram. */
  payloadLength: number;
  /** The first bytes of its payload (from the error queue) and how many. */
  payload: Uint8Array;
  payloadAvailable: number;
}

/**
 * Build and commit an ICMP (family 4) or ICMPv6 (family 6) error from
 * `source` to the guest quoting `quoted` (rebuilt IP + UDP headers, up to
 * QUOTED_PAYLOAD_LIMIT payload bytes). Returns false when the guest had no
 * buffer for it.
 */
export function sendIcmpError(ctx: StackContext, plan: IcmpErrorPlan, source: Uint8Array, quoted: QuotedDatagram): boolean {
  const v6 = quoted.family === 6;
  const ipHeader = v6 ? IPV6_HEADER_LENGTH : IPV4_HEADER_LENGTH;
  let quotedPayload = Math.min(quoted.payloadAvailable, quoted.payloadLength, QUOTED_PAYLOAD_LIMIT);
  if (v6) quotedPayload = Math.min(quotedPayload, IPV6_MIN_MTU - 2 * IPV6_HEADER_LENGTH - 8 - UDP_HEADER_LENGTH);
  const icmpLength = 8 + ipHeader + UDP_HEADER_LENGTH + quotedPayload;
  const l4 = v6 ? IPV6_L4_OFFSET : IPV4_L4_OFFSET;
  if (ctx.openFrame(l4 + icmpLength) < l4 + icmpLength) {
    ctx.cancelFrame();
    return false;
  }
  const out = ctx.out;
  const icmp = ctx.outOffset + l4;
  out[icmp] = plan.type;
  out[icmp + 1] = plan.code;
  setBe16(out, icmp + 2, 0);
  if (v6 || plan.rest === 0 || plan.type !== Icmp4ErrorType.DestinationUnreachable) {
    setBe32(out, icmp + 4, plan.rest >>> 0);
  } else {
    // RFC 1191: the next-hop MTU is the low 16 bits; the high ones are unused.
    setBe16(out, icmp + 4, 0);
    setBe16(out, icmp + 6, plan.rest);
  }
  const guest = quoted.guest.subarray(quoted.guestOffset, quoted.guestOffset + (v6 ? 16 : 4));
  const remote = quoted.remote.subarray(quoted.remoteOffset, quoted.remoteOffset + (v6 ? 16 : 4));
  const udpLength = Math.min(UDP_HEADER_LENGTH + quoted.payloadLength, 0xffff);
  const inner = v6
    ? emitIpv6(out, icmp + 8, guest, remote, IpProtocol.Udp, udpLength)
    : emitIpv4(out, icmp + 8, guest, remote, IpProtocol.Udp, udpLength);
  setBe16(out, inner, quoted.guestPort);
  setBe16(out, inner + 2, quoted.remotePort);
  setBe16(out, inner + 4, udpLength);
  // The checksum of the quoted datagram is not recomputable from a prefix; receivers do not check it.
  setBe16(out, inner + 6, 0);
  if (quotedPayload > 0) out.set(quoted.payload.subarray(0, quotedPayload), inner + UDP_HEADER_LENGTH);
  if (v6) {
    const sum = finishChecksum(sumBytes(out, icmp, icmpLength, pseudoHeaderSumIpv6(source, 0, guest, 0, IpProtocol.Icmpv6, icmpLength)));
    setBe16(out, icmp + 2, sum);
    ctx.finishIpv6(ctx.guestMac, source, guest, IpProtocol.Icmpv6, icmpLength);
  } else {
    setBe16(out, icmp + 2, finishChecksum(sumBytes(out, icmp, icmpLength)));
    ctx.finishIpv4(ctx.guestMac, source, guest, IpProtocol.Icmp, icmpLength);
  }
  return true;
}
