/**
 * Reading and writing integers in host byte order, the order of kernel
 * structures (netlink headers, cmsg headers, sock_extended_err, sa_family).
 * Network-order fields use the wire helpers in wire/checksum.ts instead.
 */
import { endianness } from 'os';

/** True on a little-endian host (x86-64, arm64). */
export const LITTLE_ENDIAN = endianness() === 'LE';

/** Read an unsigned 16-bit value in host order at b[o]. */
export function hostU16(b: Uint8Array, o: number): number {
  return LITTLE_ENDIAN ? b[o] | (b[o + 1] << 8) : (b[o] << 8) | b[o + 1];
}

/** Read an unsigned 32-bit value in host order at b[o]. */
export function hostU32(b: Uint8Array, o: number): number {
  return LITTLE_ENDIAN
    ? (b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) | (b[o + 3] << 24)) >>> 0
    : ((b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]) >>> 0;
}

/** Read a signed 32-bit value in host order at b[o]. */
export function hostI32(b: Uint8Array, o: number): number {
  return hostU32(b, o) | 0;
}

/** Write a 16-bit value in host order at b[o]. */
export function setHostU16(b: Uint8Array, o: number, v: number): void {
  if (LITTLE_ENDIAN) {
    b[o] = v & 0xff;
    b[o + 1] = (v >>> 8) & 0xff;
  } else {
    b[o] = (v >>> 8) & 0xff;
    b[o + 1] = v & 0xff;
  }
}

/** Write a 32-bit value in host order at b[o]. */
export function setHostU32(b: Uint8Array, o: number, v: number): void {
  if (LITTLE_ENDIAN) {
    b[o] = v & 0xff;
    b[o + 1] = (v >>> 8) & 0xff;
    b[o + 2] = (v >>> 16) & 0xff;
    b[o + 3] = (v >>> 24) & 0xff;
  } else {
    b[o] = (v >>> 24) & 0xff;
    b[o + 1] = (v >>> 16) & 0xff;
    b[o + 2] = (v >>> 8) & 0xff;
    b[o + 3] = v & 0xff;
  }
}

/** Read a big-endian 16-bit value at bytes[offset]. */
export function be16(bytes: Uint8Array, offset: number): number {
  return (bytes[offset] << 8) | bytes[offset + 1];
}

/** Read a big-endian 32-bit value (unsigned) at bytes[offset]. */
export function be32(bytes: Uint8Array, offset: number): number {
  return ((bytes[offset] << 24) | (bytes[offset + 1] << 16) | (bytes[offset + 2] << 8) | bytes[offset + 3]) >>> 0;
}

/** Write a big-endian 16-bit value at bytes[offset]. */
export function setBe16(bytes: Uint8Array, offset: number, value: number): void {
  bytes[offset] = (value >>> 8) & 0xff;
  bytes[offset + 1] = value & 0xff;
}

/** Write a big-endian 32-bit value at bytes[offset]. */
export function setBe32(bytes: Uint8Array, offset: number, value: number): void {
  bytes[offset] = (value >>> 24) & 0xff;
  bytes[offset + 1] = (value >>> 16) & 0xff;
  bytes[offset + 2] = (value >>> 8) & 0xff;
  bytes[offset + 3] = value & 0xff;
}
