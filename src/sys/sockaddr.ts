/**
 * The Linux sockaddr_in / sockaddr_in6 layouts the socket calls take and
 * return as bytes: sa_family in host byte order at 0, the port in network
 * order at 2, the address at 4 (IPv4) or 8 (IPv6). One module for the
 * handlers (UDP, TCP, TCP listeners, ICMP echo) that build and read them.
 */
import { be16, hostU16, setBe16, setHostU16 } from './byte-order';
import { AF_INET, AF_INET6 } from './linux';
export { AF_INET, AF_INET6 };

/** Size of a sockaddr_in. */
export const SOCKADDR_IN_LENGTH = 16;
/** Size of a sockaddr_in6. */
export const SOCKADDR_IN6_LENGTH = 28;

/** Byte offset of the address in a sockaddr of the family (sin_addr / sin6_addr). */
export function sockaddrAddressOffset(family: 4 | 6): number {
  return family === 4 ? 4 : 8;
}

/** Write sa_family (AF_INET or AF_INET6, in host byte order) into sa[0..2). */
export function writeSockaddrFamily(sa: Uint8Array, af: number): void {
  setHostU16(sa, 0, af);
}

/**
 * Write a sockaddr_in (family 4) or sockaddr_in6 (family 6) for the address
 * at addr[offset] and port into out (>= 28 bytes; zeroed first). Returns
 * its length.
 */
export function writeSockaddr(out: Uint8Array, family: 4 | 6, addr: Uint8Array, offset: number, port: number): number {
  const length = family === 4 ? SOCKADDR_IN_LENGTH : SOCKADDR_IN6_LENGTH;
  out.fill(0, 0, length);
  writeSockaddrFamily(out, family === 4 ? AF_INET : AF_INET6);
  setBe16(out, 2, port);
  const at = sockaddrAddressOffset(family);
  const n = family === 4 ? 4 : 16;
  for (let i = 0; i < n; i++) out[at + i] = addr[offset + i];
  return length;
}

/** The family of a sockaddr (4, 6, or 0 for anything else). */
export function sockaddrFamily(sa: Uint8Array): 0 | 4 | 6 {
  const af = hostU16(sa, 0);
  return af === AF_INET ? 4 : af === AF_INET6 ? 6 : 0;
}

/** The port of a sockaddr_in / sockaddr_in6. */
export function sockaddrPort(sa: Uint8Array): number {
  return be16(sa, 2);
}
